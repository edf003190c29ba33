"""Memory with many stream ids: one frame for each of N distinct streams through one ``Harmonizer``.

A simulator that names a stream per episode, camera and agent can create thousands of ids. The Harmonizer
keeps at most ``max_streams`` contexts (least recently used dropped), so resident memory (RSS, VmRSS from
/proc/self/status) must stay flat however many ids arrive. Prints RSS at the start, every ``--report-every``
streams and at the end, the number of contexts held, and the median time per frame.

    python benchmarks/bench_many_streams.py                               # 10,000 ids, shipped weights, 256x144
    python benchmarks/bench_many_streams.py --streams 3000 --max-streams 100000   # no effective bound (old behaviour)
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


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="enhancer folder or 'default'")
    ap.add_argument("--streams", type=int, default=10_000)
    ap.add_argument("--frames-per-stream", type=int, default=5, help="frames per id (fills its context, K = 4)")
    ap.add_argument("--max-streams", type=int, default=64)
    ap.add_argument("--res", default="256x144", help="WxH")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--report-every", type=int, default=2000)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.res.lower().split("x"))
    rng = np.random.default_rng(0)
    frame = (rng.uniform(0, 255, (h, w, 3))).astype(np.uint8)
    harm = Harmonizer.from_pretrained(args.model, max_streams=args.max_streams)
    harm.enhance(frame, stream="warm-up")
    harm.reset()
    start = rss_mib()
    print(f"{args.streams} stream ids x {args.frames_per_stream} frames at {w}x{h}, max_streams {args.max_streams}, "
          f"{args.threads} threads, torch {torch.__version__}")
    print(f"RSS at start: {start:.0f} MiB")
    times = []
    for i in range(args.streams):
        for _ in range(args.frames_per_stream):
            t0 = time.perf_counter()
            harm.enhance(frame, stream=("episode", i))
            times.append(time.perf_counter() - t0)
        if (i + 1) % args.report_every == 0:
            print(f"  after {i + 1:6d} ids: RSS {rss_mib():.0f} MiB, contexts held {len(harm._streams)}", flush=True)
    end = rss_mib()
    print(f"RSS at end: {end:.0f} MiB ({end - start:+.0f} MiB); contexts held {len(harm._streams)}; "
          f"median {1e3 * statistics.median(times):.1f} ms/frame")


if __name__ == "__main__":
    main()
