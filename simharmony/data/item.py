"""The paired training item shared by every data stream, the shards and the dataset reader.

A :class:`PairItem` is one image (T = 1) or one short sequence (default T = 5) of (input, target) frames:

- ``input``      [T, H, W, 3] float32 in [0, 1]: the degraded / disharmonised frames the model sees
- ``target``     [T, H, W, 3] float32 in [0, 1]: the frames it should produce
- ``mask``       [T, H, W] float32 in [0, 1]: where the input is wrong (soft edges allowed); the inserted or
  altered object, except on :data:`TARGET_DERIVED_MASK_STREAMS`
- ``depth``      [T, H, W] float32 z-depth of the target (OpenCV camera), ``inf`` = sky / nothing hit
- ``flow``       [T, H, W, 2] float32 backward flow to the previous frame in pixels (see
  :mod:`scene_tools.flow`): pixel p at t shows what p + flow[p] shows at t - 1; zeros at t = 0
- ``flow_valid`` [T, H, W] bool: False where the flow is undefined or occluded; all False at t = 0
- ``metadata``   dict with at least ``stream`` (str), ``params`` (dict), ``seed`` (int), ``scene_id`` (str);
  everything in it must be JSON-serialisable (it goes into the shard manifest).
- ``asset_mask`` optional [T, H, W] float32 in [0, 1]: the inserted object's own coverage, on items whose
  ``mask`` is cut out with the target's help (the shadow stream): the mask a simulator would give there.
- ``shadow_hint`` optional [T, H, W] float32 in [0, 1]: where the inserted object's cast shadow falls,
  computed from the object, the sun and the depth as at run time (:func:`scene_tools.shadows.shadow_hint`).

The mask means one thing in every stream: **the inserted object, as a simulator gives it** (its soft
coverage; all zero = nothing was inserted). That is what models are given (:meth:`PairItem.model_mask`). Where
a stream's ``mask`` field is cut out with the target's help (:data:`TARGET_DERIVED_MASK_STREAMS`), models get
the object's ``asset_mask`` instead and ``mask`` only marks where the foreground metrics are taken. What
differs between streams is only where the input is wrong:

=================  ===================================  ============================================
stream             model mask (the inserted object)     input differs from the target
=================  ===================================  ============================================
isp, real_isp      the re-rendered object / region      inside the mask only
rpb, real_rpb      the Poisson-blended object / region  inside the mask only
relight            the relit object (dilated 1 px)      inside the mask only
shadow             the object (asset_mask, 1 px)        the object's edge and its missing cast shadow,
                                                        outside the object (``mask`` = both)
reinsert           the re-inserted object (opacity      inside (no shadow, reconstruction error) and
                   > 0.3, 1 px)                         outside (the background's reconstruction error)
novel_view         none (nothing inserted)              wherever the reconstruction is wrong
real_identity      an already right region, or none     nowhere
real_video         none (all zero)                      everywhere on flicker items, nowhere on clean ones
=================  ===================================  ============================================

Construction validates everything and raises the project's errors (ShapeMismatchError, NonFiniteError,
InvalidInputError) naming the field and what was expected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simharmony.errors import InvalidInputError, NonFiniteError, ShapeMismatchError

ARRAY_FIELDS = ("input", "target", "mask", "depth", "flow", "flow_valid")
OPTIONAL_ARRAY_FIELDS = ("asset_mask", "shadow_hint")
REQUIRED_METADATA = {"stream": str, "params": dict, "seed": int, "scene_id": str}
# Streams whose item mask is cut out with the target's help (the cast shadow's extent; where a
# reconstruction is wrong): a simulator could not give it, so models are never shown it (training:
# TrainConfig.maskless_streams, benchmark: BenchConfig.maskless_streams); it only marks the region of the
# foreground metrics. The other streams' masks are the inserted or altered object, as a simulator gives.
# Items of these streams may carry the object's own ``asset_mask``, which models do get (model_mask()).
TARGET_DERIVED_MASK_STREAMS: tuple[str, ...] = ("shadow", "novel_view")


def _as_array(name: str, x: Any, dtype) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    if not isinstance(x, np.ndarray):
        raise InvalidInputError(f"PairItem.{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    if dtype is bool:
        if x.dtype != np.bool_:
            raise InvalidInputError(f"PairItem.{name} must be a bool array, got dtype {x.dtype}")
        return x
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise InvalidInputError(f"PairItem.{name} must be numeric, got dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


@dataclass
class PairItem:
    """One (input, target) image or sequence with mask, depth, flow and metadata (module docstring)."""

    input: np.ndarray
    target: np.ndarray
    mask: np.ndarray
    depth: np.ndarray
    flow: np.ndarray
    flow_valid: np.ndarray
    metadata: dict = field(default_factory=dict)
    asset_mask: np.ndarray | None = None
    shadow_hint: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.input = _as_array("input", self.input, np.float32)
        if self.input.ndim != 4 or self.input.shape[-1] != 3 or min(self.input.shape) < 1:
            raise ShapeMismatchError(f"PairItem.input must be [T, H, W, 3] with T, H, W >= 1, got {list(self.input.shape)}")
        T, H, W, _ = self.input.shape
        expected = {
            "target": (T, H, W, 3),
            "mask": (T, H, W),
            "depth": (T, H, W),
            "flow": (T, H, W, 2),
            "flow_valid": (T, H, W),
        }
        for name in OPTIONAL_ARRAY_FIELDS:
            if getattr(self, name) is not None:
                expected[name] = (T, H, W)
        for name, shape in expected.items():
            arr = _as_array(name, getattr(self, name), bool if name == "flow_valid" else np.float32)
            if arr.shape != shape:
                raise ShapeMismatchError(f"PairItem.{name} must be {list(shape)} to match input, got {list(arr.shape)}")
            setattr(self, name, arr)
        for name in ("input", "target", "mask") + OPTIONAL_ARRAY_FIELDS:
            arr = getattr(self, name)
            if arr is None:
                continue
            if not np.isfinite(arr).all():
                raise NonFiniteError(f"PairItem.{name} contains NaN or infinity")
            lo, hi = float(arr.min()), float(arr.max())
            if lo < 0.0 or hi > 1.0:
                raise InvalidInputError(f"PairItem.{name} must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
        if np.isnan(self.depth).any():
            raise NonFiniteError("PairItem.depth contains NaN (use inf for sky / no hit)")
        if (self.depth <= 0).any():
            raise InvalidInputError("PairItem.depth must be > 0 (z-depth; inf for sky)")
        if not np.isfinite(self.flow).all():
            raise NonFiniteError("PairItem.flow contains NaN or infinity")
        if self.flow_valid[0].any() or np.abs(self.flow[0]).max() > 0:
            raise InvalidInputError("PairItem.flow at t=0 must be zero and flow_valid all False (no previous frame)")
        self._check_metadata()

    def _check_metadata(self) -> None:
        md = self.metadata
        if not isinstance(md, dict):
            raise InvalidInputError(f"PairItem.metadata must be a dict, got {type(md).__name__}")
        for key, tp in REQUIRED_METADATA.items():
            if key not in md:
                raise InvalidInputError(f"PairItem.metadata is missing {key!r}; required keys: {sorted(REQUIRED_METADATA)}")
            v = md[key]
            if isinstance(v, bool) or not isinstance(v, tp):
                raise InvalidInputError(f"PairItem.metadata[{key!r}] must be {tp.__name__}, got {type(v).__name__}")
        if not md["stream"]:
            raise InvalidInputError("PairItem.metadata['stream'] must not be empty")
        try:
            json.dumps(md, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"PairItem.metadata must be JSON-serialisable (finite numbers only): {e}") from e

    # --- shape helpers ---------------------------------------------------------------------------

    @property
    def num_frames(self) -> int:
        return int(self.input.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.input.shape[1]), int(self.input.shape[2])

    @property
    def is_sequence(self) -> bool:
        return self.num_frames > 1

    @property
    def stream(self) -> str:
        return self.metadata["stream"]

    def frames(self, start: int, length: int = 1) -> PairItem:
        """Frames [start, start + length) as a new item; the first frame's flow is reset (no previous frame)."""
        T = self.num_frames
        if not (0 <= start and length >= 1 and start + length <= T):
            raise InvalidInputError(f"frames({start}, {length}) out of range for an item of {T} frames")
        sl = slice(start, start + length)
        flow, valid = self.flow[sl].copy(), self.flow_valid[sl].copy()
        flow[0], valid[0] = 0.0, False
        md = dict(self.metadata, frame_start=int(start) + int(self.metadata.get("frame_start", 0)))
        optional = {n: None if getattr(self, n) is None else getattr(self, n)[sl] for n in OPTIONAL_ARRAY_FIELDS}
        return PairItem(self.input[sl], self.target[sl], self.mask[sl], self.depth[sl], flow, valid, md, **optional)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array field the item has (the optional ones only when present)."""
        names = ARRAY_FIELDS + tuple(n for n in OPTIONAL_ARRAY_FIELDS if getattr(self, n) is not None)
        return {name: getattr(self, name) for name in names}

    def model_mask(self, maskless_streams: tuple[str, ...] | list[str] = TARGET_DERIVED_MASK_STREAMS) -> np.ndarray | None:
        """The mask [T, H, W] a model may be given: ``mask``, but on ``maskless_streams`` the object's own
        ``asset_mask`` (None where the item has none)."""
        return self.asset_mask if self.stream in maskless_streams else self.mask
