"""The asset databank: foreground objects as Gaussians in their own local frame, plus metadata.

An :class:`Asset` is a set of Gaussians (a :class:`~scene_tools.gaussians.GaussianScene`) expressed in
the asset's local frame and an :class:`AssetInfo` record:

- local frame: origin at the bottom centre of the (robust) bounding box, +x forward, +y left, +z up;
- metadata: category, bbox size and local min/max, source scene and instance, the lighting it was
  captured under, Gaussian count, creator, and optionally a trimesh mesh (stored as tensors).

:func:`extract_asset` cuts one instance out of a reconstructed scene and moves it to the local frame;
:class:`AssetBank` stores assets in a folder (``<id>.safetensors`` each, plus ``index.yaml``), with
atomic writes and checked reads.

Example::

    asset = extract_asset(recon, instance_id=3, category="vehicle", source="street-0")
    bank = AssetBank("assets/")
    asset_id = bank.add(asset)
    cars = bank.query(category="vehicle", min_size=3.0)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import getpass
import hashlib
import json
import math
import numbers
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scene_tools.gaussians import GaussianScene
from simharmony.errors import (
    CorruptFileError,
    InvalidInputError,
    InvalidSceneError,
    MissingFileError,
    ShapeMismatchError,
    UnknownAssetError,
)
from simharmony.utils.checks import as_finite_number
from simharmony.utils.config import Config
from simharmony.utils.io import PathLike, load_tensors, load_yaml, save_tensors, save_yaml

ASSET_FORMAT = "simharmony.asset"
ASSET_FORMAT_VERSION = 1
INDEX_NAME = "index.yaml"
INDEX_FORMAT = "simharmony.assetbank"
_GAUSSIAN_FIELDS = ("means", "quats", "log_scales", "logit_opacities", "sh", "instance_ids")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


# ---------------------------------------------------------------------------------------------- metadata
@dataclass
class AssetInfo(Config):
    """Metadata of one asset (round-trips to YAML; it is also what :meth:`AssetBank.query` returns).

    - ``size``: bounding-box length, width, height (l, w, h) in metres, along local x, y, z
    - ``bbox_min`` / ``bbox_max``: the local bounding box; bottom centre is the origin, so
      ``bbox_min[2] == 0`` and ``bbox_min[:2] == -bbox_max[:2]`` for extracted assets
    - ``lighting``: free-form description of the capture lighting, e.g.
      ``{"sun_azimuth_deg": 135.0, "sun_elevation_deg": 40.0, "color": [1, 0.95, 0.9], "intensity": 3.0}``
    - ``source_pose``: [4][4] local-to-source-world transform (where the asset sat in its source scene)
    """

    id: str
    category: str
    size: tuple[float, float, float]
    bbox_min: tuple[float, float, float]
    bbox_max: tuple[float, float, float]
    source_scene: str
    source_instance: int
    num_gaussians: int
    sh_degree: int = 0
    lighting: dict[str, Any] = field(default_factory=dict)
    created_by: str = ""
    created_at: str = ""
    has_mesh: bool = False
    source_pose: list[list[float]] | None = None


@dataclass(eq=False)
class Asset:
    """One databank entry: Gaussians in the local frame (``gaussians``), ``info`` and an optional ``mesh``.

    ``mesh`` is a ``trimesh.Trimesh`` in the same local frame, or None.
    """

    gaussians: GaussianScene
    info: AssetInfo
    mesh: Any = None

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def category(self) -> str:
        return self.info.category

    # ------------------------------------------------------------------ storage
    def save(self, path: PathLike) -> None:
        """Write one ``.safetensors`` file (Gaussians, optional mesh tensors, info as JSON in the header)."""
        tensors = dict(self.gaussians.tensors())
        if self.mesh is not None:
            tensors["mesh_vertices"] = torch.as_tensor(np.asarray(self.mesh.vertices), dtype=torch.float32)
            tensors["mesh_faces"] = torch.as_tensor(np.asarray(self.mesh.faces), dtype=torch.int64)
        meta = {
            "format": ASSET_FORMAT,
            "version": str(ASSET_FORMAT_VERSION),
            "info": json.dumps(self.info.to_dict()),
            "checksum": content_hash(self.gaussians),
        }
        save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: PathLike, device: str = "cpu") -> Asset:
        """Read an asset file; wrong format, missing tensors or a checksum mismatch raise CorruptFileError."""
        path = Path(path)
        tensors, meta = load_tensors(path, device=device)
        if meta.get("format") != ASSET_FORMAT:
            raise CorruptFileError(f"{path} is not a simharmony asset file (format={meta.get('format')!r})")
        missing = [k for k in _GAUSSIAN_FIELDS if k not in tensors]
        if missing:
            raise CorruptFileError(f"{path} lacks tensors {missing}")
        try:
            info = AssetInfo.from_dict(json.loads(meta.get("info", "")))
        except (json.JSONDecodeError, ValueError) as e:
            raise CorruptFileError(f"{path} has unreadable asset metadata: {e}") from e
        # the checksum first: damaged data is reported as such, not as whatever value check it trips first
        if meta.get("checksum") and meta["checksum"] != content_hash(tensors):
            raise CorruptFileError(f"{path}: Gaussian data does not match its checksum (file damaged)")
        try:
            gaussians = GaussianScene(**{k: tensors[k] for k in _GAUSSIAN_FIELDS}, metadata={"asset_id": info.id})
        except ValueError as e:
            raise CorruptFileError(f"{path} holds invalid Gaussians: {e}") from e
        mesh = None
        if "mesh_vertices" in tensors and "mesh_faces" in tensors:
            import trimesh

            mesh = trimesh.Trimesh(
                vertices=tensors["mesh_vertices"].double().numpy(), faces=tensors["mesh_faces"].numpy(), process=False
            )
        return cls(gaussians, info, mesh)


def content_hash(gaussians: GaussianScene | Mapping[str, torch.Tensor]) -> str:
    """sha256 hex digest of the Gaussian parameters (float32 little-endian bytes, fixed field order), of a
    GaussianScene or of its tensors by name (as read from a file, before they are validated)."""
    h = hashlib.sha256()
    for name in _GAUSSIAN_FIELDS:
        t = gaussians[name] if isinstance(gaussians, Mapping) else getattr(gaussians, name)
        t = t.detach().cpu().contiguous()
        t = t.to(torch.int32) if name == "instance_ids" else t.to(torch.float32)
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def make_asset_id(source: str, instance_id: int, gaussians: GaussianScene) -> str:
    """``<source>-<instance>-<hash8>``; the source name is reduced to [A-Za-z0-9_.-] characters."""
    src = re.sub(r"[^A-Za-z0-9_.\-]+", "_", str(source)).strip("_.-") or "asset"
    return f"{src}-{int(instance_id)}-{content_hash(gaussians)[:8]}"


# ---------------------------------------------------------------------------------------------- extraction
def robust_inlier_mask(points: torch.Tensor, quantile: float = 0.02, margin: float = 0.25) -> torch.Tensor:
    """Inliers of ``points`` [N, 3] -> bool [N]: inside the per-axis [q, 1-q] quantile box grown by ``margin``.

    The box is grown by ``margin`` times its size (at least 5 cm) on each side, so a compact object keeps
    all its Gaussians and only strays far outside the bulk (floaters, mislabelled bits of road) are cut.
    Fewer than 20 points are all kept: quantiles of so few say nothing.
    """
    n = points.shape[0]
    if n < 20:
        return torch.ones(n, dtype=torch.bool, device=points.device)
    p = points.double()
    lo = torch.quantile(p, quantile, dim=0)
    hi = torch.quantile(p, 1.0 - quantile, dim=0)
    pad = ((hi - lo) * margin).clamp_min(0.05)
    return ((p >= lo - pad) & (p <= hi + pad)).all(dim=1)


def footprint_heading(points: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """Yaw (radians, about world z) of the principal axis of the ground-plane footprint of ``points`` [N, 3].

    PCA cannot tell front from back; the sign is chosen so the heading lies in (-pi/2, pi/2], i.e. the
    forward axis points along +x of the source scene rather than against it.
    """
    xy = points[:, :2].double()
    w = torch.ones(len(xy), dtype=torch.float64) if weights is None else weights.double().clamp_min(0) + 1e-12
    mu = (w[:, None] * xy).sum(0) / w.sum()
    d = xy - mu
    cov = (w[:, None, None] * d[:, :, None] * d[:, None, :]).sum(0) / w.sum()
    _, vecs = torch.linalg.eigh(cov)
    axis = vecs[:, -1]  # largest eigenvalue
    yaw = math.atan2(float(axis[1]), float(axis[0]))
    if yaw > math.pi / 2:
        yaw -= math.pi
    elif yaw <= -math.pi / 2:
        yaw += math.pi
    return yaw


def yaw_matrix(yaw: float, translation=(0.0, 0.0, 0.0)) -> np.ndarray:
    """[4, 4] rotation about +z by ``yaw`` radians followed by ``translation``."""
    c, s = math.cos(yaw), math.sin(yaw)
    m = np.eye(4)
    m[:2, :2] = [[c, -s], [s, c]]
    m[:3, 3] = translation
    return m


def extract_asset(
    scene: GaussianScene,
    instance_id: int,
    *,
    category: str,
    source: str,
    lighting: dict[str, Any] | None = None,
    mesh: Any = None,
    heading: float | None = None,
    created_by: str | None = None,
    outlier_quantile: float = 0.02,
) -> Asset:
    """Cut the Gaussians of one instance out of ``scene`` and express them in the asset's local frame.

    - selects ``scene.instance_ids == instance_id`` (an empty selection raises InvalidSceneError listing
      the instance ids that do exist);
    - drops stray outliers outside a robust bounding box (:func:`robust_inlier_mask`);
    - rotates by -``heading`` (yaw in radians about world z; from a PCA of the ground footprint when None,
      see :func:`footprint_heading`) so the object's forward axis is local +x;
    - translates so the bottom centre of the axis-aligned local bbox of the Gaussian means is the origin.

    ``mesh`` (a trimesh in the same world frame as ``scene``) goes through the same transform.
    The Gaussians keep their SH coefficients unchanged: view-dependent colour is expressed in the local frame
    and :class:`scene_tools.scene.Scene` evaluates it with view directions rotated into that frame.
    """
    if not isinstance(scene, GaussianScene):
        raise InvalidInputError(f"extract_asset expects a GaussianScene, got {type(scene).__name__}")
    if not isinstance(category, str) or not category:
        raise InvalidInputError(f"category must be a non-empty string, got {category!r}")
    try:  # round trip through JSON: plain types only (numpy float64 becomes float), as the index is YAML
        lighting = json.loads(json.dumps(dict(lighting or {})))
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"lighting must hold plain numbers, strings, lists and dicts (JSON/YAML): {e}") from e
    sel = scene.instance_ids == int(instance_id)
    if not bool(sel.any()):
        present = sorted(int(i) for i in torch.unique(scene.instance_ids).tolist())
        raise InvalidSceneError(
            f"instance {instance_id} has no Gaussians in this scene ({len(scene)} Gaussians); "
            f"instance ids present: {present[:20]}{' ...' if len(present) > 20 else ''}"
        )
    part = scene.select(sel)
    keep = robust_inlier_mask(part.means, quantile=outlier_quantile)
    part = part.select(keep)
    if heading is None:
        heading = footprint_heading(part.means, part.opacities)
    elif not math.isfinite(float(heading)):
        raise InvalidInputError(f"heading must be finite (radians), got {heading}")
    heading = float(heading)

    rot = torch.as_tensor(yaw_matrix(-heading), dtype=torch.float64, device=part.device)
    local = (part.means.double() @ rot[:3, :3].T)
    lo, hi = local.min(0).values, local.max(0).values
    bottom_centre = torch.stack([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])
    world_to_local = rot.clone()
    world_to_local[:3, 3] = -bottom_centre
    gaussians = part.transformed(world_to_local.float())
    gaussians.instance_ids = torch.full_like(gaussians.instance_ids, int(instance_id))
    lo_l = (lo - bottom_centre).tolist()
    hi_l = (hi - bottom_centre).tolist()
    local_to_world = torch.linalg.inv(world_to_local)

    local_mesh = None
    if mesh is not None:
        local_mesh = mesh.copy()
        local_mesh.apply_transform(world_to_local.cpu().numpy())

    asset_id = make_asset_id(source, instance_id, gaussians)
    gaussians.metadata = {"asset_id": asset_id}
    info = AssetInfo(
        id=asset_id,
        category=category,
        size=tuple(float(b - a) for a, b in zip(lo_l, hi_l)),
        bbox_min=tuple(float(v) for v in lo_l),
        bbox_max=tuple(float(v) for v in hi_l),
        source_scene=str(source),
        source_instance=int(instance_id),
        num_gaussians=len(gaussians),
        sh_degree=gaussians.sh_degree,
        lighting=lighting,
        created_by=created_by if created_by is not None else _default_creator(),
        created_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        has_mesh=local_mesh is not None,
        source_pose=local_to_world.tolist(),
    )
    return Asset(gaussians, info, local_mesh)


def _default_creator() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers
        user = "unknown"
    return f"scene_tools.extract_asset ({user})"


# ---------------------------------------------------------------------------------------------- the bank
class AssetBank:
    """A folder of assets: ``<id>.safetensors`` per asset and ``index.yaml`` with every asset's info.

    Writes are atomic (temporary file, then rename) and serialised between processes with an advisory
    lock on ``.lock`` in the folder. The index is a cache of the files' headers; :meth:`rebuild_index`
    recreates it from the files.
    """

    def __init__(self, folder: PathLike, create: bool = True) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise InvalidInputError(f"asset bank path {self.folder} exists and is not a folder")
        if not self.folder.exists():
            if not create:
                raise MissingFileError(f"asset bank folder not found: {self.folder}")
            self.folder.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ paths and index
    @property
    def index_path(self) -> Path:
        return self.folder / INDEX_NAME

    def path_of(self, asset_id: str) -> Path:
        _check_id(asset_id)
        return self.folder / f"{asset_id}.safetensors"

    def _read_index(self) -> dict[str, AssetInfo]:
        if not self.index_path.exists():
            return {}
        data = load_yaml(self.index_path)
        if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT or not isinstance(data.get("assets"), dict):
            raise CorruptFileError(f"{self.index_path} is not an asset-bank index (expected format {INDEX_FORMAT!r})")
        out = {}
        for aid, info in data["assets"].items():
            try:
                out[str(aid)] = AssetInfo.from_dict(info)
            except ValueError as e:
                raise CorruptFileError(f"{self.index_path}: entry {aid!r} is invalid: {e}") from e
        return out

    def _write_index(self, entries: dict[str, AssetInfo]) -> None:
        data = {
            "format": INDEX_FORMAT,
            "version": ASSET_FORMAT_VERSION,
            "assets": {aid: entries[aid].to_dict() for aid in sorted(entries)},
        }
        save_yaml(self.index_path, data)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        try:
            import fcntl
        except ImportError:  # not POSIX: atomic renames still keep each file whole
            yield
            return
        with open(self.folder / ".lock", "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def rebuild_index(self) -> int:
        """Recreate ``index.yaml`` from the asset files' headers; returns the number of assets indexed."""
        with self._lock():
            entries = {}
            for p in sorted(self.folder.glob("*.safetensors")):
                asset = Asset.load(p)
                entries[asset.id] = asset.info
            self._write_index(entries)
        return len(entries)

    # ------------------------------------------------------------------ public API
    def add(self, asset: Asset) -> str:
        """Store ``asset`` (overwriting an asset with the same id) and return its id."""
        if not isinstance(asset, Asset):
            raise InvalidInputError(f"AssetBank.add expects an Asset, got {type(asset).__name__}")
        path = self.path_of(asset.id)
        info = asset.info
        if info.num_gaussians != len(asset.gaussians):
            raise ShapeMismatchError(
                f"asset {asset.id}: info says {info.num_gaussians} Gaussians but it holds {len(asset.gaussians)}"
            )
        with self._lock():
            asset.save(path)
            entries = self._read_index()
            entries[asset.id] = info
            self._write_index(entries)
        return asset.id

    def get(self, asset_id: str, device: str = "cpu") -> Asset:
        """Load an asset by id. Unknown ids raise UnknownAssetError; missing/corrupt files name the file."""
        entries = self._read_index()
        if asset_id not in entries:
            known = sorted(entries)
            hint = ", ".join(known[:5]) + (f", ... ({len(known)} in all)" if len(known) > 5 else "")
            raise UnknownAssetError(
                f"unknown asset id {asset_id!r} in bank {self.folder}; known ids: {hint or '(bank is empty)'}"
            )
        path = self.path_of(asset_id)
        if not path.is_file():
            raise MissingFileError(f"asset {asset_id!r} is in the index but its file is missing: {path}")
        asset = Asset.load(path, device=device)
        if asset.id != asset_id:
            raise CorruptFileError(f"{path} holds asset {asset.id!r}, not {asset_id!r}")
        return asset

    def list(self) -> list[str]:
        """Sorted ids of every asset in the bank."""
        return sorted(self._read_index())

    def infos(self) -> list[AssetInfo]:
        """Every asset's info, sorted by id, each checked against its file's header (only the header is read):
        an index edited by hand, or files changed behind its back, raise CorruptFileError or MissingFileError
        instead of queries silently following the index."""
        entries = self._read_index()
        for aid, info in entries.items():
            path = self.path_of(aid)
            if not path.is_file():
                raise MissingFileError(f"asset {aid!r} is in {self.index_path} but its file is missing: {path} "
                                       "(AssetBank.rebuild_index() recreates the index from the files)")
            stored = _header_info(path)
            if stored != info:
                diff = sorted(k for k, v in info.to_dict().items() if stored.to_dict().get(k) != v)
                raise CorruptFileError(f"{self.index_path}: the entry of asset {aid!r} disagrees with its file {path} "
                                       f"in {diff} (index edited by hand? AssetBank.rebuild_index() recreates it)")
        return [entries[k] for k in sorted(entries)]

    def __contains__(self, asset_id: object) -> bool:
        return asset_id in self._read_index()

    def __len__(self) -> int:
        return len(self._read_index())

    def query(
        self,
        category: str | None = None,
        min_size: float | tuple[float, float, float] | None = None,
        max_size: float | tuple[float, float, float] | None = None,
        source: str | None = None,
    ) -> list[AssetInfo]:
        """Infos of assets matching every given filter, sorted by id.

        ``min_size`` / ``max_size``: a number compares with the longest bbox side; a 3-tuple (l, w, h)
        compares per side. ``source`` matches ``source_scene`` exactly.
        """
        lo = _size_bound(min_size, "min_size")
        hi = _size_bound(max_size, "max_size")
        out = []
        for info in self.infos():
            if category is not None and info.category != category:
                continue
            if source is not None and info.source_scene != source:
                continue
            if lo is not None and not _size_ok(info.size, lo, lambda a, b: a >= b):
                continue
            if hi is not None and not _size_ok(info.size, hi, lambda a, b: a <= b):
                continue
            out.append(info)
        return out

    def remove(self, asset_id: str) -> None:
        """Delete an asset (file and index entry). Unknown ids raise UnknownAssetError."""
        with self._lock():
            entries = self._read_index()
            if asset_id not in entries:
                raise UnknownAssetError(
                    f"cannot remove unknown asset id {asset_id!r}; known ids: {sorted(entries)[:5]}"
                )
            del entries[asset_id]
            self._write_index(entries)  # index first: a crash leaves an orphan file, never a dangling entry
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path_of(asset_id))


def _header_info(path: Path) -> AssetInfo:
    """The AssetInfo stored in an asset file's safetensors header, without reading its tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return AssetInfo.from_dict(json.loads(meta.get("info", "")))
    except Exception as e:  # noqa: BLE001 - a bad header, bad JSON, or invalid info fields
        raise CorruptFileError(f"{path} has an unreadable asset header: {e}") from e


def _check_id(asset_id: str) -> None:
    if not isinstance(asset_id, str) or not _ID_RE.match(asset_id):
        raise InvalidInputError(
            f"asset id {asset_id!r} is not valid: expected letters, digits, '_', '.', '-' (like 'street0-3-1a2b3c4d')"
        )


def _size_bound(v, name: str):
    if v is None:
        return None
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        return as_finite_number(v, name, minimum=0.0)
    if isinstance(v, (str, bytes)) or not isinstance(v, Iterable):
        raise InvalidInputError(f"{name} must be a number or (l, w, h), got {type(v).__name__} {v!r}")
    t = tuple(v)
    if len(t) != 3:
        raise ShapeMismatchError(f"{name} must be a number or (l, w, h), got {v!r}")
    return tuple(as_finite_number(x, f"{name}[{i}]", minimum=0.0) for i, x in enumerate(t))


def _size_ok(size, bound, cmp) -> bool:
    if isinstance(bound, float):
        return cmp(max(size), bound)
    return all(cmp(s, b) for s, b in zip(size, bound))
