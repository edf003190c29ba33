"""The README's main job: render the shipped demo street with its inserted vehicle and write pictures.

Renders the ego trajectory (optionally shifted sideways for a novel view) through
``simharmony.sim.Simulator``, which passes every frame (with its inserted-asset mask and depth) through
the render hook and the streaming Harmonizer (default: the shipped weights/enhancer), and
writes a side-by-side video and contact sheet: render | harmonized | |difference| x4 | depth | inserted
mask | shadow hint (where the vehicle's shadow falls and the street shades it, from the scene's sun) |
geometric flow.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scene_tools.cameras import Trajectory
from scene_tools.scene import Scene
from simharmony.errors import CorruptFileError, MissingFileError
from simharmony.paths import DEMO_SCENE_DIR
from simharmony.utils.io import PathLike, write_text_atomic
from simharmony.visualize import (
    colorize_depth,
    colorize_flow,
    contact_sheet,
    difference,
    save_png,
    shadow_panel,
    side_by_side,
    write_video,
)


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
    raw render only); see :func:`simharmony.sim.resolve_harmonizer`. Frames go through
    :class:`~simharmony.sim.Simulator` (the render hook), one ego stream."""
    from simharmony.sim import Simulator

    scene, trajectory = load_demo_scene(scene_dir)
    if lateral_shift_m:
        trajectory = trajectory.shifted_laterally(lateral_shift_m)
    if num_frames is not None:
        trajectory = trajectory[: max(1, num_frames)]
    out = Path(out_dir)
    sim = Simulator(scene, harmonizer, intrinsics=trajectory.intrinsics, progress=progress)
    seq = sim.render(trajectory)

    rows = []
    for f in seq:
        panels, labels = [f.raw], ["render"]
        if sim.harmonizer is not None:
            panels += [f.harmonized, difference(f.harmonized, np.clip(f.raw, 0, 1))]
            labels += ["harmonized", "|difference| x4"]
        g = f.gbuffers
        panels += [colorize_depth(f.depth), f.inserted_mask, shadow_panel(f.shadow_hint, f.raw),
                   colorize_flow(g.flow.cpu().numpy(), g.flow_valid.cpu().numpy())]
        labels += ["depth", "inserted mask", "shadow hint", "flow to t-1"]
        rows.append(side_by_side(panels, labels))
    video = write_video(out / "demo.mp4", rows, fps=10)
    sheet = out / "contact_sheet.png"
    save_png(sheet, contact_sheet(rows, max_rows=6))
    timings = seq.timings()
    intr = trajectory.intrinsics
    result = DemoResult(
        str(out), str(video), str(sheet), len(trajectory), intr.width, intr.height, lateral_shift_m,
        timings["render_ms"]["median"], timings["enhance_ms"]["median"] if timings["enhance_ms"]["count"] else None,
        sim.harmonizer_source, float(np.mean([(f.inserted_mask > 0.5).mean() for f in seq])), len(scene.background),
    )
    write_text_atomic(out / "demo.json", json.dumps(asdict(result), indent=2))
    return result
