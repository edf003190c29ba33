"""Run every method on every scenario, compute the metrics, time the methods, write the report.

Entry point: :func:`run_bench` (``simharmony bench`` calls it). Metric conventions (see
:mod:`simharmony.metrics` for the definitions):

- per frame: PSNR / fPSNR with data range 255, capped at ``psnr_cap_db`` (identical frames would be inf);
  SSIM, MSE and fMSE (0..255 scale); the HF artifact ratio against the target (or the input where no target
  exists); structure preservation against the input (whole frame, and inside the mask where there is one);
- per clip: the mean over its frames; temporal metrics (VBench flicker score on uint8 frames, warping error
  with the data's backward flow and validity) over the clip's frames when it has at least 2;
- per group (a holdout stream, or a scene scenario): the mean over its clips (NaN values, e.g. an empty
  mask, skipped); temporal metrics over its sequence clips only.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import platform
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from simharmony import metrics as M
from simharmony.bench.config import BenchConfig
from simharmony.bench.methods import (
    Method,
    ModelInfo,
    Unavailable,
    _device,
    baseline_method,
    harmonizer_method,
    load_harmonizer,
    parametric_method,
    resolve_ours,
    run_method,
)
from simharmony.bench.real import run_real
from simharmony.bench.report import finite_or_none, write_report
from simharmony.bench.scenarios import Clip, cut_clips, flicker_clips, holdout_clips, make_smoke_holdout, scene_clips
from simharmony.bench.stats import CLASSICAL, INPUT, quality_bar, worst_clips
from simharmony.errors import ConfigError, MissingFileError
from simharmony.paths import REPO_ROOT

log = logging.getLogger(__name__)

PRIMARY = ("ours", "identity")  # the method shown in videos: ours, else the input


# --------------------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------------------


def build_methods(cfg: BenchConfig, extra: dict[str, Method] | None = None) -> tuple[list[Method], list[Unavailable], ModelInfo | None]:
    """Every method of the run (available ones first), the unavailable ones with reasons, and ``ours``' origin.

    Explicitly given model folders that are not saved Enhancers raise MissingFileError (before any work);
    methods that were simply not given are "not available". ``extra`` {name: Method} adds methods (tests).
    """
    device = _device(cfg.device)
    methods = [baseline_method(n) for n in (INPUT, *CLASSICAL)]
    missing: list[Unavailable] = []
    common = {"mask_to_model": cfg.mask_to_model, "depth_to_model": cfg.depth_to_model}
    info = None
    try:
        ours, info = resolve_ours(cfg.model, cfg.untrained_fallback, cfg.untrained_config, device)
    except MissingFileError as e:
        if cfg.model:
            raise
        for name, label in (("ours", "ours (temporal)"), ("ours_per_frame", "ours, context reset every frame"),
                            ("ours_ema", "ours per frame + EMA")):
            missing.append(Unavailable(name, label, str(e), kind="ours"))
        ours = None
    if ours is not None:
        tag = "" if info.trained else " [untrained]"
        methods.append(harmonizer_method("ours", f"ours (temporal){tag}", ours, streaming=True, kind="ours",
                                         source=info.source, **common))
        # same weights, no context: the temporal modules see nothing (not a separately trained model)
        methods.append(harmonizer_method("ours_per_frame", f"ours, context reset every frame{tag}", ours,
                                         streaming=False, kind="ours", source=info.source, **common,
                                         note="same weights as ours with the temporal context reset before every "
                                              "frame; not a separately trained per-frame model"))
        methods.append(harmonizer_method("ours_ema", f"ours per frame + EMA(alpha={cfg.ema_alpha:g}){tag}", ours,
                                         streaming=False, kind="ours", source=info.source, ema_alpha=cfg.ema_alpha,
                                         **common, note="per-frame outputs smoothed by baselines.EmaSmoother"))
    if cfg.per_frame_model:
        h = load_harmonizer(cfg.per_frame_model, device)
        methods.append(harmonizer_method("per_frame_model", "ours w/o temporal modules (trained per-frame)", h,
                                         streaming=False, kind="ablation", source=cfg.per_frame_model, **common))
    else:
        missing.append(Unavailable("per_frame_model", "ours w/o temporal modules (trained per-frame)",
                                   "no --per-frame-model folder given (no separately trained per-frame model)",
                                   kind="ablation"))
    par = parametric_method(cfg.parametric, device)
    (methods if isinstance(par, Method) else missing).append(par)
    for name, folder in cfg.variants.items():
        h = load_harmonizer(folder, device)
        methods.append(harmonizer_method(f"variant:{name}", f"ours {name}", h, streaming=True, kind="ablation",
                                         source=folder, **common))
    for name, m in (extra or {}).items():
        methods.append(dataclasses.replace(m, name=name))
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ConfigError(f"method names must be unique, got {names}")
    return methods, missing, info


# --------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------


def _capped(values: np.ndarray, cap: float) -> np.ndarray:
    v = np.asarray(values, np.float64)
    return np.where(np.isnan(v), np.nan, np.minimum(v, cap))


def _nanmean(values: Iterable[float]) -> float:
    v = np.asarray([x for x in values if x is not None], np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def input_structure(clip: Clip):
    """The clip input's VGG self-similarity, computed once per clip for every method's structure distance
    (None for frames under 16 pixels a side; NotAvailable without the converted VGG16)."""
    return M.vgg_self_similarity(clip.input) if min(clip.input.shape[1:3]) >= 16 else None


def clip_metrics(out: np.ndarray, clip: Clip, cap_db: float, structure: Any = "compute") -> dict[str, float]:
    """Metrics of a method's output frames ``out`` [T, H, W, 3] on ``clip`` (module docstring); ``structure``:
    the clip's :func:`input_structure` when the caller has it (default: computed here)."""
    res: dict[str, float] = {}
    h, w = out.shape[1:3]
    if clip.target is not None:
        res["psnr"] = float(np.mean(_capped(M.psnr(out, clip.target, reduction="none"), cap_db)))
        res["mse"] = float(M.mse(out, clip.target))
        res["ssim"] = float(M.ssim(out, clip.target)) if min(h, w) >= 11 else float("nan")
        if clip.mask is not None:
            fm = M.fmse(out, clip.target, clip.mask, reduction="none", empty="nan")
            with np.errstate(divide="ignore", invalid="ignore"):
                fp = 10.0 * np.log10(255.0**2 / fm)
            res["fmse"] = _nanmean(fm)
            res["fpsnr"] = _nanmean(_capped(fp, cap_db))
        res["hf_ratio"] = float(M.hf_artifact_ratio(out, clip.target))
        if min(h, w) >= 31:  # LPIPS-alex (the lpips package's default) when its converted network is here
            lp = M.lpips_distance(out, clip.target, net="alex")
            if M.is_available(lp):
                res["lpips"] = float(lp)
        fl = M.flip(out, clip.target)  # NVIDIA FLIP when the metrics extra is installed
        if M.is_available(fl):
            res["flip"] = float(fl)
    else:
        res["hf_ratio"] = float(M.hf_artifact_ratio(out, clip.input))
    if isinstance(structure, str):
        structure = input_structure(clip)
    if structure is not None and M.is_available(structure):  # distance to the input: DINO-Struct-Dist's stand-in
        res["vgg_struct_dist"] = float(M.struct_distance(structure, M.vgg_self_similarity(out)))
    if min(h, w) >= 3:
        res["structure"] = float(M.structure_preservation(clip.input, out))
        if clip.target is None and clip.mask is not None:
            vals = []
            for t in range(len(out)):
                if float(clip.mask[t, 1:-1, 1:-1].sum()) > 1e-6:
                    vals.append(float(M.structure_preservation(clip.input[t], out[t], clip.mask[t])))
            res["structure_in_mask"] = _nanmean(vals)
    if len(out) >= 2:
        res.update(temporal_metrics(out, clip))
    return res


def temporal_metrics(frames: np.ndarray, clip: Clip) -> dict[str, float]:
    """Flicker score and (with flow) warping error of ``frames`` [T >= 2, H, W, 3]."""
    res = {"flicker": float(M.flicker_score(frames))}
    if clip.flow is not None:
        res["warping_error"] = float(M.warping_error(frames, clip.flow, clip.flow_valid, empty="nan"))
    return res


# --------------------------------------------------------------------------------------------------
# evaluation of one scenario
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Media:
    """Frames kept for the videos and contact sheet: per group, rows of (input, primary output, third panel);
    ``failures``: per failure case (:func:`failure_cases`), its panels and their titles."""

    rows: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = dataclasses.field(default_factory=dict)
    titles: dict[str, tuple[str, str, str]] = dataclasses.field(default_factory=dict)
    failures: list[tuple[list[np.ndarray], list[str]]] = dataclasses.field(default_factory=list)


def evaluate(clips: Iterable[Clip], total: int, methods: list[Method], cfg: BenchConfig, media: Media,
             desc: str) -> dict[str, Any]:
    """Per group {method: aggregated metrics}, per-clip values and a reference row (the target's temporal metrics)."""
    per_clip: dict[str, dict[str, dict[str, dict[str, float]]]] = {}  # group -> method -> clip id -> metrics
    reference: dict[str, dict[str, dict[str, float]]] = {}  # group -> clip id -> target temporal metrics
    counts: dict[str, dict[str, int]] = {}
    ms: dict[str, dict[str, list[float]]] = {}
    primary = next((m for p in PRIMARY for m in methods if m.name == p), methods[0])
    sets = SetMetrics(cfg.set_metric_frames)
    for clip in tqdm(clips, total=total, desc=desc, unit="clip", disable=not cfg.progress):
        c = counts.setdefault(clip.group, {"clips": 0, "sequences": 0, "frames": 0})
        c["clips"] += 1
        c["sequences"] += int(clip.num_frames > 1)
        c["frames"] += clip.num_frames
        if clip.target is not None and clip.num_frames > 1:
            reference.setdefault(clip.group, {})[clip.id] = temporal_metrics(clip.target, clip)
        keep = len(media.rows.get(clip.group, [])) < cfg.video_max_frames
        structure = input_structure(clip)
        take = sets.take(clip)
        for m in methods:
            out, per_frame_ms = run_method(m, clip)
            sets.add(clip.group, m.name, out[:take])
            metrics = clip_metrics(out, clip, cfg.psnr_cap_db, structure)
            per_clip.setdefault(clip.group, {}).setdefault(m.name, {})[clip.id] = metrics
            ms.setdefault(clip.group, {}).setdefault(m.name, []).append(per_frame_ms)
            if keep and m is primary:
                _keep_rows(media, clip, out, primary)
    groups = {}
    for group, by_method in per_clip.items():
        agg = {name: {**_aggregate(vals), **sets.scores(group, name), "eval_ms_per_frame": float(np.median(ms[group][name]))}
               for name, vals in by_method.items()}
        groups[group] = {
            "counts": counts[group], "methods": agg,
            "reference_target": _aggregate(reference.get(group, {})) if reference.get(group) else {},
            "clips": dict(by_method),
        }
    return groups


class SetMetrics:
    """FID and KID per (group, method): Inception features of the first ``max_frames`` frames of each group's
    targets and of each method's outputs on them, collected clip by clip (only features are kept)."""

    def __init__(self, max_frames: int) -> None:
        self.max_frames = max_frames
        self.available = max_frames > 0 and M.is_available(M.inception_features(np.zeros((1, 8, 8, 3))))
        self.targets: dict[str, list[np.ndarray]] = {}
        self.outputs: dict[tuple[str, str], list[np.ndarray]] = {}

    def take(self, clip: Clip) -> int:
        """How many of ``clip``'s frames enter its group's sets (their targets' features are added here)."""
        if not self.available or clip.target is None:
            return 0
        have = sum(len(f) for f in self.targets.get(clip.group, []))
        n = max(0, min(clip.num_frames, self.max_frames - have))
        if n:
            self.targets.setdefault(clip.group, []).append(M.inception_features(clip.target[:n]))
        return n

    def add(self, group: str, method: str, frames: np.ndarray) -> None:
        if len(frames):
            self.outputs.setdefault((group, method), []).append(M.inception_features(frames))

    def scores(self, group: str, method: str) -> dict[str, float]:
        real, fake = self.targets.get(group), self.outputs.get((group, method))
        if not real or not fake or sum(map(len, real)) < 2:
            return {}
        real, fake = np.concatenate(real), np.concatenate(fake)
        mu_r, mu_f = real.mean(0), fake.mean(0)
        return {"fid": M.frechet_distance(mu_r, np.cov(real, rowvar=False), mu_f, np.cov(fake, rowvar=False)),
                "kid": M.kid_from_features(real, fake), "set_frames": float(len(real))}


def quality_bars(holdout: dict[str, Any], methods: list[Method]) -> dict[str, dict[str, dict[str, Any]]]:
    """{method: {stream: the enhancer issue's quality bar}} for every method that is not the input or a
    classical baseline (:func:`simharmony.bench.stats.quality_bar`, paired over the stream's clips)."""
    bars: dict[str, dict[str, dict[str, Any]]] = {}
    for m in methods:
        if m.name in (INPUT, *CLASSICAL):
            continue
        for stream, group in holdout.items():
            clips = group["clips"]
            if m.name in clips and INPUT in clips and any(c in clips for c in CLASSICAL):
                bars.setdefault(m.name, {})[stream] = quality_bar(clips, m.name).to_dict()
    return bars


def failure_cases(holdout: dict[str, Any], holdout_dir: Path, method: Method | None, cfg: BenchConfig,
                  media: Media) -> dict[str, list[dict[str, Any]]]:
    """Per holdout stream, the ``cfg.failure_cases`` clips where ``method`` (ours) loses the most SSIM
    against the input, worst first (:func:`~simharmony.bench.stats.worst_clips`), each with the frame where
    it loses most; the clips are run again to add one row per case to ``media.failures``: input, output,
    target and both errors magnified 8x."""
    from simharmony.visualize import difference

    if method is None or cfg.failure_cases == 0:
        return {}
    cases = {s: worst_clips(g["clips"], method.name, cfg.failure_cases) for s, g in holdout.items()
             if method.name in g["clips"] and INPUT in g["clips"]}
    wanted = {c["id"]: c for rows in cases.values() for c in rows}
    if not wanted:
        return cases
    _, clips = holdout_clips(holdout_dir, 0, cfg.mask_to_model, cfg.maskless_streams, ids=wanted)
    rows = {}
    for clip in clips:
        out, _ = run_method(method, clip)
        per_frame = M.ssim(out, clip.target, reduction="none") - M.ssim(clip.input, clip.target, reduction="none")
        t = wanted[clip.id]["frame"] = int(np.argmin(per_frame))
        err_in, err_out = (difference(x[t], clip.target[t], gain=8.0) for x in (clip.input, out))
        rows[clip.id] = ([clip.input[t], out[t], clip.target[t], err_in, err_out],
                         [f"{clip.group} {clip.id} t={t}", f"{method.name}: dSSIM {1e4 * wanted[clip.id]['d_ssim']:+.1f}e-4",
                          "target", "|input - target| x8", f"|{method.name} - target| x8"])
    media.failures.extend(rows[c["id"]] for c in wanted.values())  # in the order of the report's table
    return cases


def _aggregate(per_clip: dict[str, dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for v in per_clip.values() for k in v})
    return {k: _nanmean(v.get(k) for v in per_clip.values()) for k in keys}


def _keep_rows(media: Media, clip: Clip, out: np.ndarray, primary: Method) -> None:
    from simharmony.visualize import to_uint8

    rows = media.rows.setdefault(clip.group, [])
    if clip.target is not None:
        third, title = clip.target, "target"
    elif clip.mask is not None:
        third, title = np.repeat(clip.mask[..., None], 3, axis=-1), "mask"
    else:
        third, title = np.zeros_like(clip.input), "-"
    media.titles[clip.group] = ("input", primary.label.split(" [")[0] if primary.name != "identity" else "identity", title)
    for t in range(clip.num_frames):
        rows.append((to_uint8(clip.input[t]), to_uint8(out[t]), to_uint8(third[t])))


# --------------------------------------------------------------------------------------------------
# speed
# --------------------------------------------------------------------------------------------------


def measure_speed(methods: list[Method], cfg: BenchConfig, sample: np.ndarray) -> dict[str, Any]:
    """Median ms/frame of each method at each of ``cfg.speed_sizes`` over ``speed_repeats`` calls in sequence
    (one stream, after ``speed_warmup`` calls), on ``sample`` resized, with a centred box mask and 10 m depth."""
    import cv2
    import torch

    out: dict[str, Any] = {}
    jobs = [(m, s) for s in cfg.speed_sizes for m in methods if m.kind != "reference"]
    for m, (w, h) in tqdm(jobs, desc="speed", unit="case", disable=not cfg.progress):
        frame = np.clip(cv2.resize(sample, (w, h), interpolation=cv2.INTER_AREA), 0.0, 1.0).astype(np.float32)
        mask = np.zeros((h, w), np.float32)
        mask[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = 1.0
        depth = np.full((h, w), 10.0, np.float32)
        cuda = m.device.startswith("cuda")
        m.reset()
        times = []
        for k in range(cfg.speed_warmup + cfg.speed_repeats):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            m(frame, mask, depth)
            if cuda:
                torch.cuda.synchronize()
            if k >= cfg.speed_warmup:
                times.append((time.perf_counter() - t0) * 1e3)
        out.setdefault(m.name, {})[f"{w}x{h}"] = {
            "median_ms": float(np.median(times)), "min_ms": float(np.min(times)), "max_ms": float(np.max(times)),
            "repeats": len(times), "device": m.device,
        }
    return out


# --------------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------------


def machine_info(cfg: BenchConfig) -> dict[str, Any]:
    import cv2
    import torch

    info = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "cv2_threads": cv2.getNumThreads(),
        "device": _device(cfg.device), "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every OS
        info["load_average"] = None
    return info


def git_revision() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    rev = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"revision": rev, "short": rev[:7] if rev else None, "dirty": bool(dirty) if dirty is not None else None}


def _sample_frame(*clip_lists: list[Clip]) -> np.ndarray:
    for clips in clip_lists:
        if clips:
            return clips[0].input[0]
    yy, xx = np.mgrid[0:144, 0:256].astype(np.float32)
    return np.stack([xx / 255.0, yy / 143.0, 0.5 + 0.0 * xx], -1)


def run_bench(cfg: BenchConfig, out_dir: str | Path | None = None, extra_methods: dict[str, Method] | None = None) -> dict[str, Any]:
    """Run the benchmark described by ``cfg`` and write the report folder ``out_dir`` (default
    ``outputs/bench/<preset>``); returns the results dict (also written as ``results.json``).

    Fails early with MissingFileError for a missing holdout folder (full preset), a missing demo scene or an
    explicitly given model folder that is not a saved Enhancer.
    """
    import torch

    threads = torch.get_num_threads()
    try:
        return _run_bench(cfg, out_dir, extra_methods)
    finally:
        torch.set_num_threads(threads)  # the run changes torch's process-wide thread count


def _run_bench(cfg: BenchConfig, out_dir: str | Path | None, extra_methods: dict[str, Method] | None) -> dict[str, Any]:
    import cv2
    import torch

    started = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else Path("outputs") / "bench" / cfg.preset
    default_threads = torch.get_num_threads()
    speed_threads = cfg.threads or default_threads
    cv2.setNumThreads(speed_threads)
    if cfg.eval_threads:
        torch.set_num_threads(cfg.eval_threads)
    if cfg.real_only:
        return _run_real_only(cfg, out, extra_methods, started)
    if not cfg.smoke_data:  # check the data folder before loading models or rendering anything
        from simharmony.bench.scenarios import HOLDOUT_HINT

        if not cfg.holdout_dir or not (Path(cfg.holdout_dir) / "dataset.yaml").is_file():
            raise MissingFileError(f"holdout dataset folder {cfg.holdout_dir!r} not found (no dataset.yaml there); "
                                   f"{HOLDOUT_HINT}")
    methods, missing, model_info = build_methods(cfg, extra_methods)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    holdout_dir = make_smoke_holdout(cfg) if cfg.smoke_data else Path(cfg.holdout_dir)
    timings["smoke_data_s" if cfg.smoke_data else "holdout_open_s"] = time.perf_counter() - t0
    media = Media()
    t0 = time.perf_counter()
    total, clips = holdout_clips(holdout_dir, cfg.max_items_per_stream, cfg.mask_to_model, cfg.maskless_streams)
    holdout = evaluate(clips, total, methods, cfg, media, "holdout")
    bars = quality_bars(holdout, methods)
    failures = failure_cases(holdout, holdout_dir, next((m for m in methods if m.name == "ours"), None), cfg, media)
    timings["holdout_s"] = time.perf_counter() - t0

    novel, insertion, scene_info = [], [], {}
    scenes: dict[str, Any] = {}
    t0 = time.perf_counter()
    flicker = flicker_clips(holdout_dir, cfg)
    scenes.update(evaluate(flicker, len(flicker), methods, cfg, media, "holdout flicker"))
    timings["holdout_flicker_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cuts = cut_clips(holdout_dir, cfg)
    scenes.update(evaluate(cuts, len(cuts), methods, cfg, media, "holdout cuts"))
    timings["holdout_cuts_s"] = time.perf_counter() - t0
    if cfg.num_frames > 0:
        t0 = time.perf_counter()
        novel, insertion, scene_info = scene_clips(cfg)
        timings["scene_render_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        scenes.update(evaluate(novel, len(novel), methods, cfg, media, "novel trajectory"))
        scenes.update(evaluate(insertion, len(insertion), methods, cfg, media, "insertion"))
        timings["scenes_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    torch.set_num_threads(speed_threads)
    try:
        speed = measure_speed(methods, cfg, _sample_frame(novel, insertion))
    finally:
        torch.set_num_threads(default_threads)
    timings["speed_s"] = time.perf_counter() - t0

    real = {}
    if cfg.real:
        t0 = time.perf_counter()
        real = run_real(methods, cfg.real_dir, out)
        timings["real_s"] = time.perf_counter() - t0

    blank = np.zeros((32, 32, 3))
    probes = {"lpips": M.lpips_distance(blank, blank, net="alex"), "flip": M.flip(blank, blank),
              "vgg_struct_dist": M.vgg_struct_distance(blank, blank)}
    fid_probe = M.inception_features(blank)
    if cfg.set_metric_frames == 0:
        fid_probe = M.NotAvailable("fid", "turned off (set_metric_frames: 0)")
    unavailable_metrics = {
        **{name: str(v) for name, v in probes.items() if not M.is_available(v)},
        **({} if M.is_available(fid_probe) else {"fid": str(fid_probe), "kid": str(fid_probe)}),
        "fvd": "not available: no local I3D (FVD) network",
        "dino_struct_dist": str(M.dino_struct_distance(np.zeros((11, 11, 3)), np.zeros((11, 11, 3)))),
    }
    results = {
        "meta": {
            "preset": cfg.preset, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "git": git_revision(), "machine": machine_info(cfg), "threads": speed_threads,
            "eval_threads": cfg.eval_threads or default_threads,
            "config": cfg.to_dict(), "holdout_dir": str(holdout_dir), "smoke_data": cfg.smoke_data,
            "weights": {"ours": dataclasses.asdict(model_info) if model_info else None,
                        "per_frame_model": cfg.per_frame_model or None, "parametric": cfg.parametric or None,
                        "variants": dict(cfg.variants), "scene": cfg.scene_dir},
            "scenes": scene_info, "psnr_cap_db": cfg.psnr_cap_db,
        },
        "methods": {m.name: {"available": True, "label": m.label, "kind": m.kind, "source": m.source, "note": m.note,
                             "device": m.device} for m in methods},
        "unavailable": {u.name: {"available": False, "label": u.label, "kind": u.kind, "reason": u.reason} for u in missing},
        "metrics_not_available": unavailable_metrics,
        "holdout": holdout,
        "quality_bars": bars,
        "failure_cases": failures,
        "scenarios": scenes,
        "speed": speed,
        "real": real,
        "timings_s": timings,
    }
    results["timings_s"]["total_s"] = time.perf_counter() - started
    write_report(results, media, out, cfg)
    return results


def _run_real_only(cfg: BenchConfig, out: Path, extra_methods: dict[str, Method] | None, started: float) -> dict[str, Any]:
    """The ``real`` preset: every method on the real-image scenarios only; writes results.json and report.md."""
    from simharmony.bench.real import real_markdown
    from simharmony.utils.io import write_text_atomic

    methods, missing, model_info = build_methods(cfg, extra_methods)
    real = run_real(methods, cfg.real_dir, out)
    results = {
        "meta": {"preset": cfg.preset, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                 "git": git_revision(), "machine": machine_info(cfg), "config": cfg.to_dict(),
                 "weights": {"ours": dataclasses.asdict(model_info) if model_info else None}},
        "methods": {m.name: {"available": True, "label": m.label} for m in methods},
        "unavailable": {u.name: {"available": False, "label": u.label, "reason": u.reason} for u in missing},
        "holdout": {}, "real": real, "timings_s": {"total_s": time.perf_counter() - started},
    }
    git = results["meta"]["git"]
    dirty = " (uncommitted changes)" if git.get("dirty") else ""
    head = [f"# simharmony benchmark — preset `{cfg.preset}` (real images only)", "",
            f"- revision `{git.get('short') or 'unknown'}`{dirty}, {results['meta']['date']}; "
            f"{results['timings_s']['total_s']:.0f} s", ""]
    labels = {m.name: m.label for m in methods}
    write_text_atomic(out / "results.json", json.dumps(finite_or_none(results), indent=1, allow_nan=False))
    write_text_atomic(out / "report.md", "\n".join(head + real_markdown(real, labels)))
    return results


__all__ = ["Media", "build_methods", "clip_metrics", "evaluate", "finite_or_none", "measure_speed", "run_bench",
           "run_method", "temporal_metrics"]
