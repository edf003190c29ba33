"""Benchmark OIDN denoising of path-traced street frames (scene_tools.pbr.render_street(denoise=True)).

Renders ``--frames`` poses spread over the default street's ego trajectory (``--res``, default
256x144), each at every ``--spp`` count raw and denoised (same sampler seed, so the denoiser sees exactly
the raw frame), plus a ``--ref-spp`` reference (default 256) with other sampler seeds. Prints, per spp:
the median PSNR in display space (tone-mapped ``rgb``, ``simharmony.metrics.psnr``, 0..255 range) of raw
vs reference and denoised vs reference, and the median seconds per frame of the path tracing, of the
albedo/normal renders and of OIDN; then the reference's render time, the load average and the command.
The machine is shared: compare times only between runs with similar load.

    python benchmarks/bench_denoise.py --frames 3                 # 8 and 16 spp vs 256 spp
    python benchmarks/bench_denoise.py --frames 3 --spp 8 --compare-clean-aux

``--compare-clean-aux`` also denoises the same raw frames with OIDN's ``cleanAux`` off (the render
uses it on) and without auxiliary images, to check that choice.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scene_tools.denoise import denoise_hdr, oidn_version
from scene_tools.pbr import _aux_images, _WorldGeometry, render_street, set_variant, tonemap
from scene_tools.street import CameraConfig, StreetConfig, generate_street
from simharmony.metrics import psnr

REF_SEED_OFFSET = 100_000  # reference frames use other sampler seeds than the noisy ones


def _loadavg() -> tuple[float, ...]:
    return tuple(round(x, 2) for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--res", default="256x144", help="WxH")
    ap.add_argument("--spp", default="8,16", help="comma-separated noisy sample counts")
    ap.add_argument("--ref-spp", type=int, default=256)
    ap.add_argument("--frames", type=int, default=3, help="poses, spread over the trajectory")
    ap.add_argument("--seed", type=int, default=0, help="street seed")
    ap.add_argument("--variant", default=None, help="Mitsuba variant (default: cuda_ad_rgb if available)")
    ap.add_argument("--compare-clean-aux", action="store_true", help="also try cleanAux off and no aux images")
    args = ap.parse_args()

    import drjit as dr
    import mitsuba as mi

    variant = set_variant(args.variant)
    w, h = (int(v) for v in args.res.lower().split("x"))
    spps = [int(s) for s in args.spp.split(",")]
    base = StreetConfig(seed=args.seed)
    cfg = dataclasses.replace(base, camera=CameraConfig(width=w, height=h, fov_x_deg=base.camera.fov_x_deg))
    layout = generate_street(cfg)
    n = len(layout.trajectory)
    idx = sorted({round(k * (n - 1) / max(args.frames - 1, 1)) for k in range(args.frames)})
    print(f"command: python {shlex.join(sys.argv)}")
    print(
        f"variant={variant} drjit_threads={dr.thread_count()} cpu_count={os.cpu_count()} oidn={oidn_version()} "
        f"street_seed={args.seed} res={w}x{h} frames={idx} exposure={cfg.exposure} loadavg_before={_loadavg()}"
    )
    render_street(layout, trajectory=layout.trajectory[:1], spp=1, variant=variant, progress=False, denoise=True)

    refs, ref_secs = {}, []
    for i in idx:
        fr = render_street(layout, trajectory=layout.trajectory[i : i + 1], spp=args.ref_spp, variant=variant,
                           progress=False, seed=REF_SEED_OFFSET + i)
        refs[i] = fr.rgb[0]
        ref_secs += fr.render_info["seconds"]["path_tracing"]
    print(f"reference: {args.ref_spp} spp, median path tracing {statistics.median(ref_secs):.2f} s/frame")

    header = (f"{'spp':>4} {'PSNR raw':>9} {'PSNR den':>9} {'gain dB':>8} {'trace s':>8} {'aux s':>6} "
              f"{'oidn s':>7}  per-frame raw -> denoised dB")
    extra_rows = []
    print(header)
    for spp in spps:
        p_raw, p_den, t_pt, t_aux, t_dn = [], [], [], [], []
        p_noclean, p_noaux = [], []
        for i in idx:
            kw = {"trajectory": layout.trajectory[i : i + 1], "spp": spp, "variant": variant, "progress": False,
                  "seed": i}
            raw = render_street(layout, **kw)
            den = render_street(layout, denoise=True, **kw)
            p_raw.append(psnr(raw.rgb[0], refs[i]))
            p_den.append(psnr(den.rgb[0], refs[i]))
            t_pt += raw.render_info["seconds"]["path_tracing"]
            t_aux += den.render_info["seconds"]["aux"]
            t_dn += den.render_info["seconds"]["denoise"]
            if args.compare_clean_aux:
                traj = layout.trajectory[i : i + 1]
                geometry = _WorldGeometry(layout, layout.ids)
                albedo, normal = _aux_images(mi, geometry, float(traj.times[0]), traj.poses[0], traj.intrinsics,
                                             spp, i)
                hdr = raw.hdr[0]
                p_noclean.append(psnr(tonemap(denoise_hdr(hdr, albedo, normal, clean_aux=False), cfg.exposure),
                                      refs[i]))
                p_noaux.append(psnr(tonemap(denoise_hdr(hdr), cfg.exposure), refs[i]))
        mr, md = statistics.median(p_raw), statistics.median(p_den)
        per = ", ".join(f"{a:.2f}->{b:.2f}" for a, b in zip(p_raw, p_den))
        print(f"{spp:>4} {mr:>9.2f} {md:>9.2f} {md - mr:>8.2f} {statistics.median(t_pt):>8.3f} "
              f"{statistics.median(t_aux):>6.3f} {statistics.median(t_dn):>7.3f}  {per}")
        if args.compare_clean_aux:
            extra_rows.append(
                f"{spp:>4} spp denoised: cleanAux on {md:.2f} dB | cleanAux off {statistics.median(p_noclean):.2f} dB"
                f" | colour only {statistics.median(p_noaux):.2f} dB (median PSNR vs {args.ref_spp} spp)"
            )
    for row in extra_rows:
        print(row)
    print(f"loadavg_after={_loadavg()} time={time.strftime('%Y-%m-%d %H:%M:%S')}")


if __name__ == "__main__":
    main()
