"""Differentiable 3D Gaussian rasterization with ``gsplat.rasterization``'s call shape.

``rasterize(...)`` runs gsplat on CUDA tensors and a numba CPU rasterizer otherwise (see
``scene_tools/_raster_cpu.py``). The CPU path covers the subset this project uses: pinhole cameras,
"classic" rasterize mode, non-packed per-camera outputs, render modes RGB / D / ED / RGB+D / RGB+ED,
arbitrary colour channel counts, SH degrees 0-3 and backgrounds.

Example::

    colors, alphas, meta = rasterize(means, quats, scales, opacities, rgb, viewmats, Ks, 256, 144)
    meta["means2d"].retain_grad()   # screen-space gradients for densification
    loss = (colors - target).abs().mean(); loss.backward()
"""

from __future__ import annotations

from typing import Any

import torch

from scene_tools import _raster_cpu
from scene_tools._raster_cpu import project_gaussians, rasterize_to_pixels_cpu, run_isolated, torch_threads
from scene_tools.sh import MAX_SH_DEGREE, eval_sh, num_sh_bases
from simharmony.errors import (
    BackendUnavailableError,
    InvalidCameraError,
    InvalidInputError,
    NonFiniteError,
    ShapeMismatchError,
)
from simharmony.utils.checks import check_image_size

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
BACKENDS = ("auto", "gsplat", "cpu")

__all__ = ["BACKENDS", "RENDER_MODES", "gsplat_available", "rasterize"]


def gsplat_available() -> bool:
    """True when gsplat imports and CUDA is present (gsplat cannot rasterize on CPU)."""
    if not torch.cuda.is_available():
        return False
    try:
        import gsplat  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the install
        return False
    return True


def _check_tensor(name: str, x: Any, shape: tuple[int | None, ...]) -> None:
    if not isinstance(x, torch.Tensor):
        raise InvalidInputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InvalidInputError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    ok = x.ndim == len(shape) and all(s is None or s == d for s, d in zip(shape, x.shape))
    if not ok:
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ShapeMismatchError(f"{name} must have shape {want}, got {list(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"{name} contains NaN or infinite values; all entries must be finite")


def _validate(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane,
              eps2d, sh_degree, backgrounds, render_mode, radius_clip, tile_size, backend) -> int:
    """Raise a specific simharmony error on bad input; return the number of colour channels D."""
    if render_mode not in RENDER_MODES:
        raise InvalidInputError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    if backend not in BACKENDS:
        raise InvalidInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    for name, v in (("width", width), ("height", height), ("tile_size", tile_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise InvalidInputError(f"{name} must be a positive int, got {v!r}")
    check_image_size(height, width, "render")
    if not (0.0 <= float(near_plane) < float(far_plane)):
        raise InvalidCameraError(f"need 0 <= near_plane < far_plane, got near={near_plane}, far={far_plane}")
    if not float(eps2d) >= 0.0:
        raise InvalidInputError(f"eps2d must be >= 0, got {eps2d}")
    if not float(radius_clip) >= 0.0:
        raise InvalidInputError(f"radius_clip must be >= 0, got {radius_clip}")
    if not isinstance(means, torch.Tensor) or means.ndim != 2:
        raise ShapeMismatchError(
            f"means must be a [N, 3] tensor, got {list(means.shape) if isinstance(means, torch.Tensor) else type(means)}"
        )
    N = means.shape[0]
    _check_tensor("means", means, (N, 3))
    _check_tensor("quats", quats, (N, 4))
    _check_tensor("scales", scales, (N, 3))
    _check_tensor("opacities", opacities, (N,))
    if not isinstance(viewmats, torch.Tensor) or viewmats.ndim != 3 or viewmats.shape[0] < 1:
        raise ShapeMismatchError(
            "viewmats must be a [C, 4, 4] tensor with C >= 1, got "
            f"{list(viewmats.shape) if isinstance(viewmats, torch.Tensor) else type(viewmats)}"
        )
    C = viewmats.shape[0]
    _check_tensor("viewmats", viewmats, (C, 4, 4))
    _check_tensor("Ks", Ks, (C, 3, 3))
    if bool((Ks[:, 0, 0] <= 0).any()) or bool((Ks[:, 1, 1] <= 0).any()):
        raise InvalidCameraError(f"focal lengths Ks[:, 0, 0] and Ks[:, 1, 1] must be > 0, got {Ks[:, :2, :2].tolist()}")
    if N > 0 and bool((quats.norm(dim=-1) == 0).any()):
        raise InvalidInputError("quats contain an all-zero quaternion; rotations need a non-zero norm")
    if not isinstance(colors, torch.Tensor) or not colors.is_floating_point():
        raise InvalidInputError("colors must be a floating-point torch.Tensor")
    if sh_degree is None:
        if colors.ndim == 2:
            _check_tensor("colors", colors, (N, None))
        elif colors.ndim == 3:
            _check_tensor("colors", colors, (C, N, None))
        else:
            raise ShapeMismatchError(f"colors must be [N, D] or [C, N, D] without sh_degree, got {list(colors.shape)}")
        D = colors.shape[-1]
        if D < 1:
            raise ShapeMismatchError("colors need at least one channel")
    else:
        if isinstance(sh_degree, bool) or not isinstance(sh_degree, int) or not 0 <= sh_degree <= MAX_SH_DEGREE:
            raise InvalidInputError(f"sh_degree must be an int in 0..{MAX_SH_DEGREE} or None, got {sh_degree!r}")
        if colors.ndim == 3:
            _check_tensor("colors (SH)", colors, (N, None, 3))
        elif colors.ndim == 4:
            _check_tensor("colors (SH)", colors, (C, N, None, 3))
        else:
            raise ShapeMismatchError(f"SH colors must be [N, K, 3] or [C, N, K, 3], got {list(colors.shape)}")
        if colors.shape[-2] < num_sh_bases(sh_degree):
            raise ShapeMismatchError(
                f"sh_degree={sh_degree} needs K >= {num_sh_bases(sh_degree)} coefficients, got K={colors.shape[-2]}"
            )
        D = 3
    if backgrounds is not None:
        _check_tensor("backgrounds", backgrounds, (C, D))
    devices = {t.device for t in (means, quats, scales, opacities, colors, viewmats, Ks)}
    if backgrounds is not None:
        devices.add(backgrounds.device)
    if len(devices) > 1:
        raise InvalidInputError(f"all tensors must be on one device, got {sorted(str(d) for d in devices)}")
    return D


def rasterize(
    means: torch.Tensor,  # [N, 3]
    quats: torch.Tensor,  # [N, 4] wxyz
    scales: torch.Tensor,  # [N, 3] activated standard deviations
    opacities: torch.Tensor,  # [N] activated
    colors: torch.Tensor,  # [N, D] | [C, N, D] | SH [N, K, 3] | [C, N, K, 3]
    viewmats: torch.Tensor,  # [C, 4, 4] world-to-camera, OpenCV
    Ks: torch.Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    backgrounds: torch.Tensor | None = None,  # [C, D]
    render_mode: str = "RGB",
    radius_clip: float = 0.0,
    tile_size: int = 16,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Rasterize N 3D Gaussians into C pinhole cameras; semantics of ``gsplat.rasterization`` (classic mode).

    Args:
        means [N, 3], quats [N, 4] (w, x, y, z; normalised here), scales [N, 3] (std devs), opacities [N].
        colors: [N, D] or [C, N, D] features (any D >= 1), or SH coefficients [N, K, 3] / [C, N, K, 3] when
            ``sh_degree`` is given (evaluated per camera, then ``clamp_min(sh + 0.5, 0)``).
        viewmats [C, 4, 4] world-to-camera (OpenCV: x right, y down, z forward), Ks [C, 3, 3].
        width, height: image size in pixels. near_plane / far_plane: depth culling.
        eps2d: added to the 2D covariance diagonal. radius_clip: cull Gaussians whose pixel radius <= it.
        backgrounds [C, D]: composited as ``colors + (1 - alpha) * bg`` (depth channels get 0).
        render_mode: "RGB", "D" (accumulated z), "ED" (D / alpha), "RGB+D", "RGB+ED".
        tile_size: tile edge in pixels. backend: "auto" (gsplat on CUDA tensors, else CPU), "gsplat", "cpu".

    Returns:
        render_colors [C, H, W, D'] (D' = D, 1 or D + 1 by mode), render_alphas [C, H, W, 1], meta with
        "means2d" [C, N, 2] (in the graph; call ``.retain_grad()`` before backward), "radii" [C, N] int32
        (max of the x/y pixel radii; 0 = culled), "radii_xy" [C, N, 2], "depths" [C, N], "conics" [C, N, 3],
        "opacities" [C, N], "width", "height", "n_cameras", "tile_size", "backend".
    """
    on_cuda = isinstance(means, torch.Tensor) and means.is_cuda
    # CPU tensor checks are cheap single-threaded but stall in torch's thread pool on a busy machine.
    with torch_threads(0 if on_cuda else _raster_cpu.TORCH_THREADS):
        _validate(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane,
                  eps2d, sh_degree, backgrounds, render_mode, radius_clip, tile_size, backend)
    if backend == "gsplat" or (backend == "auto" and on_cuda):
        if not on_cuda or not gsplat_available():
            raise BackendUnavailableError(
                "backend='gsplat' needs CUDA tensors and a working gsplat install (gsplat cannot rasterize on "
                f"CPU); got tensors on {means.device}, CUDA available={torch.cuda.is_available()}. "
                "Use backend='cpu' or 'auto'."
            )
        return _rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane,
                                 far_plane, eps2d, sh_degree, backgrounds, render_mode, radius_clip, tile_size)
    if on_cuda:  # backend == "cpu" with CUDA tensors: run on CPU, hand results back on the input device
        dev = means.device
        cpu = [t.cpu() if isinstance(t, torch.Tensor) else t
               for t in (means, quats, scales, opacities, colors, viewmats, Ks, backgrounds)]
        out_c, out_a, meta = _rasterize_cpu(*cpu[:7], width, height, near_plane, far_plane, eps2d, sh_degree,
                                            cpu[7], render_mode, radius_clip, tile_size)
        meta = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in meta.items()}
        return out_c.to(dev), out_a.to(dev), meta
    return _rasterize_cpu(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane,
                          far_plane, eps2d, sh_degree, backgrounds, render_mode, radius_clip, tile_size)


def _rasterize_cpu(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane,
                   eps2d, sh_degree, backgrounds, render_mode, radius_clip, tile_size):
    C = viewmats.shape[0]

    def prepare(means, quats, scales, opacities, colors, viewmats, Ks):
        """Projection + per-camera features (torch autograd) -> means2d, conics, depths, feats, radii."""
        means2d, conics, depths, radii_xy = project_gaussians(
            means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane, eps2d, radius_clip
        )
        if sh_degree is not None:
            campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
            dirs = means[None, :, :] - campos[:, None, :]  # [C, N, 3]
            shs = colors if colors.ndim == 4 else colors[None]
            feats = torch.clamp_min(eval_sh(sh_degree, dirs, shs) + 0.5, 0.0)  # [C, N, 3]
        elif colors.ndim == 2:
            feats = colors[None].expand(C, -1, -1)
        else:
            feats = colors
        if render_mode in ("RGB+D", "RGB+ED"):
            feats = torch.cat([feats, depths[..., None].to(feats.dtype)], dim=-1)
        elif render_mode in ("D", "ED"):
            feats = depths[..., None].to(feats.dtype)
        opac_c = opacities[None].expand(C, -1)
        return means2d, conics, depths, feats, opac_c, radii_xy, radii_xy.amax(dim=-1)

    def composite(render_colors, render_alphas, backgrounds):
        """Background and expected-depth normalisation on the rasterizer output."""
        if backgrounds is not None:
            bg = backgrounds.to(render_colors.dtype)
            if render_mode in ("RGB+D", "RGB+ED"):
                bg = torch.cat([bg, torch.zeros_like(bg[:, :1])], dim=-1)
            elif render_mode in ("D", "ED"):
                bg = torch.zeros_like(bg[:, :1])
            render_colors = render_colors + (1.0 - render_alphas) * bg[:, None, None, :]
        if render_mode in ("ED", "RGB+ED"):
            render_colors = torch.cat(
                [render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp(min=1e-10)], dim=-1
            )
        return render_colors, render_alphas

    # Torch work runs as isolated autograd nodes with a torch thread cap in forward and backward
    # (see _raster_cpu.TORCH_THREADS); only the compositing kernels in between use numba's threads.
    means2d, conics, depths, feats, opac_c, radii_xy, radii = run_isolated(
        prepare, means, quats, scales, opacities, colors, viewmats, Ks
    )
    render_colors, render_alphas = rasterize_to_pixels_cpu(
        means2d, conics, feats, opac_c, radii_xy, depths, width, height, tile_size
    )
    if backgrounds is not None or render_mode in ("ED", "RGB+ED"):
        render_colors, render_alphas = run_isolated(composite, render_colors, render_alphas, backgrounds)
    meta = {
        "means2d": means2d,
        "conics": conics,
        "depths": depths,
        "radii": radii,
        "radii_xy": radii_xy,
        "opacities": opac_c,
        "width": width,
        "height": height,
        "n_cameras": C,
        "tile_size": tile_size,
        "backend": "cpu",
    }
    return render_colors, render_alphas, meta


def _rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane,
                      eps2d, sh_degree, backgrounds, render_mode, radius_clip, tile_size):
    import gsplat

    render_colors, render_alphas, meta = gsplat.rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, sh_degree=sh_degree, backgrounds=backgrounds,
        render_mode=render_mode, radius_clip=radius_clip, tile_size=tile_size, packed=False,
        rasterize_mode="classic",
    )
    radii = meta["radii"]
    if radii.ndim == 3:  # gsplat >= 1.5 returns per-axis radii [C, N, 2]
        meta["radii_xy"] = radii
        meta["radii"] = radii.amax(dim=-1)
    meta["n_cameras"] = viewmats.shape[0]
    meta["backend"] = "gsplat"
    return render_colors, render_alphas, meta
