"""Atomic writes and checked readers for the project's two storage formats: safetensors and YAML.

Nothing is half-written: every writer goes to a temporary file in the target folder and renames it
into place, so an interrupted run leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from simharmony.errors import CorruptFileError, FileFormatError, MissingFileError
from simharmony.utils.checks import resolve_device

PathLike = str | os.PathLike


def ensure_writable_dir(folder: PathLike) -> Path:
    """Create ``folder`` (and parents) if needed; raise FileFormatError if it cannot be made or written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileFormatError(f"cannot create output folder {folder}: {e}") from e
    if not os.access(folder, os.W_OK):
        raise FileFormatError(f"output folder {folder} is not writable")
    return folder


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    The caller writes the temporary path however it likes (numpy, safetensors, cv2, ...).
    """
    path = Path(path)
    parent = ensure_writable_dir(path.parent)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=parent)
    except OSError as e:
        raise FileFormatError(f"cannot write {path}: {e.strerror or e}") from e
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def save_yaml(path: PathLike, data: Any) -> None:
    """Write ``data`` (plain dicts, lists, scalars) as YAML, atomically."""
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))


def load_yaml(path: PathLike) -> Any:
    """Read YAML with ``safe_load``; missing or unparsable files raise specific errors."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"YAML file not found: {path}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise CorruptFileError(f"cannot parse YAML file {path}: {e}") from e


def save_tensors(path: PathLike, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> None:
    """Save a dict of torch tensors to safetensors atomically (tensors are made contiguous on CPU)."""
    from safetensors.torch import save_file

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=dict(metadata) if metadata else None)


def load_weights_file(path: PathLike, what: str, hint: str = "") -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, metadata) of a network's weights: only a ``.safetensors`` file is read (a pickled ``.pth`` is
    refused by name); a missing file is a MissingFileError ending with ``hint`` (how to make it)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what} weights file not found: {path}{hint}")
    if path.suffix != ".safetensors":
        raise CorruptFileError(f"{path}: {what} weights must be a .safetensors file (pickled .pth files are not loaded)")
    return load_tensors(path)


def tensor_shapes(path: PathLike) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes in a safetensors file's header; no tensor data is read."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"safetensors file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (a safe_open handle, not a dict)
    except Exception as e:  # safetensors raises its own SafetensorError / OSError on bad headers
        raise CorruptFileError(f"cannot read safetensors file {path} (truncated or not safetensors): {e}") from e


def load_tensors(path: PathLike, device: str = "cpu") -> tuple[dict[str, Any], dict[str, str]]:
    """Load (tensors, metadata) from a safetensors file, raising clear errors on missing or corrupt files."""
    from safetensors import safe_open

    device = str(resolve_device(device))
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"safetensors file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own SafetensorError / OSError on bad headers
        raise CorruptFileError(f"cannot read safetensors file {path} (truncated or not safetensors): {e}") from e
    return tensors, metadata
