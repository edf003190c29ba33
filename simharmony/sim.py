"""Closed-loop simulation API: a scene_tools :class:`~scene_tools.scene.Scene` behind the render plugin.

    from simharmony.sim import Simulator
    sim = Simulator.from_demo(harmonizer="default", scale=0.5)   # weights/demo_street + its inserted vehicle
    seq = sim.render(sim.trajectory)         # whole trajectory -> SimSequence (raw, harmonized, depth, mask)
    seq.write_video("out.mp4")               # raw | harmonized side by side

    sim.reset()                              # closed loop: decide each pose from the last frame
    frame = sim.step(pose)                   # -> SimFrame
    while ...:
        pose = controller(frame)
        frame = sim.step(pose)

The harmonizer is a :class:`~simharmony.harmonizer.Harmonizer`, an Enhancer, a folder saved with
``Enhancer.save_pretrained``, "default" (weights/enhancer; MissingFileError if it is absent) or None
(raw frames only). Every frame passes through a :class:`~simharmony.plugin.HarmonizedRenderer`, so the
plugin's failure policy, context resets (size change, teleport, toggle) and timing statistics apply;
``sim.enabled`` switches the enhancer at run time. The ego camera is one stream (``camera_id``).

Layering: this module sits above both scene_tools and the model; the model never imports it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from scene_tools.assets import Asset, AssetBank
from scene_tools.cameras import Intrinsics, Trajectory
from scene_tools.scene import FrameRender, ObjectTrack, Scene, StackedFrames
from simharmony.errors import CorruptFileError, InvalidCameraError, InvalidInputError, MissingFileError
from simharmony.harmonizer import Harmonizer
from simharmony.models import Enhancer, EnhancerConfig
from simharmony.paths import DEMO_ASSETS_DIR, DEMO_SCENE_DIR, ENHANCER_DIR
from simharmony.plugin import HarmonizedRenderer, PluginConfig, timing_summary
from simharmony.utils.io import PathLike, ensure_writable_dir, write_text_atomic
from simharmony.visualize import colorize_depth, side_by_side, write_video

HarmonizerSpec = Harmonizer | Enhancer | str | os.PathLike | None


# ---------------------------------------------------------------------------------------------- frames
@dataclass(eq=False)
class SimFrame:
    """One simulated frame. Images are numpy on the CPU; ``gbuffers`` keeps every scene_tools buffer (torch).

    raw / harmonized: [H, W, 3] float32 in [0, 1] (harmonized is raw when the enhancer is off, absent or
    failed on this frame: see ``enhanced``); depth: [H, W] float32 z-depth, inf = no hit; inserted_mask:
    [H, W] float32 in [0, 1]; pose: [4, 4] camera-to-world (OpenCV); shadow_hint: [H, W] float32 in [0, 1]
    where the inserted assets' shadows fall, or None (the scene has no sun or no inserted asset).
    """

    index: int
    time: float
    pose: np.ndarray
    raw: np.ndarray
    harmonized: np.ndarray
    depth: np.ndarray
    inserted_mask: np.ndarray
    enhanced: bool
    render_ms: float
    enhance_ms: float | None
    gbuffers: FrameRender
    shadow_hint: np.ndarray | None = None

    @property
    def intrinsics(self) -> Intrinsics:
        return self.gbuffers.intrinsics


class SimSequence(StackedFrames):
    """A list of :class:`SimFrame` with stacking helpers (``seq.raw`` is [N, H, W, 3], ``seq.depth`` [N, H, W], numpy)."""

    STACKABLE = ("raw", "harmonized", "depth", "inserted_mask")

    def _stack(self, values: list) -> np.ndarray:
        return np.stack(values)

    def timings(self) -> dict[str, dict[str, float | int]]:
        """{"render_ms", "enhance_ms"}: median / p90 / mean / count over the sequence."""
        return {"render_ms": timing_summary(f.render_ms for f in self),
                "enhance_ms": timing_summary(f.enhance_ms for f in self if f.enhance_ms is not None)}

    def panels(self, depth: bool = False) -> list[np.ndarray]:
        """Side-by-side uint8 rows ``raw | harmonized`` (``| depth`` if asked), one per frame."""
        rows = []
        for f in self:
            imgs, titles = [f.raw, f.harmonized], ["raw render", "harmonized" if f.enhanced else "harmonized (off)"]
            if depth:
                imgs.append(colorize_depth(f.depth))
                titles.append("depth")
            rows.append(side_by_side(imgs, titles))
        return rows

    def write_video(self, path: PathLike, fps: float = 10.0, depth: bool = False) -> Path:
        """MP4 of ``raw | harmonized`` (``| depth``) rows."""
        return write_video(path, self.panels(depth), fps=fps)


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


# ---------------------------------------------------------------------------------------------- harmonizer
def resolve_harmonizer(spec: HarmonizerSpec, device: str = "cpu", untrained_fallback: bool = False) -> tuple[Harmonizer | None, str]:
    """A Harmonizer for ``spec`` and a one-line description of where its weights came from.

    spec: a Harmonizer (used as is), an Enhancer, a folder, "default" (weights/enhancer), "untrained" (a
    fresh default-config Enhancer: the identity) or None (no harmonizer). With ``untrained_fallback``,
    a missing weights/enhancer gives an untrained Enhancer instead of MissingFileError; the description
    then says so (examples print it as a warning).
    """
    if spec is None:
        return None, "none (raw frames)"
    if isinstance(spec, Harmonizer):
        return spec, "given Harmonizer"
    if isinstance(spec, Enhancer):
        return Harmonizer(spec, device=device), "given Enhancer"
    if isinstance(spec, str) and spec == "untrained":
        return Harmonizer(Enhancer(EnhancerConfig()), device=device), "untrained Enhancer (identity: output = input)"
    if isinstance(spec, str) and spec == "default":
        try:
            return Harmonizer.from_pretrained("default", device=device), f"default weights ({ENHANCER_DIR})"
        except MissingFileError:
            if not untrained_fallback:
                raise
            return (Harmonizer(Enhancer(EnhancerConfig()), device=device),
                    f"UNTRAINED Enhancer (identity: output = input) because {ENHANCER_DIR} has no trained weights yet")
    if isinstance(spec, (str, os.PathLike)):
        if not Path(spec).is_dir():
            raise MissingFileError(f"enhancer folder not found: {spec} (expected config.yaml + model.safetensors "
                                   "written by Enhancer.save_pretrained, or 'default' / 'untrained')")
        return Harmonizer.from_pretrained(spec, device=device), f"weights from {spec}"
    raise InvalidInputError(
        f"harmonizer must be a Harmonizer, an Enhancer, a folder, 'default', 'untrained' or None; got {type(spec).__name__}"
    )


# ---------------------------------------------------------------------------------------------- simulator
class Simulator:
    """A Scene rendered through the harmonizer plugin: ``render(trajectory)`` and ``step(pose)``.

    scene: the scene (its default ``intrinsics`` are used unless ``intrinsics`` is given); harmonizer: see
    the module docstring; camera_id: the stream name of the ego camera; plugin_config / plugin options:
    :class:`~simharmony.plugin.PluginConfig` (strict, teleport thresholds, ...); progress: tqdm bars.
    Errors of the scene's renderer (bad poses, size changes without reset) propagate; enhancer errors
    follow the plugin's policy (logged once, raw frame returned; ``strict=True`` raises).
    """

    def __init__(
        self,
        scene: Scene,
        harmonizer: HarmonizerSpec = None,
        *,
        intrinsics: Intrinsics | None = None,
        camera_id: str = "ego",
        device: str = "cpu",
        plugin_config: PluginConfig | None = None,
        progress: bool = True,
        **plugin_options: Any,
    ) -> None:
        if not isinstance(scene, Scene):
            raise InvalidInputError(f"scene must be a scene_tools.scene.Scene, got {type(scene).__name__}")
        if intrinsics is not None and not isinstance(intrinsics, Intrinsics):
            raise InvalidCameraError(f"intrinsics must be an Intrinsics, got {type(intrinsics).__name__}")
        self.scene = scene
        self.intrinsics = intrinsics if intrinsics is not None else scene.intrinsics
        self.camera_id = camera_id
        self.progress = progress
        self.trajectory: Trajectory | None = None  # a recorded ego trajectory, when the scene has one
        self.harmonizer, self.harmonizer_source = resolve_harmonizer(harmonizer, device=device)
        self.plugin = None
        if self.harmonizer is not None:
            self.plugin = HarmonizedRenderer(self._render_raw, self.harmonizer, pose_fn=None,
                                             config=plugin_config, **plugin_options)
        self._render_ms: list[float] = []  # only used without a harmonizer
        self._size: tuple[int, int] | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_demo(
        cls,
        harmonizer: HarmonizerSpec = "default",
        *,
        scale: float = 1.0,
        scene_dir: PathLike = DEMO_SCENE_DIR,
        device: str = "cpu",
        **kwargs: Any,
    ) -> Simulator:
        """The shipped demo street (weights/demo_street, with its inserted vehicle on a 3 m shifted track).

        ``scale`` resizes the camera (0.5 -> 128x72); ``sim.trajectory`` is the recorded ego trajectory.
        harmonizer="default" uses the shipped weights/enhancer (MissingFileError if it was removed); also
        "untrained", an Enhancer, a folder or None.
        """
        scene_dir = Path(scene_dir)
        if not (scene_dir / "scene.yaml").is_file():
            raise MissingFileError(f"demo scene not found at {scene_dir} (expected scene.yaml); "
                                   "build it with `simharmony build-demo-scene`")
        if not (math.isfinite(scale) and scale > 0):
            raise InvalidInputError(f"scale must be a positive number, got {scale}")
        scene = Scene.load(scene_dir, device=device)
        if "ego_trajectory" not in scene.metadata:
            raise CorruptFileError(f"{scene_dir}/scene.yaml has no ego_trajectory in its metadata")
        traj = Trajectory.from_dict(scene.metadata["ego_trajectory"]).scaled(scale)
        sim = cls(scene, harmonizer, intrinsics=traj.intrinsics, device=device, **kwargs)
        sim.trajectory = traj
        return sim

    @staticmethod
    def demo_bank(folder: PathLike = DEMO_ASSETS_DIR) -> AssetBank:
        """The shipped asset databank (weights/demo_assets)."""
        return AssetBank(folder, create=False)

    # ------------------------------------------------------------------ scene contents
    def insert(self, asset: Asset | str, track: ObjectTrack, bank: AssetBank | None = None) -> int:
        """Insert ``asset`` (or an id in ``bank``) along ``track``; returns its instance id (see Scene.insert)."""
        return self.scene.insert(asset, track, bank=bank)

    # ------------------------------------------------------------------ switches
    @property
    def enabled(self) -> bool:
        """Whether frames are harmonized now (always False without a harmonizer)."""
        return self.plugin is not None and self.plugin.enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        if self.plugin is None:
            if value:
                raise InvalidInputError("this Simulator has no harmonizer; build it with harmonizer=... to enable one")
            return
        self.plugin.enabled = value

    def reset(self, camera_id: str | None = None) -> None:
        """Start a new sequence: no flow to a previous frame, no temporal context (of stream ``camera_id``,
        default the ego camera's)."""
        self.scene.reset()
        self._size = None
        if self.plugin is not None:
            self.plugin.reset(camera_id or self.camera_id)

    def stats(self) -> dict[str, Any]:
        """Plugin statistics (render / enhance ms, failures, resets); render ms only without a harmonizer."""
        if self.plugin is None:
            return {"enabled": False, "frames": len(self._render_ms), "render_ms": timing_summary(self._render_ms)}
        return self.plugin.stats()

    # ------------------------------------------------------------------ rendering
    def _render_raw(self, pose: np.ndarray, time_s: float | None, intrinsics: Intrinsics) -> dict[str, Any]:
        f = self.scene.render_frame(pose, time_s, intrinsics)
        return {"rgb": f.rgb, "mask": f.inserted_mask, "depth": f.depth, "shadow_hint": f.shadow_hint, "pose": f.pose,
                "frame": f}

    def step(self, pose: np.ndarray, time: float | None = None, intrinsics: Intrinsics | None = None,
             camera_id: str | None = None) -> SimFrame:
        """Render and harmonize one frame at camera-to-world ``pose`` [4, 4] (OpenCV), as stream ``camera_id``
        (default the ego camera's).

        ``time=None``: the previous frame's time plus the scene's ``frame_dt`` (0 after a reset).
        A new image size starts a new sequence (the scene's flow and the enhancer's context both restart).
        """
        intr = intrinsics if intrinsics is not None else self.intrinsics
        if intr is None:
            raise InvalidCameraError("no intrinsics: pass intrinsics= or give the Scene default intrinsics")
        if not isinstance(intr, Intrinsics):
            raise InvalidCameraError(f"intrinsics must be an Intrinsics, got {type(intr).__name__}")
        size = (intr.height, intr.width)
        if self._size is not None and size != self._size:
            self.scene.reset()  # flow needs equal sizes; the plugin resets the stream on the size change itself
        self._size = size
        stream = camera_id or self.camera_id
        if self.plugin is not None:
            out = self.plugin(pose, time, intr, camera_id=stream)
            info = self.plugin.last_info(stream)
            enhanced, render_ms, enhance_ms = info.enhanced, info.render_ms, info.enhance_ms
        else:
            t0 = _now()
            out = self._render_raw(pose, time, intr)
            render_ms, enhanced, enhance_ms = (_now() - t0) * 1e3, False, None
            self._render_ms.append(render_ms)
        f: FrameRender = out["frame"]
        raw = _to_numpy(f.rgb)
        return SimFrame(
            index=f.index, time=f.time, pose=f.pose, raw=raw, harmonized=_to_numpy(out["rgb"]) if enhanced else raw,
            depth=_to_numpy(f.depth), inserted_mask=_to_numpy(f.inserted_mask), enhanced=enhanced,
            render_ms=float(render_ms), enhance_ms=enhance_ms, gbuffers=f,
            shadow_hint=None if f.shadow_hint is None else _to_numpy(f.shadow_hint),
        )

    def render(self, trajectory: Trajectory, progress: bool | None = None) -> SimSequence:
        """Render every pose of ``trajectory`` at its times (after :meth:`reset`), harmonized in order.

        A rig's trajectory is rendered camera by camera, each as stream ``"<camera_id>/<camera>"``; the
        frames come back in the trajectory's order.
        """
        if not isinstance(trajectory, Trajectory):
            raise InvalidInputError(f"render expects a scene_tools Trajectory, got {type(trajectory).__name__}")
        show = self.progress if progress is None else progress
        frames: list[SimFrame | None] = [None] * len(trajectory)
        groups = trajectory.camera_groups()
        with tqdm(total=len(trajectory), desc="simulate", unit="frame", disable=not show, leave=False) as bar:
            for name, idx in groups:  # each camera of a rig is its own stream with its own temporal context
                stream = self.camera_id if len(groups) == 1 else f"{self.camera_id}/{name}"
                self.reset(stream)
                for i in idx:
                    frames[i] = self.step(trajectory.poses[i], float(trajectory.times[i]), trajectory.intrinsics_at(i),
                                          camera_id=stream)
                    bar.update()
        return SimSequence(frames)


def _now() -> float:
    return time.perf_counter()


# ---------------------------------------------------------------------------------------------- CLI
def _cmd_simulate(args: argparse.Namespace) -> int:
    harmonizer, source = resolve_harmonizer(args.model, untrained_fallback=args.model == "default")
    if "UNTRAINED" in source:
        print(f"warning: {source}", file=sys.stderr)
    sim = Simulator.from_demo(harmonizer, scale=args.scale, progress=not args.quiet)
    sim.harmonizer_source = source
    trajectory = sim.trajectory
    if args.shift:
        trajectory = trajectory.shifted_laterally(args.shift)
    if args.frames is not None:
        trajectory = trajectory[: max(1, args.frames)]
    out = ensure_writable_dir(args.out)
    seq = sim.render(trajectory)
    video = seq.write_video(out / "simulate.mp4", depth=True)
    report = {"model": source, "frames": len(seq), "width": sim.intrinsics.width, "height": sim.intrinsics.height,
              "lateral_shift_m": args.shift, "timings": seq.timings(), "stats": sim.stats()}
    write_text_atomic(out / "simulate.json", json.dumps(report, indent=2))
    t = report["timings"]
    print(f"simulate: {len(seq)} frames at {sim.intrinsics.width}x{sim.intrinsics.height}; median render "
          f"{t['render_ms']['median']:.0f} ms, enhance {t['enhance_ms']['median']:.0f} ms per frame; model: {source}")
    print(f"wrote {video} and {out / 'simulate.json'}")
    return 0


def add_cli(subparsers: Any) -> None:
    """``simharmony simulate``: render the demo trajectory raw | harmonized | depth to an MP4 + JSON."""
    from simharmony.utils.checks import arg_float, arg_int

    p = subparsers.add_parser("simulate", help="render the demo street through the harmonizer (raw | harmonized video)")
    p.add_argument("--model", default="default",
                   help="'default' (weights/enhancer; untrained identity with a warning while missing), "
                        "'untrained', or a folder saved with Enhancer.save_pretrained")
    p.add_argument("--frames", type=arg_int(1), default=None, help="render only the first N frames")
    p.add_argument("--scale", type=arg_float(0, exclusive_minimum=True), default=1.0, help="camera resolution factor (0.5 -> 128x72)")
    p.add_argument("--shift", type=arg_float(), default=0.0, help="lateral shift of the ego trajectory in metres (left +)")
    p.add_argument("--out", default="outputs/simulate", help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_simulate)


__all__ = ["SimFrame", "SimSequence", "Simulator", "add_cli", "resolve_harmonizer"]
