"""Foundation: config round trips, atomic I/O, cameras, trajectories, Gaussian scenes."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch

from scene_tools.cameras import Intrinsics, Trajectory, check_pose, look_at, opengl_to_opencv, straight_trajectory
from scene_tools.gaussians import GaussianScene
from scene_tools.transforms import matrix_to_quat, quat_multiply, quat_to_matrix
from scene_tools.views import PosedImages
from simharmony.errors import (
    ConfigError,
    CorruptFileError,
    InvalidCameraError,
    MissingFileError,
    NonFiniteError,
    ShapeMismatchError,
)
from simharmony.utils.config import Config
from simharmony.utils.io import atomic_path, load_tensors, load_yaml, save_tensors, save_yaml

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class _Inner(Config):
    a: float = 1.0
    mode: Literal["x", "y"] = "x"


@dataclass
class _Outer(Config):
    name: str = "n"
    size: tuple[int, int] = (4, 3)
    inner: _Inner = field(default_factory=_Inner)
    maybe: float | None = None


def test_config_roundtrip(tmp_path):
    cfg = _Outer(name="z", size=(8, 6), inner=_Inner(a=2.5, mode="y"), maybe=0.5)
    cfg.save(tmp_path / "c.yaml")
    assert _Outer.load(tmp_path / "c.yaml") == cfg


def test_config_base_chain_merges_mappings_key_by_key(tmp_path):
    """A file states only what it changes: ``base`` (relative path) is loaded first, nested mappings merge key
    by key; a loop is a ConfigError; the shipped stage-2/3 recipes load as full configs."""
    from simharmony.training.config import TrainConfig

    _Outer(name="base", size=(8, 6), inner=_Inner(a=2.5, mode="y")).save(tmp_path / "a.yaml")
    (tmp_path / "sub").mkdir()
    save_yaml(tmp_path / "sub" / "b.yaml", {"base": "../a.yaml", "inner": {"mode": "x"}, "maybe": 1.0})
    assert _Outer.load(tmp_path / "sub" / "b.yaml") == _Outer(name="base", size=(8, 6), inner=_Inner(a=2.5, mode="x"), maybe=1.0)
    save_yaml(tmp_path / "c.yaml", {"base": "d.yaml"})
    save_yaml(tmp_path / "d.yaml", {"base": "c.yaml"})
    with pytest.raises(ConfigError, match="loops"):
        _Outer.load(tmp_path / "c.yaml")
    anchor = TrainConfig.load(ROOT / "configs" / "train_anchor.yaml")
    default = TrainConfig.load(ROOT / "configs" / "train_default.yaml")
    assert anchor.trainable == ["backbone.colour_anchor"] and anchor.model == default.model and anchor.holdout == default.holdout
    # the shipped recipe is one chain: each stage starts from the previous stage's output folder
    stages = ["default", "finetune", "finetune_recon", "finetune_ssim", "anchor"]
    for prev, stage in zip(stages, stages[1:]):
        assert TrainConfig.load(ROOT / "configs" / f"train_{stage}.yaml").init_model == f"runs/{prev}/final"
    shipped = load_yaml(ROOT / "weights" / "enhancer" / "config.yaml")["config"]
    assert all(shipped[k] == v for k, v in anchor.init_model_overrides.items())


@pytest.mark.parametrize(
    "data,msg",
    [({"nope": 1}, "unknown keys"), ({"size": [1]}, "expected 2 items"), ({"inner": {"mode": "q"}}, "not one of"),
     ({"name": 3}, "expected a string"), ({"inner": {"a": "big"}}, "expected a number")],
)
def test_config_rejects_bad_values(data, msg):
    with pytest.raises(ConfigError, match=msg):
        _Outer.from_dict(data)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_yaml_and_tensor_errors(tmp_path):
    with pytest.raises(MissingFileError):
        load_yaml(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(CorruptFileError):
        load_yaml(tmp_path / "bad.yaml")
    save_yaml(tmp_path / "ok.yaml", {"k": [1, 2]})
    assert load_yaml(tmp_path / "ok.yaml") == {"k": [1, 2]}
    save_tensors(tmp_path / "t.safetensors", {"x": torch.arange(6.0)}, {"m": "1"})
    tensors, meta = load_tensors(tmp_path / "t.safetensors")
    assert torch.equal(tensors["x"], torch.arange(6.0)) and meta == {"m": "1"}
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError):
        load_tensors(tmp_path / "trunc.safetensors")


def test_intrinsics_validation_and_scaling():
    with pytest.raises(InvalidCameraError, match="focal"):
        Intrinsics(0.0, 10.0, 5, 5, 10, 10)
    with pytest.raises(InvalidCameraError, match="focal"):
        Intrinsics(-3.0, 10.0, 5, 5, 10, 10)
    with pytest.raises(InvalidCameraError):
        Intrinsics(10.0, 10.0, 5, 5, 0, 10)
    intr = Intrinsics.from_fov(90.0, 256, 144)
    assert intr.fx == pytest.approx(128.0)
    half = intr.scaled(0.5)
    assert (half.width, half.height) == (128, 72) and half.fx == pytest.approx(64.0)


def test_pose_checks():
    good = look_at([0, 0, 1.6], [10, 0, 1.6])
    np.testing.assert_allclose(check_pose(good), good)
    # camera looks along +x: its z axis (forward) is world +x, its y axis (down) is world -z
    np.testing.assert_allclose(good[:3, 2], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(good[:3, 1], [0, 0, -1], atol=1e-12)
    skewed = good.copy()
    skewed[:3, 0] *= 1.1
    with pytest.raises(InvalidCameraError, match="orthonormal"):
        check_pose(skewed)
    reflected = good.copy()
    reflected[:3, 0] *= -1
    with pytest.raises(InvalidCameraError, match="determinant"):
        check_pose(reflected)
    nan = good.copy()
    nan[0, 3] = np.nan
    with pytest.raises(NonFiniteError):
        check_pose(nan)
    with pytest.raises(ShapeMismatchError):
        check_pose(np.eye(3))
    np.testing.assert_allclose(opengl_to_opencv(opengl_to_opencv(good)), good)


def test_lateral_shift_moves_left_and_keeps_orientation():
    traj = straight_trajectory(Intrinsics.from_fov(70, 64, 36), 5, heading_deg=0.0, pitch_deg=-5.0)
    shifted = traj.shifted_laterally(3.0)
    delta = shifted.positions - traj.positions
    np.testing.assert_allclose(delta, np.tile([0.0, 3.0, 0.0], (5, 1)), atol=1e-9)  # +y is left when driving +x
    np.testing.assert_allclose(shifted.poses[:, :3, :3], traj.poses[:, :3, :3])
    diag = straight_trajectory(Intrinsics.from_fov(70, 64, 36), 3, heading_deg=90.0)
    np.testing.assert_allclose(diag.shifted_laterally(2.0).positions - diag.positions, np.tile([-2.0, 0, 0], (3, 1)), atol=1e-9)
    assert len(traj[1:3]) == 2


def test_quaternion_helpers_roundtrip():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(64, 4, generator=g)
    R = quat_to_matrix(q)
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3).expand(64, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(quat_to_matrix(matrix_to_quat(R)), R, atol=1e-5, rtol=0)
    torch.testing.assert_close(quat_to_matrix(quat_multiply(q[:1], q[1:2])), R[:1] @ R[1:2], atol=1e-5, rtol=0)


def _scene(n=10):
    g = torch.Generator().manual_seed(1)
    return GaussianScene.from_points(torch.randn(n, 3, generator=g), torch.rand(n, 3, generator=g), sh_degree=1)


def test_gaussian_scene_save_load_and_errors(tmp_path):
    s = _scene()
    s.metadata["source"] = "unit"
    s.save(tmp_path / "s.safetensors")
    t = GaussianScene.load(tmp_path / "s.safetensors")
    for k, v in s.tensors().items():
        assert torch.equal(v, getattr(t, k)), k
    assert t.metadata == {"source": "unit"} and t.sh_degree == 1
    torch.testing.assert_close(t.rgb, s.rgb)
    with pytest.raises(MissingFileError):
        GaussianScene.load(tmp_path / "none.safetensors")
    save_tensors(tmp_path / "other.safetensors", {"x": torch.zeros(1)})
    with pytest.raises(CorruptFileError, match="not a simharmony Gaussian scene"):
        GaussianScene.load(tmp_path / "other.safetensors")
    bad = s.tensors()
    bad["means"] = bad["means"].clone()
    bad["means"][3, 1] = float("nan")
    with pytest.raises(NonFiniteError, match="1 Gaussian"):
        GaussianScene(**bad)
    bad = s.tensors()
    bad["quats"] = bad["quats"][:5]
    with pytest.raises(ShapeMismatchError, match="quats"):
        GaussianScene(**bad)


def test_gaussian_scene_rigid_transform():
    s = _scene(5)
    T = look_at([1.0, 2.0, 3.0], [4.0, 0.0, 3.0])
    moved = s.transformed(torch.tensor(T, dtype=torch.float32))
    expected = s.means @ torch.tensor(T[:3, :3], dtype=torch.float32).T + torch.tensor(T[:3, 3], dtype=torch.float32)
    torch.testing.assert_close(moved.means, expected)
    R_before = quat_to_matrix(s.quats)
    torch.testing.assert_close(quat_to_matrix(moved.quats), torch.tensor(T[:3, :3], dtype=torch.float32) @ R_before, atol=1e-5, rtol=0)
    both = GaussianScene.concat([s, moved])
    assert len(both) == 10


def test_posed_images_checks():
    intr = Intrinsics.from_fov(60, 8, 6)
    traj = straight_trajectory(intr, 3)
    imgs = np.zeros((3, 6, 8, 3), np.uint8)
    p = PosedImages(imgs, traj)
    assert p.images.dtype == np.float32 and len(p.subset([0, 2])) == 2
    with pytest.raises(ShapeMismatchError, match="intrinsics"):
        PosedImages(np.zeros((3, 6, 9, 3)), traj)
    with pytest.raises(ShapeMismatchError, match="poses"):
        PosedImages(np.zeros((2, 6, 8, 3)), traj)
    with pytest.raises(NonFiniteError):
        PosedImages(np.full((3, 6, 8, 3), np.nan), traj)
    with pytest.raises(ShapeMismatchError, match="depths"):
        PosedImages(imgs, traj, depths=np.zeros((3, 6, 7)))


def test_trajectory_rejects_bad_poses():
    intr = Intrinsics.from_fov(60, 8, 6)
    with pytest.raises(InvalidCameraError, match="empty"):
        Trajectory(np.zeros((0, 4, 4)), intr)
    poses = np.stack([np.eye(4)] * 2)
    poses[1, :3, :3] *= 2
    with pytest.raises(InvalidCameraError, match=r"poses\[1\]"):
        Trajectory(poses, intr)


def test_trajectory_yaml_roundtrip(tmp_path):
    traj = straight_trajectory(Intrinsics.from_fov(70, 64, 36), 4, lateral_sway_m=0.3)
    traj.save(tmp_path / "t.yaml")
    back = Trajectory.load(tmp_path / "t.yaml")
    np.testing.assert_allclose(back.poses, traj.poses, atol=1e-12)
    np.testing.assert_allclose(back.times, traj.times)
    assert back.intrinsics == traj.intrinsics
    (tmp_path / "bad.yaml").write_text("intrinsics: {fx: 1}\n")
    with pytest.raises(Exception, match="intrinsics|unknown|missing"):
        Trajectory.load(tmp_path / "bad.yaml")
