"""Geometric flow and occlusion, checked against a tiny numpy ray-caster (ground plane + box) and closed forms."""

import numpy as np
import pytest
import torch

from scene_tools.cameras import Intrinsics, look_at
from scene_tools.flow import geometric_flow, sequence_flow, warp_backward
from simharmony.errors import InvalidCameraError, InvalidInputError, NonFiniteError, ShapeMismatchError

W, H = 120, 80
INTR = Intrinsics.from_fov(70.0, W, H)
K = INTR.K
BOX = (np.array([9.0, -1.0, 0.0]), np.array([11.0, 1.2, 1.8]))  # min, max corners at time t
SKY = np.array([0.7, 0.8, 0.95])


def _ground_color(p):
    x, y = p[..., 0], p[..., 1]
    return np.stack([0.5 + 0.2 * np.sin(0.9 * x) * np.cos(0.7 * y), 0.45 + 0.2 * np.cos(0.8 * x + 0.5),
                     0.4 + 0.15 * np.sin(0.6 * y + 0.3 * x)], -1)


def _box_color(local):
    s = local.sum(-1)
    return np.stack([0.8 + 0.1 * np.sin(1.5 * s), 0.2 + 0.1 * np.cos(1.1 * local[..., 2]), 0.25 + 0.1 * np.sin(s)], -1)


def _cast(origins, dirs, box):
    """First hit along rays o + t d (t > 0): returns t (inf if none), hit point, kind 0 none / 1 ground / 2 box."""
    t_g = np.where(dirs[..., 2] < -1e-12, -origins[..., 2] / np.where(dirs[..., 2] < -1e-12, dirs[..., 2], -1), np.inf)
    lo, hi = box
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dirs
        t1, t2 = (lo - origins) * inv, (hi - origins) * inv
    t_near = np.nanmax(np.minimum(t1, t2), -1)
    t_far = np.nanmin(np.maximum(t1, t2), -1)
    t_b = np.where((t_far >= t_near) & (t_near > 1e-9), t_near, np.inf)
    t = np.minimum(t_g, t_b)
    kind = np.where(np.isinf(t), 0, np.where(t_b <= t_g, 2, 1))
    pts = origins + dirs * np.where(np.isfinite(t), t, 0)[..., None]
    return t, pts, kind


def _render(c2w, box=BOX):
    """Point-sampled render at pixel centres: image [H, W, 3], z-depth [H, W], instance ids [H, W] (box = 5)."""
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T  # z_cam = 1, so t is the z-depth
    dirs = rays @ c2w[:3, :3].T
    t, pts, kind = _cast(np.broadcast_to(c2w[:3, 3], dirs.shape), dirs, box)
    img = np.where((kind == 1)[..., None], _ground_color(pts), SKY)
    img = np.where((kind == 2)[..., None], _box_color(pts - box[0]), img)
    return img, t, np.where(kind == 2, 5, 0).astype(np.int32), pts


def _cams():
    c_prev = look_at([0.0, 0.0, 1.6], [20.0, 0.0, 0.0])
    c_t = look_at([1.2, 0.6, 1.6], [20.0, -1.0, 0.2])  # forward, sideways and a small yaw
    return c_t, c_prev


def _gt_occluded(pts_t, c2w_prev, box_prev):
    """Ray-cast from the previous camera centre to each point: is something in front of it?"""
    o = np.broadcast_to(c2w_prev[:3, 3], pts_t.shape)
    d = pts_t - o
    t, _, _ = _cast(o, d, box_prev)
    return t < 1 - 1e-6


def test_warp_reproduces_frame_and_marks_disocclusions():
    c_t, c_prev = _cams()
    img_t, d_t, _, pts_t = _render(c_t)
    img_p, d_p, _, _ = _render(c_prev)
    flow, valid = geometric_flow(d_t, K, c_t, c_prev, depth_prev=d_p)
    assert flow.shape == (H, W, 2) and flow.dtype == np.float32 and valid.dtype == bool
    warped = warp_backward(img_p, flow)
    err = np.abs(warped - img_t).max(-1)
    near = valid & (d_t < 15)
    assert near.sum() > 0.4 * H * W
    assert err[near].mean() < 0.01 and np.percentile(err[near], 99) < 0.1, (err[near].mean(), err[near].max())
    assert not valid[np.isinf(d_t)].any()  # sky

    # disocclusions: ground behind the box that was hidden at t-1 (the camera moved sideways)
    in_frame = np.isfinite(d_t)
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    inside = (u + flow[..., 0] >= 0) & (u + flow[..., 0] < W) & (v + flow[..., 1] >= 0) & (v + flow[..., 1] < H)
    occ = _gt_occluded(pts_t, c_prev, BOX) & in_frame & inside
    assert occ.sum() >= 20, occ.sum()  # the scene really has disocclusions
    assert (~valid[occ]).mean() >= 0.97, (~valid[occ]).mean()
    visible = in_frame & inside & ~occ
    assert valid[visible].mean() > 0.95, valid[visible].mean()
    # without depth_prev no occlusion test is made: the hidden pixels come back as valid
    _, valid_no_occ = geometric_flow(d_t, K, c_t, c_prev)
    assert valid_no_occ[occ].mean() > 0.9


def test_wrong_flow_would_fail():
    """The warp check is sensitive: shifting the flow by half a pixel (a pixel-centre bug) breaks it."""
    c_t, c_prev = _cams()
    img_t, d_t, _, _ = _render(c_t)
    img_p, d_p, _, _ = _render(c_prev)
    flow, valid = geometric_flow(d_t, K, c_t, c_prev, depth_prev=d_p)
    near = valid & (d_t < 15)
    good = np.abs(warp_backward(img_p, flow) - img_t).max(-1)[near].mean()
    bad = np.abs(warp_backward(img_p, flow + 0.5) - img_t).max(-1)[near].mean()
    assert bad > 2 * good


def test_moving_box_object_motion():
    c_t, c_prev = _cams()
    shift = np.array([1.0, -2.0, 0.0])  # the box was here at t-1 relative to t
    box_prev = (BOX[0] + shift, BOX[1] + shift)
    img_t, d_t, ids_t, pts_t = _render(c_t)
    img_p, d_p, ids_p, _ = _render(c_prev, box_prev)
    motion = np.eye(4)
    motion[:3, 3] = shift
    flow, valid = geometric_flow(d_t, K, c_t, c_prev, instance_ids_t=ids_t, object_motion={5: motion}, depth_prev=d_p)
    box = ids_t == 5
    assert box.sum() > 200
    assert valid[box].mean() > 0.9
    err = np.abs(warp_backward(img_p, flow) - img_t).max(-1)
    assert err[valid & box].mean() < 0.01 and err[valid & (d_t < 15)].mean() < 0.01
    # ground that the box covered at t-1 is now revealed: ray-cast ground truth
    pts_prev = np.where(box[..., None], pts_t + shift, pts_t)
    occ = _gt_occluded(pts_prev, c_prev, box_prev) & np.isfinite(d_t)
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    occ &= (u + flow[..., 0] >= 0) & (u + flow[..., 0] < W) & (v + flow[..., 1] >= 0) & (v + flow[..., 1] < H)
    # depth alone cannot see ground hidden right behind the box's base (its depth matches the box face
    # within rel_tol there); instance ids at t-1 can
    assert occ.sum() > 50 and (~valid[occ]).mean() >= 0.85
    _, valid_ids = geometric_flow(d_t, K, c_t, c_prev, instance_ids_t=ids_t, object_motion={5: motion},
                                  depth_prev=d_p, instance_ids_prev=ids_p)
    assert (~valid_ids[occ]).mean() >= 0.99
    assert valid_ids[box].mean() > 0.8 and valid_ids[~box & ~occ & np.isfinite(d_t) & (d_t < 15)].mean() > 0.9
    # treating the box as static is wrong: its pixels fail the occlusion test
    _, valid_static = geometric_flow(d_t, K, c_t, c_prev, depth_prev=d_p)
    assert valid_static[box].mean() < 0.3


def test_pure_rotation_matches_homography():
    rng = np.random.default_rng(1)
    c_t = look_at([3.0, 2.0, 1.5], [10.0, 1.0, 1.0])
    c_prev = look_at([3.0, 2.0, 1.5], [10.0, 3.0, 2.0])  # same centre, different orientation
    depth = rng.uniform(2, 50, (H, W))
    depth[:5] = np.inf  # points at infinity follow the same homography
    flow, valid = geometric_flow(depth, K, c_t, c_prev)
    Hm = K @ c_prev[:3, :3].T @ c_t[:3, :3] @ np.linalg.inv(K)
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    q = np.stack([u, v, np.ones_like(u)], -1) @ Hm.T
    expected = q[..., :2] / q[..., 2:] - np.stack([u, v], -1)
    assert np.abs(flow - expected).max() < 1e-3
    assert valid[5:].mean() > 0.5 and not valid[:5].any()


def test_forward_motion_fronto_parallel_plane():
    """Camera moving dz along its axis towards a plane at depth Z: p_prev - c = (p - c) Z / (Z + dz)."""
    Z, dz = 7.0, 0.8
    c_prev = np.eye(4)
    c_t = np.eye(4)
    c_t[2, 3] = dz
    flow, valid = geometric_flow(np.full((H, W), Z), K, c_t, c_prev)
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    c = np.array([K[0, 2], K[1, 2]])
    p = np.stack([u, v], -1)
    assert np.allclose(flow, (p - c) * (Z / (Z + dz) - 1), atol=1e-4)
    assert valid.all()
    # moving backwards instead: the border pixels leave the previous frame
    c_t[2, 3] = -dz
    _, valid = geometric_flow(np.full((H, W), Z), K, c_t, c_prev)
    assert not valid[0].any() and not valid[:, 0].any() and valid[H // 2, W // 2]


def test_behind_camera_and_zero_depth():
    c_prev = np.eye(4)
    c_t = np.eye(4)
    c_t[2, 3] = 5.0  # the previous camera is 5 m behind; points at depth 2 are in front of both
    d = np.full((H, W), 2.0)
    d[0, 0] = 0.0
    c_t2 = look_at([0, 0, 0], [0, 0, -1], up=(0, 1, 0))  # turned around: everything is behind c_prev
    _, valid = geometric_flow(d, K, c_t, c_prev)
    assert not valid[0, 0] and valid[H // 2, W // 2]
    flow, valid = geometric_flow(d, K, c_t2, c_prev)
    assert not valid.any() and np.all(flow == 0)


def test_torch_inputs_and_sequence():
    c_t, c_prev = _cams()
    _, d_t, _, _ = _render(c_t)
    _, d_p, _, _ = _render(c_prev)
    f_np, v_np = geometric_flow(d_t, K, c_t, c_prev, depth_prev=d_p)
    f_t, v_t = geometric_flow(torch.from_numpy(d_t).float(), torch.from_numpy(K), torch.from_numpy(c_t),
                              torch.from_numpy(c_prev), depth_prev=torch.from_numpy(d_p))
    assert isinstance(f_t, torch.Tensor) and f_t.shape == (H, W, 2) and v_t.dtype == torch.bool
    assert np.abs(f_t.numpy() - f_np)[v_np].max() < 1e-2  # float32 depth input
    img = torch.rand(H, W, 3)
    assert torch.allclose(warp_backward(img, torch.zeros(H, W, 2)), img)
    flows, valid = sequence_flow(np.stack([d_p, d_t]), INTR, np.stack([c_prev, c_t]))
    assert not valid[0].any() and np.array_equal(valid[1], v_np) and np.allclose(flows[1], f_np)


def test_warp_backward_bilinear_reference():
    rng = np.random.default_rng(0)
    img = rng.random((6, 7, 2)).astype(np.float32)
    flow = np.zeros((6, 7, 2))
    flow[..., 0], flow[..., 1] = 0.25, 0.5
    out = warp_backward(img, flow)
    # pixel (x=2, y=3) samples at (2.25, 3.5)
    ref = 0.5 * (0.75 * img[3, 2] + 0.25 * img[3, 3]) + 0.5 * (0.75 * img[4, 2] + 0.25 * img[4, 3])
    assert np.allclose(out[3, 2], ref, atol=1e-6) and out.dtype == np.float32
    assert warp_backward(np.zeros((6, 7), np.uint8), flow).shape == (6, 7)


def test_bad_inputs():
    c = np.eye(4)
    d = np.ones((H, W))
    with pytest.raises(ShapeMismatchError):
        geometric_flow(np.ones((H, W, 1)), K, c, c)
    with pytest.raises(ShapeMismatchError):
        geometric_flow(d, np.eye(4), c, c)
    bad_k = K.copy()
    bad_k[0, 0] = -5
    with pytest.raises(InvalidCameraError, match="focal"):
        geometric_flow(d, bad_k, c, c)
    with pytest.raises(NonFiniteError):
        geometric_flow(np.full((H, W), np.nan), K, c, c)
    skew = c.copy()
    skew[0, 1] = 0.3
    with pytest.raises(InvalidCameraError, match="orthonormal"):
        geometric_flow(d, K, skew, c)
    with pytest.raises(ShapeMismatchError):
        geometric_flow(d, K, c, c, depth_prev=np.ones((H + 1, W)))
    with pytest.raises(ShapeMismatchError):
        geometric_flow(d, K, c, c, instance_ids_t=np.zeros((H, W + 1), np.int32), object_motion={1: np.eye(4)})
    with pytest.raises(InvalidInputError, match="instance_ids_t"):
        geometric_flow(d, K, c, c, object_motion={1: np.eye(4)})
    with pytest.raises(InvalidCameraError):
        geometric_flow(d, K, c, c, instance_ids_t=np.zeros((H, W), np.int32), object_motion={1: 2 * np.eye(4)})
    with pytest.raises(InvalidInputError):
        geometric_flow(d, K, c, c, rel_tol=0)
    with pytest.raises(ShapeMismatchError):
        warp_backward(np.zeros((H, W, 3)), np.zeros((H, W - 1, 2)))
    with pytest.raises(ShapeMismatchError):
        sequence_flow(np.ones((2, H, W)), K, np.stack([c, c, c]))
