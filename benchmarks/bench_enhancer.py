"""Benchmark the enhancer forward on CPU with K cached past frames (the streaming steady state).

Times ``Enhancer.forward(frame, past_kv=...)`` plus ``Enhancer.context_features`` of the new latent under
torch.inference_mode with K=4 cached past frames (what the Harmonizer does after four frames: each past
frame's keys/values are computed once, when it enters the cache), for a fresh model of the given config
(weights do not change the cost). Prints parameter count, thread count and the median over --repeats runs after warm-up.

    python benchmarks/bench_enhancer.py                          # default config, 512x288 and 1024x576
    python benchmarks/bench_enhancer.py --threads 2 --repeats 20
    python benchmarks/bench_enhancer.py --config my_enhancer.yaml --res 512x288 --past 0
    python benchmarks/bench_enhancer.py --harmonizer              # through Harmonizer.enhance (numpy uint8 in/out)
    python benchmarks/bench_enhancer.py --model weights/enhancer --threads 2 --repeats 15   # the shipped weights
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from simharmony.harmonizer import Harmonizer
from simharmony.models import Enhancer, EnhancerConfig


def time_model(model: Enhancer, width: int, height: int, past: int, repeats: int, warmup: int, harmonizer: bool) -> list[float]:
    g = torch.Generator().manual_seed(0)
    frame = torch.rand(1, 3, height, width, generator=g)
    times = []
    with torch.inference_mode():
        if harmonizer:
            h = Harmonizer(model)
            img = (frame[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            for _ in range(past):
                h.enhance(img)
            for i in range(warmup + repeats):
                t0 = time.perf_counter()
                h.enhance(img, cut=past == 0)
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
            return times
        _, z = model(frame)
        cache = [z + 0.01 * k for k in range(past)]
        # the steady state of a stream: past keys/values cached per frame, one projection for the new latent
        feats = [model.context_features(c) for c in cache]
        past_kv = [[f[j] for f in feats] for j in range(len(feats[0]))] if past and feats[0] else None
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            _, z_out = model(frame, None if past_kv else cache, past_kv=past_kv)
            if past_kv:
                model.context_features(z_out)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=None, help="EnhancerConfig YAML (default: EnhancerConfig())")
    ap.add_argument("--model", type=Path, default=None, help="a trained folder (e.g. weights/enhancer) instead of --config")
    ap.add_argument("--res", nargs="+", default=["512x288", "1024x576"], help="WxH sizes")
    ap.add_argument("--past", type=int, default=4, help="cached past latents (K)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--harmonizer", action="store_true", help="time Harmonizer.enhance on uint8 numpy frames")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        model = Enhancer.from_pretrained(args.model).eval()
        cfg = model.config
    else:
        cfg = EnhancerConfig.load(args.config) if args.config else EnhancerConfig()
        torch.manual_seed(0)
        model = Enhancer(cfg).eval()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, params {model.num_parameters():,}, "
          f"codec {cfg.codec} f={cfg.codec_downscale}, channels {list(cfg.channels)}, past {args.past}, "
          f"{'Harmonizer.enhance' if args.harmonizer else 'Enhancer.forward'}")
    for res in args.res:
        w, h = (int(v) for v in res.lower().split("x"))
        times = time_model(model, w, h, args.past, args.repeats, args.warmup, args.harmonizer)
        ms = [t * 1000 for t in times]
        print(f"{w}x{h}: median {statistics.median(ms):.1f} ms/frame (min {min(ms):.1f}, max {max(ms):.1f}, n={len(ms)})")


if __name__ == "__main__":
    main()
