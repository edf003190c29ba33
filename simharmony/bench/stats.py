"""Paired comparisons over holdout items, and the enhancer issue's quality bar checked with them.

Per-stream means differ between methods by hundredths of a dB, less than they vary from item to item, so
a bare "beats the input" says little. :func:`paired_difference` gives the mean per-item difference with a
percentile bootstrap interval over items (every method sees the same items, so the pairs cancel what the
items share); :func:`quality_bar` applies the bar to a benchmark's per-clip metrics:

- PSNR: the method's mean beats the input's and the best classical baseline's (the better of the two
  transfers on that stream);
- SSIM: the method's mean is not below the input's.

A bar is *met* or *missed* by the means, as the issue states it; the interval says whether the margin is
larger than the item-to-item noise (``significant``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from simharmony.errors import InvalidInputError

INPUT = "identity"
CLASSICAL = ("reinhard_lab", "lightness_preserving_hsv")


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """Mean of ``a - b`` over items, with a bootstrap interval of that mean."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return self.low > 0 or self.high < 0

    def text(self, digits: int = 3, scale: float = 1.0, mark_noise: bool = False) -> str:
        """"+0.123 [+0.045, +0.201]" (values x ``scale``); ``mark_noise`` appends " ~" when not significant."""
        lo, mid, hi = (f"{v * scale:+.{digits}f}" for v in (self.low, self.mean, self.high))
        return f"{mid} [{lo}, {hi}]" + (" ~" if mark_noise and not self.significant else "")


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, resamples: int = 10_000,
                      seed: int = 0) -> PairedDifference:
    """Mean of ``a[i] - b[i]`` and its percentile-bootstrap interval (items resampled with replacement).

    ``a`` and ``b`` hold one value per item, in the same item order. Deterministic for a given ``seed``.
    """
    x = np.asarray(a, np.float64)
    y = np.asarray(b, np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise InvalidInputError(f"paired_difference needs two 1-D sequences of equal length, got shapes "
                                f"{list(x.shape)} and {list(y.shape)}")
    if x.size == 0:
        raise InvalidInputError("paired_difference needs at least one item")
    if not (0.0 < confidence < 1.0):
        raise InvalidInputError(f"confidence must lie in (0, 1), got {confidence}")
    d = x - y
    if not np.all(np.isfinite(d)):
        raise InvalidInputError("paired_difference got non-finite values (NaN or inf)")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # chunks keep the index array small for large holdouts
        idx = rng.integers(0, d.size, size=(min(1000, resamples - start), d.size))
        means[start:start + idx.shape[0]] = d[idx].mean(1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return PairedDifference(float(d.mean()), float(low), float(high), int(d.size), confidence)


@dataclasses.dataclass(frozen=True)
class StreamBar:
    """The quality bar on one holdout stream for one method."""

    psnr_vs_input: PairedDifference
    psnr_vs_classical: PairedDifference
    classical: str  # the better classical baseline on this stream (by mean PSNR)
    ssim_vs_input: PairedDifference

    @property
    def psnr_met(self) -> bool:
        return self.psnr_vs_input.mean > 0 and self.psnr_vs_classical.mean > 0

    @property
    def ssim_met(self) -> bool:
        return self.ssim_vs_input.mean >= 0

    @property
    def verdict(self) -> str:
        if self.psnr_met and self.ssim_met:
            return "met"
        return "PSNR met, SSIM missed" if self.psnr_met else "SSIM met, PSNR missed" if self.ssim_met else "missed"

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "psnr_met": self.psnr_met, "ssim_met": self.ssim_met,
                "verdict": self.verdict}

    @classmethod
    def from_dict(cls, d: Mapping) -> StreamBar:
        """Back from :meth:`to_dict` (the derived entries are recomputed, not read)."""
        return cls(**{f.name: PairedDifference(**d[f.name]) if f.name != "classical" else d[f.name]
                      for f in dataclasses.fields(cls)})


def quality_bar(clips: Mapping[str, Mapping[str, Mapping[str, float]]], method: str,
                confidence: float = 0.95, seed: int = 0) -> StreamBar:
    """The bar for ``method`` on one stream from its per-clip metrics ``{method: {clip id: {"psnr", "ssim"}}}``.

    Needs the input (``identity``) and at least one classical baseline on the same clips.
    """
    missing = [m for m in (method, INPUT) if m not in clips]
    classical = [c for c in CLASSICAL if c in clips]
    if missing or not classical:
        raise InvalidInputError(f"quality_bar needs per-clip metrics of {method!r}, {INPUT!r} and one of "
                                f"{list(CLASSICAL)}; missing {missing or list(CLASSICAL)}")
    ids = sorted(clips[method])
    for m in (INPUT, *classical):
        if sorted(clips[m]) != ids:
            raise InvalidInputError(f"quality_bar: {m!r} was evaluated on other clips than {method!r}")

    def values(m: str, key: str) -> np.ndarray:
        return np.array([clips[m][i][key] for i in ids], np.float64)

    best = max(classical, key=lambda c: values(c, "psnr").mean())
    ours_psnr = values(method, "psnr")
    return StreamBar(
        psnr_vs_input=paired_difference(ours_psnr, values(INPUT, "psnr"), confidence, seed=seed),
        psnr_vs_classical=paired_difference(ours_psnr, values(best, "psnr"), confidence, seed=seed),
        classical=best,
        ssim_vs_input=paired_difference(values(method, "ssim"), values(INPUT, "ssim"), confidence, seed=seed),
    )


def worst_clips(clips: Mapping[str, Mapping[str, Mapping[str, float]]], method: str, k: int,
                key: str = "ssim") -> list[dict[str, float | str]]:
    """The (up to) ``k`` clips where ``method`` falls furthest below the input in ``key``, worst first:
    ``[{"id", "d_ssim", "d_psnr"}]`` (method minus input). Clips where it does not fall below are never
    listed, so a method that loses nowhere has none. ``clips`` as for :func:`quality_bar`."""
    if k < 0:
        raise InvalidInputError(f"worst_clips: k must be >= 0, got {k}")
    missing = [m for m in (method, INPUT) if m not in clips]
    if missing:
        raise InvalidInputError(f"worst_clips needs per-clip metrics of {missing}")
    ours, ref = clips[method], clips[INPUT]
    rows = [{"id": i, **{f"d_{m}": float(ours[i][m] - ref[i][m]) for m in ("ssim", "psnr")}}
            for i in sorted(ours) if i in ref]
    rows = [r for r in rows if np.isfinite(r[f"d_{key}"]) and r[f"d_{key}"] < 0]
    return sorted(rows, key=lambda r: r[f"d_{key}"])[:k]
