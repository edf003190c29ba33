"""Monte Carlo denoising of path-traced frames with Intel Open Image Denoise (OIDN, through ``pyoidn``).

:func:`denoise_hdr` runs OIDN's ``RT`` filter on the CPU on a linear HDR frame (``hdr=True``), guided by
optional first-hit albedo and shading-normal images (what Mitsuba's ``aov`` integrator gives:
``albedo`` and ``sh_normal``, box-filtered over the same pixel samples as the colour). OIDN supports
three input sets: colour alone, colour + albedo, colour + albedo + normal (normals alone are refused).

``pyoidn`` is an optional dependency (``pip install pyoidn`` or ``pip install -e '.[denoise]'``);
without it :func:`denoise_hdr` raises :class:`~simharmony.errors.BackendUnavailableError`.

Why: at 8 spp the raw noise of the street renders is ~31.6 dB against 128 spp, and a model trained on
noisy targets learns the noise (DESIGN.md section 5). ``benchmarks/bench_denoise.py`` measures the gain.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from simharmony.errors import BackendUnavailableError, InvalidInputError, NonFiniteError, ShapeMismatchError

PIP_INSTALL = "pip install pyoidn  (or: pip install -e '.[denoise]')"
QUALITIES = ("high", "balanced", "fast", "default")
# Tolerance on the documented ranges of the auxiliary images (albedo in [0, 1], normals in [-1, 1]):
# box-filtered float sums can overshoot by rounding; larger excursions are caller errors.
_AUX_TOL = 1e-3


def _import_pyoidn() -> Any:
    try:
        import pyoidn
    except ImportError as e:
        raise BackendUnavailableError(f"denoising needs Intel Open Image Denoise's Python binding: {PIP_INSTALL} ({e})") from e
    return pyoidn


def require_pyoidn() -> None:
    """Raise BackendUnavailableError (with the pip command) if ``pyoidn`` cannot be imported."""
    _import_pyoidn()


def denoise_available() -> bool:
    """True if ``pyoidn`` is importable (the CPU device is checked on first use)."""
    try:
        _import_pyoidn()
    except BackendUnavailableError:
        return False
    return True


def oidn_version() -> str | None:
    """The OIDN library version bundled with pyoidn (e.g. ``"2.5.1"``), or None when pyoidn is missing."""
    try:
        from pyoidn.version import oidn_version as v
    except ImportError:
        return None
    return str(v)


def _as_image(x: Any, name: str) -> np.ndarray:
    """numpy float32 C-contiguous [H, W, 3], finite; raises the project's errors otherwise."""
    if x is None or isinstance(x, (str, bytes, dict)):
        raise InvalidInputError(f"{name} must be an [H, W, 3] float array, got {type(x).__name__}")
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise InvalidInputError(f"{name} must be an [H, W, 3] float array: {e}") from e
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidInputError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InvalidInputError(f"{name} must have shape [H, W, 3] with H, W >= 1, got {list(arr.shape)}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise NonFiniteError(f"{name} contains {int((~np.isfinite(arr)).sum())} NaN/inf values")
    return arr


def denoise_hdr(
    hdr: np.ndarray,
    albedo: np.ndarray | None = None,
    normal: np.ndarray | None = None,
    *,
    clean_aux: bool = True,
    quality: str = "high",
) -> np.ndarray:
    """Denoise a linear HDR frame with OIDN's ``RT`` filter on the CPU; returns [H, W, 3] float32 >= 0.

    - ``hdr`` [H, W, 3]: linear radiance, finite and >= 0 (not tone-mapped).
    - ``albedo`` [H, W, 3] in [0, 1] (optional): first-hit surface albedo, 0 where nothing was hit.
    - ``normal`` [H, W, 3] in [-1, 1] (optional, needs ``albedo``): first-hit shading normals, world or
      view space, any length (pixel averages), 0 where nothing was hit.
    - ``clean_aux``: tell OIDN the auxiliary images are noise-free (its ``cleanAux``). True suits
      first-hit features of a pinhole camera without motion blur, which vary only by pixel coverage at
      edges; pass False for noisy features (depth of field, motion blur, few samples on fine detail).
    - ``quality``: ``"high"`` (default, final frames), ``"balanced"``, ``"fast"`` or ``"default"``.

    Raises InvalidInputError (bad type, shape, range or options), ShapeMismatchError (auxiliary image of
    another size), NonFiniteError (NaN/inf anywhere), BackendUnavailableError (pyoidn missing, or OIDN
    fails to run here).
    """
    color = _as_image(hdr, "hdr")
    if float(color.min()) < 0.0:
        raise InvalidInputError(f"hdr must be linear radiance >= 0, got a minimum of {float(color.min())}")
    if not isinstance(clean_aux, (bool, np.bool_)):
        raise InvalidInputError(f"clean_aux must be a bool, got {clean_aux!r}")
    if quality not in QUALITIES:
        raise InvalidInputError(f"quality must be one of {QUALITIES}, got {quality!r}")
    aux: dict[str, np.ndarray | None] = {"albedo": None, "normal": None}
    for name, img, lo, hi in (("albedo", albedo, 0.0, 1.0), ("normal", normal, -1.0, 1.0)):
        if img is None:
            continue
        arr = _as_image(img, name)
        if arr.shape != color.shape:
            raise ShapeMismatchError(f"{name} must have hdr's shape {list(color.shape)}, got {list(arr.shape)}")
        if float(arr.min()) < lo - _AUX_TOL or float(arr.max()) > hi + _AUX_TOL:
            raise InvalidInputError(
                f"{name} values must lie in [{lo}, {hi}], got [{float(arr.min())}, {float(arr.max())}]"
            )
        aux[name] = np.clip(arr, lo, hi)
    if aux["normal"] is not None and aux["albedo"] is None:
        raise InvalidInputError("OIDN takes normals only together with an albedo: pass albedo too (or neither)")

    pyoidn = _import_pyoidn()
    try:
        out = pyoidn.denoise(
            color,
            albedo=aux["albedo"],
            normal=aux["normal"],
            hdr=True,
            clean_aux=bool(clean_aux) and aux["albedo"] is not None,
            quality=quality,
        )
    except RuntimeError as e:  # OIDN reported a failure (device creation, unsupported CPU, ...)
        raise BackendUnavailableError(f"Open Image Denoise failed: {e}") from e
    out = np.asarray(out, dtype=np.float32)
    if out.shape != color.shape or not np.isfinite(out).all():  # pragma: no cover - OIDN contract
        raise BackendUnavailableError("Open Image Denoise returned a malformed or non-finite image")
    return np.maximum(out, 0.0, out=out)
