"""The Gaussian scene type: 3DGS parameters plus per-Gaussian instance ids, stored as safetensors + YAML.

Parameters are kept in their optimisation (raw) form, as in gsplat's trainers and the 3DGS .ply format:

- ``means``     [N, 3]     world positions
- ``quats``     [N, 4]     rotations (w, x, y, z), not necessarily normalised
- ``log_scales``[N, 3]     log of the per-axis standard deviations
- ``logit_opacities`` [N]  logit of opacity
- ``sh``        [N, K, 3]  spherical-harmonic colour coefficients, K = (degree + 1) ** 2
- ``instance_ids`` [N]     int32, 0 for background, >0 for objects (vehicles, pedestrians, inserted assets);
                           any integer dtype is accepted, negative ids are not (there is no "none" id)

Files: safetensors with metadata ``format``, ``version``, ``metadata`` (JSON) and ``checksum`` (sha256 of
the tensors as stored, :func:`tensors_checksum`), verified on load; files written before the checksum
existed still load (their contents are only validated).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from simharmony.errors import (
    CorruptFileError,
    InvalidInputError,
    InvalidSceneError,
    NonFiniteError,
    ShapeMismatchError,
)
from simharmony.utils.io import PathLike, load_tensors, save_tensors

SH_C0 = 0.28209479177387814  # Y_0^0; rgb = SH_C0 * sh[:, 0] + 0.5
FORMAT_VERSION = 1
_TENSOR_FIELDS = ("means", "quats", "log_scales", "logit_opacities", "sh", "instance_ids")
_ID_DTYPES = (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8)
CHECKSUM_KEY = "checksum"  # safetensors metadata key of tensors_checksum, as asset files have


def tensors_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 hex digest of named tensors exactly as stored: per name (sorted), its dtype, shape and raw bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def verify_checksum(path: Any, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> None:
    """CorruptFileError if ``meta`` holds a checksum that ``tensors`` do not match (no checksum: old file, fine)."""
    expected = meta.get(CHECKSUM_KEY)
    if expected and expected != tensors_checksum(tensors):
        raise CorruptFileError(f"{path}: tensor data does not match its checksum (file damaged or edited)")


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    """[..., 3] colours in [0, 1] -> DC spherical-harmonic coefficients."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    return sh0 * SH_C0 + 0.5


def sh_degree_from_k(k: int) -> int:
    d = int(round(math.sqrt(k))) - 1
    if (d + 1) ** 2 != k:
        raise ShapeMismatchError(f"SH coefficient count {k} is not a square (expected 1, 4, 9, 16, ...)")
    return d


@dataclass
class GaussianScene:
    """A set of 3D Gaussians. See the module docstring for shapes and conventions."""

    means: torch.Tensor
    quats: torch.Tensor
    log_scales: torch.Tensor
    logit_opacities: torch.Tensor
    sh: torch.Tensor
    instance_ids: torch.Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._coerce()
        n = self.means.shape[0] if self.means.ndim == 2 else -1
        if self.instance_ids is None:
            self.instance_ids = torch.zeros(max(n, 0), dtype=torch.int32, device=self.means.device)
        self.validate()

    # ------------------------------------------------------------------ checks
    def _coerce(self) -> None:
        """numpy arrays become tensors and float parameters float32 (what the rasterizers take); anything that
        is neither, or parameters that are not floating point, raise InvalidSceneError naming the field."""
        for name in _TENSOR_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                if type(value).__module__ != "numpy":
                    raise InvalidSceneError(f"{name} must be a torch tensor or numpy array, got {type(value).__name__}")
                value = torch.from_numpy(value.astype(value.dtype.newbyteorder("="), copy=True))
            if name != "instance_ids":
                if not value.is_floating_point():
                    raise InvalidSceneError(f"{name} must be floating point, got {value.dtype}")
                value = value.float()
            setattr(self, name, value)
        devices = {getattr(self, k).device for k in _TENSOR_FIELDS if getattr(self, k) is not None}
        if len(devices) > 1:
            raise InvalidSceneError(f"the scene's tensors are on different devices: {sorted(map(str, devices))}")

    def validate(self, allow_empty: bool = True) -> None:
        """Check shapes, finiteness and instance ids (integers >= 0); raise :class:`ShapeMismatchError`,
        :class:`InvalidSceneError` or :class:`NonFiniteError`."""
        if self.means.ndim != 2 or self.means.shape[1] != 3:
            raise ShapeMismatchError(f"means must be [N, 3], got {tuple(self.means.shape)}")
        n = self.means.shape[0]
        expected = {
            "quats": (n, 4),
            "log_scales": (n, 3),
            "logit_opacities": (n,),
            "instance_ids": (n,),
        }
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ShapeMismatchError(f"{name} must have shape {list(shape)} for {n} Gaussians, got {list(got)}")
        if self.sh.ndim != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3:
            raise ShapeMismatchError(f"sh must be [N, K, 3] with N={n}, got {list(self.sh.shape)}")
        sh_degree_from_k(self.sh.shape[1])
        if n == 0 and not allow_empty:
            raise InvalidSceneError("the Gaussian scene is empty")
        for name in ("means", "quats", "log_scales", "logit_opacities", "sh"):
            t = getattr(self, name)
            if not torch.isfinite(t).all():
                bad = int((~torch.isfinite(t)).reshape(n, -1).any(dim=1).sum()) if n else 0
                raise NonFiniteError(f"{name} has NaN or inf values in {bad} Gaussian(s)")
        if n and (self.quats.norm(dim=-1) < 1e-12).any():
            raise InvalidSceneError("some quaternions have zero norm")
        ids = self.instance_ids
        if ids.dtype not in _ID_DTYPES:
            raise InvalidSceneError(f"instance_ids must be integers (int32), got {ids.dtype}")
        if n and int(ids.min()) < 0:
            raise InvalidSceneError(
                f"instance_ids must be >= 0 (0 = background, > 0 = objects); {int((ids < 0).sum())} Gaussian(s) "
                f"have negative ids (min {int(ids.min())})"
            )

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return sh_degree_from_k(self.sh.shape[1])

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def scales(self) -> torch.Tensor:
        """[N, 3] activated standard deviations."""
        return self.log_scales.exp()

    @property
    def opacities(self) -> torch.Tensor:
        """[N] activated opacities in (0, 1)."""
        return torch.sigmoid(self.logit_opacities)

    @property
    def rgb(self) -> torch.Tensor:
        """[N, 3] view-independent base colour (from the DC coefficient)."""
        return sh0_to_rgb(self.sh[:, 0])

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in _TENSOR_FIELDS}

    # ------------------------------------------------------------------ construction
    @classmethod
    def empty(cls, sh_degree: int = 0) -> "GaussianScene":
        k = (sh_degree + 1) ** 2
        z = torch.zeros
        return cls(z(0, 3), z(0, 4), z(0, 3), z(0), z(0, k, 3), z(0, dtype=torch.int32))

    @classmethod
    def from_points(
        cls,
        points: torch.Tensor,
        colors: torch.Tensor,
        scale: float | torch.Tensor = 0.05,
        opacity: float = 0.5,
        sh_degree: int = 0,
        instance_ids: torch.Tensor | None = None,
    ) -> "GaussianScene":
        """Isotropic Gaussians at ``points`` [N, 3] with colours [N, 3] in [0, 1] and ``opacity`` in (0, 1]."""
        points = torch.as_tensor(points, dtype=torch.float32)
        colors = torch.as_tensor(colors, dtype=torch.float32)
        if points.ndim != 2 or points.shape[1] != 3 or colors.shape != points.shape:
            raise ShapeMismatchError(f"points and colors must both be [N, 3], got {list(points.shape)} and {list(colors.shape)}")
        if len(colors) and not (float(colors.min()) >= -1e-3 and float(colors.max()) <= 1 + 1e-3):
            raise InvalidInputError(f"colors must be in [0, 1], got values in [{float(colors.min()):.4g}, "
                                    f"{float(colors.max()):.4g}] (divide 0..255 colours by 255)")
        if not 0 < opacity <= 1:
            raise InvalidInputError(f"opacity must be in (0, 1], got {opacity!r}")
        n = points.shape[0]
        scale_t = torch.as_tensor(scale, dtype=torch.float32).expand(n).clamp_min(1e-6)
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1
        sh = torch.zeros(n, (sh_degree + 1) ** 2, 3)
        sh[:, 0] = rgb_to_sh0(colors.clamp(0, 1))
        op = torch.full((n,), float(opacity)).clamp(1e-4, 1 - 1e-4)
        return cls(points, quats, scale_t.log()[:, None].repeat(1, 3), torch.logit(op), sh, instance_ids)

    @classmethod
    def concat(cls, scenes: list["GaussianScene"]) -> "GaussianScene":
        """Concatenate scenes; SH degrees are padded to the highest one."""
        if not scenes:
            raise InvalidSceneError("concat needs at least one scene")
        k = max(s.sh.shape[1] for s in scenes)
        parts = {name: [] for name in _TENSOR_FIELDS}
        for s in scenes:
            for name in _TENSOR_FIELDS:
                t = getattr(s, name)
                if name == "sh" and t.shape[1] < k:
                    t = torch.cat([t, t.new_zeros(t.shape[0], k - t.shape[1], 3)], dim=1)
                parts[name].append(t)
        return cls(**{name: torch.cat(v) for name, v in parts.items()}, metadata=dict(scenes[0].metadata))

    def select(self, mask_or_index: torch.Tensor) -> "GaussianScene":
        return GaussianScene(**{k: v[mask_or_index] for k, v in self.tensors().items()}, metadata=dict(self.metadata))

    def to(self, device: str | torch.device) -> "GaussianScene":
        return GaussianScene(**{k: v.to(device) for k, v in self.tensors().items()}, metadata=dict(self.metadata))

    def detach(self) -> "GaussianScene":
        return GaussianScene(**{k: v.detach().clone() for k, v in self.tensors().items()}, metadata=dict(self.metadata))

    def transformed(self, rigid: torch.Tensor) -> "GaussianScene":
        """Apply a rigid 4x4 transform (rotation + translation) to positions and orientations."""
        from scene_tools.transforms import matrix_to_quat, quat_multiply

        rigid = torch.as_tensor(rigid, dtype=self.means.dtype, device=self.device)
        R, t = rigid[:3, :3], rigid[:3, 3]
        q = matrix_to_quat(R)[None].expand(len(self), 4)
        out = self.detach()
        out.means = self.means @ R.T + t
        out.quats = quat_multiply(q, self.quats)
        return out

    # ------------------------------------------------------------------ storage
    def save(self, path: PathLike) -> None:
        """Write ``path`` (.safetensors); metadata is stored as JSON in the safetensors header, with a checksum."""
        tensors = self.tensors()
        meta = {"format": "simharmony.gaussians", "version": str(FORMAT_VERSION), "metadata": json.dumps(self.metadata),
                CHECKSUM_KEY: tensors_checksum(tensors)}
        save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: PathLike, device: str = "cpu") -> "GaussianScene":
        tensors, meta = load_tensors(path, device=device)
        if meta.get("format") != "simharmony.gaussians":
            raise CorruptFileError(f"{path} is not a simharmony Gaussian scene (format={meta.get('format')!r})")
        missing = [k for k in _TENSOR_FIELDS if k not in tensors]
        if missing:
            raise CorruptFileError(f"{path} lacks tensors {missing}")
        verify_checksum(path, tensors, meta)
        try:
            metadata = json.loads(meta.get("metadata", "{}"))
        except json.JSONDecodeError as e:
            raise CorruptFileError(f"{path} has unreadable metadata: {e}") from e
        try:
            return cls(**{k: tensors[k] for k in _TENSOR_FIELDS}, metadata=metadata)
        except InvalidInputError as e:  # e.g. negative instance ids in a file without a checksum: same error, named file
            raise type(e)(f"{path}: {e}") from e


