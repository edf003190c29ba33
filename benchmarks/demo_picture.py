"""The README's demo picture: the demo drive through the shipped enhancer, a few frames as rows of
render | harmonized | shadow hint | |difference| x4, and the inserted vehicle's cast shadow enlarged. Prints
how much the enhancer darkens the ground where the hint puts that shadow, over the whole drive.

    python benchmarks/demo_picture.py --frames 0 10 20 30 --out docs/images/demo_harmonized.png

Uses the public path only (``Simulator`` on the demo scene, the default weights unless ``--model``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np


def main() -> None:
    from simharmony.demo import load_demo_scene
    from simharmony.sim import Simulator
    from simharmony.utils.checks import arg_float, arg_int
    from simharmony.visualize import difference, save_png, shadow_panel, side_by_side

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--shift", type=arg_float(), default=0.0, help="lateral shift of the ego path, metres")
    p.add_argument("--frames", type=arg_int(0), nargs="+", default=[0, 10, 20, 30])
    p.add_argument("--zoom", type=arg_int(1), default=3, help="enlargement of the crop around the vehicle")
    p.add_argument("--out", default="docs/images/demo_harmonized.png")
    args = p.parse_args()

    scene, trajectory = load_demo_scene()
    if args.shift:
        trajectory = trajectory.shifted_laterally(args.shift)
    if max(args.frames) >= len(trajectory):
        p.error(f"--frames: the demo drive has {len(trajectory)} frames")
    sim = Simulator(scene, args.model, intrinsics=trajectory.intrinsics, progress=False)
    seq = sim.render(trajectory)
    # how dark the enhancer makes the ground where the hint puts the vehicle's cast shadow, per frame
    ratios = []
    for f in seq:
        ground = (f.shadow_hint > 0.5) & (f.inserted_mask < 0.1) if f.shadow_hint is not None else None
        if ground is not None and ground.any():
            raw = np.clip(f.raw, 0, 1)
            ratios.append(float(np.clip(f.harmonized, 0, 1)[ground].mean() / max(raw[ground].mean(), 1e-6)))
    if ratios:
        print(f"cast shadow on the ground (hint > 0.5 off the vehicle), harmonized / render: median "
              f"{np.median(ratios):.3f} over the {len(ratios)} of {len(seq)} frames that have one")
    rows = []
    for i in args.frames:
        f = seq[i]
        raw, out = np.clip(f.raw, 0, 1), np.clip(f.harmonized, 0, 1)
        panels = [raw, out, shadow_panel(f.shadow_hint, raw), difference(out, raw)]
        labels = ["render", "harmonized", "shadow hint", "|difference| x4"]
        # the vehicle's cast shadow (else the vehicle) enlarged, render | harmonized
        interest = f.inserted_mask > 0.5
        if f.shadow_hint is not None and ((f.shadow_hint > 0.3) & ~interest).sum() > 20:
            interest = (f.shadow_hint > 0.3) & ~interest
        h, w = interest.shape
        ys, xs = np.nonzero(interest)
        cy, cx = (int(ys.mean()), int(xs.mean())) if len(ys) else (h // 2, w // 2)  # out of view: the centre
        ch, cw = h // args.zoom, w // (2 * args.zoom)
        y0, x0 = int(np.clip(cy - ch // 2, 0, h - ch)), int(np.clip(cx - cw // 2, 0, w - cw))
        pair = np.concatenate([raw[y0:y0 + ch, x0:x0 + cw], out[y0:y0 + ch, x0:x0 + cw]], axis=1)
        panels.append(cv2.resize(pair, (w, h), interpolation=cv2.INTER_NEAREST))
        labels.append(f"render | harmonized, x{args.zoom}")
        rows.append(side_by_side(panels, labels))
    save_png(args.out, np.concatenate(rows, axis=0))
    print(f"wrote {args.out} ({len(rows)} frames, model {sim.harmonizer_source})")


if __name__ == "__main__":
    main()
