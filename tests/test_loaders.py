"""Capture loaders: transforms.json and COLMAP text round trips, hand-written files, and bad input."""

import json
import math

import cv2
import numpy as np
import pytest

from scene_tools.cameras import Intrinsics, Trajectory, look_at
from scene_tools.loaders import load_colmap, load_transforms_json, save_colmap_text, save_transforms_json
from scene_tools.views import PosedImages
from simharmony.errors import (
    CorruptFileError,
    InvalidCameraError,
    InvalidInputError,
    MissingFileError,
    ShapeMismatchError,
)

W, H = 24, 16


def _posed(n=4, seed=0, extras=True) -> PosedImages:
    rng = np.random.default_rng(seed)
    intr = Intrinsics(20.5, 21.25, 11.9, 8.1, W, H)
    poses = np.stack([look_at([i * 0.7, 0.3 * i, 1.5], [10.0 + i, 1.0, 0.5]) for i in range(n)])
    depths = rng.uniform(1, 80, (n, H, W)).astype(np.float32)
    depths[:, :3] = np.inf
    return PosedImages(
        images=rng.random((n, H, W, 3)).astype(np.float32),
        trajectory=Trajectory(poses, intr, np.arange(n) * 0.05 + 1.0),
        masks=(rng.random((n, H, W)) > 0.3).astype(np.float32) if extras else None,
        depths=depths if extras else None,
        instance_ids=rng.integers(0, 300, (n, H, W)).astype(np.int32) if extras else None,
        points=rng.normal(size=(10, 3)).astype(np.float32) if extras else None,
        point_colors=rng.integers(0, 256, (10, 3)) / 255.0 if extras else None,
        names=[f"cam_{i:02d}" for i in range(n)],
    )


def _write_png(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.clip(np.round(rgb[..., ::-1] * 255), 0, 255).astype(np.uint8))


# ------------------------------------------------------------------------------------- transforms.json
def test_transforms_round_trip(tmp_path):
    src = _posed()
    path = save_transforms_json(src, tmp_path / "cap", progress=False)
    assert path.name == "transforms.json"
    back = load_transforms_json(tmp_path / "cap", progress=False)
    assert np.array_equal(back.trajectory.poses, src.trajectory.poses)  # exact
    assert back.trajectory.intrinsics == src.trajectory.intrinsics
    assert np.array_equal(back.trajectory.times, src.trajectory.times)
    assert np.abs(back.images - src.images).max() <= 0.5 / 255 + 1e-6
    assert np.abs(back.masks - src.masks).max() == 0  # binary masks survive 8-bit exactly
    assert np.array_equal(back.depths, src.depths)  # safetensors: exact, inf kept
    assert np.array_equal(back.instance_ids, src.instance_ids)
    assert np.array_equal(back.points, src.points) and np.allclose(back.point_colors, src.point_colors, atol=1e-6)
    assert back.names == src.names
    # the file really is in the OpenGL convention: camera y up, z backwards
    meta = json.loads(path.read_text())
    m = np.array(meta["frames"][0]["transform_matrix"])
    cv = src.trajectory.poses[0]
    assert np.allclose(m[:3, 1], -cv[:3, 1]) and np.allclose(m[:3, 2], -cv[:3, 2]) and np.allclose(m[:3, 0], cv[:3, 0])
    assert meta["fl_x"] == 20.5 and meta["w"] == W


def test_transforms_png_depth_and_jpg(tmp_path):
    src = _posed(2)
    yy, xx = np.mgrid[0:H, 0:W] / 30.0
    src.images[:] = np.stack([xx, yy, 0.5 + 0 * xx], -1)  # smooth: JPEG keeps it well
    save_transforms_json(src, tmp_path, image_format="jpg", depth_format="png", progress=False)
    back = load_transforms_json(tmp_path / "transforms.json", progress=False)
    assert np.abs(back.images - src.images).mean() < 0.02  # lossy, but the same pictures
    ok = np.isfinite(src.depths) & (src.depths < 65.5)
    assert np.abs(back.depths[ok] - src.depths[ok]).max() <= 0.5e-3 + 1e-6
    assert np.isinf(back.depths[~ok]).all()  # no depth / beyond 16-bit millimetres


def test_hand_written_blender_style(tmp_path):
    """instant-ngp/Blender layout: camera_angle_x only, extension-less file paths, RGBA images."""
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 2] = 200  # BGR order in cv2: red channel
    rgba[..., 3] = 255
    rgba[:4, :, 3] = 0
    (tmp_path / "train").mkdir()
    cv2.imwrite(str(tmp_path / "train" / "r_0.png"), rgba)
    # OpenGL camera at (1, 2, 3) looking down -z (so OpenCV z axis = world -z)
    mat = [[1, 0, 0, 1], [0, 1, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]]
    meta = {"camera_angle_x": 0.8, "frames": [{"file_path": "./train/r_0", "transform_matrix": mat}]}
    (tmp_path / "transforms_train.json").write_text(json.dumps(meta))
    p = load_transforms_json(tmp_path / "transforms_train.json", progress=False)
    intr = p.trajectory.intrinsics
    f = 0.5 * W / math.tan(0.4)
    assert intr.fx == pytest.approx(f) and intr.fy == pytest.approx(f)
    assert (intr.cx, intr.cy, intr.width, intr.height) == (W / 2, H / 2, W, H)
    c2w = p.trajectory.poses[0]
    assert np.allclose(c2w[:3, 3], [1, 2, 3])
    assert np.allclose(c2w[:3, 2], [0, 0, -1]) and np.allclose(c2w[:3, 1], [0, -1, 0])  # z forward, y down
    assert np.allclose(p.images[0, ..., 0], 200 / 255) and np.allclose(p.images[0, ..., 1:], 0)
    assert p.masks is not None and p.masks[0, :4].max() == 0 and p.masks[0, 4:].min() == 1
    assert p.names == ["r_0"]


def test_nerfstudio_png_depth_and_mask(tmp_path):
    _write_png(tmp_path / "images" / "a.png", np.full((H, W, 3), 0.5))
    mm = np.full((H, W), 2500, np.uint16)
    mm[0, 0] = 0
    (tmp_path / "depth").mkdir()
    cv2.imwrite(str(tmp_path / "depth" / "a.png"), mm)
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), np.full((H, W), 255, np.uint8))
    meta = {"fl_x": 30, "fl_y": 30, "cx": 12, "cy": 8, "w": W, "h": H, "k1": 0, "k2": 0, "p1": 0, "p2": 0,
            "applied_transform": [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, 0]],
            "frames": [{"file_path": "images/a.png", "depth_file_path": "depth/a.png", "mask_path": "masks/a.png",
                        "transform_matrix": np.eye(4).tolist()}]}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    p = load_transforms_json(tmp_path, progress=False)
    assert p.depths[0, 1, 1] == pytest.approx(2.5) and np.isinf(p.depths[0, 0, 0])
    assert p.masks.min() == 1
    assert np.allclose(p.trajectory.poses[0], np.diag([1, -1, -1, 1]))  # applied_transform is not applied


def test_downscale(tmp_path):
    src = _posed(2)
    save_transforms_json(src, tmp_path, progress=False)
    half = load_transforms_json(tmp_path, downscale=2, progress=False)
    full = load_transforms_json(tmp_path, progress=False)
    assert half.images.shape == (2, H // 2, W // 2, 3)
    ref = full.images.reshape(2, H // 2, 2, W // 2, 2, 3).mean((2, 4))
    assert np.abs(half.images - ref).max() < 1e-5
    assert half.trajectory.intrinsics.fx == pytest.approx(src.trajectory.intrinsics.fx / 2)
    assert half.trajectory.intrinsics.cx == pytest.approx(src.trajectory.intrinsics.cx / 2)
    assert set(np.unique(half.instance_ids)) <= set(np.unique(full.instance_ids))  # nearest, no blends
    with pytest.raises(InvalidInputError):
        load_transforms_json(tmp_path, downscale=0)


def _good_meta(tmp_path, n=2):
    for i in range(n):
        _write_png(tmp_path / f"im{i}.png", np.full((H, W, 3), 0.2 * i))
    return {"fl_x": 30.0, "fl_y": 30.0, "cx": 12, "cy": 8, "w": W, "h": H,
            "frames": [{"file_path": f"im{i}.png", "transform_matrix": np.eye(4).tolist()} for i in range(n)]}


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda m, p: m["frames"][1].pop("transform_matrix"), CorruptFileError, "frame 1.*transform_matrix"),
        (lambda m, p: m["frames"][0].update(file_path="nope.png"), MissingFileError, "nope.png"),
        (lambda m, p: m.update(fl_x=0.0), InvalidCameraError, "positive"),
        (lambda m, p: m.update(fl_x=-3.0), InvalidCameraError, "positive"),
        (lambda m, p: m.pop("fl_x"), CorruptFileError, "focal"),
        (lambda m, p: m.update(k4=0.1), InvalidCameraError, "k4"),
        (lambda m, p: m.update(camera_model="PINHOLE", k1=0.1), InvalidCameraError, "no distortion"),
        (lambda m, p: m.update(camera_model="KANNALA"), InvalidCameraError, "unknown camera_model"),
        (lambda m, p: m.update(camera_model="OPENCV_FISHEYE"), InvalidCameraError, "camera_model"),
        (lambda m, p: m["frames"][1].update(fl_x=31.0, w=W + 4), ShapeMismatchError, "frame 1.*w/h"),
        (lambda m, p: m["frames"][1].update(transform_matrix=(np.eye(4) * 1.1).tolist()), InvalidCameraError,
         "frame 1.*(orthonormal|last row)"),
        (lambda m, p: m["frames"][1].update(transform_matrix=[[1, 2], [3, 4]]), ShapeMismatchError, "frame 1"),
        (lambda m, p: m["frames"][0].update(depth_file_path="d.npy"), InvalidInputError, "npy"),
        (lambda m, p: m["frames"][0].update(mask_path="m.png"), MissingFileError, "mask"),
        (lambda m, p: m.update(w=W + 2), ShapeMismatchError, "w/h"),
        (lambda m, p: m.update(frames=[]), CorruptFileError, "empty"),
        (lambda m, p: _write_png(p / "im1.png", np.zeros((H + 1, W, 3))), ShapeMismatchError, "im1.png"),
    ],
)
def test_transforms_bad_input(tmp_path, mutate, error, match):
    meta = _good_meta(tmp_path)
    mutate(meta, tmp_path)
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(error, match=match):
        load_transforms_json(tmp_path, progress=False)


def test_transforms_missing_and_corrupt(tmp_path):
    with pytest.raises(MissingFileError):
        load_transforms_json(tmp_path / "nothing")
    (tmp_path / "transforms.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match="transforms.json"):
        load_transforms_json(tmp_path)
    (tmp_path / "transforms.json").write_text(json.dumps({"frames": "x"}))
    with pytest.raises(CorruptFileError):
        load_transforms_json(tmp_path)
    meta = _good_meta(tmp_path, 1)
    (tmp_path / "im0.png").write_bytes(b"not a png")
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(CorruptFileError, match="im0.png"):
        load_transforms_json(tmp_path)


# ------------------------------------------------------------------------------------- COLMAP
def test_colmap_hand_written(tmp_path):
    """World-to-camera quaternion + translation, two lines per image (one with an empty POINTS2D line)."""
    model = tmp_path / "sparse" / "0"
    model.mkdir(parents=True)
    (model / "cameras.txt").write_text("# comment\n1 SIMPLE_RADIAL 24 16 30.0 12.0 8.0 0.0\n")
    s = math.sqrt(0.5)
    (model / "images.txt").write_text(
        "# Image list\n"
        f"2 {s} 0 0 {s} 1 2 3 1 b.png\n"
        "10.0 5.0 -1 12.5 6.0 3\n"
        "1 1 0 0 0 0.5 0 0 1 a.png\n"
        "\n"
    )
    (model / "points3D.txt").write_text("# pts\n1 1.0 2.0 3.0 255 0 128 0.5 1 0 2 1\n2 -1 0 4 0 0 0 0.1\n")
    _write_png(tmp_path / "images" / "a.png", np.full((H, W, 3), 0.25))
    _write_png(tmp_path / "images" / "b.png", np.full((H, W, 3), 0.75))
    p = load_colmap(model, progress=False)
    assert p.names == ["a", "b"]  # sorted by image name
    assert np.allclose(p.images[0], 64 / 255) and np.allclose(p.images[1], 191 / 255)
    intr = p.trajectory.intrinsics
    assert (intr.fx, intr.fy, intr.cx, intr.cy) == (30.0, 30.0, 12.0, 8.0)
    a, b = p.trajectory.poses
    assert np.allclose(a[:3, :3], np.eye(3)) and np.allclose(a[:3, 3], [-0.5, 0, 0])
    # b: w2c rotation is +90 deg about z; a world point X maps to R X + t in camera b
    R = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])
    X = np.array([0.3, -2.0, 5.0])
    cam = np.linalg.inv(b) @ np.r_[X, 1]
    assert np.allclose(cam[:3], R @ X + [1, 2, 3])
    assert np.allclose(p.points, [[1, 2, 3], [-1, 0, 4]])
    assert np.allclose(p.point_colors[0], [1, 0, 128 / 255])


def test_colmap_round_trip(tmp_path):
    src = _posed(3, extras=False)
    src.points = np.random.default_rng(2).normal(size=(5, 3)).astype(np.float32)
    save_colmap_text(src, tmp_path, progress=False)
    back = load_colmap(tmp_path, progress=False)
    assert back.names == src.names
    assert np.abs(back.trajectory.poses - src.trajectory.poses).max() < 1e-12
    assert back.trajectory.intrinsics == src.trajectory.intrinsics
    assert np.abs(back.images - src.images).max() <= 0.5 / 255 + 1e-6
    assert np.array_equal(back.points, src.points)


def _colmap_model(tmp_path, cameras="1 PINHOLE 24 16 30 30 12 8\n", images=None):
    (tmp_path / "cameras.txt").write_text(cameras)
    (tmp_path / "images.txt").write_text(images or "1 1 0 0 0 0 0 0 1 a.png\n\n")
    _write_png(tmp_path / "images" / "a.png", np.zeros((H, W, 3)))


@pytest.mark.parametrize(
    "cameras, images, error, match",
    [
        ("1 OPENCV 24 16 30 30 12 8 0.1 0 0 0\n", None, None, None),  # undistorted on load
        ("1 OPENCV 24 16 30 30 12 8 0.1 0 0\n", None, CorruptFileError, "needs 8 parameters"),
        ("1 RADIAL 24 16 30 12 8 0 0\n", None, None, None),  # zero distortion is fine
        ("1 OPENCV_FISHEYE 24 16 30 30 12 8 0 0 0 0\n", None, InvalidCameraError, "fisheye"),
        ("1 WEIRD 24 16 30\n", None, InvalidCameraError, "unknown camera model"),
        ("1 PINHOLE 24 16 0 30 12 8\n", None, InvalidCameraError, "positive"),
        ("1 PINHOLE 24 16 30 30 12\n", None, CorruptFileError, "needs 4 parameters"),
        ("1 PINHOLE 20 16 30 30 12 8\n", None, ShapeMismatchError, "a.png"),
        (None, "1 2 0 0 0 0 0 0 1 a.png\n\n", InvalidCameraError, "non-unit"),
        (None, "1 1 0 0 0 0 0 0 7 a.png\n\n", CorruptFileError, "camera 7"),
        (None, "1 1 0 0 0 0 0 0 1 missing.png\n\n", MissingFileError, "missing.png"),
        (None, "1 1 0 0 x 0 0 0 1 a.png\n\n", CorruptFileError, "non-numeric"),
        (None, "1 1 0 0 0 0 0 0 2 a.png\n\n", CorruptFileError, "uses camera 2"),
    ],
)
def test_colmap_bad_input(tmp_path, cameras, images, error, match):
    _colmap_model(tmp_path, cameras or "1 PINHOLE 24 16 30 30 12 8\n", images)
    if error is None:
        assert len(load_colmap(tmp_path, progress=False)) == 1
    else:
        with pytest.raises(error, match=match):
            load_colmap(tmp_path, progress=False)


def test_colmap_missing_files(tmp_path):
    with pytest.raises(MissingFileError):
        load_colmap(tmp_path / "nope")
    (tmp_path / "cameras.bin").write_bytes(b"\0")
    with pytest.raises(MissingFileError, match="lacks images.bin"):
        load_colmap(tmp_path)
    for name in ("images.bin", "points3D.bin"):
        (tmp_path / name).write_bytes(b"\0")
    with pytest.raises(CorruptFileError, match="binary model"):
        load_colmap(tmp_path)
    for name in ("cameras.bin", "images.bin", "points3D.bin"):
        (tmp_path / name).unlink()
    _colmap_model(tmp_path)
    with pytest.raises(MissingFileError, match="images folder"):
        load_colmap(tmp_path, images_dir=tmp_path / "elsewhere")
