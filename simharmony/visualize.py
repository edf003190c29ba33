"""Pictures of frames and G-buffers: colour maps, side-by-side panels, contact sheets and MP4 videos."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from simharmony.errors import InvalidInputError, ShapeMismatchError
from simharmony.utils.io import PathLike, atomic_path


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] or [H, W] float in [0, 1] (or uint8) -> uint8, gray expanded to 3 channels."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = (np.clip(np.nan_to_num(a.astype(np.float32)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ShapeMismatchError(f"expected an [H, W, 3] or [H, W] image, got shape {a.shape}")
    return a


def colorize_depth(depth: np.ndarray, max_depth: float | None = None) -> np.ndarray:
    """[H, W] z-depth -> [H, W, 3] uint8 (inverse depth, turbo colour map; no-hit pixels black)."""
    d = np.asarray(depth, dtype=np.float32)
    finite = np.isfinite(d) & (d > 0)
    inv = np.zeros_like(d)
    inv[finite] = 1.0 / d[finite]
    lo = 1.0 / max_depth if max_depth else (inv[finite].min() if finite.any() else 0.0)
    hi = inv[finite].max() if finite.any() else 1.0
    norm = np.clip((inv - lo) / max(hi - lo, 1e-9), 0, 1)
    rgb = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1]
    rgb[~finite] = 0
    return rgb


def colorize_flow(flow: np.ndarray, valid: np.ndarray | None = None, max_mag: float | None = None) -> np.ndarray:
    """[H, W, 2] flow in pixels -> [H, W, 3] uint8 (hue = direction, value = magnitude; invalid pixels gray)."""
    f = np.asarray(flow, dtype=np.float32)
    mag, ang = cv2.cartToPolar(f[..., 0], f[..., 1])
    scale = max_mag or max(float(np.percentile(mag, 99)), 1e-6)
    hsv = np.zeros(f.shape[:2] + (3,), np.uint8)
    hsv[..., 0] = (ang * 90 / np.pi).astype(np.uint8)
    hsv[..., 1] = 255
    hsv[..., 2] = (np.clip(mag / scale, 0, 1) * 255).astype(np.uint8)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if valid is not None:
        rgb[~np.asarray(valid, bool)] = 96
    return rgb


def label(image: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in the top-left corner of a copy of a uint8 image."""
    out = image.copy()
    scale = max(0.3, image.shape[0] / 400)
    cv2.putText(out, text, (4, int(14 * scale / 0.35)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (4, int(14 * scale / 0.35)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def difference(a: np.ndarray, b: np.ndarray, gain: float = 4.0) -> np.ndarray:
    """|a - b| x ``gain`` clipped to [0, 1] (float images in [0, 1]): a change made visible."""
    return np.clip(gain * np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)), 0.0, 1.0)


def shadow_panel(hint: np.ndarray | None, frame: np.ndarray) -> np.ndarray:
    """The shadow hint [H, W] in [0, 1] drawn over a dimmed grey copy of ``frame`` [H, W, 3] (float in [0, 1] or
    uint8) in orange, so one sees where it falls; without a hint (None), the grey frame alone."""
    f = np.asarray(frame)
    f = f.astype(np.float32) / 255.0 if f.dtype == np.uint8 else f.astype(np.float32)
    grey = np.repeat(f.mean(-1, keepdims=True), 3, axis=-1) * 0.5
    if hint is None:
        return np.clip(grey, 0.0, 1.0)
    h = np.clip(np.asarray(hint, np.float32), 0.0, 1.0)[..., None]
    return np.clip(grey * (1.0 - h) + h * np.array([1.0, 0.55, 0.1], np.float32), 0.0, 1.0)


def side_by_side(panels: Sequence[np.ndarray], titles: Sequence[str] | None = None) -> np.ndarray:
    """Concatenate same-sized images horizontally, each optionally titled."""
    if not panels:
        raise InvalidInputError("side_by_side needs at least one panel")
    imgs = [to_uint8(p) for p in panels]
    if len({i.shape for i in imgs}) != 1:
        raise ShapeMismatchError(f"panels differ in size: {[i.shape for i in imgs]}")
    if titles is not None:
        imgs = [label(i, t) for i, t in zip(imgs, titles)]
    return np.concatenate(imgs, axis=1)


def save_png(path: PathLike, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp.with_suffix(".png")), to_uint8(image)[..., ::-1]):
            raise OSError(f"could not write {path}")
        tmp.with_suffix(".png").replace(tmp)


def write_video(path: PathLike, frames: Sequence[np.ndarray], fps: float = 10.0) -> Path:
    """Write RGB uint8/float frames as an MP4 (mp4v), atomically. Sizes must agree."""
    if len(frames) == 0:
        raise InvalidInputError("write_video needs at least one frame")
    first = to_uint8(frames[0])
    h, w = first.shape[:2]
    path = Path(path)
    with atomic_path(path) as tmp:
        target = tmp.with_suffix(".mp4")
        writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot open an MP4 writer for {path}")
        try:
            for f in frames:
                f8 = to_uint8(f)
                if f8.shape[:2] != (h, w):
                    raise ShapeMismatchError(f"video frames differ in size: {f8.shape[:2]} vs {(h, w)}")
                writer.write(np.ascontiguousarray(f8[..., ::-1]))
        finally:
            writer.release()
        target.replace(tmp)
    return path


def contact_sheet(rows: Sequence[np.ndarray], max_rows: int = 8) -> np.ndarray:
    """Stack up to ``max_rows`` equally wide row images (e.g. side_by_side outputs) vertically, evenly picked."""
    if not rows:
        raise InvalidInputError("contact_sheet needs at least one row")
    pick = np.unique(np.linspace(0, len(rows) - 1, min(max_rows, len(rows))).round().astype(int))
    return np.concatenate([to_uint8(rows[i]) for i in pick], axis=0)
