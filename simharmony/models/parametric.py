"""Parametric harmonizer: global RGB curves + a low-frequency shading map (parametric-harmonization-sprih).

The baseline of DESIGN.md section 7 and the "parametric output" option of section 3. A small CNN looks
at a fixed-size LOW-RESOLUTION copy of the frame (+ mask channel and a mask-presence flag) and predicts

- ``curves`` [B, 3, K] (K = 32): the output values of one piecewise-linear curve per RGB channel at the
  uniform input knots ``x_k = k / (K - 1)``. Valid by construction: non-decreasing, values in [0, 1].
- ``shading`` [B, Cs, h, w] (Cs = 1 grey, as the paper, or 3): a positive multiplicative map at a coarse
  grid, bilinearly upsampled to the frame size, so it can only carry low-frequency (shading) changes.

Both are applied at FULL resolution (paper eq. 1, with the mask of its section 3.1)::

    O = M * (curves(C) * upsample(shading)) + (1 - M) * C       (mask given; M = 1 everywhere without)

so pixels with ``M == 0`` are returned bit-exactly. The two stages are sequential as in the paper: the
shading branch also sees the curve-corrected low-res image ``curves(C_lr)``.

Deviations from the paper, all for size: a 0.66 M-parameter CNN instead of ResNet-50 + U-Net (93 M), a
``lowres`` of 72x128 instead of 512x512 (our frames are 256x144 and 16:9), uniform curve knots (the paper
predicts 2D control points), no post-upsampling smoothing conv, and supervised training only (L2 + the
paper's L1; no adversarial stream: see :mod:`simharmony.parametric_training`).

A fresh model is the identity: identity curves and unit shading (zero-initialised output layers).

Usage::

    model = ParametricHarmonizer(ParametricConfig())
    out, params = model(frame, mask=mask)                  # frame [B, 3, H, W] in [0, 1]
    curves, shading = model.predict_parameters(frame, mask)
    curves[:, 0] = curves[:, 0] ** 1.2                     # artist edit: any [B, 3, K] in [0, 1]
    out = model.apply_parameters(frame, curves, shading, mask)
    save_curves_png("curves.png", curves[0])
    model.save_pretrained("weights/parametric"); model = ParametricHarmonizer.from_pretrained("weights/parametric")
    harmonize = parametric_baseline("weights/parametric")  # (image [H, W, 3], mask [H, W]) -> image

Folder format: ``config.yaml`` ({format, version, config}) + ``model.safetensors`` (metadata format).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from simharmony.errors import (
    ConfigError,
    CorruptFileError,
    InvalidInputError,
    MissingFileError,
    NonFiniteError,
    ShapeMismatchError,
)
from simharmony.utils.config import Config, all_finite, require
from simharmony.utils.io import PathLike, load_tensors, load_yaml, save_tensors, save_yaml

FORMAT = "simharmony-parametric"
VERSION = 1
CONFIG_NAME = "config.yaml"
WEIGHTS_NAME = "model.safetensors"
_TOL = 1e-3  # inputs may overshoot [0, 1] by this much (rounding), then they are clipped
_SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(_SOFTPLUS_ONE) == 1: zero logits give equal increments


@dataclass
class ParametricConfig(Config):
    """Architecture of :class:`ParametricHarmonizer`.

    - ``lowres`` (H, W): the fixed size the network sees (any input is resized to it, aspect not kept,
      as the paper's 512x512); ``widths``: channels of the stride-2 encoder levels.
    - ``num_points``: curve control points per channel (paper: 32).
    - ``shading_size`` (h, w): grid of the shading map; ``shading_channels``: 1 (grey, paper) or 3.
    - ``max_log_shading``: the shading map is in [exp(-m), exp(m)] (soft bound).
    - ``use_mask``: the network takes a mask channel + presence flag (a missing mask is allowed).
    - ``mask_mode``: "blend" = only the masked area changes (paper), "global" = the whole frame.
    """

    lowres: tuple[int, int] = (72, 128)
    widths: tuple[int, ...] = (16, 32, 64, 96)
    num_points: int = 32
    shading_size: tuple[int, int] = (18, 32)
    shading_channels: int = 1
    max_log_shading: float = 1.0
    hidden: int = 64
    use_mask: bool = True
    mask_mode: Literal["blend", "global"] = "blend"

    def __post_init__(self) -> None:
        o = "ParametricConfig"
        self.lowres, self.shading_size, self.widths = tuple(self.lowres), tuple(self.shading_size), tuple(self.widths)
        require(len(self.lowres) == 2 and all(int(v) >= 8 for v in self.lowres), o, f"lowres={self.lowres} must be (H, W), each >= 8")
        require(len(self.shading_size) == 2 and all(int(v) >= 1 for v in self.shading_size), o,
                f"shading_size={self.shading_size} must be (h, w), each >= 1")
        require(len(self.widths) >= 2 and all(int(w) >= 1 for w in self.widths), o, f"widths={self.widths} needs >= 2 levels of >= 1 channel")
        require(2 <= self.num_points <= 1024, o, f"num_points={self.num_points} must be in [2, 1024]")
        require(self.shading_channels in (1, 3), o, f"shading_channels={self.shading_channels} must be 1 or 3")
        require(all_finite(self.max_log_shading) and self.max_log_shading > 0, o, f"max_log_shading={self.max_log_shading} must be > 0")
        require(self.hidden >= 1, o, f"hidden={self.hidden} must be >= 1")
        require(self.mask_mode in ("blend", "global"), o, f"mask_mode={self.mask_mode!r} must be 'blend' or 'global'")


# ----------------------------------------------------------------------------------------------------
# functional core: curves and shading


def identity_curves(batch: int = 1, num_points: int = 32, device: Any = None) -> torch.Tensor:
    """Identity curves [batch, 3, num_points]: ``y_k = k / (num_points - 1)``."""
    y = torch.linspace(0.0, 1.0, num_points, device=device)
    return y.expand(batch, 3, num_points).clone()


def curves_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Network output [B, 3, K] -> valid curves [B, 3, K] (non-decreasing, in [0, 1]).

    ``logits[..., 0]`` is the curve's start value y_0; ``logits[..., k]`` (k >= 1) sets the k-th increment
    ``softplus(l + c) / (K - 1)`` (c such that l = 0 gives 1 / (K - 1)); y = clamp(cumsum, 0, 1). Zero
    logits give the identity; clamping a non-decreasing sequence keeps it non-decreasing.
    """
    k = logits.shape[-1]
    inc = F.softplus(logits[..., 1:] + _SOFTPLUS_ONE) / (k - 1)
    y = torch.cat([logits[..., :1], inc], dim=-1).cumsum(dim=-1)
    return y.clamp(0.0, 1.0)


def apply_curves(image: torch.Tensor, curves: torch.Tensor) -> torch.Tensor:
    """Apply per-channel piecewise-linear curves pointwise.

    image [B, 3, H, W] in [0, 1]; curves [B, 3, K] (output at knots x_k = k / (K - 1)) -> [B, 3, H, W]:
    ``y = c[i] + t (c[i+1] - c[i])`` with ``i = floor(x (K - 1))``, ``t = x (K - 1) - i``.

    Implemented as 1-D linear sampling of each curve (``grid_sample`` with ``align_corners=True`` puts
    -1 / +1 on the first / last knot): the same arithmetic as two gathers and a lerp, ~3x faster on CPU.
    """
    b, c, h, w = image.shape
    k = curves.shape[-1]
    gx = image.clamp(0.0, 1.0).reshape(b * c, 1, h * w, 1) * 2.0 - 1.0
    grid = torch.cat([gx, torch.zeros_like(gx)], dim=-1)
    table = curves.to(image.dtype).reshape(b * c, 1, 1, k)
    out = F.grid_sample(table, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.reshape(b, c, h, w)


def upsample_shading(shading: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """shading [B, Cs, h, w] -> [B, Cs, H, W], bilinear with half-pixel centres (align_corners=False), so
    the same grid covers the same image area at any resolution."""
    if tuple(shading.shape[-2:]) == tuple(size):
        return shading
    return F.interpolate(shading, size=size, mode="bilinear", align_corners=False)


def apply_parametric(
    image: torch.Tensor, curves: torch.Tensor, shading: torch.Tensor | None, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``M * (curves(image) * upsample(shading)) + (1 - M) * image``, clamped to [0, 1] (paper eq. 1).

    image [B, 3, H, W]; curves [B, 3, K]; shading [B, 1|3, h, w] or None (= 1); mask [B, 1, H, W] or None
    (= the whole frame). Pixels with mask 0 are returned bit-exactly.
    """
    out = apply_curves(image, curves)
    if shading is not None:
        out = out * upsample_shading(shading, tuple(image.shape[-2:]))
    out = out.clamp_(0.0, 1.0)
    if mask is not None:
        out = torch.where(mask > 0, torch.lerp(image, out, mask), image)  # exact copy where mask == 0
    return out


# ----------------------------------------------------------------------------------------------------
# network


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.SiLU())


def _masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Mean of x [B, C, h, w] weighted by m [B, 1, h, w] -> [B, C] (the plain mean where m sums to ~0)."""
    s = m.sum(dim=(2, 3))
    mean_w = (x * m).sum(dim=(2, 3)) / s.clamp_min(1e-6)
    return torch.where(s > 1e-6, mean_w, x.mean(dim=(2, 3)))


def _colour_stats(img: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Foreground and background mean / std per channel of img [B, 3, h, w] -> [B, 12] (hand-made features
    every colour-transfer method uses; the mask-free case sees fg = bg = whole image)."""
    feats = []
    for w in (m, 1.0 - m):
        mu = _masked_mean(img, w)
        var = _masked_mean((img - mu[..., None, None]) ** 2, w)
        feats += [mu, var.clamp_min(0).sqrt()]
    return torch.cat(feats, dim=1)


class _Encoder(nn.Module):
    """Stride-2 conv pyramid: x [B, Cin, H, W] -> features at 1/2, 1/4, ... (one per width)."""

    def __init__(self, cin: int, widths: tuple[int, ...]):
        super().__init__()
        layers, c = [], cin
        for w in widths:
            layers.append(nn.Sequential(_conv(c, w, 2), _conv(w, w)))
            c = w
        self.levels = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        return feats


class ParametricHarmonizer(nn.Module):
    """Curves + shading predicted at low resolution, applied at full resolution (module docstring)."""

    def __init__(self, config: ParametricConfig | None = None):
        super().__init__()
        self.config = cfg = config or ParametricConfig()
        cin = 3 + (2 if cfg.use_mask else 0)
        w = cfg.widths
        # stage 1: global curves from pooled features (global, foreground, background) + colour statistics
        self.curve_encoder = _Encoder(cin, w)
        self.curve_head = nn.Sequential(nn.Linear(3 * w[-1] + 12, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, 3 * cfg.num_points))
        # stage 2: shading from [C_lr, curves(C_lr), mask, flag]; a small U-Net-like fusion of all levels
        self.shading_encoder = _Encoder(cin + 3, w)
        self.shading_fuse = nn.Sequential(_conv(sum(w) + w[-1], cfg.hidden), _conv(cfg.hidden, cfg.hidden))
        self.shading_head = nn.Conv2d(cfg.hidden, cfg.shading_channels, 3, 1, 1)
        # identity at init: zero curve logits and zero log-shading
        for layer in (self.curve_head[-1], self.shading_head):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # -- inputs -----------------------------------------------------------------------------------------
    def _check(self, frame: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not isinstance(frame, torch.Tensor) or frame.ndim != 4 or frame.shape[1] != 3:
            raise ShapeMismatchError(f"frame must be a tensor [B, 3, H, W], got {tuple(getattr(frame, 'shape', ())) or type(frame).__name__}")
        if not frame.is_floating_point():
            raise InvalidInputError(f"frame must be floating point in [0, 1], got {frame.dtype} (convert uint8 with /255)")
        if frame.shape[0] == 0 or frame.shape[2] == 0 or frame.shape[3] == 0:
            raise InvalidInputError(f"frame is empty (shape {tuple(frame.shape)})")
        lo, hi = (float(v) for v in torch.aminmax(frame.detach()))  # one pass; NaN propagates into both
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise NonFiniteError("frame contains NaN or inf")
        if lo < -_TOL or hi > 1.0 + _TOL:
            raise InvalidInputError(f"frame must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
        if lo < 0.0 or hi > 1.0:
            frame = frame.clamp(0.0, 1.0)
        if mask is None:
            return frame, None
        if not self.config.use_mask:
            raise InvalidInputError("this model was built with use_mask=False; pass mask=None")
        if not isinstance(mask, torch.Tensor):
            raise InvalidInputError(f"mask must be a tensor [B, 1, H, W], got {type(mask).__name__}")
        if mask.ndim == 3:
            mask = mask[:, None]
        b, _, h, w = frame.shape
        if tuple(mask.shape) != (b, 1, h, w):
            raise ShapeMismatchError(f"mask has shape {tuple(mask.shape)}, expected {(b, 1, h, w)} to match the frame")
        mask = mask.to(frame.dtype)
        mlo, mhi = (float(v) for v in torch.aminmax(mask.detach()))
        if not (math.isfinite(mlo) and math.isfinite(mhi)):
            raise NonFiniteError("mask contains NaN or inf")
        if mlo < 0.0 or mhi > 1.0:
            raise InvalidInputError(f"mask must be in [0, 1], got values in [{mlo:.4g}, {mhi:.4g}]")
        return frame, mask

    def _lowres(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(self.config.lowres)
        if tuple(x.shape[-2:]) == size:
            return x
        down = x.shape[-2] > size[0] or x.shape[-1] > size[1]
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=down)

    # -- parameters ---------------------------------------------------------------------------------------
    def _predict(self, frame: torch.Tensor, mask: torch.Tensor | None, present: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked inputs -> (curves [B, 3, K], shading [B, Cs, h, w]). ``present`` [B] (0/1) marks which
        items' masks are real (training drops masks per item); None = all present iff mask is given."""
        cfg = self.config
        b = frame.shape[0]
        c_lr = self._lowres(frame)
        if mask is not None:
            m_lr = self._lowres(mask).clamp(0.0, 1.0)
            flag = torch.ones(b, 1, 1, 1, dtype=frame.dtype, device=frame.device) if present is None else present.view(b, 1, 1, 1).to(frame.dtype)
            m_lr = m_lr * flag
        else:
            m_lr = c_lr.new_zeros(b, 1, *c_lr.shape[-2:])
            flag = c_lr.new_zeros(b, 1, 1, 1)
        extra = [m_lr, flag.expand_as(m_lr)] if cfg.use_mask else []
        # without a mask the statistics see the whole frame as both foreground and background
        m_stats = torch.where(flag > 0, m_lr, torch.ones_like(m_lr))

        feats = self.curve_encoder(torch.cat([c_lr, *extra], dim=1))
        top = feats[-1]
        m_top = F.adaptive_avg_pool2d(m_stats, top.shape[-2:])
        pooled = torch.cat([top.mean(dim=(2, 3)), _masked_mean(top, m_top), _masked_mean(top, 1.0 - m_top),
                            _colour_stats(c_lr, m_stats)], dim=1)
        curves = curves_from_logits(self.curve_head(pooled).view(b, 3, cfg.num_points))

        corrected = apply_curves(c_lr, curves)
        feats2 = self.shading_encoder(torch.cat([c_lr, corrected, *extra], dim=1))
        size = tuple(cfg.shading_size)
        up = [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats2]
        glob = feats2[-1].mean(dim=(2, 3), keepdim=True).expand(-1, -1, *size)  # whole-image context
        log_s = self.shading_head(self.shading_fuse(torch.cat([*up, glob], dim=1)))
        m = cfg.max_log_shading
        shading = torch.exp(m * torch.tanh(log_s / m))
        return curves, shading

    def predict_parameters(self, frame: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """frame [B, 3, H, W] in [0, 1], mask [B, 1, H, W] | None -> (curves [B, 3, K] in [0, 1],
        non-decreasing; shading [B, Cs, h, w] > 0). Cheap: only the low-res copy is processed."""
        frame, mask = self._check(frame, mask)
        return self._predict(frame, mask, None)

    def apply_parameters(
        self, frame: torch.Tensor, curves: torch.Tensor, shading: torch.Tensor | None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Apply (possibly edited) parameters at the frame's resolution -> [B, 3, H, W] in [0, 1].

        curves [B, 3, K] or [3, K] (any K >= 2; values are clamped to [0, 1], need not be monotone);
        shading [B, 1|3, h, w] / [1|3, h, w] (> 0, any grid size) or None. With ``mask_mode="global"``
        the mask is ignored here (the whole frame changes).
        """
        frame, mask = self._check(frame, mask)
        b = frame.shape[0]
        if not isinstance(curves, torch.Tensor):
            raise InvalidInputError(f"curves must be a tensor [B, 3, K], got {type(curves).__name__}")
        if curves.ndim == 2:
            curves = curves.expand(b, *curves.shape)
        if curves.ndim != 3 or curves.shape[0] != b or curves.shape[1] != 3 or curves.shape[2] < 2:
            raise ShapeMismatchError(f"curves must be [B={b}, 3, K>=2], got {tuple(curves.shape)}")
        if not torch.isfinite(curves).all():
            raise NonFiniteError("curves contain NaN or inf")
        curves = curves.to(frame).clamp(0.0, 1.0)
        if shading is not None:
            if not isinstance(shading, torch.Tensor):
                raise InvalidInputError(f"shading must be a tensor [B, 1|3, h, w] or None, got {type(shading).__name__}")
            if shading.ndim == 3:
                shading = shading.expand(b, *shading.shape)
            if shading.ndim != 4 or shading.shape[0] != b or shading.shape[1] not in (1, 3):
                raise ShapeMismatchError(f"shading must be [B={b}, 1 or 3, h, w], got {tuple(shading.shape)}")
            if not torch.isfinite(shading).all():
                raise NonFiniteError("shading contains NaN or inf")
            if float(shading.detach().min()) < 0:
                raise InvalidInputError(f"shading must be >= 0 (a multiplier), got min {float(shading.detach().min()):.4g}")
            shading = shading.to(frame)
        return apply_parametric(frame, curves, shading, self._blend_mask(mask))

    def _blend_mask(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        return mask if self.config.mask_mode == "blend" else None

    # -- full model ---------------------------------------------------------------------------------------
    def forward(
        self,
        frame: torch.Tensor,
        past_latents: Any = None,
        mask: torch.Tensor | None = None,
        depth: torch.Tensor | None = None,
        present: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Same signature as :meth:`Enhancer.forward` (``past_latents`` and ``depth`` are ignored: the model
        is per-frame and mask-only). frame [B, 3, H, W] in [0, 1], mask [B, 1, H, W] | None.

        ``present`` [B] of 0/1 (training): items whose mask is "absent" get a zero mask channel, flag 0 and
        a global application. Returns (out [B, 3, H, W] in [0, 1], {"curves": [B, 3, K], "shading": [B, Cs, h, w]}).
        """
        frame, mask = self._check(frame, mask)
        if present is not None:
            if mask is None:
                raise InvalidInputError("present needs a mask")
            present = present.to(frame.dtype).view(-1)
            if present.shape[0] != frame.shape[0]:
                raise ShapeMismatchError(f"present has {present.shape[0]} entries, expected {frame.shape[0]}")
        curves, shading = self._predict(frame, mask, present)
        blend = self._blend_mask(mask)
        if blend is not None and present is not None:
            blend = torch.where(present.view(-1, 1, 1, 1) > 0, blend, torch.ones_like(blend))  # absent -> global
        out = apply_parametric(frame, curves, shading, blend)
        return out, {"curves": curves, "shading": shading}

    @torch.no_grad()
    def harmonize(self, image: Any, mask: Any = None) -> Any:
        """Baseline interface of :mod:`simharmony.baselines`: image [H, W, 3] float in [0, 1] (numpy or torch),
        mask [H, W] / [H, W, 1] in [0, 1] or None -> the same type (numpy float32 or a tensor on the image's
        device). With a mask, pixels where ``mask == 0`` are returned bit-exactly (an all-zero mask returns
        the image); without one the parameters are applied to the whole frame."""
        from simharmony.baselines import _check_image, _check_mask

        img, device = _check_image(image)
        dev = next(self.parameters()).device
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None].to(dev)
        m = None
        if mask is not None:
            m = torch.from_numpy(_check_mask(mask, img.shape[:2]))[None, None].to(dev)
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                out, _ = self(x, mask=m)
        finally:
            self.train(was_training)
        res = np.ascontiguousarray(out[0].permute(1, 2, 0).float().cpu().numpy(), dtype=np.float32)
        if m is not None:  # exact copy where the mask is 0, whatever the float path did
            np.copyto(res, img, where=(m[0, 0].cpu().numpy() == 0)[..., None])
        return res if device is None else torch.from_numpy(res).to(device)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- files ----------------------------------------------------------------------------------------
    def save_pretrained(self, folder: PathLike) -> Path:
        """Write ``folder/model.safetensors`` then ``folder/config.yaml`` (each atomically)."""
        folder = Path(folder)
        save_tensors(folder / WEIGHTS_NAME, self.state_dict(), metadata={"format": FORMAT, "version": str(VERSION)})
        save_yaml(folder / CONFIG_NAME, {"format": FORMAT, "version": VERSION, "config": self.config.to_dict()})
        return folder

    @classmethod
    def from_pretrained(cls, folder: PathLike, map_location: str | torch.device = "cpu") -> ParametricHarmonizer:
        """Load a folder written by :meth:`save_pretrained`; MissingFileError / ConfigError / CorruptFileError
        name the file and what is wrong (missing, other format, truncated, mismatched or non-finite tensors)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise MissingFileError(f"parametric model folder not found: {folder}")
        meta = load_yaml(folder / CONFIG_NAME)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise ConfigError(f"{folder / CONFIG_NAME} is not a parametric model config (format {got!r}, expected {FORMAT!r})")
        if meta.get("version") != VERSION:
            raise ConfigError(f"{folder / CONFIG_NAME}: unsupported version {meta.get('version')!r}, expected {VERSION}")
        model = cls(ParametricConfig.from_dict(meta.get("config")))
        load_state_checked(model, folder / WEIGHTS_NAME)
        return model.to(map_location).eval()


def load_state_checked(model: nn.Module, path: Path) -> None:
    """Strictly load ``path`` (safetensors, metadata format = FORMAT) into ``model``; any mismatch raises
    CorruptFileError naming the tensors."""
    from simharmony.models.enhancer import load_checked_state

    _, meta = load_tensors(path)  # MissingFileError / CorruptFileError (truncated) come from here
    if meta.get("format") != FORMAT:
        raise CorruptFileError(f"{path} is not a parametric model weights file (metadata format={meta.get('format')!r}, expected {FORMAT!r})")
    load_checked_state(model, path, FORMAT)


# ----------------------------------------------------------------------------------------------------
# baseline entry point and artist views


def parametric_baseline(folder: PathLike, device: str | torch.device = "cpu"):
    """Load trained weights from ``folder`` and return ``harmonize(image, mask) -> image`` with the signature
    and conventions of :mod:`simharmony.baselines` (image [H, W, 3] in [0, 1], mask [H, W]; same type back)."""
    model = ParametricHarmonizer.from_pretrained(folder, map_location=device)

    def parametric(image: Any, mask: Any) -> Any:
        return model.harmonize(image, mask)

    parametric.model = model  # type: ignore[attr-defined]  # for reading / editing the parameters
    return parametric


_CURVE_COLOURS = ((230, 40, 40), (40, 170, 40), (50, 90, 230))  # RGB of the R, G, B curves


def curves_image(curves: Any, size: int = 256) -> np.ndarray:
    """Plot curves [3, K] (or [1, 3, K]) as an RGB uint8 image [size, size, 3]: grid, identity diagonal
    (grey), the R, G and B curves with their control points."""
    import cv2

    c = curves.detach().float().cpu().numpy() if isinstance(curves, torch.Tensor) else np.asarray(curves, np.float32)
    if c.ndim == 3 and c.shape[0] == 1:
        c = c[0]
    if c.ndim != 2 or c.shape[0] != 3 or c.shape[1] < 2:
        raise ShapeMismatchError(f"curves must be [3, K] (or [1, 3, K]), got {list(c.shape)}")
    if not np.isfinite(c).all():
        raise NonFiniteError("curves contain NaN or inf")
    if size < 32:
        raise InvalidInputError(f"size={size} must be >= 32")
    pad = max(4, size // 16)
    span = size - 1 - 2 * pad
    img = np.full((size, size, 3), 255, np.uint8)

    def pt(x: float, y: float) -> tuple[int, int]:
        return round(pad + x * span), round(size - 1 - pad - y * span)

    for g in np.linspace(0, 1, 5):
        cv2.line(img, pt(g, 0), pt(g, 1), (225, 225, 225), 1)
        cv2.line(img, pt(0, g), pt(1, g), (225, 225, 225), 1)
    cv2.line(img, pt(0, 0), pt(1, 1), (150, 150, 150), 1, cv2.LINE_AA)
    xs = np.linspace(0.0, 1.0, c.shape[1])
    for ch in range(3):
        pts = np.array([pt(x, float(np.clip(y, 0, 1))) for x, y in zip(xs, c[ch])], np.int32)
        cv2.polylines(img, [pts], False, _CURVE_COLOURS[ch], max(1, size // 200), cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, tuple(int(v) for v in p), max(1, size // 160), _CURVE_COLOURS[ch], -1, cv2.LINE_AA)
    return img


def save_curves_png(path: PathLike, curves: Any, size: int = 256) -> Path:
    """Write :func:`curves_image` to ``path`` (PNG, atomic)."""
    from simharmony.visualize import save_png

    save_png(path, curves_image(curves, size))
    return Path(path)


__all__ = [
    "ParametricConfig",
    "ParametricHarmonizer",
    "apply_curves",
    "apply_parametric",
    "curves_from_logits",
    "curves_image",
    "identity_curves",
    "parametric_baseline",
    "save_curves_png",
    "upsample_shading",
]
