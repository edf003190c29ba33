"""Geometric (backward) optical flow and occlusion from depth, intrinsics and poses.

Conventions (see :mod:`scene_tools.cameras`): depth is z-depth in the OpenCV camera (z forward), inf
where nothing was hit; pixel (u, v) has its centre at (u + 0.5, v + 0.5); poses are camera-to-world.

Backward flow t -> t-1: pixel p at time t shows the same surface point as position ``p + flow[p]`` at
time t-1, so ``warp_backward(image_prev, flow)`` re-creates frame t from frame t-1 wherever ``valid``.
Moving objects are handled per instance id with ``object_motion``: {id: 4x4 world transform taking the
object's points at time t to their position at t-1}.

Occlusion test (when ``depth_prev`` is given): the inverse depth of ``depth_prev`` is interpolated
bilinearly at the projected position (inverse depth is affine in the image for a plane, so slanted
ground is matched exactly, and sky (inf) blends in as 0) and compared with the inverse of the point's
projected depth; a relative difference above ``rel_tol`` means something else is visible there at t-1.
Pixels next to depth edges at t-1 are therefore conservatively marked invalid.

numpy in, numpy out; torch tensors are accepted too (computed on CPU in float64, returned as tensors on
the input's device; not differentiable).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from scene_tools.cameras import Intrinsics, check_pose, check_poses
from simharmony.errors import InvalidCameraError, InvalidInputError, NonFiniteError, ShapeMismatchError
from simharmony.utils.arrays import to_numpy as _to_numpy

_MIN_Z = 1e-6  # points closer than this in front of the previous camera count as behind it


def check_K(K: Any) -> np.ndarray:
    """Validate an intrinsic matrix ([3, 3] array or :class:`Intrinsics`) -> float64 [3, 3]."""
    if isinstance(K, Intrinsics):
        return K.K
    K = np.asarray(_to_numpy(K)[0], dtype=np.float64)
    if K.shape != (3, 3):
        raise ShapeMismatchError(f"K must be a 3x3 intrinsic matrix, got shape {K.shape}")
    if not np.isfinite(K).all():
        raise NonFiniteError("K contains NaN or inf")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InvalidCameraError(f"K must have positive focal lengths, got fx={K[0, 0]}, fy={K[1, 1]}")
    if not np.allclose(K[2], [0, 0, 1]) or K[1, 0] != 0:
        raise InvalidCameraError(f"K must be upper triangular with last row [0, 0, 1], got {K.tolist()}")
    return K


def _check_depth(depth: np.ndarray, name: str) -> np.ndarray:
    d = np.asarray(depth, dtype=np.float64)
    if d.ndim != 2:
        raise ShapeMismatchError(f"{name} must be [H, W], got shape {list(d.shape)}")
    if np.isnan(d).any():
        raise NonFiniteError(f"{name} contains NaN (use inf for 'no hit')")
    return d


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample img [H, W, C] at continuous index coordinates x, y [...] (pixel i centred on i); borders clamp."""
    h, w = img.shape[:2]
    x = np.clip(x, 0.0, w - 1.0)
    y = np.clip(y, 0.0, h - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2) if w > 1 else np.zeros(x.shape, np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2) if h > 1 else np.zeros(y.shape, np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    ax, ay = (x - x0)[..., None], (y - y0)[..., None]
    top = img[y0, x0] * (1 - ax) + img[y0, x1] * ax
    bot = img[y1, x0] * (1 - ax) + img[y1, x1] * ax
    return top * (1 - ay) + bot * ay


def _neighbours_match(ids_prev: np.ndarray, x: np.ndarray, y: np.ndarray, ids_t: np.ndarray) -> np.ndarray:
    """True where every pixel of ids_prev with non-zero bilinear weight at (x, y) equals ids_t."""
    h, w = ids_prev.shape
    x = np.clip(x, 0.0, w - 1.0)
    y = np.clip(y, 0.0, h - 1.0)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    ok = np.ones(x.shape, bool)
    for dx in (0, 1):
        for dy in (0, 1):
            wx = (x - x0) if dx else (1 - (x - x0))
            wy = (y - y0) if dy else (1 - (y - y0))
            xi, yi = np.minimum(x0 + dx, w - 1), np.minimum(y0 + dy, h - 1)
            ok &= (wx * wy <= 1e-6) | (ids_prev[yi, xi] == ids_t)
    return ok


def geometric_flow(
    depth_t,
    K,
    c2w_t,
    c2w_prev,
    *,
    instance_ids_t=None,
    object_motion: Mapping[int, Any] | None = None,
    depth_prev=None,
    rel_tol: float = 0.03,
    instance_ids_prev=None,
) -> tuple[Any, Any]:
    """Backward flow t -> t-1 and its validity.

    Args:
        depth_t: [H, W] z-depth at time t (inf or <= 0 where nothing was hit; NaN is an error).
        K: [3, 3] intrinsics (or :class:`Intrinsics`), shared by both frames.
        c2w_t, c2w_prev: [4, 4] camera-to-world poses (OpenCV) at t and t-1.
        instance_ids_t: [H, W] integer instance ids at t; needed when ``object_motion`` is given.
        object_motion: {instance id: [4, 4] world transform from the object's pose at t to t-1}.
        depth_prev: [H, W] z-depth at t-1 for the occlusion test (optional).
        rel_tol: relative (inverse-)depth tolerance of the occlusion test.
        instance_ids_prev: [H, W] instance ids at t-1 (optional, needs ``instance_ids_t``): a pixel is
            also occluded when any of the 4 pixels it samples at t-1 has another id. Depth alone cannot
            see ground hidden right behind the base of an object (the depths agree there).

    Returns:
        flow [H, W, 2] float32 (dx, dy) in pixels: pixel p at t corresponds to p + flow[p] at t-1.
        valid [H, W] bool: False where depth_t is inf/<=0, the point lands behind the previous camera or
        outside the previous image, or (with ``depth_prev``) is occluded at t-1.
        Pixels with infinite depth get the flow of the point at infinity (rotation only) but stay invalid;
        pixels with depth <= 0 or behind the previous camera get zero flow.
    """
    depth_np, device = _to_numpy(depth_t)
    d = _check_depth(depth_np, "depth_t")
    h, w = d.shape
    K = check_K(K)
    T_t = check_pose(_to_numpy(c2w_t)[0], "c2w_t")
    T_p = check_pose(_to_numpy(c2w_prev)[0], "c2w_prev")
    if not (np.isfinite(rel_tol) and rel_tol > 0):
        raise InvalidInputError(f"rel_tol must be a positive number, got {rel_tol}")

    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T  # [H, W, 3], z = 1
    hit = np.isfinite(d) & (d > 0)
    at_inf = np.isposinf(d)
    d_safe = np.where(hit, d, 1.0)

    # world points at t; moving objects are carried to their t-1 position
    pts = (rays * d_safe[..., None]) @ T_t[:3, :3].T + T_t[:3, 3]
    if object_motion:
        if instance_ids_t is None:
            raise InvalidInputError("object_motion needs instance_ids_t to know which pixels belong to which object")
        ids = np.asarray(_to_numpy(instance_ids_t)[0])
        if ids.shape != (h, w):
            raise ShapeMismatchError(f"instance_ids_t must be [{h}, {w}] like depth_t, got {list(ids.shape)}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise InvalidInputError(f"instance_ids_t must be integers, got dtype {ids.dtype}")
        for inst, motion in object_motion.items():
            M = check_pose(_to_numpy(motion)[0], f"object_motion[{inst}]")
            sel = ids == int(inst)
            pts[sel] = pts[sel] @ M[:3, :3].T + M[:3, 3]
    elif instance_ids_t is not None and np.shape(_to_numpy(instance_ids_t)[0]) != (h, w):
        raise ShapeMismatchError(f"instance_ids_t must be [{h}, {w}] like depth_t")

    w2c_p = np.linalg.inv(T_p)
    cam = pts @ w2c_p[:3, :3].T + w2c_p[:3, 3]  # [H, W, 3] in the previous camera
    # points at infinity: only the rotation acts on the direction
    dirs_inf = rays @ (w2c_p[:3, :3] @ T_t[:3, :3]).T
    cam = np.where(at_inf[..., None], dirs_inf, cam)
    z = cam[..., 2]
    front = z > _MIN_Z
    z_safe = np.where(front, z, 1.0)
    proj = (cam / z_safe[..., None]) @ K.T
    px, py = proj[..., 0], proj[..., 1]
    flow = np.stack([px - u, py - v], -1)
    flow[~(front & (hit | at_inf))] = 0.0

    valid = hit & front & (px >= 0) & (px < w) & (py >= 0) & (py < h)
    if depth_prev is not None:
        dp = _check_depth(_to_numpy(depth_prev)[0], "depth_prev")
        if dp.shape != (h, w):
            raise ShapeMismatchError(f"depth_prev must be [{h}, {w}] like depth_t, got {list(dp.shape)}")
        inv_prev = np.where(np.isfinite(dp) & (dp > 0), 1.0 / np.where(dp > 0, dp, 1.0), 0.0)
        sampled = _bilinear(inv_prev[..., None], px - 0.5, py - 0.5)[..., 0]
        inv_z = 1.0 / z_safe
        valid &= np.abs(sampled - inv_z) <= rel_tol * inv_z
    if instance_ids_prev is not None:
        if instance_ids_t is None:
            raise InvalidInputError("instance_ids_prev needs instance_ids_t to compare against")
        ids_t = np.asarray(_to_numpy(instance_ids_t)[0])
        ids_p = np.asarray(_to_numpy(instance_ids_prev)[0])
        if ids_p.shape != (h, w) or ids_t.shape != (h, w):
            raise ShapeMismatchError(
                f"instance ids must be [{h}, {w}] like depth_t, got {list(ids_t.shape)} and "
                f"{list(ids_p.shape)}"
            )
        valid &= _neighbours_match(ids_p, px - 0.5, py - 0.5, ids_t)

    flow = flow.astype(np.float32)
    if device is not None:
        import torch

        return torch.from_numpy(flow).to(device), torch.from_numpy(valid).to(device)
    return flow, valid


def warp_backward(image_prev, flow) -> Any:
    """Sample image_prev [H, W] or [H, W, C] bilinearly at p + flow[p] (flow [H, W, 2]); borders clamp.

    Returns an array like ``image_prev`` (float32 for integer inputs; torch in, torch out). Values where
    the flow points outside the image are border-clamped and meaningless: use ``valid``.
    """
    img, device = _to_numpy(image_prev)
    fl = np.asarray(_to_numpy(flow)[0], dtype=np.float64)
    if img.ndim not in (2, 3):
        raise ShapeMismatchError(f"image_prev must be [H, W] or [H, W, C], got {list(img.shape)}")
    h, w = img.shape[:2]
    if fl.shape != (h, w, 2):
        raise ShapeMismatchError(f"flow must be [{h}, {w}, 2] to match image_prev, got {list(fl.shape)}")
    if not np.isfinite(fl).all():
        raise NonFiniteError("flow contains NaN or inf")
    out_dtype = img.dtype if np.issubdtype(img.dtype, np.floating) else np.float32
    src = img.astype(np.float64)
    src = src[..., None] if img.ndim == 2 else src
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    out = _bilinear(src, u + fl[..., 0], v + fl[..., 1])
    out = (out[..., 0] if img.ndim == 2 else out).astype(out_dtype)
    if device is not None:
        import torch

        return torch.from_numpy(out).to(device)
    return out


def sequence_flow(
    depths,
    K,
    poses,
    *,
    instance_ids=None,
    object_motions: list[Mapping[int, Any] | None] | None = None,
    occlusion: bool = True,
    rel_tol: float = 0.03,
) -> tuple[np.ndarray, np.ndarray]:
    """Backward flow of every frame of a sequence to the one before.

    depths [N, H, W], poses [N, 4, 4], instance_ids [N, H, W] (optional), object_motions: N entries
    (entry i maps frame i to i-1; entry 0 is ignored). With ``occlusion`` the previous depth (and
    instance ids, when given) are used for the occlusion test. Returns flows [N, H, W, 2] float32 and valid
    [N, H, W] bool; frame 0 has zero flow and is all invalid.
    """
    depths = np.asarray(_to_numpy(depths)[0])
    if depths.ndim != 3:
        raise ShapeMismatchError(f"depths must be [N, H, W], got {list(depths.shape)}")
    n, h, w = depths.shape
    poses = check_poses(_to_numpy(poses)[0])
    if len(poses) != n:
        raise ShapeMismatchError(f"{n} depth maps but {len(poses)} poses")
    if object_motions is not None and len(object_motions) != n:
        raise ShapeMismatchError(f"object_motions must have {n} entries, got {len(object_motions)}")
    ids = None if instance_ids is None else np.asarray(_to_numpy(instance_ids)[0])
    if ids is not None and ids.shape != (n, h, w):
        raise ShapeMismatchError(f"instance_ids must be [{n}, {h}, {w}], got {list(ids.shape)}")
    flows = np.zeros((n, h, w, 2), np.float32)
    valid = np.zeros((n, h, w), bool)
    for i in range(1, n):
        flows[i], valid[i] = geometric_flow(
            depths[i], K, poses[i], poses[i - 1],
            instance_ids_t=None if ids is None else ids[i],
            object_motion=None if object_motions is None else object_motions[i],
            depth_prev=depths[i - 1] if occlusion else None, rel_tol=rel_tol,
            instance_ids_prev=None if (ids is None or not occlusion) else ids[i - 1],
        )
    return flows, valid
