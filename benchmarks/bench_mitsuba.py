"""Benchmark the Mitsuba street renderer (scene_tools.pbr.render_street) on the default demo street.

For each resolution, renders ``--frames`` frames of the default street's ego trajectory one at a time
(after one warm-up frame that pays for imports and plugin loading) and prints the median wall time per
frame, per frame and sample-per-pixel, and the split between Mitsuba path tracing and the pixel-centre
id/depth pass. The variant, Dr.Jit's thread count and the machine's load average are printed too:
the machine is shared, so compare numbers only between runs with similar load.

    python benchmarks/bench_mitsuba.py                         # 256x144 and 512x288, 16 spp, 5 frames
    python benchmarks/bench_mitsuba.py --res 256x144 --spp 64 --frames 3
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scene_tools.pbr import render_street, set_variant
from scene_tools.street import CameraConfig, StreetConfig, generate_street


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--res", default="256x144,512x288", help="comma-separated WxH list")
    ap.add_argument("--spp", type=int, default=16)
    ap.add_argument("--frames", type=int, default=5, help="timed frames per resolution (spread over the trajectory)")
    ap.add_argument(
        "--variant", default=None, help="Mitsuba variant (default: cuda_ad_rgb if available, else scalar_rgb)"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import drjit as dr

    variant = set_variant(args.variant)
    print(
        f"variant={variant} drjit_threads={dr.thread_count()} cpu_count={os.cpu_count()} "
        f"loadavg_before={tuple(round(x, 2) for x in os.getloadavg())}"
    )
    print(
        f"{'resolution':>10} {'spp':>4} {'frames':>6} {'median s/frame':>15} {'ms/frame/spp':>13} "
        f"{'path-trace s':>13} {'id+depth s':>11} {'min s':>7} {'max s':>7}"
    )
    for res in args.res.split(","):
        w, h = (int(v) for v in res.lower().split("x"))
        base = StreetConfig(seed=args.seed)
        cfg = dataclasses.replace(base, camera=CameraConfig(width=w, height=h, fov_x_deg=base.camera.fov_x_deg))
        layout = generate_street(cfg)
        n = len(layout.trajectory)
        idx = sorted({round(k * (n - 1) / max(args.frames - 1, 1)) for k in range(args.frames)})
        render_street(
            layout, trajectory=layout.trajectory[:1], spp=args.spp, variant=variant, progress=False
        )  # warm-up
        totals, pt, gb = [], [], []
        for i in idx:
            t0 = time.perf_counter()
            fr = render_street(
                layout, trajectory=layout.trajectory[i : i + 1], spp=args.spp, variant=variant, progress=False, seed=i
            )
            totals.append(time.perf_counter() - t0)
            pt += fr.render_info["seconds"]["path_tracing"]
            gb += fr.render_info["seconds"]["gbuffer"]
        med = statistics.median(totals)
        print(
            f"{res:>10} {args.spp:>4} {len(idx):>6} {med:>15.3f} {1000 * med / args.spp:>13.1f} "
            f"{statistics.median(pt):>13.3f} {statistics.median(gb):>11.3f} {min(totals):>7.3f} {max(totals):>7.3f}"
        )
    print(f"loadavg_after={tuple(round(x, 2) for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
