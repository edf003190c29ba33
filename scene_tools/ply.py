"""3DGS ``.ply`` import/export (the layout of the original 3DGS code, gsplat's and nerfstudio's exporters).

One ``vertex`` element, binary little-endian, one row per Gaussian::

    x y z  [nx ny nz]  f_dc_0..2  f_rest_0..(3*(K-1)-1)  opacity  scale_0..2  rot_0..3  [instance_id]

- ``f_dc_c`` is the DC coefficient of colour channel c (``sh[:, 0, c]``).
- ``f_rest`` is stored **channel-major**: first the K-1 higher-order coefficients of R, then those of G,
  then those of B, i.e. ``f_rest_j = sh[:, 1 + j % (K-1), j // (K-1)]``. This is what the original 3DGS
  code writes (``features_rest.transpose(1, 2).flatten(1)`` of an [N, K-1, 3] tensor) and what gsplat's
  ``export_splats`` writes (``shN.permute(0, 2, 1).reshape(N, -1)``).
- ``opacity`` is the logit, ``scale_i`` the log standard deviations, ``rot`` the quaternion (w, x, y, z),
  all in raw form exactly as :class:`GaussianScene` keeps them, so save -> load is bit-exact (float32).
- ``nx ny nz`` are zeros, written because the original 3DGS writer does; readers ignore them.
- ``instance_id`` (int32) is our extra property; readers that look properties up by name ignore it.
  Loading a file without it gives zeros. Viewers with a hard-coded struct layout (the SIBR viewer
  expects exactly degree 3 and no extra properties) need ``save_ply(..., instance_ids=False)`` and SH
  degree 3.
- ``GaussianScene.metadata`` goes into one ``comment simharmony_metadata {json}`` header line.

Readers accept any property order, float or double properties, binary little/big endian and ASCII.
Also here: :func:`save_points_ply` / :func:`load_points_ply` for coloured sparse point clouds
(x y z red green blue as uchar, as nerfstudio's ``sparse_pc.ply``), and the generic :func:`read_ply`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from simharmony.errors import CorruptFileError, InvalidInputError, MissingFileError, ShapeMismatchError
from simharmony.utils.io import PathLike, atomic_path

if TYPE_CHECKING:
    from scene_tools.gaussians import GaussianScene

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_TYPE_NAMES = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort",
               "i4": "int", "u4": "uint", "f4": "float", "f8": "double"}
_MAX_HEADER_BYTES = 1 << 20
_META_COMMENT = "simharmony_metadata "


# ---------------------------------------------------------------------------------------------- generic
def write_ply(path: PathLike, columns: dict[str, np.ndarray], comments: list[str] | None = None) -> None:
    """Write one ``vertex`` element, binary little-endian, atomically.

    ``columns`` maps property name -> [N] array (dtype kept: float32, int32, uint8, ...), in file order.
    """
    if not columns:
        raise InvalidInputError("write_ply needs at least one property")
    arrays = {k: np.asarray(v) for k, v in columns.items()}
    n = {len(v) for v in arrays.values()}
    if len(n) != 1 or any(v.ndim != 1 for v in arrays.values()):
        raise ShapeMismatchError(
            "all PLY properties must be 1-D of equal length, got "
            f"{ {k: v.shape for k, v in arrays.items()} }"
        )
    (num,) = n
    fields = []
    for name, v in arrays.items():
        code = v.dtype.kind + str(v.dtype.itemsize)
        if code not in _TYPE_NAMES:
            raise InvalidInputError(f"PLY property {name!r} has unsupported dtype {v.dtype}")
        fields.append((name, "<" + code))
    rows = np.empty(num, dtype=np.dtype(fields))
    for name, v in arrays.items():
        rows[name] = v
    header = ["ply", "format binary_little_endian 1.0"]
    for c in comments or []:
        if "\n" in c or "\r" in c:
            raise InvalidInputError("PLY comments must be single lines")
        header.append(f"comment {c}")
    header.append(f"element vertex {num}")
    header += [f"property {_TYPE_NAMES[code[1:]]} {name}" for name, code in fields]
    header.append("end_header")
    data = ("\n".join(header) + "\n").encode("ascii") + rows.tobytes()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def read_ply(path: PathLike) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """Read every element of a PLY file -> ({element: {property: [count] array}}, header comments).

    Supports binary little/big endian and ASCII, scalar properties only (list properties such as mesh
    faces raise :class:`CorruptFileError`, since 3DGS and point files never use them).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"PLY file not found: {path}")
    raw = path.read_bytes()
    end = raw.find(b"end_header", 0, _MAX_HEADER_BYTES)
    if not raw.startswith(b"ply") or end < 0:
        raise CorruptFileError(f"{path} is not a PLY file (missing 'ply' magic or 'end_header')")
    body_start = raw.find(b"\n", end)
    if body_start < 0:
        raise CorruptFileError(f"{path}: header is not terminated by a newline")
    body_start += 1
    try:
        header_lines = raw[:end].decode("ascii").splitlines()
    except UnicodeDecodeError as e:
        raise CorruptFileError(f"{path}: PLY header is not ASCII") from e

    fmt, comments = None, []
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []
    for lineno, line in enumerate(header_lines[1:], start=2):
        tok = line.split()
        if not tok or tok[0] == "obj_info":
            continue
        if tok[0] == "comment":
            comments.append(line.strip()[len("comment"):].strip())
        elif tok[0] == "format" and len(tok) >= 2:
            fmt = tok[1]
        elif tok[0] == "element" and len(tok) == 3:
            try:
                count = int(tok[2])
            except ValueError:
                count = -1
            if count < 0:
                raise CorruptFileError(f"{path}:{lineno}: bad element count in {line!r}")
            elements.append((tok[1], count, []))
        elif tok[0] == "property" and elements:
            if len(tok) >= 2 and tok[1] == "list":
                raise CorruptFileError(f"{path}:{lineno}: list properties are not supported ({line.strip()!r})")
            if len(tok) != 3 or tok[1] not in _PLY_TYPES:
                raise CorruptFileError(f"{path}:{lineno}: bad property line {line!r}")
            elements[-1][2].append((tok[2], _PLY_TYPES[tok[1]]))
        else:
            raise CorruptFileError(f"{path}:{lineno}: unexpected PLY header line {line!r}")
    if fmt not in ("binary_little_endian", "binary_big_endian", "ascii"):
        raise CorruptFileError(f"{path}: unsupported or missing PLY format {fmt!r}")

    out: dict[str, dict[str, np.ndarray]] = {}
    if fmt == "ascii":
        tokens = raw[body_start:].split()
        pos = 0
        for name, count, props in elements:
            need = count * len(props)
            if pos + need > len(tokens):
                raise CorruptFileError(f"{path}: truncated ASCII PLY (element {name!r} needs {need} values)")
            try:
                vals = np.array(tokens[pos:pos + need], dtype=np.float64).reshape(count, len(props))
            except ValueError as e:
                raise CorruptFileError(f"{path}: non-numeric value in ASCII PLY: {e}") from e
            pos += need
            out[name] = {p: vals[:, i].astype(code) for i, (p, code) in enumerate(props)}
        return out, comments

    order = "<" if fmt == "binary_little_endian" else ">"
    offset = body_start
    for name, count, props in elements:
        if len({p for p, _ in props}) != len(props):
            raise CorruptFileError(f"{path}: duplicate property names in element {name!r}")
        dtype = np.dtype([(p, order + code) for p, code in props])
        nbytes = dtype.itemsize * count
        if offset + nbytes > len(raw):
            raise CorruptFileError(
                f"{path}: truncated PLY: element {name!r} needs {nbytes} bytes, only {len(raw) - offset} left"
            )
        rows = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
        offset += nbytes
        out[name] = {p: rows[p].astype(rows[p].dtype.newbyteorder("="), copy=True) for p, _ in props}
    return out, comments


def _vertex(path: PathLike) -> tuple[dict[str, np.ndarray], list[str]]:
    elements, comments = read_ply(path)
    if "vertex" not in elements:
        raise CorruptFileError(f"{path}: PLY file has no 'vertex' element")
    return elements["vertex"], comments


# ---------------------------------------------------------------------------------------------- 3DGS
def save_ply(scene: GaussianScene, path: PathLike, *, instance_ids: bool = True, normals: bool = True) -> None:
    """Write a :class:`GaussianScene` as a standard 3DGS binary PLY (see module docstring), atomically."""
    from scene_tools.gaussians import GaussianScene

    if not isinstance(scene, GaussianScene):
        raise InvalidInputError(f"save_ply expects a GaussianScene, got {type(scene).__name__}")
    scene.validate()
    f = lambda t: t.detach().cpu().to(torch.float32).numpy()  # noqa: E731
    n, k = len(scene), scene.sh.shape[1]
    means, sh = f(scene.means), f(scene.sh)
    cols: dict[str, np.ndarray] = {"x": means[:, 0], "y": means[:, 1], "z": means[:, 2]}
    if normals:
        zeros = np.zeros(n, np.float32)
        cols.update(nx=zeros, ny=zeros, nz=zeros)
    for c in range(3):
        cols[f"f_dc_{c}"] = sh[:, 0, c]
    rest = sh[:, 1:, :].transpose(0, 2, 1).reshape(n, 3 * (k - 1))  # channel-major
    for j in range(rest.shape[1]):
        cols[f"f_rest_{j}"] = rest[:, j]
    cols["opacity"] = f(scene.logit_opacities)
    scales, quats = f(scene.log_scales), f(scene.quats)
    for i in range(3):
        cols[f"scale_{i}"] = scales[:, i]
    for i in range(4):
        cols[f"rot_{i}"] = quats[:, i]
    if instance_ids:
        cols["instance_id"] = scene.instance_ids.detach().cpu().numpy().astype(np.int32)
    comments = ["generated by simharmony scene_tools.ply"]
    if scene.metadata:
        comments.append(_META_COMMENT + json.dumps(scene.metadata, ensure_ascii=True))
    write_ply(path, cols, comments)


def load_ply(path: PathLike, device: str = "cpu") -> GaussianScene:
    """Read a 3DGS PLY (ours, original 3DGS, gsplat, nerfstudio) into a :class:`GaussianScene`.

    Missing files raise :class:`MissingFileError`; truncated, malformed files, files lacking a 3DGS
    property, or holding NaN/inf or zero quaternions raise :class:`CorruptFileError`.
    """
    from scene_tools.gaussians import GaussianScene

    v, comments = _vertex(path)
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", *(f"scale_{i}" for i in range(3)),
                *(f"rot_{i}" for i in range(4))]
    missing = [p for p in required if p not in v]
    if missing:
        raise CorruptFileError(f"{path}: not a 3DGS PLY, vertex element lacks properties {missing}")
    rest_idx = sorted(int(m.group(1)) for p in v if (m := re.fullmatch(r"f_rest_(\d+)", p)))
    if rest_idx != list(range(len(rest_idx))) or len(rest_idx) % 3:
        raise CorruptFileError(
            f"{path}: f_rest_* properties must be f_rest_0..f_rest_(3*(K-1)-1), got "
            f"{len(rest_idx)} of them"
        )
    k = len(rest_idx) // 3 + 1
    if round(np.sqrt(k)) ** 2 != k:
        raise CorruptFileError(
            f"{path}: {len(rest_idx)} f_rest properties do not match any SH degree (expected 0, 9, 24 "
            "or 45, ...)"
        )
    col = lambda names: np.stack([v[p].astype(np.float32) for p in names], axis=1)  # noqa: E731
    n = len(v["x"])
    sh = np.zeros((n, k, 3), np.float32)
    sh[:, 0] = col([f"f_dc_{c}" for c in range(3)])
    if k > 1:
        sh[:, 1:] = col([f"f_rest_{j}" for j in range(3 * (k - 1))]).reshape(n, 3, k - 1).transpose(0, 2, 1)
    ids = v["instance_id"].astype(np.int32) if "instance_id" in v else np.zeros(n, np.int32)
    metadata: dict[str, Any] = {}
    for c in comments:
        if c.startswith(_META_COMMENT):
            try:
                metadata = json.loads(c[len(_META_COMMENT):])
            except json.JSONDecodeError as e:
                raise CorruptFileError(f"{path}: unreadable simharmony metadata comment: {e}") from e
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
    try:
        return GaussianScene(
            means=t(col(["x", "y", "z"])),
            quats=t(col([f"rot_{i}" for i in range(4)])),
            log_scales=t(col([f"scale_{i}" for i in range(3)])),
            logit_opacities=t(v["opacity"].astype(np.float32)),
            sh=t(sh),
            instance_ids=t(ids),
            metadata=metadata,
        )
    except InvalidInputError as e:
        raise CorruptFileError(f"{path}: {e}") from e


# ---------------------------------------------------------------------------------------------- points
def save_points_ply(path: PathLike, points: np.ndarray, colors: np.ndarray | None = None) -> None:
    """Write a sparse point cloud: points [P, 3] float, colors [P, 3] in [0, 1] (stored as uchar)."""
    pts = np.asarray(points, dtype=np.float32)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ShapeMismatchError(f"points must be [P, 3], got {list(pts.shape)}")
    cols = {"x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2]}
    if colors is not None:
        c = np.asarray(colors, dtype=np.float32)
        if c.shape != pts.shape:
            raise ShapeMismatchError(f"colors must be [P, 3] like points, got {list(c.shape)}")
        c8 = np.clip(np.round(c * 255), 0, 255).astype(np.uint8)
        cols.update(red=c8[:, 0], green=c8[:, 1], blue=c8[:, 2])
    write_ply(path, cols)


def load_points_ply(path: PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read x y z (+ red green blue) -> points [P, 3] float32, colors [P, 3] float32 in [0, 1] or None."""
    v, _ = _vertex(path)
    if not all(p in v for p in "xyz"):
        raise CorruptFileError(f"{path}: point PLY lacks x/y/z properties")
    pts = np.stack([v[p] for p in "xyz"], 1).astype(np.float32)
    colors = None
    if all(p in v for p in ("red", "green", "blue")):
        c = np.stack([v[p] for p in ("red", "green", "blue")], 1)
        colors = (c.astype(np.float32) / 255.0) if c.dtype == np.uint8 else c.astype(np.float32)
    if not np.isfinite(pts).all():
        raise CorruptFileError(f"{path}: point cloud contains NaN or inf")
    return pts, colors
