"""Benchmark: reconstruct the default demo street (256x144) on CPU and report time, #Gaussians and PSNR.

Bar (issue 2): ~40 training views, at most 20 minutes on 2 CPU cores, >= 25 dB PSNR on held-out views of
the training trajectory (every 8th view held out).

The street is rendered once with Mitsuba (scene_tools.street / scene_tools.pbr) and cached outside git
(default /tmp/simharmony_bench/street_<frames>f_seed<seed>), so repeated runs only time reconstruction.

    python benchmarks/bench_reconstruction.py                   # 45 frames -> 39 train / 6 held out
    python benchmarks/bench_reconstruction.py --iterations 1500 --repeats 1 --out /tmp/rec_run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from scene_tools.reconstruct import ReconstructionConfig, reconstruct


def street_images(frames: int, seed: int, cache: Path, spp: int | None):
    """Render (or load from ``cache``) the default street with ``frames`` ego frames as PosedImages."""
    from scene_tools.pbr import StreetFrames, render_street
    from scene_tools.street import EgoConfig, StreetConfig, generate_street

    folder = cache / (f"street_{frames}f_seed{seed}" + ("" if spp is None else f"_spp{spp}"))
    if (folder / "frames.yaml").is_file():
        print(f"loading cached street renders from {folder}")
        return StreetFrames.load(folder).to_posed_images()
    cfg = StreetConfig(seed=seed, ego=EgoConfig(num_frames=frames))
    t = time.perf_counter()
    frames_ = render_street(generate_street(cfg), spp=spp, progress=True)
    print(f"rendered {frames} street frames in {time.perf_counter() - t:.1f} s; caching in {folder}")
    frames_.save(folder, previews=True)
    return frames_.to_posed_images()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=45, help="ego frames rendered (every 8th is held out)")
    ap.add_argument("--seed", type=int, default=0, help="street seed")
    ap.add_argument("--spp", type=int, default=None, help="Mitsuba samples per pixel (default: street config)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/simharmony_bench"))
    ap.add_argument("--config", type=Path, default=None, help="ReconstructionConfig YAML (default: defaults)")
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=1, help="reconstructions to time (median reported)")
    ap.add_argument("--out", type=Path, default=None, help="output_dir for checkpoints and the scene")
    ap.add_argument("--render-only", action="store_true", help="only render and cache the street")
    args = ap.parse_args()

    images = street_images(args.frames, args.seed, args.cache, args.spp)
    if args.render_only:
        return
    cfg = ReconstructionConfig.load(args.config) if args.config else ReconstructionConfig()
    if args.iterations is not None:
        cfg.iterations = args.iterations
    cfg.device = "cpu"
    import numba

    print(f"threads: torch {torch.get_num_threads()} (reconstruct uses cpu_torch_threads={cfg.cpu_torch_threads} for "
          f"its own torch work), numba {numba.get_num_threads()}; images {len(images)} x {images.width}x{images.height}")
    print("config:", json.dumps(cfg.to_dict()))

    rows = []
    for r in range(args.repeats):
        out = None if args.out is None else args.out / f"run{r}"
        res = reconstruct(images, cfg, output_dir=out, resume=False, progress=True)
        rows.append(res)
        held = "n/a" if res.heldout_psnr is None else f"{res.heldout_psnr:.2f}"
        print(f"run {r}: {res.seconds:.1f} s, {len(res.scene)} Gaussians, train PSNR {res.train_psnr:.2f} dB, "
              f"held-out PSNR {held} dB (views {res.heldout_indices}), train views {len(res.train_indices)}")
        for h in res.history:
            if "heldout_psnr" in h:
                print(f"   step {h['step']:5d}  t={h['seconds']:7.1f}s  N={h['num_gaussians']:6d}  "
                      f"batch PSNR {h['psnr']:.2f}  held-out {h['heldout_psnr']:.2f}")
    secs = [r.seconds for r in rows]
    print(f"\nsummary (median over {len(rows)} run(s)):")
    print(f"  time            {statistics.median(secs):.1f} s  (bar: <= 1200 s on 2 cores)")
    print(f"  Gaussians       {statistics.median([len(r.scene) for r in rows]):.0f}")
    print(f"  train PSNR      {statistics.median([r.train_psnr for r in rows]):.2f} dB")
    if rows[0].heldout_psnr is not None:
        print(f"  held-out PSNR   {statistics.median([r.heldout_psnr for r in rows]):.2f} dB  (bar: >= 25 dB)")


if __name__ == "__main__":
    main()
