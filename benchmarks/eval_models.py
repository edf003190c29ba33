"""Quality of several saved enhancers on the benchmark's own scenarios, without the rest of ``simharmony
bench`` (baselines, variants of the report, speed, videos): quicker when comparing training runs.

Uses the bench's loaders (:func:`~simharmony.bench.scenarios.holdout_clips`, ``flicker_clips``,
``cut_clips``, ``scene_clips``), methods (:func:`~simharmony.bench.methods.harmonizer_method`, run by
:func:`~simharmony.bench.runner.run_method`: masks and depth given, every clip a fresh stream) and metric
(:func:`~simharmony.bench.runner.clip_metrics`); so its figures are the report's figures for the same model.

    python benchmarks/eval_models.py weights/enhancer runs/finetune/final            # clean holdout
    python benchmarks/eval_models.py --flicker 60 --scenes weights/enhancer          # + flicker, demo street
    python benchmarks/eval_models.py identity weights/enhancer                        # "identity" = the input
    python benchmarks/eval_models.py weights/enhancer --holdout data/default --max-items 40 --deadzone 0 0.5 1
    python benchmarks/eval_models.py identity weights/enhancer --sequences-only --context-ablation   # what the context does

Prints per model: holdout PSNR / SSIM per stream (and their mean); with ``--mask-split`` also the mean
squared error per pixel inside and outside the items' masks (where a model helps or harms) and the mean
RGB change inside the masks, made by the model and needed (target - input), averaged over items (a
systematic shift, e.g. darkening every inserted object, shows there); with
``--flicker N`` PSNR and warping error (x1e3) on N flicker-holdout sequences; with ``--scenes`` warping
error, flicker score and PSNR on the novel trajectory and the insertion drive. With ``identity`` among the models,
every other model's PSNR and SSIM minus the input's per stream, with a bootstrap interval over items.
``--context-ablation`` adds, per model, the same weights with the colour anchor removed and with the temporal
context reset before every frame (on sequences the difference is what the anchor and the temporal attention
do); ``--sequences-only`` keeps only the clean holdout's multi-frame items. ``--cuts N``: N seeded pairs
of holdout sequences fed as one stream with no reset between them (the bench's ``holdout_cuts`` clips, a
scene cut the caller did not signal): PSNR on B's frames, and its difference to B run on a fresh stream. ``--anchor-limits G M`` sets
the colour anchor's ``max_log_gain`` / ``max_misfit`` of every model (``EnhancerConfig.anchor_max_*``).
``--shadow-region`` adds, per stream, the mean squared error in the cast-shadow region (:func:`shadow_region`:
the shadow stream's true missing shadow; on re-insertion items the shadow hint's region), and the same for the
input, and on the object's own pixels where the hint says the scene shades it (:func:`shaded_object_region`). ``--hint-ablation`` adds, for models that read shadow hints,
the same weights run without them (what the hint path does over the learned-only path).
``--anchor-stats`` prints what the anchor's fit reads (largest |log gain| over channels, misfit) on the
flicker sequences, the clean sequences and the first frame after each missed cut (how its limits were
chosen, on ``--holdout data/default``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from simharmony import metrics as M
from simharmony.bench.config import get_bench_preset
from simharmony.bench.methods import Method, baseline_method, harmonizer_method, run_method
from simharmony.bench.runner import clip_metrics
from simharmony.bench.scenarios import Clip, cut_clips, flicker_clips, holdout_clips, scene_clips
from simharmony.bench.stats import paired_difference
from simharmony.data.shards import ShardDataset
from simharmony.harmonizer import Harmonizer


def model_method(name: str, h: Harmonizer, streaming: bool = True, hints: bool = True) -> Method:
    """``h`` as the bench runs it: masks, depth and shadow hints given, one stream per clip (``streaming``) or
    reset every frame."""
    return harmonizer_method(name, name, h, streaming=streaming, kind="ours", source=name, mask_to_model=True,
                             depth_to_model=True, hint_to_model=hints)


def shadow_region(clip: Clip) -> np.ndarray | None:
    """[T, H, W] bool, where the inserted object's missing cast shadow is: on items whose mask marks it (the
    shadow stream: mask outside the object's own mask, where target and input differ), that; on other items
    with a shadow hint (re-insertion), where the hint exceeds 0.3 outside the object's mask; else None."""
    if clip.target is None or clip.model_mask is None:  # no object given: no cast shadow
        return None
    own = clip.model_mask < 0.5
    if clip.mask is not None and ((clip.mask > 0.5) & own).any():
        return (clip.mask > 0.5) & own & (np.abs(clip.target - clip.input).max(-1) > 1.5 / 255)
    if clip.shadow_hint is not None:
        return (clip.shadow_hint > 0.3) & own
    return None


def shaded_object_region(clip: Clip) -> np.ndarray | None:
    """[T, H, W] bool, the inserted object's own pixels where its shadow hint exceeds 0.3: where the scene shades
    the object itself (the hint's part on the object, ``shadow_hint(occluders=...)``); None without hint or mask."""
    if clip.target is None or clip.model_mask is None or clip.shadow_hint is None:
        return None
    return (clip.model_mask > 0.5) & (clip.shadow_hint > 0.3)


def run_clip(method: Method, clip: Clip) -> np.ndarray:
    """The clip's frames through a fresh state of ``method`` -> [T, H, W, 3]."""
    return run_method(method, clip)[0]


def from_frame(clip: Clip, t: int) -> Clip:
    """The clip from frame ``t`` on (every per-frame field sliced)."""
    fields = ("input", "target", "mask", "model_mask", "depth", "flow", "flow_valid", "shadow_hint")
    return dataclasses.replace(clip, **{f: None if getattr(clip, f) is None else getattr(clip, f)[t:] for f in fields})


def _set_anchor_limits(h: Harmonizer, limits: list[float] | None) -> None:
    anchor = getattr(h.model.backbone, "colour_anchor", None)
    if limits is not None and anchor is not None:
        anchor.max_log_gain, anchor.max_misfit = limits


def anchor_fits(h: Harmonizer, record: list) -> None:
    """Append (largest |log gain| over channels, misfit) of every frame ``h``'s colour anchor sees to ``record``."""
    from simharmony.models.layers import ColourAnchor

    def hook(module, args, _output):
        z_out, past = args
        if past is not None:
            cur = ColourAnchor.summary(z_out)
            a, b, _, _ = ColourAnchor.fit_drift(cur, past.float())
            record.append((a.log().abs().amax().item(), ColourAnchor.misfit(cur, past.float(), a, b).max().item()))

    h.model.backbone.colour_anchor.register_forward_hook(hook)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="model folders (Enhancer.save_pretrained), or 'identity'")
    p.add_argument("--holdout", default="data/holdout")
    p.add_argument("--no-clean", action="store_true", help="skip the clean holdout (e.g. only --flicker / --scenes)")
    p.add_argument("--flicker", type=int, default=0, help="flicker-holdout sequences (0 = skip)")
    p.add_argument("--scenes", action="store_true", help="also the novel trajectory and insertion drive")
    p.add_argument("--max-items", type=int, default=0, help="at most this many clean items per stream (0 = all)")
    p.add_argument("--deadzone", type=float, nargs="+", default=None,
                   help="evaluate each model with each of these output_deadzone values (in 8-bit levels)")
    p.add_argument("--mask-split", action="store_true", help="also MSE inside / outside the items' masks and the mean colour change in them, per stream")
    p.add_argument("--all-masks", action="store_true",
                   help="give the models every item's mask, also on streams whose masks are cut out with the target's help "
                        "(the benchmark before maskless_streams; for comparison only)")
    p.add_argument("--context-ablation", action="store_true",
                   help="also each model with its colour anchor removed and with its context reset every frame")
    p.add_argument("--sequences-only", action="store_true", help="only the clean holdout's multi-frame items")
    p.add_argument("--cuts", type=int, default=0, help="pairs of holdout sequences fed without a reset between them")
    p.add_argument("--anchor-limits", type=float, nargs=2, default=None, metavar=("MAX_LOG_GAIN", "MAX_MISFIT"),
                   help="the colour anchor's limits for every model (0 = none)")
    p.add_argument("--streams", nargs="+", default=None, help="only these holdout streams (default: all)")
    p.add_argument("--shadow-region", action="store_true", help="also MSE in the true cast-shadow region, per stream")
    p.add_argument("--hint-ablation", action="store_true", help="also each hint-reading model without its hints")
    p.add_argument("--anchor-stats", action="store_true",
                   help="the anchor's fitted log gain and misfit on flicker / clean sequences and after missed cuts")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = get_bench_preset("full", holdout_dir=args.holdout, flicker_sequences=args.flicker, cut_pairs=args.cuts,
                           progress=False, **({"maskless_streams": ()} if args.all_masks else {}))
    models: dict[str, Method] = {}
    anchored: dict[str, Harmonizer] = {}  # the streaming models with a colour anchor (--anchor-stats)
    for m in args.models:
        if m == "identity":
            models[m] = baseline_method("identity")
            continue
        for level in args.deadzone or [None]:
            h = Harmonizer.from_pretrained(m)
            _set_anchor_limits(h, args.anchor_limits)
            if level is not None:  # an inference-time field (validated by the config), read at every call
                h.model.config = dataclasses.replace(h.model.config, output_deadzone=level / 255)
            name = m if level is None else f"{m} (deadzone {level:g}/255)"
            models[name] = model_method(name, h)
            if args.hint_ablation and h.reads_shadow_hint:
                models[f"{name} (no shadow hint)"] = model_method(f"{name} (no hint)", h, hints=False)
            if getattr(h.model.backbone, "colour_anchor", None) is not None:
                anchored[name] = h
            if args.context_ablation:
                models[f"{name} (context reset every frame)"] = model_method(f"{name} (reset)", h, streaming=False)
                if name in anchored:
                    no_anchor = Harmonizer.from_pretrained(m)  # (no limits to set: no anchor)
                    no_anchor.model.config = h.model.config
                    no_anchor.model.backbone.colour_anchor = None
                    models[f"{name} (colour anchor removed)"] = model_method(f"{name} (no anchor)", no_anchor)

    per_stream: dict[str, dict[str, list]] = {m: defaultdict(list) for m in models}
    # {model: {stream: [squared error in mask, pixels in mask, squared error outside, pixels outside]}}
    split: dict[str, dict[str, np.ndarray]] = {m: defaultdict(lambda: np.zeros(4)) for m in models}
    # {model: {stream: [(mean RGB change made in the mask, change needed) per item]}}
    shifts: dict[str, dict[str, list]] = {m: defaultdict(list) for m in models}
    # {model: {stream: [squared error in the shadow region, its pixels, same for the input]}}
    shade: dict[str, dict[str, np.ndarray]] = {m: defaultdict(lambda: np.zeros(3)) for m in models}
    shade_own: dict[str, dict[str, np.ndarray]] = {m: defaultdict(lambda: np.zeros(3)) for m in models}  # the same,
    # on the object's own pixels the scene shades
    _, clips = holdout_clips(args.holdout, args.max_items, maskless_streams=cfg.maskless_streams) if not args.no_clean else (None, [])
    for clip in clips:
        if (args.sequences_only and clip.num_frames < 2) or (args.streams and clip.group not in args.streams):
            continue
        for name, method in models.items():
            out = run_clip(method, clip)
            r = clip_metrics(out, clip, cfg.psnr_cap_db)
            per_stream[name][clip.group].append((r["psnr"], r["ssim"]))
            if args.mask_split and clip.mask is not None:
                inside = clip.mask > 0.5  # [T, H, W]
                se = ((out.astype(np.float64) - clip.target) ** 2).mean(-1)
                split[name][clip.group] += (se[inside].sum(), inside.sum(), se[~inside].sum(), (~inside).sum())
                inp = clip.input.astype(np.float64)
                shifts[name][clip.group].append(((out - inp)[inside].mean(0), (clip.target - inp)[inside].mean(0)))
            for acc, region_of in ((shade, shadow_region), (shade_own, shaded_object_region)):
                region = region_of(clip) if args.shadow_region else None
                if region is not None and region.any():
                    se_out = ((out.astype(np.float64) - clip.target) ** 2).mean(-1)[region].sum()
                    se_in = ((clip.input.astype(np.float64) - clip.target) ** 2).mean(-1)[region].sum()
                    acc[name][clip.group] += (se_out, region.sum(), se_in)
    flicker = flicker_clips(args.holdout, cfg) if args.flicker else []
    cuts = cut_clips(args.holdout, cfg) if args.cuts else []
    if cuts:  # a cut clip "A|B" is A's frames then B's: B starts after A's frames
        frames = {r["id"]: r["num_frames"] for r in ShardDataset(args.holdout).records}
        cut_at = {c.id: frames[c.id.split("|")[0]] for c in cuts}
    novel, insertion, _ = scene_clips(cfg) if args.scenes else ([], [], {})

    for name, m in models.items():
        streams = per_stream[name]
        print(f"{name}:")
        if streams:
            psnr = {s: np.mean([v[0] for v in streams[s]]) for s in sorted(streams)}
            line = " ".join(f"{s} {psnr[s]:.3f}/{np.mean([v[1] for v in streams[s]]):.5f}" for s in psnr)
            print(f"  holdout {line} mean {np.mean(list(psnr.values())):.3f}")
            if "identity" in per_stream and name != "identity":  # paired over the same items
                ref = per_stream["identity"]
                for k, what, digits, scale in ((0, "PSNR", 3, 1.0), (1, "SSIM x1e4", 1, 1e4)):
                    diffs = [f"{s} " + paired_difference([v[k] for v in streams[s]], [v[k] for v in ref[s]]).text(digits, scale)
                             for s in psnr]
                    print(f"  {what} minus the input's, mean [95% bootstrap interval over items]: {' '.join(diffs)}")
        for s, (se_in, n_in, se_out, n_out) in sorted(split[name].items()):
            made, needed = np.mean(shifts[name][s], axis=0)
            print(f"  {s} MSE in mask {se_in / max(n_in, 1):.4e} outside {se_out / max(n_out, 1):.4e}; mean RGB change "
                  f"in mask made {np.array2string(made, precision=4, sign='+')} needed {np.array2string(needed, precision=4, sign='+')}")
        for s, (se, n, se_in) in sorted(shade[name].items()):
            print(f"  {s} shadow region ({int(n)} px): MSE {se / n:.4e}, input {se_in / n:.4e}, ratio {se / se_in:.3f}")
        for s, (se, n, se_in) in sorted(shade_own[name].items()):
            print(f"  {s} object in the scene's shade (hint > 0.3 on its mask, {int(n)} px): MSE {se / n:.4e}, "
                  f"input {se_in / n:.4e}, ratio {se / se_in:.3f}")
        if flicker:
            ms = [clip_metrics(run_clip(m, c), c, cfg.psnr_cap_db) for c in flicker]
            print(f"  flicker holdout ({len(ms)}): psnr {np.mean([m['psnr'] for m in ms]):.3f} "
                  f"warp {1e3 * np.mean([m['warping_error'] for m in ms]):.4f}e-3")
        if cuts and name != "identity":
            after, fresh = [], []
            for c in cuts:
                b = from_frame(c, cut_at[c.id])
                after.append(M.psnr(run_clip(m, c)[cut_at[c.id]:], b.target, reduction="none"))
                fresh.append(M.psnr(run_clip(m, b), b.target, reduction="none"))
            d = np.array([x[:3] - y[:3] for x, y in zip(after, fresh)])  # [pairs, 3]: B's first frames
            print(f"  missed cut ({len(cuts)} pairs): psnr after the cut {np.mean([x.mean() for x in after]):.3f}, "
                  f"minus a fresh stream on B's frames 0-2: mean {np.array2string(d.mean(0), precision=3)}, "
                  f"worst {np.array2string(d.min(0), precision=2)}")
        if args.anchor_stats and name in anchored:
            record: list = []
            anchor_fits(anchored[name], record)
            seqs = [c for c in holdout_clips(args.holdout, 0, maskless_streams=cfg.maskless_streams)[1] if c.num_frames > 1]
            groups = {}
            for label, group in (("flicker sequences", flicker), ("clean sequences", seqs)):
                record.clear()
                for c in group:
                    run_clip(m, c)
                groups[label] = np.array(record)
            after = []
            for c in cuts:
                record.clear()
                run_clip(m, c)
                after.append(record[cut_at[c.id] - 1])  # frame 0 has no past, so record k is frame k + 1
            groups["first frame after a missed cut"] = np.array(after).reshape(-1, 2)
            for label, v in groups.items():
                if len(v):
                    q = [f"{what} min {x.min():.3f} p1 {np.percentile(x, 1):.3f} p50 {np.median(x):.3f} p99 "
                         f"{np.percentile(x, 99):.3f} max {x.max():.3f}" for what, x in (("|log gain|", v[:, 0]), ("misfit", v[:, 1]))]
                    print(f"  anchor fit on {label} ({len(v)} frames): {'; '.join(q)}")
        for label, group in (("novel trajectory", novel), ("insertion", insertion)):
            for c in group:
                r = clip_metrics(run_clip(m, c), c, cfg.psnr_cap_db)
                psnr_s = f" psnr {r['psnr']:.2f}" if r.get("psnr") is not None and np.isfinite(r["psnr"]) else ""
                print(f"  {label}: warp {1e3 * r['warping_error']:.3f}e-3 flicker {r['flicker']:.4f}{psnr_s}")


if __name__ == "__main__":
    main()
