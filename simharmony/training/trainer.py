"""Training loop of the enhancer: ``train(TrainConfig, out_dir) -> TrainResult`` (diffusion-harmonizer 3.3).

    from simharmony.training import TrainConfig, train
    cfg = TrainConfig.load("configs/train_default.yaml")
    result = train(cfg, "runs/default")          # resumes from runs/default/checkpoints if present
    Harmonizer.from_pretrained(result.final_dir)  # EMA weights

Batches (schedule in :class:`~simharmony.training.config.TrainConfig`):

- image: one random frame per item, no context; loss = l2 + perceptual (+ ssim when weighted).
- temporal: ``temporal_batch_size`` sequences of T frames, run in order. Frame t gets as past context
  the model's own output latents ``latent_out`` of frames t-1, t-2, ... (most recent first, at most
  K = ``model.context_frames``), exactly what :class:`~simharmony.harmonizer.Harmonizer` caches at
  inference; frame 0 has none, as at a stream's start. The context is *detached* by default
  (``context_grad=False``): at inference the cache is a fixed input, gradients through it would turn
  training into backprop-through-time that optimises earlier outputs for being good context rather than
  good frames, and detaching keeps the backward pass per frame. loss = l2 + perceptual (over all frames)
  + temporal warping loss between consecutive outputs (both sides get gradients).
- denoise (optional pretraining, ``denoise_pretrain_steps``): target latent z0 = E(target), noised
  ``z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps`` (cosine schedule, t uniform in [0, 1000)); the backbone
  gets z_t with the *real* timestep embedding (``TemporalUNet.forward(timestep=...)``) and no condition,
  and predicts z0 (its residual output makes that z_t + F). Conversion to single step afterwards = the
  following phases simply use the fixed null timestep buffer on clean input latents.
- mask and depth are dropped for the whole batch (and all its frames) with ``mask_dropout`` /
  ``depth_dropout``: the model sees "absent" exactly as at inference without them. Items of
  ``maskless_streams`` (masks cut out with the target's help) never get theirs: they get the object's own
  ``asset_mask`` where they carry one, else none (``Enhancer(mask_given=)``). Items of
  ``depthless_streams`` (real images: no geometry) never get depth (``Enhancer(depth_given=)``). Models
  built with ``use_shadow_hint`` get the items' ``shadow_hint`` where they carry one (``shadow_hint_given``),
  dropped for the whole batch with ``shadow_hint_dropout``.

Reproducibility: every random draw of step s comes from generators seeded by (seed, s, rank), batches
from :class:`~simharmony.data.shards.MixingBatchSampler` with epoch = s (rank r takes batch r of that
epoch: disjoint draws per rank), and checkpoints store model, EMA and optimizer state, so a run resumed
from a checkpoint repeats the uninterrupted run. Data-parallel: launch with ``torchrun --nproc_per_node N
-m simharmony.training ...``; gloo on CPU, nccl on CUDA, DistributedDataParallel, rank 0 writes.

Outputs in ``out_dir``: ``train_config.yaml``, ``metrics.jsonl`` (one JSON line per logged step: step,
phase, losses, lr, grad_norm, seconds; eval lines with phase "eval"), ``checkpoints/step_XXXXXXX/``,
``final/`` (EMA weights, Enhancer.save_pretrained format) and ``loss_curve.png``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from simharmony.data.flicker import apply_flicker, apply_occluder, flicker_gains, occluder_alphas
from simharmony.data.item import TARGET_DERIVED_MASK_STREAMS
from simharmony.data.real import DEPTHLESS_STREAMS
from simharmony.data.shards import ConcatShardDataset, MixingBatchSampler, ShardDataset, batch_model_mask, open_datasets
from simharmony.errors import BackendUnavailableError, ConfigError, NonFiniteError
from simharmony.models.enhancer import Enhancer
from simharmony.training.checkpoint import (
    append_metrics,
    clean_stale,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    truncate_metrics,
)
from simharmony.training.config import TrainConfig
from simharmony.training.ema import EMA
from simharmony.training.features import build_feature_extractor
from simharmony.training.losses import PatchPerceptualLoss, l2_loss, log_mse_loss, ssim_loss, temporal_warp_loss
from simharmony.utils.io import ensure_writable_dir, save_yaml

log = logging.getLogger(__name__)

DIFFUSION_STEPS = 1000


@dataclass
class TrainResult:
    """What :func:`train` did. ``ema_model`` holds the EMA weights (= ``final_dir``), ``model`` the raw ones."""

    out_dir: Path
    final_dir: Path | None
    steps: int  # steps completed in total (including before a resume)
    start_step: int  # where this call started (0 = fresh)
    last_losses: dict[str, float]
    evals: list[dict[str, Any]]
    metrics_path: Path
    loss_curve: Path | None
    seconds: float
    model: Enhancer | None = None
    ema_model: Enhancer | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# -- distributed --------------------------------------------------------------------------------------------
@dataclass
class _Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    owns_group: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1


def _setup_dist(device_kind: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    d = _Dist(world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
        d.owns_group = True
    return d


def _barrier(d: _Dist) -> None:
    if d.active:
        import torch.distributed as dist

        dist.barrier()


def _resolve_device(spec: str, d: _Dist) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BackendUnavailableError(f"device={spec!r} but CUDA is not available; use device: cpu")
        if spec == "cuda":
            return torch.device("cuda", d.local_rank if d.active else torch.cuda.current_device())
    return torch.device(spec)


def step_seed(seed: int, step: int, rank: int, stream: int = 0) -> int:
    """Seed of the generator for step ``step`` on ``rank`` (independent of anything else in the run)."""
    return int(np.random.SeedSequence([seed, step, rank, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


# -- data ---------------------------------------------------------------------------------------------------
class _StepBatches:
    """Batch sampler yielding the batch of every step in [start, end) for one rank (see module docstring)."""

    def __init__(self, cfg: TrainConfig, image: MixingBatchSampler, seq: MixingBatchSampler | None, start: int, end: int, rank: int):
        self.cfg, self.image, self.seq, self.start, self.end, self.rank = cfg, image, seq, start, end, rank

    def __len__(self) -> int:
        return max(self.end - self.start, 0)

    def __iter__(self):
        for step in range(self.start, self.end):
            sampler = self.seq if self.cfg.phase(step) == "temporal" else self.image
            sampler.set_epoch(step)
            for r, batch in enumerate(sampler):
                if r == self.rank:
                    yield batch
                    break


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("input", "target", "mask", "asset_mask", "has_asset_mask", "shadow_hint", "has_shadow_hint", "depth", "flow",
            "flow_valid")
    out: dict[str, Any] = {k: torch.stack([it[k] for it in items]) for k in keys}
    out["id"] = [it["id"] for it in items]
    out["stream"] = [it["stream"] for it in items]
    return out


def stream_flags(batch: dict[str, Any], cfg: TrainConfig, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """What a collated batch's streams change: ``identity_ok`` [B] (items of ``identity_streams``, when those
    are set); ``depth_given`` [B] on a batch with items of ``depthless_streams`` (False on those); on a batch with items of ``maskless_streams``, the model's ``mask`` (theirs replaced by their
    ``asset_mask``, :func:`~simharmony.data.shards.batch_model_mask`) and ``mask_given`` [B] (False where
    they have none)."""
    streams = batch["stream"]
    flags = {}
    if set(cfg.depthless_streams) & set(streams):
        flags["depth_given"] = torch.tensor([st not in cfg.depthless_streams for st in streams], device=device)
    if cfg.identity_prob > 0 and cfg.identity_streams:
        flags["identity_ok"] = torch.tensor([st in cfg.identity_streams for st in streams], device=device)
    if set(cfg.maskless_streams) & set(streams):
        mask, given = batch_model_mask(batch, cfg.maskless_streams)
        flags["mask"], flags["mask_given"] = mask.to(device), given.to(device)
    return flags


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}


# -- the per-step computation (one module so DDP sees one forward per backward) -------------------------------
def _alpha_bar(t: torch.Tensor) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal): abar(t) for integer t in [0, 1000)."""
    s = 0.008
    f = torch.cos(((t.double() + 1) / DIFFUSION_STEPS + s) / (1 + s) * math.pi / 2) ** 2
    f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
    return (f / f0).clamp(1e-5, 1.0).float()


def _numpy_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy generator seeded from ``generator`` (the batch's augmentations stay reproducible on resume)."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))


class StepModule(nn.Module):
    """Computes the losses of one batch: ``forward(batch, phase, generator) -> {name: scalar}`` with "total"."""

    def __init__(self, model: Enhancer, perceptual: PatchPerceptualLoss | None, cfg: TrainConfig):
        super().__init__()
        self.model = model
        self.perceptual = perceptual
        self.cfg = cfg

    def forward(self, batch: dict[str, torch.Tensor], phase: str, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if phase == "denoise":
            return self._denoise(batch, generator)
        cfg, mcfg = self.cfg, self.model.config
        if cfg.identity_prob > 0:
            right = torch.rand(batch["input"].shape[0], generator=generator) < cfg.identity_prob
            right = right.to(batch["input"].device)
            if "identity_ok" in batch:  # the items of identity_streams
                right &= batch["identity_ok"]
            right = right[:, None, None, None, None]
            batch = {**batch, "input": torch.where(right, batch["target"], batch["input"])}
        if batch["input"].shape[1] > 1 and cfg.occluder_prob > 0:
            batch = self._occlude(batch, generator)
        inp = batch["input"]
        if inp.shape[1] > 1 and cfg.flicker_prob > 0:
            inp = self._flicker(inp, generator)
        inp = inp.permute(0, 1, 4, 2, 3)  # [B, T, 3, H, W]
        tgt = batch["target"].permute(0, 1, 4, 2, 3)
        t_len = inp.shape[1]
        draws = torch.rand(2, generator=generator)
        use_mask = mcfg.use_mask and bool(draws[0] >= cfg.mask_dropout)
        use_depth = mcfg.use_depth and bool(draws[1] >= cfg.depth_dropout)
        # drawn only for models that take a hint, so older configs keep their random sequence
        use_hint = getattr(mcfg, "use_shadow_hint", False) and bool(torch.rand(1, generator=generator)[0] >= cfg.shadow_hint_dropout)
        k = self.model.context_frames
        outs, ctx = [], []
        for t in range(t_len):
            mask = batch["mask"][:, t, None] if use_mask else None
            depth = batch["depth"][:, t, None] if use_depth else None
            past = ctx[:k] if (k and ctx) else None
            out, z = self.model(inp[:, t], past, mask=mask, depth=depth,
                                mask_given=batch.get("mask_given") if use_mask else None,
                                depth_given=batch.get("depth_given") if use_depth else None,
                                shadow_hint=batch["shadow_hint"][:, t, None] if use_hint else None,
                                shadow_hint_given=batch["has_shadow_hint"] if use_hint else None)
            outs.append(out)
            ctx.insert(0, z if cfg.context_grad else z.detach())
            del ctx[max(k, 1):]
        out_all = torch.stack(outs, dim=1).float()
        tgt_all = tgt.float()
        losses = {"l2": l2_loss(out_all, tgt_all) if cfg.l2_mode == "mse" else log_mse_loss(out_all, tgt_all, cfg.log_eps)}
        total = cfg.l2_weight * losses["l2"]
        if self.perceptual is not None and cfg.perceptual_weight > 0:
            losses["perceptual"] = self.perceptual(out_all.flatten(0, 1), tgt_all.flatten(0, 1), generator)
            total = total + cfg.perceptual_weight * losses["perceptual"]
        if cfg.ssim_weight > 0:
            losses["ssim"] = ssim_loss(out_all, tgt_all)
            total = total + cfg.ssim_weight * losses["ssim"]
        if t_len > 1 and cfg.temporal_weight > 0:
            temp = sum(temporal_warp_loss(out_all[:, t], out_all[:, t - 1], batch["flow"][:, t].float(), batch["flow_valid"][:, t])
                       for t in range(1, t_len)) / (t_len - 1)
            losses["temporal"] = temp
            total = total + cfg.temporal_weight * temp
        losses["total"] = total
        return losses

    def _flicker(self, inp: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Inputs [B, T, H, W, 3] with flicker on each sequence drawn with probability ``flicker_prob``."""
        rng = _numpy_rng(generator)
        seqs = [apply_flicker(seq, flicker_gains(rng, seq.shape[0], self.cfg.flicker))
                if rng.uniform() < self.cfg.flicker_prob else seq for seq in inp]
        return torch.stack(seqs)

    def _occlude(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Each sequence with probability ``occluder_prob`` gets one occluder in input and target alike; its
        pixels (in frame t or t - 1) leave the warping loss (flow_valid), whose flow does not know it."""
        rng = _numpy_rng(generator)
        inp, tgt, valid = batch["input"].clone(), batch["target"].clone(), batch["flow_valid"].clone()
        b, t_len, height, width, _ = inp.shape
        for i in range(b):
            if rng.uniform() >= self.cfg.occluder_prob:
                continue
            alphas = occluder_alphas(rng, t_len, height, width)
            colour = rng.uniform(0.0, 1.0, size=3) * rng.uniform(0.1, 1.0)  # dark floaters more often
            inp[i], tgt[i] = apply_occluder(inp[i], alphas, colour), apply_occluder(tgt[i], alphas, colour)
            covered = torch.as_tensor(alphas > 0.01)
            valid[i, 1:] &= ~(covered[1:] | covered[:-1]).to(valid.device)
        return {**batch, "input": inp, "target": tgt, "flow_valid": valid}

    def _denoise(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        model = self.model
        x = batch["target"][:, 0].permute(0, 3, 1, 2)  # [B, 3, H, W]
        with torch.no_grad():
            z0 = model.encode(x)
        b = z0.shape[0]
        t = torch.randint(0, DIFFUSION_STEPS, (b,), generator=generator)
        ab = _alpha_bar(t).to(z0.device, z0.dtype)[:, None, None, None]
        eps = torch.randn(z0.shape, generator=generator).to(z0.device, z0.dtype)
        zt = ab.sqrt() * z0 + (1 - ab).sqrt() * eps
        mcfg = model.config
        cond = z0.new_zeros(b, mcfg.cond_channels, *z0.shape[-2:]) if mcfg.cond_channels else None  # "absent" mask/depth
        pred = model.backbone(zt, cond, None, None, timestep=t.to(z0.device))
        loss = l2_loss(pred.float(), z0.float())
        return {"denoise": loss, "total": loss}


# -- evaluation ---------------------------------------------------------------------------------------------
def eval_indices(n_items: int, limit: int) -> list[int]:
    """Up to ``limit`` evenly spaced item indices in [0, n_items) (all of them if fewer)."""
    if limit <= 0 or n_items == 0:
        return []
    if limit >= n_items:
        return list(range(n_items))
    return sorted({round(float(x)) for x in np.linspace(0, n_items - 1, limit)})


@torch.no_grad()
def evaluate(model: Enhancer, dataset: ShardDataset, items: int = 60, device: str | torch.device = "cpu",
             maskless_streams: Sequence[str] = TARGET_DERIVED_MASK_STREAMS,
             depthless_streams: Sequence[str] = DEPTHLESS_STREAMS) -> dict[str, Any]:
    """Mean PSNR (dB, per-frame values averaged per item, then over items) of output vs target and of input vs
    target on up to ``items`` evenly spaced holdout items; sequences run in order with cached context (as the
    Harmonizer does), depth given (except on ``depthless_streams``), and the mask (on items of ``maskless_streams`` their asset mask, if any,
    :func:`~simharmony.data.shards.batch_model_mask`). ``per_stream`` holds
    the same two means per stream."""
    from simharmony.metrics import psnr

    model.eval()
    rows: list[tuple[str, float, float]] = []
    for i in eval_indices(len(dataset), items):
        it = dataset[i]
        inp = it["input"].permute(0, 3, 1, 2).to(device)
        mask, given = batch_model_mask(it, maskless_streams)
        give_mask = model.config.use_mask and bool(given)
        give_depth = model.config.use_depth and it["stream"] not in depthless_streams
        give_hint = getattr(model.config, "use_shadow_hint", False) and bool(it["has_shadow_hint"])
        ctx: list[torch.Tensor] = []
        outs = []
        for t in range(inp.shape[0]):
            out, z = model(inp[t : t + 1], ctx[: model.context_frames] or None,
                           mask=mask[t][None, None].to(device) if give_mask else None,
                           depth=it["depth"][t][None, None].to(device) if give_depth else None,
                           shadow_hint=it["shadow_hint"][t][None, None].to(device) if give_hint else None)
            outs.append(out[0].permute(1, 2, 0).float().cpu())
            ctx.insert(0, z)
        tgt = it["target"]
        po = np.asarray(psnr(torch.stack(outs), tgt, reduction="none"))
        pi = np.asarray(psnr(it["input"], tgt, reduction="none"))
        # identical frames: cap inf at 100 dB
        rows.append((it["stream"], float(np.mean(np.minimum(po, 100.0))), float(np.mean(np.minimum(pi, 100.0)))))
    if not rows:
        return {}
    per_stream = {
        s: {"psnr_out": float(np.mean([o for r, o, _ in rows if r == s])),
            "psnr_in": float(np.mean([i for r, _, i in rows if r == s]))}
        for s in sorted({r for r, _, _ in rows})
    }
    return {"psnr_out": float(np.mean([o for _, o, _ in rows])), "psnr_in": float(np.mean([i for _, _, i in rows])),
            "items": len(rows), "per_stream": per_stream}


# -- the loop -----------------------------------------------------------------------------------------------
def _build_model(cfg: TrainConfig) -> Enhancer:
    if cfg.init_model:
        init = Enhancer.from_pretrained(cfg.init_model)
        if not cfg.init_model_overrides:
            return init
        return with_added_modules(init, cfg.init_model_overrides, cfg.seed)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run
    return Enhancer(cfg.model)


def with_added_modules(init: Enhancer, overrides: dict[str, Any], seed: int = 0) -> Enhancer:
    """``init`` rebuilt with config fields ``overrides`` that keep its weights (they add modules or change
    none): every weight of ``init`` is kept, added modules start from their (zero-initialised) defaults.
    ConfigError otherwise."""
    import dataclasses

    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(init.config)})
    if unknown:
        raise ConfigError(f"init_model_overrides: {type(init.config).__name__} has no fields {unknown}")
    torch.manual_seed(seed)
    model = type(init)(dataclasses.replace(init.config, **overrides))
    try:
        missing, unexpected = model.load_state_dict(init.state_dict(), strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ConfigError(f"init_model_overrides {overrides} change existing weights, not only add modules: {e}") from e
    if unexpected:
        raise ConfigError(f"init_model_overrides {overrides} remove weights of the initial model: {unexpected[:5]}")
    log.info("init_model_overrides %s: %d new tensors start fresh (%s ...)", overrides, len(missing), missing[:3])
    return model


def freeze_except(model: nn.Module, prefixes: list[str]) -> None:
    """Train only the parameters whose names start with one of ``prefixes`` ([] = leave all as they are).
    ConfigError when a prefix names no trainable parameter (a typo would otherwise train nothing)."""
    if not prefixes:
        return
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    unmatched = [pre for pre in prefixes if not any(n.startswith(pre) for n in names)]
    if unmatched:
        raise ConfigError(f"trainable: no trainable parameter starts with {unmatched} (e.g. {names[:3]})")
    for name, p in model.named_parameters():
        if not any(name.startswith(pre) for pre in prefixes):
            p.requires_grad_(False)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and not name.endswith(".age") else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _open_datasets(cfg: TrainConfig) -> tuple[ShardDataset | ConcatShardDataset, dict[str, float], ShardDataset | None]:
    ds = open_datasets(cfg.data, folder_streams=cfg.data_streams)
    present = sorted(ds.streams_of(ds.records))
    weights = dict(cfg.stream_weights) if cfg.stream_weights else {s: 1.0 for s in present}
    for field_name, names in (("stream_weights", weights), ("identity_streams", cfg.identity_streams)):
        unknown = sorted(set(names) - set(present))
        if unknown:
            raise ConfigError(f"{field_name} name streams {unknown} that are not in {cfg.data} (it has {present})")
    if sum(weights.values()) <= 0:
        raise ConfigError(f"stream_weights {weights} are all 0")
    holdout = ShardDataset(cfg.holdout) if cfg.holdout else None
    return ds, weights, holdout


def train(config: TrainConfig, out_dir: str | os.PathLike, resume: bool = True, progress: bool = True,
          stop_after: int | None = None) -> TrainResult:
    """Train the enhancer as ``config`` says; write checkpoints, metrics and ``out_dir/final``.

    resume: continue from the newest complete checkpoint in ``out_dir/checkpoints`` (False: start over,
    existing checkpoints are replaced as the new run reaches their steps). stop_after: stop once this many
    steps are done (as if killed right after a checkpoint; the schedule is still that of the full run), and
    write no final model unless the run is complete. Under ``torchrun`` every rank calls this.
    """
    cfg = config
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig, got {type(cfg).__name__}")
    started = time.perf_counter()
    device_kind = "cuda" if (cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())) else "cpu"
    dist_info = _setup_dist(device_kind)
    threads = torch.get_num_threads()
    try:
        return _train(cfg, Path(out_dir), resume, progress, stop_after, dist_info, started)
    finally:
        torch.set_num_threads(threads)  # cfg.threads applies to this run only
        if dist_info.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(cfg: TrainConfig, out: Path, resume: bool, progress: bool, stop_after: int | None, d: _Dist, started: float) -> TrainResult:
    device = _resolve_device(cfg.device, d)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    is_main = d.rank == 0
    ds, weights, holdout = _open_datasets(cfg)
    total = cfg.total_steps
    end = total if stop_after is None else min(total, int(stop_after))
    needs_temporal = any(cfg.phase(s) == "temporal" for s in range(total))
    image_sampler = MixingBatchSampler(ds, weights, cfg.batch_size, d.world, sequence_prob=0.0, seed=cfg.seed)
    seq_sampler = None
    if needs_temporal:
        seq_sampler = MixingBatchSampler(ds, weights, cfg.temporal_batch_size, d.world, sequence_prob=1.0,
                                         seq_len=cfg.seq_len or None, seed=cfg.seed + 1)

    model = _build_model(cfg).to(device)
    freeze_except(model, cfg.trainable)
    model.train()
    perceptual = None
    if cfg.perceptual_weight > 0:
        perceptual = PatchPerceptualLoss(build_feature_extractor(cfg.features, cfg.features_seed), cfg.patch_range,
                                         cfg.num_patches, cfg.perceptual_distance).to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema_decay, cfg.ema_warmup).to(device)

    ckpt_root = out / "checkpoints"
    metrics_path = out / "metrics.jsonl"
    start = 0
    if is_main:
        ensure_writable_dir(out)
        clean_stale(ckpt_root)
    _barrier(d)
    ckpt = latest_checkpoint(ckpt_root) if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, ema, optimizer, device)
        start = int(state["step"])
        if state.get("world_size", 1) != d.world:
            log.warning("resuming a %s-process checkpoint with %s processes: batches differ from the original run",
                        state.get("world_size", 1), d.world)
    if is_main:
        save_yaml(out / "train_config.yaml", cfg.to_dict())
        if start > 0:
            truncate_metrics(metrics_path, start)
        elif metrics_path.exists():
            metrics_path.unlink()

    step_module: nn.Module = StepModule(model, perceptual, cfg)
    if d.active:
        from torch.nn.parallel import DistributedDataParallel

        # unused parameters: image batches never touch the past-latent projections of the temporal layers
        step_module = DistributedDataParallel(step_module, device_ids=[device.index] if device.type == "cuda" else None,
                                              find_unused_parameters=True, broadcast_buffers=False)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=_StepBatches(cfg, image_sampler, seq_sampler, start, end, d.rank),
                                         num_workers=cfg.num_workers, collate_fn=_collate)
    autocast = device.type == "cuda" and cfg.bf16
    params = [p for p in model.parameters() if p.requires_grad]
    evals: list[dict[str, Any]] = []
    last: dict[str, float] = {}
    bad_steps = 0
    bar = tqdm(total=end, initial=start, desc="train", unit="step", disable=not (progress and is_main), dynamic_ncols=True)
    step = start
    t_step = time.perf_counter()
    for batch in loader:
        phase = cfg.phase(step)
        gen = torch.Generator().manual_seed(step_seed(cfg.seed, step, d.rank))
        lr = cfg.lr_at(step)
        for g in optimizer.param_groups:
            g["lr"] = lr
        tb = _to_device(batch, device)
        tb.update(stream_flags(batch, cfg, device))
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=autocast):
            losses = step_module(tb, phase, gen)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        if torch.isfinite(gnorm):
            optimizer.step()
            ema.update(model)
            bad_steps = 0
        else:  # skip the update; same decision on every rank (gradients are all-reduced)
            bad_steps += 1
            log.warning("step %d: non-finite gradient norm, update skipped", step)
            if bad_steps >= 10:
                raise NonFiniteError(f"10 steps in a row with non-finite gradients (last step {step}); lower lr or check the data")
        step += 1
        seconds = time.perf_counter() - t_step
        t_step = time.perf_counter()
        if step % cfg.log_every == 0 or step == end:
            vals = _reduce_losses(losses, d)
            last = vals
            if is_main:
                append_metrics(metrics_path, {"step": step, "phase": phase, "loss": vals, "lr": lr,
                                             "grad_norm": float(gnorm), "seconds": round(seconds, 4),
                                             "elapsed": round(time.perf_counter() - started, 2), "skipped": bool(bad_steps)})
            bar.set_postfix({k: f"{v:.4f}" for k, v in vals.items() if k in ("total", "l2", "temporal", "denoise")}, refresh=False)
        bar.update(1)
        if holdout is not None and (step % cfg.eval_every == 0 or step == total):
            if is_main:
                ev = _evaluate_ema(model, ema, holdout, cfg, device)
                ev = {"step": step, "phase": "eval", **ev}
                evals.append(ev)
                append_metrics(metrics_path, ev)
                log.info("step %d: holdout PSNR out %.2f dB, in %.2f dB", step, ev.get("psnr_out", float("nan")), ev.get("psnr_in", float("nan")))
            _barrier(d)
        if step % cfg.checkpoint_every == 0 or step == end:
            if is_main:
                save_checkpoint(ckpt_root, step, model, ema, optimizer, keep=cfg.keep_checkpoints, extra={
                    "seed": cfg.seed, "sampler_epoch": step, "world_size": d.world,
                    "rng": "per step: numpy SeedSequence([seed, step, rank, 0]) for the step generator; sampler epoch = step",
                })
            _barrier(d)
    bar.close()

    final_dir = None
    curve = None
    ema_model = Enhancer(model.config).to(device)
    ema.copy_to(ema_model)
    ema_model.eval()
    if step >= total and is_main:
        final_dir = ema_model.save_pretrained(out / "final")
        curve = plot_loss_curve(metrics_path, out / "loss_curve.png")
    _barrier(d)
    return TrainResult(out_dir=out, final_dir=final_dir, steps=step, start_step=start, last_losses=last, evals=evals,
                       metrics_path=metrics_path, loss_curve=curve, seconds=time.perf_counter() - started,
                       model=model, ema_model=ema_model)


def _evaluate_ema(model: Enhancer, ema: EMA, holdout: ShardDataset, cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    m = Enhancer(model.config).to(device)
    ema.copy_to(m)
    return evaluate(m, holdout, cfg.eval_items, device, cfg.maskless_streams, cfg.depthless_streams)


def _reduce_losses(losses: dict[str, torch.Tensor], d: _Dist) -> dict[str, float]:
    names = sorted(losses)
    vec = torch.stack([losses[k].detach().float() for k in names])
    if d.active:
        import torch.distributed as dist

        dist.all_reduce(vec)
        vec = vec / d.world
    return {k: float(v) for k, v in zip(names, vec.cpu())}


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (lines cut by a kill are skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def plot_loss_curve(metrics_path: str | os.PathLike, png: str | os.PathLike) -> Path | None:
    """Loss curves (log scale, with a running mean) and holdout PSNR from metrics.jsonl to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(metrics_path)
    if not path.is_file():
        return None
    recs = read_metrics(path)
    train_recs = [r for r in recs if r.get("phase") != "eval"]
    evals = [r for r in recs if r.get("phase") == "eval"]
    if not train_recs:
        return None
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(11 if evals else 6.5, 4), squeeze=False)
    ax = axes[0, 0]
    db_ax = None  # losses that go negative (log-MSE in dB, and totals containing it) get a linear axis
    names = sorted({k for r in train_recs for k in r["loss"]})
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
    for name in names:
        pts = [(r["step"], r["loss"][name]) for r in train_recs if name in r["loss"] and math.isfinite(r["loss"][name])]
        if not pts:
            continue
        xs, ys = np.array(pts).T
        target = ax
        if ys.min() <= 0:
            db_ax = db_ax or ax.twinx()
            target = db_ax
        win = max(1, len(ys) // 25)
        smooth = np.convolve(ys, np.ones(win) / win, mode="valid")
        colour = next(colours)
        target.plot(xs[win - 1 :], smooth, label=name, color=colour)
        target.plot(xs, ys, alpha=0.2, color=colour)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("training losses (running mean)")
    handles, labels = ax.get_legend_handles_labels()
    if db_ax is not None:
        db_ax.set_ylabel("log-MSE losses (dB, linear)")
        h2, l2 = db_ax.get_legend_handles_labels()
        handles, labels = handles + h2, labels + [f"{lab} (right axis)" for lab in l2]
    ax.legend(handles, labels, fontsize=8)
    if evals:
        ax = axes[0, 1]
        ax.plot([r["step"] for r in evals], [r["psnr_out"] for r in evals], "o-", label="output")
        ax.plot([r["step"] for r in evals], [r["psnr_in"] for r in evals], "x--", label="input")
        ax.set_xlabel("step")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title("holdout PSNR vs target (EMA weights)")
        ax.legend()
    fig.tight_layout()
    png = Path(png)
    ensure_writable_dir(png.parent)
    from simharmony.utils.io import atomic_path

    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return png


# -- CLI ----------------------------------------------------------------------------------------------------
def _cmd_train(args) -> int:
    cfg = TrainConfig.load(args.config)
    d = cfg.to_dict()
    if args.data:
        d["data"] = args.data[0] if len(args.data) == 1 else args.data
    if args.holdout is not None:
        d["holdout"] = args.holdout
    for item in args.set or []:
        apply_override(d, item)
    cfg = TrainConfig.from_dict(d)
    if args.steps is not None:
        cfg = cfg.with_total_steps(args.steps)
    result = train(cfg, args.out, resume=args.resume, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        ev = result.evals[-1] if result.evals else None
        extra = f"; holdout PSNR {ev['psnr_out']:.2f} dB (input {ev['psnr_in']:.2f} dB)" if ev else ""
        print(f"trained {result.steps} steps in {result.seconds / 60:.1f} min{extra}")
        print(f"final weights (EMA): {result.final_dir}  (Harmonizer.from_pretrained({str(result.final_dir)!r}))")
        if result.loss_curve:
            print(f"loss curve: {result.loss_curve}; metrics: {result.metrics_path}")
    return 0


def apply_override(config: dict[str, Any], item: str) -> None:
    """Apply ``"a.b=value"`` to a nested config dict in place; the value is read as YAML (``safe_load``), so
    ``0.1``, ``[1, 2]``, ``true`` and ``log`` mean what they would in the file. Unknown keys: ConfigError."""
    import yaml

    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects key=value (e.g. perceptual_weight=0.1), got {item!r}")
    node = config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(parts[:i]) or "the config"
            raise ConfigError(f"--set {item!r}: {where} has no key {part!r}")
        if i < len(parts) - 1:
            node = node[part]
    node[parts[-1]] = yaml.safe_load(raw)


def add_cli(subparsers) -> None:
    """Add ``simharmony train`` to an argparse subparsers object."""
    import argparse

    from simharmony.utils.checks import arg_int

    p = subparsers.add_parser("train", help="train the enhancer from a YAML config (resumable; torchrun for data-parallel)")
    p.add_argument("--config", required=True, help="TrainConfig YAML, e.g. configs/train_default.yaml")
    p.add_argument("--out", required=True, help="run folder: checkpoints/, metrics.jsonl, final/, loss_curve.png")
    p.add_argument("--data", nargs="+", default=None, help="dataset folder(s) (overrides the config's data)")
    p.add_argument("--holdout", default=None, help="holdout dataset folder for validation ('' = none)")
    p.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                   help="override a config entry, dotted for nested ones (repeatable): --set model.context_frames=0")
    p.add_argument("--steps", type=arg_int(1), default=None, help="total steps: every phase of the config scaled to fit")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from the newest checkpoint in --out (default) or start over")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)


__all__ = ["StepModule", "TrainResult", "add_cli", "apply_override", "evaluate", "plot_loss_curve", "read_metrics", "step_seed", "train"]
