"""Insert a databank asset into the demo street from Python, render it raw and harmonized, save the result.

    python examples/insert_asset.py                                   # first vehicle, 3 m to the left
    python examples/insert_asset.py --asset demo_street_seed0-23-89603723 --lateral -3 --speed 4
    python examples/insert_asset.py --category vehicle --frames 20 --scale 0.5 --model path/to/enhancer
    python examples/insert_asset.py --sun 60 25                       # a low sun from the front left

Steps, all public API:

1. ``AssetBank(weights/demo_assets)``: pick an asset by id (``--asset``) or the first of a category.
2. ``Simulator.from_demo``: the demo street (its own inserted vehicle is removed unless
   ``--keep-existing``) with the harmonizer in the render loop.
3. ``ObjectTrack.along_trajectory``: the asset drives along the ego trajectory shifted sideways by
   ``--lateral`` metres (+ = left; the paper inserts along a 3 m shift), ``--forward`` metres ahead, at
   ``--speed`` m/s.
4. ``Simulator.render(trajectory)``: raw and harmonized frames with depth and the inserted-asset mask.
   The demo street knows its sun (``--sun`` sets another), so every frame also carries the shadow hint: where
   the asset's shadow falls and where the street shades the asset; the enhancer darkens there.
5. Writes ``insert_asset.mp4`` (raw | harmonized | mask | shadow hint), ``frame_XXX.png`` for the first, middle and last
   frames, ``contact_sheet.png`` and ``insert_asset.json`` (asset info, track, timings).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from scene_tools.scene import ObjectTrack
from scene_tools.shadows import Sun
from simharmony.errors import InvalidInputError
from simharmony.paths import DEMO_ASSETS_DIR
from simharmony.sim import Simulator, resolve_harmonizer
from simharmony.utils.io import ensure_writable_dir, write_text_atomic
from simharmony.visualize import contact_sheet, save_png, shadow_panel, side_by_side, write_video


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bank", default=str(DEMO_ASSETS_DIR), help="asset bank folder")
    ap.add_argument("--asset", default=None, help="asset id (default: the first asset of --category)")
    ap.add_argument("--category", default="vehicle", help="category to pick from when --asset is not given")
    ap.add_argument("--lateral", type=float, default=3.0, help="lateral shift of the asset's path, metres (+ = left)")
    ap.add_argument("--forward", type=float, default=8.0, help="how far ahead of the ego it starts, metres")
    ap.add_argument("--speed", type=float, default=None, help="its speed in m/s (0 = parked; default: the ego's speed)")
    ap.add_argument("--frames", type=int, default=40, help="frames of the recorded ego trajectory to render")
    ap.add_argument("--scale", type=float, default=1.0, help="camera resolution factor (1.0 = 256x144)")
    ap.add_argument("--model", default="default",
                    help="'default' (weights/enhancer; an untrained Enhancer with a warning while it is missing), "
                         "'untrained', or a folder saved with Enhancer.save_pretrained")
    ap.add_argument("--sun", type=float, nargs=2, metavar=("AZIMUTH", "ELEVATION"), default=None,
                    help="the sun in degrees (azimuth from the street's +x towards +y, elevation above the horizon); "
                         "default: the demo street's own")
    ap.add_argument("--keep-existing", action="store_true", help="keep the demo scene's own inserted vehicle")
    ap.add_argument("--out", default="outputs/insert_asset", help="output folder")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    sun = None
    if args.sun is not None:
        try:
            sun = Sun(*args.sun)
        except InvalidInputError as e:
            ap.error(f"--sun: {e}")
    for name in ("lateral", "forward", "speed"):
        if getattr(args, name) is not None and not math.isfinite(getattr(args, name)):
            ap.error(f"--{name} must be finite")
    if args.speed is not None and args.speed < 0:
        ap.error("--speed must be >= 0")

    # 1. the asset
    bank = Simulator.demo_bank(args.bank)
    if args.asset is not None:
        asset = bank.get(args.asset)  # UnknownAssetError lists the known ids
    else:
        infos = bank.query(category=args.category)
        if not infos:
            cats = sorted({i.category for i in bank.infos()})
            ap.error(f"no asset of category {args.category!r} in {bank.folder}; categories there: {cats}")
        asset = bank.get(infos[0].id)
    print(f"asset {asset.id}: {asset.category}, {asset.info.num_gaussians} Gaussians, "
          f"size {' x '.join(f'{s:.1f}' for s in asset.info.size)} m, from {asset.info.source_scene}")

    # 2. the simulator
    harmonizer, source = resolve_harmonizer(args.model, untrained_fallback=args.model == "default")
    if "UNTRAINED" in source:
        print("warning: weights/enhancer holds no trained weights yet; using an UNTRAINED Enhancer, which is the "
              "identity (harmonized == raw). Train it or pass --model PATH.", file=sys.stderr)
    sim = Simulator.from_demo(harmonizer, scale=args.scale, progress=not args.quiet)
    if sun is not None:
        sim.scene.sun = sun
    if not args.keep_existing:
        for iid in list(sim.scene.inserted_ids):
            sim.scene.remove(iid)
    trajectory = sim.trajectory[: max(1, args.frames)]

    # 3. the asset's track: the ego path shifted sideways, at the requested speed
    full = sim.trajectory
    path_len = float(np.linalg.norm(np.diff(full.positions[:, :2], axis=0), axis=1).sum())
    ego_speed = path_len / max(float(full.times[-1] - full.times[0]), 1e-9)
    speed = ego_speed if args.speed is None else args.speed
    track = ObjectTrack.along_trajectory(full, lateral_offset_m=args.lateral, forward_offset_m=args.forward,
                                         speed_scale=speed / ego_speed if ego_speed > 0 else 0.0)
    iid = sim.insert(asset, track)

    # 4. render raw and harmonized
    seq = sim.render(trajectory)

    # 5. save
    out = ensure_writable_dir(args.out)
    rows = [side_by_side([f.raw, f.harmonized, f.inserted_mask, shadow_panel(f.shadow_hint, f.raw)],
                         ["raw render", "harmonized", "inserted mask", "shadow hint"]) for f in seq]
    video = write_video(out / "insert_asset.mp4", rows, fps=1.0 / sim.scene.config.frame_dt)
    pngs = []
    for i in sorted({0, len(seq) // 2, len(seq) - 1}):
        pngs.append(out / f"frame_{i:03d}.png")
        save_png(pngs[-1], rows[i])
    save_png(out / "contact_sheet.png", contact_sheet(rows, max_rows=6))
    visible = [float((f.inserted_mask > 0.5).mean()) for f in seq]
    timings = seq.timings()
    report = {
        "model": source,
        "asset": asset.info.to_dict(),
        "instance_id": iid,
        "lateral_m": args.lateral, "forward_m": args.forward, "speed_mps": speed, "ego_speed_mps": ego_speed,
        "resolution": [sim.intrinsics.width, sim.intrinsics.height],
        "frames": len(seq),
        "asset_pixel_fraction": visible,
        "track_positions": [track.pose_at(t)[:3, 3].tolist() for t in trajectory.times],
        "timings": timings,
        "plugin_stats": sim.stats(),
    }
    write_text_atomic(out / "insert_asset.json", json.dumps(report, indent=2))
    print(f"rendered {len(seq)} frames at {sim.intrinsics.width}x{sim.intrinsics.height}; asset on "
          f"{100 * np.mean(visible):.1f}% of pixels on average; median render {timings['render_ms']['median']:.0f} ms, "
          f"enhance {timings['enhance_ms']['median']:.0f} ms per frame; model: {source}")
    print(f"wrote {video}, {', '.join(p.name for p in pngs)}, contact_sheet.png and insert_asset.json in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
