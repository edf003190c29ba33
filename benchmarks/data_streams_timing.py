"""Seconds per item of each data stream at the default preset's size (256x144), for the 90-minute bar.

    python benchmarks/data_streams_timing.py [--items 4] [--streams isp shadow ...] [--repeats 1]

Generates ``--items`` items per stream from fresh seeds (one street each for most streams, so the street's
render / reconstruction is amortised over its ``items_per_scene`` items as in real generation) and prints
the median seconds per item over ``--repeats`` runs, the thread count, and the estimate for the default
preset's counts. The reconstruction cache is a fresh temporary folder per run (no reuse across runs).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def main() -> None:
    from simharmony.data.presets import get_preset

    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--streams", nargs="*", default=None)
    args = ap.parse_args()
    preset = get_preset("default")
    print(f"torch threads: {torch.get_num_threads()}")
    per_item = {}
    for name, cfg in preset.stream_configs().items():
        if args.streams and name not in args.streams:
            continue
        from simharmony.data.registry import STREAMS

        times = []
        for r in range(args.repeats):
            with tempfile.TemporaryDirectory() as cache:
                import dataclasses

                if hasattr(cfg, "cache_dir"):
                    cfg = dataclasses.replace(cfg, cache_dir=cache)
                t = time.perf_counter()
                n = sum(1 for _ in STREAMS[name][1](cfg, seed=1000 + r, count=args.items))
                times.append((time.perf_counter() - t) / n)
        per_item[name] = statistics.median(times)
        print(f"{name:<11} {per_item[name]:7.2f} s/item (median of {args.repeats}, {args.items} items each)", flush=True)
    total = 0.0
    for name, s in per_item.items():
        n = preset.streams[name] + get_preset("holdout").streams[name]
        total += n * s
        print(f"{name:<11} {n:5d} items (train + holdout) -> {n * s / 60:6.1f} min")
    print(f"estimated total for the measured streams: {total / 60:.1f} min on this machine")


if __name__ == "__main__":
    main()
