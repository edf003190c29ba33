"""What the shadow hint costs per frame, against the enhancer's own time, on the demo street.

    python benchmarks/bench_shadow_hint.py --threads 2 --res 512x288 --repeats 20
    python benchmarks/bench_shadow_hint.py --threads 2 --scene-copies 1 4 16   # occluder map against scene size

Renders the demo street's ego frames (its inserted vehicle, the street's sun) at ``--res``, then times, per
frame and alternating in one run: :func:`scene_tools.shadows.shadow_hint` for the inserted vehicle as
``Scene.render_frame`` calls it (with the scene's shadow on the asset: its occluder map is drawn every frame),
cold (the asset's light view rendered every frame) and warm (that light view reused from the scene's cache, as
while the asset drives straight under a fixed sun), and the warm hint without the scene's shadow on the asset; the enhancer (``--model``, default weights/enhancer) on the frame with mask, depth and, for models that read it,
the hint. Prints medians and the hint's cost as a share of the enhancer's time (the issue's bar: at most 10 %
at 512x288). The G-buffer render itself is not counted: the simulator pays it with or without the hint.

``--scene-copies N ...``: instead, the demo street's Gaussians repeated N times (60 m apart across the road, a
larger capture at the same density); per size, the median time of the asset's occluder map
(:func:`scene_tools.shadows.occluder_map`, which finds the occluders through the scene's sun columns) against
a reference that tests every Gaussian against the light frustum and draws the same map (checked equal).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch


def main() -> None:
    from scene_tools.cameras import Intrinsics, Trajectory
    from scene_tools.scene import RenderConfig, Scene
    from scene_tools.shadows import shadow_hint
    from simharmony.harmonizer import Harmonizer
    from simharmony.paths import DEMO_SCENE_DIR
    from simharmony.utils.checks import arg_int

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--res", default="512x288", help="WxH")
    p.add_argument("--repeats", type=arg_int(1), default=20, help="frames timed (after 3 warm-up frames)")
    p.add_argument("--threads", type=arg_int(1), default=2)
    p.add_argument("--scene-copies", type=arg_int(1), nargs="+", default=None,
                   help="time the occluder map against scene size instead (module docstring)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.scene_copies:
        return occluder_map_vs_scene_size(args.scene_copies, args.repeats)
    w, h = (int(v) for v in args.res.lower().split("x"))

    scene = Scene.load(DEMO_SCENE_DIR)
    scene.config = RenderConfig(**{**scene.config.to_dict(), "shadow_hints": False})  # timed separately below
    traj = Trajectory.from_dict(scene.metadata["ego_trajectory"])
    k = traj.intrinsics
    intr = Intrinsics(k.fx * w / k.width, k.fy * h / k.height, k.cx * w / k.width, k.cy * h / k.height, w, h)
    harm = Harmonizer.from_pretrained(args.model)
    sun = scene.sun
    n = args.repeats + 3
    cold_ms, hint_ms, enh_ms, hint_px, cast_only_ms = [], [], [], [], []
    cache: dict = {}
    for i in range(n):
        t = i % len(traj)
        scene.reset()
        fr = scene.render_frame(traj.poses[t], float(traj.times[t]), intr)
        casters = scene.shadow_casters(float(traj.times[t]))
        occ = scene.shadow_occluders()
        t0 = time.perf_counter()
        shadow_hint(casters, sun, fr.depth, intr.K, fr.pose, exclude=fr.inserted_mask, cache={}, occluders=occ)
        t1 = time.perf_counter()
        hint = shadow_hint(casters, sun, fr.depth, intr.K, fr.pose, exclude=fr.inserted_mask, cache=cache, occluders=occ)
        t2 = time.perf_counter()
        shadow_hint(casters, sun, fr.depth, intr.K, fr.pose, exclude=fr.inserted_mask, cache=cache)
        cast_only_ms.append((time.perf_counter() - t2) * 1e3)
        t2 = time.perf_counter()
        harm.enhance(fr.rgb, mask=fr.inserted_mask, depth=fr.depth, shadow_hint=hint, stream="bench", cut=t == 0)
        t3 = time.perf_counter()
        if i >= 3:
            cold_ms.append((t1 - t0) * 1e3)
            hint_ms.append((t2 - t1) * 1e3)
            enh_ms.append((t3 - t2) * 1e3)
            hint_px.append(int((hint > 0.3).sum()))
    mc, mh, me = statistics.median(cold_ms), statistics.median(hint_ms), statistics.median(enh_ms)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"{args.threads} threads, load {os.getloadavg()[0]:.1f}; model {args.model} "
          f"(reads the hint: {harm.reads_shadow_hint}); {len(scene.objects)} inserted object(s), "
          f"{sum(len(o.asset.gaussians) for o in scene.objects)} Gaussians; sun {sun}")
    print(f"{w}x{h}, {args.repeats} frames: shadow hint median cold {mc:.2f} ms, warm {mh:.2f} ms (p90 "
          f"{np.percentile(hint_ms, 90):.2f}; light views cached: {len(cache)}), enhancer median {me:.2f} ms; "
          f"hint / enhancer = {mc / me:.3f} cold, {mh / me:.3f} warm; hint pixels > 0.3: median {statistics.median(hint_px)}")
    mo = statistics.median(cast_only_ms[3:])
    print(f"of which the scene's shadow on the asset (its occluder map, {len(occ.means)} scene Gaussians culled to "
          f"the asset's light frustum, drawn every frame): {mh - mo:.2f} ms; the cast shadow alone, warm: {mo:.2f} ms")


def occluder_map_vs_scene_size(copies: list[int], repeats: int) -> None:
    from scene_tools.cameras import Trajectory
    from scene_tools.scene import Scene
    from scene_tools.shadows import (
        OCCLUDER_MAP_PX,
        OCCLUDER_REACH_M,
        Caster,
        draw_from_sun,
        in_light_frustum,
        light_view,
        occluder_map,
    )
    from simharmony.paths import DEMO_SCENE_DIR

    scene = Scene.load(DEMO_SCENE_DIR)
    traj = Trajectory.from_dict(scene.metadata["ego_trajectory"])
    occ = scene.shadow_occluders()
    unit = scene.sun.direction / np.linalg.norm(scene.sun.direction)

    def every_gaussian(caster: Caster, street: Caster) -> torch.Tensor:
        """The reference: every Gaussian tested against the frustum, the kept ones drawn; -> alpha [S, S]."""
        view = light_view(caster.in_world(), unit, OCCLUDER_MAP_PX, OCCLUDER_REACH_M, behind_radii=0.5)
        light_xyz = street.means @ view["viewmat"][:3, :3].T + view["viewmat"][:3, 3]
        idx = in_light_frustum(light_xyz, street.extent, view).nonzero()[:, 0]
        return draw_from_sun(street, idx, view)["alpha"]

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}; the demo vehicle along its drive, sun {scene.sun}")
    for n in copies:
        shift = torch.tensor([[0.0, 60.0 * k, 0.0] for k in range(n)]).repeat_interleave(len(occ.means), 0)
        street = Caster(occ.means.repeat(n, 1) + shift, occ.quats.repeat(n, 1), occ.scales.repeat(n, 1),
                        occ.opacities.repeat(n))
        t0 = time.perf_counter()
        street.sun_columns(light_view(scene.shadow_casters(0.0)[0].in_world(), unit)["viewmat"][:3, :3])
        build_ms = (time.perf_counter() - t0) * 1e3
        ref_ms, col_ms = [], []
        for i in range(repeats + 2):
            caster = scene.shadow_casters(float(traj.times[i % len(traj)]))[0]
            t0 = time.perf_counter()
            want = every_gaussian(caster, street)
            t1 = time.perf_counter()
            got = occluder_map(caster, street, unit)["alpha"]
            t2 = time.perf_counter()
            if not torch.equal(want, got):
                raise SystemExit(f"occluder map differs from the reference at {n} copies, frame {i}")
            if i >= 2:
                ref_ms.append((t1 - t0) * 1e3)
                col_ms.append((t2 - t1) * 1e3)
        print(f"{len(street.means):8d} scene Gaussians: occluder map median {statistics.median(col_ms):.2f} ms "
              f"(every Gaussian tested: {statistics.median(ref_ms):.2f} ms; maps equal); sun columns built once "
              f"per sun in {build_ms:.1f} ms")


if __name__ == "__main__":
    main()
