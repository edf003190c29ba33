"""Training losses of the enhancer (diffusion-harmonizer section 3.3, eq. 4-6).

- :func:`l2_loss`: per-pixel mean squared error (weight 1); :func:`log_mse_loss`: mean over frames of
  10 log10(MSE + eps), minus the mean per-frame PSNR on a [0, 1] scale (eps caps it at -10 log10(eps) dB).
- :func:`ssim_loss`: 1 - SSIM, the benchmark's definition (:func:`simharmony.metrics.ssim`) kept
  differentiable; it charges small changes to local contrast and structure that the pixel loss hardly sees.
- :class:`PatchPerceptualLoss`: multi-scale patch perceptual loss. Square patches whose side k is drawn
  uniformly from ``patch_range`` (fractions of the image height; the paper's 128-512 px at 1024x576 is
  (0.222, 0.889): 32-128 px at 256x144) are cut at random places, *the same place in output and target*,
  and compared through a frozen :mod:`feature extractor <simharmony.training.features>` by the relative
  feature error per layer (:func:`feature_distance`), so every layer counts alike whatever its scale.
- :func:`warp_backward` / :func:`temporal_warp_loss`: the output at t-1 warped to t with the data's
  geometric backward flow (pixel p at frame t came from ``p + flow[p]`` in frame t-1; bilinear,
  ``grid_sample``, pixel centres at integer indices as in :func:`simharmony.metrics.warping_error`) and
  compared by squared error on ``flow_valid`` pixels whose sample point lies on the image (eq. 5).

Images are ``[N, 3, H, W]`` float in [0, 1] unless stated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from simharmony.errors import ConfigError, ShapeMismatchError
from simharmony.metrics import ssim_map
from simharmony.training.features import FeatureExtractor

# the paper's patch sides at 1024x576, as fractions of the height
PAPER_PATCH_RANGE = (128 / 576, 512 / 576)


def l2_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of (out - target)**2 over every element. Shapes must match."""
    if out.shape != target.shape:
        raise ShapeMismatchError(f"l2_loss: output {tuple(out.shape)} and target {tuple(target.shape)} differ")
    return (out - target).pow(2).mean()


def log_mse_loss(out: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mean over frames (all leading dims but the last three) of 10 log10(frame MSE + eps)."""
    if out.shape != target.shape:
        raise ShapeMismatchError(f"log_mse_loss: output {tuple(out.shape)} and target {tuple(target.shape)} differ")
    if out.ndim < 3:
        raise ShapeMismatchError(f"log_mse_loss: need [..., C, H, W] images, got {tuple(out.shape)}")
    mse = (out - target).pow(2).flatten(-3).mean(-1)
    return (10.0 / math.log(10.0)) * torch.log(mse + eps).mean()


def ssim_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean SSIM of out, target [..., 3, H, W] in [0, 1] (11-tap Gaussian window, 'valid' positions)."""
    if out.shape != target.shape:
        raise ShapeMismatchError(f"ssim_loss: output {tuple(out.shape)} and target {tuple(target.shape)} differ")
    if out.ndim < 3 or min(out.shape[-2:]) < 11:
        raise ShapeMismatchError(f"ssim_loss: need [..., C, H, W] images of at least 11 x 11, got {tuple(out.shape)}")
    flat = out.shape[-3:]
    return 1.0 - ssim_map(out.reshape(-1, *flat), target.reshape(-1, *flat), 1.0, backend="torch").mean()


@dataclass(frozen=True)
class PatchBoxes:
    """One square patch per image: side ``k`` (same for all, so patches stack) and top-left ``ys``/``xs`` [N]."""

    k: int
    ys: torch.Tensor
    xs: torch.Tensor


def patch_side_range(height: int, width: int, patch_range: tuple[float, float]) -> tuple[int, int]:
    """Patch sides in pixels for an H x W image: ``patch_range`` times H, clipped to [8, min(H, W)]."""
    lo_f, hi_f = patch_range
    limit = min(height, width)
    lo = min(max(round(lo_f * height), 8), limit)
    hi = min(max(round(hi_f * height), lo), limit)
    return lo, hi


def sample_patches(n: int, height: int, width: int, patch_range: tuple[float, float], generator: torch.Generator) -> PatchBoxes:
    """Draw a side k uniformly in :func:`patch_side_range` and a uniform top-left corner per image."""
    lo, hi = patch_side_range(height, width, patch_range)
    k = int(torch.randint(lo, hi + 1, (1,), generator=generator))
    ys = torch.randint(0, height - k + 1, (n,), generator=generator)
    xs = torch.randint(0, width - k + 1, (n,), generator=generator)
    return PatchBoxes(k, ys, xs)


def crop_patches(x: torch.Tensor, boxes: PatchBoxes) -> torch.Tensor:
    """x [N, C, H, W] -> patches [N, C, k, k] at ``boxes``."""
    if x.shape[0] != boxes.ys.shape[0]:
        raise ShapeMismatchError(f"crop_patches: {x.shape[0]} images but {boxes.ys.shape[0]} boxes")
    k = boxes.k
    return torch.stack([x[i, :, int(y) : int(y) + k, int(xx) : int(xx) + k] for i, (y, xx) in enumerate(zip(boxes.ys, boxes.xs))])


def feature_distance(fa: list[torch.Tensor], fb: list[torch.Tensor], weights: tuple[float, ...] | None = None,
                     distance: str = "l2", eps: float = 1e-8) -> torch.Tensor:
    """sum_l w_l * relative feature error of layer l: ``mean((fa_l - fb_l)**2) / mean(fb_l**2)`` ("l2") or
    ``mean|fa_l - fb_l| / mean|fb_l|`` ("l1"); ``fb`` is the reference (target) side.

    Normalising each layer by the reference's energy over the whole batch makes layers of any scale count
    alike (VGG's relu4_3 is ~100x relu1_2) and stays well conditioned where features vanish (flat patches
    give all-zero features in a bias-free net, where per-position LPIPS normalisation would blow up noise).
    ``weights`` default to 1/L each; 0 for identical features, ~1-2 for unrelated images.
    """
    if len(fa) != len(fb):
        raise ShapeMismatchError(f"feature_distance: {len(fa)} vs {len(fb)} layers")
    if distance not in ("l1", "l2"):
        raise ConfigError(f"distance must be 'l1' or 'l2', got {distance!r}")
    weights = weights if weights is not None else tuple(1.0 / len(fa) for _ in fa)
    if len(weights) != len(fa):
        raise ConfigError(f"{len(weights)} layer weights for {len(fa)} feature layers")
    total = fa[0].new_zeros((), dtype=torch.float32)
    for w, a, b in zip(weights, fa, fb):
        a, b = a.float(), b.float()
        if distance == "l2":
            total = total + w * (a - b).pow(2).mean() / (b.detach().pow(2).mean() + eps)
        else:
            total = total + w * (a - b).abs().mean() / (b.detach().abs().mean() + eps)
    return total


class PatchPerceptualLoss(nn.Module):
    """Multi-scale patch perceptual loss (eq. 4) around a frozen feature extractor.

    ``forward(out, target, generator)``: out/target [N, 3, H, W]; draws ``num_patches`` patch sizes (one
    side per draw, a random place per image), returns the mean feature distance. Gradients flow into
    ``out`` only (target features are computed without grad).
    """

    def __init__(self, features: FeatureExtractor, patch_range: tuple[float, float] = PAPER_PATCH_RANGE,
                 num_patches: int = 1, distance: str = "l2", layer_weights: tuple[float, ...] | None = None):
        super().__init__()
        lo, hi = patch_range
        if not (0 < lo <= hi <= 1):
            raise ConfigError(f"patch_range {patch_range} must satisfy 0 < lo <= hi <= 1 (fractions of the image height)")
        if distance not in ("l1", "l2"):
            raise ConfigError(f"perceptual distance must be 'l1' or 'l2', got {distance!r}")
        if num_patches < 1:
            raise ConfigError(f"num_patches must be >= 1, got {num_patches}")
        self.features = features.freeze()
        self.patch_range = (float(lo), float(hi))
        self.num_patches = int(num_patches)
        self.distance = distance
        self.layer_weights = layer_weights

    def forward(self, out: torch.Tensor, target: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if out.shape != target.shape or out.ndim != 4:
            raise ShapeMismatchError(f"perceptual loss: output {tuple(out.shape)} and target {tuple(target.shape)} must be equal [N, 3, H, W]")
        n, _, h, w = out.shape
        total = out.new_zeros((), dtype=torch.float32)
        for _ in range(self.num_patches):
            boxes = sample_patches(n, h, w, self.patch_range, generator)
            with torch.no_grad():
                ft = self.features(crop_patches(target, boxes))
            fo = self.features(crop_patches(out, boxes))
            total = total + feature_distance(fo, ft, self.layer_weights, self.distance)
        return total / self.num_patches


def warp_backward(prev: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample prev [N, C, H, W] at p + flow[p] (flow [N, H, W, 2] in pixels, (dx, dy)); bilinear.

    Returns (warped [N, C, H, W], inside [N, H, W] bool: the sample point lies on the image, within half a
    pixel of the border pixel centres). Pixel i has its centre at index i (align_corners=True).
    """
    n, _, h, w = prev.shape
    if flow.shape != (n, h, w, 2):
        raise ShapeMismatchError(f"warp_backward: flow {tuple(flow.shape)} does not match frames {tuple(prev.shape)}")
    ys, xs = torch.meshgrid(torch.arange(h, device=prev.device, dtype=flow.dtype),
                            torch.arange(w, device=prev.device, dtype=flow.dtype), indexing="ij")
    x = xs + flow[..., 0]
    y = ys + flow[..., 1]
    inside = (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)
    grid = torch.stack([2.0 * x / max(w - 1, 1) - 1.0, 2.0 * y / max(h - 1, 1) - 1.0], dim=-1).to(prev.dtype)
    warped = F.grid_sample(prev, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return warped, inside


def temporal_warp_loss(out_t: torch.Tensor, out_prev: torch.Tensor, flow: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Eq. 5: mean over valid pixels (and channels) of (out_t - warp(out_prev, flow))**2.

    out_t, out_prev [N, 3, H, W]; flow [N, H, W, 2] (frame t -> t-1); valid [N, H, W] bool/float. Pixels
    whose sample point leaves the image are dropped too. 0 when no pixel is valid.
    """
    warped, inside = warp_backward(out_prev, flow)
    m = valid.to(out_t.dtype) * inside.to(out_t.dtype)  # [N, H, W]
    err = (out_t - warped).pow(2).mean(dim=1)  # [N, H, W]
    return (err * m).sum() / m.sum().clamp_min(1.0)


__all__ = [
    "PAPER_PATCH_RANGE",
    "PatchBoxes",
    "PatchPerceptualLoss",
    "crop_patches",
    "feature_distance",
    "l2_loss",
    "patch_side_range",
    "sample_patches",
    "temporal_warp_loss",
    "warp_backward",
]
