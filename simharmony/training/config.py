"""The training config: one YAML file says everything a run does (``configs/train_*.yaml``).

Schedule (diffusion-harmonizer section 3.3), in global steps:

    [0, denoise_pretrain_steps)              "denoise": optional denoising pretraining of the backbone
    [.., + image_steps)                      "image":   image-only batches (T = 1, no context)
    [.., + mixed_steps)                      mixed:     "temporal" every ``temporal_every``-th step (or with
                                                        probability ``temporal_prob`` when > 0), else "image"

The learning rate warms up linearly over ``warmup_steps`` then follows a cosine to ``min_lr_ratio * lr``
over the whole run. Every random choice of step s (its batch, patch places, mask/depth dropout, noise)
is drawn from generators seeded by (seed, s, rank), so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from simharmony.data.flicker import FlickerConfig
from simharmony.data.item import TARGET_DERIVED_MASK_STREAMS
from simharmony.data.real import DEPTHLESS_STREAMS
from simharmony.data.registry import stream_names
from simharmony.errors import ConfigError
from simharmony.models.backbone import EnhancerConfig
from simharmony.training.losses import PAPER_PATCH_RANGE
from simharmony.utils.config import Config, all_finite, require

Phase = Literal["denoise", "image", "temporal"]


def warmup_cosine_lr(step: int, lr: float, warmup: int, total: int, min_ratio: float) -> float:
    """Learning rate at ``step``: linear warmup over ``warmup`` steps, then a cosine from ``lr`` down to
    ``min_ratio * lr`` at step ``total`` (held there after). Shared by every trainer in the project."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    frac = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    return float(lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))))


@dataclass
class TrainConfig(Config):
    """Everything :func:`simharmony.training.train` needs; round-trips to YAML.

    Data: ``data`` (a dataset folder, or a list of folders read as one), ``data_streams`` ({folder of
    ``data``: the streams read from it}; a folder not named gives all its streams, so one folder's items of a
    stream can replace another's), ``holdout`` ("" = no validation),
    ``stream_weights`` ({} = every stream of the dataset, weight 1), ``batch_size`` (image batches),
    ``temporal_batch_size`` (sequences per temporal batch; each runs ``seq_len`` frames, 0 = the dataset's
    most common length), ``num_workers``.
    Model: ``model`` (an EnhancerConfig) or ``init_model`` (a folder saved by Enhancer.save_pretrained,
    whose weights and config are used instead; ``init_model_overrides`` changes fields of that config that
    keep every existing weight: ones that add zero-initialised modules, e.g. ``{colour_anchor: true}``,
    whose weights start fresh, or change none, e.g. ``output_deadzone``);
    ``trainable``: parameter-name prefixes to train, the rest frozen ([] = all; e.g.
    ``[backbone.colour_anchor]`` trains an added anchor alone, so the model without a past is unchanged).
    Loss: weights ``l2_weight``, ``perceptual_weight``, ``temporal_weight``, ``ssim_weight`` (1 - SSIM over
    all frames, default 0 = off); ``l2_mode``: "mse" (mean over all pixels) or "log" (mean over frames of
    10 log10(frame MSE + ``log_eps``), i.e. minus each frame's PSNR: every frame counts alike, so frames
    whose input is already close to the target are not drowned by far-off ones); ``patch_range`` in fractions of the image height; ``features``: "substitute" or
    the path of a VGG16 .safetensors file. ``context_grad``: let gradients flow into the past latents of
    temporal batches (default False: detached, see trainer docstring). ``flicker_prob``: probability that a
    sequence of a temporal batch gets per-frame exposure / white-balance flicker (``flicker``, see
    :mod:`simharmony.data.flicker`) on its input; its target stays clean. ``occluder_prob``: probability that
    a sequence of a temporal batch gets a growing occluder in input and target alike (content that changes
    the frame's statistics like a drift; drawn before the flicker; the warping loss ignores its pixels).
    ``identity_prob``: probability that an item (image or sequence, any batch) is shown already right: its
    input replaced by its target, mask and depth kept, so the model learns to leave consistent frames and
    inserted objects alone instead of applying the average correction of its streams (drawn first);
    ``identity_streams`` limits that to items of these streams ([] = any stream). ``maskless_streams``:
    streams whose items never give the model their mask, only their ``asset_mask`` if any (default: those whose mask is cut out with the
    target's help, :data:`~simharmony.data.item.TARGET_DERIVED_MASK_STREAMS`; [] = every item's mask, as
    stages 1-3 of the shipped model were trained). ``depthless_streams``: streams whose items have no
    geometry (their depth is all inf) and never give the model depth (default: the real-image streams).
    """

    data: str | list[str] = "data/default"
    data_streams: dict[str, list[str]] = field(default_factory=dict)
    holdout: str = ""
    stream_weights: dict[str, float] = field(default_factory=dict)
    batch_size: int = 8
    temporal_batch_size: int = 2
    seq_len: int = 0
    num_workers: int = 0
    # schedule
    denoise_pretrain_steps: int = 0
    image_steps: int = 1000
    mixed_steps: int = 2000
    temporal_every: int = 2
    temporal_prob: float = 0.0
    # optimiser
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    # losses
    l2_weight: float = 1.0
    l2_mode: Literal["mse", "log"] = "mse"
    log_eps: float = 1e-5
    perceptual_weight: float = 1.0
    temporal_weight: float = 1.0
    ssim_weight: float = 0.0
    patch_range: tuple[float, float] = PAPER_PATCH_RANGE
    num_patches: int = 1
    perceptual_distance: Literal["l1", "l2"] = "l2"
    features: str = "substitute"
    features_seed: int = 0
    # optional inputs and context
    mask_dropout: float = 0.5
    depth_dropout: float = 0.5
    shadow_hint_dropout: float = 0.5
    context_grad: bool = False
    flicker_prob: float = 0.0
    flicker: FlickerConfig = field(default_factory=FlickerConfig)
    occluder_prob: float = 0.0
    identity_prob: float = 0.0
    identity_streams: list[str] = field(default_factory=list)
    maskless_streams: tuple[str, ...] = TARGET_DERIVED_MASK_STREAMS
    depthless_streams: tuple[str, ...] = DEPTHLESS_STREAMS
    # bookkeeping
    checkpoint_every: int = 250
    keep_checkpoints: int = 3
    log_every: int = 10
    eval_every: int = 500
    eval_items: int = 60
    seed: int = 0
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:N"
    bf16: bool = True  # bf16 autocast, CUDA only (ignored on CPU)
    threads: int = 0  # torch CPU threads per process; 0 = leave torch's default
    model: EnhancerConfig = field(default_factory=EnhancerConfig)
    init_model: str = ""
    init_model_overrides: dict = field(default_factory=dict)
    trainable: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        o = "TrainConfig"
        self.betas = tuple(self.betas)
        self.patch_range = tuple(self.patch_range)
        self.trainable = [self.trainable] if isinstance(self.trainable, str) else list(self.trainable)
        require(all(isinstance(t, str) and t for t in self.trainable), o, f"trainable must be parameter-name prefixes, got {self.trainable!r}")
        if isinstance(self.data, (list, tuple)):
            self.data = list(self.data)
        folders = self.data if isinstance(self.data, list) else [self.data]
        require(bool(folders) and all(isinstance(f, str) and f for f in folders), o,
                f"data must name a dataset folder or a non-empty list of folders, got {self.data!r}")
        self.data_streams = {k: [v] if isinstance(v, str) else list(v) for k, v in self.data_streams.items()}
        stray = sorted(set(self.data_streams) - set(folders))
        require(not stray, o, f"data_streams names folders {stray} that are not in data {folders}")
        require(all(v and all(isinstance(n, str) and n for n in v) for v in self.data_streams.values()), o,
                f"data_streams must map each folder to a non-empty list of stream names, got {self.data_streams!r}")
        for name in ("batch_size", "temporal_batch_size", "log_every", "checkpoint_every", "keep_checkpoints",
                     "eval_every", "temporal_every"):
            require(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, o, f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("denoise_pretrain_steps", "image_steps", "mixed_steps", "warmup_steps", "num_workers", "seq_len",
                     "eval_items", "threads", "seed"):
            require(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, o, f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        require(self.total_steps >= 1, o, "denoise_pretrain_steps + image_steps + mixed_steps must be >= 1")
        require(all_finite(self.lr, self.weight_decay, self.grad_clip, self.min_lr_ratio) and self.lr > 0
                and self.weight_decay >= 0 and self.grad_clip >= 0 and 0 <= self.min_lr_ratio <= 1,
                o, "need lr > 0, weight_decay >= 0, grad_clip >= 0 (0 = off), 0 <= min_lr_ratio <= 1")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), o, f"betas {self.betas} must be two numbers in [0, 1)")
        require(0 <= self.ema_decay < 1, o, f"ema_decay {self.ema_decay} must be in [0, 1)")
        weights = (self.l2_weight, self.perceptual_weight, self.temporal_weight, self.ssim_weight)
        require(all_finite(*weights) and min(weights) >= 0, o, f"loss weights must be finite and >= 0, got {weights}")
        require(self.l2_mode in ("mse", "log"), o, f"l2_mode must be 'mse' or 'log', got {self.l2_mode!r}")
        require(all_finite(self.log_eps) and self.log_eps > 0, o, f"log_eps must be > 0, got {self.log_eps!r}")
        lo, hi = self.patch_range
        require(len(self.patch_range) == 2 and 0 < lo <= hi <= 1, o, f"patch_range {self.patch_range} must be 0 < lo <= hi <= 1 (fractions of the image height)")
        require(self.num_patches >= 1, o, "num_patches must be >= 1")
        require(0 <= self.mask_dropout <= 1 and 0 <= self.depth_dropout <= 1 and 0 <= self.shadow_hint_dropout <= 1, o,
                "mask_dropout, depth_dropout and shadow_hint_dropout must be in [0, 1]")
        require(all_finite(self.flicker_prob) and 0 <= self.flicker_prob <= 1, o, f"flicker_prob {self.flicker_prob!r} must be in [0, 1]")
        require(all_finite(self.occluder_prob) and 0 <= self.occluder_prob <= 1, o, f"occluder_prob {self.occluder_prob!r} must be in [0, 1]")
        require(all_finite(self.identity_prob) and 0 <= self.identity_prob <= 1, o, f"identity_prob {self.identity_prob!r} must be in [0, 1]")
        require(0 <= self.temporal_prob <= 1, o, f"temporal_prob {self.temporal_prob} must be in [0, 1]")
        require(bool(self.features), o, "features must be 'substitute' or a path to a VGG16 .safetensors file")
        self.maskless_streams = stream_names(self.maskless_streams, o, "maskless_streams")
        self.depthless_streams = stream_names(self.depthless_streams, o, "depthless_streams")
        bad = {k: v for k, v in self.stream_weights.items() if not all_finite(v) or v < 0}
        require(not bad, o, f"stream_weights must be finite and >= 0, got {bad}")
        require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), o,
                f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.model.codec == "autoencoder" and not self.init_model:
            raise ConfigError("TrainConfig: model.codec='autoencoder' needs a trained, frozen codec; give init_model "
                              "(a folder with a trained autoencoder) or use codec 'pixel_unshuffle'")

    # -- schedule -------------------------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return self.denoise_pretrain_steps + self.image_steps + self.mixed_steps

    def phase(self, step: int) -> Phase:
        """Which kind of batch global step ``step`` (0-based) trains on."""
        if step < self.denoise_pretrain_steps:
            return "denoise"
        s = step - self.denoise_pretrain_steps
        if s < self.image_steps:
            return "image"
        s -= self.image_steps
        if self.temporal_prob > 0:
            import numpy as np

            u = np.random.default_rng([self.seed, step, 7]).uniform()  # own stream: same on every rank
            return "temporal" if u < self.temporal_prob else "image"
        return "temporal" if s % self.temporal_every == 0 else "image"

    def lr_at(self, step: int) -> float:
        """Linear warmup over ``warmup_steps``, then cosine to ``min_lr_ratio * lr`` at the last step."""
        return warmup_cosine_lr(step, self.lr, self.warmup_steps, self.total_steps, self.min_lr_ratio)

    def with_total_steps(self, steps: int) -> TrainConfig:
        """The same recipe squeezed (or stretched) to ``steps`` steps: every phase and the warmup scaled alike."""
        if steps < 1:
            raise ConfigError(f"steps must be >= 1, got {steps}")
        f = steps / self.total_steps
        d = round(self.denoise_pretrain_steps * f)
        i = round(self.image_steps * f)
        m = max(steps - d - i, 0)
        return replace(self, denoise_pretrain_steps=d, image_steps=i, mixed_steps=m,
                       warmup_steps=min(round(self.warmup_steps * f), steps))


__all__ = ["Phase", "TrainConfig"]
