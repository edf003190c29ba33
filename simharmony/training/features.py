"""Frozen feature extractors for the patch perceptual loss (diffusion-harmonizer eq. 4).

A feature extractor maps images ``x [N, 3, h, w]`` in [0, 1] to a list of feature maps
``[N, C_l, h_l, w_l]`` (one per layer l); :class:`~simharmony.training.losses.PatchPerceptualLoss`
compares them. Two are provided, picked by :func:`build_feature_extractor`:

- :class:`VGG16Features` (``VGG16Features.from_file(path)``): VGG16's convolutional trunk, built here with
  the layer indices of ``torchvision.models.vgg16().features`` so that a converted torchvision state dict
  (saved as **safetensors**; keys ``features.N.weight`` / ``N.weight``, classifier keys ignored) loads as
  is. ImageNet normalisation; layers relu1_2, relu2_2, relu3_3, relu4_3. Nothing is downloaded: the user
  supplies the file (convert once with ``safetensors.torch.save_file(torchvision vgg16 state_dict)``).
- :class:`RandomFeatures` (``"substitute"``, the default here, where no pretrained weights can be
  downloaded). Why this one:

  * Random-weight conv nets already give useful perceptual/texture statistics (He, Wang & Hopcroft,
    NeurIPS 2016; Ustyuzhaninov et al., "What does it take to generate natural textures?", ICLR 2017:
    multi-scale random filters match VGG for texture synthesis). What the paper needs from its perceptual
    term is narrower still: to punish high-frequency, periodic artifacts (checkerboards) that L2 barely
    sees. A fixed, seeded, multi-scale random conv net (3 levels, 2 convs each, ReLU, 2x average pooling)
    covers texture and structure at several scales.
  * Every random filter has its mean removed (zero DC gain per input channel) and convs pad by
    reflection. A random filter with a DC component answers a uniform colour offset as strongly as a
    Nyquist checkerboard (equal gain in expectation), so the perceptual term would spend itself on what
    the L2 term already supervises. Zero-mean filters make the substitute blind to absolute colour level
    and sensitive to structure: edges, texture, aliasing; L2 keeps supervising colour.
  * Fixed image-gradient channels are added in front: Sobel x/y and two Laplacian-pyramid bands
    (x - blur(x), at full and half resolution) of each colour channel. They are the classical detectors
    of exactly the artifact to suppress (a 1-pixel checkerboard has the Laplacian's largest response).
  * Deterministic (``torch.Generator`` seeded with ``seed``), frozen (no gradients, eval mode), tiny
    (~40k weights): cheap enough for CPU training. Stored nowhere: rebuilt identically from the seed.

  It is not a perceptual metric in the LPIPS sense and must not be reported as one.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from simharmony.errors import ConfigError, CorruptFileError
from simharmony.utils.io import load_weights_file

# torchvision vgg16 (config "D"): conv widths, "M" = 2x2 max pool. Indices in ``features`` follow from it.
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_VGG16_TAPS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22}  # index of the ReLU in ``features``
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureExtractor(nn.Module):
    """Interface: frozen; ``forward(x [N, 3, h, w] in [0, 1]) -> list of [N, C_l, h_l, w_l]``; ``layer_names``."""

    layer_names: tuple[str, ...] = ()

    def freeze(self) -> FeatureExtractor:
        self.requires_grad_(False)
        self.eval()
        return self

    def train(self, mode: bool = True) -> FeatureExtractor:  # always frozen
        return super().train(False)


def _vgg16_layout() -> list[tuple[int, int, int]]:
    """[(index in features, in_ch, out_ch)] of VGG16's convs up to relu4_3."""
    convs, idx, c_in = [], 0, 3
    for v in _VGG16_CFG:
        if idx > _VGG16_TAPS["relu4_3"]:
            break
        if v == "M":
            idx += 1
        else:
            convs.append((idx, c_in, int(v)))
            c_in = int(v)
            idx += 2  # conv, relu
    return convs


class VGG16Features(FeatureExtractor):
    """VGG16 conv trunk up to relu4_3 (torchvision layer indices), ImageNet-normalised input.

    x [N, 3, h, w] in [0, 1] -> [relu1_2 [N, 64, h, w], relu2_2 [N, 128, h/2, w/2], relu3_3 [N, 256, h/4, w/4],
    relu4_3 [N, 512, h/8, w/8]]. Build it with :meth:`from_file`; a bare instance has random weights.
    """

    layer_names = tuple(_VGG16_TAPS)

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in _VGG16_CFG:
            if len(layers) > _VGG16_TAPS["relu4_3"]:
                break
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU(inplace=False)]
                c_in = int(v)
        self.features = nn.Sequential(*layers)  # indices 0..22, as torchvision's
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))
        self.freeze()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> VGG16Features:
        """Load a torchvision-layout VGG16 state dict from a safetensors file (only safetensors: no pickle).

        Accepted keys: ``features.<i>.weight|bias`` or ``<i>.weight|bias`` (the ``features`` module alone),
        for every conv up to relu4_3; deeper conv layers and ``classifier.*`` are ignored. Missing keys,
        unknown keys, wrong shapes or non-finite values raise :class:`CorruptFileError`.
        """
        path = Path(path)
        tensors, _ = load_weights_file(path, "VGG16", " (give a .safetensors file, or 'substitute')")
        model = cls()
        wanted = {f"{i}.{k}": (c_out, c_in) for i, c_in, c_out in _vgg16_layout() for k in ("weight", "bias")}
        all_convs = {f"{i}.{k}" for i, v in enumerate(_all_vgg16_indices()) if v for k in ("weight", "bias")}
        got: dict[str, torch.Tensor] = {}
        unknown = []
        for key, value in tensors.items():
            name = key.removeprefix("features.")
            if key.startswith("classifier."):
                continue
            if name in wanted:
                got[name] = value
            elif name not in all_convs:
                unknown.append(key)
        missing = sorted(set(wanted) - set(got), key=_layer_order)
        if unknown or missing:
            raise CorruptFileError(
                f"{path} is not a torchvision VGG16 state dict: missing {missing[:6]}{' ...' if len(missing) > 6 else ''}, "
                f"unexpected {sorted(unknown)[:6]}{' ...' if len(unknown) > 6 else ''} "
                "(expected keys like 'features.0.weight' [64, 3, 3, 3])"
            )
        for name, value in got.items():
            c_out, c_in = wanted[name]
            shape = (c_out, c_in, 3, 3) if name.endswith("weight") else (c_out,)
            if tuple(value.shape) != shape:
                raise CorruptFileError(f"{path}: {name} has shape {tuple(value.shape)}, VGG16 expects {shape}")
            if not torch.isfinite(value).all():
                raise CorruptFileError(f"{path}: {name} has non-finite values")
        model.features.load_state_dict({k: v.float() for k, v in got.items()}, strict=True)
        return model.freeze()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.mean) / self.std
        out = []
        last = _VGG16_TAPS["relu4_3"]
        taps = set(_VGG16_TAPS.values())
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in taps:
                out.append(h)
            if i == last:
                break
        return out


def _all_vgg16_indices() -> list[bool]:
    """For every index of torchvision's vgg16().features (31 modules): is it a conv?"""
    flags = []
    for v in _VGG16_CFG:
        flags += [False] if v == "M" else [True, False]
    return flags


def _layer_order(name: str) -> tuple[int, str]:
    i, k = name.split(".", 1)
    return int(i), k


def _fixed_filters() -> torch.Tensor:
    """Sobel x, Sobel y and the 4-neighbour Laplacian, [3, 1, 3, 3]."""
    sx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4.0
    lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]) / 4.0
    return torch.stack([sx, sx.t(), lap])[:, None]


class RandomFeatures(FeatureExtractor):
    """The documented substitute for VGG16 (module docstring): fixed gradient channels + a seeded,
    zero-mean random multi-scale conv net.

    x [N, 3, h, w] in [0, 1] -> [grad0 [N, 9, h, w], grad1 [N, 9, h/2, w/2], level0 [N, w0, h, w],
    level1 [N, w1, h/2, w/2], level2 [N, w2, h/4, w/4]].
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), seed: int = 0):
        super().__init__()
        if not widths or any(w < 1 for w in widths):
            raise ConfigError(f"RandomFeatures widths must be positive, got {widths}")
        self.widths = tuple(int(w) for w in widths)
        self.seed = int(seed)
        self.layer_names = ("grad0", "grad1") + tuple(f"level{i}" for i in range(len(widths)))
        g = torch.Generator().manual_seed(self.seed)
        self.register_buffer("fixed", _fixed_filters().repeat(3, 1, 1, 1))  # [9, 1, 3, 3], grouped per colour
        convs = []
        c_in = 3
        for w in self.widths:
            convs += [_random_conv(c_in, w, g), _random_conv(w, w, g)]
            c_in = w
        self.convs = nn.ModuleList(convs)
        self.freeze()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = x * 2.0 - 1.0
        out = [_grad_channels(h, self.fixed)]
        out.append(_grad_channels(F.avg_pool2d(h, 2, ceil_mode=True), self.fixed))
        for lv in range(len(self.widths)):
            if lv > 0:
                h = F.avg_pool2d(h, 2, ceil_mode=True)
            for conv in self.convs[2 * lv : 2 * lv + 2]:
                h = F.relu(conv(F.pad(h, (1, 1, 1, 1), mode="reflect" if min(h.shape[-2:]) > 1 else "replicate")))
            out.append(h)
        return out


def _grad_channels(h: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    pad = F.pad(h, (1, 1, 1, 1), mode="reflect" if min(h.shape[-2:]) > 1 else "replicate")
    return F.conv2d(pad, filters.to(h.dtype), groups=3)


def _random_conv(c_in: int, c_out: int, g: torch.Generator) -> nn.Conv2d:
    """3x3 conv (padding done by the caller), He-normal weights with each (out, in) kernel's mean removed, no bias."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=0, bias=False)
    w = torch.randn(c_out, c_in, 3, 3, generator=g) * math.sqrt(2.0 / (9 * c_in))
    w = w - w.mean(dim=(2, 3), keepdim=True)
    with torch.no_grad():
        conv.weight.copy_(w * math.sqrt(9.0 / 8.0))  # keep the variance after removing one of 9 degrees of freedom
    return conv


def build_feature_extractor(spec: str, seed: int = 0) -> FeatureExtractor:
    """``"substitute"`` -> :class:`RandomFeatures` (seeded); a path -> :meth:`VGG16Features.from_file`."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"features must be 'substitute' or a path to a VGG16 .safetensors file, got {spec!r}")
    if spec == "substitute":
        return RandomFeatures(seed=seed)
    return VGG16Features.from_file(spec)


__all__ = ["FeatureExtractor", "RandomFeatures", "VGG16Features", "build_feature_extractor"]
