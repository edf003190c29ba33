"""CPU Gaussian rasterizer: torch projection + numba tile binning / compositing, differentiable.

Layout follows gsplat's pipeline:

1. :func:`project_gaussians` (torch, autograd): world->camera, EWA projection, eps2d blur, conics, depths,
   opacity-aware radii and culling. Its ``means2d`` output is a leaf of the compositing step, so
   ``means2d.retain_grad()`` gives the screen-space gradients densification strategies use.
2. :class:`RasterizeToPixelsCPU` (torch.autograd.Function) whose forward/backward call numba kernels:
   - ``_bin_gaussians``: pixel rectangle per Gaussian, per-tile counts, then a stable counting sort of
     (tile, depth) pairs: Gaussians are visited in per-camera depth order, so every tile's list comes
     out sorted front to back without a per-tile sort.
   - ``_forward_kernel``: per tile (numba prange), Gaussians front to back, each touching only the
     pixels of its rectangle; per-pixel early termination and per-tile early exit. Saves the final
     transmittance and the index of the last contributor of every pixel.
   - ``_backward_kernel``: per tile, Gaussians back to front from the tile's latest last-contributor,
     recovering each pixel's transmittance by division (as gsplat does). Per-Gaussian gradients go to
     ``GRAD_SLOTS`` buffers, each owned by a fixed share of the tiles and summed afterwards in order:
     no races, and the same gradients bit for bit on any number of threads (so reconstructions, and the
     data made from them, do not depend on the machine's core count).

Torch work (projection, SH, background) runs as isolated autograd nodes under a torch thread cap
(``TORCH_THREADS``, default 1, forward and backward): on small shared machines torch's OpenMP pool
stalls badly when another process holds a core, while these vectorised ops gain little from threads.

Compositing math is gsplat's (v1.4/1.5, "classic"): pixel centres at +0.5,
``sigma = 0.5 * (a dx^2 + c dy^2) + b dx dy``, ``alpha = min(ALPHA_MAX, opacity * exp(-sigma))``,
skip ``sigma < 0`` or ``alpha < 1/255``, stop (exclusive) once the transmittance would drop to <= 1e-4.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from contextlib import contextmanager

import numba
import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

# Constants shared with the CUDA kernels of gsplat 1.4/1.5 (RasterizeToPixels3DGSFwd.cu, Common.h).
ALPHA_THRESHOLD = 1.0 / 255.0
ALPHA_MAX = 0.999  # gsplat 1.5 kernels clamp at 0.999 (the original 3DGS rasterizer used 0.99)
T_MIN = 1e-4
RADIUS_EXTEND_MAX = 3.33  # sigma multiple of the screen-space bounding box

# torch intra-op threads used for the CPU path's own torch work (projection, SH, their backward).
# On small shared machines torch's OpenMP pool stalls badly when a core is busy elsewhere (a 50k-element
# multiply went from 30 us to 9 ms with 2 threads under load), while these ops gain little from threads.
# 0 = leave torch's setting alone. The numba kernels use numba's own thread count.
TORCH_THREADS = int(os.environ.get("SIMHARMONY_RASTER_TORCH_THREADS", "1"))
# numba's OpenMP layer loads its own libgomp at the first parallel kernel and reads this then. Spinning
# idle OpenMP workers (the default) starve the busy ones when cores are shared; a user's explicit value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Gradient buffers of the backward pass, each owned by a fixed share of the tiles (see _backward_kernel):
# fixed, not the thread count, so gradients are the same bit for bit on every machine. It also caps the
# backward pass at this many threads; memory GRAD_SLOTS x N x (6 + D) float32 (16 x 50k x 9: 29 MB).
GRAD_SLOTS = 16

_F32_ALPHA_THRESHOLD = np.float32(ALPHA_THRESHOLD)
_F32_ALPHA_MAX = np.float32(ALPHA_MAX)
_F32_T_MIN = np.float32(T_MIN)


# --------------------------------------------------------------------------------------------------
# 1. projection (torch, differentiable)
# --------------------------------------------------------------------------------------------------


def quat_scale_to_rs_t(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """quats [N, 4] (wxyz, any norm), scales [N, 3] -> M = R @ diag(scales), laid out [3, 3, N].

    cov3d = M M^T. The component-major layout keeps every autograd op on long contiguous rows, which is
    several times faster on CPU than broadcasting over tiny trailing 3x3 dimensions.
    """
    q = F.normalize(quats, p=2, dim=-1).t()  # [4, N]
    w, x, y, z = q[0], q[1], q[2], q[3]
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=0,
    ).reshape(3, 3, -1)
    return R * scales.t()[None, :, :]


def project_gaussians(
    means: torch.Tensor,  # [N, 3]
    quats: torch.Tensor,  # [N, 4]
    scales: torch.Tensor,  # [N, 3]
    opacities: torch.Tensor,  # [N]
    viewmats: torch.Tensor,  # [C, 4, 4]
    Ks: torch.Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pinhole EWA projection of 3D Gaussians, differentiable by autograd.

    Returns ``means2d`` [C, N, 2], ``conics`` [C, N, 3] (upper triangle of the inverse blurred 2D
    covariance: a, b, c), ``depths`` [C, N] (camera z), ``radii`` [C, N, 2] int32 (0 = culled). Culled
    entries hold zeros, as in gsplat, and get zero gradients.
    """
    C, N = viewmats.shape[0], means.shape[0]
    M = quat_scale_to_rs_t(quats, scales)  # [3, 3, N]
    Rc = viewmats[:, :3, :3]  # [C, 3, 3]
    tc = viewmats[:, :3, 3]  # [C, 3]
    means_c = torch.matmul(Rc, means.t()) + tc[:, :, None]  # [C, 3, N]
    x, y, tz = means_c[:, 0], means_c[:, 1], means_c[:, 2]  # [C, N]

    in_depth = (tz > near_plane) & (tz < far_plane)
    # Substitute a harmless depth where culled so no inf/NaN reaches autograd through the masked branch.
    z = torch.where(in_depth, tz, torch.ones_like(tz))
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    rz = 1.0 / z
    u, v = x * rz, y * rz  # normalised image coordinates [C, N]
    # Jacobian evaluated at a point clamped to 1.3x the field of view (gsplat/3DGS convention).
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    uc = torch.minimum(torch.maximum(u, -lim_x_neg), lim_x_pos)
    vc = torch.minimum(torch.maximum(v, -lim_y_neg), lim_y_pos)

    # J = [[fx/z, 0, -fx*uc/z], [0, fy/z, -fy*vc/z]]; rows of P = J Rc M [C, 3, N] give cov2d = P P^T.
    RcM = torch.matmul(Rc, M.reshape(3, 3 * N)).reshape(C, 3, 3, N)  # [C, 3(row), 3(col k), N]
    a0 = (fx * rz)[:, None, :]
    a2 = (-fx * uc * rz)[:, None, :]
    b1 = (fy * rz)[:, None, :]
    b2 = (-fy * vc * rz)[:, None, :]
    P0 = a0 * RcM[:, 0] + a2 * RcM[:, 2]  # [C, 3, N]
    P1 = b1 * RcM[:, 1] + b2 * RcM[:, 2]
    s00 = (P0 * P0).sum(1) + eps2d  # [C, N]
    s01 = (P0 * P1).sum(1)
    s11 = (P1 * P1).sum(1) + eps2d
    det = s00 * s11 - s01 * s01
    rdet = 1.0 / det.clamp_min(1e-30)  # det <= 0 is culled below; this only keeps values finite
    conics = torch.stack([s11 * rdet, -s01 * rdet, s00 * rdet], dim=-1)  # [C, N, 3]
    means2d = torch.stack([fx * u + cx, fy * v + cy], dim=-1)  # [C, N, 2]

    with torch.no_grad():
        op = opacities.detach()[None, :].expand(C, -1)
        op_ok = op >= ALPHA_THRESHOLD
        # Opacity-aware box: beyond it alpha < 1/255 (gsplat >= 1.4, arXiv 2402.00525 B.2).
        extend = torch.sqrt(2.0 * torch.log(torch.clamp(op, min=ALPHA_THRESHOLD) / ALPHA_THRESHOLD))
        extend = torch.clamp(extend, max=RADIUS_EXTEND_MAX)
        rx = torch.ceil(extend * torch.sqrt(s00.detach().clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(s11.detach().clamp_min(0)))
        md = means2d.detach()
        inside = (md[..., 0] + rx > 0) & (md[..., 0] - rx < width) & (md[..., 1] + ry > 0) & (md[..., 1] - ry < height)
        valid = in_depth & (det.detach() > 0) & op_ok & ~((rx <= radius_clip) & (ry <= radius_clip)) & inside
        # Boxes far beyond the image are clipped when binned; keep the int cast in range.
        big = float(4 * max(width, height) + 16)
        radii = torch.stack([rx.clamp(max=big), ry.clamp(max=big)], dim=-1)
        radii = torch.where(valid[..., None], radii, torch.zeros_like(radii)).to(torch.int32)

    # Zero culled entries like gsplat does (a multiply is cheaper in autograd than torch.where).
    fmask = valid.to(means2d.dtype)
    means2d = means2d * fmask[..., None]
    conics = conics * fmask[..., None]
    depths = tz * fmask
    return means2d, conics, depths, radii


@contextmanager
def torch_threads(n: int):
    """Temporarily cap torch's intra-op thread count at n (n <= 0: no change)."""
    old = torch.get_num_threads()
    if n <= 0 or old <= n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class _IsolatedGraph(torch.autograd.Function):
    """Run a torch function as one autograd node whose forward and backward both run under ``torch_threads``.

    The inner graph is built from detached copies of the inputs and differentiated with
    ``torch.autograd.grad`` in backward, so the thread cap also covers the backward pass (which the
    caller triggers later, outside any context we could hold open). First-order gradients only.
    """

    @staticmethod
    def forward(ctx, fn, n_threads, *inputs):
        ctx.set_materialize_grads(False)  # unused outputs give None, not zero tensors built outside the cap
        with torch_threads(n_threads), torch.enable_grad():
            leaves = [
                x.detach().requires_grad_(x.requires_grad) if isinstance(x, torch.Tensor) and x.is_floating_point()
                else x
                for x in inputs
            ]
            outs = fn(*leaves)
        ctx.n_threads = n_threads
        ctx.leaves = leaves
        ctx.outs = outs
        ctx.mark_non_differentiable(*[o for o in outs if not o.is_floating_point()])
        return tuple(o.detach() for o in outs)

    @staticmethod
    def backward(ctx, *grads):
        leaves, outs = ctx.leaves, ctx.outs
        want = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor) and x.requires_grad]
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
        result = [None] * len(leaves)
        if want and pairs:
            with torch_threads(ctx.n_threads):
                gs = torch.autograd.grad(
                    [o for o, _ in pairs], [leaves[i] for i in want], [g for _, g in pairs], allow_unused=True
                )
            for i, g in zip(want, gs):
                result[i] = g
        ctx.leaves = ctx.outs = None
        return (None, None, *result)


def run_isolated(fn: Callable[..., tuple], *inputs, n_threads: int | None = None) -> tuple:
    """``fn(*inputs)`` (a tuple of tensors) under a torch thread cap, forward and backward (see TORCH_THREADS)."""
    n = TORCH_THREADS if n_threads is None else n_threads
    needs_grad = torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in inputs)
    if n <= 0:
        return fn(*inputs)
    if not needs_grad:
        with torch_threads(n):
            return fn(*inputs)
    return _IsolatedGraph.apply(fn, n, *inputs)


# --------------------------------------------------------------------------------------------------
# 2. numba kernels
# --------------------------------------------------------------------------------------------------


@njit(cache=True)
def _bin_gaussians(means2d, radii, order, width, height, tile_size, tiles_x, tiles_y):  # pragma: no cover
    """Tile binning with a depth-stable counting sort.

    means2d [C*N, 2] f32, radii [C*N, 2] i32, order [C, N] (indices sorted by depth per camera).
    Returns rects [C*N, 4] i32 (inclusive pixel ranges x0, x1, y0, y1; x1 < x0 when empty),
    tile_offsets [C*tiles_y*tiles_x + 1] i64, flat_ids [n_isects] i64 (indices into C*N).
    """
    C, N = order.shape
    n_img_tiles = tiles_x * tiles_y
    rects = np.empty((C * N, 4), np.int32)
    counts = np.zeros(C * n_img_tiles + 1, np.int64)
    for g in range(C * N):
        rects[g, 0] = 0
        rects[g, 1] = -1
        rects[g, 2] = 0
        rects[g, 3] = -1
        rxi = radii[g, 0]
        ryi = radii[g, 1]
        if rxi <= 0 or ryi <= 0:
            continue
        mx = np.float64(means2d[g, 0])
        my = np.float64(means2d[g, 1])
        # pixel p is inside when its centre p + 0.5 lies within [m - r, m + r]
        xa = max(0.0, math.ceil(mx - rxi - 0.5))
        xb = min(width - 1.0, math.floor(mx + rxi - 0.5))
        ya = max(0.0, math.ceil(my - ryi - 0.5))
        yb = min(height - 1.0, math.floor(my + ryi - 0.5))
        if xb < xa or yb < ya:
            continue
        x0, x1, y0, y1 = int(xa), int(xb), int(ya), int(yb)
        rects[g, 0] = x0
        rects[g, 1] = x1
        rects[g, 2] = y0
        rects[g, 3] = y1
        base = (g // N) * n_img_tiles
        for ty in range(y0 // tile_size, y1 // tile_size + 1):
            for tx in range(x0 // tile_size, x1 // tile_size + 1):
                counts[base + ty * tiles_x + tx + 1] += 1
    for i in range(C * n_img_tiles):
        counts[i + 1] += counts[i]
    n_isects = counts[C * n_img_tiles]
    flat_ids = np.empty(n_isects, np.int64)
    cursor = counts[:-1].copy()
    for c in range(C):
        base = c * n_img_tiles
        for j in range(N):
            g = c * N + order[c, j]
            x0, x1, y0, y1 = rects[g, 0], rects[g, 1], rects[g, 2], rects[g, 3]
            if x1 < x0:
                continue
            for ty in range(y0 // tile_size, y1 // tile_size + 1):
                for tx in range(x0 // tile_size, x1 // tile_size + 1):
                    t = base + ty * tiles_x + tx
                    flat_ids[cursor[t]] = g
                    cursor[t] += 1
    return rects, counts, flat_ids


@njit(inline="always", cache=True)
def _ellipse_setup(ca, cb, cc, op):  # pragma: no cover
    """Per-Gaussian constants for the exact alpha >= 1/255 region {sigma <= s_max = log(255 * opacity)}.

    Returns (ok, k1 = 2 a s_max, detc = a c - b^2, inv_a, ymax = max |dy| inside the region), float64.
    ok is False for a non positive-definite conic (then callers scan the whole box).
    """
    a = np.float64(ca)
    b = np.float64(cb)
    c = np.float64(cc)
    s_max = math.log(max(np.float64(op), 1e-30) * 255.0)
    detc = a * c - b * b
    if a <= 0.0 or detc <= 0.0:
        return False, 0.0, 0.0, 0.0, 0.0
    s_max = max(s_max, 0.0)
    k1 = 2.0 * a * s_max
    return True, k1, detc, 1.0 / a, math.sqrt(k1 / detc)


@njit(inline="always", cache=True)
def _row_span(ok, k1, detc, inv_a, cb, mx, dy, xa, xb):  # pragma: no cover
    """Pixel columns [lo, hi] within [xa, xb] of a row where sigma <= s_max.

    Solves 0.5 a dx^2 + b dy dx + 0.5 c dy^2 - s_max <= 0 for dx = mx - (px + 0.5) in float64 and widens the
    span by 0.01 px; the per-pixel alpha test stays the real criterion, so the span only has to be a
    superset of the pixels that can contribute.
    """
    if not ok:
        return xa, xb
    disc = k1 - detc * dy * dy
    if disc < 0.0:
        return 1, 0
    sq = math.sqrt(disc)
    bdy = np.float64(cb) * dy
    dx_lo = (-bdy - sq) * inv_a
    dx_hi = (-bdy + sq) * inv_a
    lo = max(xa, int(math.ceil(mx - 0.5 - dx_hi - 0.01)))  # noqa: RUF046 (numba)
    hi = min(xb, int(math.floor(mx - 0.5 - dx_lo + 0.01)))  # noqa: RUF046 (numba)
    return lo, hi


@njit(inline="always", cache=True)
def _tile_range(t, n_img_tiles, tiles_x, tile_size, width, height):  # pragma: no cover
    c = t // n_img_tiles
    r = t - c * n_img_tiles
    ty = r // tiles_x
    tx = r - ty * tiles_x
    x0 = tx * tile_size
    y0 = ty * tile_size
    return c, x0, y0, min(x0 + tile_size, width), min(y0 + tile_size, height)


@njit(inline="always", cache=True)
def _gaussian(g, means2d, conics, opacities):  # pragma: no cover
    """Gaussian g's screen parameters: (mx, my, conic a, b, c, opacity), float32."""
    return means2d[g, 0], means2d[g, 1], conics[g, 0], conics[g, 1], conics[g, 2], opacities[g]


@njit(inline="always", cache=True)
def _tile_footprint(ok, ymax, my, rects, g, x0, y0, x1, y1):  # pragma: no cover
    """Columns [xa, xb] and rows [ya, yb] of the tile [x0, x1) x [y0, y1) that the Gaussian's
    alpha >= 1/255 region can touch (its bounding rect, rows narrowed by the exact ellipse when ok)."""
    xa = max(rects[g, 0], x0)
    xb = min(rects[g, 1], x1 - 1)
    ya = max(rects[g, 2], y0)
    yb = min(rects[g, 3], y1 - 1)
    if ok:
        myd = np.float64(my)
        ya = max(ya, int(math.ceil(myd - 0.5 - ymax - 0.01)))  # noqa: RUF046 (numba)
        yb = min(yb, int(math.floor(myd - 0.5 + ymax + 0.01)))  # noqa: RUF046 (numba)
    return xa, xb, ya, yb


@njit(parallel=True, fastmath=True, cache=True)
def _forward_kernel(
    means2d, conics, colors, opacities, rects, tile_offsets, flat_ids,
    n_cams, height, width, tile_size, tiles_x, tiles_y,
    tile_order, out_color, out_T, out_last,
):  # pragma: no cover
    """Front-to-back compositing per tile. out_color [C, H, W, D], out_T [C, H, W], out_last [C, H, W].

    tile_order [C * tiles] visits long tile lists first; with chunk size 1 this balances the threads.
    """
    D = colors.shape[1]
    n_img_tiles = tiles_x * tiles_y
    half = np.float32(0.5)
    one = np.float32(1.0)
    for i in prange(n_cams * n_img_tiles):
        t = tile_order[i]
        c, x0, y0, x1, y1 = _tile_range(t, n_img_tiles, tiles_x, tile_size, width, height)
        pw = x1 - x0
        ph = y1 - y0
        start = tile_offsets[t]
        end = tile_offsets[t + 1]
        # Per-pixel state, flat p = iy * pw + ix. A finished pixel keeps its T negated (T never reaches 0).
        T = np.ones(ph * pw, np.float32)
        acc = np.zeros(ph * pw * D, np.float32)
        last = np.full(ph * pw, start - 1, np.int64)
        n_left = ph * pw
        for k in range(start, end):
            g = flat_ids[k]
            mx, my, ca, cb, cc, op = _gaussian(g, means2d, conics, opacities)
            ok, k1, detc, inv_a, ymax = _ellipse_setup(ca, cb, cc, op)
            xa, xb, ya, yb = _tile_footprint(ok, ymax, my, rects, g, x0, y0, x1, y1)
            mxd = np.float64(mx)
            for py in range(ya, yb + 1):
                dy = my - (np.float32(py) + half)
                pxa, pxb = _row_span(ok, k1, detc, inv_a, cb, mxd, np.float64(dy), xa, xb)
                hcy = half * cc * dy * dy
                bdy = cb * dy
                row = (py - y0) * pw - x0
                for px in range(pxa, pxb + 1):
                    p = row + px
                    tp = T[p]
                    if tp < 0:
                        continue
                    dx = mx - (np.float32(px) + half)
                    sigma = (half * ca * dx + bdy) * dx + hcy
                    if sigma < 0:
                        continue
                    alpha = min(_F32_ALPHA_MAX, op * np.exp(-sigma))
                    if alpha < _F32_ALPHA_THRESHOLD:
                        continue
                    next_T = tp * (one - alpha)
                    if next_T <= _F32_T_MIN:
                        T[p] = -tp
                        n_left -= 1
                        continue
                    w = alpha * tp
                    for d in range(D):
                        acc[p * D + d] += colors[g, d] * w
                    T[p] = next_T
                    last[p] = k
            if n_left == 0:
                break
        for iy in range(ph):
            for ix in range(pw):
                p = iy * pw + ix
                out_T[c, y0 + iy, x0 + ix] = abs(T[p])
                out_last[c, y0 + iy, x0 + ix] = last[p]
                for d in range(D):
                    out_color[c, y0 + iy, x0 + ix, d] = acc[p * D + d]


@njit(parallel=True, fastmath=True, cache=True)
def _backward_kernel(
    means2d, conics, colors, opacities, rects, tile_offsets, flat_ids,
    n_cams, height, width, tile_size, tiles_x, tiles_y,
    tile_order, final_T, last_ids, g_color, g_alpha, buf,
):  # pragma: no cover
    """Back-to-front gradient pass per tile.

    g_color [C, H, W, D], g_alpha [C, H, W] (grads of the background-free colour and of alpha).
    buf [S, C*N, 6 + D] accumulates d/d(means2d x, y, conic a, b, c, opacity, colors...) per slot: slot s
    takes tiles s, s + S, s + 2S, ... of tile_order, whichever thread runs it, so the sums (and the
    gradients) do not depend on the thread count or the scheduling.
    """
    D = colors.shape[1]
    n_img_tiles = tiles_x * tiles_y
    half = np.float32(0.5)
    one = np.float32(1.0)
    n_tiles = n_cams * n_img_tiles
    n_slots = buf.shape[0]
    for slot in prange(n_slots):  # every n_slots-th tile of tile_order, into its own gradient buffer
        for i in range(slot, n_tiles, n_slots):
            t = tile_order[i]
            c, x0, y0, x1, y1 = _tile_range(t, n_img_tiles, tiles_x, tile_size, width, height)
            pw = x1 - x0
            ph = y1 - y0
            npix = ph * pw
            start = tile_offsets[t]
            T = np.empty(npix, np.float32)  # transmittance behind the current Gaussian
            GT = np.empty(npix, np.float32)  # dL/dalpha_out * T_final
            last = np.empty(npix, np.int64)
            G = np.empty(npix * D, np.float32)
            S = np.zeros(npix * D, np.float32)  # colour accumulated behind the current Gaussian
            kmax = start - 1
            for iy in range(ph):
                for ix in range(pw):
                    p = iy * pw + ix
                    tf = final_T[c, y0 + iy, x0 + ix]
                    T[p] = tf
                    GT[p] = g_alpha[c, y0 + iy, x0 + ix] * tf
                    lk = last_ids[c, y0 + iy, x0 + ix]
                    last[p] = lk
                    kmax = max(kmax, lk)
                    for d in range(D):
                        G[p * D + d] = g_color[c, y0 + iy, x0 + ix, d]
            gcol = np.zeros(D, np.float32)
            for k in range(kmax, start - 1, -1):
                g = flat_ids[k]
                mx, my, ca, cb, cc, op = _gaussian(g, means2d, conics, opacities)
                ok, k1, detc, inv_a, ymax = _ellipse_setup(ca, cb, cc, op)
                xa, xb, ya, yb = _tile_footprint(ok, ymax, my, rects, g, x0, y0, x1, y1)
                mxd = np.float64(mx)
                gmx = np.float32(0.0)
                gmy = np.float32(0.0)
                gca = np.float32(0.0)
                gcb = np.float32(0.0)
                gcc = np.float32(0.0)
                gop = np.float32(0.0)
                for d in range(D):
                    gcol[d] = 0.0
                hit = False
                for py in range(ya, yb + 1):
                    dy = my - (np.float32(py) + half)
                    pxa, pxb = _row_span(ok, k1, detc, inv_a, cb, mxd, np.float64(dy), xa, xb)
                    hcy = half * cc * dy * dy
                    bdy = cb * dy
                    row = (py - y0) * pw - x0
                    for px in range(pxa, pxb + 1):
                        p = row + px
                        if last[p] < k:
                            continue
                        dx = mx - (np.float32(px) + half)
                        sigma = (half * ca * dx + bdy) * dx + hcy
                        if sigma < 0:
                            continue
                        vis = np.exp(-sigma)
                        raw = op * vis
                        alpha = min(_F32_ALPHA_MAX, raw)
                        if alpha < _F32_ALPHA_THRESHOLD:
                            continue
                        hit = True
                        ra = one / (one - alpha)
                        t_i = T[p] * ra  # transmittance in front of this Gaussian
                        w = alpha * t_i
                        g_a = GT[p] * ra
                        for d in range(D):
                            q = p * D + d
                            gd = G[q]
                            cd = colors[g, d]
                            gcol[d] += gd * w
                            g_a += gd * (cd * t_i - S[q] * ra)
                            S[q] += cd * w
                        T[p] = t_i
                        if raw <= _F32_ALPHA_MAX:
                            gop += vis * g_a
                            g_s = -raw * g_a
                            gca += half * dx * dx * g_s
                            gcb += dx * dy * g_s
                            gcc += half * dy * dy * g_s
                            gmx += g_s * (ca * dx + cb * dy)
                            gmy += g_s * (cc * dy + cb * dx)
                if hit:
                    buf[slot, g, 0] += gmx
                    buf[slot, g, 1] += gmy
                    buf[slot, g, 2] += gca
                    buf[slot, g, 3] += gcb
                    buf[slot, g, 4] += gcc
                    buf[slot, g, 5] += gop
                    for d in range(D):
                        buf[slot, g, 6 + d] += gcol[d]


# --------------------------------------------------------------------------------------------------
# 3. autograd glue
# --------------------------------------------------------------------------------------------------


def _np32(x: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to(torch.float32).reshape(shape).numpy())


class RasterizeToPixelsCPU(torch.autograd.Function):
    """Composite projected Gaussians; differentiable in means2d, conics, colors and opacities.

    forward(means2d [C, N, 2], conics [C, N, 3], colors [C, N, D], opacities [C, N], radii [C, N, 2] int,
    depths [C, N], width, height, tile_size) -> colors [C, H, W, D] (no background), alphas [C, H, W, 1].
    """

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, radii, depths, width, height, tile_size):
        ctx.set_materialize_grads(False)
        C, N = means2d.shape[:2]
        D = colors.shape[-1]
        tiles_x = (width + tile_size - 1) // tile_size
        tiles_y = (height + tile_size - 1) // tile_size
        m2 = _np32(means2d, (C * N, 2))
        co = _np32(conics, (C * N, 3))
        cl = _np32(colors, (C * N, D))
        op = _np32(opacities, (C * N,))
        rd = np.ascontiguousarray(radii.detach().to(torch.int32).reshape(C * N, 2).numpy())
        order = np.argsort(depths.detach().to(torch.float32).numpy(), axis=1, kind="stable")
        rects, offsets, flat_ids = _bin_gaussians(m2, rd, order, width, height, tile_size, tiles_x, tiles_y)
        tile_order = np.argsort(-np.diff(offsets), kind="stable")
        out_color = np.empty((C, height, width, D), np.float32)
        out_T = np.empty((C, height, width), np.float32)
        out_last = np.empty((C, height, width), np.int64)
        with numba.parallel_chunksize(1):
            _forward_kernel(
                m2, co, cl, op, rects, offsets, flat_ids, C, height, width, tile_size, tiles_x, tiles_y,
                tile_order, out_color, out_T, out_last,
            )
        ctx.np_state = (m2, co, cl, op, rects, offsets, flat_ids, tile_order, out_T, out_last)
        ctx.geom = (C, N, D, width, height, tile_size, tiles_x, tiles_y)
        ctx.dtypes = (means2d.dtype, conics.dtype, colors.dtype, opacities.dtype)
        color_t = torch.from_numpy(out_color).to(colors.dtype)
        alpha_t = torch.from_numpy(1.0 - out_T).unsqueeze(-1).to(colors.dtype)
        return color_t, alpha_t

    @staticmethod
    def backward(ctx, g_color, g_alpha):
        m2, co, cl, op, rects, offsets, flat_ids, tile_order, out_T, out_last = ctx.np_state
        C, N, D, width, height, tile_size, tiles_x, tiles_y = ctx.geom
        gc = np.zeros((C, height, width, D), np.float32) if g_color is None else _np32(g_color, (C, height, width, D))
        ga = np.zeros((C, height, width), np.float32) if g_alpha is None else _np32(g_alpha, (C, height, width))
        buf = np.zeros((GRAD_SLOTS, C * N, 6 + D), np.float32)
        with numba.parallel_chunksize(1):
            _backward_kernel(
                m2, co, cl, op, rects, offsets, flat_ids, C, height, width, tile_size, tiles_x, tiles_y,
                tile_order, out_T, out_last, gc, ga, buf,
            )
        grads = torch.from_numpy(buf.sum(axis=0)).reshape(C, N, 6 + D)  # slots added in a fixed order
        dt_m, dt_c, dt_col, dt_op = ctx.dtypes
        g_means2d = grads[..., 0:2].to(dt_m)
        g_conics = grads[..., 2:5].to(dt_c)
        g_opac = grads[..., 5].to(dt_op)
        g_colors = grads[..., 6:].to(dt_col)
        ctx.np_state = None
        return g_means2d, g_conics, g_colors, g_opac, None, None, None, None, None


def rasterize_to_pixels_cpu(
    means2d: torch.Tensor,  # [C, N, 2]
    conics: torch.Tensor,  # [C, N, 3]
    colors: torch.Tensor,  # [C, N, D]
    opacities: torch.Tensor,  # [C, N]
    radii: torch.Tensor,  # [C, N, 2] int
    depths: torch.Tensor,  # [C, N]
    width: int,
    height: int,
    tile_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable CPU compositing -> (colors [C, H, W, D] without background, alphas [C, H, W, 1])."""
    return RasterizeToPixelsCPU.apply(means2d, conics, colors, opacities, radii, depths, width, height, tile_size)
