"""A real dash-camera video to a harmonized drive and a shifted lane, from Python.

The steps, each one call (the same path as ``simharmony bench-capture``, which also scores the held-out
frames):

1. ``capture``: frames from the video, then structure from motion (COLMAP through pycolmap) for poses,
   the lens and sparse points;
2. ``load_capture`` + ``align_to_ground``: undistorted frames at 1/``--downscale`` size, moved into the
   street frame (road at z = 0, metres from an assumed camera height);
3. ``reconstruct``: 3D Gaussians on the CPU, initialised from the sparse points;
4. ``Simulator.render``: the recorded trajectory and a ``--shift`` metre shifted one through the render
   hook with the shipped enhancer;
5. side-by-side videos and a contact sheet.

    python examples/real_capture.py ../shared/realdata/udacity_highway/frames --out outputs/real_capture
    python examples/real_capture.py my_drive.mp4 --out outputs/my_drive --every 2 --iterations 1000

The capture and the reconstruction are kept in ``--out`` (the reconstruction resumes from its
checkpoints), so a second run only renders.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scene_tools.capture import CaptureConfig, align_to_ground, capture, load_capture
from scene_tools.reconstruct import reconstruct
from scene_tools.scene import Scene
from simharmony import Harmonizer, Simulator
from simharmony.bench.real_capture import RealCaptureConfig
from simharmony.visualize import contact_sheet, save_png


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("source", help="a video file or a folder of frames")
    ap.add_argument("--out", default="outputs/real_capture")
    ap.add_argument("--downscale", type=int, default=2)
    ap.add_argument("--every", type=int, default=1, help="video: keep every n-th frame")
    ap.add_argument("--iterations", type=int, default=None, help="reconstruction iterations (default 2000)")
    ap.add_argument("--camera-height", type=float, default=1.5, help="metres above the road (sets the scale)")
    ap.add_argument("--shift", type=float, default=2.0, help="lateral shift of the novel lane, metres (left +)")
    args = ap.parse_args()
    out = Path(args.out)

    if not (out / "capture" / "capture.json").is_file():
        res = capture(args.source, out / "capture", CaptureConfig(video_every=args.every))
        print(f"structure from motion: {res.num_registered} of {res.num_images} frames registered")
    images = load_capture(out / "capture", downscale=args.downscale)
    images, ground = align_to_ground(images, args.camera_height)
    print(f"{len(images)} frames at {images.width}x{images.height}; metres per SfM unit {ground['scale']:.3f}")

    cfg = RealCaptureConfig().reconstruction  # the scenario's CPU settings
    if args.iterations is not None:
        cfg.iterations = args.iterations
    result = reconstruct(images, cfg, output_dir=out / "reconstruction")
    print(f"reconstruction: {len(result.scene)} Gaussians, held-out PSNR {result.heldout_psnr:.2f} dB")

    sim = Simulator(Scene(result.scene, intrinsics=images.trajectory.intrinsics), Harmonizer.from_pretrained("default"))
    for name, trajectory in (("recorded", images.trajectory),
                             ("shifted", images.trajectory.shifted_laterally(args.shift))):
        seq = sim.render(trajectory)
        seq.write_video(out / f"{name}.mp4")
        save_png(out / f"{name}_sheet.png", contact_sheet(seq.panels()[:: max(1, len(seq) // 6)], max_rows=6))
        print(f"wrote {out / name}.mp4 and {out / name}_sheet.png (raw | harmonized)")


if __name__ == "__main__":
    main()
