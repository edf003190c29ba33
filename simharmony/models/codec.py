"""Codecs: the frozen latent encoder E and decoder D around the backbone.

A codec maps images ``x [B, 3, H, W]`` in [0, 1] to latents ``z [B, latent_channels, H/f, W/f]`` and back,
with ``f = downscale``. H and W must be multiples of ``f`` (the :class:`~simharmony.models.Enhancer` pads).

- :class:`PixelUnshuffleCodec`: lossless space-to-depth (``f*f*3`` channels), values in [-1, 1]. Needs no
  training; decode(encode(x)) == x exactly.
- :class:`CompactAutoencoder`: a small conv autoencoder trained here, then frozen. Optional decoder detail
  skips (Harmony-VAE / Clear-VAE): high-pass filtered features of the *input frame's* encoder are added
  to the decoder stages of the same resolution through zero-initialised 1x1 convs, so a fresh or absent
  skip gives exactly the plain decoder, and training the skips recovers detail the latent lost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from simharmony.models.layers import zero_module


class Codec(nn.Module):
    """Interface: ``encode(x) -> z``, ``decode(z) -> x``; attributes ``downscale`` and ``latent_channels``.

    ``encode(x, return_features=True)`` also returns the encoder's intermediate features (a list, possibly
    empty) that ``decode(z, skips=...)`` can use for detail skips. Codecs are frozen when used inside the
    enhancer (:meth:`freeze`).
    """

    downscale: int
    latent_channels: int

    def encode(self, x: torch.Tensor, return_features: bool = False):
        raise NotImplementedError

    def decode(self, z: torch.Tensor, skips: list[torch.Tensor] | None = None) -> torch.Tensor:
        raise NotImplementedError

    def freeze(self) -> Codec:
        self.requires_grad_(False)
        self.eval()
        return self


class PixelUnshuffleCodec(Codec):
    """Lossless space-to-depth codec. x [B, 3, H, W] in [0, 1] -> z [B, 3*f*f, H/f, W/f] in [-1, 1]."""

    def __init__(self, factor: int = 4):
        super().__init__()
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        self.downscale = factor
        self.latent_channels = 3 * factor * factor

    def encode(self, x: torch.Tensor, return_features: bool = False):
        z = F.pixel_unshuffle(x * 2.0 - 1.0, self.downscale)
        return (z, []) if return_features else z

    def decode(self, z: torch.Tensor, skips: list[torch.Tensor] | None = None) -> torch.Tensor:
        return F.pixel_shuffle(z, self.downscale) * 0.5 + 0.5


def high_pass(x: torch.Tensor) -> torch.Tensor:
    """x minus its 3x3 box blur (edges handled by replicate padding). [B, C, h, w] -> same."""
    return x - F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


class CompactAutoencoder(Codec):
    """Small conv autoencoder with downscale ``2**len(widths)``.

    Encoder: per stage a stride-2 3x3 conv then a 3x3 conv (SiLU), then a 1x1 conv to the latent.
    Decoder: a 3x3 conv from the latent, per stage nearest-upsample + 3x3 convs (no transposed convs:
    they checkerboard), and the last stage predicts 12 channels at half resolution that a pixel shuffle
    turns into RGB, which avoids the expensive full-resolution conv.

    x [B, 3, H, W] in [0, 1] -> z [B, latent_channels, H/f, W/f].
    """

    def __init__(self, widths: tuple[int, ...] | list[int] = (24, 48), latent_channels: int = 8, detail_skips: bool = False):
        super().__init__()
        widths = list(widths)
        if not widths:
            raise ValueError("widths must have at least one stage")
        self.widths = widths
        self.downscale = 2 ** len(widths)
        self.latent_channels = latent_channels
        self.detail_skips = detail_skips
        enc = []
        c_prev = 3
        for c in widths:
            enc.append(nn.Sequential(nn.Conv2d(c_prev, c, 3, stride=2, padding=1), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1), nn.SiLU()))
            c_prev = c
        self.enc = nn.ModuleList(enc)
        self.to_latent = nn.Conv2d(widths[-1], latent_channels, 1)
        self.from_latent = nn.Sequential(nn.Conv2d(latent_channels, widths[-1], 3, padding=1), nn.SiLU())
        # Decoder stage i works at the resolution of encoder stage i (i = n-1 .. 0).
        dec = []
        for i in reversed(range(len(widths))):
            c_in = widths[i]
            c_out = widths[i - 1] if i > 0 else widths[0]
            dec.append(nn.Sequential(nn.Conv2d(c_in, c_in, 3, padding=1), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1), nn.SiLU()))
        self.dec = nn.ModuleList(dec)
        self.to_rgb = nn.Conv2d(widths[0], 12, 3, padding=1)  # 3 * 2 * 2 -> pixel shuffle to full res
        if detail_skips:
            self.skip_convs = nn.ModuleList([zero_module(nn.Conv2d(c, c, 1)) for c in reversed(widths)])
        else:
            self.skip_convs = None

    def freeze(self) -> CompactAutoencoder:
        """Freeze the encoder and decoder; the detail-skip convs stay trainable (they are trained with the
        enhancer while the codec they read from stays fixed)."""
        super().freeze()
        if self.skip_convs is not None:
            self.skip_convs.requires_grad_(True)
        return self

    def encode(self, x: torch.Tensor, return_features: bool = False):
        h = x * 2.0 - 1.0
        feats = []
        for stage in self.enc:
            h = stage(h)
            feats.append(h)
        z = self.to_latent(h)
        return (z, feats) if return_features else z

    def decode(self, z: torch.Tensor, skips: list[torch.Tensor] | None = None) -> torch.Tensor:
        h = self.from_latent(z)
        use_skips = self.skip_convs is not None and skips is not None and len(skips) == len(self.enc)
        for j, stage in enumerate(self.dec):
            if use_skips:
                # skips are in encoder order (fine -> coarse); decoder stage j is at encoder stage n-1-j.
                h = h + self.skip_convs[j](high_pass(skips[len(self.enc) - 1 - j]))
            h = stage(h)
            if j < len(self.dec) - 1:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        return F.pixel_shuffle(self.to_rgb(h), 2) * 0.5 + 0.5


def build_codec(kind: str, downscale: int, ae_widths: tuple[int, ...] | list[int], ae_latent_channels: int, detail_skips: bool) -> Codec:
    """Codec from config values; ``downscale`` must match the autoencoder's stage count."""
    if kind == "pixel_unshuffle":
        return PixelUnshuffleCodec(downscale)
    if kind == "autoencoder":
        if 2 ** len(ae_widths) != downscale:
            raise ValueError(f"autoencoder with {len(ae_widths)} stages has downscale {2 ** len(ae_widths)}, config says {downscale}")
        return CompactAutoencoder(ae_widths, ae_latent_channels, detail_skips)
    raise ValueError(f"unknown codec {kind!r}; expected 'pixel_unshuffle' or 'autoencoder'")

