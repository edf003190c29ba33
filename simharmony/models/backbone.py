"""The compact temporal UNet backbone F and its config.

F maps the clean latent of the current frame, plus optional mask/depth channels and the cached latents of
up to K previously *enhanced* frames, to the enhanced latent (diffusion-harmonizer section 3.1):

    z_out = z_in + F(z_in, cond, past)

- Single step, deterministic: the timestep and condition embeddings are fixed "null" buffers (registered,
  saved with the weights, never inputs), as the paper does when repurposing a denoiser as a one-step
  enhancer; their projection through the learned embedding MLP acts as a learned per-block bias.
- Residual output with a zero-initialised last conv: a fresh backbone is exactly the identity in latent
  space. Harmonization is a small correction of an already good frame, so training starts from "change
  nothing" and learns corrections, instead of first having to learn to reproduce the input.
- Levels: ``channels[i]`` at latent/2**i. Spatial self-attention at the lowest level; causal temporal
  attention (zero-initialised, see :class:`~simharmony.models.layers.CausalTemporalAttention`) after the
  ResBlocks of the levels in ``temporal_levels`` and in the middle block, so temporal and spatial layers
  interleave.
- Optional mask and depth inputs come as channels with a presence flag each, so one model runs with or
  without them (trained with random dropout). Optional MACA scales/shifts foreground features from
  foreground/background statistics at every level when a mask is present.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from simharmony.errors import ConfigError
from simharmony.models.layers import (
    MACA,
    CausalTemporalAttention,
    ColourAnchor,
    ResBlock,
    SpatialSelfAttention,
    group_norm,
    sinusoidal_embedding,
    zero_module,
)
from simharmony.utils.config import Config, require_finite_fields


def check_output_deadzone(value: float) -> None:
    """The enhancer's inference-time dead zone (any backbone) is in [0, 0.1) of the [0, 1] pixel range."""
    if not 0.0 <= value < 0.1:
        raise ConfigError(f"output_deadzone must be in [0, 0.1) ([0, 1] pixel units), got {value}")


MAX_CHANNELS = 2048  # per level; the shipped model uses 96 at most. Beyond it a model alone takes gigabytes.


@dataclass
class EnhancerConfig(Config):
    """Everything needed to rebuild an :class:`~simharmony.models.Enhancer` (saved as config.yaml)."""

    codec: Literal["pixel_unshuffle", "autoencoder"] = "pixel_unshuffle"
    codec_downscale: int = 4  # f; for the autoencoder 2**len(ae_widths)
    ae_widths: tuple[int, ...] = (24, 48)
    ae_latent_channels: int = 8
    detail_skips: bool = False  # Harmony-VAE / Clear-VAE decoder skips (autoencoder only)
    channels: tuple[int, ...] = (24, 48, 96)  # backbone width per level (latent/2**i); ~2.2 GFLOP at 512x288
    res_blocks: int = 1  # ResBlocks per level on the way down (the way up has one per level)
    heads: int = 4
    spatial_attention: bool = True  # self-attention at the lowest level
    attention_max_tokens: int = 1024  # above this, keys/values are average-pooled (linear cost in area)
    temporal_levels: tuple[int, ...] = (1, 2)  # levels with causal temporal attention
    context_frames: int = 4  # K: most past latents the model attends to
    use_mask: bool = True  # accept an inserted-asset mask channel (optional at run time)
    use_depth: bool = True  # accept a depth channel (optional at run time)
    use_shadow_hint: bool = False  # accept a cast-shadow hint channel (optional; the simulator's shadow mapping)
    shadow_head: bool = False  # darken where the hint says the sun is blocked, by a learned amount (layers.ShadowHead)
    depth_scale: float = 10.0  # depth d (metres) enters as s / (s + d): 1 at the camera, 0 at infinity
    maca: bool = False  # mask-aware adaptive channel attention on the mask path
    null_timestep: int = 999  # the fixed timestep whose embedding is the "null" time buffer
    emb_dim: int = 128
    cond_dim: int = 64  # size of the constant null condition vector
    colour_anchor: bool = False  # global exposure / white-balance correction against the previous output
    anchor_regions: int = 1  # the anchor undoes only the drift all r x r image regions agree on (1 = global fit)
    # the anchor leaves a frame alone past these (0 = no limit; ColourAnchor.trust): fitted |log gain|, and
    # the fit's misfit (a scene cut the caller did not signal)
    anchor_max_log_gain: float = 0.0
    anchor_max_misfit: float = 0.0
    output_deadzone: float = 0.0  # at inference, changes to the input smaller than this ([0, 1] units) are dropped

    def __post_init__(self) -> None:
        self.ae_widths = tuple(self.ae_widths)
        self.channels = tuple(self.channels)
        self.temporal_levels = tuple(self.temporal_levels)
        # every float field (depth_scale, anchor_*, output_deadzone) finite first: NaN passes "<= 0" checks
        require_finite_fields(self)
        if self.codec_downscale < 1:
            raise ConfigError(f"codec_downscale must be >= 1, got {self.codec_downscale}")
        if self.codec == "autoencoder" and 2 ** len(self.ae_widths) != self.codec_downscale:
            raise ConfigError(f"ae_widths has {len(self.ae_widths)} stages (downscale {2 ** len(self.ae_widths)}) but codec_downscale={self.codec_downscale}")
        if not self.channels or any(not isinstance(c, int) or not 1 <= c <= MAX_CHANNELS for c in self.channels):
            raise ConfigError(f"channels must be a non-empty list of ints in [1, {MAX_CHANNELS}], got {self.channels}")
        for name in ("heads", "attention_max_tokens", "emb_dim", "cond_dim", "ae_latent_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 16:
                raise ConfigError(f"{name} must be an integer in [1, 65536], got {value!r}")
        if any(not isinstance(c, int) or not 1 <= c <= MAX_CHANNELS for c in self.ae_widths):
            raise ConfigError(f"ae_widths must hold ints in [1, {MAX_CHANNELS}], got {self.ae_widths}")
        if any(c % self.heads for c in self.channels):
            raise ConfigError(f"every entry of channels {self.channels} must be divisible by heads={self.heads}")
        if any(not 0 <= lv < len(self.channels) for lv in self.temporal_levels):
            raise ConfigError(f"temporal_levels {self.temporal_levels} out of range for {len(self.channels)} levels")
        if self.context_frames < 0 or self.res_blocks < 1:
            raise ConfigError("context_frames must be >= 0 and res_blocks >= 1")
        if self.depth_scale <= 0:
            raise ConfigError(f"depth_scale must be > 0, got {self.depth_scale}")
        if self.maca and not self.use_mask:
            raise ConfigError("maca=True needs use_mask=True")
        if self.shadow_head and not self.use_shadow_hint:
            raise ConfigError("shadow_head=True needs use_shadow_hint=True")
        check_output_deadzone(self.output_deadzone)
        if self.anchor_max_log_gain < 0 or self.anchor_max_misfit < 0:
            raise ConfigError(f"anchor_max_log_gain and anchor_max_misfit must be >= 0 (0 = no limit), got "
                              f"{self.anchor_max_log_gain}, {self.anchor_max_misfit}")
        if self.anchor_regions not in (1, 2, 4):
            raise ConfigError(f"anchor_regions must be 1, 2 or 4 (it splits the anchor's 16 x 16 grid), got {self.anchor_regions}")

    @property
    def latent_channels(self) -> int:
        return 3 * self.codec_downscale**2 if self.codec == "pixel_unshuffle" else self.ae_latent_channels

    @property
    def total_downscale(self) -> int:
        """Frame sizes are padded to a multiple of this."""
        return self.codec_downscale * 2 ** (len(self.channels) - 1)

    @property
    def cond_channels(self) -> int:
        """Condition channels after the latent: (value, presence flag) for mask, depth, then the shadow hint."""
        return 2 * int(self.use_mask) + 2 * int(self.use_depth) + 2 * int(self.use_shadow_hint)

    @property
    def hint_channels(self) -> int:
        return 2 * int(self.use_shadow_hint)


class TemporalUNet(nn.Module):
    """F: z [B, Cz, h, w], cond [B, Cc, h, w] | None, past [B, T, Cz, h, w] | None (T <= K) -> z_out [B, Cz, h, w].

    ``mask_lat [B, 1, h, w]`` (the mask at latent size, or None) drives MACA. ``h, w`` must be multiples of
    ``2**(levels-1)``.
    """

    def __init__(self, cfg: EnhancerConfig):
        super().__init__()
        self.cfg = cfg
        cz, ch, e = cfg.latent_channels, cfg.channels, cfg.emb_dim
        # Constant null embeddings (buffers, not inputs): fixed timestep, all-zero condition.
        self.register_buffer("null_time", sinusoidal_embedding(torch.tensor([float(cfg.null_timestep)]), e)[0])
        self.register_buffer("null_cond", torch.zeros(cfg.cond_dim))
        self.time_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.cond_proj = nn.Linear(cfg.cond_dim, e)
        self.conv_in = nn.Conv2d(cz + cfg.cond_channels - cfg.hint_channels, ch[0], 3, padding=1)
        # the shadow hint enters through its own zero-initialised conv: a model fine-tuned to take it starts
        # as the model without it
        self.hint_in = zero_module(nn.Conv2d(cfg.hint_channels, ch[0], 3, padding=1)) if cfg.use_shadow_hint else None

        def temporal(c: int) -> CausalTemporalAttention:
            return CausalTemporalAttention(c, cz, cfg.heads, max(cfg.context_frames, 1))

        self.down = nn.ModuleList()
        self.down_temporal = nn.ModuleList()
        self.down_maca = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c_prev = ch[0]
        for lv, c in enumerate(ch):
            self.down.append(nn.ModuleList([ResBlock(c_prev if i == 0 else c, c, e) for i in range(cfg.res_blocks)]))
            self.down_temporal.append(temporal(c) if lv in cfg.temporal_levels else nn.Identity())
            self.down_maca.append(MACA(c) if cfg.maca else nn.Identity())
            if lv < len(ch) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
            c_prev = c
        self.mid_attn = SpatialSelfAttention(ch[-1], cfg.heads, cfg.attention_max_tokens) if cfg.spatial_attention else nn.Identity()
        self.mid_temporal = temporal(ch[-1])
        self.mid_block = ResBlock(ch[-1], ch[-1], e)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        self.up_temporal = nn.ModuleList()
        for lv in reversed(range(len(ch) - 1)):
            self.upsample.append(nn.Conv2d(ch[lv + 1], ch[lv], 3, padding=1))
            self.up.append(ResBlock(ch[lv], ch[lv], e))
            self.up_temporal.append(temporal(ch[lv]) if lv in cfg.temporal_levels else nn.Identity())
        self.norm_out = group_norm(ch[0])
        self.conv_out = zero_module(nn.Conv2d(ch[0], cz, 3, padding=1))
        self.colour_anchor = ColourAnchor(cz, regions=cfg.anchor_regions, max_log_gain=cfg.anchor_max_log_gain,
                                          max_misfit=cfg.anchor_max_misfit) if cfg.colour_anchor and cfg.context_frames > 0 else None
        self._slots = self._temporal_slots()  # fixed by the config: computed once, not every frame

    def embedding(self, batch: int, timestep: torch.Tensor | None = None) -> torch.Tensor:
        """[B, E]: the null time + null condition embedding, or (denoising pretraining only) the embedding of
        a real ``timestep`` [B] with the null condition."""
        if timestep is not None:
            t = sinusoidal_embedding(timestep.reshape(-1).float().cpu(), self.cfg.emb_dim).to(self.null_time)
            return self.time_mlp(t.expand(batch, -1) if t.shape[0] == 1 else t) + self.cond_proj(self.null_cond)[None]
        emb = self.time_mlp(self.null_time) + self.cond_proj(self.null_cond)
        return emb[None].expand(batch, -1)

    def _latent_pyramid(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Latents [N, Cz, h, w] pooled to every level: [N, Cz, h / 2**lv, w / 2**lv] for each level lv."""
        pyramid = [flat]
        for _ in range(1, len(self.cfg.channels)):
            # 2x2 mean from four strided views: several times faster than avg_pool2d on CPU
            flat = (flat[..., ::2, ::2] + flat[..., 1::2, ::2] + flat[..., ::2, 1::2] + flat[..., 1::2, 1::2]) * 0.25
            pyramid.append(flat)
        return pyramid

    def _temporal_slots(self) -> list[tuple[CausalTemporalAttention, int]]:
        """(layer, level) of every temporal layer in call order: down levels, middle, up levels."""
        n = len(self.cfg.channels)
        slots = [(m, lv) for lv, m in enumerate(self.down_temporal) if isinstance(m, CausalTemporalAttention)]
        slots.append((self.mid_temporal, n - 1))
        ups = zip(self.up_temporal, reversed(range(n - 1)))
        return slots + [(m, lv) for m, lv in ups if isinstance(m, CausalTemporalAttention)]

    def context_features(self, z: torch.Tensor) -> list[torch.Tensor]:
        """What every temporal layer reads from one past latent ``z [B, Cz, h, w]``: its keys/values, one
        [B, 2C_l, h_l, w_l] per layer in call order. A stream computes them once, when the frame enters its
        cache, and passes them back as ``past_kv`` instead of re-deriving them from K latents every frame;
        the output is the same."""
        pyramid = self._latent_pyramid(z)
        feats = [layer.past_keys_values(pyramid[lv], tuple(pyramid[lv].shape[-2:])) for layer, lv in self._slots]
        return feats + ([ColourAnchor.summary(z)] if self.colour_anchor is not None else [])

    def forward(
        self,
        z: torch.Tensor,
        cond: torch.Tensor | None = None,
        past: torch.Tensor | None = None,
        mask_lat: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        past_kv: list[list[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """``timestep`` [B] (or [1]): overrides the fixed null time embedding; used only by the optional
        denoising pretraining (:mod:`simharmony.training`). None (always at inference) = single step.
        ``past_kv``: per temporal layer, the :meth:`context_features` entries of the past frames (a list,
        most recent first, of [B, 2C_l, h_l, w_l]), given instead of ``past``."""
        cfg = self.cfg
        if past is not None and past.shape[1] > cfg.context_frames:
            past = past[:, : cfg.context_frames]  # most recent first: keep the newest K
        if past is not None and past.shape[1] == 0:
            past = None
        emb = self.embedding(z.shape[0], timestep).to(z.dtype)
        slots = self._slots
        anchor_past = None  # ColourAnchor.summary of the previous output
        if past_kv is not None:
            n = len(slots) + (self.colour_anchor is not None)
            if len(past_kv) != n:
                raise ValueError(f"past_kv has {len(past_kv)} entries, the backbone reads {n} (see context_features)")
            kv = {id(layer): list(frames)[: cfg.context_frames] for (layer, _), frames in zip(slots, past_kv)}
            if self.colour_anchor is not None and len(past_kv[-1]):
                anchor_past = past_kv[-1][0]
            pyramid = [None] * len(cfg.channels)
        else:
            kv = {}
            if self.colour_anchor is not None and past is not None:
                anchor_past = ColourAnchor.summary(past[:, 0])
            # Pool the past latents once per level (shared by all temporal layers of that level).
            pyramid = [None] * len(cfg.channels) if past is None else [
                p.reshape(*past.shape[:2], *p.shape[1:]) for p in self._latent_pyramid(past.flatten(0, 1))]
        hint = None
        if cond is not None and self.hint_in is not None:
            cond, hint = cond[:, : -cfg.hint_channels], cond[:, -cfg.hint_channels :]
        x = torch.cat([z, cond], dim=1) if cond is not None and cond.shape[1] else z
        h = self.conv_in(x)
        if hint is not None:
            h = h + self.hint_in(hint)
        skips = []
        for lv in range(len(cfg.channels)):
            for block in self.down[lv]:
                h = block(h, emb)
            if mask_lat is not None and cfg.maca:
                h = self.down_maca[lv](h, mask_lat)
            if isinstance(self.down_temporal[lv], CausalTemporalAttention):
                h = self.down_temporal[lv](h, pyramid[lv], kv.get(id(self.down_temporal[lv])))
            if lv < len(cfg.channels) - 1:
                skips.append(h)
                h = self.downsample[lv](h)
        h = self.mid_attn(h)
        h = self.mid_temporal(h, pyramid[-1], kv.get(id(self.mid_temporal)))
        h = self.mid_block(h, emb)
        for j, lv in enumerate(reversed(range(len(cfg.channels) - 1))):
            # conv at the coarse level, then nearest upsample: 4x cheaper than conv after upsampling
            h = F.interpolate(self.upsample[j](h), scale_factor=2.0, mode="nearest")
            h = self.up[j](h + skips[lv], emb)  # additive skips: half the cost of concatenation
            if isinstance(self.up_temporal[j], CausalTemporalAttention):
                h = self.up_temporal[j](h, pyramid[lv], kv.get(id(self.up_temporal[j])))
        z_out = z + self.conv_out(F.silu(self.norm_out(h)))
        return z_out if self.colour_anchor is None else self.colour_anchor(z_out, anchor_past)

    def temporal_layers(self) -> list[CausalTemporalAttention]:
        return [m for m in self.modules() if isinstance(m, CausalTemporalAttention)]
