"""Viewer logic without any GUI toolkit: scene + ego trajectory + asset bank + Harmonizer -> displayed frame.

    app = ViewerApp.from_paths("weights/demo_street", "weights/demo_assets", model="default", scale=0.5)
    app.set_frame(10); app.set_lateral_shift(2.0)
    iid = app.insert_asset(app.asset_ids[0])     # drives along the ego path, 3 m to the left, ahead
    app.set_harmonize(True)
    frame = app.render()                          # ViewerFrame: raw / harmonized / shown uint8 [H, W, 3]

The camera follows the scene's recorded ego trajectory (frame index), shifted sideways by the lateral-shift
control: a fixed, reproducible camera that needs no 3D canvas in the browser. ``viewer/server.py`` wires
this class to viser; unit tests drive it directly.

Temporal context: the Harmonizer keeps one stream ("viewer"). Stepping to the next frame with nothing else
changed continues the stream; any other change (a jump, a new shift, an inserted asset, switching the
harmonizer back on) starts a new one, because the cached past frames no longer precede the new frame.
Enhancer errors never take the viewer down: the raw frame is shown and the status says why.
"""

from __future__ import annotations

import logging
import math
import threading
import time
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

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and 0 < self.scale <= 4):
            raise ConfigError(f"scale must be in (0, 4], got {self.scale}")
        if not (math.isfinite(self.max_shift_m) and self.max_shift_m > 0):
            raise ConfigError(f"max_shift_m must be a positive number, got {self.max_shift_m}")
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
    ) -> ViewerApp:
        """Load a scene folder (with an ``ego_trajectory`` in its metadata), an asset bank and the enhancer.

        model: "default" (weights/enhancer; an untrained Enhancer with a visible warning while it is
        missing), "untrained", a folder saved with ``Enhancer.save_pretrained``, or None (raw only).
        """
        from simharmony.sim import resolve_harmonizer

        scene_dir = Path(scene_dir)
        if not (scene_dir / "scene.yaml").is_file():
            raise MissingFileError(f"scene not found: {scene_dir} (expected scene.yaml written by Scene.save)")
        scene = Scene.load(scene_dir, device=device)
        if "ego_trajectory" not in scene.metadata:
            raise CorruptFileError(f"{scene_dir}/scene.yaml has no ego_trajectory in its metadata; the viewer "
                                   "walks along it")
        trajectory = Trajectory.from_dict(scene.metadata["ego_trajectory"])
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
        """Render the current state (the raw render is cached until frame, shift or scene contents change)."""
        with self._lock:
            key = (self._frame, self._shift, self._version, self.intrinsics.width, self.intrinsics.height)
            if self._raw_cache is not None and self._raw_cache[0] == key:
                _, fr, render_ms = self._raw_cache
            else:
                t0 = time.perf_counter()
                self.scene.reset()  # every viewer frame is a sequence of its own: no flow needed
                fr = self.scene.render_frame(self.camera_pose(), float(self.trajectory.times[self._frame]),
                                             self.intrinsics)
                render_ms = (time.perf_counter() - t0) * 1e3
                self._raw_cache = (key, fr, render_ms)
            raw = _to_uint8(fr.rgb)
            harmonized, enhance_ms = None, None
            status = f"frame {self._frame + 1}/{self.num_frames}, shift {self._shift:+.1f} m, render {render_ms:.0f} ms"
            if self._harmonize and self.harmonizer is not None:
                prev = self._last_enhanced_key
                follows = prev is not None and prev[1:] == key[1:] and prev[0] + 1 == key[0]
                t0 = time.perf_counter()
                try:
                    if prev == key and self._enhanced_cache is not None:  # same frame again: no second context entry
                        harmonized, enhance_ms = self._enhanced_cache
                    else:
                        out = self.harmonizer.enhance(fr.rgb, mask=fr.inserted_mask, depth=fr.depth, stream=STREAM,
                                                      cut=not follows)
                        harmonized = _to_uint8(out)
                        enhance_ms = (time.perf_counter() - t0) * 1e3
                        self._enhanced_cache = (harmonized, enhance_ms)
                    self._last_enhanced_key = key
                    self._last_error = None
                    status += f", harmonizer {enhance_ms:.0f} ms"
                except (SimHarmonyError, RuntimeError, ValueError) as e:  # never take the viewer down
                    self._last_enhanced_key = None
                    self.harmonizer.reset(STREAM)
                    msg = f"{type(e).__name__}: {e}"
                    if msg != self._last_error:
                        log.warning("harmonizer failed, showing the raw frame: %s", msg)
                    self._last_error = msg
                    status += f", harmonizer FAILED ({msg}); raw frame shown"
            elif self._harmonize:
                status += ", no harmonizer"
            self.render_count += 1
            return ViewerFrame(
                raw=raw, harmonized=harmonized, shown=harmonized if harmonized is not None else raw,
                frame_index=self._frame, lateral_shift_m=self._shift, harmonize=self._harmonize, status=status,
                render_ms=render_ms, enhance_ms=enhance_ms,
            )


__all__ = ["ViewerApp", "ViewerConfig", "ViewerFrame"]
