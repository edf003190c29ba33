"""Viewer logic without any GUI toolkit: scene + ego trajectory + asset bank + Harmonizer -> displayed frame.

    app = ViewerApp.from_paths("weights/demo_street", "weights/demo_assets", model="default", scale=0.5)
    app.set_frame(10); app.set_lateral_shift(2.0)
    iid = app.insert_asset(app.asset_ids[0])     # drives along the ego path, 3 m to the left, ahead
    app.set_harmonize(True)
    frame = app.render()                          # ViewerFrame: raw / harmonized / shown uint8 [H, W, 3]

    frame = app.render_view(pose, intrinsics, stream="client-3")   # a free camera (a browser's mouse)

Two cameras: :meth:`render` follows the scene's recorded ego trajectory (frame index), shifted sideways by the
lateral-shift control (reproducible, "snap to the trajectory"); :meth:`render_view` renders any pose and
intrinsics, one enhancer stream per viewer client. ``server.py`` wires this class to viser; unit tests drive
it directly.

Temporal context: the trajectory camera keeps one stream ("viewer"): stepping to the next frame with nothing
else changed continues it; any other change (a jump, a new shift, an inserted asset, switching the harmonizer
back on) starts afresh, because the cached past frames no longer precede the new frame. A free camera's
stream continues while the camera moves smoothly (each frame enters the context, which follows the motion)
and restarts after a teleport (more than ``teleport_m`` / ``teleport_deg`` since its previous frame), a
pause longer than ``stream_gap_s``, a change of the scene, or a change of resolution.
Split view (``split`` in (0, 1)): the left part of the shown frame is the raw render, the rest harmonized.
Enhancer errors never take the viewer down: the raw frame is shown and the status says why.

Any scene: :meth:`ViewerApp.from_paths` opens a scene folder (``Scene.save``), a reconstruction folder
(``simharmony reconstruct --out``: ``scene.safetensors``) or a 3DGS ``.ply``; without a recorded trajectory the
trajectory camera drives a straight line through the middle of the Gaussians (``--capture DIR`` gives a
real capture's recorded path instead).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from scene_tools.assets import AssetBank
from scene_tools.cameras import Intrinsics, Trajectory
from scene_tools.scene import ObjectTrack, Scene
from simharmony.errors import ConfigError, CorruptFileError, InvalidInputError, MissingFileError, SimHarmonyError
from simharmony.harmonizer import Harmonizer
from simharmony.paths import DEMO_ASSETS_DIR, DEMO_SCENE_DIR
from simharmony.utils.config import Config
from simharmony.utils.io import PathLike

log = logging.getLogger("simharmony_viewer")

STREAM = "viewer"


@dataclass
class ViewerConfig(Config):
    """Viewer settings (round-trips to YAML).

    scale: camera resolution factor against the scene's ego intrinsics (0.5 of 256x144 -> 128x72);
    max_shift_m: range of the lateral-shift control (+- metres, + = left);
    insert_lateral_m / insert_forward_m: where inserted assets drive, relative to the unshifted ego path
    (the paper inserts along a 3 m shift); insert_speed_scale: 1 keeps level with the ego, 0 parks.
    """

    scale: float = 1.0
    max_shift_m: float = 4.0
    insert_lateral_m: float = 3.0
    insert_forward_m: float = 8.0
    insert_speed_scale: float = 1.0
    teleport_m: float = 5.0  # a free camera moving further than this between frames starts a new context
    teleport_deg: float = 30.0
    stream_gap_s: float = 1.0  # ... and so does a pause longer than this

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and 0 < self.scale <= 4):
            raise ConfigError(f"scale must be in (0, 4], got {self.scale}")
        if not (math.isfinite(self.max_shift_m) and self.max_shift_m > 0):
            raise ConfigError(f"max_shift_m must be a positive number, got {self.max_shift_m}")
        for name in ("teleport_m", "teleport_deg", "stream_gap_s"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ConfigError(f"{name} must be a positive number, got {getattr(self, name)}")
        for name in ("insert_lateral_m", "insert_forward_m", "insert_speed_scale"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be finite, got {getattr(self, name)}")


@dataclass(eq=False)
class ViewerFrame:
    """What the viewer shows now.

    raw: [H, W, 3] uint8 render; harmonized: [H, W, 3] uint8 or None (harmonizer off, absent or failed);
    shown: the one displayed; status: one line for the GUI; render_ms / enhance_ms: times of this frame.
    """

    raw: np.ndarray
    harmonized: np.ndarray | None
    shown: np.ndarray
    frame_index: int
    lateral_shift_m: float
    harmonize: bool
    status: str
    render_ms: float
    enhance_ms: float | None


def _to_uint8(rgb: torch.Tensor | np.ndarray) -> np.ndarray:
    """[H, W, 3] float in [0, 1] -> uint8."""
    a = rgb.detach().cpu().numpy() if isinstance(rgb, torch.Tensor) else np.asarray(rgb)
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


class ViewerApp:
    """State and rendering of the viewer; thread-safe (GUI callbacks may come from several threads).

    scene: the scene to show (its inserted objects stay; the viewer adds and removes its own);
    trajectory: the ego trajectory the frame index walks along (its intrinsics are scaled by
    ``config.scale``); harmonizer: None shows raw frames only; harmonizer_note: where the weights came
    from; warning: shown prominently in the GUI (e.g. "untrained enhancer"); bank: assets to insert.
    """

    def __init__(
        self,
        scene: Scene,
        trajectory: Trajectory,
        harmonizer: Harmonizer | None = None,
        bank: AssetBank | None = None,
        *,
        config: ViewerConfig | None = None,
        harmonizer_note: str = "",
        warning: str | None = None,
    ) -> None:
        if not isinstance(scene, Scene):
            raise InvalidInputError(f"scene must be a scene_tools.scene.Scene, got {type(scene).__name__}")
        if not isinstance(trajectory, Trajectory) or len(trajectory) < 1:
            raise InvalidInputError("trajectory must be a non-empty scene_tools.cameras.Trajectory")
        if harmonizer is not None and not isinstance(harmonizer, Harmonizer):
            raise InvalidInputError(f"harmonizer must be a Harmonizer or None, got {type(harmonizer).__name__}")
        if bank is not None and not isinstance(bank, AssetBank):
            raise InvalidInputError(f"bank must be an AssetBank or None, got {type(bank).__name__}")
        self.config = config if config is not None else ViewerConfig()
        self.scene = scene
        self.trajectory = trajectory
        self.intrinsics: Intrinsics = trajectory.intrinsics.scaled(self.config.scale) if self.config.scale != 1.0 \
            else trajectory.intrinsics
        self.harmonizer = harmonizer
        self.bank = bank
        self.harmonizer_note = harmonizer_note or ("none" if harmonizer is None else "given Harmonizer")
        self.warning = warning
        self._lock = threading.RLock()
        self._harmonize = False
        self._frame = 0
        self._shift = 0.0
        self._version = 0  # bumped whenever the scene contents change
        self._inserted: list[tuple[int, str]] = []  # (instance id, asset id) inserted by the viewer
        self._raw_cache: tuple[tuple, object, float] | None = None  # (key, FrameRender, render ms)
        self._last_enhanced_key: tuple | None = None
        self._enhanced_cache: tuple[np.ndarray, float] | None = None
        self._last_error: str | None = None
        self._split = 0.0
        self._views: OrderedDict[str, tuple] = OrderedDict()  # free-camera streams (render_view)
        self.render_count = 0

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_paths(
        cls,
        scene_dir: PathLike = DEMO_SCENE_DIR,
        assets_dir: PathLike | None = DEMO_ASSETS_DIR,
        model: str | PathLike | None = "default",
        *,
        config: ViewerConfig | None = None,
        device: str = "cpu",
        trajectory_from: PathLike | None = None,
        ground_camera_height_m: float | None = None,
    ) -> ViewerApp:
        """Open a scene and its trajectory, an asset bank and the enhancer.

        scene_dir: a scene folder (``Scene.save``; its ``ego_trajectory`` is the trajectory), a reconstruction
        folder (``scene.safetensors``) or a 3DGS ``.ply`` file. trajectory_from: a capture the trajectory camera
        walks along (anything ``scene_tools.loaders.load_posed_images`` reads), moved into the street frame
        with ``align_to_ground(ground_camera_height_m)`` when that is given (as ``simharmony bench-capture``
        did before reconstructing); default: the scene's own, else a straight line through the Gaussians.
        model: "default" (weights/enhancer; an untrained Enhancer with a visible warning while it is
        missing), "untrained", a folder saved with ``Enhancer.save_pretrained``, or None (raw only).
        """
        from simharmony.sim import resolve_harmonizer

        scene, trajectory = load_scene_any(scene_dir, device)
        if trajectory_from is not None:
            trajectory = trajectory_of_capture(trajectory_from, ground_camera_height_m)
        if trajectory is None:
            trajectory = trajectory_through(scene)
        if scene.intrinsics is None:
            scene.intrinsics = trajectory.intrinsics
        bank = AssetBank(assets_dir, create=False) if assets_dir is not None else None
        harmonizer, note = resolve_harmonizer(model, device=device, untrained_fallback=model == "default")
        warning = None
        if harmonizer is not None and ("UNTRAINED" in note or "untrained" in note):
            warning = f"Harmonizer: {note}"
        return cls(scene, trajectory, harmonizer, bank, config=config, harmonizer_note=note, warning=warning)

    # ------------------------------------------------------------------ state
    @property
    def num_frames(self) -> int:
        return len(self.trajectory)

    @property
    def frame_index(self) -> int:
        return self._frame

    @property
    def lateral_shift_m(self) -> float:
        return self._shift

    @property
    def harmonize(self) -> bool:
        return self._harmonize

    @property
    def has_harmonizer(self) -> bool:
        return self.harmonizer is not None

    @property
    def asset_ids(self) -> list[str]:
        """Ids of the assets that can be inserted (empty without a bank)."""
        return self.bank.list() if self.bank is not None else []

    @property
    def inserted(self) -> list[tuple[int, str]]:
        """(instance id, asset id) of the assets this viewer inserted, oldest first."""
        return list(self._inserted)

    def set_harmonize(self, on: bool) -> None:
        """Switch the enhancer on or off (InvalidInputError when switching on without a harmonizer)."""
        on = bool(on)
        with self._lock:
            if on and self.harmonizer is None:
                raise InvalidInputError("this viewer has no harmonizer (start it with --model)")
            if on and not self._harmonize:
                self._last_enhanced_key = None  # the cached context is from before the pause
            self._harmonize = on

    @property
    def split(self) -> float:
        return self._split

    def set_split(self, fraction: float) -> None:
        """Show the left ``fraction`` of the frame raw and the rest harmonized (0 = harmonized only)."""
        f = float(fraction)
        if not 0.0 <= f <= 1.0:
            raise InvalidInputError(f"split must be in [0, 1], got {fraction!r}")
        with self._lock:
            self._split = f

    def set_frame(self, index: int) -> None:
        """Go to ego frame ``index`` (0 .. num_frames - 1)."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise InvalidInputError(f"frame index must be an int, got {index!r}")
        if not 0 <= int(index) < self.num_frames:
            raise InvalidInputError(f"frame index {index} out of range 0..{self.num_frames - 1}")
        with self._lock:
            self._frame = int(index)

    def set_lateral_shift(self, meters: float) -> None:
        """Shift the camera sideways from the recorded path (+ = left), within +- config.max_shift_m."""
        m = float(meters)
        if not math.isfinite(m) or abs(m) > self.config.max_shift_m + 1e-9:
            raise InvalidInputError(f"lateral shift must be within +-{self.config.max_shift_m} m, got {meters}")
        with self._lock:
            self._shift = m

    def insert_asset(self, asset_id: str) -> int:
        """Insert bank asset ``asset_id`` driving along the ego path (config.insert_*); returns its instance id."""
        if self.bank is None:
            raise InvalidInputError("no asset bank: start the viewer with --assets")
        with self._lock:
            asset = self.bank.get(asset_id, device=str(self.scene.device))
            track = ObjectTrack.along_trajectory(
                self.trajectory, self.config.insert_lateral_m, forward_offset_m=self.config.insert_forward_m,
                speed_scale=self.config.insert_speed_scale,
            )
            iid = self.scene.insert(asset, track)
            self._inserted.append((iid, asset.id))
            self._version += 1
            return iid

    @property
    def sun(self):
        """The scene's sun (:class:`scene_tools.shadows.Sun`) or None: it places inserted assets' shadow hints."""
        return self.scene.sun

    def set_sun(self, azimuth_deg: float | None, elevation_deg: float | None = None) -> None:
        """Set the scene's sun (degrees; z up, azimuth from +x towards +y), or forget it with None."""
        from scene_tools.shadows import Sun

        sun = None if azimuth_deg is None else Sun(azimuth_deg, elevation_deg)  # InvalidInputError names a bad angle
        with self._lock:
            self.scene.sun = sun
            self._version += 1  # renders and enhancer contexts are from the old light

    def park_asset(self, asset_id: str, x: float, y: float) -> int:
        """Insert bank asset ``asset_id`` parked on the ground at (x, y), facing along the recorded path."""
        from scene_tools.scene import yaw_pose

        if self.bank is None:
            raise InvalidInputError("no asset bank: start the viewer with --assets")
        if not (math.isfinite(x) and math.isfinite(y)):
            raise InvalidInputError(f"parking position must be finite, got ({x}, {y})")
        with self._lock:
            asset = self.bank.get(asset_id, device=str(self.scene.device))
            forward = self.trajectory.poses[self._frame][:3, 2]
            pose = yaw_pose(x, y, 0.0, math.atan2(forward[1], forward[0]))
            times = self.trajectory.times
            t0, t1 = float(times[0]), float(max(times[-1], times[0] + 1.0))
            iid = self.scene.insert(asset, ObjectTrack(np.array([t0, t1]), np.stack([pose, pose])))
            self._inserted.append((iid, asset.id))
            self._version += 1
            return iid

    def inserted_tracks(self) -> dict[int, np.ndarray]:
        """{instance id: [T, 3] positions over the recorded times} of the assets this viewer inserted."""
        with self._lock:
            mine = {iid for iid, _ in self._inserted}
            return {o.instance_id: np.stack([o.track.pose_at(float(t))[:3, 3] for t in self.trajectory.times])
                    for o in self.scene.objects if o.instance_id in mine}

    def remove_inserted(self) -> int:
        """Remove the asset this viewer inserted last; returns its instance id (InvalidInputError if none)."""
        with self._lock:
            if not self._inserted:
                raise InvalidInputError("nothing inserted from the viewer to remove")
            iid, _ = self._inserted.pop()
            self.scene.remove(iid)
            self._version += 1
            return iid

    # ------------------------------------------------------------------ rendering
    def camera_pose(self, index: int | None = None, shift: float | None = None) -> np.ndarray:
        """Camera-to-world [4, 4] (OpenCV) of ego frame ``index`` shifted by ``shift`` metres (current if None)."""
        i = self._frame if index is None else int(index)
        s = self._shift if shift is None else float(shift)
        traj = self.trajectory[i:i + 1]
        return (traj.shifted_laterally(s) if s else traj).poses[0]

    def render(self) -> ViewerFrame:
        """Render the trajectory camera's current state (the raw render is cached until frame, shift or scene
        contents change)."""
        with self._lock:
            key = (self._frame, self._shift, self._version, self.intrinsics.width, self.intrinsics.height)
            if self._raw_cache is not None and self._raw_cache[0] == key:
                _, fr, render_ms = self._raw_cache
            else:
                fr, render_ms = self._render_raw(self.camera_pose(), float(self.trajectory.times[self._frame]),
                                                 self.intrinsics)
                self._raw_cache = (key, fr, render_ms)
            status = f"frame {self._frame + 1}/{self.num_frames}, shift {self._shift:+.1f} m, render {render_ms:.0f} ms"
            harmonized, enhance_ms = None, None
            if self._harmonize and self.harmonizer is not None:
                prev = self._last_enhanced_key
                if prev == key and self._enhanced_cache is not None:  # same frame again: no second context entry
                    harmonized, enhance_ms = self._enhanced_cache
                    status += f", harmonizer {enhance_ms:.0f} ms"
                else:
                    follows = prev is not None and prev[1:] == key[1:] and prev[0] + 1 == key[0]
                    harmonized, enhance_ms, note = self._enhance(fr, STREAM, cut=not follows)
                    status += note
                    self._last_enhanced_key = key if harmonized is not None else None
                    self._enhanced_cache = (harmonized, enhance_ms) if harmonized is not None else None
            elif self._harmonize:
                status += ", no harmonizer"
            return self._frame_of(fr, harmonized, status, render_ms, enhance_ms)

    def render_view(self, pose: np.ndarray, intrinsics: Intrinsics, stream: str, time_s: float | None = None) -> ViewerFrame:
        """Render a free camera: camera-to-world ``pose`` [4, 4] (OpenCV) with ``intrinsics``, enhanced in its
        own ``stream`` (one per viewer client; see the module docstring for when its context restarts).
        ``time_s``: the scene time (inserted assets move with it; default: the current ego frame's)."""
        from simharmony.plugin import pose_jump

        pose = np.asarray(pose, dtype=np.float64)
        if pose.shape != (4, 4) or not np.isfinite(pose).all():
            raise InvalidInputError(f"pose must be a finite [4, 4] camera-to-world matrix, got shape {pose.shape}")
        if not isinstance(intrinsics, Intrinsics):
            raise InvalidInputError(f"intrinsics must be an Intrinsics, got {type(intrinsics).__name__}")
        with self._lock:
            t = float(self.trajectory.times[self._frame]) if time_s is None else float(time_s)
            fr, render_ms = self._render_raw(pose, t, intrinsics)
            status = f"free camera, {intrinsics.width}x{intrinsics.height}, render {render_ms:.0f} ms"
            harmonized, enhance_ms = None, None
            if self._harmonize and self.harmonizer is not None:
                now = time.monotonic()
                prev = self._views.get(stream)  # (pose, size, scene version, time) of the stream's last frame
                cut = prev is None or prev[1] != (intrinsics.width, intrinsics.height) or prev[2] != self._version \
                    or now - prev[3] > self.config.stream_gap_s
                if not cut:
                    moved_m, turned_deg = pose_jump(prev[0], pose)
                    cut = moved_m > self.config.teleport_m or turned_deg > self.config.teleport_deg
                harmonized, enhance_ms, note = self._enhance(fr, stream, cut=cut)
                status += note + (" (new context)" if cut and harmonized is not None else "")
                self._views[stream] = (pose, (intrinsics.width, intrinsics.height), self._version, now)
                self._views.move_to_end(stream)
                while len(self._views) > self.MAX_STREAMS:
                    old, _ = self._views.popitem(last=False)
                    self.harmonizer.reset(old)
            elif self._harmonize:
                status += ", no harmonizer"
            return self._frame_of(fr, harmonized, status, render_ms, enhance_ms)

    MAX_STREAMS = 16  # free-camera streams kept (viewer clients); the least recently used one is dropped

    def _render_raw(self, pose: np.ndarray, time_s: float, intrinsics: Intrinsics):
        t0 = time.perf_counter()
        self.scene.reset()  # every viewer frame is a sequence of its own: no flow needed
        fr = self.scene.render_frame(pose, time_s, intrinsics)
        return fr, (time.perf_counter() - t0) * 1e3

    def _enhance(self, fr, stream: str, cut: bool) -> tuple[np.ndarray | None, float | None, str]:
        """(harmonized uint8 or None, ms, status note); enhancer errors show the raw frame and say why."""
        t0 = time.perf_counter()
        try:
            out = self.harmonizer.enhance(fr.rgb, mask=fr.inserted_mask, depth=fr.depth, stream=stream, cut=cut,
                                          shadow_hint=fr.shadow_hint)
        except (SimHarmonyError, RuntimeError, ValueError) as e:  # never take the viewer down
            self.harmonizer.reset(stream)
            msg = f"{type(e).__name__}: {e}"
            if msg != self._last_error:
                log.warning("harmonizer failed, showing the raw frame: %s", msg)
            self._last_error = msg
            return None, None, f", harmonizer FAILED ({msg}); raw frame shown"
        self._last_error = None
        ms = (time.perf_counter() - t0) * 1e3
        return _to_uint8(out), ms, f", harmonizer {ms:.0f} ms"

    def _frame_of(self, fr, harmonized: np.ndarray | None, status: str, render_ms: float,
                  enhance_ms: float | None) -> ViewerFrame:
        raw = _to_uint8(fr.rgb)
        shown = raw if harmonized is None else compose_split(raw, harmonized, self._split)
        if harmonized is not None and 0 < self._split < 1:
            status += f", split: raw | harmonized at {self._split:.0%}"
        self.render_count += 1
        return ViewerFrame(
            raw=raw, harmonized=harmonized, shown=shown, frame_index=self._frame, lateral_shift_m=self._shift,
            harmonize=self._harmonize, status=status, render_ms=render_ms, enhance_ms=enhance_ms,
        )


def load_scene_any(path: PathLike, device: str = "cpu") -> tuple[Scene, Trajectory | None]:
    """(scene, its recorded trajectory or None) from a scene folder, a reconstruction folder or a 3DGS .ply."""
    from scene_tools.gaussians import GaussianScene
    from scene_tools.ply import load_ply

    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".ply":
        return Scene(load_ply(path, device=device), name=path.stem), None
    if (path / "scene.yaml").is_file():
        scene = Scene.load(path, device=device)
        traj = scene.metadata.get("ego_trajectory")
        return scene, None if traj is None else Trajectory.from_dict(traj)
    if (path / "scene.safetensors").is_file():  # simharmony reconstruct --out
        return Scene(GaussianScene.load(path / "scene.safetensors", device=device), name=path.name), None
    raise MissingFileError(f"no scene at {path}: expected a scene folder (scene.yaml), a reconstruction folder "
                           "(scene.safetensors) or a 3DGS .ply file")


def trajectory_of_capture(path: PathLike, ground_camera_height_m: float | None = None) -> Trajectory:
    """The recorded path of a capture (downscaled to at most 480 pixels wide), in the street frame when
    ``ground_camera_height_m`` is given."""
    from scene_tools.capture import align_to_ground
    from scene_tools.loaders import load_posed_images

    images = load_posed_images(path, 1, progress=False)
    if ground_camera_height_m is not None:
        images, _ = align_to_ground(images, ground_camera_height_m)
    factor = min(1.0, 480 / images.width)
    return images.trajectory.scaled(factor) if factor < 1 else images.trajectory


def trajectory_through(scene: Scene, frames: int = 40) -> Trajectory:
    """A straight drive along +x through the middle of the scene's Gaussians (z up, as the street frame):
    the trajectory camera's path for scenes recorded without one (a .ply, a reconstruction)."""
    from scene_tools.cameras import look_at

    means = scene.background.means.detach().cpu().numpy()
    if len(means) == 0:
        raise InvalidInputError("the scene has no Gaussians to look at")
    lo, mid, hi = np.percentile(means, [10, 50, 90], axis=0)
    reach = max(float(hi[0] - lo[0]), 1e-3)
    xs = np.linspace(mid[0] - 0.6 * reach, mid[0] + 0.2 * reach, frames)
    height = mid[2] + 0.05 * max(float(hi[2] - lo[2]), 1e-3)
    poses = np.stack([look_at((x, mid[1], height), (x + reach, mid[1], height)) for x in xs])
    return Trajectory(poses, Intrinsics.from_fov(70.0, 256, 144))


def compose_split(raw: np.ndarray, harmonized: np.ndarray, split: float) -> np.ndarray:
    """The left ``split`` of the width from ``raw``, the rest from ``harmonized``, with a 1-pixel white divider
    (split 0: harmonized only; 1: raw only)."""
    if split <= 0:
        return harmonized
    if split >= 1:
        return raw
    out = harmonized.copy()
    x = int(round(split * raw.shape[1]))
    out[:, :x] = raw[:, :x]
    out[:, min(x, raw.shape[1] - 1)] = 255
    return out


__all__ = ["ViewerApp", "ViewerConfig", "ViewerFrame", "compose_split"]
