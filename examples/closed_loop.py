"""Closed-loop driving through the demo street with the harmonizer in the loop.

The ego vehicle is driven by a deliberately simple controller that sees only what the simulator gives
it each step: the last *harmonized* frame, its depth map, and its own camera pose and intrinsics.

- Lane keeping (from the harmonized frame + depth): pixels whose depth puts them on the ground plane
  (z = 0, the scene_tools street convention) within a few metres of the ego's path and which are bright
  (paint is much lighter than asphalt) are lane markings. Their lateral positions in the ego frame give
  the left / right lane lines (one line plus the lane width suffices); a yaw rate steers towards the lane
  centre and along the lines' direction.
- Speed (from depth): pixels 1.2-3 m above the ground inside a corridor ahead of the ego are obstacles
  (the reconstructed road itself floats up to ~1 m at a distance, so lower points are not trusted); the
  gap is a low percentile of their forward distances. The target speed falls linearly from cruise at
  ``safe_gap_m`` to zero at ``stop_gap_m``; acceleration and braking are rate limited.

The scene is the shipped demo street with its inserted vehicle (on a 3 m shifted copy of the recorded
trajectory) plus, unless ``--lead-gap 0``, the same databank vehicle driving slowly ahead in the ego lane
so the brake is exercised. Writes ``closed_loop.mp4`` (raw | harmonized, with speed and gap) and
``closed_loop.json`` (per-frame poses, speeds, gaps, lane estimates and render / enhance timings).

    python examples/closed_loop.py --frames 40 --out outputs/closed_loop            # default weights
    python examples/closed_loop.py --model path/to/enhancer --scale 0.5

``--model default`` uses the shipped weights/enhancer; if that folder is missing it falls back to an
untrained Enhancer (the identity: harmonized == raw) and says so.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from scene_tools.cameras import Intrinsics, look_at
from scene_tools.scene import ObjectTrack, yaw_pose
from simharmony.sim import SimFrame, Simulator, resolve_harmonizer
from simharmony.utils.config import Config, require
from simharmony.utils.io import ensure_writable_dir, write_text_atomic
from simharmony.visualize import side_by_side, write_video


@dataclass
class ControllerConfig(Config):
    cruise_speed_mps: float = 6.0
    max_accel_mps2: float = 2.0
    max_brake_mps2: float = 6.0
    safe_gap_m: float = 14.0  # start slowing down below this gap
    stop_gap_m: float = 6.0  # stand still at this gap (camera to obstacle)
    corridor_half_width_m: float = 1.2  # obstacles count within this distance of the ego's path
    obstacle_height_m: tuple[float, float] = (1.2, 3.0)
    perception_range_m: float = 35.0
    lane_width_m: float = 3.0
    marking_window_m: tuple[float, float] = (3.0, 15.0)  # forward range searched for lane paint
    marking_max_lateral_m: float = 2.6
    marking_min_luma: float = 0.45  # and at least road median + 0.2
    steer_lateral_gain: float = 0.6  # rad/s per metre of lane-centre offset
    steer_heading_gain: float = 1.5  # rad/s per radian of lane-direction error
    max_yaw_rate: float = 0.35  # rad/s

    def __post_init__(self) -> None:
        require(0 < self.stop_gap_m < self.safe_gap_m, "ControllerConfig", "need 0 < stop_gap_m < safe_gap_m")
        require(self.cruise_speed_mps > 0, "ControllerConfig", "cruise_speed_mps must be > 0")


@dataclass
class EgoState:
    x: float
    y: float
    yaw: float  # radians about +z, 0 = +x
    speed: float  # m/s


@dataclass
class Perception:
    gap_m: float  # inf = nothing ahead in range
    obstacle_px: int
    lane_offset_m: float | None  # lane centre's lateral position in the ego frame (+ = left); None = unseen
    lane_heading_rad: float | None  # direction of the lane lines relative to the ego heading (+ = left)
    marking_px: tuple[int, int]  # (left, right) paint pixels found


def camera_pose(s: EgoState, height: float, pitch: float) -> np.ndarray:
    """Camera-to-world [4, 4] of a car-mounted camera at ``height`` pitched by ``pitch`` radians."""
    eye = np.array([s.x, s.y, height])
    look = np.array([math.cos(s.yaw) * math.cos(pitch), math.sin(s.yaw) * math.cos(pitch), math.sin(pitch)])
    return look_at(eye, eye + look)


def perceive(rgb: np.ndarray, depth: np.ndarray, pose: np.ndarray, intr: Intrinsics, cfg: ControllerConfig) -> Perception:
    """Gap ahead and lane estimate from a frame [H, W, 3], its z-depth [H, W] and camera pose (see module doc)."""
    h, w = depth.shape
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    ok = np.isfinite(depth) & (depth > 0)
    d = depth[ok]
    cam = np.stack([(u[ok] - intr.cx) / intr.fx * d, (v[ok] - intr.cy) / intr.fy * d, d], -1)
    world = cam @ pose[:3, :3].T + pose[:3, 3]
    heading = pose[:3, 2].copy()  # camera forward, flattened onto the ground
    heading[2] = 0.0
    heading /= max(np.linalg.norm(heading), 1e-9)
    left = np.array([-heading[1], heading[0], 0.0])
    rel = world - pose[:3, 3]
    fwd, lat, z = rel @ heading, rel @ left, world[:, 2]

    lo, hi = cfg.obstacle_height_m
    obst = (z > lo) & (z < hi) & (np.abs(lat) < cfg.corridor_half_width_m) & (fwd > 0) & (fwd < cfg.perception_range_m)
    min_px = max(3, int(5e-4 * h * w))  # a few pixels of noise are not a car
    gap = float(np.percentile(fwd[obst], 5)) if obst.sum() >= min_px else math.inf

    luma = (rgb[ok] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.float64)
    a, b = cfg.marking_window_m
    ground = (np.abs(z) < 0.25) & (fwd > a) & (fwd < b) & (np.abs(lat) < cfg.marking_max_lateral_m)
    offset = heading_err = None
    n_left = n_right = 0
    if ground.sum() >= 20:
        paint = ground & (luma > max(cfg.marking_min_luma, float(np.median(luma[ground])) + 0.2))
        sides = {}
        for name, sel in (("left", paint & (lat > 0)), ("right", paint & (lat < 0))):
            n = int(sel.sum())
            if name == "left":
                n_left = n
            else:
                n_right = n
            if n >= 3:
                slope = None
                if n >= 6 and np.ptp(fwd[sel]) > 2.0:
                    slope = float(np.polyfit(fwd[sel], lat[sel], 1)[0])  # lateral drift per metre ahead
                sides[name] = (float(np.median(lat[sel])), slope)
        half = cfg.lane_width_m / 2
        if "left" in sides and "right" in sides and sides["left"][0] - sides["right"][0] > half:
            offset = (sides["left"][0] + sides["right"][0]) / 2
        elif "left" in sides:
            offset = sides["left"][0] - half
        elif "right" in sides:
            offset = sides["right"][0] + half
        slopes = [s for _, s in sides.values() if s is not None]
        if slopes:
            heading_err = math.atan(float(np.mean(slopes)))
    return Perception(gap, int(obst.sum()), offset, heading_err, (n_left, n_right))


def control(s: EgoState, p: Perception, cfg: ControllerConfig, dt: float) -> tuple[EgoState, dict]:
    """The next state after ``dt`` seconds, and the commands that led there."""
    if p.gap_m >= cfg.safe_gap_m:
        target = cfg.cruise_speed_mps
    else:
        frac = (p.gap_m - cfg.stop_gap_m) / (cfg.safe_gap_m - cfg.stop_gap_m)
        target = cfg.cruise_speed_mps * min(max(frac, 0.0), 1.0)
    dv = float(np.clip(target - s.speed, -cfg.max_brake_mps2 * dt, cfg.max_accel_mps2 * dt))
    yaw_rate = 0.0  # no lane seen: hold the heading
    if p.lane_offset_m is not None:
        yaw_rate += cfg.steer_lateral_gain * p.lane_offset_m
    if p.lane_heading_rad is not None:
        yaw_rate += cfg.steer_heading_gain * p.lane_heading_rad
    yaw_rate = float(np.clip(yaw_rate, -cfg.max_yaw_rate, cfg.max_yaw_rate))
    speed = max(0.0, s.speed + dv)
    yaw = s.yaw + yaw_rate * dt
    mean_speed = 0.5 * (s.speed + speed)
    nxt = EgoState(s.x + mean_speed * math.cos(yaw) * dt, s.y + mean_speed * math.sin(yaw) * dt, yaw, speed)
    return nxt, {"target_speed_mps": target, "accel_mps2": dv / dt, "yaw_rate_rad_s": yaw_rate}


def _hud(image: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` at the bottom left of a uint8 image (the panel titles sit at the top)."""
    out = image.copy()
    scale, y = max(0.3, image.shape[0] / 400), image.shape[0] - 6
    cv2.putText(out, text, (4, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (4, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 120), 1, cv2.LINE_AA)
    return out


def _fmt_gap(g: float) -> str:
    return "clear" if not math.isfinite(g) else f"{g:.1f} m"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=40, help="simulation steps (10 per second)")
    ap.add_argument("--out", default="outputs/closed_loop", help="output folder")
    ap.add_argument("--model", default="default",
                    help="'default' (weights/enhancer; an untrained Enhancer with a warning while it is missing), "
                         "'untrained', or a folder saved with Enhancer.save_pretrained")
    ap.add_argument("--scale", type=float, default=1.0, help="camera resolution factor (1.0 = 256x144)")
    ap.add_argument("--start-offset", type=float, default=0.4,
                    help="initial lateral offset from the recorded start, metres (+ = left), to show lane keeping")
    ap.add_argument("--lead-gap", type=float, default=18.0,
                    help="a databank vehicle starts this far ahead in the ego lane (0 = none)")
    ap.add_argument("--lead-speed", type=float, default=2.0, help="its speed in m/s")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.frames < 1:
        ap.error("--frames must be >= 1")

    harmonizer, source = resolve_harmonizer(args.model, untrained_fallback=args.model == "default")
    if "UNTRAINED" in source:
        print("warning: weights/enhancer holds no trained weights yet; using an UNTRAINED Enhancer, which is the "
              "identity (harmonized == raw). Train it or pass --model PATH.", file=sys.stderr)
    sim = Simulator.from_demo(harmonizer, scale=args.scale, progress=False)
    cfg = ControllerConfig()
    dt = sim.scene.config.frame_dt
    intr = sim.intrinsics

    # Start where the recorded drive starts; keep its camera height and pitch.
    p0 = sim.trajectory.poses[0]
    fwd0 = p0[:3, 2]
    pitch = math.asin(float(np.clip(fwd0[2], -1, 1)))
    yaw0 = math.atan2(fwd0[1], fwd0[0])
    state = EgoState(float(p0[0, 3] - math.sin(yaw0) * args.start_offset),
                     float(p0[1, 3] + math.cos(yaw0) * args.start_offset), yaw0, cfg.cruise_speed_mps)
    height = float(p0[2, 3])

    if args.lead_gap > 0:  # a slower car ahead in the ego lane, along the recorded lane centre
        bank = Simulator.demo_bank()
        vehicles = bank.query(category="vehicle")
        if not vehicles:
            raise SystemExit(f"no vehicle in the asset bank {bank.folder}")
        duration = args.frames * dt + 1.0
        x0, y0 = p0[0, 3] + math.cos(yaw0) * args.lead_gap, p0[1, 3] + math.sin(yaw0) * args.lead_gap
        d = args.lead_speed * duration
        track = ObjectTrack(np.array([0.0, duration]), np.stack([
            yaw_pose(x0, y0, 0.0, yaw0), yaw_pose(x0 + math.cos(yaw0) * d, y0 + math.sin(yaw0) * d, 0.0, yaw0)]))
        sim.insert(vehicles[0].id, track, bank=bank)

    sim.reset()
    log, rows = [], []
    for k in tqdm(range(args.frames), desc="closed loop", unit="frame", disable=args.quiet):
        pose = camera_pose(state, height, pitch)
        frame: SimFrame = sim.step(pose, time=k * dt)
        seen = perceive(frame.harmonized, frame.depth, frame.pose, intr, cfg)
        nxt, cmd = control(state, seen, cfg, dt)
        log.append({
            "index": k, "time": frame.time, "pose": frame.pose[:3].tolist(), "state": asdict(state),
            "gap_m": seen.gap_m if math.isfinite(seen.gap_m) else None, "obstacle_px": seen.obstacle_px,
            "lane_offset_m": seen.lane_offset_m, "lane_heading_rad": seen.lane_heading_rad,
            "marking_px": list(seen.marking_px), **cmd,
            "render_ms": frame.render_ms, "enhance_ms": frame.enhance_ms, "enhanced": frame.enhanced,
        })
        row = side_by_side([frame.raw, frame.harmonized], ["raw render", "harmonized"])
        rows.append(_hud(row, f"t={frame.time:.1f}s  {state.speed:.1f} m/s  gap {_fmt_gap(seen.gap_m)}"))
        state = nxt

    out = ensure_writable_dir(args.out)
    video = write_video(Path(out) / "closed_loop.mp4", rows, fps=1.0 / dt)
    stats = sim.stats()
    gaps = [r["gap_m"] for r in log if r["gap_m"] is not None]
    positions = np.array([np.asarray(r["pose"])[:, 3] for r in log])
    report = {
        "model": source,
        "resolution": [intr.width, intr.height],
        "controller": cfg.to_dict(),
        "args": vars(args),
        "summary": {
            "frames": len(log),
            "distance_m": float(np.linalg.norm(np.diff(positions, axis=0), axis=1).sum()),
            "min_gap_m": min(gaps) if gaps else None,
            "final_speed_mps": state.speed,
            "final_lateral_offset_m": log[-1]["lane_offset_m"],
            "median_render_ms": stats["render_ms"]["median"],
            "median_enhance_ms": stats["enhance_ms"]["median"],
        },
        "plugin_stats": stats,
        "frames": log,
    }
    write_text_atomic(Path(out) / "closed_loop.json", json.dumps(report, indent=2))
    s = report["summary"]
    print(f"closed loop: {s['frames']} frames at {intr.width}x{intr.height}, {s['distance_m']:.1f} m driven, "
          f"min gap {_fmt_gap(s['min_gap_m'] if s['min_gap_m'] is not None else math.inf)}, final speed "
          f"{s['final_speed_mps']:.1f} m/s; median render {s['median_render_ms']:.0f} ms, enhance "
          f"{s['median_enhance_ms']:.0f} ms per frame; model: {source}")
    print(f"wrote {video} and {Path(out) / 'closed_loop.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
