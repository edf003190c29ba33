"""Enhancer models, kept apart from the streaming API (diffusers style).

- :mod:`~simharmony.models.codec`: frozen codecs E/D (lossless pixel-unshuffle, compact autoencoder).
- :mod:`~simharmony.models.backbone`: :class:`EnhancerConfig` and the compact :class:`TemporalUNet` F.
- :mod:`~simharmony.models.enhancer`: :class:`Enhancer` = D(F(E(frame), past)), save/from_pretrained.
- :mod:`~simharmony.models.layers`: ResBlock, spatial and causal temporal attention, MACA.
- :mod:`~simharmony.models.diffusers_path`: a local diffusers UNet (+VAE) converted to a single-step
  temporal :class:`DiffusersEnhancer` (diffusers imported lazily: an optional extra).

This package never imports ``scene_tools``.
"""

from simharmony.models.backbone import EnhancerConfig, TemporalUNet
from simharmony.models.codec import Codec, CompactAutoencoder, PixelUnshuffleCodec, build_codec
from simharmony.models.diffusers_path import (  # registers its format
    DiffusersEnhancer,
    DiffusersEnhancerConfig,
    convert_diffusers,
)
from simharmony.models.enhancer import Enhancer, count_parameters
from simharmony.models.layers import MACA, CausalTemporalAttention, SpatialSelfAttention

__all__ = [
    "MACA",
    "CausalTemporalAttention",
    "Codec",
    "CompactAutoencoder",
    "DiffusersEnhancer",
    "DiffusersEnhancerConfig",
    "Enhancer",
    "EnhancerConfig",
    "PixelUnshuffleCodec",
    "SpatialSelfAttention",
    "TemporalUNet",
    "build_codec",
    "convert_diffusers",
    "count_parameters",
]
