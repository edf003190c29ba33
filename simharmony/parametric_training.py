"""Training and evaluation of the parametric curves + shading baseline (:mod:`simharmony.models.parametric`).

Self-contained on purpose (the enhancer trainer lives in :mod:`simharmony.training`; this one is small):
image batches (T = 1) from a :class:`~simharmony.data.shards.ShardDataset` through a
:class:`~simharmony.data.shards.MixingBatchSampler` with ``sequence_prob=0``; loss
``L2 + l1_weight * L1 + fg_weight * L2 inside the mask`` (the paper's reconstruction term is L1; its
adversarial stream needs a discriminator and unpaired real composites, and is not run here); AdamW with
linear warm-up and cosine decay; gradient clipping; masks dropped per item with ``mask_drop_prob`` (the
model then applies its parameters to the whole frame).

Output folder::

    out_dir/config.yaml, model.safetensors     the final model (ParametricHarmonizer.from_pretrained(out_dir))
    out_dir/train.yaml                          the training config
    out_dir/metrics.jsonl                       one JSON line per ``log_every`` steps
    out_dir/checkpoints/latest.yaml             {step, folder}: written last, so a checkpoint is complete
    out_dir/checkpoints/step-<n>/model.safetensors, optimizer.safetensors
    out_dir/holdout.yaml                        per-stream PSNR / fPSNR when a holdout set is given

Resume (default) restarts from ``latest.yaml`` with the same batches and mask drops as an uninterrupted run
(both are functions of the seed and the step).

CLI: ``simharmony train-parametric --data DIR --out DIR [--steps N]`` (:func:`add_cli`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from simharmony.data.item import TARGET_DERIVED_MASK_STREAMS
from simharmony.data.shards import batch_model_mask
from simharmony.data.registry import stream_names
from simharmony.errors import ConfigError, CorruptFileError, InvalidInputError
from simharmony.models.parametric import ParametricConfig, ParametricHarmonizer, load_state_checked
from simharmony.training.checkpoint import truncate_metrics
from simharmony.training.config import warmup_cosine_lr
from simharmony.utils.config import Config, all_finite, require
from simharmony.utils.io import (
    PathLike,
    ensure_writable_dir,
    load_tensors,
    load_yaml,
    save_tensors,
    save_yaml,
)


@dataclass
class ParametricTrainConfig(Config):
    """Hyper-parameters of :func:`train_parametric` (``stream_weights`` {} = equal weight per stream;
    ``maskless_streams``: streams whose items never give the model their mask, only their asset mask if
    any, as in :class:`~simharmony.training.TrainConfig`)."""

    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    min_lr_fraction: float = 0.1
    l1_weight: float = 1.0
    fg_weight: float = 1.0
    mask_drop_prob: float = 0.3
    maskless_streams: tuple[str, ...] = TARGET_DERIVED_MASK_STREAMS
    grad_clip: float = 1.0
    log_every: int = 20
    checkpoint_every: int = 200
    seed: int = 0
    num_workers: int = 0
    stream_weights: dict[str, float] = field(default_factory=dict)
    model: ParametricConfig = field(default_factory=ParametricConfig)

    def __post_init__(self) -> None:
        o = "ParametricTrainConfig"
        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            require(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, o, f"{name}={getattr(self, name)!r} must be an integer >= 1")
        require(all_finite(self.lr) and self.lr > 0, o, f"lr={self.lr} must be > 0")
        require(all_finite(self.weight_decay, self.l1_weight, self.fg_weight, self.grad_clip)
                and min(self.weight_decay, self.l1_weight, self.fg_weight) >= 0 and self.grad_clip > 0, o,
                "weight_decay, l1_weight, fg_weight must be >= 0 and grad_clip > 0")
        require(all_finite(self.mask_drop_prob) and 0 <= self.mask_drop_prob <= 1, o, f"mask_drop_prob={self.mask_drop_prob} must be in [0, 1]")
        require(all_finite(self.min_lr_fraction) and 0 <= self.min_lr_fraction <= 1, o, "min_lr_fraction must be in [0, 1]")
        self.maskless_streams = stream_names(self.maskless_streams, o, "maskless_streams")
        require(self.warmup >= 0 and self.seed >= 0 and self.num_workers >= 0, o, "warmup, seed and num_workers must be >= 0")


def learning_rate(cfg: ParametricTrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_lr_fraction * lr`` at ``steps``."""
    return warmup_cosine_lr(step, cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr_fraction)


def parametric_loss(out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, cfg: ParametricTrainConfig) -> dict[str, torch.Tensor]:
    """out/target [B, 3, H, W], mask [B, 1, H, W] -> {"loss", "mse", "l1", "fg_mse"} (fg: per-item mean
    inside the mask, items with an empty mask count 0)."""
    diff = out - target
    mse = (diff**2).mean()
    l1 = diff.abs().mean()
    w = mask.sum(dim=(1, 2, 3)) * 3
    fg = ((diff**2) * mask).sum(dim=(1, 2, 3)) / w.clamp_min(1.0)
    fg_mse = fg.mean()
    return {"loss": mse + cfg.l1_weight * l1 + cfg.fg_weight * fg_mse, "mse": mse, "l1": l1, "fg_mse": fg_mse}


# ----------------------------------------------------------------------------------------------------
# checkpoints


def _save_checkpoint(ckpt_dir: Path, step: int, model: ParametricHarmonizer, opt: torch.optim.Optimizer) -> None:
    folder = ckpt_dir / f"step-{step:07d}"
    save_tensors(folder / "model.safetensors", model.state_dict(), metadata={"format": "simharmony-parametric", "version": "1"})
    tensors = {}
    for idx, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            tensors[f"{idx}/{k}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
    save_tensors(folder / "optimizer.safetensors", tensors, metadata={"format": "simharmony-parametric-optimizer"})
    save_yaml(ckpt_dir / "latest.yaml", {"step": step, "folder": folder.name})  # last: marks it complete
    for old in ckpt_dir.glob("step-*"):
        if old.is_dir() and old.name != folder.name:
            shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(ckpt_dir: Path, model: ParametricHarmonizer, opt: torch.optim.Optimizer) -> int:
    rec = load_yaml(ckpt_dir / "latest.yaml")
    if not isinstance(rec, dict) or not isinstance(rec.get("step"), int) or not isinstance(rec.get("folder"), str):
        raise CorruptFileError(f"{ckpt_dir / 'latest.yaml'} is not a checkpoint record (expected step and folder)")
    folder = ckpt_dir / rec["folder"]
    load_state_checked(model, folder / "model.safetensors")
    tensors, meta = load_tensors(folder / "optimizer.safetensors")
    if meta.get("format") != "simharmony-parametric-optimizer":
        raise CorruptFileError(f"{folder / 'optimizer.safetensors'} is not a parametric optimizer state")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = v
    sd = opt.state_dict()
    try:
        opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
    except (ValueError, KeyError, RuntimeError) as e:
        raise CorruptFileError(f"optimizer state in {folder} does not fit the model: {e}") from e
    return int(rec["step"])


# ----------------------------------------------------------------------------------------------------
# training


def _batch_tensors(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Collated image batch (T = 1) -> input [B, 3, H, W], target [B, 3, H, W], mask [B, 1, H, W]."""
    x = batch["input"][:, 0].permute(0, 3, 1, 2).contiguous()
    y = batch["target"][:, 0].permute(0, 3, 1, 2).contiguous()
    m = batch["mask"][:, 0, None].contiguous()
    return x, y, m


def train_parametric(
    data_dir: PathLike,
    out_dir: PathLike,
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    progress: bool = True,
    resume: bool = True,
    config: ParametricTrainConfig | None = None,
    holdout_dir: PathLike | None = None,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """Train a :class:`ParametricHarmonizer` on ``data_dir`` into ``out_dir`` (module docstring).

    ``steps``, ``batch_size``, ``lr``, ``seed`` override ``config``. ``resume`` continues from the latest
    checkpoint of ``out_dir`` (its train.yaml must match, except ``steps``). ``max_seconds`` stops early (a
    checkpoint and the model are written; rerun to continue). ``holdout_dir``: evaluate the final model
    there (:func:`evaluate_parametric`) into ``out_dir/holdout.yaml``. Returns a summary dict.
    """
    from torch.utils.data import DataLoader

    from simharmony.data.shards import MixingBatchSampler, ShardDataset

    cfg = config or ParametricTrainConfig()
    over = {k: v for k, v in {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed}.items() if v is not None}
    if over:
        cfg = ParametricTrainConfig.from_dict({**cfg.to_dict(), **over})
    out = ensure_writable_dir(out_dir)
    ckpt_dir = out / "checkpoints"
    ds = ShardDataset(data_dir)
    if len(ds) == 0:
        raise InvalidInputError(f"dataset {data_dir} has no items")
    weights = cfg.stream_weights or {s: 1.0 for s in sorted(ds.streams_of(ds.records))}

    torch.manual_seed(cfg.seed)
    model = ParametricHarmonizer(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    if resume and (ckpt_dir / "latest.yaml").is_file():
        prev = load_yaml(out / "train.yaml") if (out / "train.yaml").is_file() else None
        mine = {k: v for k, v in cfg.to_dict().items() if k != "steps"}
        if isinstance(prev, dict) and {k: v for k, v in prev.items() if k != "steps"} != mine:
            raise ConfigError(f"{out} holds a run with another training config ({out / 'train.yaml'}); "
                              "use another --out or --no-resume")
        start = _load_checkpoint(ckpt_dir, model, opt)
    save_yaml(out / "train.yaml", cfg.to_dict())
    truncate_metrics(out / "metrics.jsonl", start)

    # the whole key list is a function of the seed, so a resumed run skips exactly the batches it has seen
    sampler = MixingBatchSampler(ds, weights, cfg.batch_size, cfg.steps, sequence_prob=0.0, seed=cfg.seed)
    keys = list(sampler)[start:]
    loader = DataLoader(ds, batch_sampler=keys, num_workers=cfg.num_workers)
    model.train()
    t0, last, step = time.perf_counter(), {}, start
    bar = tqdm(total=cfg.steps, initial=start, desc="train parametric", unit="step", disable=not progress)
    log = open(out / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - closed in finally
    try:
        for batch in loader:
            x, y, m = _batch_tensors(batch)
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            present = (torch.rand(x.shape[0], generator=gen) >= cfg.mask_drop_prob).float()
            shown, given = batch_model_mask(batch, cfg.maskless_streams)  # m stays the loss's region
            present *= given.to(present.dtype)
            for g in opt.param_groups:
                g["lr"] = learning_rate(cfg, step)
            pred, _ = model(x, mask=shown[:, 0, None], present=present)
            losses = parametric_loss(pred, y, m, cfg)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            bar.update(1)
            if not torch.isfinite(losses["loss"]):
                raise InvalidInputError(f"training diverged at step {step} (loss {float(losses['loss'])}); lower --lr")
            if step % cfg.log_every == 0 or step == cfg.steps:
                with torch.no_grad():
                    fg_in = (((x - y) ** 2) * m).sum() / (3 * m.sum()).clamp_min(1.0)
                last = {"step": step, **{k: round(float(v.detach()), 7) for k, v in losses.items()},
                        "fg_mse_input": round(float(fg_in), 7), "grad_norm": round(float(gnorm), 5),
                        "lr": learning_rate(cfg, step - 1), "seconds": round(time.perf_counter() - t0, 2)}
                log.write(json.dumps(last) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{last['loss']:.4g}", fg=f"{last['fg_mse']:.3g}/{last['fg_mse_input']:.3g}")
            if step % cfg.checkpoint_every == 0:
                _save_checkpoint(ckpt_dir, step, model, opt)
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                break
    finally:
        log.close()
        bar.close()
    if step > start:
        _save_checkpoint(ckpt_dir, step, model, opt)
    model.eval()
    model.save_pretrained(out)
    summary: dict[str, Any] = {"out_dir": str(out), "step": step, "steps": cfg.steps, "finished": step >= cfg.steps,
                               "seconds": round(time.perf_counter() - t0, 1), "last": last,
                               "parameters": model.num_parameters()}
    if holdout_dir is not None:
        summary["holdout"] = evaluate_parametric(model, holdout_dir, progress=progress)
        save_yaml(out / "holdout.yaml", summary["holdout"])
    return summary


# ----------------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate_parametric(
    model: ParametricHarmonizer | PathLike, data_dir: PathLike, max_items_per_stream: int | None = None, progress: bool = True,
    maskless_streams: tuple[str, ...] = TARGET_DERIVED_MASK_STREAMS,
) -> dict[str, Any]:
    """Per stream (and "all"): mean PSNR and fPSNR (data range 255, :mod:`simharmony.metrics`) over every
    frame of every item, for the input (identity), the model with the mask (on ``maskless_streams``, whose
    masks are cut out with the target's help, the asset mask if any), and the model without it. Frames with an empty mask
    are left out of fPSNR."""
    from simharmony.data.shards import ShardDataset
    from simharmony.metrics import fpsnr, psnr

    if not isinstance(model, ParametricHarmonizer):
        model = ParametricHarmonizer.from_pretrained(model)
    model.eval()
    ds = ShardDataset(data_dir)
    per: dict[str, dict[str, list[float]]] = {}
    counts: dict[str, int] = {}
    idx = []
    for i, r in enumerate(ds.records):
        if max_items_per_stream is None or counts.get(r["stream"], 0) < max_items_per_stream:
            counts[r["stream"]] = counts.get(r["stream"], 0) + 1
            idx.append(i)
    for i in tqdm(idx, desc="evaluate parametric", unit="item", disable=not progress):
        item = ds[i]
        x = item["input"].permute(0, 3, 1, 2)
        y = item["target"]
        shown, given = batch_model_mask(item, maskless_streams)
        no_mask, _ = model(x)
        with_mask = model(x, mask=shown[:, None])[0] if bool(given) else no_mask
        acc = per.setdefault(item["stream"], {})
        outs = {"input": item["input"], "model": with_mask.permute(0, 2, 3, 1), "model_no_mask": no_mask.permute(0, 2, 3, 1)}
        for name, o in outs.items():
            acc.setdefault(f"psnr_{name}", []).extend(psnr(o, y, reduction="none").tolist())
            acc.setdefault(f"fpsnr_{name}", []).extend(fpsnr(o, y, item["mask"], reduction="none", empty="nan").tolist())
    result: dict[str, Any] = {}
    every: dict[str, list[float]] = {}
    for stream, acc in sorted(per.items()):
        result[stream] = _summ(acc)
        for k, v in acc.items():
            every.setdefault(k, []).extend(v)
    result["all"] = _summ(every)
    return result


def _summ(acc: dict[str, list[float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in acc.items():
        a = np.asarray(v, np.float64)
        a = a[np.isfinite(a)]  # identical frames (inf) and empty masks (nan) are left out
        out[k] = round(float(a.mean()), 3) if a.size else float("nan")
    out["frames"] = len(next(iter(acc.values()))) if acc else 0
    return out


# ----------------------------------------------------------------------------------------------------
# CLI


def _cmd_train(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ParametricTrainConfig.load(args.config) if args.config else ParametricTrainConfig()
    if args.workers is not None:
        cfg = ParametricTrainConfig.from_dict({**cfg.to_dict(), "num_workers": args.workers})
    res = train_parametric(args.data, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                           progress=not args.quiet, resume=not args.no_resume, config=cfg, holdout_dir=args.holdout,
                           max_seconds=args.max_minutes * 60 if args.max_minutes else None)
    state = "finished" if res["finished"] else "stopped early (rerun to resume)"
    print(f"train-parametric: {state} at step {res['step']}/{res['steps']} in {res['seconds']} s; model {args.out}")
    if "holdout" in res:
        for stream, r in res["holdout"].items():
            print(f"  {stream:12s} fPSNR input {r['fpsnr_input']:.2f}  model {r['fpsnr_model']:.2f}  "
                  f"(no mask {r['fpsnr_model_no_mask']:.2f})  PSNR input {r['psnr_input']:.2f}  model {r['psnr_model']:.2f}")
    return 0


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """``simharmony train-parametric --data DIR --out DIR [--steps N]``."""
    from simharmony.utils.checks import arg_float, arg_int

    p = subparsers.add_parser("train-parametric", help="train the parametric curves + shading-map baseline")
    p.add_argument("--data", required=True, help="training dataset folder (e.g. data/default)")
    p.add_argument("--out", required=True, help="output folder (model, checkpoints, metrics.jsonl)")
    p.add_argument("--steps", type=arg_int(1), default=None, help="total optimisation steps (default 2000)")
    p.add_argument("--batch-size", type=arg_int(1), default=None, help="images per batch (default 16)")
    p.add_argument("--lr", type=arg_float(0, exclusive_minimum=True), default=None, help="peak learning rate (default 1e-3)")
    p.add_argument("--seed", type=arg_int(0), default=None)
    p.add_argument("--config", default=None, help="ParametricTrainConfig YAML (e.g. a previous train.yaml)")
    p.add_argument("--holdout", default=None, help="evaluate the final model on this dataset folder")
    p.add_argument("--max-minutes", type=arg_float(0, exclusive_minimum=True), default=None, help="stop (with a checkpoint) after this long")
    p.add_argument("--workers", type=arg_int(0), default=None, help="DataLoader worker processes (default 0)")
    p.add_argument("--threads", type=arg_int(1), default=None, help="torch threads")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if checkpoints exist")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)
    return p


__all__ = ["ParametricTrainConfig", "add_cli", "evaluate_parametric", "learning_rate", "parametric_loss", "train_parametric"]
