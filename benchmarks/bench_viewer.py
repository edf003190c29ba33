"""Interactive cost of the viewer: render + enhance per frame, medians, with the shipped enhancer.

Two cameras on the demo street, in one run: the trajectory camera at the demo's own size (what
``simharmony demo`` renders: 256x144, stepping along the recorded path), and the free camera at 512x288 (a
browser client flying along the street: each frame moves 0.2 m, so its enhancer context continues).

    python benchmarks/bench_viewer.py --threads 2 --frames 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from scene_tools.cameras import Intrinsics
from simharmony_viewer import ViewerApp


def summarise(name: str, frames: list) -> str:
    r = [f.render_ms for f in frames]
    e = [f.enhance_ms for f in frames]
    total = [a + b for a, b in zip(r, e)]
    return (f"| {name} | {frames[0].raw.shape[1]}x{frames[0].raw.shape[0]} | {statistics.median(r):.0f} | "
            f"{statistics.median(e):.0f} | {statistics.median(total):.0f} | {1e3 / statistics.median(total):.2f} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--frames", type=int, default=20, help="timed frames per camera (after 3 warm-up frames)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    app = ViewerApp.from_paths(model="default")
    app.set_harmonize(True)
    demo = []
    for i in range(args.frames + 3):
        app.set_frame(i % app.num_frames)
        frame = app.render()
        if i >= 3:
            demo.append(frame)
    k = Intrinsics.from_fov(70.0, 512, 288)
    free = []
    start = app.camera_pose(0)
    for i in range(args.frames + 3):
        pose = start.copy()
        pose[:3, 3] += pose[:3, 2] * 0.2 * i  # forward along the camera's view
        frame = app.render_view(pose, k, stream="bench")
        if i >= 3:
            free.append(frame)
    print(f"# viewer interactive cost, {args.threads} threads, load {os.getloadavg()[0]:.2f}, {args.frames} frames each")
    print("| camera | size | render ms | enhance ms | total ms | frames/s |\n|---|---|---:|---:|---:|---:|")
    print(summarise("trajectory (the demo's frames)", demo))
    print(summarise("free camera", free))
    return 0


if __name__ == "__main__":
    sys.exit(main())
