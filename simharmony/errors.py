"""One error hierarchy for the whole project.

Every exception raised on bad input derives from :class:`SimHarmonyError` and says what was wrong and
what was expected. The builtin base classes (``ValueError``, ``FileNotFoundError``, ``KeyError``) are
kept so callers that already catch those keep working.
"""

from __future__ import annotations


class SimHarmonyError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(SimHarmonyError, ValueError):
    """A config file or dataclass has unknown keys, wrong types or out-of-range values."""


class InvalidInputError(SimHarmonyError, ValueError):
    """An argument has the wrong shape, dtype, range or contents."""


class ShapeMismatchError(InvalidInputError):
    """Inputs that must agree in shape or size do not (e.g. images of different sizes)."""


class NonFiniteError(InvalidInputError):
    """An array or tensor contains NaN or infinity where finite values are required."""


class InvalidCameraError(InvalidInputError):
    """Camera intrinsics or poses are invalid (non-positive focal length, non-orthonormal rotation)."""


class InvalidSceneError(InvalidInputError):
    """A Gaussian or mesh scene is empty or has inconsistent parameters."""


class FileFormatError(SimHarmonyError, OSError):
    """A file is missing, truncated, corrupt or not of the expected format."""


class MissingFileError(FileFormatError, FileNotFoundError):
    """A required file or folder does not exist."""


class CorruptFileError(FileFormatError):
    """A file exists but cannot be parsed or does not match its declared contents."""


class ItemIndexError(SimHarmonyError, IndexError):
    """An index is outside a dataset, trajectory or sequence (an IndexError, so iteration ends on it)."""


class UnknownAssetError(SimHarmonyError, KeyError):
    """An asset id or name is not in the databank."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "unknown asset"


class BackendUnavailableError(SimHarmonyError, RuntimeError):
    """A requested backend (CUDA, gsplat, Mitsuba variant, optional extra) is not available here."""


class ReconstructionFailedError(SimHarmonyError, RuntimeError):
    """Structure from motion or reconstruction ran on well-formed input but could not succeed
    (for instance too few images registered)."""
