"""The report folder of a benchmark run: ``report.md``, ``results.json``, plots, videos and a contact sheet.

Layout::

    <out>/report.md               tables shaped like the paper's (see the headings), methods, notes
    <out>/results.json            everything (strict JSON: NaN -> null), incl. revision, date, machine, config
    <out>/plots/psnr_per_stream.png, temporal.png     grouped bar charts (matplotlib if installed, else OpenCV)
    <out>/videos/<scenario>.mp4   input | ours | target (or the inserted-object mask where there is no target)
    <out>/contact_sheet.png       one row per scenario (its middle frame), same panels
    <out>/failure_cases.png       one row per failure case: input | ours | target | both errors x8

Every file is written atomically.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from simharmony.bench.config import BenchConfig
from simharmony.bench.stats import StreamBar
from simharmony.utils.io import atomic_path, ensure_writable_dir, write_text_atomic

NA = "n/a"
STREAM_ORDER = ("isp", "shadow", "rpb", "relight", "reinsert", "novel_view")


def _fmt(v: Any, digits: int = 2, scale: float = 1.0) -> str:
    """A number as text with ``digits`` decimals after multiplying by ``scale``; None / NaN -> "n/a"."""
    if v is None:
        return NA
    if isinstance(v, str):
        return v
    v = float(v) * scale
    if math.isnan(v):
        return NA
    if math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"


def _table_rows(rows_m: list[tuple[str, str, bool]], width: int, cells) -> list[list[str]]:
    """One table row per method: its label then ``cells(name)``, or "<label> — not available" and n/a cells."""
    return [[label, *cells(name)] if ok else [f"{label} — not available"] + [NA] * (width - 1) for name, label, ok in rows_m]


def _table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _streams(results: dict) -> list[str]:
    present = list(results["holdout"])
    return [s for s in STREAM_ORDER if s in present] + sorted(s for s in present if s not in STREAM_ORDER)


def _method_rows(results: dict) -> list[tuple[str, str, bool]]:
    """(name, label, available) for every method, available first in run order."""
    rows = [(n, m["label"], True) for n, m in results["methods"].items()]
    rows += [(n, u["label"], False) for n, u in results["unavailable"].items()]
    return rows


def _get(results: dict, section: str, group: str, method: str, key: str) -> Any:
    try:
        return results[section][group]["methods"][method].get(key)
    except KeyError:
        return None


def _largest_size(results: dict) -> str | None:
    sizes = {s for v in results["speed"].values() for s in v}
    return max(sizes, key=lambda s: int(s.split("x")[0]) * int(s.split("x")[1])) if sizes else None


# --------------------------------------------------------------------------------------------------
# markdown
# --------------------------------------------------------------------------------------------------


def render_markdown(results: dict, files: dict[str, Any]) -> str:
    meta = results["meta"]
    git = meta["git"]
    mach = meta["machine"]
    cap = meta["psnr_cap_db"]
    streams = _streams(results)
    rows_m = _method_rows(results)
    out: list[str] = []
    out.append(f"# simharmony benchmark — preset `{meta['preset']}`\n")
    rev = git.get("short") or "unknown"
    out.append(f"- revision `{rev}`{' (uncommitted changes)' if git.get('dirty') else ''}, {meta['date']}")
    dev = mach["gpu"] if mach["device"] == "cuda" else f"CPU ({mach['cpu_count']} cores, {mach['processor']})"
    out.append(f"- machine: {mach['platform']}; device {mach['device']}: {dev}; torch {mach['torch']}, "
               f"{meta['threads']} torch threads, load average {mach.get('load_average')}")
    w = meta["weights"]["ours"]
    if w is None:
        out.append("- **ours: not available** — " + results["unavailable"]["ours"]["reason"])
    elif not w["trained"]:
        out.append(f"- **ours is an UNTRAINED Enhancer** ({w['parameters']:,} parameters): no `--model` was given and "
                   "`weights/enhancer` does not exist. A fresh Enhancer is the identity (zero-initialised residual), "
                   "so its rows only show that the pipeline runs; they say nothing about the method.")
    else:
        out.append(f"- ours: `{w['source']}` ({w['parameters']:,} parameters)")
    data = "generated on the fly from the tiny streams (smoke preset)" if meta["smoke_data"] else "holdout dataset"
    out.append(f"- holdout data: `{meta['holdout_dir']}` ({data})")
    out.append(f"- total wall time {results['timings_s'].get('total_s', float('nan')):.1f} s")
    out.append("")
    out.append("Conventions: PSNR / fPSNR in dB with data range 255 (iHarmony4), per frame, capped at "
               f"{cap:g} dB, averaged over frames then items; fPSNR / fMSE inside the item's mask; SSIM 11-tap "
               "Gaussian; HF = high-frequency energy ratio vs the target (1 = same, > 1 added artifacts, < 1 "
               "blurrier); structure = correlation of gradient magnitudes with the input (1 = kept); temporal "
               "consistency = VBench flicker score (1 = static); warping error = mean squared difference to the "
               "previous output frame warped by the ground-truth flow, [0, 1] scale, valid pixels only.")
    c = meta["config"]
    maskless = c.get("maskless_streams") or []
    out.append(f"Inputs: methods get each holdout item's mask ({'yes' if c['mask_to_model'] else 'no'}"
               + (f", but on {', '.join(maskless)}, whose masks are cut out with the target's help, only the "
                  "inserted object's own mask where the item has one" if maskless and c['mask_to_model'] else "")
               + "; classical "
               "baselines only recolour the masked foreground and are the identity without a mask) and the models get "
               f"depth ({'yes' if c['depth_to_model'] else 'no'}); every clip starts a new stream (context reset). "
               f"Evaluation ran with {meta.get('eval_threads')} torch thread(s).")
    na = results["metrics_not_available"]
    out.append("LPIPS, FID, FVD, DINO-Struct-Dist: " + "; ".join(f"{k}: {v}" for k, v in na.items()) + ".\n")

    # Table 1: holdout streams
    out.append("## Table 1. Holdout streams (shaped like the paper's Table 2)\n")
    header = ["Method"] + [f"{s} {k}" for s in streams for k in ("PSNR↑", "SSIM↑", "fPSNR↑")]
    rows = _table_rows(rows_m, len(header), lambda name: [
        cell for s in streams for cell in (_fmt(_get(results, "holdout", s, name, "psnr")),
                                           _fmt(_get(results, "holdout", s, name, "ssim"), 4),
                                           _fmt(_get(results, "holdout", s, name, "fpsnr")))])
    out.append(_table(header, rows))
    counts = ", ".join(f"{s}: {results['holdout'][s]['counts']['clips']} items "
                       f"({results['holdout'][s]['counts']['sequences']} sequences)" for s in streams)
    lpips_note = (f"LPIPS: {NA} ({na['lpips']})" if "lpips" in na
                  else "LPIPS-alex per stream: the details table at the end")
    out.append(f"\nItems per stream: {counts}. {lpips_note}.\n")
    out += _quality_bar_section(results, streams)
    out += _failure_section(results, files)

    # Table 2: temporal on holdout sequences
    seq_streams = [s for s in streams if results["holdout"][s]["counts"]["sequences"]]
    out.append("## Table 2. Temporal metrics on holdout sequences\n")
    if seq_streams:
        header = ["Method"] + [f"{s} {k}" for s in seq_streams for k in ("temporal cons.↑", "warp err↓ (x1e3)")]
        rows = _table_rows(rows_m, len(header), lambda name: [
            cell for s in seq_streams for cell in (_fmt(_get(results, "holdout", s, name, "flicker"), 4),
                                                   _fmt(_get(results, "holdout", s, name, "warping_error"), 3, 1e3))])
        ref = ["target (reference)"]
        for s in seq_streams:
            rt = results["holdout"][s]["reference_target"]
            ref += [_fmt(rt.get("flicker"), 4), _fmt(rt.get("warping_error"), 3, 1e3)]
        rows.append(ref)
        out.append(_table(header, rows))
        out.append("")
    else:
        out.append("No sequence items in the holdout data.\n")

    # Table 3: novel trajectory / insertion
    out.append("## Table 3. Novel trajectory (GT) and object insertion (no GT) (shaped like the paper's Table 1)\n")
    sc = results["scenarios"]
    if "novel_trajectory" in sc or "insertion" in sc:
        size = _largest_size(results)
        nt, ins = "novel_trajectory", "insertion"
        header = ["Method", f"speed ms ({size})", "NT PSNR↑", "NT SSIM↑", "NT fPSNR↑", "NT HF", "NT struct.↑",
                  "NT temporal cons.↑", "NT warp err↓ (x1e3)", "Ins struct.↑", "Ins struct. in mask↑", "Ins HF vs input",
                  "Ins temporal cons.↑", "Ins warp err↓ (x1e3)", "NT FID↓ / FVD / DINO"]
        def scenario_cells(name):
            def g(group, key, scale=1.0, digits=2):
                return _fmt(_get(results, "scenarios", group, name, key), digits, scale)

            return [_fmt(results["speed"].get(name, {}).get(size, {}).get("median_ms"), 1),
                    g(nt, "psnr"), g(nt, "ssim", digits=4), g(nt, "fpsnr"), g(nt, "hf_ratio"),
                    g(nt, "structure", digits=4), g(nt, "flicker", digits=4), g(nt, "warping_error", 1e3, 3),
                    g(ins, "structure", digits=4), g(ins, "structure_in_mask", digits=4), g(ins, "hf_ratio"),
                    g(ins, "flicker", digits=4), g(ins, "warping_error", 1e3, 3), f"{g(nt, 'fid', digits=1)} / {NA} / {NA}"]

        rows = _table_rows(rows_m, len(header), scenario_cells)
        rt = sc.get(nt, {}).get("reference_target", {})
        if rt:
            rows.append(["PBR ground truth (reference)", NA, NA, NA, NA, NA, NA, _fmt(rt.get("flicker"), 4),
                         _fmt(rt.get("warping_error"), 3, 1e3)] + [NA] * 6)
        out.append(_table(header, rows))
        si = meta["scenes"]
        n_i, i_i = si.get("novel_trajectory", {}), si.get("insertion", {})
        out.append(f"\nNT: demo street reconstruction rendered along the ego trajectory shifted {n_i.get('shift_m')} m, "
                   f"{n_i.get('frames')} frames at {n_i.get('size')}, ground truth: Mitsuba ({n_i.get('gt_variant')}, "
                   f"{n_i.get('gt_spp')} spp) of the same street (seed {si.get('street_seed')}, default StreetConfig: "
                   f"{si.get('street_is_default_config')}), fPSNR region: {n_i.get('mask')}; methods get no mask. "
                   f"Ins: the scene with its inserted vehicle along the ego trajectory shifted {i_i.get('shift_m')} m, "
                   f"{i_i.get('frames')} frames (vehicle on {100 * i_i.get('inserted_pixel_fraction', 0):.1f}% of "
                   "pixels; methods get its mask); warping error with the render's flow.\n")
    else:
        out.append("Scene scenarios were skipped (num_frames = 0).\n")

    # Table 4: speed
    out.append("## Table 4. Speed (median ms/frame over repeated runs)\n")
    sizes = sorted({s for v in results["speed"].values() for s in v}, key=lambda s: int(s.split("x")[0]))
    header = ["Method"] + [f"{s} median (min-max)" for s in sizes] + ["device"]
    def speed_cells(name):
        sp = results["speed"].get(name, {})
        return [f"{v['median_ms']:.1f} ({v['min_ms']:.1f}-{v['max_ms']:.1f})" if (v := sp.get(s)) else NA
                for s in sizes] + [results["methods"][name]["device"]]

    rows = _table_rows(rows_m, len(header), speed_cells)
    out.append(_table(header, rows))
    reps = next((v["repeats"] for sp in results["speed"].values() for v in sp.values()), 0)
    gpu_note = "GPU figures: none (no GPU in this run)." if mach["device"] != "cuda" else f"GPU: {mach['gpu']}."
    out.append(f"\n{reps} timed calls per case after {meta['config']['speed_warmup']} warm-up calls, one stream "
               f"(temporal context full), {meta['threads']} torch threads, {mach['cv2_threads']} OpenCV threads. "
               f"{gpu_note} Paper: 212 ms/frame at 1024x576 on an H100.\n")

    # Tables 5 and 6: ablations
    out.append("## Table 5. Ablation: temporal components (shaped like the paper's Table 5)\n")
    fl = "holdout_flicker"
    abl = [(n, lab) for n, lab, ok in rows_m if ok and (n in ("ours", "ours_per_frame", "per_frame_model")
                                                        or n.startswith("variant:"))]
    if abl:
        header = ["Model variant", "temporal cons. NT↑", "temporal cons. Ins↑", "warp err NT↓ (x1e3)",
                  "warp err Ins↓ (x1e3)", "holdout temporal cons.↑ (mean over streams)",
                  "holdout warp err↓ (x1e3, mean over streams)", "flicker holdout PSNR↑",
                  "flicker holdout warp err↓ (x1e3)", "missed cuts PSNR↑"]

        def holdout_mean(name, key):
            vals = [_get(results, "holdout", s, name, key) for s in seq_streams]
            vals = [v for v in vals if v is not None and not math.isnan(v)]
            return float(np.mean(vals)) if vals else None

        def warp(name):  # novel trajectory, insertion, holdout mean, flicker holdout
            return (_get(results, "scenarios", "novel_trajectory", name, "warping_error"),
                    _get(results, "scenarios", "insertion", name, "warping_error"), holdout_mean(name, "warping_error"),
                    _get(results, "scenarios", fl, name, "warping_error"))

        rows = []
        for name, label in abl:
            w_nt, w_ins, w_hold, w_fl = warp(name)
            rows.append([label, _fmt(_get(results, "scenarios", "novel_trajectory", name, "flicker"), 4),
                         _fmt(_get(results, "scenarios", "insertion", name, "flicker"), 4), _fmt(w_nt, 3, 1e3),
                         _fmt(w_ins, 3, 1e3), _fmt(holdout_mean(name, "flicker"), 4), _fmt(w_hold, 3, 1e3),
                         _fmt(_get(results, "scenarios", fl, name, "psnr")), _fmt(w_fl, 3, 1e3),
                         _fmt(_get(results, "scenarios", "holdout_cuts", name, "psnr"))])
        if results["scenarios"].get(fl):
            rt = results["scenarios"][fl]["reference_target"]
            rows.append(["target (reference)"] + [NA] * 7 + [_fmt(rt.get("warping_error"), 3, 1e3), NA])
        out.append(_table(header, rows))
        names = {n for n, _ in abl}
        if {"ours", "per_frame_model"} <= names:
            ratios = [f"{what} {a / b:.2f}" for what, a, b in zip(("NT", "Ins", "holdout", "flicker holdout"), warp("ours"),
                                                                    warp("per_frame_model"))
                      if a is not None and b]
            out.append("\nWarping error of ours over the separately trained per-frame model (same recipe, no temporal "
                       f"context; the enhancer issue's bar is <= 0.8): {', '.join(ratios) or 'n/a'}.")
    else:
        out.append("Our model is not available: no ablation rows.")
    if results["scenarios"].get(fl):
        c = results["meta"]["config"]
        out.append(f"\nFlicker holdout: {results['scenarios'][fl]['counts']['sequences']} holdout sequences whose inputs "
                   f"drift per frame (exposure sigma {c['flicker']['ev_sigma']} EV, white balance sigma "
                   f"{c['flicker']['wb_sigma']} log2 per channel, frame 0 clean, seed {c['flicker_seed']}); targets clean.")
    if results["scenarios"].get("holdout_cuts"):
        c = results["meta"]["config"]
        out.append(f"\nMissed cuts: {results['scenarios']['holdout_cuts']['counts']['clips']} pairs of holdout sequences "
                   f"(seed {c['cut_seed']}) each played as one clip, A's frames then B's, with no reset between them: a "
                   "scene cut the caller did not signal. A method that carries a stale context across the cut scores "
                   "below the same weights with the context reset every frame.")
    given = [n for n in results["methods"] if n.startswith("variant:")]
    out.append("\nRows come from what was trained: `ours, context reset every frame` uses the same weights with the "
               "temporal context cleared before every frame (not a retrained model); a separately trained per-frame "
               "model appears only with `--per-frame-model`; other variants only with `--model-variant NAME=DIR`. "
               + (f"Variants given: {', '.join(g[8:] for g in given)}." if given else "No variants were given."))
    if "per_frame_model" in results["unavailable"]:
        out.append(f"Trained per-frame model: not available ({results['unavailable']['per_frame_model']['reason']}).")
    out.append("")

    out.append("## Table 6. Ablation: variants per metric (shaped like the paper's Table 6)\n")
    cols = [(n, lab) for n, lab, ok in rows_m if ok and (n == "ours" or n.startswith("variant:"))]
    if len(cols) > 1:
        metrics_rows = [("holdout PSNR↑ (mean over streams)", "holdout", None, "psnr", 2)]
        metrics_rows += [(f"holdout {s} PSNR↑", "holdout", s, "psnr", 2) for s in streams]
        metrics_rows += [("holdout fPSNR↑ (mean over streams)", "holdout", None, "fpsnr", 2),
                         ("holdout FID↓ (mean over streams)", "holdout", None, "fid", 1),
                         ("NT PSNR↑", "scenarios", "novel_trajectory", "psnr", 2),
                         ("NT temporal cons.↑", "scenarios", "novel_trajectory", "flicker", 4),
                         ("Ins temporal cons.↑", "scenarios", "insertion", "flicker", 4),
                         ("Ins struct.↑", "scenarios", "insertion", "structure", 4)]
        rows = []
        for title, section, group, key, digits in metrics_rows:
            r = [title]
            for name, _ in cols:
                if group is None:
                    vals = [_get(results, section, s, name, key) for s in streams]
                    vals = [v for v in vals if v is not None and not math.isnan(v)]
                    r.append(_fmt(float(np.mean(vals)) if vals else None, digits))
                else:
                    r.append(_fmt(_get(results, section, group, name, key), digits))
            rows.append(r)
        out.append(_table(["Metric"] + [lab for _, lab in cols], rows))
    else:
        out.append("No ablation variants were given (`--model-variant NAME=DIR`, repeatable): nothing to compare. "
                   "FVD column of the paper's table: " + NA + " (no I3D network here).")
    out.append("")

    # details
    out.append("## Holdout details per stream\n")
    header = ["stream", "Method", "PSNR↑", "SSIM↑", "LPIPS↓", "FLIP↓", "FID↓", "KID↓ (x1e3)", "MSE↓", "fMSE↓", "fPSNR↑",
              "HF", "struct.↑", "VGG struct. dist.↓", "eval ms/frame"]
    rows = []
    for s in streams:
        for name, label, ok in rows_m:
            if not ok:
                continue
            def g(k, d=2, s=s, name=name):
                return _fmt(_get(results, "holdout", s, name, k), d)

            kid = _get(results, "holdout", s, name, "kid")
            rows.append([s, label, g("psnr"), g("ssim", 4), g("lpips", 4), g("flip", 4), g("fid", 1),
                         _fmt(None if kid is None else 1e3 * kid, 2), g("mse", 1), g("fmse", 1),
                         g("fpsnr"), g("hf_ratio"), g("structure", 4), g("vgg_struct_dist", 5),
                         g("eval_ms_per_frame", 1)])
    out.append(_table(header, rows, ["l", "l"] + ["r"] * 13))
    out.append("FID / KID: per stream, output frames against target frames (at most `set_metric_frames` of each, "
               "every frame of a sequence counted); small sets bias FID upwards, so compare rows of one stream only.")
    out.append("")

    out.append("## Methods\n")
    for name, m in results["methods"].items():
        note = f" — {m['note']}" if m["note"] else ""
        out.append(f"- `{name}`: {m['label']} (source: {m['source'] or 'built in'}){note}")
    for name, u in results["unavailable"].items():
        out.append(f"- `{name}`: {u['label']} — **not available**: {u['reason']}")
    if results.get("real"):
        from simharmony.bench.real import real_markdown

        out += real_markdown(results["real"], {n: m["label"] for n, m in results["methods"].items()})
    out.append("")
    out.append("## Files\n")
    for k, v in files.items():
        if isinstance(v, list):
            out += [f"- {k}: " + ", ".join(f"[{Path(p).name}]({p})" for p in v)]
        else:
            out.append(f"- {k}: [{Path(v).name}]({v})")
    t = results["timings_s"]
    out.append("\nStage times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()) + "\n")
    return "\n".join(out)


def _failure_section(results: dict, files: dict[str, Any]) -> list[str]:
    """The holdout items where ours loses the most SSIM against the input (``BenchConfig.failure_cases``)."""
    cases = results.get("failure_cases") or {}
    if not cases:
        return []
    out = ["### Failure cases: where ours loses the most SSIM against the input\n"]
    rows = [[s, c["id"], str(c.get("frame", NA)), _fmt(c["d_ssim"], 1, 1e4), _fmt(c["d_psnr"], 3)]
            for s, items in cases.items() for c in items]
    if rows:
        out.append(_table(["stream", "item", "worst frame", "ΔSSIM (x1e-4, item mean)", "ΔPSNR (dB, item mean)"], rows))
        if "failure cases" in files:
            out.append(f"\nRows of [failure_cases.png]({files['failure cases']}): input, ours, target, and the input's "
                       "and ours' absolute error against the target magnified 8x, at the item's worst frame.")
    none = [s for s, items in cases.items() if not items]
    if none:
        out.append(f"\nOurs loses SSIM against the input on no item of: {', '.join(none)}.")
    out.append("")
    return out


def _quality_bar_section(results: dict, streams: list[str]) -> list[str]:
    """The enhancer issue's quality bar: ours per stream in full, every other model as met / missed counts."""
    bars = {name: {s: StreamBar.from_dict(b) for s, b in per_stream.items()}
            for name, per_stream in (results.get("quality_bars") or {}).items()}
    out = ["## Quality bar on the holdout (the enhancer issue's)\n"]
    if not bars:
        return out + ["No model was evaluated against the input and the classical baselines.\n"]
    main = "ours" if "ours" in bars else next(iter(bars))
    conf = next(iter(bars[main].values())).psnr_vs_input.confidence
    out.append(f"`{results['methods'][main]['label']}` against the input and the better classical transfer of "
               f"each stream: mean per-item difference with its {conf:.0%} bootstrap interval over items (`~`: "
               "the interval contains 0, the margin is within item-to-item noise). Bar: PSNR above both, SSIM not "
               "below the input's.\n")
    header = ["stream", "ΔPSNR vs input (dB)", "best classical", "ΔPSNR vs it (dB)", "ΔSSIM vs input (x1e4)", "bar"]
    rows = [[s, b.psnr_vs_input.text(3, mark_noise=True), b.classical, b.psnr_vs_classical.text(2, mark_noise=True),
             b.ssim_vs_input.text(1, 1e4, mark_noise=True), b.verdict] for s in streams if (b := bars[main].get(s))]
    out.append(_table(header, rows, ["l", "r", "l", "r", "r", "l"]))
    others = [n for n in bars if n != main]
    if others:
        out.append("\nOther models (streams where the bar is met, of those evaluated; PSNR part / SSIM part):\n")
        rows = []
        for n in others:
            bs = {s: bars[n][s] for s in streams if s in bars[n]}
            rows.append([results["methods"][n]["label"],
                         f"{sum(b.verdict == 'met' for b in bs.values())} / {len(bs)}",
                         f"{sum(b.psnr_met for b in bs.values())} / {sum(b.ssim_met for b in bs.values())}",
                         ", ".join(s for s, b in bs.items() if b.verdict != "met") or "none"])
        out.append(_table(["Method", "bar met", "PSNR / SSIM part met", "missed on"], rows, ["l", "r", "r", "l"]))
    out.append("")
    return out


# --------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------


def bar_chart(path: Path, title: str, categories: list[str], series: dict[str, list[float]], ylabel: str) -> str:
    """Grouped bar chart PNG (matplotlib when installed, else drawn with OpenCV); returns the backend used."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        _bar_chart_cv2(path, title, categories, series, ylabel)
        return "cv2"
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(categories) * max(1, len(series)) / 3), 4.0), dpi=110)
    n = max(1, len(series))
    width = 0.8 / n
    x = np.arange(len(categories))
    for k, (name, vals) in enumerate(series.items()):
        v = np.array([np.nan if vv is None else vv for vv in vals], dtype=float)
        ax.bar(x + (k - (n - 1) / 2) * width, np.nan_to_num(v, nan=0.0), width, label=name)
    ax.set_xticks(x, categories)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    finite = [vv for vals in series.values() for vv in vals if vv is not None and math.isfinite(vv)]
    if finite:
        lo, hi = min(finite), max(finite)
        ax.set_ylim(max(0.0, lo - 0.1 * (hi - lo + 1e-9) - 1e-3) if lo > 0 else lo, hi + 0.1 * (hi - lo + 1e-9) + 1e-3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return "matplotlib"


_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _bar_chart_cv2(path: Path, title: str, categories: list[str], series: dict[str, list[float]], ylabel: str) -> None:
    import cv2

    from simharmony.visualize import save_png

    W, H, left, bottom, top = max(640, 110 * len(categories)), 420, 60, 60, 40
    legend_h = 16 * len(series)
    img = np.full((H + legend_h, W, 3), 255, np.uint8)
    finite = [v for vals in series.values() for v in vals if v is not None and math.isfinite(v)]
    lo = min(0.0, min(finite)) if finite else 0.0
    hi = max(finite) if finite else 1.0
    hi = hi if hi > lo else lo + 1.0
    plot_h = H - bottom - top
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, f"{title} ({ylabel})", (left, 25), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.line(img, (left, H - bottom), (W - 10, H - bottom), (0, 0, 0), 1)
    group_w = (W - left - 10) / max(1, len(categories))
    n = max(1, len(series))
    for c, cat in enumerate(categories):
        x0 = left + c * group_w
        cv2.putText(img, cat, (int(x0 + 4), H - bottom + 18), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        for k, vals in enumerate(series.values()):
            v = vals[c]
            if v is None or not math.isfinite(v):
                continue
            bw = 0.8 * group_w / n
            xa = int(x0 + 0.1 * group_w + k * bw)
            ya = int(H - bottom - (v - lo) / (hi - lo) * plot_h)
            cv2.rectangle(img, (xa, ya), (int(xa + bw) - 1, H - bottom), _PALETTE[k % len(_PALETTE)][::-1], -1)
    cv2.putText(img, f"{hi:.3g}", (4, top + 4), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, f"{lo:.3g}", (4, H - bottom), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    for k, name in enumerate(series):
        y = H + 12 + 16 * k - 8
        cv2.rectangle(img, (left, y - 8), (left + 12, y + 2), _PALETTE[k % len(_PALETTE)][::-1], -1)
        cv2.putText(img, name, (left + 18, y + 2), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    save_png(path, img[..., ::-1])


# --------------------------------------------------------------------------------------------------
# media
# --------------------------------------------------------------------------------------------------


def _upscale(img: np.ndarray, min_height: int = 144) -> np.ndarray:
    k = max(1, math.ceil(min_height / img.shape[0]))
    return np.repeat(np.repeat(img, k, axis=0), k, axis=1) if k > 1 else img


def write_media(media, out: Path, cfg: BenchConfig) -> dict[str, Any]:
    import cv2

    from simharmony.visualize import contact_sheet, save_png, side_by_side, to_uint8, write_video

    videos, sheet_rows = [], []
    for group, rows in media.rows.items():
        titles = list(media.titles[group])
        frames = [side_by_side([_upscale(a), _upscale(b), _upscale(c)], titles) for a, b, c in rows[: cfg.video_max_frames]]
        videos.append(str(write_video(out / "videos" / f"{group}.mp4", frames, fps=cfg.video_fps)))
        a, b, c = rows[min(len(rows), cfg.video_max_frames) // 2]
        sheet_rows.append(side_by_side([_upscale(a), _upscale(b), _upscale(c)], [f"{group}: {titles[0]}"] + titles[1:]))
    files: dict[str, Any] = {"videos": [str(Path(v).relative_to(out)) for v in videos]}
    if sheet_rows:
        width = max(r.shape[1] for r in sheet_rows)
        sheet_rows = [cv2.resize(r, (width, round(r.shape[0] * width / r.shape[1])), interpolation=cv2.INTER_NEAREST)
                      for r in sheet_rows]
        save_png(out / "contact_sheet.png", contact_sheet(sheet_rows, max_rows=len(sheet_rows)))
        files["contact sheet"] = "contact_sheet.png"
    if media.failures:
        rows = [side_by_side([_upscale(to_uint8(p)) for p in panels], titles) for panels, titles in media.failures]
        save_png(out / "failure_cases.png", contact_sheet(rows, max_rows=len(rows)))
        files["failure cases"] = "failure_cases.png"
    return files


def write_plots(results: dict, out: Path) -> dict[str, Any]:
    streams = _streams(results)
    names = [n for n in results["methods"]]
    labels = {n: results["methods"][n]["label"] for n in names}
    cats = streams + (["novel_trajectory"] if "novel_trajectory" in results["scenarios"] else [])

    def val(group, name, key):
        sec = "holdout" if group in results["holdout"] else "scenarios"
        return _get(results, sec, group, name, key)

    series = {labels[n]: [val(g, n, "psnr") for g in cats] for n in names}
    backend = bar_chart(out / "plots" / "psnr_per_stream.png", "PSNR per holdout stream / novel trajectory", cats,
                        series, "dB")
    tcats = [s for s in streams if results["holdout"][s]["counts"]["sequences"]] + \
        [g for g in ("novel_trajectory", "insertion", "holdout_flicker") if g in results["scenarios"]]
    series = {labels[n]: [val(g, n, "flicker") for g in tcats] for n in names}
    bar_chart(out / "plots" / "temporal.png", "Temporal consistency (VBench flicker score)", tcats, series, "score")
    return {"plots": ["plots/psnr_per_stream.png", "plots/temporal.png"], "plot backend": backend}


def write_report(results: dict, media, out: str | Path, cfg: BenchConfig) -> dict[str, Any]:
    """Write every file of the report folder ``out``; returns {kind: relative path(s)} (also in results.json)."""
    out = ensure_writable_dir(out)
    files: dict[str, Any] = {}
    files.update(write_media(media, out, cfg))
    plots = write_plots(results, out)
    backend = plots.pop("plot backend")
    files.update(plots)
    files["results"] = "results.json"
    results["files"] = dict(files, plot_backend=backend)
    write_text_atomic(out / "results.json", json.dumps(finite_or_none(results), indent=1, allow_nan=False))
    write_text_atomic(out / "report.md", render_markdown(results, files))
    return files


def finite_or_none(x: Any) -> Any:
    """JSON-safe numbers: NaN -> None, +-inf -> "inf" / "-inf" (strict JSON has neither)."""
    if isinstance(x, float):
        if math.isnan(x):
            return None
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
    if isinstance(x, dict):
        return {str(k): finite_or_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite_or_none(v) for v in x]
    if isinstance(x, np.generic):
        return finite_or_none(x.item())
    return x


__all__ = ["bar_chart", "finite_or_none", "render_markdown", "write_media", "write_plots", "write_report"]
