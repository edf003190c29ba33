"""Benchmark one training step of the enhancer on CPU: forward, losses, backward, clip, AdamW, EMA.

Median seconds per step over --repeats (after --warmup) for an image batch (``batch_size`` frames, no
context) and a temporal batch (``temporal_batch_size`` sequences of ``seq_len`` frames with cached
context and the warping loss), at the given resolution, for the model and losses of a training config.
Batches are random tensors of the right shapes (the cost does not depend on the pixels), or real ones
from --data.

    python benchmarks/bench_training_step.py                                   # configs/train_default.yaml, 256x144
    python benchmarks/bench_training_step.py --threads 1 2 --repeats 10
    python benchmarks/bench_training_step.py --config configs/train_tiny.yaml --res 48x32
    python benchmarks/bench_training_step.py --batch-size 4 8 12                # image batch sizes to compare
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from simharmony.models import Enhancer
from simharmony.training import EMA, TrainConfig
from simharmony.training.features import build_feature_extractor
from simharmony.training.losses import PatchPerceptualLoss
from simharmony.training.trainer import StepModule, _param_groups

ROOT = Path(__file__).resolve().parents[1]


def random_batch(b: int, t: int, h: int, w: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    inp = torch.rand(b, t, h, w, 3, generator=g)
    return {
        "input": inp, "target": (inp + 0.05 * torch.randn(b, t, h, w, 3, generator=g)).clamp(0, 1),
        "mask": (torch.rand(b, t, h, w, generator=g) > 0.8).float(), "depth": 5 + 50 * torch.rand(b, t, h, w, generator=g),
        "flow": torch.randn(b, t, h, w, 2, generator=g), "flow_valid": torch.rand(b, t, h, w, generator=g) > 0.1,
    }


def time_steps(cfg: TrainConfig, phase: str, batch: dict[str, torch.Tensor], repeats: int, warmup: int) -> list[float]:
    torch.manual_seed(0)
    model = Enhancer(cfg.model).train()
    perc = PatchPerceptualLoss(build_feature_extractor(cfg.features), cfg.patch_range, cfg.num_patches) if cfg.perceptual_weight > 0 else None
    step = StepModule(model, perc, cfg)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    ema = EMA(model, cfg.ema_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        losses = step(batch, phase, torch.Generator().manual_seed(i))
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        ema.update(model)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "train_default.yaml")
    ap.add_argument("--res", default="256x144", help="WxH")
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--batch-size", type=int, nargs="+", default=None, help="image batch sizes (default: the config's)")
    ap.add_argument("--seq-len", type=int, default=5, help="frames per temporal sequence")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args(argv)
    cfg = TrainConfig.load(args.config)
    w, h = (int(v) for v in args.res.lower().split("x"))
    n_params = sum(p.numel() for p in Enhancer(cfg.model).parameters())
    print(f"config {args.config.name}: {n_params / 1e3:.0f}k parameters, features={cfg.features}, {w}x{h}, "
          f"torch {torch.__version__}, median of {args.repeats} after {args.warmup} warm-up")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for bs in args.batch_size or [cfg.batch_size]:
            t = time_steps(cfg, "image", random_batch(bs, 1, h, w), args.repeats, args.warmup)
            print(f"threads={threads} image    batch {bs:2d}x1 : {statistics.median(t):.3f} s/step "
                  f"({statistics.median(t) / bs * 1e3:.0f} ms/frame)")
        tb = cfg.temporal_batch_size
        t = time_steps(cfg, "temporal", random_batch(tb, args.seq_len, h, w), args.repeats, args.warmup)
        print(f"threads={threads} temporal batch {tb:2d}x{args.seq_len}: {statistics.median(t):.3f} s/step "
              f"({statistics.median(t) / (tb * args.seq_len) * 1e3:.0f} ms/frame)")
        if cfg.denoise_pretrain_steps:
            t = time_steps(cfg, "denoise", random_batch(cfg.batch_size, 1, h, w), args.repeats, args.warmup)
            print(f"threads={threads} denoise  batch {cfg.batch_size:2d}x1 : {statistics.median(t):.3f} s/step")


if __name__ == "__main__":
    main()
