"""The README's main job: render the shipped demo street with its inserted vehicle and write pictures.

Renders the ego trajectory (optionally shifted sideways for a novel view) through
``scene_tools.scene.Scene.render``, passes every frame (with its inserted-asset mask and depth) through
the streaming :class:`~simharmony.harmonizer.Harmonizer` (default: the shipped weights/enhancer), and
writes a side-by-side video and contact sheet: render | harmonized | |difference| x4 | depth | inserted
mask | geometric flow.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scene_tools.cameras import Trajectory
from scene_tools.scene import Scene
from simharmony.errors import CorruptFileError, MissingFileError
from simharmony.paths import DEMO_SCENE_DIR
from simharmony.utils.io import PathLike, write_text_atomic
from simharmony.visualize import colorize_depth, colorize_flow, contact_sheet, save_png, side_by_side, write_video


@dataclass
class DemoResult:
    out_dir: str
    video: str
    contact_sheet: str
    num_frames: int
    width: int
    height: int
    lateral_shift_m: float
    median_render_ms: float
    median_enhance_ms: float | None
    model: str
    inserted_pixel_fraction: float
    scene_gaussians: int


def load_demo_scene(scene_dir: PathLike = DEMO_SCENE_DIR) -> tuple[Scene, Trajectory]:
    """The demo Scene and its recorded ego trajectory."""
    scene_dir = Path(scene_dir)
    if not (scene_dir / "scene.yaml").is_file():
        raise MissingFileError(
            f"demo scene not found at {scene_dir} (expected scene.yaml there); "
            "build it with `simharmony build-demo-scene`"
        )
    scene = Scene.load(scene_dir)
    if "ego_trajectory" not in scene.metadata:
        raise CorruptFileError(f"{scene_dir}/scene.yaml has no ego_trajectory in its metadata")
    return scene, Trajectory.from_dict(scene.metadata["ego_trajectory"])


def run_demo(
    scene_dir: PathLike = DEMO_SCENE_DIR,
    out_dir: PathLike = "outputs/demo",
    lateral_shift_m: float = 0.0,
    num_frames: int | None = None,
    progress: bool = True,
    harmonizer: Any = "default",
) -> DemoResult:
    """harmonizer: "default" (weights/enhancer), a folder, a Harmonizer/Enhancer, "untrained" or None (the
    raw render only); see :func:`simharmony.sim.resolve_harmonizer`."""
    from simharmony.sim import resolve_harmonizer

    scene, trajectory = load_demo_scene(scene_dir)
    h, model = resolve_harmonizer(harmonizer)
    if lateral_shift_m:
        trajectory = trajectory.shifted_laterally(lateral_shift_m)
    if num_frames is not None:
        trajectory = trajectory[: max(1, num_frames)]
    out = Path(out_dir)

    rows, times_ms, enhance_ms, inserted = [], [], [], []
    scene.reset()
    iterator = range(len(trajectory))
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="demo render", unit="frame")
    for i in iterator:
        t0 = time.perf_counter()
        f = scene.render_frame(trajectory.poses[i], float(trajectory.times[i]), trajectory.intrinsics)
        times_ms.append((time.perf_counter() - t0) * 1e3)
        rgb, mask, depth = f.rgb.cpu().numpy(), f.inserted_mask.cpu().numpy(), f.depth.cpu().numpy()
        inserted.append(float((mask > 0.5).mean()))
        panels, labels = [rgb], ["render"]
        if h is not None:
            t0 = time.perf_counter()
            enhanced = h.enhance(rgb, mask=mask, depth=depth, stream="ego", clip=True)
            enhance_ms.append((time.perf_counter() - t0) * 1e3)
            panels += [enhanced, np.clip(np.abs(enhanced - np.clip(rgb, 0, 1)) * 4.0, 0, 1)]
            labels += ["harmonized", "|difference| x4"]
        panels += [colorize_depth(depth), mask, colorize_flow(f.flow.cpu().numpy(), f.flow_valid.cpu().numpy())]
        labels += ["depth", "inserted mask", "flow to t-1"]
        rows.append(side_by_side(panels, labels))
    video = write_video(out / "demo.mp4", rows, fps=10)
    sheet = out / "contact_sheet.png"
    save_png(sheet, contact_sheet(rows, max_rows=6))
    intr = trajectory.intrinsics
    result = DemoResult(
        str(out), str(video), str(sheet), len(trajectory), intr.width, intr.height, lateral_shift_m,
        float(np.median(times_ms)), float(np.median(enhance_ms)) if enhance_ms else None, model,
        float(np.mean(inserted)), len(scene.background),
    )
    write_text_atomic(out / "demo.json", json.dumps(asdict(result), indent=2))
    return result
