"""Render-callback plugin: every frame a render callable returns passes through a Harmonizer first.

    from simharmony.plugin import HarmonizedRenderer, harmonized

    render = HarmonizedRenderer(my_render, "weights/enhancer", camera_key=lambda cam: cam.name)
    frame = render(camera)            # same kind / dtype / device / layout as my_render(camera)
    frame = render(camera, camera_id="left")   # or name the camera per call
    render.enabled = False            # raw frames from now on; every camera's context is reset
    render.stats()                    # render / enhance ms (median, p90, count), failures, resets

    @harmonized(harmonizer)           # decorator form (plain functions; wrap bound methods explicitly)
    def render_pose(pose): ...

What the render callable may return (:data:`RenderResult`):

- a frame: numpy [H, W, 3] uint8 or float in [0, 1]; torch [3, H, W] or [H, W, 3] uint8 or float;
- a mapping with ``"rgb"`` (a frame) and optionally ``"mask"`` (or ``"inserted_mask"``) [H, W],
  ``"depth"`` [H, W] (inf = no hit), ``"shadow_hint"`` [H, W] in [0, 1] (where inserted objects' shadows
  fall, :func:`scene_tools.shadows.shadow_hint`) and ``"pose"`` [4, 4] camera-to-world
  (:class:`RenderOutput`); a shallow copy comes back with ``"rgb"`` enhanced (plus ``"rgb_raw"`` when
  ``keep_raw=True``);
- an object with an ``rgb`` attribute (e.g. ``scene_tools.scene.FrameRender``, which also has
  ``inserted_mask``, ``depth``, ``shadow_hint`` and ``pose``); a shallow copy comes back with ``rgb`` enhanced.

Streams: one temporal stream per camera. The camera id is, in order, the ``camera_id=`` keyword of the
call (consumed by the wrapper, never passed on), ``camera_key(camera, *args, **kwargs)``, or "default".
The Harmonizer's streams are named by these ids. A camera's context is reset when its frame size
changes, after a teleport (the pose moved more than ``teleport_translation_m`` or turned more than
``teleport_rotation_deg`` since its previous frame; only when poses are known), after a failed frame,
when ``enabled`` is toggled, and on :meth:`HarmonizedRenderer.reset`. The cache per camera is bounded by
the model's K; at most ``max_cameras`` cameras are tracked (least recently used ones are dropped). A
Harmonizer the plugin builds itself keeps ``max_cameras`` streams (``Harmonizer(max_streams=)``); a given
one keeps its own ``max_streams``, and a camera whose context it dropped simply starts afresh.

Float frames: ``clip_input`` (default on) clips a renderer's small overshoot outside [0, 1] (up to
``simharmony.harmonizer.CLIP_TOLERANCE`` = 0.25); a frame further out - e.g. a float frame holding
0..255 values - is bad input (InvalidInputError), never clipped to white and returned as enhanced.

Failure policy: errors of the *enhancer* - including bad frames from the callable (wrong shape or dtype,
NaN, a mapping without ``"rgb"``, float values far outside [0, 1] such as 0..255) and non-finite enhancer
output (:class:`~simharmony.errors.NonFiniteError`) - are logged once per camera and error type on the
``simharmony.plugin`` logger, counted in ``stats()["failures"]``, and the raw frame is returned so the
simulator keeps running; ``strict=True`` re-raises them instead. Errors raised by the render callable
itself always propagate unchanged: they are the caller's, and hiding them would hide real bugs.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol, TypedDict

import numpy as np
import torch

from simharmony.errors import ConfigError, InvalidInputError
from simharmony.harmonizer import Harmonizer
from simharmony.utils.checks import check_flag, check_hashable
from simharmony.utils.config import Config, require

log = logging.getLogger("simharmony.plugin")

Frame = np.ndarray | torch.Tensor
"""numpy [H, W, 3] uint8/float in [0, 1], or torch [3, H, W] / [H, W, 3] uint8/float in [0, 1]."""


class RenderOutput(TypedDict, total=False):
    """The mapping form of a render result. Only ``rgb`` is required; other keys are passed through."""

    rgb: Frame
    mask: Frame  # [H, W] inserted-asset mask in [0, 1] (bool/uint8/float)
    depth: Frame  # [H, W] z-depth in metres, inf = no hit
    shadow_hint: Frame  # [H, W] in [0, 1]: where inserted objects' cast shadows fall (models that read it)
    pose: Any  # [4, 4] (or [3, 4]) camera-to-world, used for teleport detection


RenderResult = Frame | RenderOutput | Mapping[str, Any] | Any


class RenderFn(Protocol):
    """Any render callable: camera (or pose) in, :data:`RenderResult` out."""

    def __call__(self, camera: Any, /, *args: Any, **kwargs: Any) -> RenderResult: ...


_DEFAULT_CAMERA = "default"
_RESET_REASONS = ("size", "teleport", "error", "toggle", "manual")


@dataclass
class PluginConfig(Config):
    """Options of :class:`HarmonizedRenderer` (round-trips to YAML)."""

    strict: bool = False  # raise enhancer errors instead of logging once and returning the raw frame
    teleport_translation_m: float | None = 5.0  # pose jump that resets context; None = never on translation
    teleport_rotation_deg: float | None = 30.0  # turn that resets context; None = never on rotation
    clip_input: bool = True  # clip float frames up to CLIP_TOLERANCE (0.25) outside [0, 1] (3DGS overshoot); further out fails
    use_mask: bool | None = None  # pass the mask on; None = when the model accepts one
    use_depth: bool | None = None  # pass depth on; None = when the model accepts it
    use_shadow_hint: bool | None = None  # pass the shadow hint on; None = when the model reads one
    keep_raw: bool = False  # mapping results also get "rgb_raw"
    timing_window: int = 10000  # per camera, how many recent frames the timing medians cover
    max_cameras: int = 64  # cameras tracked at once; the least recently used one is dropped beyond this
    sync_cuda: bool = True  # synchronise CUDA around the enhancer so enhance ms are real

    def __post_init__(self) -> None:
        owner = "PluginConfig"
        for name in ("teleport_translation_m", "teleport_rotation_deg"):
            v = getattr(self, name)
            require(v is None or (math.isfinite(v) and v > 0), owner, f"{name} must be > 0 or None, got {v}")
        require(self.timing_window >= 1, owner, f"timing_window must be >= 1, got {self.timing_window}")
        require(self.max_cameras >= 1, owner, f"max_cameras must be >= 1, got {self.max_cameras}")


@dataclass
class FrameInfo:
    """What happened to a camera's latest frame."""

    enhanced: bool  # False: the raw frame was returned (disabled or failed)
    render_ms: float | None  # None when the frame came through enhance_frame() directly
    enhance_ms: float | None  # None when not enhanced
    reset_reason: str | None = None  # why the context was reset before this frame, if it was
    error: str | None = None  # "<ErrorType>: <message>" when the enhancer failed


@dataclass
class _CameraState:
    window: int
    size: tuple[int, int] | None = None
    pose: np.ndarray | None = None
    pending_reset: str | None = None
    frames: int = 0
    enhanced: int = 0
    failed: int = 0
    render_ms: deque = field(default_factory=deque)
    enhance_ms: deque = field(default_factory=deque)
    last: FrameInfo | None = None

    def __post_init__(self) -> None:
        self.render_ms = deque(maxlen=self.window)
        self.enhance_ms = deque(maxlen=self.window)


# ---------------------------------------------------------------------------------------------- helpers
def timing_summary(values) -> dict[str, float | int]:
    """{"median", "p90", "mean", "count"} in ms over ``values`` (NaN for an empty list)."""
    a = np.asarray(list(values), dtype=np.float64)
    if a.size == 0:
        return {"median": math.nan, "p90": math.nan, "mean": math.nan, "count": 0}
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "mean": float(a.mean()),
            "count": int(a.size)}


def as_pose(value: Any) -> np.ndarray | None:
    """A camera-to-world pose as float64 [4, 4], or None if ``value`` is not a finite [4, 4] / [3, 4] matrix.

    Accepts numpy or torch, with an optional leading batch dimension of 1 (nerfstudio's ``camera_to_worlds``).
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.number):
        return None
    m = np.asarray(value, dtype=np.float64)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        return None
    return m


def default_pose(camera: Any, *args: Any, **kwargs: Any) -> np.ndarray | None:
    """The pose of ``camera`` when it is one: a [4, 4]/[3, 4] matrix, or an object with ``pose`` or
    ``camera_to_worlds`` (nerfstudio). None otherwise (then teleports are not detected)."""
    for candidate in (camera, getattr(camera, "pose", None), getattr(camera, "camera_to_worlds", None)):
        pose = as_pose(candidate)
        if pose is not None:
            return pose
    return None


def pose_jump(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(translation in metres, rotation in degrees) between two camera-to-world poses [4, 4]."""
    dt = float(np.linalg.norm(b[:3, 3] - a[:3, 3]))
    cos = (np.trace(a[:3, :3].T @ b[:3, :3]) - 1.0) / 2.0
    return dt, math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def _frame_size(rgb: Frame) -> tuple[int, int] | None:
    """(H, W) of a frame in any accepted layout, or None if it has no recognisable layout."""
    if isinstance(rgb, np.ndarray) and rgb.ndim == 3 and rgb.shape[-1] == 3:
        return int(rgb.shape[0]), int(rgb.shape[1])
    if isinstance(rgb, torch.Tensor) and rgb.ndim == 3:
        if rgb.shape[0] == 3:  # [3, H, 3] is read as channels-first, as the Harmonizer does
            return int(rgb.shape[1]), int(rgb.shape[2])
        if rgb.shape[-1] == 3:
            return int(rgb.shape[0]), int(rgb.shape[1])
    return None


@dataclass
class _Parts:
    rgb: Any
    mask: Any
    depth: Any
    pose: np.ndarray | None
    rebuild: Callable[[Any], Any]  # enhanced rgb -> result of the caller's kind
    shadow_hint: Any = None


def _split(result: Any, keep_raw: bool) -> _Parts:
    """Pull rgb / mask / depth / pose out of a render result and say how to put an enhanced rgb back."""
    if isinstance(result, (np.ndarray, torch.Tensor)):
        return _Parts(result, None, None, None, lambda new: new)
    if isinstance(result, Mapping):
        if "rgb" not in result:
            raise InvalidInputError(f"render result mapping has no 'rgb' key (keys: {sorted(map(str, result))})")
        mask = result.get("mask", result.get("inserted_mask"))

        def rebuild_map(new):
            out = dict(result)
            out["rgb"] = new
            if keep_raw:
                out["rgb_raw"] = result["rgb"]
            return out

        return _Parts(result["rgb"], mask, result.get("depth"), as_pose(result.get("pose")), rebuild_map,
                      result.get("shadow_hint"))
    if hasattr(result, "rgb"):
        mask = getattr(result, "mask", None)
        if mask is None:
            mask = getattr(result, "inserted_mask", None)

        def rebuild_obj(new):
            out = copy.copy(result)
            out.rgb = new
            return out

        return _Parts(result.rgb, mask, getattr(result, "depth", None), as_pose(getattr(result, "pose", None)),
                      rebuild_obj, getattr(result, "shadow_hint", None))
    raise InvalidInputError(
        "render result must be a frame (numpy [H, W, 3] / torch [3, H, W] or [H, W, 3]), a mapping with 'rgb', "
        f"or an object with an rgb attribute; got {type(result).__name__}"
    )


def _as_harmonizer(harmonizer: Harmonizer | Any, max_streams: int) -> Harmonizer:
    if isinstance(harmonizer, Harmonizer):
        return harmonizer
    return Harmonizer.from_pretrained(harmonizer, max_streams=max_streams)  # a path, "default" or an Enhancer


# ---------------------------------------------------------------------------------------------- plugin
class HarmonizedRenderer:
    """Wrap ``render_fn`` so every frame it returns is enhanced by ``harmonizer`` (see the module docstring).

    render_fn: :class:`RenderFn`. harmonizer: a :class:`Harmonizer`, an Enhancer, a folder saved with
    ``Enhancer.save_pretrained`` or "default". camera_key: ``(camera, *args, **kwargs) -> Hashable``.
    pose_fn: ``(camera, *args, **kwargs) -> [4, 4] | None`` (default :func:`default_pose`); a ``pose`` in
    the render result takes precedence. config / options: :class:`PluginConfig` and field overrides.
    Thread-safe: stream state is updated under a lock (viewers render from server threads).
    """

    def __init__(
        self,
        render_fn: RenderFn,
        harmonizer: Harmonizer | Any,
        *,
        camera_key: Callable[..., Hashable] | None = None,
        pose_fn: Callable[..., Any] | None = default_pose,
        config: PluginConfig | None = None,
        enabled: bool = True,
        **options: Any,
    ) -> None:
        if not callable(render_fn):
            raise InvalidInputError(f"render_fn must be callable, got {type(render_fn).__name__}")
        if camera_key is not None and not callable(camera_key):
            raise InvalidInputError("camera_key must be a callable (camera, *args, **kwargs) -> hashable id")
        config = config or PluginConfig()
        unknown = sorted(set(options) - {f.name for f in fields(PluginConfig)})
        if unknown:
            raise ConfigError(f"unknown HarmonizedRenderer options {unknown}; valid: {[f.name for f in fields(PluginConfig)]}")
        self.config = replace(config, **options) if options else config
        self.render_fn = render_fn
        self.harmonizer = _as_harmonizer(harmonizer, self.config.max_cameras)
        self.camera_key = camera_key
        self.pose_fn = pose_fn
        mcfg = self.harmonizer.model.config
        self._pass_mask = mcfg.use_mask if self.config.use_mask is None else (self.config.use_mask and mcfg.use_mask)
        self._pass_depth = mcfg.use_depth if self.config.use_depth is None else (self.config.use_depth and mcfg.use_depth)
        reads_hint = self.harmonizer.reads_shadow_hint
        self._pass_hint = reads_hint if self.config.use_shadow_hint is None else (self.config.use_shadow_hint and reads_hint)
        self._enabled = check_flag(enabled, "enabled")
        self._cams: OrderedDict[Hashable, _CameraState] = OrderedDict()
        self._failures: dict[str, int] = {}
        self._resets: dict[str, int] = dict.fromkeys(_RESET_REASONS, 0)
        self._logged: set[tuple[Hashable, str]] = set()
        self._lock = threading.RLock()
        functools.update_wrapper(self, render_fn, updated=())

    # ------------------------------------------------------------------ switches and state
    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        value = check_flag(value, "enabled")
        with self._lock:
            if value != self._enabled:
                self._enabled = value
                # Either way the cached context no longer matches the frames the user sees: start afresh.
                for cid in list(self._cams):
                    self._reset_camera(cid, "toggle")

    def reset(self, camera_id: Hashable | None = None) -> None:
        """Forget the context (and last pose/size) of one camera, or of all cameras (None)."""
        with self._lock:
            for cid in list(self._cams) if camera_id is None else [camera_id]:
                self._reset_camera(cid, "manual")

    def _reset_camera(self, cid: Hashable, reason: str) -> None:
        self.harmonizer.reset(cid)
        st = self._cams.get(cid)
        if st is not None:
            st.size, st.pose, st.pending_reset = None, None, None
        self._resets[reason] += 1

    @property
    def cameras(self) -> list[Hashable]:
        """Ids of the cameras tracked now (least recently used first)."""
        return list(self._cams)

    def context_length(self, camera_id: Hashable = _DEFAULT_CAMERA) -> int:
        """Past frames cached for ``camera_id`` now (0..K)."""
        return self.harmonizer.context_length(camera_id)

    def last_info(self, camera_id: Hashable = _DEFAULT_CAMERA) -> FrameInfo | None:
        """What happened to the latest frame of ``camera_id`` (None before its first frame)."""
        st = self._cams.get(camera_id)
        return None if st is None else st.last

    def stats(self) -> dict[str, Any]:
        """Counts and timings, overall and per camera (keys are ``str(camera_id)``).

        ``render_ms`` / ``enhance_ms``: {"median", "p90", "mean", "count"} over the last ``timing_window``
        frames of each camera; ``frames`` / ``enhanced`` / ``failed`` count every frame since construction
        (of the cameras still tracked); ``failures``: {error type: count}; ``resets``: {reason: count}.
        """
        with self._lock:
            cams = {}
            for cid, st in self._cams.items():
                cams[str(cid)] = {
                    "frames": st.frames, "enhanced": st.enhanced, "failed": st.failed,
                    "context_length": self.harmonizer.context_length(cid),
                    "render_ms": timing_summary(st.render_ms), "enhance_ms": timing_summary(st.enhance_ms),
                }
            all_states = list(self._cams.values())
            return {
                "enabled": self._enabled,
                "frames": sum(s.frames for s in all_states),
                "enhanced": sum(s.enhanced for s in all_states),
                "failed": sum(s.failed for s in all_states),
                "render_ms": timing_summary(v for s in all_states for v in s.render_ms),
                "enhance_ms": timing_summary(v for s in all_states for v in s.enhance_ms),
                "failures": dict(self._failures),
                "resets": dict(self._resets),
                "cameras": cams,
            }

    # ------------------------------------------------------------------ rendering
    def __call__(self, camera: Any, *args: Any, camera_id: Hashable | None = None, **kwargs: Any) -> Any:
        """Render with ``render_fn(camera, *args, **kwargs)`` and enhance the frame (errors of render_fn propagate)."""
        if camera_id is None:
            camera_id = self.camera_key(camera, *args, **kwargs) if self.camera_key is not None else _DEFAULT_CAMERA
        t0 = time.perf_counter()
        result = self.render_fn(camera, *args, **kwargs)  # the caller's code: its errors are the caller's
        render_ms = (time.perf_counter() - t0) * 1e3
        pose = self.pose_fn(camera, *args, **kwargs) if self.pose_fn is not None else None
        return self._process(camera_id, result, as_pose(pose), render_ms)

    render = __call__

    def enhance_frame(self, result: RenderResult, camera_id: Hashable = _DEFAULT_CAMERA, pose: Any = None) -> Any:
        """Apply the plugin (policy, resets, stats) to an already rendered result of ``camera_id``."""
        return self._process(camera_id, result, as_pose(pose), None)

    def _camera(self, cid: Hashable) -> _CameraState:
        st = self._cams.get(cid)
        if st is None:
            st = _CameraState(window=self.config.timing_window)
            self._cams[cid] = st
            while len(self._cams) > self.config.max_cameras:  # bounded memory with many (viewer) clients
                old, _ = self._cams.popitem(last=False)
                self.harmonizer.reset(old)
        else:
            self._cams.move_to_end(cid)
        return st

    def _reset_reason(self, st: _CameraState, size: tuple[int, int] | None, pose: np.ndarray | None) -> str | None:
        if st.pending_reset is not None:
            return st.pending_reset
        if st.size is not None and size is not None and size != st.size:
            return "size"
        if pose is not None and st.pose is not None:
            dt, dr = pose_jump(st.pose, pose)
            cfg = self.config
            if (cfg.teleport_translation_m is not None and dt > cfg.teleport_translation_m) or (
                cfg.teleport_rotation_deg is not None and dr > cfg.teleport_rotation_deg
            ):
                return "teleport"
        return None

    def _process(self, cid: Hashable, result: Any, pose: np.ndarray | None, render_ms: float | None) -> Any:
        try:
            check_hashable(cid, "camera_id")
        except InvalidInputError as e:  # no camera state can be kept for it: the raw frame, counted and logged
            if self.config.strict:
                raise
            with self._lock:
                self._failures[type(e).__name__] = self._failures.get(type(e).__name__, 0) + 1
                if ("<unhashable>", "camera_id") not in self._logged:
                    self._logged.add(("<unhashable>", "camera_id"))
                    log.warning("%s; returning the raw frame (strict=True raises instead)", e)
            return result
        with self._lock:
            st = self._camera(cid)
            st.frames += 1
            if render_ms is not None:
                st.render_ms.append(render_ms)
            if not self._enabled:
                st.last = FrameInfo(False, render_ms, None)
                return result
            reason = None
            t0 = time.perf_counter()
            try:
                parts = _split(result, self.config.keep_raw)
                pose = parts.pose if parts.pose is not None else pose
                size = _frame_size(parts.rgb)
                reason = self._reset_reason(st, size, pose)
                if reason is not None:
                    self._resets[reason] += 1
                st.pending_reset = None
                st.pose = pose
                self._sync()
                out = self.harmonizer.enhance(
                    parts.rgb, mask=parts.mask if self._pass_mask else None,
                    depth=parts.depth if self._pass_depth else None, stream=cid, cut=reason is not None,
                    clip=self.config.clip_input, shadow_hint=parts.shadow_hint if self._pass_hint else None,
                )
                self._sync()
                enhanced = parts.rebuild(out)
            except Exception as e:
                if self.config.strict:
                    raise
                self._on_failure(cid, st, e, render_ms, reason)
                return result
            ms = (time.perf_counter() - t0) * 1e3
            st.size = size
            st.enhanced += 1
            st.enhance_ms.append(ms)
            st.last = FrameInfo(True, render_ms, ms, reason)
            return enhanced

    def _on_failure(self, cid: Hashable, st: _CameraState, e: Exception, render_ms: float | None, reason: str | None) -> None:
        kind = type(e).__name__
        st.failed += 1
        self._failures[kind] = self._failures.get(kind, 0) + 1
        # The next good frame must not attend to a context from before the gap.
        self.harmonizer.reset(cid)
        st.size, st.pending_reset = None, "error"
        st.last = FrameInfo(False, render_ms, None, reason, f"{kind}: {e}")
        if (cid, kind) not in self._logged:
            self._logged.add((cid, kind))
            log.warning(
                "camera %r: enhancer failed (%s: %s); returning the raw frame. Further %s errors on this camera "
                "are counted in stats()['failures'] but not logged again (strict=True raises instead).",
                cid, kind, e, kind,
            )

    def _sync(self) -> None:
        if self.config.sync_cuda and self.harmonizer.device.type == "cuda":
            torch.cuda.synchronize(self.harmonizer.device)


def harmonized(
    harmonizer: Harmonizer | Any, **kwargs: Any
) -> Callable[[RenderFn], HarmonizedRenderer]:
    """Decorator form: ``@harmonized(harmonizer, camera_key=..., strict=...)`` over a render function.

    Returns a :class:`HarmonizedRenderer`, so ``fn.enabled``, ``fn.stats()`` and ``fn.reset()`` work on
    the decorated name. For methods, wrap the bound method instead: ``HarmonizedRenderer(obj.render, h)``.
    """

    def wrap(fn: RenderFn) -> HarmonizedRenderer:
        return HarmonizedRenderer(fn, harmonizer, **kwargs)

    return wrap


__all__ = [
    "FrameInfo",
    "HarmonizedRenderer",
    "PluginConfig",
    "RenderFn",
    "RenderOutput",
    "RenderResult",
    "as_pose",
    "default_pose",
    "harmonized",
    "pose_jump",
    "timing_summary",
]
