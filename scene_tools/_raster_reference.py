"""Brute-force reference rasterizer in plain torch (autograd), for testing the fast paths on tiny scenes.

Every pixel composites every non-culled Gaussian of its camera, sorted by depth, with the same rules as
gsplat's CUDA kernels: pixel centres at +0.5, ``alpha = min(ALPHA_MAX, opacity * exp(-sigma))``, skip
``sigma < 0`` or ``alpha < 1/255``, stop (exclusive) once the transmittance would reach <= 1e-4.
No tiles, no bounding boxes, no custom backward: gradients come from torch autograd. Memory is
O(C * H * W * N), so keep scenes tiny (e.g. 30 Gaussians at 40x30). Works in float64 for test accuracy.
"""

from __future__ import annotations

import torch

from scene_tools._raster_cpu import ALPHA_MAX, ALPHA_THRESHOLD, RADIUS_EXTEND_MAX, T_MIN
from scene_tools.sh import eval_sh


def _rotmat(quats: torch.Tensor) -> torch.Tensor:
    """quats [N, 4] wxyz -> rotation [N, 3, 3], via the Hamilton product q v q* on the basis vectors."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, v = q[:, :1], q[:, 1:]  # [N, 1], [N, 3]
    cols = []
    for e in torch.eye(3, dtype=q.dtype):
        e = e.expand_as(v)
        # rotate e: e + 2w (v x e) + 2 v x (v x e)
        vxe = torch.cross(v, e, dim=-1)
        cols.append(e + 2 * w * vxe + 2 * torch.cross(v, vxe, dim=-1))
    return torch.stack(cols, dim=-1)


def reference_project(means, quats, scales, opacities, viewmats, Ks, width, height,
                      near_plane=0.01, far_plane=1e10, eps2d=0.3, radius_clip=0.0):
    """Straightforward matrix-form projection.

    Returns means2d [C, N, 2], conics [C, N, 3], depths [C, N], radii [C, N, 2] (long), valid [C, N].
    """
    R = _rotmat(quats)  # [N, 3, 3]
    cov3d = R @ torch.diag_embed(scales**2) @ R.transpose(-1, -2)  # [N, 3, 3]
    outs = {k: [] for k in ("means2d", "conics", "depths", "radii", "valid")}
    for c in range(viewmats.shape[0]):
        Rc, tc, K = viewmats[c, :3, :3], viewmats[c, :3, 3], Ks[c]
        p = means @ Rc.T + tc  # [N, 3]
        z = p[:, 2]
        ok_z = (z > near_plane) & (z < far_plane)
        zs = torch.where(ok_z, z, torch.ones_like(z))
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        m2 = torch.stack([fx * p[:, 0] / zs + cx, fy * p[:, 1] / zs + cy], dim=-1)
        # Jacobian at a point clamped to 1.3x the field of view
        tanx, tany = 0.5 * width / fx, 0.5 * height / fy
        u = torch.clamp(p[:, 0] / zs, -(cx / fx + 0.3 * tanx), (width - cx) / fx + 0.3 * tanx)
        v = torch.clamp(p[:, 1] / zs, -(cy / fy + 0.3 * tany), (height - cy) / fy + 0.3 * tany)
        J = torch.zeros(p.shape[0], 2, 3, dtype=p.dtype)
        J = J + torch.stack(
            [
                torch.stack([fx / zs, torch.zeros_like(zs), -fx * u / zs], -1),
                torch.stack([torch.zeros_like(zs), fy / zs, -fy * v / zs], -1),
            ],
            dim=-2,
        )
        cov_c = Rc @ cov3d @ Rc.T
        cov2d = J @ cov_c @ J.transpose(-1, -2) + eps2d * torch.eye(2, dtype=p.dtype)
        inv = torch.linalg.inv(cov2d)
        conic = torch.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], dim=-1)
        with torch.no_grad():
            op = opacities.detach()
            ext = torch.sqrt(2 * torch.log(torch.clamp(op * 255.0, min=1.0))).clamp(max=RADIUS_EXTEND_MAX)
            rx = torch.ceil(ext * cov2d[:, 0, 0].sqrt())
            ry = torch.ceil(ext * cov2d[:, 1, 1].sqrt())
            inside = (m2[:, 0] + rx > 0) & (m2[:, 0] - rx < width) & (m2[:, 1] + ry > 0) & (m2[:, 1] - ry < height)
            valid = ok_z & (op >= ALPHA_THRESHOLD) & inside & ~((rx <= radius_clip) & (ry <= radius_clip))
        outs["means2d"].append(m2)
        outs["conics"].append(conic)
        outs["depths"].append(z)
        outs["radii"].append(torch.where(valid[:, None], torch.stack([rx, ry], -1), 0).long())
        outs["valid"].append(valid)
    return tuple(torch.stack(outs[k]) for k in ("means2d", "conics", "depths", "radii", "valid"))


def reference_composite(means2d, conics, colors, opacities, depths, valid, width, height):
    """Brute-force compositing of one camera.

    means2d [N, 2], conics [N, 3], colors [N, D], opacities [N], depths [N], valid [N] bool
    -> colors [H, W, D], alphas [H, W, 1] (no background).
    """
    idx = torch.nonzero(valid).flatten()
    idx = idx[torch.argsort(depths.detach()[idx], stable=True)]
    m, cn, col, op = means2d[idx], conics[idx], colors[idx], opacities[idx]
    ys, xs = torch.meshgrid(torch.arange(height, dtype=m.dtype), torch.arange(width, dtype=m.dtype), indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(-1, 1, 2) + 0.5  # [P, 1, 2]
    d = m[None] - pix  # [P, K, 2]
    sigma = 0.5 * (cn[None, :, 0] * d[..., 0] ** 2 + cn[None, :, 2] * d[..., 1] ** 2) + cn[None, :, 1] * d[..., 0] * d[..., 1]
    alpha = torch.clamp(op[None] * torch.exp(-sigma), max=ALPHA_MAX)
    keep = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    with torch.no_grad():  # exclusive early termination: drop the first Gaussian that would end the ray, and all after
        T_after = torch.cumprod(1 - alpha, dim=1)
        stop = T_after <= T_MIN
        stopped = torch.cumsum(stop.to(torch.int64), dim=1) > 0
    alpha = torch.where(stopped, torch.zeros_like(alpha), alpha)
    T_before = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], dim=1), dim=1)
    w = alpha * T_before  # [P, K]
    out = (w @ col).reshape(height, width, -1)
    acc = w.sum(dim=1).reshape(height, width, 1)
    return out, acc


def reference_rasterize(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                        near_plane=0.01, far_plane=1e10, eps2d=0.3, sh_degree=None, backgrounds=None,
                        render_mode="RGB", radius_clip=0.0):
    """Same call shape and semantics as :func:`scene_tools.rasterize.rasterize` (no validation)."""
    C = viewmats.shape[0]
    m2, con, dep, radii, valid = reference_project(
        means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane, eps2d, radius_clip
    )
    if sh_degree is not None:
        campos = torch.stack([-(v[:3, :3].T @ v[:3, 3]) for v in viewmats])  # [C, 3]
        cols = []
        for c in range(C):
            sh = colors if colors.dim() == 3 else colors[c]
            cols.append(torch.clamp_min(eval_sh(sh_degree, means - campos[c], sh) + 0.5, 0.0))
        colors = torch.stack(cols)
    elif colors.dim() == 2:
        colors = colors[None].expand(C, -1, -1)
    if render_mode in ("RGB+D", "RGB+ED"):
        colors = torch.cat([colors, dep[..., None]], dim=-1)
    elif render_mode in ("D", "ED"):
        colors = dep[..., None]
    imgs, alphas = [], []
    for c in range(C):
        img, acc = reference_composite(m2[c], con[c], colors[c], opacities, dep[c], valid[c], width, height)
        if backgrounds is not None:
            bg = backgrounds[c]
            if render_mode in ("RGB+D", "RGB+ED"):
                bg = torch.cat([bg, torch.zeros_like(bg[:1])])
            elif render_mode in ("D", "ED"):
                bg = torch.zeros_like(bg[:1])
            img = img + (1 - acc) * bg
        imgs.append(img)
        alphas.append(acc)
    imgs, alphas = torch.stack(imgs), torch.stack(alphas)
    if render_mode in ("ED", "RGB+ED"):
        imgs = torch.cat([imgs[..., :-1], imgs[..., -1:] / alphas.clamp(min=1e-10)], dim=-1)
    meta = {"means2d": m2, "conics": con, "depths": dep, "radii": radii, "valid": valid}
    return imgs, alphas, meta
