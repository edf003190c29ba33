"""3D Gaussian Splatting reconstruction from posed images: ``reconstruct(images, config)``.

The training loop follows 3DGS (Kerbl et al. 2023) and gsplat's ``simple_trainer``:

- parameters in raw form, one Adam optimizer per group (gsplat's convention, so
  ``gsplat.DefaultStrategy`` can edit them on CUDA): ``means`` [N, 3], ``scales`` [N, 3] (log),
  ``quats`` [N, 4], ``opacities`` [N] (logit), ``sh0`` [N, 1, 3], ``shN`` [N, K-1, 3];
- loss ``(1 - lambda) * L1 + lambda * (1 - SSIM)`` with lambda = 0.2, weighted by the optional masks;
- densification from screen-space mean-gradient norms accumulated over steps (clone small Gaussians,
  split large ones), pruning of transparent and huge ones, periodic opacity reset, a hard cap on N.
  On CUDA this is gsplat's ``DefaultStrategy``; on CPU (where gsplat's CUDA ops do not exist) the
  same schedule is implemented here;
- atomic safetensors checkpoints (parameters, optimizer moments, densification statistics, step)
  and exact resume: all randomness is drawn from generators seeded by (seed, step), so a resumed
  run repeats the steps an uninterrupted one would have taken.

After training, Gaussians are labelled with instance ids by :func:`label_instances` when the images
carry per-pixel instance ids.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from scene_tools.cameras import Trajectory
from scene_tools.gaussians import GaussianScene
from scene_tools.views import PosedImages
from simharmony.errors import (
    ConfigError,
    CorruptFileError,
    FileFormatError,
    InvalidInputError,
    NonFiniteError,
    ShapeMismatchError,
)
from simharmony.utils.config import Config, require
from simharmony.utils.io import PathLike, load_tensors, save_tensors

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "simharmony.reconstruction_checkpoint"
_CKPT_RE = re.compile(r"^ckpt_(\d+)\.safetensors$")
_PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")


def rasterize(*args, **kwargs):
    """Indirection to :func:`scene_tools.rasterize.rasterize` (imported lazily; tests may patch this name)."""
    from scene_tools.rasterize import rasterize as _rasterize

    return _rasterize(*args, **kwargs)


# ---------------------------------------------------------------------------------------------- config
@dataclass
class ReconstructionConfig(Config):
    """Everything that controls :func:`reconstruct`. Defaults are tuned for a 256x144 street on 2 CPU cores.

    Step-based schedules are absolute step numbers (not fractions of ``iterations``), so a run can be
    resumed with more iterations and repeat exactly what a longer uninterrupted run would have done,
    provided ``lr_decay_steps`` is set (otherwise the means learning rate decays over ``iterations``) and
    the shorter run did not end on a refinement step (nothing is densified or reset after the last step).
    """

    iterations: int = 2000
    batch_size: int = 1  # views rendered per step
    seed: int = 0
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...

    # colour model: SH degree raised by one every ``sh_degree_interval`` steps up to ``sh_degree``
    sh_degree: int = 1
    sh_degree_interval: int = 1000

    # learning rates (Adam); means are in units of the scene extent and decay exponentially
    means_lr: float = 1.6e-4
    means_lr_final: float = 1.6e-6
    lr_decay_steps: int | None = None  # steps over which means_lr decays to means_lr_final; None = iterations
    scales_lr: float = 5e-3
    quats_lr: float = 1e-3
    opacities_lr: float = 5e-2
    sh0_lr: float = 2.5e-3
    shN_lr: float = 2.5e-3 / 20

    # initialisation
    init: Literal["auto", "points", "depth", "random"] = "auto"  # auto: points, else depth, else random
    init_num_points: int = 30_000  # for "depth" and "random"; "points" uses all given points (capped)
    init_opacity: float = 0.1
    init_scale_factor: float = 1.0  # multiplies the nearest-neighbour initial scale
    sky_init_points: int = 2_000  # "depth" init: Gaussians placed along rays of sky pixels (depth inf)
    sky_depth: float | None = None  # distance of those Gaussians; None = 10 x scene extent
    # "points" init: this many more Gaussians at sky_depth along random pixel rays of the training views, a
    # backdrop for the sky, where structure from motion has no points
    backdrop_init_points: int = 0
    random_init_depth: tuple[float, float] | None = None  # "random" init depth range; None = (0.1, 2) x extent

    # densification / pruning (3DGS schedule; gsplat.DefaultStrategy on CUDA)
    densify_start: int = 200
    densify_stop: int = 1_500
    densify_every: int = 100
    grow_grad2d: float = 2e-4  # threshold on the mean screen-space gradient norm (gsplat's normalisation)
    grow_scale3d: float = 0.01  # Gaussians at most this x extent are cloned, larger ones split
    split_scale_divisor: float = 1.6
    prune_opacity: float = 0.005
    prune_scale3d: float = 0.1  # prune Gaussians larger than this x max(extent, distance to scene centre)
    opacity_reset_every: int = 1_000
    max_gaussians: int = 50_000
    # "auto": gsplat.DefaultStrategy on CUDA, this module's implementation of the same schedule on CPU
    strategy: Literal["auto", "gsplat", "simple"] = "auto"

    # background and loss
    background: Literal["fixed", "random"] = "fixed"
    background_color: tuple[float, float, float] = (0.0, 0.0, 0.0)
    ssim_lambda: float = 0.2
    alpha_loss_weight: float = 0.0  # > 0: fit rendered alpha to the masks (objects from masked views)

    # evaluation, logging, checkpoints
    heldout_every: int = 8  # every k-th view is held out (0 = none)
    eval_every: int = 500
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    near_plane: float = 0.01
    far_plane: float = 1e10
    # torch intra-op threads for the loss/optimizer work on CPU (0 = leave torch's setting). On small
    # shared machines torch's OpenMP pool stalls when a core is busy elsewhere, and these small ops gain
    # little from threads; the rasterizer's compiled kernels keep their own thread count.
    cpu_torch_threads: int = 1

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            require(cond, "ReconstructionConfig", msg)

        for name in ("iterations", "batch_size", "sh_degree_interval", "init_num_points", "densify_every",
                     "opacity_reset_every", "max_gaussians", "eval_every", "log_every", "checkpoint_every",
                     "keep_checkpoints"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"{name} must be an integer >= 1, got {v!r}")
        for name in ("seed", "densify_start", "densify_stop", "sky_init_points", "backdrop_init_points", "sh_degree",
                     "heldout_every",
                     "cpu_torch_threads"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 0, f"{name} must be an integer >= 0, got {v!r}")
        need(self.sh_degree <= 4, f"sh_degree must be in 0..4, got {self.sh_degree}")
        need(self.heldout_every != 1, "heldout_every=1 would hold out every view; use 0 (none) or >= 2")
        need(self.lr_decay_steps is None or self.lr_decay_steps >= 1, f"lr_decay_steps must be >= 1 or null, got {self.lr_decay_steps}")
        for name in ("means_lr", "means_lr_final", "scales_lr", "quats_lr", "opacities_lr", "sh0_lr", "shN_lr",
                     "grow_grad2d", "grow_scale3d", "prune_scale3d", "alpha_loss_weight"):
            v = getattr(self, name)
            need(math.isfinite(v) and v >= 0, f"{name} must be a finite number >= 0, got {v!r}")
        need(self.means_lr == 0 or self.means_lr_final > 0, "means_lr_final must be > 0 when means_lr > 0")
        need(0 < self.init_opacity < 1, f"init_opacity must be in (0, 1), got {self.init_opacity}")
        need(0 <= self.prune_opacity < 1, f"prune_opacity must be in [0, 1), got {self.prune_opacity}")
        need(math.isfinite(self.init_scale_factor) and self.init_scale_factor > 0, "init_scale_factor must be > 0")
        need(self.split_scale_divisor > 1, f"split_scale_divisor must be > 1, got {self.split_scale_divisor}")
        need(0 <= self.ssim_lambda <= 1, f"ssim_lambda must be in [0, 1], got {self.ssim_lambda}")
        need(self.init in ("auto", "points", "depth", "random"), f"init must be auto/points/depth/random, got {self.init!r}")
        need(self.strategy in ("auto", "gsplat", "simple"), f"strategy must be auto/gsplat/simple, got {self.strategy!r}")
        need(self.background in ("fixed", "random"), f"background must be 'fixed' or 'random', got {self.background!r}")
        need(len(self.background_color) == 3 and all(0 <= c <= 1 for c in self.background_color),
             f"background_color must be 3 values in [0, 1], got {self.background_color!r}")
        need(self.sky_depth is None or (math.isfinite(self.sky_depth) and self.sky_depth > 0), "sky_depth must be > 0 or null")
        if self.random_init_depth is not None:
            lo, hi = self.random_init_depth
            need(0 < lo < hi and math.isfinite(hi), f"random_init_depth must be 0 < near < far, got {self.random_init_depth}")
        need(0 < self.near_plane < self.far_plane, f"need 0 < near_plane < far_plane, got {self.near_plane}, {self.far_plane}")
        need(bool(re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device)), f"device must be auto, cpu or cuda[:i], got {self.device!r}")


@dataclass
class ReconstructionResult:
    """What :func:`reconstruct` returns.

    - ``scene``: the trained Gaussians (instance ids labelled when the images carry them)
    - ``train_psnr`` / ``heldout_psnr``: mean per-view PSNR (dB) on valid pixels; heldout is None without held-out views
    - ``history``: list of dicts (step, loss, psnr, num_gaussians, seconds, and heldout_psnr at eval steps)
    - ``heldout_indices``: indices (into the input views) that were held out
    - ``seconds``: wall time of this call
    """

    scene: GaussianScene
    train_psnr: float
    heldout_psnr: float | None
    history: list[dict[str, Any]]
    heldout_indices: list[int]
    seconds: float
    resumed_from_step: int = 0
    train_indices: list[int] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- losses
def _gauss_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM of images x, y [B, C, H, W] in [0, 1] -> [B, C, H-window+1, W-window+1] ('valid' windows)."""
    c = x.shape[1]
    g = _gauss_window(window, sigma, x.device, x.dtype)
    kx = g.view(1, 1, 1, window).expand(c, 1, 1, window)
    ky = g.view(1, 1, window, 1).expand(c, 1, window, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, kx, groups=c), ky, groups=c)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))


def _photometric_loss(render: torch.Tensor, gt: torch.Tensor, weight: torch.Tensor | None, lam: float) -> torch.Tensor:
    """render, gt [C, H, W, 3]; weight [C, H, W] or None -> scalar (1-lam) L1 + lam (1-SSIM)."""
    l1 = (render - gt).abs().mean(-1)  # [C, H, W]
    if weight is None:
        l1 = l1.mean()
    else:
        l1 = (l1 * weight).sum() / weight.sum().clamp_min(1e-8)
    if lam == 0:
        return l1
    r = render.permute(0, 3, 1, 2)
    g = gt.permute(0, 3, 1, 2)
    win = 11 if min(r.shape[-2:]) >= 11 else (min(r.shape[-2:]) // 2) * 2 + 1
    s = ssim_map(r, g, window=win).mean(1)  # [C, H', W']
    if weight is None:
        s = s.mean()
    else:
        p = win // 2
        w = weight[:, p : weight.shape[1] - p, p : weight.shape[2] - p]
        s = (s * w).sum() / w.sum().clamp_min(1e-8) if w.sum() > 0 else s.mean()
    return (1 - lam) * l1 + lam * (1 - s)


def psnr_masked(render: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR (dB) of render vs gt [H, W, 3] in [0, 1] over pixels where mask [H, W] > 0.5 (all if None)."""
    se = (render.clamp(0, 1) - gt).pow(2).mean(-1)
    if mask is not None:
        m = mask > 0.5
        if not m.any():
            return float("nan")
        se = se[m]
    mse = float(se.mean())
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


# ---------------------------------------------------------------------------------------------- inputs
@dataclass
class _Views:
    """All views as tensors on the training device (per-view intrinsics so captures can be merged)."""

    images: torch.Tensor  # [V, H, W, 3]
    viewmats: torch.Tensor  # [V, 4, 4] world-to-camera
    Ks: torch.Tensor  # [V, 3, 3]
    c2w: torch.Tensor  # [V, 4, 4]
    masks: torch.Tensor | None  # [V, H, W]
    width: int
    height: int


def _merge_inputs(images: PosedImages | Sequence[PosedImages]) -> tuple[PosedImages, np.ndarray]:
    """Validate the input (one PosedImages or a list of them with equal image sizes).

    Returns the merged PosedImages (first capture's intrinsics) and per-view K [V, 3, 3].
    """
    parts = [images] if isinstance(images, PosedImages) else list(images) if isinstance(images, (list, tuple)) else None
    if parts is None or not all(isinstance(p, PosedImages) for p in parts):
        raise InvalidInputError(f"images must be a PosedImages or a list of them, got {type(images).__name__}")
    if not parts or sum(len(p) for p in parts) == 0:
        raise InvalidInputError("reconstruct needs at least one posed image; got an empty set")
    sizes = {(p.images.shape[1], p.images.shape[2]) for p in parts}
    if len(sizes) > 1:
        raise ShapeMismatchError(f"all views must have the same size; got (H, W) sizes {sorted(sizes)}")
    for j, p in enumerate(parts):  # PosedImages checks at construction; arrays may have been replaced since
        imgs = np.asarray(p.images)
        if imgs.ndim != 4 or imgs.shape[-1] != 3 or imgs.shape[0] != len(p.trajectory):
            raise ShapeMismatchError(f"capture {j}: images must be [N, H, W, 3] with N = number of poses, got {list(imgs.shape)}")
        intr = p.trajectory.intrinsics
        if (intr.width, intr.height) != (imgs.shape[2], imgs.shape[1]):
            raise ShapeMismatchError(f"capture {j}: images are {imgs.shape[2]}x{imgs.shape[1]} but intrinsics say {intr.width}x{intr.height}")
        if not np.all(np.isfinite(imgs)):
            bad = np.where(~np.isfinite(imgs).reshape(len(imgs), -1).all(1))[0]
            raise NonFiniteError(f"capture {j}: images {bad.tolist()} contain NaN or inf")
        for name in ("masks", "depths", "instance_ids"):
            v = getattr(p, name)
            if v is not None and np.asarray(v).shape != imgs.shape[:3]:
                raise ShapeMismatchError(f"capture {j}: {name} must be {list(imgs.shape[:3])}, got {list(np.asarray(v).shape)}")
        if p.masks is not None and not np.all(np.isfinite(p.masks)):
            raise NonFiniteError(f"capture {j}: masks contain NaN or inf")
    Ks = np.concatenate([p.trajectory.Ks for p in parts])
    if len(parts) == 1:
        return parts[0], Ks

    def cat(name: str, fill) -> np.ndarray | None:
        if all(getattr(p, name) is None for p in parts):
            return None
        return np.concatenate([getattr(p, name) if getattr(p, name) is not None else fill(p) for p in parts])

    h, w = next(iter(sizes))
    traj = Trajectory(np.concatenate([p.trajectory.poses for p in parts]), parts[0].trajectory.intrinsics,
                      np.concatenate([p.trajectory.times for p in parts]),
                      tuple(p.trajectory.intrinsics_at(i) for p in parts for i in range(len(p))))
    pts = [p.points for p in parts if p.points is not None]
    cols = [p.point_colors if p.point_colors is not None else np.full_like(p.points, 0.5) for p in parts if p.points is not None]
    merged = PosedImages(
        np.concatenate([p.images for p in parts]), traj,
        masks=cat("masks", lambda p: np.ones((len(p), h, w), np.float32)),
        depths=cat("depths", lambda p: np.full((len(p), h, w), np.nan, np.float32)),
        instance_ids=cat("instance_ids", lambda p: np.zeros((len(p), h, w), np.int32)),
        points=np.concatenate(pts) if pts else None, point_colors=np.concatenate(cols) if pts else None,
    )
    return merged, Ks


def split_views(n: int, heldout_every: int) -> tuple[list[int], list[int]]:
    """(train, heldout) indices: every ``heldout_every``-th view (starting at the middle of the first block) is held out."""
    if heldout_every <= 0 or n < 2:
        return list(range(n)), []
    held = [i for i in range(n) if i % heldout_every == heldout_every // 2]
    train = [i for i in range(n) if i not in set(held)]
    return train, held


def scene_extent(c2w: np.ndarray) -> tuple[float, np.ndarray]:
    """(radius, centre) of the camera centres, as 3DGS's ``cameras_extent`` (1.1 x max distance to their mean)."""
    centres = c2w[:, :3, 3]
    centre = centres.mean(0)
    r = 1.1 * float(np.linalg.norm(centres - centre, axis=1).max()) if len(centres) > 1 else 0.0
    return (r if r > 1e-6 else 1.0), centre


# ---------------------------------------------------------------------------------------------- init
def _knn_scale(points: np.ndarray, k: int = 3) -> np.ndarray:
    """[P, 3] -> [P] root mean squared distance to the k nearest other points (3DGS initial scale)."""
    if len(points) < 2:
        return np.full(len(points), 0.01, np.float32)
    from scipy.spatial import cKDTree

    k = min(k, len(points) - 1)
    d, _ = cKDTree(points).query(points, k=k + 1)
    d = d[:, 1:]
    return np.sqrt((d**2).mean(1)).astype(np.float32)


def _pixel_rays(K: np.ndarray, c2w: np.ndarray, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres (u, v) -> (origin [3], camera-space directions with z = 1 rotated to world [P, 3])."""
    x = (u + 0.5 - K[0, 2]) / K[0, 0]
    y = (v + 0.5 - K[1, 2]) / K[1, 1]
    d_cam = np.stack([x, y, np.ones_like(x)], -1)
    return c2w[:3, 3], d_cam @ c2w[:3, :3].T


def initial_points(
    images: PosedImages, Ks: np.ndarray, train: list[int], cfg: ReconstructionConfig, extent: float,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Initial Gaussian centres [P, 3] and colours [P, 3] for the chosen (or automatic) init mode, and the mode used."""
    rng = np.random.default_rng(cfg.seed)
    mode = cfg.init
    if mode == "auto":
        mode = "points" if images.points is not None and len(images.points) > 0 else "depth" if images.depths is not None else "random"
    n, h, w = len(train), images.height, images.width
    if mode == "points":
        if images.points is None or len(images.points) == 0:
            raise InvalidInputError("init='points' needs PosedImages.points (e.g. a COLMAP sparse model); none given")
        pts = images.points.astype(np.float32)
        cols = images.point_colors if images.point_colors is not None else np.full_like(pts, 0.5)
        ok = np.isfinite(pts).all(1) & np.isfinite(cols).all(1)
        pts, cols = pts[ok], np.clip(cols[ok], 0, 1)
        if len(pts) == 0:
            raise InvalidInputError("init='points': all sparse points are non-finite")
        if cfg.backdrop_init_points:
            far = cfg.sky_depth if cfg.sky_depth is not None else 10.0 * extent
            per = max(1, cfg.backdrop_init_points // n)
            bp, bc = [], []
            for i in train:
                u, v = rng.uniform(0, w, per) - 0.5, rng.uniform(0, h, per) - 0.5
                o, dirs = _pixel_rays(Ks[i], images.trajectory.poses[i], u, v)
                bp.append(o + far * dirs / np.linalg.norm(dirs, axis=1, keepdims=True))
                bc.append(images.images[i][np.clip(np.round(v).astype(int), 0, h - 1),
                                           np.clip(np.round(u).astype(int), 0, w - 1)])
            pts, cols = np.concatenate([pts, *bp]), np.concatenate([cols, *bc])
        if len(pts) > cfg.max_gaussians:
            keep = rng.choice(len(pts), cfg.max_gaussians, replace=False)
            pts, cols = pts[keep], cols[keep]
        return pts, cols.astype(np.float32), mode
    per_view = max(1, cfg.init_num_points // n)
    pts, cols = [], []
    if mode == "depth":
        if images.depths is None:
            raise InvalidInputError("init='depth' needs PosedImages.depths; none given")
        sky_per_view = cfg.sky_init_points // n if cfg.sky_init_points else 0
        sky_depth = cfg.sky_depth if cfg.sky_depth is not None else 10.0 * extent
        for i in train:
            d = images.depths[i]
            valid = np.isfinite(d) & (d > 0)
            sky = np.isposinf(d)
            if images.masks is not None:
                valid &= images.masks[i] > 0.5
                sky &= images.masks[i] > 0.5
            for sel, count, depth_of in ((valid, per_view, None), (sky, sky_per_view, sky_depth)):
                idx = np.flatnonzero(sel)
                if count == 0 or len(idx) == 0:
                    continue
                idx = rng.choice(idx, min(count, len(idx)), replace=False)
                v, u = np.divmod(idx, w)
                z = d.reshape(-1)[idx] if depth_of is None else np.full(len(idx), depth_of)
                o, dirs = _pixel_rays(Ks[i], images.trajectory.poses[i], u.astype(np.float64), v.astype(np.float64))
                pts.append(o + dirs * z[:, None])
                cols.append(images.images[i].reshape(-1, 3)[idx])
        if not pts:
            raise InvalidInputError("init='depth': no training view has a finite depth pixel (all sky, masked or NaN)")
    else:  # random: points inside the camera frustums, coloured by the pixel they were cast through
        lo, hi = cfg.random_init_depth if cfg.random_init_depth is not None else (0.1 * extent, 2.0 * extent)
        for i in train:
            u = rng.uniform(0, w, per_view) - 0.5
            v = rng.uniform(0, h, per_view) - 0.5
            z = rng.uniform(lo, hi, per_view)
            o, dirs = _pixel_rays(Ks[i], images.trajectory.poses[i], u, v)
            pts.append(o + dirs * z[:, None])
            ui = np.clip(np.round(u).astype(int), 0, w - 1)
            vi = np.clip(np.round(v).astype(int), 0, h - 1)
            cols.append(images.images[i][vi, ui])
    return np.concatenate(pts).astype(np.float32), np.concatenate(cols).astype(np.float32), mode


def _params_from_scene(scene: GaussianScene, sh_degree: int, device) -> dict[str, torch.nn.Parameter]:
    k = (sh_degree + 1) ** 2
    sh = scene.sh.float()
    if sh.shape[1] < k:
        sh = torch.cat([sh, sh.new_zeros(sh.shape[0], k - sh.shape[1], 3)], 1)
    sh = sh[:, :k]
    q = scene.quats.float()
    tensors = {
        "means": scene.means.float(),
        "scales": scene.log_scales.float(),
        "quats": q / q.norm(dim=-1, keepdim=True),
        "opacities": scene.logit_opacities.float(),
        "sh0": sh[:, :1],
    }
    if k > 1:
        tensors["shN"] = sh[:, 1:]
    return {n: torch.nn.Parameter(t.detach().clone().contiguous().to(device)) for n, t in tensors.items()}


def params_to_scene(params: dict[str, torch.Tensor], instance_ids: torch.Tensor | None = None, metadata: dict | None = None) -> GaussianScene:
    """Trainer parameters (gsplat names) -> :class:`GaussianScene` on CPU."""
    sh = params["sh0"].detach()
    if "shN" in params:
        sh = torch.cat([sh, params["shN"].detach()], 1)
    return GaussianScene(
        params["means"].detach().cpu().clone(), params["quats"].detach().cpu().clone(),
        params["scales"].detach().cpu().clone(), params["opacities"].detach().cpu().clone(), sh.cpu().clone(),
        instance_ids, metadata=dict(metadata or {}),
    )


# ---------------------------------------------------------------------------------------------- param surgery (CPU strategy)
def _lrs(cfg: ReconstructionConfig, extent: float) -> dict[str, float]:
    return {"means": cfg.means_lr * extent, "scales": cfg.scales_lr, "quats": cfg.quats_lr,
            "opacities": cfg.opacities_lr, "sh0": cfg.sh0_lr, "shN": cfg.shN_lr}


def _make_optimizers(params: dict[str, torch.nn.Parameter], lrs: dict[str, float]) -> dict[str, torch.optim.Optimizer]:
    # eps as in gsplat's trainer: tiny, so small gradients of rarely-seen Gaussians still move them
    return {n: torch.optim.Adam([p], lr=lrs[n], eps=1e-15) for n, p in params.items()}


@torch.no_grad()
def _edit_gaussians(params, optimizers, state: dict, keep: torch.Tensor, new: dict[str, torch.Tensor] | None, new_state: dict | None) -> None:
    """Replace every parameter by ``p[keep]`` followed by ``new[name]`` (in place in the dicts).

    Adam moments of kept Gaussians are kept, those of new ones start at zero; per-Gaussian tensors in
    ``state`` (densification statistics) are edited the same way, using ``new_state`` for new rows.
    """
    for name in list(params):
        p = params[name]
        parts = [p[keep]] + ([new[name]] if new is not None else [])
        q = torch.nn.Parameter(torch.cat(parts).contiguous())
        params[name] = q
        opt = optimizers[name]
        old = opt.state.pop(p, {})
        for key, v in list(old.items()):
            if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == p.shape[0]:
                add = [torch.zeros_like(new[name])] if new is not None else []
                old[key] = torch.cat([v[keep]] + add)
        opt.param_groups[0]["params"] = [q]
        if old:
            opt.state[q] = old
    for key, v in list(state.items()):
        if isinstance(v, torch.Tensor) and v.ndim > 0:
            add = [new_state[key]] if new_state is not None else []
            state[key] = torch.cat([v[keep]] + add)


@torch.no_grad()
def densify_and_prune(
    params: dict[str, torch.nn.Parameter],
    optimizers: dict[str, torch.optim.Optimizer],
    state: dict[str, torch.Tensor],
    cfg: ReconstructionConfig,
    extent: float,
    centre: torch.Tensor,
    generator: torch.Generator | None = None,
    prune_huge: bool = True,
) -> dict[str, int]:
    """One 3DGS refinement step on CPU: clone / split / prune, then reset the gradient statistics.

    ``state`` holds ``grad2d`` [N] (sum of screen-space gradient norms) and ``count`` [N] (times visible).
    Gaussians whose mean gradient exceeds ``cfg.grow_grad2d`` are cloned when their largest scale is at
    most ``grow_scale3d * extent`` and split into two samples of themselves (scales / 1.6) otherwise; growth
    stops at ``cfg.max_gaussians`` (highest gradients first). Then Gaussians with opacity below
    ``prune_opacity`` and, if ``prune_huge``, those larger than ``prune_scale3d * max(extent, distance to
    centre)`` are removed. Returns counts {"cloned", "split", "pruned"}.
    """
    n = params["means"].shape[0]
    device = params["means"].device
    grads = state["grad2d"] / state["count"].clamp_min(1)
    scales = params["scales"].exp()
    max_scale = scales.max(-1).values
    high = grads > cfg.grow_grad2d
    small = max_scale <= cfg.grow_scale3d * extent
    cand = torch.nonzero(high).squeeze(1)
    budget = max(0, cfg.max_gaussians - n)
    if len(cand) > budget:  # the cap: keep the candidates that need it most
        order = torch.argsort(grads[cand], descending=True, stable=True)
        cand = cand[order[:budget]]
    grow = torch.zeros(n, dtype=torch.bool, device=device)
    grow[cand] = True
    clone = grow & small
    split = grow & ~small
    n_clone, n_split = int(clone.sum()), int(split.sum())

    if n_clone or n_split:
        from scene_tools.transforms import quat_to_matrix

        new: dict[str, torch.Tensor] = {}
        ci, si = torch.nonzero(clone).squeeze(1), torch.nonzero(split).squeeze(1)
        # split: the original is replaced by two samples drawn from it, both smaller
        R = quat_to_matrix(params["quats"][si])
        s = scales[si]
        noise = torch.randn((2, len(si), 3), generator=generator, device=device)
        offsets = torch.einsum("nij,nj,bnj->bni", R, s, noise)  # [2, S, 3]
        for name, p in params.items():
            if name == "means":
                sp = (p[si][None] + offsets).reshape(-1, 3)
            elif name == "scales":
                sp = (s / cfg.split_scale_divisor).log().repeat(2, 1)
            else:
                sp = p[si].repeat((2,) + (1,) * (p.ndim - 1))
            new[name] = torch.cat([p[ci], sp])
        keep = ~split
        new_state = {k: torch.zeros((n_clone + 2 * n_split,) + v.shape[1:], dtype=v.dtype, device=device)
                     for k, v in state.items() if isinstance(v, torch.Tensor) and v.ndim > 0}
        _edit_gaussians(params, optimizers, state, keep, new, new_state)

    op = torch.sigmoid(params["opacities"])
    prune = op < cfg.prune_opacity
    if prune_huge:
        dist = (params["means"] - centre).norm(dim=-1).clamp_min(extent)
        prune |= params["scales"].exp().max(-1).values > cfg.prune_scale3d * dist
    if bool(prune.all()):  # never remove every Gaussian; keep the most opaque one
        prune[torch.argmax(op)] = False
    n_prune = int(prune.sum())
    if n_prune:
        _edit_gaussians(params, optimizers, state, ~prune, None, None)
    state["grad2d"].zero_()
    state["count"].zero_()
    return {"cloned": n_clone, "split": n_split, "pruned": n_prune}


@torch.no_grad()
def reset_opacities(params, optimizers, value: float) -> None:
    """Clamp opacities to at most ``value`` and clear their Adam moments (3DGS opacity reset)."""
    p = params["opacities"]
    p.data.clamp_(max=math.log(value / (1 - value)))
    st = optimizers["opacities"].state.get(p, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in st:
            st[key].zero_()


def _cap_count(params, optimizers, state, cap: int) -> int:
    """Remove the least opaque Gaussians beyond ``cap`` (used after gsplat's strategy, which has no cap)."""
    n = params["means"].shape[0]
    if n <= cap:
        return 0
    order = torch.argsort(params["opacities"].detach(), descending=True)
    drop = torch.ones(n, dtype=torch.bool, device=params["means"].device)
    drop[order[:cap]] = False
    from gsplat.strategy.ops import remove

    remove(params=params, optimizers=optimizers, state=state, mask=drop)
    return n - cap


# ---------------------------------------------------------------------------------------------- checkpoints
def _list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        m = _CKPT_RE.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def _save_checkpoint(folder: Path, step: int, params, optimizers, state, meta: dict, keep: int) -> Path:
    tensors: dict[str, torch.Tensor] = {}
    for name, p in params.items():
        tensors[f"param.{name}"] = p.detach()
        for key, v in optimizers[name].state.get(p, {}).items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{name}.{key}"] = v.reshape(v.shape) if v.ndim else v.reshape(1)
    for key, v in state.items():
        if isinstance(v, torch.Tensor):
            tensors[f"state.{key}"] = v
    path = folder / f"ckpt_{step:07d}.safetensors"
    header = {"format": CHECKPOINT_FORMAT, "step": str(step), "meta": json.dumps(meta)}
    save_tensors(path, tensors, header)
    for _, old in _list_checkpoints(folder)[:-keep]:
        try:
            old.unlink()
        except OSError:
            pass
    return path


def _load_checkpoint(path: Path, device) -> tuple[int, dict, dict, dict, dict]:
    """-> (step, params {name: tensor}, optim {name: {key: tensor}}, state {key: tensor}, meta)."""
    tensors, header = load_tensors(path)
    if header.get("format") != CHECKPOINT_FORMAT:
        raise CorruptFileError(f"{path} is not a reconstruction checkpoint (format={header.get('format')!r})")
    try:
        step = int(header["step"])
        meta = json.loads(header.get("meta", "{}"))
    except (KeyError, ValueError) as e:
        raise CorruptFileError(f"{path} has an unreadable header: {e}") from e
    params, optim, state = {}, {}, {}
    for k, v in tensors.items():
        kind, _, rest = k.partition(".")
        if kind == "param":
            params[rest] = v.to(device)
        elif kind == "optim":
            name, _, key = rest.partition(".")
            optim.setdefault(name, {})[key] = v.reshape(()) if key == "step" else v.to(device)
        elif kind == "state":
            state[rest] = v.to(device)
    if "means" not in params:
        raise CorruptFileError(f"{path} has no parameters")
    return step, params, optim, state, meta


# ---------------------------------------------------------------------------------------------- rendering helpers
def _render(params, views: _Views, idx: list[int] | torch.Tensor, sh_degree: int, bg: torch.Tensor, cfg, mode: str = "RGB"):
    colors = params["sh0"] if "shN" not in params else torch.cat([params["sh0"], params["shN"]], 1)
    return rasterize(
        params["means"], params["quats"], params["scales"].exp(), torch.sigmoid(params["opacities"]), colors,
        views.viewmats[idx], views.Ks[idx], views.width, views.height,
        near_plane=cfg.near_plane, far_plane=cfg.far_plane, sh_degree=sh_degree, backgrounds=bg,
        render_mode=mode, backend="auto",
    )


@torch.no_grad()
def _evaluate(params, views: _Views, idx: list[int], sh_degree: int, cfg, bg_color: torch.Tensor) -> float | None:
    """Mean per-view PSNR over views ``idx`` on their valid (mask > 0.5) pixels; None if no view has any."""
    vals = []
    for i in idx:
        img, _, _ = _render(params, views, [i], sh_degree, bg_color[None], cfg)
        v = psnr_masked(img[0], views.images[i], None if views.masks is None else views.masks[i])
        if not math.isnan(v):
            vals.append(v)
    return float(np.mean(vals)) if vals else None


def _radii_visible(radii: torch.Tensor) -> torch.Tensor:
    """gsplat 1.4 gives radii [C, N], 1.5 gives [C, N, 2]: -> visible [C, N] bool."""
    return (radii > 0).all(-1) if radii.ndim == 3 else radii > 0


# ---------------------------------------------------------------------------------------------- instance labels
@torch.no_grad()
def label_instances(
    scene: GaussianScene,
    images: PosedImages,
    *,
    depth_rel_tol: float = 0.1,
    depth_abs_tol: float = 0.05,
    min_alpha: float = 0.5,
    near_plane: float = 0.01,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Instance id per Gaussian [N] int32 by majority vote over the views in ``images``.

    Each Gaussian's centre is projected into every view; where it lands inside the image, in front of
    the camera, on a pixel whose rendered alpha is at least ``min_alpha``, and not behind the rendered
    expected depth (z <= ED * (1 + depth_rel_tol) + depth_abs_tol, i.e. not occluded), it votes for the
    view's instance id at that pixel. Gaussians that get no vote are labelled 0 (background); ties go
    to the smaller id.
    """
    if not isinstance(images, PosedImages):
        raise InvalidInputError(f"images must be PosedImages, got {type(images).__name__}")
    if images.instance_ids is None:
        raise InvalidInputError("label_instances needs PosedImages.instance_ids; none given")
    n = len(scene)
    dev = torch.device(device) if device is not None else scene.device
    if n == 0:
        return torch.zeros(0, dtype=torch.int32)
    params = _params_from_scene(scene, scene.sh_degree, dev)
    _, Ks = _merge_inputs(images)
    h, w = images.height, images.width
    views = _Views(
        torch.empty(0), torch.as_tensor(images.trajectory.viewmats, dtype=torch.float32, device=dev),
        torch.as_tensor(Ks, dtype=torch.float32, device=dev), torch.empty(0), None, w, h,
    )
    cfg = ReconstructionConfig(near_plane=near_plane)
    ids_all = torch.as_tensor(images.instance_ids, device=dev).long()
    labels, inverse = torch.unique(ids_all, return_inverse=True)  # remap ids to 0..M-1 for bincount
    m = len(labels)
    votes = torch.zeros(n * m, dtype=torch.int64, device=dev)
    means = params["means"]
    bg = torch.zeros(1, 3, device=dev)
    for i in range(len(images)):
        out, alpha, _ = _render(params, views, [i], scene.sh_degree, bg, cfg, mode="RGB+ED")
        ed, alpha = out[0, ..., -1], alpha[0, ..., 0]
        vm, K = views.viewmats[i], views.Ks[i]
        pc = means @ vm[:3, :3].T + vm[:3, 3]
        z = pc[:, 2]
        zs = z.clamp_min(1e-9)
        u = torch.floor(pc[:, 0] / zs * K[0, 0] + K[0, 2]).long()
        v = torch.floor(pc[:, 1] / zs * K[1, 1] + K[1, 2]).long()
        ok = (z > near_plane) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        g = torch.nonzero(ok).squeeze(1)
        uu, vv = u[g], v[g]
        vis = (alpha[vv, uu] >= min_alpha) & (z[g] <= ed[vv, uu] * (1 + depth_rel_tol) + depth_abs_tol)
        g, uu, vv = g[vis], uu[vis], vv[vis]
        votes += torch.bincount(g * m + inverse[i, vv, uu], minlength=n * m)
    votes = votes.view(n, m)
    best = labels[votes.argmax(1)]
    best[votes.sum(1) == 0] = 0
    return best.to(torch.int32).cpu()


# ---------------------------------------------------------------------------------------------- main entry point
def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from simharmony.errors import BackendUnavailableError

        raise BackendUnavailableError(f"config.device={name!r} but CUDA is not available here; use 'cpu' or 'auto'")
    return torch.device(name)


def _step_generator(seed: int, step: int, salt: int, device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step * 7919 + salt) % (2**63 - 1))
    return g


def _views_for_step(seed: int, step: int, batch: int, n: int) -> list[int]:
    """Views of one step: consecutive entries of a stream of per-epoch random permutations (resume-safe)."""
    out = []
    for k in range(step * batch, step * batch + batch):
        epoch, pos = divmod(k, n)
        perm = torch.randperm(n, generator=_step_generator(seed, epoch, 17, "cpu"))
        out.append(int(perm[pos]))
    return out


def reconstruct(
    images: PosedImages | Sequence[PosedImages],
    config: ReconstructionConfig | None = None,
    *,
    output_dir: PathLike | None = None,
    init_scene: GaussianScene | None = None,
    resume: bool = True,
    progress: bool = True,
) -> ReconstructionResult:
    """Train a 3DGS scene on posed images.

    Args:
        images: one :class:`PosedImages` (or a list of them with equal image sizes): images [V, H, W, 3],
            poses, and optionally masks [V, H, W] (loss weights), depths [V, H, W] (init), instance_ids
            [V, H, W] (Gaussian labels), sparse points [P, 3] (init).
        config: :class:`ReconstructionConfig` (defaults if None).
        output_dir: if given, ``config.yaml``, checkpoints (``checkpoints/ckpt_*.safetensors``),
            ``scene.safetensors`` and ``result.yaml`` are written there, atomically.
        init_scene: start from these Gaussians instead of initialising from points/depth/random.
        resume: continue from the newest checkpoint in ``output_dir`` if there is one.
        progress: show a tqdm bar with loss, PSNR and the number of Gaussians.

    Returns:
        :class:`ReconstructionResult`.
    """
    cfg = config if config is not None else ReconstructionConfig()
    if not isinstance(cfg, ReconstructionConfig):
        raise ConfigError(f"config must be a ReconstructionConfig, got {type(cfg).__name__}")
    cfg.__post_init__()  # fields may have been changed after construction
    device = _resolve_device(cfg.device)
    old_threads = torch.get_num_threads()
    if device.type == "cpu" and 0 < cfg.cpu_torch_threads < old_threads:
        torch.set_num_threads(cfg.cpu_torch_threads)
    try:
        return _reconstruct(images, cfg, device, output_dir, init_scene, resume, progress)
    finally:
        torch.set_num_threads(old_threads)


def _reconstruct(images, cfg: ReconstructionConfig, device: torch.device, output_dir, init_scene, resume, progress):
    t0 = time.perf_counter()
    merged, Ks_np = _merge_inputs(images)
    on_cuda = device.type == "cuda"

    train, held = split_views(len(merged), cfg.heldout_every)
    if merged.masks is not None:
        empty = [i for i in range(len(merged)) if not (merged.masks[i] > 0).any()]
        if len(set(train) - set(empty)) == 0 and cfg.alpha_loss_weight == 0:
            raise InvalidInputError(f"every training view is fully masked (masks are all 0 in views {empty}); nothing to fit")
        if empty:
            log.warning("views %s are fully masked; they only contribute through the alpha loss", empty)
    if init_scene is not None and not isinstance(init_scene, GaussianScene):
        raise InvalidInputError(f"init_scene must be a GaussianScene, got {type(init_scene).__name__}")

    extent, centre_np = scene_extent(merged.trajectory.poses[train])
    views = _Views(
        images=torch.as_tensor(merged.images, device=device),
        viewmats=torch.as_tensor(merged.trajectory.viewmats, dtype=torch.float32, device=device),
        Ks=torch.as_tensor(Ks_np, dtype=torch.float32, device=device),
        c2w=torch.as_tensor(merged.trajectory.poses, dtype=torch.float32, device=device),
        masks=None if merged.masks is None else torch.as_tensor(merged.masks, device=device),
        width=merged.width, height=merged.height,
    )
    centre = torch.as_tensor(centre_np, dtype=torch.float32, device=device)
    lrs = _lrs(cfg, extent)
    out_dir = Path(output_dir) if output_dir is not None else None
    ckpt_dir = out_dir / "checkpoints" if out_dir is not None else None

    # ---- state: from a checkpoint, an initial scene, or fresh points
    start_step, history, prev_seconds, init_mode = 0, [], 0.0, "checkpoint"
    loss_ema = psnr_ema = None  # running means shown in the bar and history (checkpointed too)
    ckpts = _list_checkpoints(ckpt_dir) if (ckpt_dir is not None and resume) else []
    loaded = None
    for step_k, path in reversed(ckpts):
        try:
            loaded = _load_checkpoint(path, device)
            break
        except FileFormatError as e:  # writes are atomic, but a file may be damaged later: use an older one
            log.warning("skipping unreadable checkpoint %s: %s", path, e)
    if loaded is not None:
        start_step, ptensors, otensors, stensors, meta = loaded
        if meta.get("sh_degree", cfg.sh_degree) != cfg.sh_degree:
            raise ConfigError(f"checkpoint in {ckpt_dir} was trained with sh_degree={meta.get('sh_degree')}, config says {cfg.sh_degree}")
        extent = float(meta.get("extent", extent))
        lrs = _lrs(cfg, extent)
        history = list(meta.get("history", []))
        prev_seconds = float(meta.get("seconds", 0.0))
        loss_ema, psnr_ema = meta.get("loss_ema"), meta.get("psnr_ema")
        params = {n: torch.nn.Parameter(ptensors[n].contiguous()) for n in _PARAM_NAMES if n in ptensors}
        optimizers = _make_optimizers(params, lrs)
        for n, p in params.items():
            if n in otensors:
                optimizers[n].state[p] = dict(otensors[n])
        state = dict(stensors)
        log.info("resuming from %s at step %d", path, start_step)
    else:
        if init_scene is not None:
            scene0 = init_scene.detach().to("cpu")
            if len(scene0) == 0:
                raise InvalidInputError("init_scene is empty")
            init_mode = "scene"
        else:
            pts, cols, init_mode = initial_points(merged, Ks_np, train, cfg, extent)
            scale = _knn_scale(pts) * cfg.init_scale_factor
            scale = np.clip(scale, 1e-4 * extent, None)
            scene0 = GaussianScene.from_points(torch.from_numpy(pts), torch.from_numpy(cols), torch.from_numpy(scale),
                                               opacity=cfg.init_opacity, sh_degree=cfg.sh_degree)
        params = _params_from_scene(scene0, cfg.sh_degree, device)
        optimizers = _make_optimizers(params, lrs)
        state = {}
    if out_dir is not None:
        cfg.save(out_dir / "config.yaml")

    strategy = None
    if cfg.strategy == "gsplat" or (cfg.strategy == "auto" and on_cuda):
        try:
            from gsplat import DefaultStrategy
        except Exception as e:  # pragma: no cover - depends on the install
            from simharmony.errors import BackendUnavailableError

            raise BackendUnavailableError(f"strategy='gsplat' needs an importable gsplat: {e}") from e

        strategy = DefaultStrategy(
            prune_opa=cfg.prune_opacity, grow_grad2d=cfg.grow_grad2d, grow_scale3d=cfg.grow_scale3d,
            prune_scale3d=cfg.prune_scale3d, refine_start_iter=cfg.densify_start, refine_stop_iter=cfg.densify_stop,
            reset_every=cfg.opacity_reset_every, refine_every=cfg.densify_every,
        )
        strategy.check_sanity(params, optimizers)
        gs_state = strategy.initialize_state(scene_scale=extent)
        for k in ("grad2d", "count"):
            if k in state:
                gs_state[k] = state[k]
        state = gs_state
    else:
        n0 = params["means"].shape[0]
        state.setdefault("grad2d", torch.zeros(n0, device=device))
        state.setdefault("count", torch.zeros(n0, device=device))

    decay_steps = cfg.lr_decay_steps or cfg.iterations
    gamma = (cfg.means_lr_final / cfg.means_lr) ** (1.0 / decay_steps) if cfg.means_lr > 0 else 1.0
    fixed_bg = torch.tensor(cfg.background_color, dtype=torch.float32, device=device)
    use_alpha_loss = cfg.alpha_loss_weight > 0 and views.masks is not None

    def sh_degree_at(step: int) -> int:
        return min(cfg.sh_degree, step // cfg.sh_degree_interval)

    def checkpoint(step: int) -> None:
        if ckpt_dir is None:
            return
        meta = {"extent": extent, "sh_degree": cfg.sh_degree, "history": history,
                "seconds": prev_seconds + time.perf_counter() - t0, "loss_ema": loss_ema, "psnr_ema": psnr_ema}
        st = {k: v for k, v in state.items() if k in ("grad2d", "count") and isinstance(v, torch.Tensor)}
        _save_checkpoint(ckpt_dir, step, params, optimizers, st, meta, cfg.keep_checkpoints)

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.iterations, initial=min(start_step, cfg.iterations), disable=not progress,
               desc="reconstruct", dynamic_ncols=True)
    step = start_step
    try:
        for step in range(start_step, cfg.iterations):
            optimizers["means"].param_groups[0]["lr"] = lrs["means"] * gamma ** min(step, decay_steps)
            idx = _views_for_step(cfg.seed, step, cfg.batch_size, len(train))
            vidx = [train[i] for i in idx]
            if cfg.background == "random":
                bg = torch.rand((len(vidx), 3), generator=_step_generator(cfg.seed, step, 29, device), device=device)
            else:
                bg = fixed_bg.expand(len(vidx), 3).contiguous()
            deg = sh_degree_at(step)
            img, alpha, meta = _render(params, views, vidx, deg, bg, cfg)
            if strategy is not None:
                # gsplat's strategy wants radii in its own layout ([C, N, 2] from gsplat 1.5), which
                # scene_tools.rasterize keeps as "radii_xy"; the means2d tensor is shared
                meta = {"gaussian_ids": None, **meta, "radii": meta.get("radii_xy", meta["radii"])}
                strategy.step_pre_backward(params, optimizers, state, step, meta)
            else:
                meta["means2d"].retain_grad()
            gt = views.images[vidx]
            weight = None if views.masks is None else views.masks[vidx]
            if cfg.background == "random" and weight is not None and use_alpha_loss:
                # outside the mask the target is the background, so alpha learns the mask's shape
                gt = gt * weight[..., None] + bg[:, None, None, :] * (1 - weight[..., None])
                weight = None
            loss = _photometric_loss(img, gt, weight, cfg.ssim_lambda)
            if use_alpha_loss:
                loss = loss + cfg.alpha_loss_weight * (alpha[..., 0] - views.masks[vidx]).abs().mean()
            if not torch.isfinite(loss):
                raise NonFiniteError(f"loss became {float(loss)} at step {step}; lower the learning rates")
            loss.backward()

            with torch.no_grad():
                bpsnr = psnr_masked(img.detach()[0], gt[0], None if weight is None else weight[0])
                if strategy is None and step < cfg.densify_stop:
                    g = meta["means2d"].grad  # [C, N, 2] in pixels
                    if g is not None:
                        vis = _radii_visible(meta["radii"])
                        c = g.shape[0]
                        # gsplat's normalisation: gradients w.r.t. NDC-like [-1, 1] coordinates of a mean-loss
                        gn = torch.stack([g[..., 0] * (views.width / 2 * c), g[..., 1] * (views.height / 2 * c)], -1).norm(dim=-1)
                        state["grad2d"] += (gn * vis).sum(0)
                        state["count"] += vis.sum(0).to(state["count"].dtype)
            for opt in optimizers.values():
                opt.step()
                opt.zero_grad(set_to_none=True)

            lv = float(loss.detach())
            loss_ema = lv if loss_ema is None else 0.9 * loss_ema + 0.1 * lv
            if math.isfinite(bpsnr):
                psnr_ema = bpsnr if psnr_ema is None else 0.9 * psnr_ema + 0.1 * bpsnr
            s1 = step + 1
            ngs = params["means"].shape[0]
            entry = None
            if s1 % cfg.log_every == 0 or s1 == cfg.iterations:
                entry = {"step": s1, "loss": loss_ema, "psnr": psnr_ema, "num_gaussians": ngs,
                         "seconds": prev_seconds + time.perf_counter() - t0}
            if held and (s1 % cfg.eval_every == 0 or s1 == cfg.iterations):
                entry = entry or {"step": s1, "loss": loss_ema, "psnr": psnr_ema, "num_gaussians": ngs,
                                  "seconds": prev_seconds + time.perf_counter() - t0}
                entry["heldout_psnr"] = _evaluate(params, views, held, sh_degree_at(s1), cfg, fixed_bg)
            if entry is not None:
                history.append(entry)
            if s1 % 10 == 0 or s1 == cfg.iterations:
                bar.set_postfix(loss=f"{loss_ema:.4f}", psnr=f"{(psnr_ema or 0):.2f}", n=str(ngs), refresh=False)
            bar.update(1)

            # refinement after the update and the evaluation of this step (so an opacity reset is not
            # what gets evaluated), before the checkpoint (so a resumed run starts from the refined set);
            # never after the last step, whose parameters are the result
            if s1 == cfg.iterations:
                pass
            elif strategy is not None:
                # as gsplat's simple_trainer: after the optimizer step (means2d keeps its grad)
                torch.manual_seed(cfg.seed * 1_000_003 + step)  # gsplat's split samples from the global RNG
                strategy.step_post_backward(params, optimizers, state, step, meta)
                _cap_count(params, optimizers, state, cfg.max_gaussians)
            else:
                if cfg.densify_start < s1 <= cfg.densify_stop and s1 % cfg.densify_every == 0:
                    densify_and_prune(params, optimizers, state, cfg, extent, centre,
                                      generator=_step_generator(cfg.seed, step, 41, device),
                                      prune_huge=s1 > cfg.opacity_reset_every)
                if s1 <= cfg.densify_stop and s1 % cfg.opacity_reset_every == 0:
                    reset_opacities(params, optimizers, 2 * max(cfg.prune_opacity, 1e-4))
            if s1 % cfg.checkpoint_every == 0 or s1 == cfg.iterations:
                checkpoint(s1)
    finally:
        bar.close()

    final_step = max(start_step, cfg.iterations)
    deg = sh_degree_at(final_step)
    eval_train = train if len(train) <= 16 else [train[i] for i in np.linspace(0, len(train) - 1, 16).round().astype(int)]
    train_psnr = _evaluate(params, views, eval_train, deg, cfg, fixed_bg)
    last = history[-1] if history else {}
    if held and last.get("step") == final_step and "heldout_psnr" in last:
        heldout_psnr = last["heldout_psnr"]  # just evaluated at the last step
    else:
        heldout_psnr = _evaluate(params, views, held, deg, cfg, fixed_bg) if held else None

    meta_out = {"source": "scene_tools.reconstruct", "steps": final_step, "init": init_mode,
                "train_psnr": train_psnr, "heldout_psnr": heldout_psnr, "extent": extent}
    scene = params_to_scene(params, metadata=meta_out)
    if merged.instance_ids is not None:
        scene.instance_ids = label_instances(scene, merged.subset(train), near_plane=cfg.near_plane, device=device)
    seconds = time.perf_counter() - t0
    if out_dir is not None:
        scene.save(out_dir / "scene.safetensors")
        from simharmony.utils.io import save_yaml

        save_yaml(out_dir / "result.yaml", {"steps": final_step, "num_gaussians": len(scene), "train_psnr": train_psnr,
                                           "heldout_psnr": heldout_psnr, "heldout_indices": held, "seconds": seconds,
                                           "resumed_from_step": start_step})
    return ReconstructionResult(scene, float(train_psnr) if train_psnr is not None else float("nan"), heldout_psnr,
                                history, held, seconds, resumed_from_step=start_step, train_indices=train)
