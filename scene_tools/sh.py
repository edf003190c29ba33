"""Real spherical harmonics (degrees 0-3) evaluated in torch, with the 3DGS / gsplat basis ordering.

``eval_sh(degree, dirs, coeffs)`` returns the raw SH sum; the rasterizer then adds 0.5 and clamps at 0
exactly like ``gsplat.rasterization`` does with ``sh_degree`` set.
"""

from __future__ import annotations

import torch

from simharmony.errors import InvalidInputError, ShapeMismatchError

MAX_SH_DEGREE = 3

# Normalisation constants of the real SH basis Y_l^m.
_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def num_sh_bases(degree: int) -> int:
    """Number of coefficients K used by SH of the given degree: (degree + 1) ** 2."""
    return (degree + 1) ** 2


def sh_bases(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """SH basis values at unit directions.

    dirs [..., 3] (normalised) -> bases [..., (degree + 1) ** 2]
    """
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise InvalidInputError(f"sh_degree must be in 0..{MAX_SH_DEGREE}, got {degree}")
    out = [torch.full_like(dirs[..., 0], _C0)]
    if degree >= 1:
        x, y, z = dirs.unbind(-1)
        out += [-_C1 * y, _C1 * z, -_C1 * x]
        if degree >= 2:
            xx, yy, zz = x * x, y * y, z * z
            xy, yz, xz = x * y, y * z, x * z
            out += [
                _C2[0] * xy,
                _C2[1] * yz,
                _C2[2] * (2.0 * zz - xx - yy),
                _C2[3] * xz,
                _C2[4] * (xx - yy),
            ]
            if degree >= 3:
                out += [
                    _C3[0] * y * (3.0 * xx - yy),
                    _C3[1] * xy * z,
                    _C3[2] * y * (4.0 * zz - xx - yy),
                    _C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
                    _C3[4] * x * (4.0 * zz - xx - yy),
                    _C3[5] * z * (xx - yy),
                    _C3[6] * x * (xx - 3.0 * yy),
                ]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Evaluate view-dependent colour from SH coefficients (differentiable in dirs and coeffs).

    degree: SH degree to use (0..3); only the first (degree + 1) ** 2 of the K coefficients are read.
    dirs [..., 3] viewing directions (camera -> Gaussian), any length; normalised here.
    coeffs [..., K, 3] -> colours [..., 3] (raw sum, no +0.5 offset).
    """
    k = num_sh_bases(degree)
    if coeffs.ndim < 2 or coeffs.shape[-1] != 3:
        raise ShapeMismatchError(f"SH coefficients must be [..., K, 3], got {tuple(coeffs.shape)}")
    if coeffs.shape[-2] < k:
        raise ShapeMismatchError(
            f"sh_degree {degree} needs at least {k} SH coefficients per Gaussian, got {coeffs.shape[-2]}"
        )
    if dirs.shape[-1] != 3:
        raise ShapeMismatchError(f"dirs must be [..., 3], got {tuple(dirs.shape)}")
    if degree == 0:
        shape = torch.broadcast_shapes(dirs.shape[:-1], coeffs.shape[:-2]) + (3,)
        return (_C0 * coeffs[..., 0, :]).expand(shape)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    bases = sh_bases(degree, dirs)  # [..., k]
    return (bases.unsqueeze(-1) * coeffs[..., :k, :]).sum(dim=-2)
