"""Training the compact autoencoder codec (then frozen inside the enhancer).

    simharmony train-codec --config configs/codec_default.yaml --out runs/codec
    simharmony train --config configs/train_default.yaml --set init_model=runs/codec/final --out runs/ae

The codec learns to reconstruct frames of the curation dataset (inputs and targets alike: the enhancer
encodes inputs and decodes its output, which should look like targets): L1 + the patch perceptual loss of
:mod:`simharmony.training.losses` on random square crops. An EMA of the weights is what is kept.

Output folder: ``checkpoints/step_XXXXXXX/`` (atomic; a rerun resumes from the newest), ``metrics.jsonl``,
and ``final/``: a complete enhancer folder (``Enhancer.save_pretrained``) whose codec is the trained
autoencoder and whose backbone is fresh (``model`` in the config; its codec fields are set from the codec
config), ready to be ``init_model`` of an enhancer run. ``final/codec_report.yaml`` holds the holdout
reconstruction PSNR (frames through encode + decode, no backbone), the codec's upper bound on quality.

Detail skips (``detail_skips: true``) are built zero-initialised into ``final/`` and trained with the
enhancer: the codec itself stays frozen there, the skip convs do not (see :meth:`CompactAutoencoder.freeze`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from simharmony.data.shards import ShardDataset
from simharmony.errors import ConfigError, NonFiniteError
from simharmony.models import Enhancer, EnhancerConfig
from simharmony.models.codec import CompactAutoencoder
from simharmony.training.checkpoint import (
    append_metrics,
    clean_stale,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    truncate_metrics,
)
from simharmony.training.config import warmup_cosine_lr
from simharmony.training.ema import EMA
from simharmony.training.features import build_feature_extractor
from simharmony.training.losses import PAPER_PATCH_RANGE, PatchPerceptualLoss
from simharmony.utils.config import Config, all_finite, require
from simharmony.utils.io import ensure_writable_dir, save_yaml


@dataclass
class CodecTrainConfig(Config):
    """The codec recipe; round-trips to YAML. ``crop`` 0 trains on whole frames."""

    data: str = "data/default"
    holdout: str = ""
    widths: tuple[int, ...] = (24, 48)
    latent_channels: int = 8
    detail_skips: bool = False
    steps: int = 2000
    batch_size: int = 8
    crop: int = 96
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.998
    l1_weight: float = 1.0
    perceptual_weight: float = 0.1
    patch_range: tuple[float, float] = PAPER_PATCH_RANGE
    features: str = "substitute"
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    log_every: int = 20
    eval_items: int = 40
    seed: int = 0
    threads: int = 0
    model: EnhancerConfig = field(default_factory=EnhancerConfig)

    def __post_init__(self) -> None:
        o = "CodecTrainConfig"
        self.widths = tuple(self.widths)
        self.patch_range = tuple(self.patch_range)
        require(bool(self.data), o, "data must name a dataset folder")
        require(len(self.widths) >= 1 and all(isinstance(w, int) and w >= 1 for w in self.widths), o,
                f"widths must be positive integers, got {self.widths}")
        for name in ("latent_channels", "steps", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every"):
            require(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, o, f"{name} must be an integer >= 1")
        for name in ("crop", "warmup_steps", "eval_items", "seed", "threads"):
            require(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, o, f"{name} must be an integer >= 0")
        require(self.crop == 0 or self.crop % self.downscale == 0, o,
                f"crop {self.crop} must be 0 or a multiple of the codec's downscale {self.downscale}")
        require(all_finite(self.lr, self.weight_decay, self.grad_clip, self.l1_weight, self.perceptual_weight)
                and self.lr > 0 and min(self.weight_decay, self.grad_clip, self.l1_weight, self.perceptual_weight) >= 0,
                o, "need lr > 0 and non-negative weight_decay, grad_clip and loss weights")
        require(0 <= self.min_lr_ratio <= 1 and 0 <= self.ema_decay < 1, o, "need 0 <= min_lr_ratio <= 1, 0 <= ema_decay < 1")

    @property
    def downscale(self) -> int:
        return 2 ** len(self.widths)

    def lr_at(self, step: int) -> float:
        """Linear warmup, then cosine to ``min_lr_ratio * lr`` at the last step."""
        return warmup_cosine_lr(step, self.lr, self.warmup_steps, self.steps, self.min_lr_ratio)

    def enhancer_config(self) -> EnhancerConfig:
        """``model`` with its codec fields set to this autoencoder."""
        return EnhancerConfig.from_dict({**self.model.to_dict(), "codec": "autoencoder", "codec_downscale": self.downscale,
                                         "ae_widths": list(self.widths), "ae_latent_channels": self.latent_channels,
                                         "detail_skips": self.detail_skips})


@dataclass
class CodecTrainResult:
    out_dir: Path
    final_dir: Path
    steps: int
    start_step: int
    seconds: float
    holdout_psnr: float | None


def _frame_batch(ds: ShardDataset, cfg: CodecTrainConfig, step: int) -> torch.Tensor:
    """``batch_size`` random frames (input or target of a random item) cropped at random -> [B, 3, c, c].
    Drawn from a generator seeded by (seed, step) only, so a resumed run sees the batches it would have."""
    rng = np.random.default_rng([cfg.seed, step, 11])
    frames = []
    for _ in range(cfg.batch_size):
        it = ds[int(rng.integers(len(ds)))]
        key = "input" if rng.uniform() < 0.5 else "target"
        seq = it[key]  # [T, H, W, 3]
        img = seq[int(rng.integers(seq.shape[0]))].permute(2, 0, 1).float()
        h, w = img.shape[-2:]
        if cfg.crop:
            c = min(cfg.crop, h - h % cfg.downscale, w - w % cfg.downscale)
            y, x = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
            img = img[:, y : y + c, x : x + c]
        else:
            img = img[:, : h - h % cfg.downscale, : w - w % cfg.downscale]
        frames.append(img)
    return torch.stack(frames)


@torch.no_grad()
def reconstruction_psnr(codec: CompactAutoencoder, ds: ShardDataset, items: int) -> float:
    """Mean PSNR (dB, data range 1 = 255) of target frames through encode + decode, frames cropped to the
    codec's multiple, over up to ``items`` evenly spaced items."""
    codec.eval()
    from simharmony.training.trainer import eval_indices

    vals = []
    for i in eval_indices(len(ds), items):
        seq = ds[i]["target"].permute(0, 3, 1, 2).float()
        f = codec.downscale
        seq = seq[..., : seq.shape[-2] - seq.shape[-2] % f, : seq.shape[-1] - seq.shape[-1] % f]
        rec = codec.decode(codec.encode(seq)).clamp(0, 1)
        mse = (rec - seq).pow(2).flatten(1).mean(1).clamp_min(1e-10)
        vals.append(float((-10 * torch.log10(mse)).mean()))
    return float(np.mean(vals)) if vals else float("nan")


def train_codec(config: CodecTrainConfig, out_dir: str | os.PathLike, resume: bool = True, progress: bool = True,
                stop_after: int | None = None) -> CodecTrainResult:
    """Train the autoencoder (module docstring). ``stop_after``: stop at that step without writing
    ``final/`` (tests of resume). Returns where ``final/`` is and the holdout reconstruction PSNR."""
    cfg = config
    out = ensure_writable_dir(out_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ds = ShardDataset(cfg.data)
    if len(ds) == 0:
        raise ConfigError(f"dataset {cfg.data} has no items")
    holdout = ShardDataset(cfg.holdout) if cfg.holdout else None
    torch.manual_seed(cfg.seed)
    codec = CompactAutoencoder(cfg.widths, cfg.latent_channels, detail_skips=False)
    ema = EMA(codec, cfg.ema_decay, True)
    opt = torch.optim.AdamW(codec.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    perceptual = None
    if cfg.perceptual_weight > 0:
        perceptual = PatchPerceptualLoss(build_feature_extractor(cfg.features), cfg.patch_range)
    ckpt_root = out / "checkpoints"
    clean_stale(ckpt_root)
    start = 0
    last = latest_checkpoint(ckpt_root) if resume else None
    if last is not None:
        start = int(load_checkpoint(last, codec, ema, opt)["step"])
    save_yaml(out / "codec_config.yaml", cfg.to_dict())
    metrics = out / "metrics.jsonl"
    truncate_metrics(metrics, start)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    started = time.perf_counter()
    bar = tqdm(range(start, end), desc="codec", unit="step", disable=not progress, initial=start, total=cfg.steps)
    codec.train()
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.lr_at(step)
        x = _frame_batch(ds, cfg, step)
        rec = codec.decode(codec.encode(x))
        losses = {"l1": F.l1_loss(rec, x)}
        total = cfg.l1_weight * losses["l1"]
        if perceptual is not None:
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence([cfg.seed, step, 12]).generate_state(1)[0]))
            losses["perceptual"] = perceptual(rec.clamp(0, 1), x, gen)
            total = total + cfg.perceptual_weight * losses["perceptual"]
        if not torch.isfinite(total):
            raise NonFiniteError(f"codec loss is {float(total)} at step {step}; lower lr ({cfg.lr})")
        opt.zero_grad(set_to_none=True)
        total.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(codec.parameters(), cfg.grad_clip)
        opt.step()
        ema.update(codec)
        done = step + 1
        if done % cfg.log_every == 0 or done == end:
            rec_line = {"step": done, "lr": cfg.lr_at(step), **{k: float(v.detach()) for k, v in losses.items()}}
            append_metrics(metrics, rec_line)
            bar.set_postfix(l1=f"{float(losses['l1'].detach()):.4f}")
        if done % cfg.checkpoint_every == 0 or done == end:
            save_checkpoint(ckpt_root, done, codec, ema, opt, keep=cfg.keep_checkpoints)
    bar.close()
    seconds = time.perf_counter() - started
    final = out / "final"
    if end < cfg.steps:
        return CodecTrainResult(out, final, end, start, seconds, None)
    trained = CompactAutoencoder(cfg.widths, cfg.latent_channels, detail_skips=False)
    ema.copy_to(trained)
    psnr = reconstruction_psnr(trained, holdout, cfg.eval_items) if holdout is not None else None
    torch.manual_seed(cfg.seed)
    enhancer = Enhancer(cfg.enhancer_config())
    # the trained encoder/decoder weights; zero-initialised detail skips (if any) stay as built
    missing, unexpected = enhancer.codec.load_state_dict(trained.state_dict(), strict=False)
    if unexpected or any(not k.startswith("skip_convs.") for k in missing):
        raise ConfigError(f"codec weights do not fit the enhancer's codec (missing {missing}, unexpected {unexpected})")
    enhancer.save_pretrained(final)
    save_yaml(final / "codec_report.yaml", {"steps": cfg.steps, "holdout": cfg.holdout or None,
                                            "holdout_reconstruction_psnr_db": psnr,
                                            "train_seconds_this_run": round(seconds, 1)})
    return CodecTrainResult(out, final, cfg.steps, start, seconds, psnr)


def _cmd_train_codec(args) -> int:
    from simharmony.training.trainer import apply_override

    d = CodecTrainConfig.load(args.config).to_dict() if args.config else CodecTrainConfig().to_dict()
    for item in args.set or []:
        apply_override(d, item)
    cfg = CodecTrainConfig.from_dict(d)
    res = train_codec(cfg, args.out, resume=args.resume, progress=not args.quiet)
    extra = f"; holdout reconstruction PSNR {res.holdout_psnr:.2f} dB" if res.holdout_psnr is not None else ""
    print(f"codec trained {res.steps} steps ({res.seconds / 60:.1f} min this run){extra}")
    print(f"enhancer init folder: {res.final_dir}  (simharmony train ... --set init_model={res.final_dir})")
    return 0


def add_cli(subparsers) -> None:
    """Add ``simharmony train-codec``."""
    import argparse

    p = subparsers.add_parser("train-codec", help="train the compact autoencoder codec (resumable)")
    p.add_argument("--config", default=None, help="CodecTrainConfig YAML (default: the built-in defaults)")
    p.add_argument("--out", required=True, help="run folder: checkpoints/, metrics.jsonl, final/ (an enhancer init folder)")
    p.add_argument("--set", action="append", default=None, metavar="KEY=VALUE", help="override a config entry (repeatable)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_train_codec)


__all__ = ["CodecTrainConfig", "CodecTrainResult", "add_cli", "reconstruction_psnr", "train_codec"]
