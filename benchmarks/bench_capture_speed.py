"""CPU reconstruction speed on a real capture next to the synthetic street, at one resolution.

Real: the ``udacity_highway`` capture made by ``simharmony bench-capture`` (``--capture``, structure from
motion already run), loaded at 1/2 size (480x270) and moved to the street frame. Synthetic: the shipped
demo street rendered along its recorded trajectory at the same size. Each is reconstructed ``--repeats``
times for ``--iterations`` steps (same config: the real-capture scenario's, densification from step 200,
so the timed window includes growth), and the median iterations per second is printed with the Gaussian
counts reached. Compare the two within one run: the machine is shared.

    python benchmarks/bench_capture_speed.py --iterations 400 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scene_tools.capture import align_to_ground, load_capture
from scene_tools.reconstruct import reconstruct
from scene_tools.scene import Scene
from scene_tools.views import PosedImages
from simharmony.bench.real_capture import RealCaptureConfig
from simharmony.paths import DEMO_SCENE_DIR


def synthetic_street(width: int, height: int) -> PosedImages:
    """The demo street's Gaussians rendered along its recorded trajectory at ``width`` x ``height``."""
    from scene_tools.cameras import Trajectory

    scene = Scene.load(DEMO_SCENE_DIR)
    traj = Trajectory.from_dict(scene.metadata["ego_trajectory"])
    k = traj.intrinsics.resized(width, height)
    seq = scene.render(Trajectory(traj.poses, k, traj.times), progress=False)
    return seq.to_posed_images()


def time_reconstruction(images: PosedImages, iterations: int, repeats: int) -> tuple[float, int, float]:
    cfg = RealCaptureConfig().reconstruction
    cfg.iterations, cfg.eval_every, cfg.log_every, cfg.device = iterations, 10**9, iterations, "cpu"
    rates, gaussians, psnr = [], 0, 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = reconstruct(images, cfg, progress=False)
        rates.append(iterations / (time.perf_counter() - t0))
        gaussians, psnr = len(res.scene), res.train_psnr
    return statistics.median(rates), gaussians, psnr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--capture", default="outputs/bench/real-capture/capture")
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    real, _ = align_to_ground(load_capture(args.capture, downscale=2, progress=False))
    street = synthetic_street(real.width, real.height)
    print(f"real: {len(real)} views, {len(real.points)} SfM points; synthetic street: {len(street)} views (depth init); "
          f"both {real.width}x{real.height}; load average {tuple(round(x, 2) for x in os.getloadavg())}")
    for name, images in (("real capture (udacity_highway)", real), ("synthetic street (demo)", street)):
        rate, n, psnr = time_reconstruction(images, args.iterations, args.repeats)
        print(f"{name:<32} median {rate:.2f} it/s over {args.repeats} runs of {args.iterations} steps; "
              f"{n} Gaussians at the end; train PSNR {psnr:.2f} dB")
    print(f"load average {tuple(round(x, 2) for x in os.getloadavg())}; command: python "
          + " ".join(shlex.quote(a) for a in sys.argv))


if __name__ == "__main__":
    main()
