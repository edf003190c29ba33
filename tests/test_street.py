"""Procedural street generator (scene_tools.street) and its Mitsuba renderer (scene_tools.pbr).

Renders use the tiny preset (48x32, 4 spp, 3 frames) or single poses, so the file stays fast. Checks
compare the renders with independent references: analytic road depth, pinhole projection of known
world points, ray/box shadow geometry, and the linearity of light transport.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from scene_tools.cameras import Intrinsics, Trajectory, look_at
from scene_tools.pbr import StreetFrames, render_street, tonemap
from scene_tools.street import (
    CameraConfig,
    EgoConfig,
    LightingConfig,
    StreetConfig,
    VehicleConfig,
    generate_street,
)
from simharmony.errors import (
    BackendUnavailableError,
    ConfigError,
    CorruptFileError,
    InvalidInputError,
    MissingFileError,
)

pytest.importorskip("mitsuba")


# --------------------------------------------------------------------------------------------------
# helpers and shared renders
# --------------------------------------------------------------------------------------------------


def _luma(x):
    return x @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


def _pixel_rays(K: Intrinsics, c2w: np.ndarray) -> np.ndarray:
    """[H, W, 3] world directions through pixel centres, scaled so that their camera-z component is 1."""
    u, v = np.meshgrid(np.arange(K.width) + 0.5, np.arange(K.height) + 0.5)
    cam = np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones_like(u)], -1)
    return cam @ c2w[:3, :3].T


def _project(K: Intrinsics, c2w: np.ndarray, p: np.ndarray):
    pc = np.linalg.inv(c2w) @ np.append(p, 1.0)
    return K.fx * pc[0] / pc[2] + K.cx, K.fy * pc[1] / pc[2] + K.cy, pc[2]


def _backproject(K: Intrinsics, c2w: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """[H, W, 3] world points from z-depth."""
    return c2w[:3, 3] + _pixel_rays(K, c2w) * depth[..., None]


def _box_hit(origins: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Slab test: does the ray origin + s*d (s > 0) hit the axis-aligned box [lo, hi]? origins [M, 3]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t0, t1 = (lo - origins) / d, (hi - origins) / d
    tmin = np.minimum(t0, t1).max(axis=1)
    tmax = np.maximum(t0, t1).min(axis=1)
    return tmax >= np.maximum(tmin, 0.0)


@pytest.fixture(scope="module")
def tiny():
    return generate_street(StreetConfig.tiny(seed=3))


@pytest.fixture(scope="module")
def tiny_frames(tiny):
    return render_street(tiny, progress=False)


def _car_ahead(layout, dist=8.0, lateral=0.0, size=96, buildings=True):
    """The layout with its first parked vehicle moved ``dist`` m in front of a single camera (and that camera).

    Other vehicles and pedestrians are dropped (and buildings too unless ``buildings``).
    """
    vid = layout.ids_of("vehicle")[0]
    objs = []
    cam_pos = np.array([5.0, -1.5, 1.6])
    for o in layout.objects:
        if o.instance_id == vid:
            pose = np.eye(4)
            pose[:3, 3] = cam_pos + np.array([dist, lateral, -1.6])
            o = dataclasses.replace(o, base_pose=pose, velocity=np.zeros(3))
        elif o.category in ("vehicle", "pedestrian") or (o.category == "building" and not buildings):
            continue  # keep the view clear
        objs.append(o)
    K = Intrinsics.from_fov(75.0, size, size * 2 // 3)
    c2w = look_at(cam_pos, cam_pos + np.array([1.0, 0.0, -0.12]))
    return layout.with_objects(objs), vid, Trajectory(c2w[None], K, np.array([0.0]))


# --------------------------------------------------------------------------------------------------
# generator
# --------------------------------------------------------------------------------------------------


def _fingerprint(layout):
    out = []
    for o in layout.objects:
        out.append(
            (
                o.instance_id,
                o.name,
                o.category,
                o.base_pose.round(9).tobytes(),
                o.velocity.tobytes(),
                tuple(tuple(p.base_color) for p in o.parts),
                tuple(np.asarray(p.mesh.vertices).round(9).tobytes() for p in o.parts),
            )
        )
    return out


def test_same_seed_same_layout_different_seed_differs():
    a = generate_street(StreetConfig.tiny(seed=7))
    b = generate_street(StreetConfig.tiny(seed=7))
    c = generate_street(StreetConfig.tiny(seed=8))
    assert _fingerprint(a) == _fingerprint(b)
    assert np.array_equal(a.trajectory.poses, b.trajectory.poses)
    assert _fingerprint(a) != _fingerprint(c)
    colours_a = {tuple(o.base_color) for o in a.objects if o.category == "vehicle"}
    colours_c = {tuple(o.base_color) for o in c.objects if o.category == "vehicle"}
    assert colours_a != colours_c


def test_default_street_contents():
    cfg = StreetConfig()
    layout = generate_street(cfg)
    assert (cfg.camera.width, cfg.camera.height, cfg.ego.num_frames) == (256, 144, 40)
    ids = layout.ids
    assert len(set(ids)) == len(ids) and min(ids) == 1
    cats = {o.category for o in layout.objects}
    assert {"road", "sidewalk", "lane_marking", "building", "vehicle", "pedestrian"} <= cats
    vehicles = [layout.object(i) for i in layout.ids_of("vehicle")]
    assert len(vehicles) == cfg.vehicles.num_parked + cfg.vehicles.num_moving
    assert len({round(v.attributes["length"], 3) for v in vehicles}) > 3  # varied sizes
    assert len({v.base_color for v in vehicles}) > 2  # varied colours
    assert set(layout.foreground_ids()) == set(layout.ids_of("vehicle")) | set(layout.ids_of("pedestrian"))
    assert all(layout.object(i).is_foreground for i in layout.foreground_ids())
    assert not any(o.is_foreground for o in layout.objects if o.category in ("building", "road"))
    # Ego camera ~1.6 m high in the right lane (y < 0), looking down +x.
    pos = layout.trajectory.positions
    assert np.allclose(pos[:, 2], 1.6) and np.allclose(pos[:, 1], -cfg.lane_width / 2)
    assert layout.trajectory.poses[0][:3, 2] @ np.array([1.0, 0, 0]) > 0.99
    assert np.allclose(np.diff(pos[:, 0]), cfg.ego.speed_mps / cfg.ego.fps)


def test_object_poses_move_with_velocity_and_lanes_never_collide():
    layout = generate_street(StreetConfig(seed=5, vehicles=VehicleConfig(num_parked=4, num_moving=6)))
    moving = [layout.object(i) for i in layout.moving_ids() if layout.object(i).category == "vehicle"]
    assert len(moving) == 6 and all(np.linalg.norm(o.velocity) > 0 for o in moving)
    o = moving[0]
    assert np.allclose(layout.object_pose(o.instance_id, 2.0)[:3, 3], o.base_pose[:3, 3] + 2.0 * o.velocity)
    assert np.allclose(layout.object_pose(o.instance_id, 2.0)[:3, :3], o.base_pose[:3, :3])
    static = layout.ids_of("building")[0]
    assert np.array_equal(layout.object_pose(static, 0.0), layout.object_pose(static, 3.0))
    # No two vehicles' footprints overlap at any frame time; the ego lane stays clear of the camera.
    times = layout.trajectory.times
    cars = [layout.object(i) for i in layout.ids_of("vehicle")]
    for t in times:
        boxes = [c.world_bounds(t) for c in cars]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                overlap = np.all(a[0, :2] < b[1, :2]) and np.all(b[0, :2] < a[1, :2])
                assert not overlap, (cars[i].name, cars[j].name, t)
        cam = layout.trajectory.positions[np.searchsorted(times, t)]
        for box in boxes:
            assert not (box[0, 0] - 1 < cam[0] < box[1, 0] + 1 and box[0, 1] < cam[1] < box[1, 1])


def test_config_yaml_round_trip(tmp_path):
    cfg = StreetConfig.tiny(seed=11, lighting=LightingConfig(sun_azimuth_deg=10.0, sun_color=(1.0, 0.5, 0.2)))
    cfg.save(tmp_path / "street.yaml")
    back = StreetConfig.load(tmp_path / "street.yaml")
    assert back == cfg
    assert _fingerprint(generate_street(back)) == _fingerprint(generate_street(cfg))


# --------------------------------------------------------------------------------------------------
# renderer
# --------------------------------------------------------------------------------------------------


def test_render_shapes_dtypes_and_tone_mapping(tiny, tiny_frames):
    fr = tiny_frames
    n, h, w = 3, 32, 48
    assert fr.hdr.shape == (n, h, w, 3) and fr.hdr.dtype == np.float32
    assert fr.rgb.shape == (n, h, w, 3) and fr.rgb.dtype == np.float32
    assert fr.depth.shape == (n, h, w) and fr.depth.dtype == np.float32
    assert fr.instance_ids.shape == (n, h, w) and fr.instance_ids.dtype == np.int32
    assert fr.alpha.shape == (n, h, w) and fr.alpha.dtype == np.float32
    assert fr.poses.shape == (n, 4, 4) and np.allclose(fr.times, tiny.trajectory.times)
    assert fr.rgb.min() >= 0 and fr.rgb.max() <= 1 and np.isfinite(fr.hdr).all() and fr.hdr.min() >= 0
    # sky <=> id 0 <=> infinite depth; the sky is visible at the top of the first frame
    assert np.array_equal(fr.instance_ids == 0, np.isinf(fr.depth))
    assert (fr.instance_ids[0] == 0).any() and (fr.depth[np.isfinite(fr.depth)] > 0).all()
    assert set(np.unique(fr.instance_ids)) - {0} <= set(tiny.ids)
    # full renders: alpha is coverage; it is 1 wherever the pixel centre hit something far from edges
    assert fr.alpha.min() >= 0 and fr.alpha.max() <= 1
    assert fr.alpha[fr.instance_ids > 0].mean() > 0.95
    # documented tone mapping, written out independently
    x = np.clip(fr.hdr, 0, None)
    ref = np.clip(np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055), 0, 1)
    assert np.allclose(fr.rgb, ref, atol=1e-5)
    assert np.allclose(
        tonemap(fr.hdr, 2.0),
        np.clip(np.where(2 * x <= 0.0031308, 12.92 * 2 * x, 1.055 * (2 * x) ** (1 / 2.4) - 0.055), 0, 1),
        atol=1e-5,
    )
    # the sky pixels show the sky radiance exactly (constant environment)
    sky = tiny.lighting.sky_radiance()
    assert np.allclose(fr.hdr[fr.alpha == 0], sky, atol=1e-5)
    summary = {o["id"]: o for o in fr.layout_summary["objects"]}
    assert fr.ids_of("vehicle") == tiny.ids_of("vehicle")
    assert all(summary[i]["is_foreground"] for i in fr.foreground_ids())


def test_render_is_deterministic_per_seed(tiny, tiny_frames):
    again = render_street(tiny, trajectory=tiny.trajectory[:1], progress=False)
    assert np.array_equal(again.hdr[0], tiny_frames.hdr[0]) and np.array_equal(again.depth[0], tiny_frames.depth[0])
    other = render_street(tiny, trajectory=tiny.trajectory[:1], progress=False, seed=7)
    assert not np.array_equal(other.hdr[0], tiny_frames.hdr[0])  # only the Monte Carlo noise changes
    assert np.array_equal(other.instance_ids[0], tiny_frames.instance_ids[0])
    assert abs(other.hdr[0].mean() / tiny_frames.hdr[0].mean() - 1) < 0.05



def test_render_does_not_depend_on_the_thread_count(tiny, tiny_frames):
    """Mitsuba picks smaller blocks (other sampler seeds) for small images when it has more threads; the
    fixed block size keeps a 48x32 render the same on 1 thread as on the machine's default."""
    import drjit

    default = drjit.thread_count()
    drjit.set_thread_count(1)
    try:
        one = render_street(tiny, trajectory=tiny.trajectory[:1], progress=False)
    finally:
        drjit.set_thread_count(default)
    assert np.array_equal(one.hdr[0], tiny_frames.hdr[0])


class _InterruptedOnce:
    """Stands in for the mitsuba module: the first render is hit by SIGINT and returns a black image, as
    Mitsuba's renderer does when it winds down early."""

    def __init__(self):
        self.calls = 0

    def render(self, scene, seed):
        import os
        import signal

        self.calls += 1
        if self.calls == 1:
            os.kill(os.getpid(), signal.SIGINT)
            return np.zeros((2, 2, 4))
        return np.ones((2, 2, 4))


def test_interrupted_render_is_never_returned():
    import signal

    from scene_tools.pbr import _render_whole

    # Python's default handler (set here: a process started with SIGINT ignored, e.g. a background job, lacks it)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        mi = _InterruptedOnce()
        with pytest.raises(KeyboardInterrupt):
            _render_whole(mi, None, seed=0)
        assert mi.calls == 1 and signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, previous)
    seen = []
    for handler in (signal.SIG_IGN, lambda signum, frame: seen.append(signum)):  # ignored / handled: render again
        previous = signal.signal(signal.SIGINT, handler)
        try:
            mi = _InterruptedOnce()
            img = _render_whole(mi, None, seed=0)
            assert mi.calls == 2 and img.min() == 1 and img.dtype == np.float32
            assert signal.getsignal(signal.SIGINT) is handler
        finally:
            signal.signal(signal.SIGINT, previous)
    assert seen == [signal.SIGINT]


def test_depth_is_z_depth_on_flat_road(tiny, tiny_frames):
    road = tiny.ids_of("road")[0]
    K = tiny_frames.intrinsics
    checked = 0
    for i in range(len(tiny_frames)):
        c2w = tiny_frames.poses[i]
        rays = _pixel_rays(K, c2w)  # camera-z component 1, so the ray parameter is the z-depth
        analytic = -c2w[2, 3] / rays[..., 2]  # the road surface is the plane z = 0
        m = tiny_frames.instance_ids[i] == road
        checked += m.sum()
        np.testing.assert_allclose(tiny_frames.depth[i][m], analytic[m], rtol=2e-4)
        # ray length would be larger than z-depth off-axis: make sure we are not returning that
        ray_len = analytic * np.linalg.norm(rays, axis=-1)
        assert np.abs(tiny_frames.depth[i][m] - ray_len[m]).max() > 0.05
    assert checked > 200


def test_pose_convention_projection_and_backprojection(tiny):
    layout, vid, traj = _car_ahead(tiny, dist=8.0, lateral=0.0)
    fr = render_street(layout, trajectory=traj, spp=1, progress=False)
    K, c2w = traj.intrinsics, traj.poses[0]
    car = layout.object(vid)
    lo, hi = car.world_bounds(0.0)
    u, v, z = _project(K, c2w, (lo + hi) / 2)
    assert z > 0 and 0 <= u < K.width and 0 <= v < K.height
    assert fr.instance_ids[0, int(v), int(u)] == vid
    assert abs(u - K.width / 2) < 2  # straight ahead -> the middle column
    # the id map's pixels of the car back-project (with z-depth) into the car's world box
    pts = _backproject(K, c2w, np.where(np.isinf(fr.depth[0]), 0, fr.depth[0]))
    m = fr.instance_ids[0] == vid
    assert m.sum() > 30
    inside = np.all((pts[m] > lo - 0.02) & (pts[m] < hi + 0.02), axis=1)
    assert inside.mean() > 0.99
    # every visible object's pixels back-project onto that object (all objects, incl. buildings)
    for oid in np.unique(fr.instance_ids[0]):
        if oid == 0:
            continue
        b = layout.object(int(oid)).world_bounds(0.0)
        mm = fr.instance_ids[0] == oid
        ok = np.all((pts[mm] > b[0] - 0.02) & (pts[mm] < b[1] + 0.02), axis=1)
        assert ok.mean() > 0.99, layout.object(int(oid)).name
    # Mitsuba's own image (film alpha of an only_ids render) covers the same pixels as the id map
    only = render_street(layout, trajectory=traj, only_ids=[vid], spp=16, progress=False)
    iou = ((only.alpha[0] > 0.5) & m).sum() / ((only.alpha[0] > 0.5) | m).sum()
    assert iou > 0.85


def test_moving_objects_are_rendered_at_frame_time(tiny, tiny_frames):
    K = tiny_frames.intrinsics
    seen = 0
    for i in range(len(tiny_frames)):
        t, c2w = tiny_frames.times[i], tiny_frames.poses[i]
        d = np.where(np.isinf(tiny_frames.depth[i]), 0, tiny_frames.depth[i])
        pts = _backproject(K, c2w, d)
        for oid in tiny.moving_ids():
            m = tiny_frames.instance_ids[i] == oid
            if m.sum() < 3:
                continue
            lo, hi = tiny.object(oid).world_bounds(t)
            assert np.all((pts[m] > lo - 0.03) & (pts[m] < hi + 0.03)).mean() > 0.95
            seen += 1
    assert seen >= 2


def test_exclude_ids_removes_object_and_its_shadow(tiny):
    layout, vid, traj = _car_ahead(tiny, dist=9.0, lateral=0.5, buildings=False)  # nothing else casts shadows
    light = LightingConfig(sun_azimuth_deg=90.0, sun_elevation_deg=35.0)  # sun from the left: shadow to the right
    full = render_street(layout, trajectory=traj, lighting=light, spp=16, progress=False)
    excl = render_street(layout, trajectory=traj, lighting=light, exclude_ids=[vid], spp=16, progress=False)
    assert (full.instance_ids == vid).sum() > 30 and not (excl.instance_ids == vid).any()
    assert excl.render_info["exclude_ids"] == [vid]
    # Independent shadow geometry: road pixels whose sun ray hits the car's body box.
    K, c2w = traj.intrinsics, traj.poses[0]
    road = set(layout.ids_of("road")) | set(layout.ids_of("lane_marking"))
    same = np.isin(full.instance_ids[0], list(road)) & (full.instance_ids[0] == excl.instance_ids[0])
    pts = _backproject(K, c2w, np.where(np.isinf(full.depth[0]), 0, full.depth[0]))[same]
    car = layout.object(vid)
    pose = car.pose(0.0)
    body = car.parts[0].mesh.bounds + pose[:3, 3]  # yaw 0: the body box is axis aligned in world
    whole = car.world_bounds(0.0)
    sun = light.sun_direction()
    in_shadow = _box_hit(pts + 1e-3 * sun, np.broadcast_to(sun, pts.shape), body[0], body[1])
    near_shadow = _box_hit(pts + 1e-3 * sun, np.broadcast_to(sun, pts.shape), whole[0] - 0.6, whole[1] + 0.6)
    lf, le = _luma(full.hdr[0][same]), _luma(excl.hdr[0][same])
    assert in_shadow.sum() >= 8
    assert le[in_shadow].mean() > 1.8 * lf[in_shadow].mean()  # the shadow is gone
    far = ~near_shadow
    assert far.sum() > 100
    assert abs(le[far].mean() / lf[far].mean() - 1) < 0.05  # elsewhere the road barely changes


def test_only_ids_alpha_zero_outside_object(tiny):
    from scipy.ndimage import binary_dilation, binary_erosion

    layout, vid, traj = _car_ahead(tiny, dist=7.0)
    fr = render_street(layout, trajectory=traj, only_ids=[vid], spp=16, progress=False)
    a, ids = fr.alpha[0], fr.instance_ids[0]
    assert set(np.unique(ids)) == {0, vid}
    obj = ids == vid
    ring = np.ones((3, 3), bool)  # 8-neighbourhood: a corner pixel can be partly covered
    outside = ~binary_dilation(obj, structure=ring)
    assert outside.sum() > 100 and np.all(a[outside] == 0) and np.all(fr.hdr[0][outside] == 0)
    assert np.all(a[binary_erosion(obj, structure=ring)] == 1)
    edge = (a > 0) & (a < 1)
    assert edge.any()  # box-filtered coverage is fractional on silhouettes
    pi = fr.to_posed_images()
    assert pi.masks is not None and np.array_equal(pi.masks, fr.alpha)
    assert render_street(layout, trajectory=traj, spp=1, progress=False).to_posed_images().masks is None


def test_relighting_changes_object_pixels_physically(tiny):
    layout, vid, traj = _car_ahead(tiny, dist=7.0)
    base = LightingConfig()
    brighter = dataclasses.replace(base, sun_intensity=2 * base.sun_intensity, sky_intensity=2 * base.sky_intensity)
    red = dataclasses.replace(base, sun_color=(1.0, 0.2, 0.1), sun_elevation_deg=15.0, sun_azimuth_deg=200.0)
    kw = {"trajectory": traj, "only_ids": [vid], "spp": 8, "progress": False, "seed": 1}
    a = render_street(layout, lighting=base, **kw)
    b = render_street(layout, lighting=brighter, **kw)
    c = render_street(layout, lighting=red, **kw)
    m = a.instance_ids[0] == vid
    # light transport is linear in the emitters: same samples, twice the light, twice the radiance
    np.testing.assert_allclose(b.hdr[0][m], 2 * a.hdr[0][m], rtol=1e-4, atol=1e-6)
    # a red, low sun changes the object's colour: the red/green ratio rises
    ratio = lambda f: f.hdr[0][m][:, 0].sum() / f.hdr[0][m][:, 1].sum()
    assert ratio(c) > 1.2 * ratio(a)
    assert np.abs(c.rgb[0][m] - a.rgb[0][m]).mean() > 0.02
    assert c.lighting == red and a.alpha[0][~m].max() < 1  # same geometry, other light


def test_shifted_trajectory_renders_from_shifted_cameras(tiny):
    traj = tiny.trajectory[:1]
    for shift in (2.0, 3.0):
        st = traj.shifted_laterally(shift)
        assert np.allclose(st.positions - traj.positions, [[0.0, shift, 0.0]])  # left = +y in the street frame
        fr = render_street(tiny, trajectory=st, spp=1, progress=False)
        assert np.allclose(fr.poses, st.poses)
        road = tiny.ids_of("road")[0]
        rays = _pixel_rays(fr.intrinsics, st.poses[0])
        m = fr.instance_ids[0] == road
        np.testing.assert_allclose(fr.depth[0][m], (-st.poses[0][2, 3] / rays[..., 2])[m], rtol=2e-4)


def test_off_centre_principal_point_and_non_default_intrinsics(tiny):
    K = Intrinsics(40.0, 40.0, 27.0, 13.5, 50, 30)  # principal point right of and above the centre
    # a rolled camera, so that road depth varies along image rows *and* columns
    eye = tiny.trajectory.positions[0]
    c2w = look_at(eye, eye + np.array([1.0, 0.1, -0.15]), up=(0.0, np.sin(0.25), np.cos(0.25)))
    traj = Trajectory(c2w[None], K, np.array([0.0]))
    fr = render_street(tiny, trajectory=traj, spp=1, progress=False)
    road = tiny.ids_of("road")[0]
    m = fr.instance_ids[0] == road
    assert m.sum() > 100
    analytic = -traj.poses[0][2, 3] / _pixel_rays(K, traj.poses[0])[..., 2]
    np.testing.assert_allclose(fr.depth[0][m], analytic[m], rtol=2e-4)
    with pytest.raises(InvalidInputError, match="square pixels"):
        render_street(
            tiny, trajectory=Trajectory(traj.poses, Intrinsics(40.0, 44.0, 25.0, 15.0, 50, 30)), progress=False
        )


def test_save_load_round_trip(tmp_path, tiny_frames):
    import cv2

    folder = tiny_frames.save(tmp_path / "frames")
    assert (folder / "frames.safetensors").is_file() and (folder / "frames.yaml").is_file()
    png = cv2.imread(str(folder / "previews" / "rgb_0002.png"))[..., ::-1]
    assert np.abs(png.astype(np.float32) / 255 - tiny_frames.rgb[2]).max() <= 0.5 / 255 + 1e-6
    back = StreetFrames.load(folder)
    for k in ("hdr", "rgb", "depth", "instance_ids", "alpha"):
        assert np.array_equal(getattr(back, k), getattr(tiny_frames, k)), k
    assert np.array_equal(back.poses, tiny_frames.poses) and np.array_equal(back.times, tiny_frames.times)
    assert back.intrinsics == tiny_frames.intrinsics and back.lighting == tiny_frames.lighting
    assert back.layout_summary == tiny_frames.layout_summary and back.render_info == tiny_frames.render_info
    assert back.ids_of("vehicle") == tiny_frames.ids_of("vehicle") and back.ids_of("vehicle")
    pi = back.to_posed_images()
    assert pi.images.shape == (3, 32, 48, 3) and np.array_equal(pi.instance_ids, back.instance_ids)
    assert not list(folder.rglob("*.tmp*"))  # atomic writes leave no temporaries
    # broken folders
    with pytest.raises(MissingFileError):
        StreetFrames.load(tmp_path / "nope")
    (folder / "frames.safetensors").write_bytes(b"garbage")
    with pytest.raises(CorruptFileError):
        StreetFrames.load(folder)
    (folder / "frames.yaml").write_text("format: something_else\n")
    with pytest.raises(CorruptFileError):
        StreetFrames.load(folder)


# --------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: StreetConfig(length=-5.0),
        lambda: StreetConfig(road_width=0.0),
        lambda: StreetConfig(sidewalk_width=-1.0),
        lambda: StreetConfig(road_width=5.0, lane_width=3.0),
        lambda: StreetConfig(spp=0),
        lambda: EgoConfig(num_frames=0),
        lambda: EgoConfig(fps=0.0),
        lambda: CameraConfig(width=0),
        lambda: CameraConfig(fov_x_deg=180.0),
        lambda: LightingConfig(sky_color=(-1.0, 0.0, 0.0)),
        lambda: LightingConfig(sun_elevation_deg=120.0),
        lambda: LightingConfig(sun_intensity=float("nan")),
        lambda: VehicleConfig(num_parked=-1),
        lambda: StreetConfig.from_dict({"length": 60.0, "wheels": 3}),
        lambda: StreetConfig.from_dict({"ego": {"num_frames": 0}}),
        lambda: StreetConfig.from_dict({"buildings": {"height_range": [10.0, 5.0]}}),
        lambda: generate_street(StreetConfig(length=10.0, vehicles=VehicleConfig(num_parked=20))),
    ],
)
def test_bad_config_values_raise_config_error(make):
    with pytest.raises(ConfigError):
        make()


def test_bad_render_inputs(tiny):
    with pytest.raises(InvalidInputError, match="unknown instance id 9999"):
        render_street(tiny, exclude_ids=[9999], progress=False)
    with pytest.raises(InvalidInputError, match="only_ids"):
        render_street(tiny, only_ids=[0], progress=False)
    with pytest.raises(InvalidInputError, match="empty"):
        render_street(tiny, only_ids=[], progress=False)
    vid = tiny.ids_of("vehicle")[0]
    with pytest.raises(InvalidInputError, match="nothing to render"):
        render_street(tiny, only_ids=[vid], exclude_ids=[vid], progress=False)
    with pytest.raises(InvalidInputError, match="spp"):
        render_street(tiny, spp=0, progress=False)
    with pytest.raises(InvalidInputError, match="exposure"):
        render_street(tiny, exposure="bright", progress=False)
    with pytest.raises(InvalidInputError, match="exposure"):
        render_street(tiny, exposure=-1.0, progress=False)
    with pytest.raises(InvalidInputError):
        render_street(tiny, lighting={"sun_intensity": 2.0}, progress=False)
    with pytest.raises(InvalidInputError):
        tiny.object(12345)
    with pytest.raises(BackendUnavailableError):
        render_street(tiny, variant="no_such_rgb", progress=False)
    with pytest.raises(BackendUnavailableError, match="LLVM"):
        render_street(tiny, variant="llvm_ad_rgb", progress=False)


def test_cuda_variant_unavailable_without_gpu(tiny):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(BackendUnavailableError):
        render_street(tiny, variant="cuda_ad_rgb", progress=False)


@pytest.mark.gpu
def test_cuda_variant_matches_scalar(tiny, tiny_frames):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    gpu = render_street(tiny, variant="cuda_ad_rgb", progress=False)
    assert gpu.render_info["variant"] == "cuda_ad_rgb"
    agree = (gpu.instance_ids == tiny_frames.instance_ids).mean()
    assert agree > 0.995
    both = np.isfinite(gpu.depth) & np.isfinite(tiny_frames.depth)
    np.testing.assert_allclose(gpu.depth[both], tiny_frames.depth[both], rtol=1e-3)
    assert abs(gpu.hdr.mean() / tiny_frames.hdr.mean() - 1) < 0.1
