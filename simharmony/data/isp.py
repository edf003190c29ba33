"""A small software ISP on linear HDR renders (the "ISP modification" stream, paper section 3.2).

Pipeline of :func:`apply_isp` on linear radiance ``hdr`` [..., 3] (e.g. ``StreetFrames.hdr`` [H, W, 3]):

1. exposure:      ``x = hdr * base_exposure * 2**exposure_ev``
2. white balance: ``x *= wb_gains`` (per channel; :func:`wb_gains_from_temperature` maps a colour-temperature
   shift and tint to gains)
3. sensor noise:  ``x += N(0, shot_noise * x + read_noise**2)`` (shot + read, seeded by ``noise_seed``)
4. tone curve:    linear -> display in [0, 1]: ``srgb`` (the renderer's own :func:`scene_tools.pbr.tonemap`),
   ``gamma`` (``clip(x)**(1/gamma)``), ``reinhard`` (extended Reinhard with ``white_point``, then sRGB OETF),
   ``filmic`` (Hable's curve normalised at ``white_point``, then sRGB OETF)
5. contrast:      smooth S-curve ``y**c / (y**c + (1-y)**c)`` (c = 1 is the identity, c > 1 more contrast)
6. saturation:    ``lum + s * (y - lum)`` with Rec.709 luma weights
7. black level:   ``b > 0`` lifts blacks (``b + (1-b) y``), ``b < 0`` crushes them (``(y + b)/(1 + b)``)

The reference ISP is ``IspParams(base_exposure=e)`` with every other field at its default: it calls
``scene_tools.pbr.tonemap(hdr, e)`` and nothing else, so it reproduces ``StreetFrames.rgb`` bit for bit.
Steps at their identity value are skipped (not applied as no-ops) so that stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simharmony.errors import ConfigError, InvalidInputError, NonFiniteError, ShapeMismatchError
from simharmony.utils.config import Config, all_finite

TONE_CURVES = ("srgb", "gamma", "reinhard", "filmic")
_LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)


@dataclass
class IspParams(Config):
    """One ISP setting. Defaults = the renderer's reference tone mapping (identity modification)."""

    exposure_ev: float = 0.0
    wb_gains: tuple[float, float, float] = (1.0, 1.0, 1.0)
    tone_curve: str = "srgb"
    gamma: float = 2.2
    white_point: float = 4.0
    contrast: float = 1.0
    saturation: float = 1.0
    black_level: float = 0.0
    shot_noise: float = 0.0
    read_noise: float = 0.0
    noise_seed: int = 0
    base_exposure: float = 1.0

    def __post_init__(self) -> None:
        o = "IspParams"
        if not all_finite(self.exposure_ev) or abs(self.exposure_ev) > 10:
            raise ConfigError(f"{o}: exposure_ev={self.exposure_ev} must be finite and within +-10 EV")
        g = tuple(self.wb_gains)
        if len(g) != 3 or not all_finite(*g) or min(g) <= 0:
            raise ConfigError(f"{o}: wb_gains={self.wb_gains} must be 3 finite values > 0")
        self.wb_gains = tuple(float(x) for x in g)
        if self.tone_curve not in TONE_CURVES:
            raise ConfigError(f"{o}: tone_curve={self.tone_curve!r} must be one of {TONE_CURVES}")
        for name in ("gamma", "white_point", "contrast", "base_exposure"):
            v = getattr(self, name)
            if not all_finite(v) or v <= 0:
                raise ConfigError(f"{o}: {name}={v} must be finite and > 0")
        if not all_finite(self.saturation) or self.saturation < 0:
            raise ConfigError(f"{o}: saturation={self.saturation} must be finite and >= 0")
        if not all_finite(self.black_level) or not -0.5 < self.black_level < 0.5:
            raise ConfigError(f"{o}: black_level={self.black_level} must be in (-0.5, 0.5)")
        for name in ("shot_noise", "read_noise"):
            v = getattr(self, name)
            if not all_finite(v) or v < 0:
                raise ConfigError(f"{o}: {name}={v} must be finite and >= 0")
        if isinstance(self.noise_seed, bool) or not isinstance(self.noise_seed, (int, np.integer)) or self.noise_seed < 0:
            raise ConfigError(f"{o}: noise_seed={self.noise_seed!r} must be an integer >= 0")

    def is_reference(self) -> bool:
        """True when only ``base_exposure`` may differ from the defaults (the renderer's tone mapping)."""
        return self == IspParams(base_exposure=self.base_exposure, noise_seed=self.noise_seed)


@dataclass
class IspRanges(Config):
    """Randomisation ranges of :func:`sample_isp_params` (uniform unless said otherwise).

    - ``exposure_ev``: [-1.5, 1.5] EV
    - ``temperature``: [-1, 1] (white-balance shift, -1 = much cooler/bluer, +1 = much warmer; see
      :func:`wb_gains_from_temperature`, +-1 is a red/blue gain ratio of 2**(+-2*0.35))
    - ``tint``: [-0.15, 0.15] (log2 green gain)
    - ``tone_curves`` with ``tone_curve_probs`` (default srgb 0.25, gamma 0.25, reinhard 0.25, filmic 0.25)
    - ``gamma``: [1.6, 2.8]; ``white_point``: [1.5, 8]
    - ``contrast``: [0.7, 1.5]; ``saturation``: [0.4, 1.6]; ``black_level``: [-0.04, 0.08]
    - noise: with probability ``noise_prob`` (0.5), ``shot_noise`` in [0, 0.004], ``read_noise`` in [0, 0.01]
    """

    exposure_ev: tuple[float, float] = (-1.5, 1.5)
    temperature: tuple[float, float] = (-1.0, 1.0)
    tint: tuple[float, float] = (-0.15, 0.15)
    tone_curves: tuple[str, ...] = TONE_CURVES
    tone_curve_probs: tuple[float, ...] = (0.25, 0.25, 0.25, 0.25)
    gamma: tuple[float, float] = (1.6, 2.8)
    white_point: tuple[float, float] = (1.5, 8.0)
    contrast: tuple[float, float] = (0.7, 1.5)
    saturation: tuple[float, float] = (0.4, 1.6)
    black_level: tuple[float, float] = (-0.04, 0.08)
    noise_prob: float = 0.5
    shot_noise: tuple[float, float] = (0.0, 0.004)
    read_noise: tuple[float, float] = (0.0, 0.01)

    def __post_init__(self) -> None:
        o = "IspRanges"
        for name in ("exposure_ev", "temperature", "tint", "gamma", "white_point", "contrast", "saturation",
                     "black_level", "shot_noise", "read_noise"):
            r = tuple(getattr(self, name))
            if len(r) != 2 or not all_finite(*r) or r[0] > r[1]:
                raise ConfigError(f"{o}: {name}={r} must be a finite (low, high) pair with low <= high")
        if not self.tone_curves or any(t not in TONE_CURVES for t in self.tone_curves):
            raise ConfigError(f"{o}: tone_curves={self.tone_curves} must be a non-empty subset of {TONE_CURVES}")
        p = tuple(self.tone_curve_probs)
        if len(p) != len(self.tone_curves) or not all_finite(*p) or min(p) < 0 or sum(p) <= 0:
            raise ConfigError(f"{o}: tone_curve_probs={p} must be {len(self.tone_curves)} weights >= 0, not all 0")
        if not all_finite(self.noise_prob) or not 0 <= self.noise_prob <= 1:
            raise ConfigError(f"{o}: noise_prob={self.noise_prob} must be in [0, 1]")


def wb_gains_from_temperature(temperature: float, tint: float = 0.0) -> tuple[float, float, float]:
    """White-balance gains from a normalised colour-temperature shift (+ warmer) and a log2 green tint."""
    k = 0.35 * float(temperature)
    return (float(2.0**k), float(2.0 ** float(tint)), float(2.0**-k))


def sample_isp_params(rng: np.random.Generator, ranges: IspRanges | None = None, base_exposure: float = 1.0) -> IspParams:
    """Draw one random :class:`IspParams` from ``ranges`` (default :class:`IspRanges`), deterministic in ``rng``."""
    r = IspRanges() if ranges is None else ranges
    u = lambda lo_hi: float(rng.uniform(*lo_hi))
    ev = u(r.exposure_ev)
    gains = wb_gains_from_temperature(u(r.temperature), u(r.tint))
    p = np.asarray(r.tone_curve_probs, np.float64)
    curve = str(r.tone_curves[int(rng.choice(len(p), p=p / p.sum()))])
    gamma, white = u(r.gamma), u(r.white_point)
    contrast, saturation, black = u(r.contrast), u(r.saturation), u(r.black_level)
    noisy = bool(rng.uniform() < r.noise_prob)
    shot, read = u(r.shot_noise), u(r.read_noise)
    return IspParams(
        exposure_ev=ev, wb_gains=gains, tone_curve=curve, gamma=gamma, white_point=white, contrast=contrast,
        saturation=saturation, black_level=black, shot_noise=shot if noisy else 0.0, read_noise=read if noisy else 0.0,
        noise_seed=int(rng.integers(0, 2**31 - 1)), base_exposure=float(base_exposure),
    )


def _hable(x: np.ndarray) -> np.ndarray:
    # Hable's (Uncharted 2) filmic curve with its usual constants.
    A, B, C, D, E, F = 0.15, 0.50, 0.10, 0.20, 0.02, 0.30
    return ((x * (A * x + C * B) + D * E) / (x * (A * x + B) + D * F)) - E / F


def tone_curve(x: np.ndarray, params: IspParams) -> np.ndarray:
    """Linear [..., 3] (>= 0, exposure already applied) -> display [..., 3] in [0, 1]."""
    from scene_tools.pbr import srgb_oetf, tonemap

    x = np.clip(x, 0.0, None).astype(np.float32, copy=False)
    if params.tone_curve == "srgb":
        return tonemap(x, 1.0)
    if params.tone_curve == "gamma":
        return np.power(np.clip(x, 0.0, 1.0), np.float32(1.0 / params.gamma)).astype(np.float32)
    w = np.float32(params.white_point)
    if params.tone_curve == "reinhard":
        y = x * (1.0 + x / (w * w)) / (1.0 + x)
    else:  # filmic
        y = _hable(2.0 * x) / _hable(np.float32(w))
    return np.clip(srgb_oetf(np.clip(y, 0.0, 1.0)), 0.0, 1.0).astype(np.float32)


def apply_isp(hdr, params: IspParams | None = None) -> np.ndarray:
    """Linear HDR ``hdr`` [..., 3] (float, >= 0) -> sRGB-like display image [..., 3] float32 in [0, 1].

    ``params`` default: the reference (renderer's) tone mapping. Noise is drawn from ``params.noise_seed``;
    for a sequence pass different seeds per frame (see the ISP stream) or the same noise repeats.
    """
    from scene_tools.pbr import tonemap

    params = IspParams() if params is None else params
    if not isinstance(params, IspParams):
        raise InvalidInputError(f"params must be IspParams, got {type(params).__name__}")
    hdr = np.asarray(hdr)
    if hdr.ndim < 1 or hdr.shape[-1] != 3:
        raise ShapeMismatchError(f"hdr must be [..., 3] linear RGB, got {list(hdr.shape)}")
    if not np.issubdtype(hdr.dtype, np.floating):
        raise InvalidInputError(f"hdr must be a float array (linear radiance), got dtype {hdr.dtype}")
    if not np.isfinite(hdr).all():
        raise NonFiniteError("hdr contains NaN or infinity")
    hdr = hdr.astype(np.float32, copy=False)
    if params.is_reference():
        return tonemap(hdr, params.base_exposure)

    gain = np.float32(params.base_exposure * 2.0**params.exposure_ev) * np.asarray(params.wb_gains, np.float32)
    x = np.clip(hdr, 0.0, None) * gain
    if params.shot_noise > 0 or params.read_noise > 0:
        rng = np.random.default_rng(params.noise_seed)
        sigma = np.sqrt(params.shot_noise * x + params.read_noise**2).astype(np.float32)
        x = np.clip(x + sigma * rng.standard_normal(x.shape, dtype=np.float32), 0.0, None)
    y = tone_curve(x, params)
    if params.contrast != 1.0:
        c = np.float32(params.contrast)
        a, b = np.power(y, c), np.power(1.0 - y, c)
        y = a / np.maximum(a + b, 1e-12)
    if params.saturation != 1.0:
        lum = (y @ _LUMA)[..., None]
        y = lum + np.float32(params.saturation) * (y - lum)
    if params.black_level > 0:
        y = params.black_level + (1.0 - params.black_level) * np.clip(y, 0.0, 1.0)
    elif params.black_level < 0:
        y = (y + params.black_level) / (1.0 + params.black_level)
    return np.clip(y, 0.0, 1.0).astype(np.float32)
