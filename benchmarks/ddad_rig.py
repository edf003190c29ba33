"""A real six-camera rig: load ``ddad_test_scene`` with per-camera intrinsics, reconstruct it with lidar
initialisation, and render every camera.

Loads ``<realdata>/ddad_test_scene/test_scene/<scene>/transforms.json`` (per-frame intrinsics, camera names,
lidar ``points3D.ply``) at 1/``--downscale`` size, reconstructs from all views (``--iterations``, lidar points
as initial Gaussians plus a backdrop for the sky), and renders the rig's trajectory, each camera as its own
sequence. Prints per camera: its intrinsics and the PSNR of its renders against its photos (these are
training views: the log has 3 samples per camera, too few to hold any out), the it/s, and writes a contact
sheet (photo | render per camera) to ``--out``. The data is "eval only": nothing here trains shipped weights.

    python benchmarks/ddad_rig.py --scene scene_02 --downscale 8 --iterations 1500
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from scene_tools.loaders import load_transforms_json
from scene_tools.reconstruct import ReconstructionConfig, reconstruct
from scene_tools.scene import Scene
from simharmony.data.real import realdata_dir
from simharmony.metrics import psnr
from simharmony.visualize import contact_sheet, save_png, side_by_side


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scene", default="scene_02", choices=("scene_01", "scene_02"))
    ap.add_argument("--downscale", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=1500)
    ap.add_argument("--out", default="outputs/ddad_rig")
    args = ap.parse_args()

    folder = realdata_dir() / "ddad_test_scene" / "test_scene" / args.scene
    t0 = time.perf_counter()
    cap = load_transforms_json(folder, downscale=args.downscale)
    load_s = time.perf_counter() - t0
    traj = cap.trajectory
    cams = traj.by_camera()
    print(f"loaded {len(cap)} images from {len(cams)} cameras at {cap.width}x{cap.height} in {load_s:.1f} s; "
          f"{len(cap.points)} lidar points")
    cfg = ReconstructionConfig(iterations=args.iterations, sh_degree=1, heldout_every=0, init="points",
                               max_gaussians=60_000, backdrop_init_points=3000, log_every=100,
                               checkpoint_every=args.iterations, densify_start=200, densify_stop=1200, device="auto")
    res = reconstruct(cap, cfg, output_dir=Path(args.out) / "reconstruction")
    last = res.history[-1]
    its = last["step"] / last["seconds"]
    seq = Scene(res.scene, intrinsics=traj.intrinsics).render(traj)
    rows = []
    print(f"{'camera':<10} {'fx':>8} {'fy':>8} {'cx':>7} {'cy':>7}  PSNR (render vs photo, training views)")
    for name, idx in traj.camera_groups():
        k = traj.intrinsics_at(idx[0])
        renders = np.stack([seq[i].rgb.cpu().numpy() for i in idx])
        p = psnr(renders, cap.images[idx])
        print(f"{name:<10} {k.fx:8.2f} {k.fy:8.2f} {k.cx:7.2f} {k.cy:7.2f}  {p:.2f} dB")
        rows.append(side_by_side([cap.images[idx[0]], renders[0]], [f"{name} photo", "render"]))
    out = Path(args.out)
    save_png(out / "rig_sheet.png", contact_sheet(rows, max_rows=len(rows)))
    print(f"{len(res.scene)} Gaussians; {its:.2f} it/s at {cap.width}x{cap.height}; train PSNR {res.train_psnr:.2f} dB; "
          f"{res.seconds / 60:.1f} min; sheet {out / 'rig_sheet.png'}")
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))


if __name__ == "__main__":
    main()
