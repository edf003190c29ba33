"""Memory over a long stream: N frames through the render-callback plugin with several cameras.

Reports resident memory (RSS; psutil when installed, else VmRSS from /proc/self/status) at start, every
``--report-every`` frames and at the end, plus the median wall time per frame and the plugin's timing
statistics. The model is an untrained small Enhancer (speed and memory do not depend on the weights).
Frames come from a synthetic render callable (a textured image panned a little each frame, with an
inserted-asset mask and a depth map), so the numbers are the plugin's and the enhancer's, not a renderer's.
Every ``--nan-every``-th frame is a NaN frame, which exercises the failure policy and its context reset.

    nice -n 10 python benchmarks/bench_stream_memory.py                      # 5000 frames, 128x72, 4 cameras
    python benchmarks/bench_stream_memory.py --frames 20000 --cameras 8 --threads 2
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import sys
import time

import numpy as np
import torch

from simharmony.models import Enhancer, EnhancerConfig
from simharmony.plugin import HarmonizedRenderer

SMALL = {"channels": (16, 32, 32), "heads": 4, "emb_dim": 32, "cond_dim": 8}


def rss_mib() -> tuple[float, str]:
    """Resident set size of this process in MiB, and where it came from."""
    try:
        import psutil

        return psutil.Process(os.getpid()).memory_info().rss / 2**20, "psutil"
    except ImportError:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024, "/proc/self/status VmRSS"
    raise RuntimeError("cannot read RSS: no psutil and no /proc/self/status")


def make_renderer(h: int, w: int, cameras: int, seed: int = 0):
    """A render callable (camera index, frame number) -> {"rgb", "mask", "depth"} panning a texture."""
    rng = np.random.default_rng(seed)
    bases = [rng.random((h, w + 64, 3), dtype=np.float32) for _ in range(cameras)]
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((xx - w / 2) ** 2 / (w / 6) ** 2 + (yy - h / 2) ** 2 / (h / 5) ** 2 < 1).astype(np.float32)
    depth = (2.0 + 30.0 * (1.0 - yy / h)).astype(np.float32)
    depth[: h // 3] = np.inf  # sky

    def render(camera: tuple[int, int]) -> dict:
        cam, t = camera
        off = t % 64
        return {"rgb": bases[cam][:, off:off + w].copy(), "mask": mask, "depth": depth}

    return render


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=5000, help="frames in all (cameras take turns)")
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--height", type=int, default=72)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--report-every", type=int, default=1000)
    ap.add_argument("--nan-every", type=int, default=1000, help="every N-th frame is NaN (0 = never)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.manual_seed(0)
    model = Enhancer(EnhancerConfig(**SMALL)).eval()
    plug = HarmonizedRenderer(make_renderer(args.height, args.width, args.cameras), model,
                              camera_key=lambda camera: f"cam{camera[0]}")
    k = model.config.context_frames
    config = {
        "frames": args.frames, "cameras": args.cameras, "size": f"{args.width}x{args.height}",
        "model": f"untrained Enhancer {SMALL} (K={k}, {sum(p.numel() for p in model.parameters())} parameters)",
        "inputs": "numpy float32 rgb + mask + depth", "nan_every": args.nan_every,
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(), "cpus_visible": os.cpu_count(),
    }
    print("config:", json.dumps(config))

    gc.collect()
    start_mib, source = rss_mib()
    print(f"RSS source: {source}")
    print(f"frame {0:6d}: RSS {start_mib:8.1f} MiB")
    points = [(0, start_mib)]
    wall_ms, max_ctx = [], 0
    nan_frame = None
    for t in range(1, args.frames + 1):
        cam = t % args.cameras
        t0 = time.perf_counter()
        if args.nan_every and t % args.nan_every == 0:
            if nan_frame is None:
                nan_frame = np.full((args.height, args.width, 3), np.nan, np.float32)
            plug.enhance_frame({"rgb": nan_frame}, camera_id=f"cam{cam}")
        else:
            plug((cam, t))
        wall_ms.append((time.perf_counter() - t0) * 1e3)
        max_ctx = max(max_ctx, plug.context_length(f"cam{cam}"))
        if t % args.report_every == 0 or t == args.frames:
            gc.collect()
            mib, _ = rss_mib()
            points.append((t, mib))
            print(f"frame {t:6d}: RSS {mib:8.1f} MiB   median {np.median(wall_ms[-args.report_every:]):6.2f} ms/frame "
                  f"over the last {min(args.report_every, len(wall_ms))}")

    st = plug.stats()
    first_report = points[1][1] if len(points) > 2 else points[0][1]
    result = {
        "config": config,
        "rss_mib": {str(t): round(m, 1) for t, m in points},
        "rss_growth_mib_total": round(points[-1][1] - points[0][1], 1),
        "rss_growth_mib_after_first_report": round(points[-1][1] - first_report, 1),
        "median_ms_per_frame": float(np.median(wall_ms)),
        "p90_ms_per_frame": float(np.percentile(wall_ms, 90)),
        "enhance_ms": st["enhance_ms"], "render_ms": st["render_ms"],
        "frames_enhanced": st["enhanced"], "frames_failed": st["failed"], "failures": st["failures"],
        "resets": st["resets"], "max_context_length": max_ctx, "K": k,
    }
    print(f"median {result['median_ms_per_frame']:.2f} ms/frame (p90 {result['p90_ms_per_frame']:.2f}) wall; "
          f"enhance median {st['enhance_ms']['median']:.2f} ms, p90 {st['enhance_ms']['p90']:.2f} ms")
    print(f"RSS start {points[0][1]:.1f} MiB, end {points[-1][1]:.1f} MiB: growth {result['rss_growth_mib_total']:+.1f} "
          f"MiB in all, {result['rss_growth_mib_after_first_report']:+.1f} MiB after frame {points[1][0] if len(points) > 2 else 0}")
    print(f"frames enhanced {st['enhanced']}, failed {st['failed']} {st['failures']}, resets {st['resets']}, "
          f"max context length {max_ctx} (K={k})")
    if args.json:
        from simharmony.utils.io import write_text_atomic

        write_text_atomic(args.json, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
