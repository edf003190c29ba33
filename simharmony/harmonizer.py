"""Streaming API: enhance frames of one or several camera streams online, with K cached past latents each.

    from simharmony.harmonizer import Harmonizer
    h = Harmonizer.from_pretrained("weights/enhancer")   # or an Enhancer, or "default"
    out = h.enhance(frame)                                 # numpy HxWx3 uint8/float, torch [3,H,W]/[H,W,3]
    out = h.enhance(frame, mask=mask, depth=depth, stream="front")
    outs = h.enhance_batch({"front": f0, "left": f1})      # equal-size streams share one forward
    h.reset("front"); h.reset()                            # scene cut / all streams

Context cache: per stream, for each of the last K *output* frames (most recent first), what the temporal
layers read from it: `Enhancer.context_features` of its latent (keys/values, computed once per frame
instead of K times), or the latent itself for backbones that read raw latents. We cache from the
backbone's output latent ``z_out`` (before decoding) rather than
``E(D(z_out))``: the paper conditions on E(I_hat), and for the lossless codec the two agree except where
the decoded image is clamped to [0, 1]; for a lossy autoencoder caching ``z_out`` saves one encode per
frame. Training on temporal batches must feed the same kind of context. ``reencode_context=True``
switches to E(clamp(D(z_out))), the paper's literal definition, at the cost of one encode per frame.

A stream's context is reset when its resolution changes, on ``cut=True`` and on :meth:`Harmonizer.reset`.
At most ``max_streams`` (default 64) streams keep a context: beyond that the least recently used stream's
context is dropped, and that stream simply starts afresh on its next frame, as after a reset. (3,000 streams
of the shipped model at 512x288 would otherwise hold about 350 MiB.)

Inputs and outputs are checked: float frames must be in [0, 1] (within :data:`RANGE_TOLERANCE`); with
``clip=True`` a renderer's overshoot up to :data:`CLIP_TOLERANCE` outside [0, 1] is clipped, while frames
further out (a float frame holding 0..255 values, HDR radiance) are an :class:`InvalidInputError`. An output
(image or context latent) with NaN or infinity is a :class:`NonFiniteError`, and no stream's context is
updated by that call.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simharmony.errors import (
    InvalidInputError,
    MissingFileError,
    NonFiniteError,
    ShapeMismatchError,
)
from simharmony.models.enhancer import Enhancer
from simharmony.paths import ENHANCER_DIR
from simharmony.utils.checks import check_hashable, check_image_size, resolve_device

RANGE_TOLERANCE = 1e-3
"""Float frames may stray this far outside [0, 1] (rounding) without ``clip``; they are clamped."""
CLIP_TOLERANCE = 0.25
"""With ``clip=True``, float frames within [-CLIP_TOLERANCE, 1 + CLIP_TOLERANCE] are clipped to [0, 1]
(3DGS renders overshoot by a few percent where SH colours are not clamped). A frame further out is not an
overshoot but a frame of another range - 0..255 values in a float array, HDR radiance, [-1, 1] - and is
rejected: clipping it would return a near-white (or black) frame as if enhanced."""
DEFAULT_MAX_STREAMS = 64
"""Streams whose context a Harmonizer keeps by default (least recently used ones are dropped beyond it)."""


@dataclass
class _StreamState:
    size: tuple[int, int]
    # most recent first: Enhancer.context_features of each past output latent (a list of [1, ...] tensors),
    # or the latent [1, Cz, h, w] itself when the backbone reads raw latents
    context: deque = field(default_factory=deque)


@dataclass
class _Prepared:
    x: torch.Tensor  # [3, H, W] float in [0, 1], on the model's device
    restore: Callable[[torch.Tensor], Any]  # [3, H, W] float32 in [0, 1] -> the caller's kind


class Harmonizer:
    """Online enhancer over several independent streams. Deterministic; no gradients.

    model: an :class:`Enhancer`; device "cpu"/"cuda"; dtype torch.float32 or torch.bfloat16;
    reencode_context: cache E(output image) instead of the output latent (see module docstring);
    max_streams: how many streams keep a context (least recently used ones beyond it start afresh).
    """

    def __init__(self, model: Enhancer, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 reencode_context: bool = False, max_streams: int = DEFAULT_MAX_STREAMS):
        if not isinstance(model, Enhancer):
            raise InvalidInputError(f"model must be an Enhancer, got {type(model).__name__}")
        device = resolve_device(device)
        if dtype not in (torch.float32, torch.bfloat16):
            raise InvalidInputError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
        if isinstance(max_streams, bool) or not isinstance(max_streams, int) or max_streams < 1:
            raise InvalidInputError(f"max_streams must be an integer >= 1, got {max_streams!r}")
        self.model = model.to(device=device, dtype=dtype).eval()
        self.device = device
        self.dtype = dtype
        self.reencode_context = reencode_context
        self.context_frames = model.config.context_frames
        self.max_streams = max_streams
        self._streams: OrderedDict[Hashable, _StreamState] = OrderedDict()  # least recently used first

    @classmethod
    def from_pretrained(cls, path_or_model: str | os.PathLike | Enhancer = "default", **kwargs) -> Harmonizer:
        """From an Enhancer, a folder written by ``Enhancer.save_pretrained`` or "default" (weights/enhancer)."""
        if isinstance(path_or_model, Enhancer):
            return cls(path_or_model, **kwargs)
        if isinstance(path_or_model, str) and path_or_model == "default":
            folder = Path(ENHANCER_DIR)
            if not (folder / "model.safetensors").is_file():
                raise MissingFileError(
                    f"default enhancer weights are not trained yet: expected {folder}/config.yaml and "
                    f"{folder}/model.safetensors. Train them, or pass a folder saved with Enhancer.save_pretrained "
                    "or an Enhancer instance."
                )
            return cls(Enhancer.from_pretrained(folder), **kwargs)
        return cls(Enhancer.from_pretrained(path_or_model), **kwargs)

    # -- stream bookkeeping -------------------------------------------------------------------------------
    @property
    def streams(self) -> list[Hashable]:
        return list(self._streams)

    def context_length(self, stream: Hashable = "default") -> int:
        """How many past latents the stream holds now (0..K)."""
        state = self._streams.get(stream)
        return 0 if state is None else len(state.context)

    def reset(self, stream: Hashable | None = None) -> None:
        """Forget the context of one stream (scene cut) or of all streams (None)."""
        if stream is None:
            self._streams.clear()
        else:
            self._streams.pop(check_hashable(stream, "stream"), None)

    def _state(self, stream: Hashable, size: tuple[int, int], cut: bool) -> _StreamState:
        state = self._streams.get(stream)
        if state is None or cut or state.size != size:  # resolution change = new context
            state = _StreamState(size=size, context=deque(maxlen=max(self.context_frames, 1)))
            self._streams[stream] = state
        self._streams.move_to_end(stream)  # most recently used
        return state

    def _evict(self, keep: Collection[Hashable]) -> None:
        """Drop least recently used streams beyond ``max_streams``, never one of ``keep`` (this call's streams:
        a single batch of more than ``max_streams`` streams keeps them all until a later call)."""
        while len(self._streams) > self.max_streams:
            oldest = next(iter(self._streams))
            if oldest in keep:
                break
            del self._streams[oldest]

    # -- enhancement --------------------------------------------------------------------------------------
    def enhance(self, frame, mask=None, depth=None, stream: Hashable = "default", cut: bool = False, clip: bool = False,
                shadow_hint=None):
        """Enhance one frame of ``stream``; returns the same kind, layout and dtype as ``frame``.

        frame: numpy [H, W, 3] uint8 or float in [0, 1]; torch [3, H, W] or [H, W, 3] uint8 or float.
        mask: optional [H, W] (or [H, W, 1] / [1, H, W]) bool, uint8 (0..255) or float in [0, 1].
        depth: optional [H, W] z-depth, >= 0, inf = no hit. cut: reset the stream's context first.
        shadow_hint: optional [H, W] in [0, 1] (as the mask): where inserted objects' cast shadows fall
        (:func:`scene_tools.shadows.shadow_hint`); read by models built with ``use_shadow_hint``, ignored by others.
        clip: accept finite float frames up to :data:`CLIP_TOLERANCE` outside [0, 1] (3DGS renders overshoot)
        and clip them; frames further out raise InvalidInputError either way.
        Raises NonFiniteError when the enhancer's output is not finite (the stream's context is kept as it was).
        """
        check_hashable(stream, "stream")
        return self.enhance_batch({stream: frame}, masks={stream: mask}, depths={stream: depth},
                                  cuts={stream} if cut else None, clip=clip, shadow_hints={stream: shadow_hint})[stream]

    @property
    def reads_shadow_hint(self) -> bool:
        """Whether the model takes the shadow hint (others ignore a given one)."""
        return bool(getattr(self.model.config, "use_shadow_hint", False))

    def enhance_batch(
        self,
        frames: Mapping[Hashable, Any],
        masks: Mapping[Hashable, Any] | None = None,
        depths: Mapping[Hashable, Any] | None = None,
        cuts: set | None = None,
        clip: bool = False,
        shadow_hints: Mapping[Hashable, Any] | None = None,
    ) -> dict[Hashable, Any]:
        """Enhance one frame for each stream in ``frames`` ({stream: frame}); returns {stream: output}.

        Streams with the same frame size, context length and depth presence run as one batched forward
        (streams with and without a mask or shadow hint together: ``Enhancer(mask_given=)``). ``masks`` /
        ``depths`` / ``shadow_hints`` / ``cuts`` may name only streams of ``frames`` (others raise
        InvalidInputError naming them).
        All inputs are validated before any stream's context is touched, and outputs before any context is
        updated: a non-finite output (NaN / inf in an image or latent) raises NonFiniteError naming its streams.
        """
        if not isinstance(frames, Mapping) or not frames:
            raise InvalidInputError("frames must be a non-empty mapping {stream: frame}")
        masks, depths, hints, cuts = masks or {}, depths or {}, shadow_hints or {}, cuts or set()
        for what, given in (("masks", masks), ("depths", depths), ("shadow_hints", hints)):
            if not isinstance(given, Mapping):
                raise InvalidInputError(f"{what} must be a mapping {{stream: value}} or None, got {type(given).__name__}")
        if isinstance(cuts, (str, bytes)) or not isinstance(cuts, Collection):
            raise InvalidInputError(f"cuts must be a set of stream ids or None, got {type(cuts).__name__} {cuts!r}")
        for what, given in (("masks", masks), ("depths", depths), ("shadow_hints", hints), ("cuts", cuts)):
            unknown = [s for s in given if s not in frames]
            if unknown:
                raise InvalidInputError(f"{what} names streams {unknown!r} that are not in frames "
                                        f"(streams: {list(frames)!r})")
        prepared = {}
        for s, frame in frames.items():
            p = _prepare_frame(frame, self.device, clip)
            hw = tuple(p.x.shape[-2:])
            m = _prepare_map(masks.get(s), hw, "mask", self.device)
            d = _prepare_map(depths.get(s), hw, "depth", self.device)
            sh = _prepare_map(hints.get(s), hw, "shadow hint", self.device)
            prepared[s] = (p, m, d, sh if self.reads_shadow_hint else None)
        groups: dict[tuple, list] = {}
        for s, (p, m, d, _) in prepared.items():
            state = self._state(s, tuple(p.x.shape[-2:]), s in cuts)
            key = (tuple(p.x.shape[-2:]), len(state.context), d is not None)
            groups.setdefault(key, []).append(s)
        results = []  # (names, states, out, z): contexts are updated only once every output is known finite
        with torch.inference_mode():
            for (hw, n_past, has_d), names in groups.items():
                x = torch.stack([prepared[s][0].x for s in names]).to(self.dtype)
                mask, given = _batched_masks([prepared[s][1] for s in names], hw, self.dtype, self.device)
                depth = torch.stack([prepared[s][2] for s in names]).to(self.dtype) if has_d else None
                hint, hint_given = _batched_masks([prepared[s][3] for s in names], hw, self.dtype, self.device)
                states = [self._streams[s] for s in names]
                past, past_kv = _batched_context(states) if n_past else (None, None)
                extra = {"shadow_hint": hint, "shadow_hint_given": hint_given} if hint is not None else {}
                out, z = self.model(x, past, mask=mask, depth=depth, past_kv=past_kv, mask_given=given, **extra)
                if self.reencode_context:
                    z = self.model.encode(out)
                results.append((names, states, out, z))
            bad = [s for names, _, out, z in results for s in _non_finite_items(names, out, z)]
            if bad:
                raise NonFiniteError(f"the enhancer's output for streams {bad!r} contains NaN or infinite values "
                                     "(the model or its config is broken); their contexts were not updated")
            outputs = {}
            for names, states, out, z in results:
                if self.context_frames > 0:
                    feats = self.model.context_features(z)
                    for i, st in enumerate(states):
                        st.context.appendleft(z[i : i + 1].clone() if feats is None else [f[i : i + 1].clone() for f in feats])
                for i, s in enumerate(names):
                    outputs[s] = prepared[s][0].restore(out[i].float())
        self._evict(frames)
        return {s: outputs[s] for s in frames}


def _non_finite_items(names: list[Hashable], out: torch.Tensor, z: torch.Tensor) -> list[Hashable]:
    """The streams of a batched forward whose output image [B, 3, H, W] or latent [B, Cz, h, w] is not finite.
    Cheap: one sum per tensor, which is finite whenever every element is (a NaN or an infinity makes it
    NaN or infinite); only when it is not (or a huge latent overflowed it) does the exact per-item check run."""
    if bool(torch.isfinite(out.sum(dtype=torch.float32) + z.sum(dtype=torch.float32))):
        return []
    ok = torch.isfinite(out.flatten(1)).all(1) & torch.isfinite(z.flatten(1)).all(1)
    return [s for s, good in zip(names, ok.tolist()) if not good]


def _batched_masks(masks: list[torch.Tensor | None], hw: tuple[int, int], dtype: torch.dtype,
                   device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Streams' masks ([1, H, W] or None) -> (mask [B, 1, H, W] | None, mask_given [B] | None): None when no
    stream has one; zeros and mask_given where some have none; mask_given None when all have one."""
    given = [m is not None for m in masks]
    if not any(given):
        return None, None
    mask = torch.stack([m if m is not None else torch.zeros(1, *hw, device=device) for m in masks]).to(dtype)
    return mask, None if all(given) else torch.tensor(given, device=device)


def _batched_context(states: list[_StreamState]) -> tuple[torch.Tensor | None, list[list[torch.Tensor]] | None]:
    """(past latents [B, T, Cz, h, w], None) or (None, past_kv) from streams holding equally many entries:
    past_kv is, per temporal layer, a list over past frames of that layer's entries batched over streams."""
    if not isinstance(states[0].context[0], list):
        return torch.stack([torch.cat(list(st.context), dim=0) for st in states]), None
    if len(states) == 1:  # one stream: the cached tensors as they are, nothing copied
        return None, [list(layer) for layer in zip(*states[0].context)]
    frames = [[torch.cat(parts) for parts in zip(*entries)] for entries in zip(*(st.context for st in states))]
    return None, [list(layer) for layer in zip(*frames)]


# -- input conversion -------------------------------------------------------------------------------------
def _check_finite(arr, what: str) -> None:
    finite = np.isfinite(arr).all() if isinstance(arr, np.ndarray) else bool(torch.isfinite(arr).all())
    if not finite:
        raise NonFiniteError(f"{what} contains NaN or infinite values")


def _prepare_frame(frame, device: torch.device, clip: bool = False) -> _Prepared:
    """Frame of any accepted kind -> [3, H, W] float32 in [0, 1] on ``device`` plus the inverse conversion.
    Float frames outside [0, 1] by more than RANGE_TOLERANCE (CLIP_TOLERANCE with ``clip``) raise; within
    it they are clamped."""
    if isinstance(frame, np.ndarray):
        if frame.ndim != 3 or frame.shape[-1] != 3:
            raise ShapeMismatchError(f"numpy frame must be [H, W, 3], got shape {frame.shape}")
        _check_size(*frame.shape[:2])
        dtype = frame.dtype
        if dtype == np.uint8:
            x = torch.from_numpy(np.ascontiguousarray(frame)).to(device).permute(2, 0, 1).float() / 255.0

            def restore(y):  # contiguous, so cv2 can draw on it
                return (y * 255.0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()

        elif np.issubdtype(dtype, np.floating):
            _check_float_frame(frame, clip)
            x = torch.from_numpy(np.ascontiguousarray(frame, dtype=np.float32)).to(device).permute(2, 0, 1).clamp(0, 1)

            def restore(y):
                return y.permute(1, 2, 0).contiguous().cpu().numpy().astype(dtype, copy=False)

        else:
            raise InvalidInputError(f"numpy frame dtype must be uint8 or floating in [0, 1], got {dtype}")
        return _Prepared(x, restore)
    if isinstance(frame, torch.Tensor):
        if frame.ndim != 3 or (frame.shape[0] != 3 and frame.shape[-1] != 3):
            raise ShapeMismatchError(f"torch frame must be [3, H, W] or [H, W, 3], got shape {tuple(frame.shape)}")
        chw = frame.shape[0] == 3  # [3, H, 3] is read as channels-first
        src_device, dtype = frame.device, frame.dtype
        x = frame if chw else frame.permute(2, 0, 1)
        _check_size(*x.shape[-2:])
        if dtype == torch.uint8:
            x = x.to(device).float() / 255.0
        elif dtype.is_floating_point:
            _check_float_frame(frame, clip)
            x = x.to(device=device, dtype=torch.float32).clamp(0, 1)
        else:
            raise InvalidInputError(f"torch frame dtype must be uint8 or floating in [0, 1], got {dtype}")

        def restore(y):
            if dtype == torch.uint8:
                y = (y * 255.0).round().clamp(0, 255).to(torch.uint8)
            else:
                y = y.to(dtype)
            y = y if chw else y.permute(1, 2, 0)
            return y.to(src_device).contiguous()

        return _Prepared(x.contiguous(), restore)
    raise InvalidInputError(f"frame must be a numpy array or torch tensor, got {type(frame).__name__}")


def _check_float_frame(frame, clip: bool) -> None:
    """A float frame must be finite and (within tolerance) in [0, 1]; one min and one max pass, since a NaN or
    an infinity shows in them (this runs on every frame of the render hook)."""
    lo, hi = float(frame.min()), float(frame.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise NonFiniteError("frame contains NaN or infinite values")
    _check_range(lo, hi, clip)


def _check_range(lo: float, hi: float, clip: bool = False) -> None:
    tol = CLIP_TOLERANCE if clip else RANGE_TOLERANCE
    if lo < -tol or hi > 1 + tol:
        allowed = (f"clip=True clips overshoots up to {tol:g} outside [0, 1], not further" if clip else
                   "pass clip=True to clip small renderer overshoots")
        raise InvalidInputError(f"float frames must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}] ({allowed}; "
                                "pass uint8 for 0..255 values)")


def _check_size(h: int, w: int) -> None:
    if h < 2 or w < 2:
        raise ShapeMismatchError(f"frame too small: {(h, w)}")
    check_image_size(h, w, "frame")


def _prepare_map(value, hw: tuple[int, int], what: str, device: torch.device) -> torch.Tensor | None:
    """Mask, shadow hint or depth of any accepted kind -> [1, H, W] float32 on ``device`` (None stays None)."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        if value.dtype == np.bool_:
            value = value.astype(np.float32)
        elif not value.dtype.isnative:  # big-endian data: torch reads native byte order only
            value = value.astype(value.dtype.newbyteorder("="))
        t = torch.from_numpy(np.ascontiguousarray(value))
    elif isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.dtype == torch.bool:
            t = t.float()
    else:
        raise InvalidInputError(f"{what} must be a numpy array or torch tensor, got {type(value).__name__}")
    if t.ndim == 3 and 1 in (t.shape[0], t.shape[-1]):
        t = t[0] if t.shape[0] == 1 else t[..., 0]
    if t.ndim != 2:
        raise ShapeMismatchError(f"{what} must be [H, W] (or [H, W, 1] / [1, H, W]), got shape {tuple(t.shape)}")
    if tuple(t.shape) != hw:
        raise ShapeMismatchError(f"{what} size {tuple(t.shape)} does not match the frame size {hw}")
    if what != "depth":
        if t.dtype == torch.uint8:
            if int(t.max()) == 1:  # 0/1 would read as 0..1/255: almost no mask, silently
                raise InvalidInputError(f"uint8 {what} holds only 0 and 1, but uint8 maps are read as 0..255: pass "
                                        f"{what} * 255, a bool map or a float map in [0, 1]")
            t = t.float() / 255.0
        elif not t.is_floating_point():
            raise InvalidInputError(f"{what} dtype must be bool, uint8 or float in [0, 1], got {t.dtype}")
        _check_finite(t, what)
        if float(t.min()) < 0 or float(t.max()) > 1:
            raise InvalidInputError(f"float {what} must be in [0, 1], got [{float(t.min()):.4g}, {float(t.max()):.4g}]")
    else:
        if not t.is_floating_point():
            t = t.float()
        if torch.isnan(t).any():
            raise NonFiniteError("depth contains NaN (use inf for pixels with no hit)")
        if float(t.min()) < 0:
            raise InvalidInputError("depth must be >= 0 (z-depth in metres, inf = no hit)")
    return t.float()[None].to(device)
