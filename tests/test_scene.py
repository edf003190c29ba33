"""Scenes: tracks, insertion, G-buffers (depth, masks, instance ids, flow), streaming, save/load, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation, Slerp

from scene_tools.assets import AssetBank, extract_asset
from scene_tools.cameras import Intrinsics, Trajectory, look_at, straight_trajectory
from scene_tools.flow import geometric_flow, warp_backward
from scene_tools.gaussians import GaussianScene
from scene_tools.scene import FrameSequence, ObjectTrack, RenderConfig, Scene, yaw_pose
from simharmony.errors import (
    ConfigError,
    CorruptFileError,
    InvalidCameraError,
    InvalidInputError,
    InvalidSceneError,
    MissingFileError,
    NonFiniteError,
    ShapeMismatchError,
    UnknownAssetError,
)

INTR = Intrinsics.from_fov(70.0, 64, 40)
POLE_ID = 2


# ---------------------------------------------------------------------------------------------- fixtures
def _texture(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Smooth colour pattern on the ground, so warping errors show up."""
    return torch.stack([
        0.5 + 0.35 * torch.sin(0.9 * x) * torch.cos(0.7 * y),
        0.5 + 0.3 * torch.cos(0.6 * x + 0.4 * y),
        0.45 + 0.25 * torch.sin(0.5 * y + 1.0),
    ], -1)


def ground(pole: bool = True, spacing: float = 0.35) -> GaussianScene:
    """Flat Gaussians on z = 0 for x in [-2, 30], y in [-7, 7]; optionally a pole (instance 2) at (12, -2.5)."""
    xs, ys = torch.arange(-2.0, 30.0, spacing), torch.arange(-7.0, 7.0, spacing)
    gx, gy = torch.meshgrid(xs, ys, indexing="ij")
    pts = torch.stack([gx, gy, torch.zeros_like(gx)], -1).reshape(-1, 3)
    g = GaussianScene.from_points(pts, _texture(pts[:, 0], pts[:, 1]).clamp(0, 1), scale=0.6 * spacing, opacity=0.95)
    g.log_scales[:, 2] = math.log(0.02)
    if not pole:
        return g
    zs = torch.arange(0.1, 3.0, 0.12)
    pole_pts = torch.stack([torch.full_like(zs, 12.0), torch.full_like(zs, -2.5), zs], -1)
    p = GaussianScene.from_points(pole_pts, torch.tensor([[0.9, 0.9, 0.2]]).expand(len(zs), 3), scale=0.12,
                                  opacity=0.95, instance_ids=torch.full((len(zs),), POLE_ID, dtype=torch.int32))
    return GaussianScene.concat([g, p])


def car_asset(sh_degree: int = 0):
    """A 4 x 1.8 x 1.5 m box car with a colour gradient along its length, extracted from a source scene."""
    xs, ys, zs = torch.arange(-2.0, 2.01, 0.25), torch.arange(-0.9, 0.91, 0.25), torch.arange(0.0, 1.51, 0.25)
    local = torch.stack(torch.meshgrid(xs, ys, zs, indexing="ij"), -1).reshape(-1, 3)
    x, z = local[:, 0], local[:, 2]
    col = torch.stack([0.5 + 0.4 * torch.sin(2.0 * x), 0.2 + 0.1 * z, 0.3 + 0.2 * torch.cos(1.5 * x)], -1)
    world = local + torch.tensor([30.0, 5.0, 0.0])
    src = GaussianScene.from_points(world, col, scale=0.18, opacity=0.97, sh_degree=sh_degree,
                                    instance_ids=torch.full((len(local),), 9, dtype=torch.int32))
    if sh_degree:
        g = torch.Generator().manual_seed(1)
        src.sh[:, 1:] = 0.6 * torch.randn(src.sh[:, 1:].shape, generator=g)
    return extract_asset(src, 9, category="vehicle", source="src-street", heading=0.0)


def traj(n: int = 3, speed: float = 5.0) -> Trajectory:
    return straight_trajectory(INTR, n, start=(0.0, 0.0, 1.6), speed_mps=speed, pitch_deg=-8.0)


# ---------------------------------------------------------------------------------------------- tracks
def test_track_interpolation_matches_scipy_slerp():
    rots = Rotation.from_euler("zyx", [[0.0, 0.0, 0.0], [1.2, 0.3, -0.2], [2.5, -0.4, 0.1]])
    times = np.array([0.0, 1.0, 3.0])
    poses = np.tile(np.eye(4), (3, 1, 1))
    poses[:, :3, :3] = rots.as_matrix()
    poses[:, :3, 3] = [[0, 0, 0], [2, 4, 0], [2, 8, 1]]
    track = ObjectTrack(times, poses)
    ref = Slerp(times, rots)
    for t in (0.25, 0.5, 1.0, 1.7, 2.9):
        p = track.pose_at(t)
        np.testing.assert_allclose(p[:3, :3], ref([t]).as_matrix()[0], atol=1e-9)
        np.testing.assert_allclose(p[:3, 3], [np.interp(t, times, poses[:, 0, 3]), np.interp(t, times, poses[:, 1, 3]),
                                              np.interp(t, times, poses[:, 2, 3])], atol=1e-12)
    # held outside the time range
    np.testing.assert_allclose(track.pose_at(-5.0), poses[0])
    np.testing.assert_allclose(track.pose_at(10.0), poses[-1])
    # motion maps points at t onto t_prev
    M = track.motion(2.0, 1.0)
    np.testing.assert_allclose(M @ track.pose_at(2.0), track.pose_at(1.0), atol=1e-12)
    assert not track.is_static and ObjectTrack.static(poses[1]).is_static


def test_track_bad_input():
    with pytest.raises(InvalidInputError, match="strictly increasing"):
        ObjectTrack(np.array([0.0, 0.0]), np.tile(np.eye(4), (2, 1, 1)))
    with pytest.raises(ShapeMismatchError):
        ObjectTrack(np.array([0.0, 1.0, 2.0]), np.tile(np.eye(4), (2, 1, 1)))
    bad = np.tile(np.eye(4), (2, 1, 1))
    bad[1, 0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        ObjectTrack(np.array([0.0, 1.0]), bad)
    with pytest.raises(NonFiniteError):
        ObjectTrack.static(np.eye(4)).pose_at(float("nan"))


def test_along_trajectory_straight_offsets():
    tr = traj(5, speed=8.0)  # along +x, 0.8 m per frame
    track = ObjectTrack.along_trajectory(tr, 3.0, forward_offset_m=6.0, ground_z=0.1)
    np.testing.assert_allclose(track.times, tr.times)
    ego = tr.positions
    np.testing.assert_allclose(track.poses[:, 0, 3], ego[:, 0] + 6.0, atol=1e-9)
    np.testing.assert_allclose(track.poses[:, 1, 3], 3.0, atol=1e-9)  # positive = left = +y
    np.testing.assert_allclose(track.poses[:, 2, 3], 0.1)
    np.testing.assert_allclose(track.poses[:, :3, :3], np.tile(np.eye(3), (5, 1, 1)), atol=1e-9)  # faces +x
    parked = ObjectTrack.along_trajectory(tr, -3.0, forward_offset_m=10.0, speed_scale=0.0)
    np.testing.assert_allclose(parked.poses[:, 0, 3], ego[0, 0] + 10.0, atol=1e-9)
    np.testing.assert_allclose(parked.poses[:, 1, 3], -3.0, atol=1e-9)
    fast = ObjectTrack.along_trajectory(tr, 3.0, speed_scale=2.0)  # beyond the path's end it goes straight on
    np.testing.assert_allclose(fast.poses[:, 0, 3], 2.0 * (ego[:, 0] - ego[0, 0]) + ego[0, 0], atol=1e-9)
    # a path heading along +y: left is -x, heading 90 degrees
    tr_y = straight_trajectory(INTR, 4, heading_deg=90.0)
    ty = ObjectTrack.along_trajectory(tr_y, 3.0)
    np.testing.assert_allclose(ty.poses[:, 0, 3], -3.0, atol=1e-9)
    np.testing.assert_allclose(ty.poses[:, :3, 0], np.tile([0.0, 1.0, 0.0], (4, 1)), atol=1e-9)


def test_along_trajectory_on_a_curve():
    # ego on a left-hand circle of radius 20 around the origin; 3 m to the left is radius 17
    R, n = 20.0, 12
    ang = np.linspace(0.0, 0.6, n)
    poses = []
    for a in ang:
        eye = np.array([R * math.sin(a), R - R * math.cos(a), 1.6]) - np.array([0.0, R, 0.0])
        fwd = np.array([math.cos(a), math.sin(a), 0.0])
        poses.append(look_at(eye, eye + fwd))
    tr = Trajectory(np.stack(poses), INTR)
    track = ObjectTrack.along_trajectory(tr, 3.0)
    xy = track.poses[:, :2, 3]
    np.testing.assert_allclose(np.linalg.norm(xy, axis=1), R - 3.0, atol=1e-6)
    yaw = np.arctan2(track.poses[:, 1, 0], track.poses[:, 0, 0])
    tangent = np.arctan2(xy[:, 1], xy[:, 0]) + math.pi / 2  # counter-clockwise travel
    err = np.angle(np.exp(1j * (yaw - tangent)))
    assert np.abs(err).max() < 0.03  # central differences on a 3-degree polyline


def test_along_trajectory_standing_ego():
    tr = traj(3, speed=0.0)
    track = ObjectTrack.along_trajectory(tr, 3.0, forward_offset_m=5.0, speed_scale=1.0)
    np.testing.assert_allclose(track.poses[:, :2, 3], np.tile([5.0, 3.0], (3, 1)), atol=1e-9)


# ---------------------------------------------------------------------------------------------- rendering
def test_render_depth_is_z_depth_of_the_ground_plane():
    scene = Scene(ground(pole=False), config=RenderConfig(background_color=(0.2, 0.3, 0.4)))
    f = scene.render_frame(look_at([2.0, 0.5, 4.0], [8.0, 0.0, 0.0]), intrinsics=INTR)
    assert not f.flow_valid.any() and (f.flow == 0).all() and f.index == 0 and f.time == 0.0
    assert f.rgb.shape == (40, 64, 3) and f.depth.shape == (40, 64) and f.instance_ids.dtype == torch.int32
    # analytic ray / plane intersection (independent reference): z-depth = -o_z / d_z with ray z = 1
    u, v = np.meshgrid(np.arange(64) + 0.5, np.arange(40) + 0.5)
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(INTR.K).T
    d = rays @ f.pose[:3, :3].T
    t = np.where(d[..., 2] < 0, -f.pose[2, 3] / np.minimum(d[..., 2], -1e-9), np.inf)
    near = (t < 12.0) & (f.alpha.numpy() > 0.5)
    assert near.sum() > 1000 and np.isfinite(f.depth.numpy()[near]).all()
    # expected depth of overlapping splats leans ~1 sigma (0.2 m here) towards the camera: a few percent
    rel = np.abs(f.depth.numpy()[near] - t[near]) / t[near]
    assert np.median(rel) < 0.04 and np.quantile(rel, 0.95) < 0.06
    # it is z-depth, not distance along the ray (which differs by up to 1/cos(35 deg) here)
    dist = (t * np.linalg.norm(rays, axis=-1))[near]
    assert np.median(np.abs(f.depth.numpy()[near] - dist) / dist) > 2 * np.median(rel)
    # sky: no hit -> background colour, zero alpha, infinite depth
    f = scene.render_frame(traj(1).poses[0], intrinsics=INTR)
    d = rays @ f.pose[:3, :3].T
    sky = d[..., 2] > 0.05
    assert sky.sum() > 50
    np.testing.assert_allclose(f.rgb.numpy()[sky], np.tile([0.2, 0.3, 0.4], (sky.sum(), 1)), atol=1e-6)
    assert np.isinf(f.depth.numpy()[sky]).all() and (f.alpha.numpy()[sky] < 1e-6).all()
    assert (f.instance_ids == 0).all() and (f.inserted_mask == 0).all()
    assert f.index == 1 and f.time == pytest.approx(0.1)


def _scene_with_car(pole: bool = True, **cfg) -> tuple[Scene, int]:
    scene = Scene(ground(pole=pole), name="test", config=RenderConfig(**cfg), intrinsics=INTR)
    iid = scene.insert(car_asset(), ObjectTrack.static(yaw_pose(9.0, 0.5, 0.0, 0.3)))
    return scene, iid


def test_insertion_changes_only_masked_pixels():
    pose = traj(1).poses[0]
    plain = Scene(ground(), intrinsics=INTR).render_frame(pose)
    scene, iid = _scene_with_car()
    assert iid == POLE_ID + 1  # above the background's max id
    f = scene.render_frame(pose)
    diff = (f.rgb - plain.rgb).abs().amax(-1)
    outside = f.inserted_mask == 0
    assert outside.sum() > 500 and diff[outside].max() < 1e-5
    inside = f.inserted_mask > 0.9
    assert inside.sum() > 60 and (diff[inside] > 0.02).float().mean() > 0.8
    # the mask equals the alpha of the car rendered alone where the car is in front of everything
    alone = Scene(GaussianScene.empty(), intrinsics=INTR)
    alone.insert(car_asset(), ObjectTrack.static(yaw_pose(9.0, 0.5, 0.0, 0.3)))
    fa = alone.render_frame(pose)
    a = fa.alpha
    assert (f.inserted_mask[a == 0] == 0).all()
    # where the car is solid and well above the road (ground splats near its wheels can sort in front)
    u, v = np.meshgrid(np.arange(64) + 0.5, np.arange(40) + 0.5)
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(INTR.K).T
    height = pose[2, 3] + fa.depth.numpy() * (rays @ pose[:3, :3].T)[..., 2]
    solid = (a > 0.99) & torch.from_numpy(height > 0.5)
    assert solid.sum() > 60
    assert (f.inserted_mask[solid] > 0.95).all()
    # the car hides the ground: depth there is the car's, nearer than the ground plane
    assert (f.depth[inside] < plain.depth[inside]).float().mean() > 0.9


def test_inserted_mask_and_instance_ids_agree():
    scene, iid = _scene_with_car()
    f = scene.render_frame(traj(1).poses[0])
    ids, m = f.instance_ids, f.inserted_mask
    assert set(torch.unique(ids).tolist()) == {0, POLE_ID, iid}
    assert (ids[m > 0.5] == iid).all()  # more than half the pixel's weight: always dominant
    assert (m[ids == iid] > 1 / 3 - 1e-6).all()  # dominant over background and empty space needs > 1/3
    assert (m[ids == POLE_ID] < 0.5).all()
    # overflow into extra passes gives the same ids; the "error" policy refuses
    few, _ = _scene_with_car(max_instance_channels=1)
    assert torch.equal(few.render_frame(traj(1).poses[0]).instance_ids, ids)
    strict, _ = _scene_with_car(max_instance_channels=1, instance_overflow="error")
    with pytest.raises(InvalidSceneError, match="max_instance_channels"):
        strict.render_frame(traj(1).poses[0])


def test_asset_sh_rotates_with_the_asset():
    """Rotating object and camera together about the object leaves the image unchanged (SH in the local frame)."""
    asset = car_asset(sh_degree=1)
    cam0 = look_at([-7.0, 2.0, 2.5], [0.0, 0.0, 0.7])

    def shot(obj_yaw: float, cam_yaw: float) -> torch.Tensor:
        s = Scene(GaussianScene.empty(sh_degree=1), intrinsics=INTR)
        s.insert(asset, ObjectTrack.static(yaw_pose(0.0, 0.0, 0.0, obj_yaw)))
        return s.render_frame(yaw_pose(0, 0, 0, cam_yaw) @ cam0).rgb

    base, both = shot(0.0, 0.0), shot(1.1, 1.1)
    np.testing.assert_allclose(both.numpy(), base.numpy(), atol=2e-4)
    assert (shot(0.0, 1.1) - base).abs().max() > 0.1  # the test can fail: viewpoint matters


# ---------------------------------------------------------------------------------------------- flow
def _warp_error(prev: torch.Tensor, cur: torch.Tensor, flow: torch.Tensor, sel: torch.Tensor) -> float:
    warped = warp_backward(prev, flow)
    return float((warped - cur).abs().mean(-1)[sel].mean())


def test_flow_static_scene_warps_previous_frame():
    scene = Scene(ground(), intrinsics=INTR)
    frames = scene.render(traj(3), progress=False)
    f0, f1 = frames[0], frames[1]
    assert not f0.flow_valid.any()
    v = f1.flow_valid
    assert v.float().mean() > 0.3
    err = _warp_error(f0.rgb, f1.rgb, f1.flow, v)
    no_warp = float((f0.rgb - f1.rgb).abs().mean(-1)[v].mean())
    assert err < 0.02 and no_warp > 4 * err
    # forward motion: ground pixels flow towards the image centre row-wise (closer to the horizon) at t-1
    assert float(f1.flow[..., 1][v].mean()) < 0


def test_flow_follows_a_moving_inserted_object():
    tr = traj(3, speed=0.0)  # parked ego camera; the car crosses the view along +y at 6 m/s, side on
    scene = Scene(ground(), intrinsics=INTR)
    track = ObjectTrack(np.array([0.0, 1.0]), np.stack([yaw_pose(9.0, -3.0, 0.0, math.pi / 2),
                                                        yaw_pose(9.0, 3.0, 0.0, math.pi / 2)]))
    iid = scene.insert(car_asset(), track)
    frames = scene.render(tr, progress=False)
    f0, f1 = frames[0], frames[1]
    on_car = f1.flow_valid & (f1.inserted_mask > 0.99) & (f1.instance_ids == iid)
    assert on_car.sum() > 40
    err = _warp_error(f0.rgb, f1.rgb, f1.flow, on_car)
    # reference: flow that ignores the object's motion (what a static-scene flow would say)
    static_flow, _ = geometric_flow(f1.depth, INTR.K, f1.pose, f0.pose)
    err_static = _warp_error(f0.rgb, f1.rgb, static_flow, on_car)
    assert err < 0.03 and err_static > 3 * err
    # the static background keeps zero flow where it is visible in both frames
    bg = f1.flow_valid & (f1.inserted_mask == 0)
    assert bg.sum() > 300 and float(f1.flow[bg].abs().max()) < 1e-3
    # ground uncovered behind the car was hidden at t-1: not valid
    uncovered = (f0.inserted_mask > 0.99) & (f1.inserted_mask < 0.01)
    assert uncovered.sum() > 0 and not f1.flow_valid[uncovered].any()


def test_render_equals_render_frame_loop():
    scene, _ = _scene_with_car()
    scene.objects[0].track = ObjectTrack.along_trajectory(traj(4), 3.0, forward_offset_m=8.0, speed_scale=0.5)
    tr = traj(4)
    seq = scene.render(tr, progress=False)
    assert isinstance(seq, FrameSequence) and len(seq) == 4
    scene.reset()
    for i, f in enumerate(seq):
        g = scene.render_frame(tr.poses[i], time=float(tr.times[i]), intrinsics=tr.intrinsics)
        for name in ("rgb", "depth", "alpha", "inserted_mask", "instance_ids", "flow", "flow_valid"):
            assert torch.equal(getattr(f, name), getattr(g, name)), name
        assert f.index == g.index == i and f.time == g.time
    assert seq.rgb.shape == (4, 40, 64, 3) and seq.flow.shape == (4, 40, 64, 2)
    np.testing.assert_allclose(seq.trajectory.poses, tr.poses)
    pim = seq.to_posed_images()
    assert pim.images.shape == (4, 40, 64, 3) and pim.instance_ids.dtype == np.int32
    # streaming with default times and intrinsics continues the sequence
    scene.reset()
    a = scene.render_frame(tr.poses[0], intrinsics=INTR)
    b = scene.render_frame(tr.poses[1])
    assert (a.time, b.time, b.index) == (0.0, pytest.approx(0.1), 1) and b.flow_valid.any()


# ---------------------------------------------------------------------------------------------- storage
def test_scene_save_load_round_trip(tmp_path):
    scene, iid = _scene_with_car(background_color=(0.1, 0.2, 0.3))
    scene.objects[0].track = ObjectTrack.along_trajectory(traj(4), 3.0, forward_offset_m=8.0)
    scene.metadata = {"description": "demo", "lighting": {"sun_elevation_deg": 35.0}}
    scene.save(tmp_path / "scene")
    back = Scene.load(tmp_path / "scene")
    assert back.name == "test" and back.metadata == scene.metadata and back.config == scene.config
    assert back.intrinsics == INTR and back.inserted_ids == [iid]
    np.testing.assert_array_equal(back.objects[0].track.poses, scene.objects[0].track.poses)
    assert back.objects[0].asset.info == scene.objects[0].asset.info
    a, b = scene.render(traj(2), progress=False), back.render(traj(2), progress=False)
    for fa, fb in zip(a, b):
        assert torch.equal(fa.rgb, fb.rgb) and torch.equal(fa.flow, fb.flow)
    # overwrite in place; no temporary folders left
    back.remove(iid)
    back.save(tmp_path / "scene")
    assert Scene.load(tmp_path / "scene").inserted_ids == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]


def test_scene_load_errors(tmp_path):
    with pytest.raises(MissingFileError):
        Scene.load(tmp_path / "nothing")
    scene, _ = _scene_with_car()
    scene.save(tmp_path / "s")
    (tmp_path / "s" / "background.safetensors").write_bytes(b"garbage")
    with pytest.raises(CorruptFileError, match="background.safetensors"):
        Scene.load(tmp_path / "s")
    (tmp_path / "s" / "scene.yaml").write_text("format: something-else\n")
    with pytest.raises(CorruptFileError, match="scene.yaml"):
        Scene.load(tmp_path / "s")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("precious")
    with pytest.raises(InvalidInputError, match="refusing to overwrite"):
        scene.save(tmp_path / "other")
    assert (tmp_path / "other" / "keep.txt").read_text() == "precious"


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_inputs(tmp_path):
    scene, iid = _scene_with_car()
    pose = traj(1).poses[0]
    scene.render_frame(pose)
    with pytest.raises(ShapeMismatchError, match="reset"):
        scene.render_frame(pose, intrinsics=Intrinsics.from_fov(70.0, 32, 20))
    scene.reset()
    scene.render_frame(pose, intrinsics=Intrinsics.from_fov(70.0, 32, 20))  # fine after reset
    nan_pose = pose.copy()
    nan_pose[0, 3] = np.nan
    with pytest.raises(NonFiniteError):
        scene.render_frame(nan_pose)
    skew = pose.copy()
    skew[:3, 0] *= 2.0
    with pytest.raises(InvalidCameraError, match="orthonormal"):
        scene.render_frame(skew)
    with pytest.raises(NonFiniteError):
        scene.render_frame(pose, time=float("inf"))
    with pytest.raises(InvalidCameraError, match="no intrinsics"):
        Scene(ground(pole=False)).render_frame(pose)
    with pytest.raises(InvalidCameraError):
        scene.render_frame(pose, intrinsics=INTR.K)  # a matrix is not an Intrinsics
    bank = AssetBank(tmp_path / "bank")
    bank.add(car_asset())
    with pytest.raises(UnknownAssetError, match="known ids"):
        scene.insert("no-such-asset", ObjectTrack.static(np.eye(4)), bank=bank)
    with pytest.raises(UnknownAssetError, match="bank"):
        scene.insert("no-such-asset", ObjectTrack.static(np.eye(4)))
    assert scene.insert(bank.list()[0], ObjectTrack.static(np.eye(4)), bank=bank) == iid + 1
    with pytest.raises(UnknownAssetError, match="instance id 42"):
        scene.remove(42)
    with pytest.raises(InvalidInputError, match="ObjectTrack"):
        scene.insert(car_asset(), np.eye(4))  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        RenderConfig(depth_alpha_threshold=0.0)
    with pytest.raises(ConfigError):
        RenderConfig.from_dict({"background_colour": [0, 0, 0]})
    with pytest.raises(InvalidInputError, match="Trajectory"):
        scene.render(traj(2).poses)  # type: ignore[arg-type]


def test_empty_scene_renders_background():
    s = Scene(GaussianScene.empty(), config=RenderConfig(background_color=(1.0, 0.5, 0.0)), intrinsics=INTR)
    f = s.render_frame(np.eye(4))
    assert torch.allclose(f.rgb, torch.tensor([1.0, 0.5, 0.0]).expand(40, 64, 3))
    assert torch.isinf(f.depth).all() and (f.alpha == 0).all() and (f.instance_ids == 0).all()




@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_render_on_cuda_matches_cpu():
    """gsplat backend on CUDA gives the same G-buffers as the CPU fallback (within float tolerance)."""
    cpu, _ = _scene_with_car()
    gpu = Scene(ground().to("cuda"), config=RenderConfig(), intrinsics=INTR)
    gpu.insert(car_asset(), ObjectTrack.static(yaw_pose(9.0, 0.5, 0.0, 0.3)))
    a, b = cpu.render(traj(2), progress=False), gpu.render(traj(2), progress=False)
    for fa, fb in zip(a, b):
        assert fb.rgb.is_cuda
        np.testing.assert_allclose(fb.rgb.cpu().numpy(), fa.rgb.numpy(), atol=2e-3)
        np.testing.assert_allclose(fb.inserted_mask.cpu().numpy(), fa.inserted_mask.numpy(), atol=2e-3)
        assert (fb.instance_ids.cpu() == fa.instance_ids).float().mean() > 0.99
        fin = torch.isfinite(fa.depth) & torch.isfinite(fb.depth.cpu())
        np.testing.assert_allclose(fb.depth.cpu()[fin].numpy(), fa.depth[fin].numpy(), rtol=1e-3)
