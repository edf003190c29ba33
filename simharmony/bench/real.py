"""Real-image scenarios of the benchmark (DESIGN.md section 7; the enhancer v8 issue's bars): real images
that no shipped model was trained on, read from ``../shared/realdata`` (:func:`~simharmony.data.real.realdata_dir`)
at run time. Where a folder is missing the scenario reports "not available" and the reason.

- ``real_composites`` (ground truth): region appearance mismatch on held-out real photographs. Each photo
  gets one seeded random ISP (:mod:`simharmony.data.isp`, the ISP stream's ranges) in linear light inside a
  soft mask and is blended back; the untouched photo is the target and the mask is given to the methods
  (it marks the inserted region, as a simulator's mask does). Sources: ``real_object_masks`` (25 photos
  with real object masks, 256x256; eval only) and every 4th frame of the Udacity clip's held-out last 60
  frames at 512x288, with an object-shaped mask (:func:`~simharmony.data.real.object_mask`).
- ``real_clean_video``: the Udacity clip's held-out last 60 frames at 512x288, and the first 20 of them at
  1024x576, no mask, no depth. The output should equal the input: PSNR(output, input) per frame (median and
  worst), VBench flicker score and warping error (DIS flow of the input, :func:`~simharmony.data.real.dis_flow`)
  against the input's own, and the high-frequency energy of output over input (a checkerboard shows there).
- ``real_composites_tsai``: the 30 real cut-and-paste composites of Tsai et al. with their masks; no ground
  truth, so a contact sheet (input | Reinhard | ours | mask) is written for people to look at.

The bars (:func:`real_bars`): on real composites, mean fMSE below the input's and below masked Reinhard's
and better than the input on at least 80 % of photos; on clean video at 512x288, median PSNR(output, input)
>= 40 dB and a flicker score at least the input's; high-frequency ratio <= 1.05 at both sizes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from simharmony.bench.scenarios import Clip
from simharmony.errors import SimHarmonyError

log = logging.getLogger(__name__)

COMPOSITE_SEED = 20261207
CLEAN_SIZES = ((512, 288, 60), (1024, 576, 20))  # (W, H, frames) of the clean-video clips
TSAI_WIDTH = 512


def _read_rgb(path: Path) -> np.ndarray:
    from simharmony.data.real import read_image

    return read_image(path).astype(np.float32) / 255.0


def _read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A mask file (1, 3 or 4 channels, anti-aliased, any background level) -> {0, 1} [H, W] by channel 0 at 127."""
    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None:
        raise SimHarmonyError(f"mask {path} could not be decoded")
    m = m if m.ndim == 2 else m[..., 2 if m.shape[2] >= 3 else 0]  # BGR(A): channel 0 of RGB is index 2
    if m.dtype == np.uint16:
        m = (m // 257).astype(np.uint8)
    if m.shape != shape:
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return (m > 127).astype(np.uint8)


def composite_clips(root: Path) -> tuple[list[Clip], list[str]]:
    """The ``real_composites`` clips (module docstring) and the reasons for sources that are missing."""
    from simharmony.data.real import UDACITY_FRAMES, UDACITY_HOLDOUT_FRAMES, isp_region_mismatch, object_mask
    from simharmony.data.streams import soft_mask

    clips, missing = [], []
    folder = root / "real_object_masks"
    photos = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if not photos:
        missing.append(f"{folder}: not found")
    for i, p in enumerate(photos):
        rng = np.random.default_rng([COMPOSITE_SEED, 0, i])
        photo = _read_rgb(p)
        mask_file = p.with_suffix(".png")
        if not mask_file.is_file():
            missing.append(f"{mask_file}: missing")
            continue
        mask = soft_mask(_read_mask(mask_file, photo.shape[:2]), 1.0)
        comp, _, _ = isp_region_mismatch(photo, mask, rng)
        clips.append(Clip(id=f"objects/{p.stem}", group="real_composites", input=comp[None], target=photo[None],
                          mask=mask[None], model_mask=mask[None]))
    frames_dir = root / "udacity_highway" / "frames"
    frames = sorted(frames_dir.glob("*.jpg"))[UDACITY_FRAMES - UDACITY_HOLDOUT_FRAMES:] if frames_dir.is_dir() else []
    if not frames:
        missing.append(f"{frames_dir}: not found")
    for i, p in enumerate(frames[::4]):
        rng = np.random.default_rng([COMPOSITE_SEED, 1, i])
        photo = cv2.resize(_read_rgb(p), (512, 288), interpolation=cv2.INTER_AREA)
        mask = object_mask(rng, 288, 512, area=(0.03, 0.2))
        comp, _, _ = isp_region_mismatch(photo, mask, rng)
        clips.append(Clip(id=f"driving/{p.stem}", group="real_composites", input=comp[None], target=photo[None],
                          mask=mask[None], model_mask=mask[None]))
    return clips, missing


def clean_video_clips(root: Path) -> tuple[list[Clip], list[str]]:
    """The ``real_clean_video`` clips (one per size in :data:`CLEAN_SIZES`): target = input."""
    from simharmony.data.real import UDACITY_FRAMES, UDACITY_HOLDOUT_FRAMES, dis_flow

    frames_dir = root / "udacity_highway" / "frames"
    files = sorted(frames_dir.glob("*.jpg"))[UDACITY_FRAMES - UDACITY_HOLDOUT_FRAMES:] if frames_dir.is_dir() else []
    if not files:
        return [], [f"{frames_dir}: not found"]
    clips = []
    for w, h, n in CLEAN_SIZES:
        video = np.stack([cv2.resize(_read_rgb(p), (w, h), interpolation=cv2.INTER_AREA) for p in files[:n]])
        flow, valid = dis_flow(video)
        clips.append(Clip(id=f"udacity_holdout@{w}x{h}", group=f"real_clean_video_{w}", input=video, target=video,
                          flow=flow, flow_valid=valid))
    return clips, []


def tsai_clips(root: Path) -> tuple[list[Clip], list[str]]:
    """The ``real_composites_tsai`` clips at width :data:`TSAI_WIDTH` (no target)."""
    folder = root / "real_composites_tsai"
    images = sorted((folder / "image").glob("*")) if (folder / "image").is_dir() else []
    if not images:
        return [], [f"{folder}: not found"]
    clips, missing = [], []
    for p in images:
        masks = sorted((folder / "mask").glob(p.stem + ".*"))
        if not masks:
            missing.append(f"no mask for {p.name}")
            continue
        img = _read_rgb(p)
        h = round(img.shape[0] * TSAI_WIDTH / img.shape[1] / 8) * 8
        img = cv2.resize(img, (TSAI_WIDTH, h), interpolation=cv2.INTER_AREA)
        mask = _read_mask(masks[0], img.shape[:2]).astype(np.float32)
        clips.append(Clip(id=f"tsai/{p.stem}", group="real_composites_tsai", input=img[None], mask=mask[None],
                          model_mask=mask[None]))
    return clips, missing


def _per_frame_psnr(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    from simharmony import metrics as M

    return np.minimum(np.asarray(M.psnr(out, ref, reduction="none"), np.float64), 100.0)


def run_real(methods: list, real_dir: str | Path, out: Path) -> dict[str, Any]:
    """Run every method on the real scenarios read from ``real_dir`` ("" = :func:`~simharmony.data.real.realdata_dir`);
    writes ``real_contact_sheet.png`` and ``real_tsai.png`` into ``out`` (created if missing). Returns
    {scenario: {"available": bool, "reason"?, "methods": {name: figures}, ...}}."""
    from simharmony import metrics as M
    from simharmony.bench.methods import run_method
    from simharmony.data.real import realdata_dir
    from simharmony.utils.io import ensure_writable_dir
    from simharmony.visualize import contact_sheet, difference, save_png, side_by_side, to_uint8

    root = Path(real_dir) if real_dir else realdata_dir()
    out = ensure_writable_dir(out)
    names = [m.name for m in methods]
    results: dict[str, Any] = {}
    ours = next((m for m in methods if m.name == "ours"), None)
    sheet: list[np.ndarray] = []

    clips, missing = composite_clips(root)
    if clips:
        per: dict[str, dict[str, float]] = {n: {} for n in names}
        shown = {c.id for kind in ("objects/", "driving/") for c in [c for c in clips if c.id.startswith(kind)][:3]}
        for clip in clips:
            for m in methods:
                o, _ = run_method(m, clip)
                per[m.name][clip.id] = float(M.fmse(o, clip.target, clip.mask, empty="nan"))
                if m is ours and clip.id in shown:
                    err_in, err_out = (to_uint8(difference(x[0], clip.target[0])) for x in (clip.input, o))
                    sheet.append(side_by_side([to_uint8(clip.input[0]), to_uint8(o[0]), to_uint8(clip.target[0]), err_in, err_out],
                                              [clip.id, "ours", "target", "|input - target| x4", "|ours - target| x4"]))
        inp = np.array(list(per["identity"].values()))
        res = {}
        for n in names:
            v = np.array([per[n][k] for k in per["identity"]])
            res[n] = {"fmse": float(np.nanmean(v)), "fmse_median": float(np.nanmedian(v)),
                      "better_than_input": float(np.mean(v < inp)),
                      "fmse_objects": float(np.nanmean([per[n][k] for k in per[n] if k.startswith("objects/")] or [np.nan])),
                      "fmse_driving": float(np.nanmean([per[n][k] for k in per[n] if k.startswith("driving/")] or [np.nan]))}
        results["real_composites"] = {"available": True, "clips": len(clips), "missing": missing, "methods": res,
                                      "per_clip": per}
    else:
        results["real_composites"] = {"available": False, "reason": "; ".join(missing)}

    clips, missing = clean_video_clips(root)
    for clip in clips:
        res = {}
        ref = {"flicker": float(M.flicker_score(clip.input)),
               "warping_error": float(M.warping_error(clip.input, clip.flow, clip.flow_valid, empty="nan"))}
        for m in methods:
            o, ms = run_method(m, clip)
            p = _per_frame_psnr(o, clip.input)
            res[m.name] = {"psnr_median": float(np.median(p)), "psnr_min": float(np.min(p)),
                           "flicker": float(M.flicker_score(o)),
                           "warping_error": float(M.warping_error(o, clip.flow, clip.flow_valid, empty="nan")),
                           "hf_ratio": float(M.hf_artifact_ratio(o, clip.input)), "ms_per_frame": ms}
            if m is ours:
                t = int(np.argmin(p))
                diff = to_uint8(difference(o[t], clip.input[t], gain=8.0))
                sheet.append(side_by_side([to_uint8(clip.input[t]), to_uint8(o[t]), diff],
                                          [f"clean {clip.input.shape[2]}x{clip.input.shape[1]}, worst t={t}", "ours",
                                           "|ours - input| x8"]))
        results[clip.group] = {"available": True, "frames": clip.num_frames, "input": ref, "methods": res}
    if not clips:
        for w, _, _ in CLEAN_SIZES:
            results[f"real_clean_video_{w}"] = {"available": False, "reason": "; ".join(missing)}

    clips, missing = tsai_clips(root)
    if clips:
        show = [m for m in methods if m.name in ("reinhard_lab", "ours")]
        rows = []
        for clip in clips:
            outs = [run_method(m, clip)[0][0] for m in show]
            panels = [to_uint8(clip.input[0])] + [to_uint8(o) for o in outs] + [to_uint8(np.repeat(clip.mask[0][..., None], 3, -1))]
            rows.append(side_by_side(panels, [clip.id] + [m.name for m in show] + ["mask"]))
        save_png(out / "real_tsai.png", contact_sheet(_same_width(rows), max_rows=len(rows)))
        results["real_composites_tsai"] = {"available": True, "clips": len(clips), "missing": missing, "file": "real_tsai.png"}
    else:
        results["real_composites_tsai"] = {"available": False, "reason": "; ".join(missing)}
    if sheet:
        save_png(out / "real_contact_sheet.png", contact_sheet(_same_width(sheet), max_rows=len(sheet)))
    results["bars"] = real_bars(results)
    return results


def _same_width(rows: list[np.ndarray]) -> list[np.ndarray]:
    """Picture rows of different widths scaled (aspect kept) to the widest one, so they stack."""
    width = max(r.shape[1] for r in rows)
    return [cv2.resize(r, (width, round(r.shape[0] * width / r.shape[1])), interpolation=cv2.INTER_AREA) for r in rows]


def real_bars(results: dict[str, Any], method: str = "ours") -> dict[str, Any]:
    """The v8 issue's real-image bars for ``method`` (module docstring): {bar: {"value", "met"}}."""
    bars: dict[str, Any] = {}
    comp = results.get("real_composites", {})
    if comp.get("available") and method in comp["methods"]:
        r = comp["methods"]
        bars["composites: fMSE below input's"] = {"value": f"{r[method]['fmse']:.1f} vs {r['identity']['fmse']:.1f}",
                                                 "met": r[method]["fmse"] < r["identity"]["fmse"]}
        if "reinhard_lab" in r:
            bars["composites: fMSE below Reinhard's"] = {"value": f"{r[method]['fmse']:.1f} vs {r['reinhard_lab']['fmse']:.1f}",
                                                        "met": r[method]["fmse"] < r["reinhard_lab"]["fmse"]}
        bars["composites: better than input on >= 80 %"] = {"value": f"{100 * r[method]['better_than_input']:.0f} %",
                                                           "met": r[method]["better_than_input"] >= 0.8}
    for w, _, _ in CLEAN_SIZES:
        v = results.get(f"real_clean_video_{w}", {})
        if not (v.get("available") and method in v["methods"]):
            continue
        r = v["methods"][method]
        if w == 512:
            bars["clean video 512: median PSNR(out, in) >= 40 dB"] = {"value": f"{r['psnr_median']:.2f} dB", "met": r["psnr_median"] >= 40}
            bars["clean video 512: flicker score >= input's"] = {"value": f"{r['flicker']:.5f} vs {v['input']['flicker']:.5f}",
                                                               "met": r["flicker"] >= v["input"]["flicker"]}
        bars[f"clean video {w}: HF ratio <= 1.05"] = {"value": f"{r['hf_ratio']:.3f}", "met": r["hf_ratio"] <= 1.05}
    return bars


def real_markdown(results: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """The report's "Real images" section."""
    lines = ["## Real images (never trained on)", ""]
    comp = results.get("real_composites", {})
    if comp.get("available"):
        lines += [(f"Real composites with ground truth ({comp['clips']} held-out photos: ISP region mismatch inside a "
                   "soft mask, mask given): fMSE in the mask (0-255 scale), lower is better."), "",
                  "| method | fMSE mean | fMSE median | objects (25) | driving (15) | better than input |",
                  "|---|---:|---:|---:|---:|---:|"]
        for n, r in comp["methods"].items():
            lines.append(f"| {labels.get(n, n)} | {r['fmse']:.1f} | {r['fmse_median']:.1f} | {r['fmse_objects']:.1f} | "
                         f"{r['fmse_driving']:.1f} | {100 * r['better_than_input']:.0f} % |")
        lines.append("")
    else:
        lines += [f"Real composites: not available ({comp.get('reason', 'not run')}).", ""]
    for w, h, _ in CLEAN_SIZES:
        v = results.get(f"real_clean_video_{w}", {})
        if not v.get("available"):
            lines += [f"Clean real video {w}x{h}: not available ({v.get('reason', 'not run')}).", ""]
            continue
        lines += [(f"Clean real video at {w}x{h} ({v['frames']} held-out Udacity frames, no mask, no depth): the output "
                   f"should equal the input. Input's own flicker score {v['input']['flicker']:.5f}, warping error "
                   f"{1e3 * v['input']['warping_error']:.3f}e-3."), "",
                  "| method | PSNR(out, in) median | worst | flicker score | warping error x1e3 | HF ratio | ms/frame |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for n, r in v["methods"].items():
            lines.append(f"| {labels.get(n, n)} | {r['psnr_median']:.2f} | {r['psnr_min']:.2f} | {r['flicker']:.5f} | "
                         f"{1e3 * r['warping_error']:.3f} | {r['hf_ratio']:.3f} | {r['ms_per_frame']:.0f} |")
        lines.append("")
    tsai = results.get("real_composites_tsai", {})
    if tsai.get("available"):
        lines += [f"Real composites of Tsai et al. (no ground truth, {tsai['clips']} images): ![tsai]({tsai['file']})", ""]
    else:
        lines += [f"Tsai composites: not available ({tsai.get('reason', 'not run')}).", ""]
    if results.get("bars"):
        lines += ["Bars (ours):", "", "| bar | value | met |", "|---|---|---|"]
        lines += [f"| {k} | {b['value']} | {'yes' if b['met'] else '**no**'} |" for k, b in results["bars"].items()]
        lines += ["", "![real contact sheet](real_contact_sheet.png)", ""]
    return lines


__all__ = ["clean_video_clips", "composite_clips", "real_bars", "real_markdown", "run_real", "tsai_clips"]
