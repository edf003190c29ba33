"""Classical harmonizers used as baselines in the benchmark (DESIGN.md section 7).

Every baseline is a pure function ``harmonize(image, mask) -> image``:

- image [H, W, 3] float in [0, 1] (numpy or torch; a tolerance of 1e-3 is allowed, values are then
  clipped), mask [H, W] (or [H, W, 1]) in [0, 1], bool or float, 1 = foreground (the inserted object).
- The result has the input's type (numpy float32, or a float32 tensor on the input's device).
- Foreground statistics come from ``mask > 0.5``, background statistics from ``mask < 0.5``; the
  transferred colours are blended in by the soft mask, ``out = m * transferred + (1 - m) * image``, so
  pixels with ``mask == 0`` are returned bit-exactly.
- Defined behaviour for degenerate masks: when the foreground (``mask > 0.5``) or the background
  (``mask < 0.5``) is empty, there is nothing to match, and the image is returned unchanged (a copy).
- Bad input raises :mod:`simharmony.errors` exceptions (shape mismatch, NaN, values out of range).

``BASELINES`` maps names to the functions. :class:`EmaSmoother` turns any per-frame harmonizer into
a temporally smoothed one, as Harmonizer does for video (Harmonizer smooths its predicted filter
arguments; here it smooths whatever it is given: output frames or parameter vectors).

:func:`lightness_preserving_transfer` is also the post-process our model uses (Li et al., section 3.3):
hue and saturation from a harmonised result, lightness from the input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import cv2
import numpy as np

from simharmony.errors import InvalidInputError, NonFiniteError, ShapeMismatchError
from simharmony.utils.arrays import to_numpy as _to_numpy

__all__ = [
    "BASELINES",
    "EmaSmoother",
    "Harmonizer",
    "identity",
    "lightness_preserving_hsv",
    "lightness_preserving_transfer",
    "match_lightness",
    "reinhard_lab",
]

Harmonizer = Callable[[Any, Any], Any]
_TOL = 1e-3
_EPS = 1e-6  # below this a std / V is treated as zero


# ----------------------------------------------------------------------------------------------------
# input handling


def _back(x: np.ndarray, device: Any) -> Any:
    if device is None:
        return x
    import torch

    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def _check_image(image: Any, name: str = "image") -> tuple[np.ndarray, Any]:
    """[H, W, 3] float in [0, 1] -> float32 array (clipped after the tolerance check) and device."""
    a, device = _to_numpy(image)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ShapeMismatchError(f"{name} must be [H, W, 3], got shape {list(a.shape)}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InvalidInputError(f"{name} is empty (shape {list(a.shape)})")
    if not np.issubdtype(a.dtype, np.floating):
        raise InvalidInputError(f"{name} must be float in [0, 1], got dtype {a.dtype} (convert uint8 with /255)")
    if not np.isfinite(a).all():
        raise NonFiniteError(f"{name} contains NaN or inf")
    lo, hi = float(a.min()), float(a.max())
    if lo < -_TOL or hi > 1.0 + _TOL:
        raise InvalidInputError(f"{name} must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
    return np.clip(a.astype(np.float32), 0.0, 1.0), device


def _check_mask(mask: Any, shape: tuple[int, int]) -> np.ndarray:
    """[H, W] or [H, W, 1] mask in [0, 1] (bool or float) -> float32 [H, W]."""
    m, _ = _to_numpy(mask)
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[..., 0]
    if m.shape != shape:
        raise ShapeMismatchError(f"mask must be [{shape[0]}, {shape[1]}] to match the image, got {list(m.shape)}")
    if m.dtype == np.bool_:
        return m.astype(np.float32)
    if not (np.issubdtype(m.dtype, np.floating) or np.issubdtype(m.dtype, np.integer)):
        raise InvalidInputError(f"mask must be bool or numeric, got dtype {m.dtype}")
    m = m.astype(np.float32)
    if not np.isfinite(m).all():
        raise NonFiniteError("mask contains NaN or inf")
    if m.min() < 0.0 or m.max() > 1.0:
        raise InvalidInputError(f"mask must be in [0, 1], got values in [{m.min():.4g}, {m.max():.4g}]")
    return m


def _regions(m: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Hard foreground / background selections, or None when either is empty."""
    fg, bg = m > 0.5, m < 0.5
    if not fg.any() or not bg.any():
        return None
    return fg, bg


def _blend(transferred: np.ndarray, image: np.ndarray, m: np.ndarray) -> np.ndarray:
    out = m[..., None] * transferred + (1.0 - m[..., None]) * image
    out[m == 0.0] = image[m == 0.0]  # bit-exact outside the mask
    return out.astype(np.float32)


def _match_stats(x: np.ndarray, src: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Affine map of x sending mean/std of the values src onto those of ref (shift only if src is flat)."""
    mu_s, sd_s = float(src.mean()), float(src.std())
    mu_r, sd_r = float(ref.mean()), float(ref.std())
    gain = sd_r / sd_s if sd_s > _EPS else 1.0
    return (x - mu_s) * gain + mu_r


# ----------------------------------------------------------------------------------------------------
# baselines


def identity(image: Any, mask: Any) -> Any:
    """Return the composite unchanged (a float32 copy); validates its inputs like every baseline."""
    img, device = _check_image(image)
    _check_mask(mask, img.shape[:2])
    return _back(img.copy(), device)


def _reinhard_full(img: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Reinhard Lab transfer applied to every pixel (not yet blended); float32 RGB in [0, 1]."""
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2Lab)
    out = np.empty_like(lab)
    for c in range(3):
        out[..., c] = _match_stats(lab[..., c], lab[..., c][fg], lab[..., c][bg])
    return np.clip(cv2.cvtColor(out.astype(np.float32), cv2.COLOR_Lab2RGB), 0.0, 1.0)


def reinhard_lab(image: Any, mask: Any) -> Any:
    """Masked Reinhard colour transfer in CIE Lab (Reinhard et al. 2001, with Lab instead of l-alpha-beta).

    Each Lab channel (OpenCV float conversion: sRGB, D65, L in 0..100) of the foreground
    (``mask > 0.5``) is affinely mapped so its mean and standard deviation equal those of the
    background (``mask < 0.5``); a flat foreground channel is only shifted. The result is converted
    back to RGB, clipped to [0, 1] and blended by the soft mask. image [H, W, 3], mask [H, W].
    """
    img, device = _check_image(image)
    m = _check_mask(mask, img.shape[:2])
    regions = _regions(m)
    if regions is None:
        return _back(img.copy(), device)
    return _back(_blend(_reinhard_full(img, *regions), img, m), device)


def _hsv_value(x: np.ndarray) -> np.ndarray:
    return x.max(axis=-1)


def _hsl_lightness(x: np.ndarray) -> np.ndarray:
    return 0.5 * (x.max(axis=-1) + x.min(axis=-1))


def _set_value(rgb: np.ndarray, v_new: np.ndarray) -> np.ndarray:
    """Replace the HSV value of rgb [H, W, 3] by v_new [H, W] keeping hue and saturation (exact).

    Same H and S means the same RGB direction, so the RGB vector is scaled by v_new / v; black pixels
    (v < 1e-6, hue undefined) become grey at v_new.
    """
    v = _hsv_value(rgb)
    dark = v < _EPS
    res = rgb * np.where(dark, 0.0, v_new / np.where(dark, 1.0, v))[..., None]
    res[dark] = v_new[dark][:, None]
    return np.clip(res, 0.0, 1.0).astype(np.float32)


def lightness_preserving_transfer(
    input: Any, output: Any, space: Literal["hsv", "hsl"] = "hsv"
) -> Any:
    """Hue and saturation of ``output``, lightness of ``input`` (Li et al., section 3.3), whole image.

    input, output [H, W, 3] float in [0, 1] (numpy or torch; the result has ``output``'s type).

    - ``"hsv"``: V = max(R, G, B) of ``input``. Keeping H and S while changing V scales the RGB vector,
      so the result is exactly ``output * V_in / V_out`` (its V equals V_in, its H and S those of
      output); where ``output`` is black (V_out < 1e-6, hue undefined) the result is grey at V_in.
    - ``"hsl"``: L = (max + min) / 2 of ``input`` with H and S of ``output`` (OpenCV HLS conversion).

    Near-black output pixels have noisy hue that this amplifies; that is inherent to the method.
    """
    src, _ = _check_image(input, "input")
    out, device = _check_image(output, "output")
    if src.shape != out.shape:
        raise ShapeMismatchError(f"input and output must have the same shape, got {list(src.shape)} and {list(out.shape)}")
    if space == "hsv":
        res = _set_value(out, _hsv_value(src))
    elif space == "hsl":
        hls_out = cv2.cvtColor(out, cv2.COLOR_RGB2HLS)
        hls_out[..., 1] = _hsl_lightness(src)
        res = np.clip(cv2.cvtColor(hls_out, cv2.COLOR_HLS2RGB), 0.0, 1.0).astype(np.float32)
    else:
        raise InvalidInputError(f"space must be 'hsv' or 'hsl', got {space!r}")
    return _back(res, device)


def _matched_value(img: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """HSV value of ``img`` with the foreground's mean/std mapped onto the background's, clipped to [0, 1]."""
    v = _hsv_value(img)
    return np.clip(_match_stats(v, v[fg], v[bg]), 0.0, 1.0)


def match_lightness(image: Any, mask: Any) -> Any:
    """Affine map of the foreground's HSV value so its mean/std match the background's (Li et al. 3.3).

    V' = (V - mean_fg) * std_bg / std_fg + mean_bg (statistics over ``mask > 0.5`` / ``mask < 0.5``),
    clipped to [0, 1]; hue and saturation are kept; then blended by the soft mask. Degenerate masks
    return the image unchanged.
    """
    img, device = _check_image(image)
    m = _check_mask(mask, img.shape[:2])
    regions = _regions(m)
    if regions is None:
        return _back(img.copy(), device)
    fg, bg = regions
    return _back(_blend(_set_value(img, _matched_value(img, fg, bg)), img, m), device)


def lightness_preserving_hsv(image: Any, mask: Any) -> Any:
    """Li et al.'s colour transfer as a standalone baseline on top of Reinhard Lab transfer.

    Foreground hue and saturation come from the (unblended) Reinhard Lab result, its HSV value is the
    composite's own V affinely matched to the background's V statistics (the paper's "linear
    transformation on the replaced channel based on the lightness channel of the background"), so the
    foreground keeps its shading exactly up to an affine brightness map. Blended by the soft mask;
    pixels with mask 0 are unchanged; degenerate masks return the image unchanged.
    """
    img, device = _check_image(image)
    m = _check_mask(mask, img.shape[:2])
    regions = _regions(m)
    if regions is None:
        return _back(img.copy(), device)
    fg, bg = regions
    colours = _reinhard_full(img, fg, bg)
    return _back(_blend(_set_value(colours, _matched_value(img, fg, bg)), img, m), device)


BASELINES: dict[str, Harmonizer] = {
    "identity": identity,
    "reinhard_lab": reinhard_lab,
    "lightness_preserving_hsv": lightness_preserving_hsv,
}


# ----------------------------------------------------------------------------------------------------
# temporal smoothing


class EmaSmoother:
    """Exponential moving average over a stream: ``y_0 = x_0``, ``y_t = alpha x_t + (1 - alpha) y_{t-1}``.

    ``alpha`` in (0, 1] is the weight of the newest frame (1 = no smoothing). Works on numpy arrays or
    torch tensors of any fixed shape (frames [H, W, 3] or parameter vectors); the output has the
    input's type. After a step from a to b at frame k, ``y_{k+n} = b + (a - b) (1 - alpha)^(n + 1)``.
    A shape change mid-stream raises :class:`ShapeMismatchError` (call :meth:`reset` between streams).
    Pixel-space EMA ghosts under camera motion; that is the weakness this baseline exposes.
    """

    def __init__(self, alpha: float) -> None:
        alpha = float(alpha)
        if not (0.0 < alpha <= 1.0) or not np.isfinite(alpha):
            raise InvalidInputError(f"EmaSmoother alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self._state: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the history; the next frame starts a new stream."""
        self._state = None

    def __call__(self, frame: Any) -> Any:
        """Smooth one frame and return the running average (same type as ``frame``)."""
        x, device = _to_numpy(frame)
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise InvalidInputError(f"frame must be numeric, got dtype {x.dtype}")
        x = x.astype(np.float64)
        if not np.isfinite(x).all():
            raise NonFiniteError("frame contains NaN or inf")
        if self._state is None:
            self._state = x.copy()
        else:
            if x.shape != self._state.shape:
                raise ShapeMismatchError(
                    f"frame shape {list(x.shape)} differs from the stream's {list(self._state.shape)}; call reset()"
                )
            self._state = self.alpha * x + (1.0 - self.alpha) * self._state
        return _back(self._state.astype(np.float32), device)

    def smooth(self, frames: Any) -> Any:
        """Smooth a whole sequence [T, ...] from a fresh state; returns [T, ...] (same type)."""
        self.reset()
        outs = [self(f) for f in frames]
        if outs and not isinstance(outs[0], np.ndarray):
            import torch

            return torch.stack(outs)
        return np.stack(outs) if outs else np.zeros((0,), np.float32)
