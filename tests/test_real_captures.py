"""Real-capture inputs: distorted lenses undistorted on load, COLMAP binary models, camera rigs."""

import json

import cv2
import numpy as np
import pytest

from scene_tools.cameras import Intrinsics, Trajectory, look_at
from scene_tools.lens import LensDistortion, Undistorter, colmap_camera
from scene_tools.loaders import load_colmap, load_transforms_json, save_colmap_text, save_transforms_json
from scene_tools.views import PosedImages
from simharmony.errors import InvalidCameraError, ShapeMismatchError

W, H = 160, 120
DIST = LensDistortion(k1=-0.28, k2=0.09, p1=0.002, p2=-0.001, k3=-0.01)  # a strong phone-like barrel


def _pattern(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A smooth colour pattern of normalised camera coordinates (x, y) = (X/Z, Y/Z)."""
    return np.stack([0.5 + 0.4 * np.sin(7 * x), 0.5 + 0.4 * np.cos(9 * y), 0.5 + 0.3 * np.sin(5 * (x + y))], -1)


def _distorted_image(intr: Intrinsics, dist: LensDistortion) -> np.ndarray:
    """What a camera with this lens sees of the pattern: each pixel shows the ray the lens bends it to."""
    u, v = np.meshgrid(np.arange(intr.width) + 0.5, np.arange(intr.height) + 0.5)
    k1, k2, p1, p2, k3, k4, k5, k6 = dist.coefficients
    xd, yd = (u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy
    x, y = xd.copy(), yd.copy()
    for _ in range(200):  # invert OpenCV's distortion by fixed-point iteration
        r2 = x * x + y * y
        radial = (1 + k1 * r2 + k2 * r2**2 + k3 * r2**3) / (1 + k4 * r2 + k5 * r2**2 + k6 * r2**3)
        dx = 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        dy = p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        x, y = (xd - dx) / radial, (yd - dy) / radial
    xy = np.stack([x.ravel(), y.ravel()], -1)
    return _pattern(xy[:, 0], xy[:, 1]).reshape(intr.height, intr.width, 3).astype(np.float32)


def _pinhole_view(intr: Intrinsics) -> np.ndarray:
    u, v = np.meshgrid(np.arange(intr.width) + 0.5, np.arange(intr.height) + 0.5)
    return _pattern((u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy).astype(np.float32)


def _write(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.clip(np.round(rgb[..., ::-1] * 255), 0, 255).astype(np.uint8))


def test_undistorter_matches_the_pinhole_view():
    intr = Intrinsics(130.0, 128.0, 81.3, 59.2, W, H)
    und = Undistorter(intr, DIST)
    out = und(_distorted_image(intr, DIST))
    expect = _pinhole_view(und.intrinsics)
    assert np.abs(out - expect).max() < 2e-3  # measured 4e-4 (bilinear resampling of a smooth pattern)
    # read as if it were a pinhole image, the distorted one is far off (the test can fail)
    assert np.abs(_distorted_image(intr, DIST) - _pinhole_view(intr)).mean() > 0.02  # measured 0.033
    # barrel distortion: keeping only pixels seen through the lens widens the view at the edges' middles
    assert und.intrinsics.fx < intr.fx and (und.intrinsics.width, und.intrinsics.height) == (W, H)


def test_transforms_json_with_distortion_loads_undistorted(tmp_path):
    intr = Intrinsics(130.0, 128.0, 81.3, 59.2, W, H)
    meta = {"camera_model": "OPENCV", "fl_x": intr.fx, "fl_y": intr.fy, "cx": intr.cx, "cy": intr.cy, "w": W, "h": H,
            "k1": DIST.k1, "k2": DIST.k2, "k3": DIST.k3, "p1": DIST.p1, "p2": DIST.p2, "frames": []}
    for i in range(2):
        _write(tmp_path / f"im{i}.png", _distorted_image(intr, DIST))
        meta["frames"].append({"file_path": f"im{i}.png", "transform_matrix": np.eye(4).tolist()})
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    cap = load_transforms_json(tmp_path, progress=False)
    k = cap.trajectory.intrinsics
    assert k != intr and k.cx == W / 2  # the recorded camera is the undistorted pinhole one
    assert np.abs(cap.images[0] - _pinhole_view(k)).mean() < 4e-3  # 8-bit PNG quantisation
    assert np.abs(cap.images[0] - _pinhole_view(intr)).mean() > 0.02
    half = load_transforms_json(tmp_path, downscale=2, progress=False)
    assert half.images.shape[1:3] == (H // 2, W // 2)
    assert abs(half.trajectory.intrinsics.fx - k.fx / 2) < 1e-9
    from scene_tools.reconstruct import ReconstructionConfig, reconstruct  # and it reconstructs

    res = reconstruct(half, ReconstructionConfig(iterations=3, sh_degree=0, heldout_every=0, init_num_points=200,
                                                 device="cpu"), progress=False)
    assert len(res.scene) > 0 and np.isfinite(res.train_psnr)


@pytest.mark.parametrize("model, params", [
    ("SIMPLE_RADIAL", [130.0, 80.0, 60.0, -0.2]),
    ("RADIAL", [130.0, 80.0, 60.0, -0.2, 0.05]),
    ("OPENCV", [130.0, 128.0, 81.3, 59.2, DIST.k1, DIST.k2, DIST.p1, DIST.p2]),
    ("FULL_OPENCV", [130.0, 128.0, 81.3, 59.2, DIST.k1, DIST.k2, DIST.p1, DIST.p2, DIST.k3, 0.01, 0.0, 0.0]),
])
def test_colmap_distorted_models_load_undistorted(tmp_path, model, params):
    intr, dist = colmap_camera(model, W, H, params, "test")
    assert not dist.is_zero
    (tmp_path / "cameras.txt").write_text(f"1 {model} {W} {H} {' '.join(map(str, params))}\n")
    (tmp_path / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.png\n\n")
    _write(tmp_path / "images" / "a.png", _distorted_image(intr, dist))
    cap = load_colmap(tmp_path, progress=False)
    k = cap.trajectory.intrinsics
    assert np.abs(cap.images[0] - _pinhole_view(k)).mean() < 4e-3


def test_fisheye_and_unknown_models_are_clear_errors():
    with pytest.raises(InvalidCameraError, match="fisheye"):
        colmap_camera("OPENCV_FISHEYE", W, H, [100, 100, 80, 60, 0, 0, 0, 0], "here")
    with pytest.raises(InvalidCameraError, match="unknown camera model 'KB4'"):
        colmap_camera("KB4", W, H, [100], "here")
    with pytest.raises(InvalidCameraError, match="finite"):
        LensDistortion(k1=float("nan"))


def _posed(n=4, seed=0) -> PosedImages:
    rng = np.random.default_rng(seed)
    intr = Intrinsics(40.0, 41.0, 23.9, 16.1, 48, 32)
    poses = np.stack([look_at([i * 0.7, 0.3 * i, 1.5], [10.0 + i, 1.0, 0.5]) for i in range(n)])
    return PosedImages(rng.random((n, 32, 48, 3)).astype(np.float32), Trajectory(poses, intr),
                       points=rng.normal(size=(12, 3)), point_colors=rng.integers(0, 256, (12, 3)) / 255.0,
                       names=[f"v{i}" for i in range(n)])


def test_colmap_binary_model_written_by_pycolmap(tmp_path):
    pycolmap = pytest.importorskip("pycolmap")
    src = _posed()
    save_colmap_text(src, tmp_path / "text", progress=False)
    rec = pycolmap.Reconstruction(str(tmp_path / "text"))  # pycolmap reads our text writer ...
    (tmp_path / "bin").mkdir()
    rec.write_binary(str(tmp_path / "bin"))  # ... and writes the binary model COLMAP would
    assert {"cameras.bin", "images.bin", "points3D.bin"} <= {p.name for p in (tmp_path / "bin").iterdir()}
    back = load_colmap(tmp_path / "bin", images_dir=tmp_path / "text" / "images", progress=False)
    text = load_colmap(tmp_path / "text", progress=False)
    assert np.allclose(back.trajectory.poses, src.trajectory.poses, atol=1e-6)
    assert back.trajectory.intrinsics == text.trajectory.intrinsics
    assert np.array_equal(back.images, text.images) and back.names == src.names
    order = np.argsort(back.points[:, 0])
    assert np.allclose(back.points[order], src.points[np.argsort(src.points[:, 0])], atol=1e-5)


def _rig(tmp_path) -> tuple[dict, list[Intrinsics]]:
    """A two-camera rig in transforms.json: a front camera 48x32 and a side camera 64x40, three frames each."""
    cams = [Intrinsics(40.0, 40.0, 24.0, 16.0, 48, 32), Intrinsics(30.0, 31.0, 31.0, 21.0, 64, 40)]
    rng = np.random.default_rng(1)
    meta = {"camera_model": "OPENCV", "frames": []}
    for t in range(3):
        for c, k in enumerate(cams):
            name = f"cam{c}_{t}.png"
            _write(tmp_path / name, rng.random((k.height, k.width, 3)))
            side = look_at([t, 0, 1.5], [t, 10.0, 1.5]) if c else look_at([t, 0, 1.5], [t + 10.0, 0, 1.5])
            gl = side.copy()
            gl[:3, 1:3] *= -1
            meta["frames"].append({"file_path": name, "transform_matrix": gl.tolist(), "camera": f"CAM_{c}",
                                   "fl_x": k.fx, "fl_y": k.fy, "cx": k.cx, "cy": k.cy, "w": k.width, "h": k.height,
                                   "time": float(t)})
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    return meta, cams


def test_rig_loads_with_per_camera_intrinsics(tmp_path):
    _, cams = _rig(tmp_path)
    cap = load_transforms_json(tmp_path, progress=False)
    traj = cap.trajectory
    assert cap.images.shape == (6, 32, 48, 3)  # the side camera resampled to the first camera's size
    assert traj.cameras == ("CAM_0", "CAM_1") * 3
    assert traj.intrinsics_at(0) == cams[0]
    side = traj.intrinsics_at(1)
    assert np.allclose([side.fx, side.fy, side.cx, side.cy], [30 * 48 / 64, 31 * 32 / 40, 31 * 48 / 64, 21 * 32 / 40])
    assert traj.Ks.shape == (6, 3, 3) and not np.allclose(traj.Ks[0], traj.Ks[1])
    per_cam = traj.by_camera()
    assert list(per_cam) == ["CAM_0", "CAM_1"] and len(per_cam["CAM_1"]) == 3
    assert traj[1::2].cameras == ("CAM_1",) * 3
    assert Trajectory.from_dict(traj.to_dict()).frame_intrinsics == traj.frame_intrinsics
    # the round trip through our own writer keeps the rig
    save_transforms_json(cap, tmp_path / "again", progress=False)
    again = load_transforms_json(tmp_path / "again", progress=False)
    assert again.trajectory.cameras == traj.cameras
    assert all(a == b for a, b in zip(again.trajectory.frame_intrinsics, traj.frame_intrinsics))
    save_colmap_text(cap, tmp_path / "colmap", progress=False)  # and through COLMAP: one camera per rig camera
    model = load_colmap(tmp_path / "colmap", progress=False)
    assert (tmp_path / "colmap" / "cameras.txt").read_text().count("PINHOLE") == 2
    assert model.names == sorted(cap.names) and model.trajectory.cameras is not None
    by_name = {n: i for i, n in enumerate(cap.names)}
    assert all(model.trajectory.intrinsics_at(j) == traj.intrinsics_at(by_name[n]) for j, n in enumerate(model.names))


def test_rig_frames_of_one_camera_must_share_its_size(tmp_path):
    meta, _ = _rig(tmp_path)
    meta["frames"][3]["w"] = 60  # the side camera's frame 1 claims another size than its image
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(ShapeMismatchError, match="frame 3.*w/h"):
        load_transforms_json(tmp_path, progress=False)


def test_rig_trajectory_sizes_must_agree():
    a, b = Intrinsics(40.0, 40.0, 24.0, 16.0, 48, 32), Intrinsics(30.0, 31.0, 31.0, 21.0, 64, 40)
    with pytest.raises(ShapeMismatchError, match="one size"):
        Trajectory(np.stack([np.eye(4)] * 2), a, None, (a, b))


def _rig_trajectory() -> Trajectory:
    """A front camera (70 degrees) and a narrow camera (40 degrees) at the same size, four frames each, interleaved."""
    front, narrow = Intrinsics.from_fov(70.0, 64, 40), Intrinsics.from_fov(40.0, 64, 40)
    poses, intrs, names = [], [], []
    for t in range(4):
        for name, k in (("front", front), ("narrow", narrow)):
            poses.append(look_at([0.8 * t, 0.0, 1.5], [0.8 * t + 10.0, 0.0, 0.0]))
            intrs.append(k)
            names.append(name)
    return Trajectory(np.stack(poses), front, np.repeat(np.arange(4) * 0.1, 2), tuple(intrs), tuple(names))


def test_rig_renders_every_camera_as_its_own_sequence():
    from test_scene import ground

    from scene_tools.scene import Scene

    traj = _rig_trajectory()
    scene = Scene(ground(), intrinsics=traj.intrinsics)
    seq = scene.render(traj, progress=False)
    assert len(seq) == 8 and [f.intrinsics for f in seq] == list(traj.frame_intrinsics)
    for name, sub in traj.by_camera().items():  # each camera equals its own single-camera render, flow included
        alone = scene.render(sub, progress=False)
        idx = [i for i, n in enumerate(traj.cameras) if n == name]
        assert all(torch_equal(seq[i].rgb, a.rgb) and torch_equal(seq[i].flow, a.flow) for i, a in zip(idx, alone))
    assert not torch_equal(seq[0].rgb, seq[1].rgb)  # the two cameras see different pictures
    assert seq.trajectory.frame_intrinsics == traj.frame_intrinsics


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_rig_simulator_keeps_one_stream_per_camera():
    from _helpers import small_enhancer
    from test_scene import ground

    from scene_tools.scene import Scene
    from simharmony import Harmonizer, Simulator

    traj = _rig_trajectory()
    sim = Simulator(Scene(ground(), intrinsics=traj.intrinsics), Harmonizer(small_enhancer()), progress=False)
    seq = sim.render(traj)
    assert len(seq) == 8 and all(f.enhanced for f in seq)
    assert {"ego/front", "ego/narrow"} <= set(sim.harmonizer.streams)


def test_rig_reconstruction_uses_each_frames_camera():
    from scene_tools.reconstruct import ReconstructionConfig, _merge_inputs, reconstruct

    traj = _rig_trajectory()
    rng = np.random.default_rng(0)
    pi = PosedImages(rng.random((8, 40, 64, 3)).astype(np.float32), traj, points=rng.normal(size=(50, 3)) + [5, 0, 0])
    _, Ks = _merge_inputs(pi)
    assert np.array_equal(Ks, traj.Ks) and Ks[0, 0, 0] != Ks[1, 0, 0]
    merged, Ks2 = _merge_inputs([pi, pi.subset(slice(0, 2))])
    assert np.array_equal(Ks2[8:], traj.Ks[:2]) and merged.trajectory.intrinsics_at(9) == traj.intrinsics_at(1)
    cfg = ReconstructionConfig(iterations=3, sh_degree=0, init="points", heldout_every=4, eval_every=3, device="cpu")
    res = reconstruct(pi, cfg, progress=False)
    assert res.heldout_psnr is not None and np.isfinite(res.heldout_psnr)


# ------------------------------------------------------------------------------------- structure from motion
def _texture(seed: int = 0, n: int = 512) -> np.ndarray:
    """Colour blobs at three scales: enough corners for SIFT."""
    rng = np.random.default_rng(seed)
    tex = np.zeros((n, n, 3), np.float32)
    for s in (4, 16, 64):
        small = rng.random((n // s + 1, n // s + 1, 3)).astype(np.float32)
        tex += cv2.resize(small, (n, n), interpolation=cv2.INTER_CUBIC)[:n, :n] / 3
    return np.clip(tex, 0, 1)


def _corridor_frames(poses: np.ndarray, intr: Intrinsics, tex: np.ndarray) -> np.ndarray:
    """Ray-cast a textured box corridor (walls y = +-3, floor z = 0, ceiling z = 4, end wall x = 40) -> [N, H, W, 3]."""
    u, v = np.meshgrid(np.arange(intr.width) + 0.5, np.arange(intr.height) + 0.5)
    rays = np.stack([(u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy, np.ones_like(u)], -1)
    planes = ((1, 3.0, (0, 2)), (1, -3.0, (0, 2)), (2, 0.0, (0, 1)), (2, 4.0, (0, 1)), (0, 40.0, (1, 2)))
    out = []
    for c2w in poses:
        d, o = rays @ c2w[:3, :3].T, c2w[:3, 3]
        best = np.full(u.shape, np.inf)
        uv = np.zeros((*u.shape, 2))
        for axis, val, (a, b) in planes:
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (val - o[axis]) / d[..., axis]
            hit = (t > 1e-6) & (t < best)
            p = o + t[..., None] * d
            best = np.where(hit, t, best)
            uv = np.where(hit[..., None], np.stack([p[..., a] + 7 * axis + val, p[..., b] + 3 * axis], -1), uv)
        px = ((uv * 40) % tex.shape[0]).astype(np.float32)  # 40 texels per metre
        out.append(cv2.remap(tex, px[..., 0], px[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP))
    return np.stack(out)


def _corridor_video(path, n: int = 12) -> tuple[np.ndarray, Intrinsics]:
    intr = Intrinsics.from_fov(70.0, 320, 240)
    poses = np.stack([look_at([0.5 * i, 0.6 * np.sin(i / 3), 1.6 + 0.1 * np.cos(i / 2)],
                              [0.5 * i + 10, 0.5 * np.sin(i / 5), 1.5]) for i in range(n)])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (intr.width, intr.height))
    for f in _corridor_frames(poses, intr, _texture()):
        writer.write(np.round(f[..., ::-1] * 255).astype(np.uint8))
    writer.release()
    return poses, intr


def _similarity_residual(a: np.ndarray, b: np.ndarray) -> float:
    """RMS distance between point sets after the best similarity transform of ``a`` onto ``b`` (Umeyama)."""
    ma, mb = a.mean(0), b.mean(0)
    xa, xb = a - ma, b - mb
    U, S, Vt = np.linalg.svd(xb.T @ xa / len(a))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    s = np.trace(np.diag(S) @ D) / xa.var(0).sum()
    return float(np.sqrt((((s * xa @ R.T) - xb) ** 2).sum(1).mean()))


def test_capture_from_video_recovers_the_trajectory(tmp_path):
    from scene_tools.capture import CaptureConfig, align_to_ground, capture, load_capture

    poses, intr = _corridor_video(tmp_path / "drive.mp4")
    res = capture(tmp_path / "drive.mp4", tmp_path / "cap", CaptureConfig(num_threads=2), progress=False)
    assert res.num_images == 12 and res.num_registered == 12 and res.num_points > 200
    meta = json.loads((tmp_path / "cap" / "capture.json").read_text())
    assert meta["num_registered"] == 12 and meta["video"] and meta["config"]["matching"] == "auto"
    cap = load_capture(tmp_path / "cap", progress=False)
    assert len(cap) == 12 and cap.names == [f"{i:05d}" for i in range(12)] and cap.points is not None
    assert abs(cap.trajectory.intrinsics.fx / intr.fx - 1) < 0.05  # focal length solved from the video alone
    path_length = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1).sum()
    err = _similarity_residual(cap.trajectory.positions, poses[:, :3, 3])
    assert err < 0.02 * path_length, f"camera centres off by {err:.3f} m on a {path_length:.1f} m path"
    shuffled = cap.trajectory.positions[np.random.default_rng(0).permutation(12)]
    assert _similarity_residual(shuffled, poses[:, :3, 3]) > 0.1 * path_length  # the measure can fail
    # into the street frame: the floor at z = 0, metres from the camera height, x along the first view
    metric, info = align_to_ground(cap, float(np.median(poses[:, 2, 3])))
    assert info["ground_inliers"] > 50
    assert np.abs(metric.trajectory.positions - poses[:, :3, 3]).max() < 0.1  # measured 0.04 m
    assert np.abs(metric.trajectory.poses[:, :3, :3] - poses[:, :3, :3]).max() < 0.02
    half = load_capture(tmp_path / "cap", downscale=2, max_views=6, progress=False)
    assert half.images.shape == (6, 120, 160, 3)


def test_capture_bad_input(tmp_path):
    from scene_tools.capture import CaptureConfig, capture
    from simharmony.errors import (
        ConfigError,
        CorruptFileError,
        FileFormatError,
        InvalidInputError,
        MissingFileError,
        ReconstructionFailedError,
    )

    cfg = CaptureConfig(num_threads=2)
    with pytest.raises(MissingFileError):
        capture(tmp_path / "nope", tmp_path / "o1", cfg, progress=False)
    (tmp_path / "two").mkdir()
    for i in range(2):
        _write(tmp_path / "two" / f"{i}.png", _texture(i)[:120, :160])
    with pytest.raises(InvalidInputError, match="at least 3 images, got 2"):
        capture(tmp_path / "two", tmp_path / "o2", cfg, progress=False)
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all" * 100)
    with pytest.raises(CorruptFileError, match="broken.mp4"):
        capture(tmp_path / "broken.mp4", tmp_path / "o3", cfg, progress=False)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InvalidInputError, match="neither a folder of images nor a video"):
        capture(tmp_path / "notes.txt", tmp_path / "o4", cfg, progress=False)
    (tmp_path / "mixed").mkdir()
    for i, size in enumerate([(160, 120), (160, 120), (200, 120)]):
        _write(tmp_path / "mixed" / f"{i}.png", _texture(i)[: size[1], : size[0]])
    with pytest.raises(ShapeMismatchError, match="several sizes"):
        capture(tmp_path / "mixed", tmp_path / "o5", CaptureConfig(camera_mode="single"), progress=False)
    (tmp_path / "noise").mkdir()  # unrelated pictures: nothing matches, SfM must fail and say so
    rng = np.random.default_rng(0)
    for i in range(4):
        _write(tmp_path / "noise" / f"{i}.png", rng.random((120, 160, 3)))
    with pytest.raises(ReconstructionFailedError, match="(no model|of 4 images registered)"):
        capture(tmp_path / "noise", tmp_path / "o6", cfg, progress=False)
    (tmp_path / "bad_image").mkdir()
    for i in range(3):
        _write(tmp_path / "bad_image" / f"{i}.png", _texture(i)[:120, :160])
    (tmp_path / "bad_image" / "3.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(CorruptFileError, match="3.jpg"):
        capture(tmp_path / "bad_image", tmp_path / "o7", cfg, progress=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileFormatError, match="not empty"):
        capture(tmp_path / "two", tmp_path / "full", cfg, progress=False)
    with pytest.raises(ConfigError, match="camera_model"):
        CaptureConfig(camera_model="OPENCV_FISHEYE")
    # nothing half-written: no output folders and no partial folders left behind
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("o", ".o"))) == []


def test_cli_capture_then_reconstruct(tmp_path, capsys):
    from simharmony.cli import main

    _corridor_video(tmp_path / "drive.mp4")
    assert main(["capture", str(tmp_path / "drive.mp4"), "--out", str(tmp_path / "cap"), "--quiet"]) == 0
    assert "12 of 12 images registered" in capsys.readouterr().out
    cfg = tmp_path / "recon.yaml"
    cfg.write_text("sh_degree: 0\nheldout_every: 4\neval_every: 5\nlog_every: 5\ncheckpoint_every: 5\ndevice: cpu\n")
    assert main(["reconstruct", "--data", str(tmp_path / "cap"), "--out", str(tmp_path / "run"), "--config", str(cfg),
                 "--iterations", "5", "--downscale", "4", "--max-views", "8"]) == 0
    out = capsys.readouterr().out
    assert "8 views at 80x60" in out and "initialisation: sparse points" in out and "held-out PSNR" in out
    # the same capture folder again is refused with a clear message, not overwritten
    assert main(["capture", str(tmp_path / "drive.mp4"), "--out", str(tmp_path / "cap"), "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse: usage and one error line, exit code 2
        main(["reconstruct", "--data", str(tmp_path / "cap"), "--out", str(tmp_path / "r2"), "--downscale", "0"])
    assert exc.value.code == 2
    assert "--downscale: must be an integer >= 1" in capsys.readouterr().err
    assert main(["reconstruct", "--data", str(tmp_path), "--out", str(tmp_path / "r2")]) == 2
    assert "not a street frames folder, capture folder" in capsys.readouterr().err


def test_real_capture_scenario_end_to_end(tmp_path):
    from scene_tools.capture import CaptureConfig
    from simharmony.bench.real_capture import RealCaptureConfig, run_real_capture

    poses, _ = _corridor_video(tmp_path / "drive.mp4", n=16)
    recon = dict(iterations=30, sh_degree=0, heldout_every=8, eval_every=30, log_every=10, checkpoint_every=10,
                 densify_start=10, densify_stop=25, densify_every=5, backdrop_init_points=200, device="cpu")
    cfg = RealCaptureConfig.from_dict({
        "source": str(tmp_path / "drive.mp4"), "downscale": 4, "camera_height_m": float(np.median(poses[:, 2, 3])),
        "model": "default", "capture": CaptureConfig(num_threads=2).to_dict(), "reconstruction": recon})
    r = run_real_capture(cfg, tmp_path / "bench", progress=False)
    assert r["registered"] == 16 and r["resolution"] == [80, 60] and r["heldout_views"] == 2
    assert r["reconstruction"]["iterations_per_s"] > 0 and r["harmonizer"].startswith("default weights")
    for k in ("raw", "harmonized"):
        assert 5 < r["heldout"][k]["psnr"]["mean"] < 60 and 0 < r["heldout"][k]["ssim"]["mean"] <= 1
    for name in ("results.json", "report.md", "sheet.png", "renders.png", "recorded.mp4", "shifted.mp4"):
        assert (tmp_path / "bench" / name).stat().st_size > 0
    # a rerun reuses the capture and the finished reconstruction
    again = run_real_capture(cfg, tmp_path / "bench", progress=False)
    assert again["heldout"]["raw"]["psnr"]["mean"] == pytest.approx(r["heldout"]["raw"]["psnr"]["mean"], abs=1e-6)
    assert again["seconds"]["reconstruction_this_run"] < r["seconds"]["reconstruction_this_run"]


def test_negative_instance_ids_are_refused():
    from simharmony.errors import InvalidInputError

    ids = np.zeros((2, 32, 48), np.int32)
    ids[1, 3, 4] = -1
    with pytest.raises(InvalidInputError, match="view 1 has -1"):
        PosedImages(np.zeros((2, 32, 48, 3), np.float32), _posed(2).trajectory, instance_ids=ids)


@pytest.mark.parametrize("call, error, match", [
    (lambda: Trajectory(np.stack([np.eye(4)] * 2), Intrinsics(40.0, 40.0, 24.0, 16.0, 48, 32)).intrinsics_at(5),
     InvalidCameraError, "out of range"),
    (lambda: Trajectory(np.stack([np.eye(4)] * 2), Intrinsics(40.0, 40.0, 24.0, 16.0, 48, 32)).scaled(float("nan")),
     InvalidCameraError, "positive finite"),
    (lambda: Intrinsics(40.0, 40.0, 24.0, 16.0, 48, 32).scaled(0), InvalidCameraError, "positive finite"),
    (lambda: LensDistortion(k1="a"), InvalidCameraError, "k1 must be a number"),
    (lambda: colmap_camera("OPENCV", 10, 10, ["a"] * 8, "here"), __import__("simharmony.errors").errors.CorruptFileError,
     "must be numbers"),
    (lambda: Trajectory(np.stack([np.eye(4)] * 2), Intrinsics(40.0, 40.0, 24.0, 16.0, 48, 32), None, None, ("a",)),
     InvalidCameraError, "must name 2 frames"),
])
def test_camera_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_capture_config_bad_threads():
    from scene_tools.capture import CaptureConfig
    from simharmony.errors import ConfigError

    with pytest.raises(ConfigError, match="num_threads"):
        CaptureConfig(num_threads=0)
