"""The methods a benchmark run compares, behind one small interface, all in one process.

A method is a :class:`Method`: ``reset()`` starts a new clip (stream), ``__call__(frame, mask, depth)``
enhances one frame: frame [H, W, 3] float32 in [0, 1], mask [H, W] float32 | None, depth [H, W] | None
-> [H, W, 3] float32 in [0, 1]. Methods built with ``takes_shadow_hint`` also get the clip's shadow hint
([H, W] | None) as ``shadow_hint=``. A method that could not be built is a :class:`Unavailable` entry with
the reason, so the report says "not available" instead of failing.

Methods (names as in the report):

- ``identity``, ``reinhard_lab``, ``lightness_preserving_hsv``: :mod:`simharmony.baselines` (no mask given
  -> an all-zero mask, for which they return the frame unchanged: they only recolour a foreground);
- ``ours``: the Harmonizer streaming each clip with its temporal context (K past latents);
- ``ours_per_frame``: the *same weights* with the context reset before every frame (no temporal context;
  not a separately trained per-frame model);
- ``ours_ema``: ``ours_per_frame`` output smoothed by :class:`simharmony.baselines.EmaSmoother` (as the
  Harmonizer baseline does for video);
- ``per_frame_model``: a separately trained per-frame model (``--per-frame-model``), context reset per frame;
- ``parametric``: the curves + shading-map model (``simharmony.models.parametric``, ``--parametric``);
- ``variant:<name>``: ablation models (``--model-variant NAME=DIR``), streamed like ``ours``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simharmony.baselines import BASELINES, EmaSmoother
from simharmony.errors import MissingFileError, SimHarmonyError

log = logging.getLogger(__name__)

FrameFn = Callable[[np.ndarray, "np.ndarray | None", "np.ndarray | None"], np.ndarray]


@dataclass
class Method:
    """A named per-frame (possibly stateful) enhancer; see the module docstring."""

    name: str
    label: str
    fn: FrameFn
    reset_fn: Callable[[], None] = lambda: None
    kind: str = "baseline"  # baseline | ours | ablation | reference
    source: str = ""  # weights folder or module the method came from
    note: str = ""
    device: str = "cpu"
    takes_shadow_hint: bool = False

    def reset(self) -> None:
        self.reset_fn()

    def __call__(self, frame: np.ndarray, mask: np.ndarray | None = None, depth: np.ndarray | None = None,
                 shadow_hint: np.ndarray | None = None) -> np.ndarray:
        out = self.fn(frame, mask, depth, shadow_hint=shadow_hint) if self.takes_shadow_hint else self.fn(frame, mask, depth)
        return _as_frame(out, frame.shape)


@dataclass
class Unavailable:
    """A method that is not available in this run, and why."""

    name: str
    label: str
    reason: str
    kind: str = "baseline"


@dataclass
class ModelInfo:
    """Where ``ours`` came from (for the report)."""

    source: str
    trained: bool
    parameters: int = 0
    config: dict = field(default_factory=dict)


def _as_frame(out: Any, shape: tuple[int, ...]) -> np.ndarray:
    if hasattr(out, "detach"):
        out = out.detach().float().cpu().numpy()
    out = np.asarray(out, dtype=np.float32)
    if out.shape != tuple(shape):
        if out.ndim == 3 and out.shape[0] == 3 and out.shape[1:] == tuple(shape[:2]):
            out = np.ascontiguousarray(out.transpose(1, 2, 0))  # [3, H, W] from a torch-style model
        else:
            raise SimHarmonyError(f"method returned shape {list(out.shape)}, expected {list(shape)}")
    return np.clip(out, 0.0, 1.0)


def baseline_method(name: str) -> Method:
    fn = BASELINES[name]

    def run(frame, mask, depth):
        m = np.zeros(frame.shape[:2], np.float32) if mask is None else mask
        return fn(frame, m)

    labels = {"identity": "identity (input)", "reinhard_lab": "Reinhard Lab transfer",
              "lightness_preserving_hsv": "lightness-preserving HSV (Li et al.)"}
    return Method(name, labels.get(name, name), run, kind="baseline", source=f"simharmony.baselines.{fn.__name__}")


def _device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def load_harmonizer(folder: str | Path, device: str):
    """A Harmonizer from a weights folder; MissingFileError naming the folder when it is not one."""
    from simharmony.harmonizer import Harmonizer

    folder = Path(folder)
    if not folder.is_dir() or not (folder / "config.yaml").is_file() or not (folder / "model.safetensors").is_file():
        raise MissingFileError(f"model folder {folder} is not a saved Enhancer (expected config.yaml and "
                               "model.safetensors written by Enhancer.save_pretrained)")
    return Harmonizer.from_pretrained(folder, device=device)


def harmonizer_method(name: str, label: str, harmonizer, *, streaming: bool, kind: str, source: str,
                      mask_to_model: bool, depth_to_model: bool, ema_alpha: float | None = None, note: str = "",
                      hint_to_model: bool = True) -> Method:
    """Wrap a Harmonizer: ``streaming`` keeps the temporal context within a clip, else it is reset every frame;
    ``ema_alpha`` smooths the outputs with an EMA over the clip; ``hint_to_model``: pass clips' shadow hints
    (to models that read them)."""
    ema = EmaSmoother(ema_alpha) if ema_alpha is not None else None
    stream = f"bench-{name}"
    state = {"first": True}

    def run(frame, mask, depth, shadow_hint=None):
        cut = state["first"] or not streaming
        state["first"] = False
        out = harmonizer.enhance(frame, mask=mask if mask_to_model else None,
                                 depth=depth if depth_to_model else None, stream=stream, cut=cut,
                                 shadow_hint=shadow_hint)  # None unless takes_shadow_hint
        return ema(out) if ema is not None else out

    def reset():
        state["first"] = True
        harmonizer.reset(stream)
        if ema is not None:
            ema.reset()

    return Method(name, label, run, reset, kind=kind, source=source, note=note, device=str(harmonizer.device),
                  takes_shadow_hint=hint_to_model and harmonizer.reads_shadow_hint)


def resolve_ours(model: str, untrained_fallback: bool, untrained_config: dict, device: str):
    """(Harmonizer, ModelInfo) for ``ours``; raises MissingFileError for a bad explicit folder. Without a
    folder: weights/enhancer, else (``untrained_fallback``) a small untrained Enhancer, else MissingFileError."""
    from simharmony.harmonizer import Harmonizer
    from simharmony.models.backbone import EnhancerConfig
    from simharmony.models.enhancer import Enhancer
    from simharmony.paths import ENHANCER_DIR

    if model:
        h = load_harmonizer(model, device)
        return h, ModelInfo(str(model), True, _params(h), h.model.config.to_dict())
    if (Path(ENHANCER_DIR) / "model.safetensors").is_file():
        h = load_harmonizer(ENHANCER_DIR, device)
        return h, ModelInfo(str(ENHANCER_DIR), True, _params(h), h.model.config.to_dict())
    if not untrained_fallback:
        raise MissingFileError(f"default enhancer weights {ENHANCER_DIR} are missing (not trained yet); pass --model DIR")
    import torch

    torch.manual_seed(0)
    enh = Enhancer(EnhancerConfig(**untrained_config))
    h = Harmonizer.from_pretrained(enh, device=device)
    return h, ModelInfo("untrained Enhancer (no --model given and weights/enhancer missing)", False, _params(h),
                        h.model.config.to_dict())


def _params(h) -> int:
    return int(sum(p.numel() for p in h.model.parameters()))


def parametric_method(folder: str, device: str) -> Method | Unavailable:
    """The curves + shading-map baseline, imported lazily (it lives in its own module, maybe not yet there)."""
    label = "parametric curves + shading map"
    if not folder:
        return Unavailable("parametric", label, "no --parametric folder given")
    try:
        from simharmony.models.parametric import ParametricHarmonizer  # optional module, maybe absent
    except ImportError as e:
        return Unavailable("parametric", label, f"simharmony.models.parametric cannot be imported ({e})")
    try:
        model = ParametricHarmonizer.from_pretrained(folder)
    except Exception as e:  # noqa: BLE001 - any load failure is reported as "not available", the run goes on
        return Unavailable("parametric", label, f"cannot load {folder}: {type(e).__name__}: {e}")
    if hasattr(model, "to"):
        try:
            model = model.to(device) or model
        except (TypeError, RuntimeError, AttributeError) as e:  # a model that does not move keeps its device
            log.info("parametric model stays on its device: %s", e)
    call = getattr(model, "harmonize", None) or getattr(model, "enhance", None) or model

    def run(frame, mask, depth):
        m = np.zeros(frame.shape[:2], np.float32) if mask is None else mask
        try:
            return call(frame, mask=m)
        except TypeError:
            return call(frame, m)

    reset = getattr(model, "reset", None)
    method = Method("parametric", label, run, reset if callable(reset) else (lambda: None), kind="baseline",
                    source=str(folder))
    # its interface is another module's: probe it once so a mismatch is "not available", not a crash mid-run
    probe = np.full((32, 48, 3), 0.5, np.float32)
    probe_mask = np.zeros((32, 48), np.float32)
    probe_mask[8:24, 12:36] = 1.0
    try:
        method(probe, probe_mask, None)
        method.reset()
    except Exception as e:  # noqa: BLE001 - reported as "not available" with the reason
        return Unavailable("parametric", label, f"loaded {folder} but calling it on [H, W, 3] float32 + [H, W] mask "
                           f"failed: {type(e).__name__}: {e}")
    return method


def run_method(method: Method, clip) -> tuple[np.ndarray, float]:
    """Run ``method`` over a :class:`~simharmony.bench.scenarios.Clip`'s frames from a fresh state -> (outputs [T, H, W, 3] float32, ms per frame)."""
    method.reset()
    outs = []
    t0 = time.perf_counter()
    for t in range(clip.num_frames):
        mask = None if clip.model_mask is None else clip.model_mask[t]
        depth = None if clip.depth is None else clip.depth[t]
        hint = None if clip.shadow_hint is None else clip.shadow_hint[t]
        outs.append(method(clip.input[t], mask, depth, shadow_hint=hint))
    return np.stack(outs), (time.perf_counter() - t0) * 1e3 / clip.num_frames


__all__ = ["Method", "ModelInfo", "Unavailable", "baseline_method", "harmonizer_method", "load_harmonizer",
           "parametric_method", "resolve_ours", "run_method"]
