"""Benchmark the parametric curves + shading baseline on CPU: parameter prediction at low resolution and
their application at full resolution, separately and together (the full forward).

Times, under torch.inference_mode on a [1, 3, H, W] frame with a box mask:

- ``predict``: :meth:`ParametricHarmonizer.predict_parameters` (resize to ``lowres`` + the two small CNNs);
- ``apply``: :meth:`ParametricHarmonizer.apply_parameters` (curves + shading upsampling + mask blend);
- ``forward``: both, as ``model(frame, mask=mask)``.

Weights do not change the cost, so a fresh model of the config (or --model DIR) is used. Prints the
parameter count, the thread count and the median (and min) over --repeats runs after --warmup.

    python benchmarks/bench_parametric.py                         # 512x288 and 1024x576, 2 threads
    python benchmarks/bench_parametric.py --threads 1 2 --repeats 50
    python benchmarks/bench_parametric.py --model /path/to/trained --res 256x144
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from simharmony.models.parametric import ParametricConfig, ParametricHarmonizer


def _time(fn, repeats: int, warmup: int) -> list[float]:
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        fn()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000.0)
    return times


def bench(model: ParametricHarmonizer, width: int, height: int, repeats: int, warmup: int) -> dict[str, list[float]]:
    g = torch.Generator().manual_seed(0)
    frame = torch.rand(1, 3, height, width, generator=g)
    mask = torch.zeros(1, 1, height, width)
    mask[..., height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 1.0
    with torch.inference_mode():
        curves, shading = model.predict_parameters(frame, mask)
        return {
            "predict": _time(lambda: model.predict_parameters(frame, mask), repeats, warmup),
            "apply": _time(lambda: model.apply_parameters(frame, curves, shading, mask), repeats, warmup),
            "forward": _time(lambda: model(frame, mask=mask), repeats, warmup),
        }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="trained folder (default: a fresh ParametricConfig())")
    ap.add_argument("--res", nargs="+", default=["512x288", "1024x576"], help="WxH sizes")
    ap.add_argument("--threads", type=int, nargs="+", default=[2], help="torch thread counts to try")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args(argv)

    model = ParametricHarmonizer.from_pretrained(args.model) if args.model else ParametricHarmonizer(ParametricConfig()).eval()
    cfg = model.config
    print(f"ParametricHarmonizer: {model.num_parameters():,} parameters, lowres {cfg.lowres[1]}x{cfg.lowres[0]}, "
          f"{cfg.num_points}-point curves, shading {cfg.shading_size[1]}x{cfg.shading_size[0]}x{cfg.shading_channels}; "
          f"torch {torch.__version__}, CPU")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for res in args.res:
            w, h = (int(v) for v in res.lower().split("x"))
            r = bench(model, w, h, args.repeats, args.warmup)
            parts = "  ".join(f"{k} {statistics.median(v):7.2f} ms (min {min(v):6.2f})" for k, v in r.items())
            print(f"threads {threads}  {w}x{h}:  {parts}   [median of {args.repeats}]")


if __name__ == "__main__":
    main()
