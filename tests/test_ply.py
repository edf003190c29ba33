"""3DGS .ply import/export: exact round trips, the channel-major f_rest layout, hand-written headers, bad files."""

import struct

import numpy as np
import pytest
import torch

from scene_tools.gaussians import GaussianScene
from scene_tools.ply import load_ply, load_points_ply, read_ply, save_ply, save_points_ply
from simharmony.errors import CorruptFileError, MissingFileError


def _random_scene(n: int, degree: int, seed: int = 0) -> GaussianScene:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return GaussianScene(
        means=torch.randn(n, 3, generator=g) * 5,
        quats=torch.randn(n, 4, generator=g),
        log_scales=torch.randn(n, 3, generator=g) - 3,
        logit_opacities=torch.randn(n, generator=g),
        sh=torch.randn(n, k, 3, generator=g),
        instance_ids=torch.randint(0, 7, (n,), generator=g, dtype=torch.int32),
        metadata={"source": "test", "frame": 3},
    )


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip_exact(tmp_path, degree):
    scene = _random_scene(50, degree, seed=degree)
    path = tmp_path / "s.ply"
    save_ply(scene, path)
    back = load_ply(path)
    for name in ("means", "quats", "log_scales", "logit_opacities", "sh", "instance_ids"):
        a, b = getattr(scene, name), getattr(back, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert back.metadata == scene.metadata
    assert back.sh_degree == degree


def test_layout_matches_standard_order(tmp_path):
    """Read the file back field by field and check the header order and channel-major f_rest mapping."""
    scene = _random_scene(4, 2)
    path = tmp_path / "s.ply"
    save_ply(scene, path)
    header = path.read_bytes().split(b"end_header\n")[0].decode()
    props = [line.split()[-1] for line in header.splitlines() if line.startswith("property")]
    expected = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{j}" for j in range(24)]
                + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3", "instance_id"])
    assert props == expected
    v = read_ply(path)[0]["vertex"]
    sh = scene.sh.numpy()
    # f_rest_j = coefficient 1 + j % 8 of channel j // 8 (8 = K - 1 for degree 2)
    assert np.array_equal(v["f_rest_0"], sh[:, 1, 0])
    assert np.array_equal(v["f_rest_7"], sh[:, 8, 0])
    assert np.array_equal(v["f_rest_8"], sh[:, 1, 1])
    assert np.array_equal(v["f_rest_23"], sh[:, 8, 2])
    assert np.array_equal(v["rot_0"], scene.quats[:, 0].numpy())  # w first
    assert v["instance_id"].dtype == np.int32


def test_matches_gsplat_exporter(tmp_path):
    """gsplat's own exporter (independent code) must produce a file we read back identically."""
    exporter = pytest.importorskip("gsplat.exporter")
    scene = _random_scene(20, 3)
    data = exporter.splat2ply_bytes(
        scene.means, scene.log_scales, scene.quats, scene.logit_opacities, scene.sh[:, 0],
        scene.sh[:, 1:].permute(0, 2, 1).reshape(20, -1),  # what export_splats does internally
    )
    path = tmp_path / "gsplat.ply"
    path.write_bytes(data)
    back = load_ply(path)
    assert torch.equal(back.sh, scene.sh) and torch.equal(back.quats, scene.quats)
    assert torch.equal(back.instance_ids, torch.zeros(20, dtype=torch.int32))
    # and gsplat's bytes equal ours once our extra properties are switched off (no normals/ids/comments)
    ours = tmp_path / "ours.ply"
    save_ply(GaussianScene(**{k: v for k, v in scene.tensors().items()}), ours, instance_ids=False, normals=False)
    body = ours.read_bytes().split(b"end_header\n", 1)[1]
    assert body == data.split(b"end_header\n", 1)[1]


def test_hand_written_header(tmp_path):
    """A degree-1 file written by hand with struct in the original 3DGS order (with normals, no ids)."""
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{j}" for j in range(9)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    header = "ply\nformat binary_little_endian 1.0\nelement vertex 2\n"
    header += "".join(f"property float {n}\n" for n in names) + "end_header\n"
    rows = []
    for i in range(2):
        vals = [1.0 + i, 2.0, 3.0, 0, 0, 0, 0.1, 0.2, 0.3]
        vals += [10 * c + kk + i for c in range(3) for kk in range(3)]  # R: 0,1,2  G: 10,11,12  B: 20,21,22
        vals += [-0.5, -1.0, -2.0, -3.0, 1.0, 0.0, 0.0, 0.0]
        rows.append(struct.pack("<" + "f" * len(names), *vals))
    path = tmp_path / "hand.ply"
    path.write_bytes(header.encode() + b"".join(rows))
    s = load_ply(path)
    assert s.sh_degree == 1 and len(s) == 2
    assert torch.allclose(s.means[1], torch.tensor([2.0, 2.0, 3.0]))
    assert torch.allclose(s.sh[0, 0], torch.tensor([0.1, 0.2, 0.3]))
    # sh[n, 1 + k, c] = 10 c + k + n
    expect = torch.tensor([[10.0 * c + kk for c in range(3)] for kk in range(3)])
    assert torch.equal(s.sh[0, 1:], expect) and torch.equal(s.sh[1, 1:], expect + 1)
    assert torch.equal(s.quats[0], torch.tensor([1.0, 0, 0, 0]))
    assert float(s.logit_opacities[0]) == -0.5
    assert torch.equal(s.log_scales[0], torch.tensor([-1.0, -2.0, -3.0]))
    assert torch.equal(s.instance_ids, torch.zeros(2, dtype=torch.int32))


def test_ascii_and_double_and_reordered(tmp_path):
    names = ["rot_0", "rot_1", "rot_2", "rot_3", "x", "y", "z", "opacity", "scale_0", "scale_1", "scale_2",
             "f_dc_0", "f_dc_1", "f_dc_2"]
    vals = [1, 0, 0, 0, 4, 5, 6, 0.25, -1, -1, -1, 0.5, 0.6, 0.7]
    text = "ply\nformat ascii 1.0\ncomment hi\nelement vertex 1\n" + "".join(f"property double {n}\n" for n in names)
    text += "end_header\n" + " ".join(map(str, vals)) + "\n"
    (tmp_path / "a.ply").write_text(text)
    s = load_ply(tmp_path / "a.ply")
    assert torch.equal(s.means[0], torch.tensor([4.0, 5.0, 6.0]))
    assert torch.allclose(s.sh[0, 0], torch.tensor([0.5, 0.6, 0.7]))
    # big-endian double
    header = "ply\nformat binary_big_endian 1.0\nelement vertex 1\n" + "".join(f"property double {n}\n" for n in names)
    (tmp_path / "b.ply").write_bytes(header.encode() + b"end_header\n" + struct.pack(">" + "d" * 14, *vals))
    assert torch.equal(load_ply(tmp_path / "b.ply").means, s.means)


def test_bad_files(tmp_path):
    with pytest.raises(MissingFileError):
        load_ply(tmp_path / "nope.ply")
    scene = _random_scene(10, 1)
    path = tmp_path / "s.ply"
    save_ply(scene, path)
    raw = path.read_bytes()
    (tmp_path / "trunc.ply").write_bytes(raw[:-7])
    with pytest.raises(CorruptFileError, match="truncated"):
        load_ply(tmp_path / "trunc.ply")
    (tmp_path / "junk.ply").write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(CorruptFileError):
        load_ply(tmp_path / "junk.ply")
    (tmp_path / "nohdr.ply").write_bytes(raw.replace(b"end_header", b"end_headex"))
    with pytest.raises(CorruptFileError):
        load_ply(tmp_path / "nohdr.ply")
    (tmp_path / "badtype.ply").write_bytes(raw.replace(b"property float opacity", b"property flaot opacity"))
    with pytest.raises(CorruptFileError):
        load_ply(tmp_path / "badtype.ply")
    # points-only file is not a 3DGS file
    save_points_ply(tmp_path / "pts.ply", np.zeros((3, 3)))
    with pytest.raises(CorruptFileError, match="lacks properties"):
        load_ply(tmp_path / "pts.ply")
    # NaN inside an otherwise valid file
    nan_scene = _random_scene(3, 0)
    save_ply(nan_scene, tmp_path / "n.ply")
    raw = bytearray((tmp_path / "n.ply").read_bytes())
    body = raw.index(b"end_header\n") + len(b"end_header\n")
    raw[body:body + 4] = struct.pack("<f", float("nan"))
    (tmp_path / "n.ply").write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="NaN"):
        load_ply(tmp_path / "n.ply")


def test_points_ply_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(30, 3)).astype(np.float32)
    cols = rng.integers(0, 256, (30, 3)) / 255.0
    save_points_ply(tmp_path / "p.ply", pts, cols)
    p2, c2 = load_points_ply(tmp_path / "p.ply")
    assert np.array_equal(p2, pts) and np.allclose(c2, cols, atol=1e-6)
