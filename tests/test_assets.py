"""Asset extraction and the databank: local frame, round trips, queries, bad files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from scene_tools.assets import Asset, AssetBank, AssetInfo, extract_asset, footprint_heading
from scene_tools.gaussians import GaussianScene
from simharmony.errors import (
    CorruptFileError,
    InvalidInputError,
    InvalidSceneError,
    MissingFileError,
    UnknownAssetError,
)

L, W, H = 4.0, 1.8, 1.5  # the car's box


def _car_local_points() -> torch.Tensor:
    """A regular grid filling the box [-L/2, L/2] x [-W/2, W/2] x [0, H] (bottom centre at the origin)."""
    xs, ys, zs = torch.linspace(-L / 2, L / 2, 9), torch.linspace(-W / 2, W / 2, 5), torch.linspace(0, H, 4)
    return torch.stack(torch.meshgrid(xs, ys, zs, indexing="ij"), -1).reshape(-1, 3)


def _yaw(theta: float) -> torch.Tensor:
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _source_scene(yaw: float = 0.3, centre=(10.0, 3.0, 0.2), outlier: bool = True):
    """Ground Gaussians (id 0), a car (id 3) rotated by ``yaw`` at ``centre`` and an optional stray id-3 Gaussian."""
    g = torch.Generator().manual_seed(0)
    ground = torch.rand(300, 3, generator=g) * torch.tensor([30.0, 16.0, 0.0]) - torch.tensor([0.0, 8.0, 0.0])
    car_local = _car_local_points()
    car = car_local @ _yaw(yaw).T + torch.tensor(centre)
    pts = [ground, car]
    ids = [torch.zeros(len(ground), dtype=torch.int32), torch.full((len(car),), 3, dtype=torch.int32)]
    if outlier:
        pts.append(torch.tensor([[40.0, -20.0, 6.0]]))
        ids.append(torch.tensor([3], dtype=torch.int32))
    pts = torch.cat(pts)
    colors = torch.rand(len(pts), 3, generator=g)
    scene = GaussianScene.from_points(pts, colors, scale=0.1, opacity=0.9, sh_degree=1, instance_ids=torch.cat(ids))
    return scene, car_local, car


# ---------------------------------------------------------------------------------------------- extraction
def test_extract_asset_local_frame_and_outlier_removal():
    scene, car_local, car_world = _source_scene(yaw=0.3)
    asset = extract_asset(scene, 3, category="vehicle", source="street-0", lighting={"sun_elevation_deg": 40.0})
    info = asset.info
    # the stray Gaussian is gone, the car is complete
    assert info.num_gaussians == len(car_local) == len(asset.gaussians)
    # bottom centre of the bbox at the origin, size as built
    np.testing.assert_allclose(info.bbox_min[2], 0.0, atol=1e-5)
    np.testing.assert_allclose(info.bbox_min[:2], [-v for v in info.bbox_max[:2]], atol=1e-5)
    np.testing.assert_allclose(info.size, (L, W, H), atol=1e-4)
    # PCA recovers the heading, so local points equal the grid we built (independent reference)
    np.testing.assert_allclose(asset.gaussians.means.numpy(), car_local.numpy(), atol=1e-4)
    # source_pose maps local back to where the car was
    T = torch.tensor(info.source_pose, dtype=torch.float64)
    back = asset.gaussians.means.double() @ T[:3, :3].T + T[:3, 3]
    np.testing.assert_allclose(back.numpy(), car_world.numpy(), atol=1e-4)
    assert info.id.startswith("street-0-3-") and len(info.id.split("-")[-1]) == 8
    assert info.lighting == {"sun_elevation_deg": 40.0}
    assert info.category == "vehicle" and info.source_scene == "street-0" and info.source_instance == 3
    assert info.sh_degree == 1 and info.created_by


def test_extract_asset_given_heading_and_pca_sign():
    # heading 2.9 rad: PCA alone would answer 2.9 - pi (front/back ambiguity); the given heading wins
    scene, car_local, _ = _source_scene(yaw=2.9, outlier=False)
    asset = extract_asset(scene, 3, category="vehicle", source="s", heading=2.9)
    np.testing.assert_allclose(asset.gaussians.means.numpy(), car_local.numpy(), atol=1e-4)
    auto = extract_asset(scene, 3, category="vehicle", source="s")
    np.testing.assert_allclose(auto.gaussians.means.numpy(), (car_local @ _yaw(math.pi).T).numpy(), atol=1e-4)
    assert abs(footprint_heading(scene.select(scene.instance_ids == 3).means) - (2.9 - math.pi)) < 1e-4


def test_extract_asset_rotates_orientations_and_mesh():
    scene, _, _ = _source_scene(yaw=0.5, outlier=False)
    q = torch.tensor([math.cos(0.25), 0.0, 0.0, math.sin(0.25)])  # yaw 0.5 about z
    scene.quats[scene.instance_ids == 3] = q
    mesh = trimesh.creation.box(extents=(L, W, H))
    T = np.eye(4)
    T[:3, :3] = _yaw(0.5).numpy()
    T[:3, 3] = (10.0, 3.0, 0.2 + H / 2)
    mesh.apply_transform(T)
    asset = extract_asset(scene, 3, category="vehicle", source="s", mesh=mesh)
    qa = asset.gaussians.quats / asset.gaussians.quats.norm(dim=-1, keepdim=True)
    np.testing.assert_allclose(qa.abs().numpy(), np.tile([1.0, 0, 0, 0], (len(qa), 1)), atol=1e-5)
    assert asset.info.has_mesh
    np.testing.assert_allclose(asset.mesh.bounds, [[-L / 2, -W / 2, 0.0], [L / 2, W / 2, H]], atol=1e-4)


def test_extract_asset_empty_selection_and_bad_args():
    scene, _, _ = _source_scene()
    with pytest.raises(InvalidSceneError, match="instance 99 has no Gaussians.*present: \\[0, 3\\]"):
        extract_asset(scene, 99, category="vehicle", source="s")
    with pytest.raises(InvalidInputError, match="category"):
        extract_asset(scene, 3, category="", source="s")
    with pytest.raises(InvalidInputError, match="heading"):
        extract_asset(scene, 3, category="vehicle", source="s", heading=float("nan"))
    with pytest.raises(InvalidInputError, match="lighting"):
        extract_asset(scene, 3, category="vehicle", source="s", lighting={"intensity": np.float32(2.0)})
    ok = extract_asset(scene, 3, category="vehicle", source="s", lighting={"intensity": np.float64(2.0)})
    assert type(ok.info.lighting["intensity"]) is float


# ---------------------------------------------------------------------------------------------- the bank
def _assets():
    s1, _, _ = _source_scene(yaw=0.1, outlier=False)
    car = extract_asset(s1, 3, category="vehicle", source="street-0", mesh=trimesh.creation.box(extents=(1, 1, 1)))
    g = torch.Generator().manual_seed(5)
    ped_pts = torch.rand(60, 3, generator=g) * torch.tensor([0.5, 0.5, 1.8]) + torch.tensor([3.0, -2.0, 0.0])
    ids = torch.full((60,), 7, dtype=torch.int32)
    s2 = GaussianScene.from_points(ped_pts, torch.rand(60, 3, generator=g), instance_ids=ids)
    ped = extract_asset(s2, 7, category="pedestrian", source="street-1")
    return car, ped


def _tensors_equal(a: GaussianScene, b: GaussianScene) -> None:
    for k, v in a.tensors().items():
        assert torch.equal(v, b.tensors()[k]), k


def test_bank_round_trip_query_remove(tmp_path):
    car, ped = _assets()
    bank = AssetBank(tmp_path / "bank")
    assert bank.list() == [] and len(bank) == 0
    cid, pid = bank.add(car), bank.add(ped)
    assert bank.list() == sorted([cid, pid]) and cid in bank
    got = bank.get(cid)
    _tensors_equal(got.gaussians, car.gaussians)
    assert got.info == car.info
    np.testing.assert_allclose(got.mesh.vertices, car.mesh.vertices, atol=1e-6)
    np.testing.assert_array_equal(got.mesh.faces, car.mesh.faces)
    assert bank.get(pid).mesh is None
    # a fresh handle on the same folder sees the same thing (index on disk)
    bank2 = AssetBank(tmp_path / "bank")
    assert bank2.list() == bank.list()

    assert [i.id for i in bank.query(category="vehicle")] == [cid]
    assert [i.id for i in bank.query(category="pedestrian")] == [pid]
    assert [i.id for i in bank.query(min_size=3.0)] == [cid]  # longest side: car 4 m, pedestrian ~1.8 m
    assert [i.id for i in bank.query(max_size=2.5)] == [pid]
    assert [i.id for i in bank.query(min_size=(3.5, 1.5, 1.0))] == [cid]
    assert [i.id for i in bank.query(source="street-1")] == [pid]
    assert bank.query(category="vehicle", source="street-1") == []
    assert all(isinstance(i, AssetInfo) for i in bank.query())

    bank.remove(cid)
    assert bank.list() == [pid]
    assert not (tmp_path / "bank" / f"{cid}.safetensors").exists()
    with pytest.raises(UnknownAssetError):
        bank.remove(cid)
    # no temporary files left behind by the atomic writes
    assert not [p for p in (tmp_path / "bank").iterdir() if p.name.endswith(".tmp") or ".tmp." in p.name]


def test_bank_unknown_asset_lists_known_ids(tmp_path):
    car, _ = _assets()
    bank = AssetBank(tmp_path)
    cid = bank.add(car)
    with pytest.raises(UnknownAssetError, match=f"unknown asset id 'nope-1-00000000'.*{cid}") as ei:
        bank.get("nope-1-00000000")
    assert isinstance(ei.value, KeyError)
    with pytest.raises(InvalidInputError, match="not valid"):
        bank.path_of("../escape")


def test_bank_corrupt_and_missing_files(tmp_path):
    car, ped = _assets()
    bank = AssetBank(tmp_path)
    cid, pid = bank.add(car), bank.add(ped)
    path = tmp_path / f"{cid}.safetensors"

    # garbage instead of safetensors
    good = path.read_bytes()
    path.write_bytes(b"this is not a safetensors file")
    with pytest.raises(CorruptFileError, match=str(path.name)):
        bank.get(cid)
    # truncated
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptFileError, match=str(path.name)):
        bank.get(cid)
    # intact header, damaged data: caught by the checksum
    bad = bytearray(good)
    bad[-5] ^= 0xFF
    path.write_bytes(bytes(bad))
    with pytest.raises(CorruptFileError, match="checksum"):
        bank.get(cid)
    # missing file but still indexed
    path.unlink()
    with pytest.raises(MissingFileError, match=path.name):
        bank.get(cid)
    # corrupt index
    (tmp_path / "index.yaml").write_text("assets: [unclosed")
    with pytest.raises(CorruptFileError, match="index.yaml"):
        bank.list()
    (tmp_path / "index.yaml").write_text("just a string\n")
    with pytest.raises(CorruptFileError, match="index.yaml"):
        bank.list()
    # rebuild from the remaining files
    assert bank.rebuild_index() == 1 and bank.list() == [pid]


def test_bank_rejects_bad_input(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInputError, match="not a folder"):
        AssetBank(tmp_path / "file")
    with pytest.raises(MissingFileError):
        AssetBank(tmp_path / "nowhere", create=False)
    bank = AssetBank(tmp_path / "b")
    with pytest.raises(InvalidInputError, match="expects an Asset"):
        bank.add("car")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="min_size"):
        bank.query(min_size=(1.0, 2.0))


def test_asset_file_round_trip_without_bank(tmp_path):
    car, _ = _assets()
    car.save(tmp_path / "car.safetensors")
    back = Asset.load(tmp_path / "car.safetensors")
    _tensors_equal(back.gaussians, car.gaussians)
    assert back.info.to_dict() == car.info.to_dict()
    car.gaussians.save(tmp_path / "plain.safetensors")  # a Gaussian scene is not an asset
    with pytest.raises(CorruptFileError, match="not a simharmony asset"):
        Asset.load(tmp_path / "plain.safetensors")


def test_hand_edited_index_is_caught_not_followed(tmp_path):
    import yaml

    bank = AssetBank(tmp_path)
    ids = [bank.add(a) for a in _assets()]
    assert bank.query(category="vehicle")  # before: the files and the index agree
    data = yaml.safe_load((tmp_path / "index.yaml").read_text())
    data["assets"][ids[0]]["category"] = "bus"  # what a hand edit does
    (tmp_path / "index.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(CorruptFileError, match=rf"asset '{ids[0]}' disagrees with its file .*category"):
        bank.query(category="bus")
    assert bank.rebuild_index() == len(ids) and bank.query(category="bus") == []
