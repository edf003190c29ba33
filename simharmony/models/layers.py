"""Building blocks of the enhancer backbone: ResBlocks, spatial self-attention, causal temporal attention, MACA.

All blocks work on feature maps ``x [B, C, h, w]``. Blocks whose job is to *add* something to an
already-working network (temporal attention, MACA) zero-initialise their last projection, so inserting an
untrained one changes nothing (exact identity), the same trick video-diffusion inflation uses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= 8 dividing ``channels``."""
    groups = max(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-5)


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Diffusion-style timestep embedding. t [N] -> [N, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
    args = t.to(torch.float64)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb.to(torch.float32)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv x2 with an additive per-channel embedding. x [B, Cin, h, w], emb [B, E] -> [B, Cout, h, w]."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = group_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class SpatialSelfAttention(nn.Module):
    """Multi-head self-attention over the h*w positions of one frame. x [B, C, h, w] -> same.

    When h*w exceeds ``max_tokens``, keys/values come from an s x s average-pooled copy (spatial-reduction
    attention), so the cost grows linearly with the frame area instead of quadratically; queries stay at
    full resolution.
    """

    def __init__(self, channels: int, heads: int, max_tokens: int = 1024):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels {channels} not divisible by heads {heads}")
        self.heads = heads
        self.max_tokens = max_tokens
        self.norm = group_norm(channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(channels, 2 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        d = c // self.heads
        xn = self.norm(x)
        stride = max(1, math.ceil(math.sqrt(h * w / self.max_tokens)))
        src = F.avg_pool2d(xn, stride, ceil_mode=True) if stride > 1 else xn
        t = xn.flatten(2).transpose(1, 2)  # [B, hw, C]
        s = src.flatten(2).transpose(1, 2)  # [B, n, C]
        q = self.q(t).reshape(b, h * w, self.heads, d).transpose(1, 2)
        k, v = self.kv(s).reshape(b, s.shape[1], 2, self.heads, d).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)  # [B, heads, hw, d]
        o = self.proj(o.transpose(1, 2).reshape(b, h * w, c))
        return x + o.transpose(1, 2).reshape(b, c, h, w)


class CausalTemporalAttention(nn.Module):
    """Per-location attention of the current frame to the same location in up to ``max_past`` past frames.

    Queries come from the current frame's features ``x [B, C, h, w]``; keys/values come from the past
    *latents* ``past [B, T, Cz, h', w']`` (T <= max_past, most recent first), resized to (h, w) (the backbone
    passes them pre-pooled to each level) and mapped to keys/values by one 1x1 conv shared over frames, plus
    a learned key/value bias per frame age (1..max_past). The current frame also attends to itself (a
    "stay" token), so with no useful past the layer can ignore it.

    Reading the past from cached latents instead of running every past frame through the backbone keeps
    K=4 context cheap; a stream goes further and caches each past frame's keys/values
    (:meth:`past_keys_values`), so a frame is projected once, when it enters the cache. It is causal by
    construction: nothing but the current frame and the frames passed as ``past`` is ever seen.

    Computed channel-first with 1x1 convs (no token permutes). ``proj_out`` is zero-initialised: an
    untrained layer returns ``x`` exactly, with or without past frames.
    """

    def __init__(self, channels: int, latent_channels: int, heads: int, max_past: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels {channels} not divisible by heads {heads}")
        self.heads = heads
        self.max_past = max_past
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Conv2d(channels, 2 * channels, 1)  # keys/values of the current frame ("stay" token)
        self.kv_past = nn.Conv2d(latent_channels, 2 * channels, 1)  # straight from the cached latents
        self.age = nn.Parameter(torch.zeros(max_past, 2 * channels))  # key/value bias per frame age 1..K
        nn.init.normal_(self.age, std=0.02)
        self.proj_out = zero_module(nn.Conv2d(channels, channels, 1))

    def past_keys_values(self, p: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Keys/values of past latents ``p [N, Cz, h', w']`` at feature size ``size`` -> [N, 2C, h, w]
        (before the per-age bias). Depends on nothing but ``p``: a stream computes it once per frame."""
        if p.shape[-2:] != size:
            p = F.adaptive_avg_pool2d(p, size)
        return self.kv_past(p)

    def forward(self, x: torch.Tensor, past: torch.Tensor | None, past_kv: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``past_kv``: :meth:`past_keys_values` of each past frame (most recent first, [B, 2C, h, w] each),
        given instead of ``past``: a stream keeps them per frame, so nothing is re-stacked or re-projected."""
        b, c, h, w = x.shape
        hd, d = self.heads, c // self.heads
        if past_kv is None and past is not None and past.shape[1]:
            past_kv = list(self.past_keys_values(past.flatten(0, 1), (h, w)).reshape(b, past.shape[1], 2 * c, h, w).unbind(1))
        t = len(past_kv) if past_kv is not None else 0
        if t > self.max_past:
            raise ValueError(f"got {t} past frames, the layer supports at most {self.max_past}")
        xn = self.norm(x)
        # Head sums as a [heads, C] block-ones matmul: reducing over a middle dim is slow on CPU.
        group = torch.repeat_interleave(torch.eye(hd, dtype=x.dtype, device=x.device), d, dim=1)  # [heads, C]
        q = self.q(xn).reshape(b, c, h * w) * d**-0.5
        k0, v0 = self.kv(xn).reshape(b, 2, c, h * w).unbind(1)
        keys, values = [k0], [v0]
        for age, kv in enumerate(past_kv or ()):
            kp, vp = (kv.reshape(b, 2 * c, h * w) + self.age[age, :, None]).reshape(b, 2, c, h * w).unbind(1)
            keys.append(kp)
            values.append(vp)
        # one logit per head and frame: [B, 1+T, heads, hw], softmax over the current frame and its past
        attn = torch.stack([torch.matmul(group, q * k) for k in keys], dim=1).softmax(dim=1)
        o = sum(torch.matmul(group.t(), attn[:, i]) * v for i, v in enumerate(values))  # [B, C, hw]
        return x + self.proj_out(o.reshape(b, c, h, w))


class ColourAnchor(nn.Module):
    """Undoes global per-channel drift of the output latent against the most recent past output.

    Exposure / white-balance drift between frames (auto-exposure, per-image appearance of a
    reconstruction) cannot be seen in one frame, only against the previous output. Both latents are
    summarised as cell means on a fixed ``grid`` x ``grid`` raster (:meth:`summary`, what a stream caches)
    and a robust per-channel line ``cur = a * past + b`` is fitted over the cells (:meth:`fit_drift`,
    Tukey-weighted spread ratio and means): drift moves every cell alike, content change (motion, an asset
    entering) only some, which the weights drop. An MLP decides per channel how much of the fitted drift
    to undo, ``alpha`` (1 = all; clamped to [-0.25, 1.25]), from the fit (a - 1, b and their size against
    the residual scale, the inlier fraction): ``z_out + alpha * ((z_out - b) / a - z_out)``. The last
    layer is zero-initialised (alpha = 0: the identity until trained) and with no past frame the anchor is
    skipped. It only corrects global drift, not local flicker.
    ``regions`` r > 1: the line is also fitted in each of r x r image regions and only the drift they all
    agree on is undone (per channel, the log-gain and the offset at the mean level each take the
    smallest-magnitude regional value when all regions share its sign, else 0: a minmod limiter). A large
    content change (a dark floater filling the lower half, a tunnel's mouth) leaves some region unchanged
    and so is left alone, while exposure / white balance moves every region.
    ``max_log_gain`` / ``max_misfit`` (0 = off): the anchor trusts the fit only for what it was trained
    on, a small drift of a frame its past explains (:meth:`trust`). Beyond them (a scene cut, whose fit
    would pull the new scene's colours towards the old one's; a jump much larger than any flicker) it
    leaves the frame alone, fading out over the last quarter of each limit. At inference only.
    z_out [B, Cz, h, w], past [B, Cz, grid**2] (:meth:`summary` of the previous output) -> [B, Cz, h, w].
    """

    grid = 16
    _tukey_c = 4.685
    _iterations = 3

    def __init__(self, latent_channels: int, hidden: int = 64, regions: int = 1, max_log_gain: float = 0.0,
                 max_misfit: float = 0.0):
        super().__init__()
        if regions < 1 or self.grid % regions:
            raise ValueError(f"regions must divide the grid ({self.grid}), got {regions}")
        if max_log_gain < 0 or max_misfit < 0:
            raise ValueError(f"max_log_gain and max_misfit must be >= 0 (0 = off), got {max_log_gain}, {max_misfit}")
        self.regions = regions
        self.max_log_gain, self.max_misfit = max_log_gain, max_misfit
        self.mlp = nn.Sequential(nn.Linear(6 * latent_channels, hidden), nn.SiLU(), zero_module(nn.Linear(hidden, latent_channels)))

    @classmethod
    def summary(cls, z: torch.Tensor) -> torch.Tensor:
        """[B, Cz, h, w] -> [B, Cz, grid**2]: cell means on a fixed grid (any resolution, float32)."""
        return F.adaptive_avg_pool2d(z.float(), cls.grid).flatten(2)

    @classmethod
    @torch.no_grad()
    def fit_drift(cls, cur: torch.Tensor, past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Robust per-channel fit ``cur = a * past + b`` (a: ratio of weighted spreads) over cells [B, Cz, G]
        -> (a, b, scale, inliers), each [B, Cz]: gain, offset, residual scale (1.4826 x median absolute
        residual), mean Tukey weight."""
        def tukey(r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            scale = 1.4826 * r.abs().median(dim=-1, keepdim=True).values + 1e-4
            return (1 - (r / (cls._tukey_c * scale)) ** 2).clamp_min(0) ** 2, scale

        diff = cur - past
        w, scale = tukey(diff - diff.median(dim=-1, keepdim=True).values)  # start: offset only (a = 1)
        both = torch.stack([past, cur])  # [2, B, Cz, G]: one weighted reduction for both sides
        for _ in range(cls._iterations):
            ws = w.sum(-1, keepdim=True).clamp_min(1e-6)
            mean = (w * both).sum(-1, keepdim=True) / ws
            var = (w * (both - mean).square()).sum(-1, keepdim=True) / ws
            # spread ratio (reduced major axis), not cov / var: motion is noise on both sides, and least
            # squares would shrink the gain towards 0 (regression dilution); shrunk towards 1 on flat channels
            a = ((var[1] + 1e-4) / (var[0] + 1e-4)).sqrt().clamp(0.5, 2.0)
            b = mean[1] - a * mean[0]
            w, scale = tukey(cur - a * past - b)
        return a[..., 0], b[..., 0], scale[..., 0], w.mean(-1)

    @classmethod
    @torch.no_grad()
    def consensus_drift(cls, cur: torch.Tensor, past: torch.Tensor, regions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The drift every one of ``regions`` x ``regions`` image regions agrees on: cells [B, Cz, G*G] ->
        (a, b), each [B, Cz], for ``cur = a * past + b``; minmod over the regional fits of log a and of the
        offset at the mean level of ``past`` (so gain and offset are limited independently)."""
        g, r = cls.grid, regions
        def split(x: torch.Tensor) -> torch.Tensor:  # [B, Cz, G*G] -> [B, Cz, r*r, (G/r)**2]
            x = x.unflatten(-1, (r, g // r, r, g // r)).transpose(-3, -2)
            return x.flatten(-4, -3).flatten(-2)
        a_r, b_r, _, _ = cls.fit_drift(split(cur), split(past))  # [B, Cz, r*r]
        level = past.mean(-1, keepdim=True)
        log_a = _minmod(a_r.log())
        shift = _minmod(b_r + (a_r - 1) * level)
        a = log_a.exp()
        return a, shift - (a - 1) * level[..., 0]

    @classmethod
    @torch.no_grad()
    def misfit(cls, cur: torch.Tensor, past: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """How badly the drift line (a, b [B, Cz]) explains cells ``cur`` from ``past`` [B, Cz, G] -> [B]:
        mean absolute residual over the cells' mean absolute deviation, averaged over channels (0 =
        exactly; on data/default consecutive frames of a moving camera: median 0.16, max 0.51; the first frame
        after a cut: median 0.90, 1 % below 0.51)."""
        residual = (cur - (a[..., None] * past + b[..., None])).abs().mean(-1)
        spread = (cur - cur.mean(-1, keepdim=True)).abs().mean(-1).clamp_min(1e-6)
        return (residual / spread).mean(-1)

    @torch.no_grad()
    def trust(self, cur: torch.Tensor, past: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """[B, 1] in [0, 1]: 1 while the largest fitted log-gain is below 3/4 of ``max_log_gain`` and the
        :meth:`misfit` below 3/4 of ``max_misfit``, linearly down to 0 at the limits (0 = no limit)."""
        weight = torch.ones(cur.shape[0], 1, device=cur.device)
        if self.max_log_gain > 0:
            weight = weight * _fade_out(a.log().abs().amax(-1), self.max_log_gain)
        if self.max_misfit > 0:
            weight = weight * _fade_out(self.misfit(cur, past, a, b), self.max_misfit)
        return weight

    def forward(self, z_out: torch.Tensor, past: torch.Tensor | None) -> torch.Tensor:
        if past is None:
            return z_out
        cur, past = self.summary(z_out), past.float()
        a, b, scale, inliers = self.fit_drift(cur, past)
        # of the global fit: does the past explain this frame at all? (at inference only, as the output dead
        # zone: a recipe with the limits set trains the same weights as one without)
        trust = 1.0 if self.training else self.trust(cur, past, a, b)
        if self.regions > 1:
            a, b = self.consensus_drift(cur, past, self.regions)
        feats = torch.cat([a - 1, b, (a - 1) / scale, b / scale, scale, inliers], dim=1)
        # bounded; not at 0, where clamp would stop the gradient
        alpha = self.mlp(feats).clamp(-0.25, 1.25) * trust
        # z_out + alpha * ((z_out - b) / a - z_out) as one per-channel affine map of the latent
        gain, offset = 1 + alpha * (1 / a - 1), -alpha * b / a
        return torch.addcmul(offset[:, :, None, None].to(z_out.dtype), z_out, gain[:, :, None, None].to(z_out.dtype))


def _fade_out(value: torch.Tensor, limit: float) -> torch.Tensor:
    """[B] -> [B, 1]: 1 below 3/4 of ``limit``, linearly down to 0 at ``limit`` and beyond."""
    return ((limit - value) / (0.25 * limit)).clamp(0, 1)[:, None]


def _minmod(x: torch.Tensor) -> torch.Tensor:
    """[..., R] -> [...]: the smallest-magnitude entry when all R share a sign, else 0."""
    lo, hi = x.min(-1).values, x.max(-1).values
    return torch.where(lo > 0, lo, torch.where(hi < 0, hi, torch.zeros_like(lo)))


def masked_stats(x: torch.Tensor, m: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of x [B, C, h, w] weighted by m [B, 1, h, w] -> ([B, C], [B, C])."""
    wsum = m.sum(dim=(2, 3)).clamp_min(eps)
    mean = (x * m).sum(dim=(2, 3)) / wsum
    var = ((x - mean[:, :, None, None]) ** 2 * m).sum(dim=(2, 3)) / wsum
    return mean, (var + eps).sqrt()


class MACA(nn.Module):
    """Mask-aware adaptive channel attention (region-to-region-r2r).

    Pools foreground and background statistics (mean, std per channel), predicts a per-channel scale and
    shift, and applies them to the foreground only: x + m * (x * scale + shift). Last layer zero-initialised
    (identity at init); a missing mask (m all zero) is the identity too.
    x [B, C, h, w], m [B, 1, h, w] in [0, 1] -> [B, C, h, w].
    """

    def __init__(self, channels: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or max(16, channels // 2)
        self.mlp = nn.Sequential(nn.Linear(4 * channels, hidden), nn.SiLU(), zero_module(nn.Linear(hidden, 2 * channels)))

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        if m.shape[-2:] != x.shape[-2:]:
            m = F.adaptive_avg_pool2d(m, x.shape[-2:])
        fg_mean, fg_std = masked_stats(x, m)
        bg_mean, bg_std = masked_stats(x, 1.0 - m)
        scale, shift = self.mlp(torch.cat([fg_mean, fg_std, bg_mean, bg_std], dim=1)).chunk(2, dim=1)
        return x + m * (x * scale[:, :, None, None] + shift[:, :, None, None])


class ShadowHead(nn.Module):
    """How much direct light a cast shadow removes, per colour, where a shadow hint says it is blocked.

    From the input latent ``z [B, Cz, h, w]`` (is this surface sunlit? what colour is it?) and the hint at
    latent size ``hint_lat [B, 1, h, w]``, predicts an attenuation ``a [B, 3, h, w]`` in [0, 1]; the image
    then becomes ``x * (1 - hint * a)`` with the hint at full resolution (:meth:`apply`). A shadow darkens the
    sun's share of the light and keeps the sky's, so ``a`` differs per colour (bluish shadows). The last conv
    starts at zero: a new head changes nothing until trained.
    """

    def __init__(self, latent_channels: int, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(latent_channels + 1, width, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(width, width, 3, padding=1), nn.SiLU())
        self.out = zero_module(nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, z: torch.Tensor, hint_lat: torch.Tensor) -> torch.Tensor:
        raw = self.out(self.net(torch.cat([z, hint_lat.to(z.dtype)], dim=1)))
        # clamped values, straight-through gradient: a plain clamp has no gradient at the zero it starts from
        return raw + (raw.clamp(0.0, 1.0) - raw).detach()

    @staticmethod
    def apply(image: torch.Tensor, hint: torch.Tensor, attenuation: torch.Tensor) -> torch.Tensor:
        """image [B, 3, H, W], hint [B, 1, H, W], attenuation [B, 3, h, w] (upsampled bilinearly) -> image."""
        a = F.interpolate(attenuation, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return image * (1.0 - hint.to(image.dtype) * a)

