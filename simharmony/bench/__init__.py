"""``simharmony bench``: one command that evaluates every method on every scenario and writes a report.

    simharmony bench --preset smoke            # CI: tiny data made on the fly, untrained model if none shipped
    simharmony bench --preset full             # data/holdout, demo street at 256x144, real images, shipped weights
    simharmony bench --preset real             # only the real-image scenarios (../shared/realdata)

    from simharmony.bench import get_bench_preset, run_bench
    results = run_bench(get_bench_preset("smoke"), "outputs/bench/smoke")

Modules: :mod:`~simharmony.bench.config` (BenchConfig, presets), :mod:`~simharmony.bench.scenarios` (holdout
streams, flicker holdout, novel trajectory with PBR ground truth, object insertion),
:mod:`~simharmony.bench.methods` (the compared methods behind one interface), :mod:`~simharmony.bench.runner`
(metrics, speed, :func:`run_bench`), :mod:`~simharmony.bench.report` (report.md, results.json, plots, videos).
"""

from __future__ import annotations

import argparse
import time

from simharmony.bench.config import PRESETS, BenchConfig, full_preset, get_bench_preset, smoke_preset
from simharmony.errors import ConfigError


def run_bench(*args, **kwargs):
    """See :func:`simharmony.bench.runner.run_bench` (imported lazily: it pulls in torch and the models)."""
    from simharmony.bench.runner import run_bench as _run

    return _run(*args, **kwargs)


def _parse_variants(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for text in items or []:
        name, sep, folder = text.partition("=")
        if not sep or not name or not folder:
            raise ConfigError(f"--model-variant must look like NAME=DIR (e.g. no_temporal_loss=runs/abl1), got {text!r}")
        if name in out:
            raise ConfigError(f"--model-variant {name!r} given twice")
        out[name] = folder
    return out


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The BenchConfig for parsed ``simharmony bench`` arguments (preset plus overrides)."""
    over: dict = {}
    if args.model:
        over["model"] = args.model
    if args.parametric:
        over["parametric"] = args.parametric
    if args.per_frame_model:
        over["per_frame_model"] = args.per_frame_model
    if args.holdout:
        over.update(holdout_dir=args.holdout, smoke_data=False)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        over["threads"] = args.threads
    if args.max_items is not None:
        over["max_items_per_stream"] = args.max_items
    if args.frames is not None:
        over["num_frames"] = args.frames
    if args.device is not None:
        over["device"] = args.device
    if args.failure_cases is not None:
        over["failure_cases"] = args.failure_cases
    variants = _parse_variants(args.model_variant)
    if variants:
        over["variants"] = variants
    if args.cache_dir:
        over["cache_dir"] = args.cache_dir
    if args.quiet:
        over["progress"] = False
    return get_bench_preset(args.preset, **over)


def _cmd_bench(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    out = args.out or f"outputs/bench/{cfg.preset}"
    t0 = time.perf_counter()
    results = run_bench(cfg, out)
    ours = results["meta"]["weights"]["ours"]
    if ours is None:
        print("bench: ours is NOT AVAILABLE (" + results["unavailable"]["ours"]["reason"] + ")")
    elif not ours["trained"]:
        print("bench: ours is an UNTRAINED Enhancer (no --model and no weights/enhancer): its rows only test the pipeline")
    for bar, b in results.get("real", {}).get("bars", {}).items():
        print(f"bench real: {bar}: {b['value']} ({'met' if b['met'] else 'MISSED'})")
    missing = ", ".join(results["unavailable"]) or "none"
    print(f"bench {cfg.preset}: {len(results['methods'])} methods (not available: {missing}), "
          f"{sum(g['counts']['clips'] for g in results['holdout'].values())} holdout items, "
          f"{time.perf_counter() - t0:.1f} s; report {out}/report.md")
    return 0


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Add ``bench`` to the ``simharmony`` subcommands (``subparsers`` from ``add_subparsers``)."""
    from simharmony.utils.checks import arg_int

    p = subparsers.add_parser("bench", help="evaluate methods on holdout streams, novel trajectory and insertion; report")
    p.add_argument("--preset", default="smoke", help=f"benchmark preset: {', '.join(PRESETS)} (default smoke)")
    p.add_argument("--model", default=None, help="our model: a folder saved by Enhancer.save_pretrained "
                   "(default weights/enhancer; smoke falls back to an untrained Enhancer)")
    p.add_argument("--parametric", default=None, help="folder of the parametric curves+shading baseline")
    p.add_argument("--per-frame-model", default=None, help="folder of a separately trained per-frame model (ablation)")
    p.add_argument("--model-variant", action="append", default=None, metavar="NAME=DIR",
                   help="an ablation model (repeatable); goes into the ablation tables")
    p.add_argument("--holdout", default=None, help="holdout dataset folder (full default data/holdout; "
                   "make it with `simharmony data generate --preset holdout --out data/holdout`)")
    p.add_argument("--out", default=None, help="report folder (default outputs/bench/<preset>)")
    p.add_argument("--threads", type=arg_int(1), default=None, help="torch and OpenCV threads (default: torch's default)")
    p.add_argument("--max-items", type=arg_int(1), default=None, help="at most this many holdout items per stream")
    p.add_argument("--frames", type=arg_int(0), default=None, help="frames of the scene scenarios (0 skips them)")
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"), help="model device (default auto)")
    p.add_argument("--cache-dir", default=None, help="cache of generated smoke data and PBR ground truth "
                   "(default data/cache/bench)")
    p.add_argument("--failure-cases", type=arg_int(0), default=None, metavar="K",
                   help="per holdout stream, show the K items where ours loses the most SSIM (default 3; 0 = off)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_bench)
    return p


__all__ = [
    "PRESETS",
    "BenchConfig",
    "add_cli",
    "config_from_args",
    "full_preset",
    "get_bench_preset",
    "run_bench",
    "smoke_preset",
]
