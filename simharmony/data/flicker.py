"""Per-frame exposure / white-balance flicker on input sequences (the temporal task of the enhancer).

A reconstruction rendered frame by frame drifts in brightness and colour (per-image appearance
embeddings, auto-exposure, view-dependent colour): the target does not. Flicker multiplies frame t of an
input sequence by display-space gains

    g[t, c] = 2 ** (ev[t] / gamma + wb[t, c]),   ev[t] ~ N(0, ev_sigma),  wb[t, c] ~ N(0, wb_sigma)

(an exposure change of ``ev`` stops in linear light is a gain of ``2**(ev / gamma)`` after a power-law
encoding), with ``g[0] = 1``: the first frame of a stream is clean and later frames drift around it, so
a model that sees its own past outputs can undo the drift while a per-frame model cannot tell a drifted
frame from a clean one. The target is left unchanged. Used as a training augmentation of temporal batches
(``TrainConfig.flicker_prob``) and by the benchmark's flicker holdout (holdout sequences with seeded
flicker).

The counter-example is an *occluder*: a soft blob of one colour that grows over the sequence in input and
target alike (a floater drifting towards the camera, a tunnel's mouth, a truck filling the view). It
changes the frame's statistics as much as a drift does but is content, which the model must keep
(``TrainConfig.occluder_prob``; :func:`occluder_alphas`, :func:`apply_occluder`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simharmony.errors import ShapeMismatchError
from simharmony.utils.config import Config, all_finite, require


@dataclass
class FlickerConfig(Config):
    """Flicker strength: ``ev_sigma`` (stops, linear light), ``wb_sigma`` (log2 gain per channel),
    ``gamma`` of the display encoding the gains are applied under."""

    ev_sigma: float = 0.15
    wb_sigma: float = 0.03
    gamma: float = 2.2

    def __post_init__(self) -> None:
        o = "FlickerConfig"
        require(all_finite(self.ev_sigma, self.wb_sigma, self.gamma), o, "ev_sigma, wb_sigma and gamma must be finite")
        require(self.ev_sigma >= 0 and self.wb_sigma >= 0, o, f"ev_sigma={self.ev_sigma} and wb_sigma={self.wb_sigma} must be >= 0")
        require(self.gamma > 0, o, f"gamma={self.gamma} must be > 0")


def flicker_gains(rng: np.random.Generator, num_frames: int, cfg: FlickerConfig | None = None) -> np.ndarray:
    """Display-space gains [T, 3] float32 for one sequence, deterministic in ``rng``; row 0 is all ones."""
    cfg = cfg or FlickerConfig()
    if num_frames < 1:
        raise ShapeMismatchError(f"flicker_gains: num_frames must be >= 1, got {num_frames}")
    ev = rng.normal(0.0, cfg.ev_sigma, size=(num_frames, 1)) if cfg.ev_sigma > 0 else np.zeros((num_frames, 1))
    wb = rng.normal(0.0, cfg.wb_sigma, size=(num_frames, 3)) if cfg.wb_sigma > 0 else np.zeros((num_frames, 3))
    log2_gain = ev / cfg.gamma + wb
    log2_gain[0] = 0.0
    return np.exp2(log2_gain).astype(np.float32)


def apply_flicker(frames, gains):
    """``frames`` [T, H, W, 3] in [0, 1] (numpy or torch) times ``gains`` [T, 3], clipped to [0, 1]; same type."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ShapeMismatchError(f"apply_flicker: frames must be [T, H, W, 3], got {tuple(frames.shape)}")
    if tuple(gains.shape) != (frames.shape[0], 3):
        raise ShapeMismatchError(f"apply_flicker: gains must be [{frames.shape[0]}, 3], got {tuple(gains.shape)}")
    return (frames * _like(frames, gains)[:, None, None, :]).clip(0.0, 1.0)


def _like(frames, values):
    """``values`` (array-like) as the array kind of ``frames``: numpy of its dtype, or torch on its device."""
    if isinstance(frames, np.ndarray):
        return np.asarray(values, frames.dtype)
    import torch

    return torch.as_tensor(np.asarray(values), dtype=frames.dtype, device=frames.device)


def occluder_alphas(rng: np.random.Generator, num_frames: int, height: int, width: int) -> np.ndarray:
    """Coverage [T, H, W] float32 in [0, 1] of one occluder, deterministic in ``rng``: a soft ellipse whose
    centre drifts and whose radii grow from 5-25 % to 30-80 % of the frame height over the sequence."""
    if num_frames < 1 or height < 1 or width < 1:
        raise ShapeMismatchError(f"occluder_alphas: need T, H, W >= 1, got {(num_frames, height, width)}")
    cy, cx = rng.uniform(0.2, 1.0) * height, rng.uniform(0.0, 1.0) * width  # mostly low: near the camera
    vy, vx = rng.uniform(-0.1, 0.1, size=2) * np.array([height, width])
    r0, r1 = rng.uniform(0.05, 0.25) * height, rng.uniform(0.3, 0.8) * height
    aspect, soft = rng.uniform(0.6, 1.8), rng.uniform(0.03, 0.15) * height
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((num_frames, height, width), np.float32)
    for t in range(num_frames):
        f = t / max(num_frames - 1, 1)
        r = r0 + (r1 - r0) * f
        d = np.sqrt(((yy - cy - vy * f) / r) ** 2 + ((xx - cx - vx * f) / (r * aspect)) ** 2)
        out[t] = 1.0 / (1.0 + np.exp((d - 1.0) * r / soft))
    return out


def apply_occluder(frames, alphas, colour):
    """``frames`` [T, H, W, 3] (numpy or torch) blended towards ``colour`` [3] with coverage ``alphas`` [T, H, W]."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or tuple(alphas.shape) != tuple(frames.shape[:3]):
        raise ShapeMismatchError(f"apply_occluder: frames [T, H, W, 3] and alphas [T, H, W] expected, got "
                                 f"{tuple(frames.shape)} and {tuple(alphas.shape)}")
    a = _like(frames, alphas)[..., None]
    return frames * (1 - a) + _like(frames, colour) * a


__all__ = ["FlickerConfig", "apply_flicker", "apply_occluder", "flicker_gains", "occluder_alphas"]
