"""Capture loaders: nerfstudio / instant-ngp ``transforms.json`` and COLMAP models -> :class:`PosedImages`.

Every loader brings a capture to pinhole images of one size: distorted lenses are undistorted once, on
load (:mod:`scene_tools.lens`), and the cameras of a rig are resampled to the first camera's size with
their own intrinsics (``Trajectory.frame_intrinsics``) and names (``Trajectory.cameras``).
``downscale`` divides the size; ``max_views`` keeps that many frames, evenly spread, before reading any.

transforms.json (read by :func:`load_transforms_json`, written by :func:`save_transforms_json`):

- Intrinsics ``fl_x, fl_y, cx, cy, w, h`` at the top level or per frame; ``camera_angle_x`` (and
  ``camera_angle_y``) when focal lengths are missing (instant-ngp / Blender); ``cx, cy`` default to the
  image centre and ``w, h`` to the image's size. Pixel centres are at +0.5 (nerfstudio and COLMAP agree),
  so the numbers are used as they are.
- ``camera_model`` OPENCV (default) with distortion ``k1, k2, k3, p1, p2``, or PINHOLE / SIMPLE_PINHOLE.
  Fisheye models, and ``k4`` (an r^8 term OpenCV lacks), are refused.
- Frames with their own intrinsics form their own camera, named by an optional per-frame ``camera``;
  frames on the top-level camera must all have one image size.
- ``transform_matrix`` is camera-to-world in the OpenGL convention and is converted to OpenCV.
  nerfstudio's ``applied_transform`` and its dataparser's auto-orientation / centring / scaling are
  **not** applied: poses are used exactly as stored in the frames.
- ``file_path`` (relative to the json; a missing extension is tried as .png / .jpg / .jpeg as in the
  Blender synthetic sets), optional ``mask_path`` (8/16-bit, 0 = ignore), optional ``depth_file_path``:
  a 16-bit PNG in millimetres (0 = no depth -> inf; ``depth_unit_scale`` changes the unit) or a
  ``.safetensors`` file with one [H, W] tensor in metres. ``.npy`` and other pickle-capable formats are
  refused on purpose. Images with an alpha channel give the alpha as the mask when no mask is given.
- Frames keep the json order; an optional per-frame ``time`` becomes the trajectory times.
- ``ply_file_path`` (nerfstudio's sparse point cloud, or lidar points) becomes ``points`` / ``point_colors``.
- Our extension: ``instance_file_path``, a 16-bit PNG of instance ids (ignored by other readers).

COLMAP models (:func:`load_colmap`, :func:`save_colmap_text`): text (cameras.txt, images.txt, optional
points3D.txt, parsed here with line-exact errors) or binary (cameras.bin, images.bin, points3D.bin, read by
pycolmap; images without a pose are skipped). Cameras SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL,
OPENCV, FULL_OPENCV; fisheye models are refused. images.txt: world-to-camera quaternion qw qx qy qz and
translation; each image line followed by its POINTS2D line, which may be empty or, in hand-made files, left
out; image names must be unique. Frames are sorted by image name.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from scene_tools.cameras import Intrinsics, Trajectory, check_pose, opencv_to_opengl, opengl_to_opencv
from scene_tools.lens import LensDistortion, Undistorter, colmap_camera
from scene_tools.views import PosedImages, resize_image
from simharmony.errors import (
    CorruptFileError,
    InvalidCameraError,
    InvalidInputError,
    MissingFileError,
    ShapeMismatchError,
)
from simharmony.utils.io import PathLike, write_bytes_atomic, write_text_atomic

_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".JPG", ".PNG", ".JPEG")
_DIST_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
_INTR_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
_MAX_PNG_DEPTH_MM = 65535


# ---------------------------------------------------------------------------------------------- image I/O
def read_image(path: PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read an 8/16-bit image -> (rgb [H, W, 3] float32 in [0, 1], alpha [H, W] float32 or None)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"image not found: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise CorruptFileError(f"cannot decode image {path} (corrupt or unsupported format)")
    scale = 65535.0 if img.dtype == np.uint16 else 255.0 if img.dtype == np.uint8 else 1.0
    img = img.astype(np.float32) / scale
    alpha = None
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    elif img.shape[2] == 4:
        alpha = img[..., 3]
        img = img[..., 2::-1]
    elif img.shape[2] == 3:
        img = img[..., ::-1]
    else:
        raise CorruptFileError(f"image {path} has {img.shape[2]} channels; expected 1, 3 or 4")
    return np.ascontiguousarray(img), alpha


def _read_gray(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise MissingFileError(f"{what} not found: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise CorruptFileError(f"cannot decode {what} {path}")
    return img[..., 0] if img.ndim == 3 else img


def _encode_png(arr: np.ndarray, path: Path) -> None:
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise CorruptFileError(f"cannot encode PNG for {path}")
    write_bytes_atomic(path, buf.tobytes())


def write_image(path: PathLike, rgb: np.ndarray, quality: int = 95) -> None:
    """Write rgb [H, W, 3] float in [0, 1] as 8-bit PNG or JPEG (by suffix), atomically."""
    path = Path(path)
    bgr = np.clip(np.round(np.asarray(rgb)[..., ::-1] * 255.0), 0, 255).astype(np.uint8)
    ext = path.suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, bgr, params)
    if not ok:
        raise InvalidInputError(f"cannot encode image as {ext!r} for {path}")
    write_bytes_atomic(path, buf.tobytes())


def _read_depth(path: Path, depth_unit_scale: float) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".png":
        raw = _read_gray(path, "depth image")
        if raw.dtype != np.uint16:
            raise CorruptFileError(f"depth PNG {path} must be 16-bit (millimetres), got {raw.dtype}")
        d = raw.astype(np.float32) * np.float32(depth_unit_scale)
        d[raw == 0] = np.inf
        return d
    if suffix == ".safetensors":
        from simharmony.utils.io import load_tensors

        tensors, _ = load_tensors(path)
        if len(tensors) != 1 and "depth" not in tensors:
            raise CorruptFileError(
                f"depth file {path} must hold one tensor (or one named 'depth'), got "
                f"{list(tensors)}"
            )
        t = tensors["depth"] if "depth" in tensors else next(iter(tensors.values()))
        d = t.float().numpy()
        if d.ndim == 3 and d.shape[-1] == 1:
            d = d[..., 0]
        if d.ndim != 2:
            raise CorruptFileError(f"depth tensor in {path} must be [H, W], got {list(d.shape)}")
        return d
    raise InvalidInputError(
        f"unsupported depth file {path}: use a 16-bit PNG in millimetres or .safetensors in metres "
        "(.npy / pickle-capable formats are not read)"
    )


def _resolve_image(base: Path, rel: str, frame: str) -> Path:
    p = base / rel
    if p.is_file():
        return p
    if not p.suffix or p.suffix not in _IMAGE_EXTS:
        for ext in _IMAGE_EXTS:
            q = p.with_name(p.name + ext)
            if q.is_file():
                return q
    raise MissingFileError(f"{frame}: image file not found: {p}")


# ---------------------------------------------------------------------------------------------- transforms.json
def _num(d: dict, key: str, where: str) -> float:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise CorruptFileError(f"{where}: '{key}' must be a finite number, got {v!r}")
    return float(v)


_FISHEYE_MODELS = ("OPENCV_FISHEYE", "FISHEYE", "EQUIRECTANGULAR", "FISHEYE624")


def _camera_from(d: dict, fallback: dict, where: str, size: tuple[int, int]) -> tuple[Intrinsics, LensDistortion]:
    """A frame's camera (its keys, the top level's as fallback); ``size`` is its image's (w, h)."""
    get = lambda k: d[k] if k in d else fallback.get(k)
    merged = {k: get(k) for k in (*_INTR_KEYS, "camera_angle_x", "camera_angle_y", *_DIST_KEYS)}
    merged = {k: v for k, v in merged.items() if v is not None}
    coeffs = {k: _num(merged, k, where) for k in _DIST_KEYS if k in merged}
    model = d.get("camera_model", fallback.get("camera_model", "OPENCV"))
    if model in _FISHEYE_MODELS:
        raise InvalidCameraError(f"{where}: camera_model {model} is a fisheye/omnidirectional lens, which is not "
                                 "supported (only pinhole and OPENCV radial-tangential lenses)")
    if model not in ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE"):
        raise InvalidCameraError(f"{where}: unknown camera_model {model!r}; expected OPENCV, PINHOLE or SIMPLE_PINHOLE")
    if model != "OPENCV" and any(coeffs.values()):
        raise InvalidCameraError(f"{where}: camera_model {model} has no distortion but the frame gives {coeffs}")
    if coeffs.get("k4", 0.0) != 0.0:
        raise InvalidCameraError(f"{where}: k4={coeffs['k4']} (an r^8 radial term) has no OpenCV equivalent; only "
                                 "k1, k2, k3, p1, p2 are supported for OPENCV lenses")
    dist = LensDistortion(k1=coeffs.get("k1", 0.0), k2=coeffs.get("k2", 0.0), p1=coeffs.get("p1", 0.0),
                          p2=coeffs.get("p2", 0.0), k3=coeffs.get("k3", 0.0))
    if "w" in merged and "h" in merged:
        w, h = _num(merged, "w", where), _num(merged, "h", where)
        if (int(w), int(h)) != size:
            raise ShapeMismatchError(f"{where}: image is {size[0]}x{size[1]} but its camera's w/h say {int(w)}x{int(h)}")
    w, h = float(size[0]), float(size[1])
    if "fl_x" in merged:
        fx = _num(merged, "fl_x", where)
    elif "camera_angle_x" in merged:
        ax = _num(merged, "camera_angle_x", where)
        if not 0 < ax < math.pi:
            raise InvalidCameraError(f"{where}: camera_angle_x must be in (0, pi) radians, got {ax}")
        fx = 0.5 * w / math.tan(0.5 * ax)
    else:
        raise CorruptFileError(f"{where}: missing focal length: need 'fl_x' or 'camera_angle_x'")
    if "fl_y" in merged:
        fy = _num(merged, "fl_y", where)
    elif "camera_angle_y" in merged:
        ay = _num(merged, "camera_angle_y", where)
        if not 0 < ay < math.pi:
            raise InvalidCameraError(f"{where}: camera_angle_y must be in (0, pi) radians, got {ay}")
        fy = 0.5 * h / math.tan(0.5 * ay)
    else:
        fy = fx
    cx = _num(merged, "cx", where) if "cx" in merged else w / 2.0
    cy = _num(merged, "cy", where) if "cy" in merged else h / 2.0
    if fx <= 0 or fy <= 0:
        raise InvalidCameraError(f"{where}: focal lengths must be positive, got fl_x={fx}, fl_y={fy}")
    return Intrinsics(fx, fy, cx, cy, int(w), int(h)), dist


def _check_downscale(downscale: int) -> int:
    if isinstance(downscale, bool) or not isinstance(downscale, (int, np.integer)) or downscale < 1:
        raise InvalidInputError(f"downscale must be a positive integer, got {downscale!r}")
    return int(downscale)


def _same_size(arr: np.ndarray, size: tuple[int, int], where: str, what: str) -> np.ndarray:
    if (arr.shape[1], arr.shape[0]) != size:
        raise ShapeMismatchError(f"{where}: {what} is {arr.shape[1]}x{arr.shape[0]}, image is {size[0]}x{size[1]}")
    return arr


def pick_views(n: int, max_views: int | None) -> list[int]:
    """Indices of at most ``max_views`` of ``n`` views, evenly spread (all of them for None)."""
    if n < 0:
        raise InvalidInputError(f"number of views must be >= 0, got {n}")
    if max_views is None or max_views >= n:
        return list(range(n))
    if isinstance(max_views, bool) or not isinstance(max_views, (int, np.integer)) or max_views < 1:
        raise InvalidInputError(f"max_views must be a positive integer or None, got {max_views!r}")
    return sorted({round(x) for x in np.linspace(0, n - 1, int(max_views))})


MIN_IMAGE_SIDE = 4  # a loaded (downscaled) view must keep at least this many pixels a side


class FramePrep:
    """Brings every frame of a capture to one pinhole image size: undistorts it once (per-camera maps are
    cached), then resamples it to the first camera's undistorted size divided by ``downscale``.

    A rig's cameras of another size are resampled to that size too, their intrinsics scaled per axis,
    so one capture stacks into [N, H, W, 3] with per-frame intrinsics.
    """

    def __init__(self, downscale: int = 1) -> None:
        self.downscale = _check_downscale(downscale)
        self.out_size: tuple[int, int] | None = None  # (w, h)
        self._cams: dict[tuple[Intrinsics, LensDistortion], tuple[Undistorter | None, Intrinsics]] = {}

    def camera(self, intr: Intrinsics, dist: LensDistortion) -> Intrinsics:
        """The output pinhole camera of a (distorted) input camera."""
        key = (intr, dist)
        if key not in self._cams:
            und = None if dist.is_zero else Undistorter(intr, dist)
            pinhole = und.intrinsics if und is not None else intr
            if self.out_size is None:
                size = (round(pinhole.width / self.downscale), round(pinhole.height / self.downscale))
                if min(size) < MIN_IMAGE_SIDE:
                    raise InvalidInputError(
                        f"downscale={self.downscale} turns the {pinhole.width}x{pinhole.height} images into "
                        f"{size[0]}x{size[1]}: at least {MIN_IMAGE_SIDE} pixels a side are needed (downscale less)")
                self.out_size = size
            self._cams[key] = (und, pinhole.resized(*self.out_size))
        return self._cams[key][1]

    def __call__(self, intr: Intrinsics, dist: LensDistortion, arr: np.ndarray, nearest: bool = False) -> np.ndarray:
        """One frame's image / mask (bilinear then area) or depth / ids (``nearest``) in the output camera."""
        self.camera(intr, dist)
        und = self._cams[(intr, dist)][0]
        if und is not None:
            arr = und(arr, nearest)
        return resize_image(arr, self.out_size, nearest)


def load_transforms_json(
    path_or_folder: PathLike,
    downscale: int = 1,
    *,
    max_views: int | None = None,
    depth_unit_scale: float = 1e-3,
    progress: bool = True,
) -> PosedImages:
    """Load a nerfstudio / instant-ngp capture (see the module docstring for the accepted keys).

    Args:
        path_or_folder: the transforms.json file or the folder holding it.
        downscale: integer factor; images and masks are area-averaged, depth and ids nearest-sampled,
            intrinsics scaled to match.
        max_views: read at most this many frames, evenly spread over the file's order (None: all).
        depth_unit_scale: metres per unit of 16-bit depth PNGs (nerfstudio's default: millimetres).
        progress: show a tqdm bar while reading images.

    Returns:
        PosedImages with images [N, H, W, 3] undistorted to pinhole, poses in OpenCV convention, per-frame
        intrinsics and camera names for a rig, and masks / depths / instance_ids / points where the file
        provides them (for all frames or none).
    """
    downscale = _check_downscale(downscale)
    path = Path(path_or_folder)
    if path.is_dir():
        path = path / "transforms.json"
    if not path.is_file():
        raise MissingFileError(f"transforms file not found: {path}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptFileError(f"cannot parse {path}: {e}") from e
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise CorruptFileError(f"{path}: expected an object with a 'frames' list")
    frames = meta["frames"]
    if not frames:
        raise CorruptFileError(f"{path}: 'frames' is empty")
    base = path.parent
    prep = FramePrep(downscale)

    images, masks, depths, ids, poses, times, names, intrs, cams = [], [], [], [], [], [], [], [], []
    shared_size = None  # the image size of frames on the top-level camera
    distinct: list[tuple[Intrinsics, LensDistortion]] = []
    for i in tqdm(pick_views(len(frames), max_views), desc=f"loading {path.name}", disable=not progress, leave=False):
        fr = frames[i]
        if not isinstance(fr, dict):
            raise CorruptFileError(f"{path}: frame {i} is not an object")
        where = f"{path} frame {i}"
        for key in ("file_path", "transform_matrix"):
            if key not in fr:
                raise CorruptFileError(f"{where}: missing key '{key}'")
        where = f"{path} frame {i} ({fr['file_path']})"
        img_path = _resolve_image(base, str(fr["file_path"]), where)
        rgb, alpha = read_image(img_path)
        size = (rgb.shape[1], rgb.shape[0])
        own_camera = any(k in fr for k in (*_INTR_KEYS, "camera_angle_x", "camera_angle_y", "camera_model"))
        if not own_camera:
            if shared_size is None:
                shared_size = size
            elif size != shared_size:
                raise ShapeMismatchError(f"{where}: image is {size[0]}x{size[1]} but earlier frames of the same camera "
                                         f"are {shared_size[0]}x{shared_size[1]}")
        intr, dist = _camera_from(fr, meta, where, size)
        if (intr, dist) not in distinct:
            distinct.append((intr, dist))
        cam_name = fr.get("camera")
        cams.append(str(cam_name) if cam_name is not None else
                    "camera" if not own_camera else f"camera_{distinct.index((intr, dist))}")
        intrs.append(prep.camera(intr, dist))
        try:
            m = np.asarray(fr["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise CorruptFileError(f"{where}: transform_matrix is not a numeric matrix") from e
        poses.append(opengl_to_opencv(check_pose(m, f"{where} transform_matrix")))

        if "mask_path" in fr:
            mk = _read_gray(base / str(fr["mask_path"]), f"{where}: mask")
            mk = mk.astype(np.float32) / (65535.0 if mk.dtype == np.uint16 else 255.0)
        else:
            mk = alpha
        masks.append(None if mk is None else prep(intr, dist, _same_size(mk, size, where, "mask")))
        dp = _read_depth(base / str(fr["depth_file_path"]), depth_unit_scale) if "depth_file_path" in fr else None
        depths.append(None if dp is None else prep(intr, dist, _same_size(dp, size, where, "depth"), nearest=True))
        inst = _read_gray(base / str(fr["instance_file_path"]), f"{where}: instance ids") \
            if "instance_file_path" in fr else None
        ids.append(None if inst is None else prep(intr, dist, _same_size(inst, size, where, "instance ids"), nearest=True))
        times.append(_num(fr, "time", where) if fr.get("time") is not None else None)
        names.append(Path(str(fr["file_path"])).stem)
        images.append(prep(intr, dist, rgb))

    def stack(items: list, what: str) -> np.ndarray | None:
        present = [x is not None for x in items]
        if not any(present):
            return None
        if not all(present):
            raise CorruptFileError(
                f"{path}: {what} given for some frames but not all (frame "
                f"{present.index(False)} lacks it)"
            )
        return np.stack(items)

    traj_times = None
    if all(t is not None for t in times):
        traj_times = np.asarray(times, dtype=np.float64)
    points = colors = None
    if "ply_file_path" in meta:
        from scene_tools.ply import load_points_ply

        points, colors = load_points_ply(base / str(meta["ply_file_path"]))
    rig = len(set(cams)) > 1
    return PosedImages(
        images=np.stack(images),
        trajectory=Trajectory(np.stack(poses), intrs[0], traj_times, tuple(intrs), tuple(cams) if rig else None),
        masks=stack(masks, "masks"),
        depths=stack(depths, "depths"),
        instance_ids=None if (s := stack(ids, "instance ids")) is None else s.astype(np.int32),
        points=points,
        point_colors=colors,
        names=names,
    )


def _safe_names(images: PosedImages) -> list[str]:
    if images.names is None:
        return [f"frame_{i:05d}" for i in range(len(images))]
    names = [Path(str(n)).stem.replace("/", "_") or f"frame_{i:05d}" for i, n in enumerate(images.names)]
    if len(set(names)) != len(names):  # keep files distinct
        names = [f"{i:05d}_{n}" for i, n in enumerate(names)]
    return names


def save_transforms_json(
    images: PosedImages,
    folder: PathLike,
    image_format: str = "png",
    *,
    depth_format: str = "safetensors",
    progress: bool = True,
) -> Path:
    """Write ``folder``/transforms.json plus images/, masks/, depths/, instances/ and sparse_pc.ply.

    Poses are written in the OpenGL convention with global intrinsics (nerfstudio style; a rig's frames
    also carry their own intrinsics and camera name), every file
    atomically. ``image_format`` "png" (lossless to 8 bits: round trip within 1/255) or "jpg".
    ``depth_format`` "safetensors" (exact float32, inf kept) or "png" (16-bit millimetres as nerfstudio
    reads them; depth beyond 65.535 m or inf is written as 0 = no depth). Instance ids go to 16-bit
    PNGs under our ``instance_file_path`` key. Returns the path of transforms.json.
    """
    if not isinstance(images, PosedImages):
        raise InvalidInputError(f"save_transforms_json expects PosedImages, got {type(images).__name__}")
    fmt = image_format.lower().lstrip(".")
    if fmt not in ("png", "jpg", "jpeg"):
        raise InvalidInputError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    if depth_format not in ("safetensors", "png"):
        raise InvalidInputError(f"depth_format must be 'safetensors' or 'png', got {depth_format!r}")
    folder = Path(folder)
    intr = images.trajectory.intrinsics
    meta: dict[str, Any] = {
        "camera_model": "OPENCV",
        "fl_x": intr.fx, "fl_y": intr.fy, "cx": intr.cx, "cy": intr.cy, "w": intr.width, "h": intr.height,
        "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
        "frames": [],
    }
    if images.instance_ids is not None and (images.instance_ids.min() < 0 or images.instance_ids.max() > 65535):
        raise InvalidInputError("instance ids must be in [0, 65535] to be stored as 16-bit PNG")
    gl = opencv_to_opengl(images.trajectory.poses)
    for i, name in enumerate(tqdm(_safe_names(images), desc="saving frames", disable=not progress, leave=False)):
        fr: dict[str, Any] = {"file_path": f"images/{name}.{fmt}", "transform_matrix": gl[i].tolist(),
                              "time": float(images.trajectory.times[i])}
        if images.trajectory.cameras is not None or images.trajectory.frame_intrinsics is not None:  # a rig
            k = images.trajectory.intrinsics_at(i)
            fr.update({"fl_x": k.fx, "fl_y": k.fy, "cx": k.cx, "cy": k.cy, "w": k.width, "h": k.height,
                       "camera": images.trajectory.camera_names[i]})
        write_image(folder / fr["file_path"], images.images[i])
        if images.masks is not None:
            fr["mask_path"] = f"masks/{name}.png"
            _encode_png(np.clip(np.round(images.masks[i] * 255), 0, 255).astype(np.uint8), folder / fr["mask_path"])
        if images.depths is not None:
            d = images.depths[i]
            if depth_format == "png":
                fr["depth_file_path"] = f"depths/{name}.png"
                mm = np.round(np.where(np.isfinite(d), d, 0) * 1000.0)
                mm[(mm > _MAX_PNG_DEPTH_MM) | (mm < 0)] = 0
                _encode_png(mm.astype(np.uint16), folder / fr["depth_file_path"])
            else:
                import torch

                from simharmony.utils.io import save_tensors

                fr["depth_file_path"] = f"depths/{name}.safetensors"
                save_tensors(folder / fr["depth_file_path"], {"depth": torch.from_numpy(np.ascontiguousarray(d))})
        if images.instance_ids is not None:
            fr["instance_file_path"] = f"instances/{name}.png"
            _encode_png(images.instance_ids[i].astype(np.uint16), folder / fr["instance_file_path"])
        meta["frames"].append(fr)
    if images.points is not None:
        from scene_tools.ply import save_points_ply

        meta["ply_file_path"] = "sparse_pc.ply"
        save_points_ply(folder / "sparse_pc.ply", images.points, images.point_colors)
    out = folder / "transforms.json"
    write_text_atomic(out, json.dumps(meta, indent=2))
    return out


# ---------------------------------------------------------------------------------------------- COLMAP
def _data_lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise MissingFileError(f"COLMAP file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CorruptFileError(f"{path} is not a text file: {e}") from e
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if not line.lstrip().startswith("#")]


def _parse_cameras(path: Path) -> dict[int, tuple[Intrinsics, LensDistortion]]:
    cams = {}
    for n, line in _data_lines(path):
        tok = line.split()
        if not tok:
            continue
        where = f"{path}:{n}"
        if len(tok) < 4:
            raise CorruptFileError(f"{where}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...', got {line!r}")
        try:
            cam_id, w, h = int(tok[0]), int(tok[2]), int(tok[3])
            params = [float(x) for x in tok[4:]]
        except ValueError as e:
            raise CorruptFileError(f"{where}: non-numeric camera entry {line!r}") from e
        cams[cam_id] = colmap_camera(tok[1], w, h, params, f"{where} (camera {cam_id})")
    if not cams:
        raise CorruptFileError(f"{path}: no cameras")
    return cams


def _quat_to_R(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


_IMAGE_LINE = "'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME'"
_POINTS2D_LINE = "a POINTS2D line ('X Y POINT3D_ID' triples, possibly empty)"


def _image_fields(line: str, where: str) -> tuple[int, np.ndarray, np.ndarray, int, str] | None:
    """(image id, q, t, camera id, name) if ``line`` is an image line (9 numeric fields, then the name,
    which may contain spaces); None if it does not have that form. A line of 10 fields whose leading fields
    are not numbers (and that is not a POINTS2D line) is a CorruptFileError: a non-numeric image entry."""
    tok = line.split(maxsplit=9)
    if len(tok) != 10 or not tok[9].strip():
        return None
    try:
        return (int(tok[0]), np.array([float(x) for x in tok[1:5]]), np.array([float(x) for x in tok[5:8]]),
                int(tok[8]), tok[9].strip())
    except ValueError as e:
        if _is_points2d(line):
            return None
        raise CorruptFileError(f"{where}: non-numeric image entry (expected {_IMAGE_LINE}): {line[:120]!r}") from e


def _is_points2d(line: str) -> bool:
    """True if ``line`` is a POINTS2D line: (X Y POINT3D_ID) triples of numbers, the ids integers (-1 = no
    3D point), possibly none."""
    tok = line.split()
    if len(tok) % 3:
        return False
    try:
        for i, x in enumerate(tok):
            int(x) if i % 3 == 2 else float(x)
    except ValueError:
        return False
    return True


def _parse_images(path: Path) -> list[tuple[str, np.ndarray, int]]:
    """-> [(name, c2w [4, 4] OpenCV, camera_id)].

    Each image line may be followed by its POINTS2D line (COLMAP writes one per image, empty when the
    image has no points); hand-made files often omit it. Lines are recognised by their form, not by
    position: an image line has 10 fields (9 numbers, then the name), a POINTS2D line a multiple of 3
    numbers and may come only right after an image line. Blank lines elsewhere are skipped; any other line
    is a CorruptFileError naming it, and so is an image name that appears twice.
    """
    out = []
    seen: dict[str, int] = {}
    expect_points = False  # the previous data line was an image line: a POINTS2D line may follow
    for n, line in _data_lines(path):
        where = f"{path}:{n}"
        if expect_points and _is_points2d(line):  # includes the empty POINTS2D line
            expect_points = False
            continue
        if not line.strip():  # blank line between entries
            continue
        fields = _image_fields(line, where)
        if fields is None:
            if _is_points2d(line):
                raise CorruptFileError(f"{where}: expected an image line ({_IMAGE_LINE}), got {line[:120]!r}, which "
                                       "reads as a POINTS2D line without an image line before it")
            raise CorruptFileError(
                f"{where}: neither an image line ({_IMAGE_LINE}) nor {_POINTS2D_LINE}: {line[:120]!r}"
            )
        _, q, t, cam_id, name = fields
        if name in seen:
            raise CorruptFileError(f"{where}: image name {name!r} appears twice (also on line {seen[name]})")
        seen[name] = n
        norm = np.linalg.norm(q)
        if not np.isfinite(norm) or abs(norm - 1.0) > 1e-3:
            raise InvalidCameraError(f"{where}: image {name!r} has a non-unit rotation quaternion (norm {norm:.6f})")
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = _quat_to_R(q / norm), t
        c2w = np.eye(4)
        c2w[:3, :3] = w2c[:3, :3].T
        c2w[:3, 3] = -w2c[:3, :3].T @ t
        out.append((name, check_pose(c2w, f"{where} image {name!r}"), cam_id))
        expect_points = True
    if not out:
        raise CorruptFileError(f"{path}: no images")
    return out


def _parse_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    pts, cols = [], []
    for n, line in _data_lines(path):
        tok = line.split()
        if not tok:
            continue
        if len(tok) < 8:
            raise CorruptFileError(f"{path}:{n}: expected 'POINT3D_ID X Y Z R G B ERROR TRACK...', got {line!r}")
        try:
            pts.append([float(x) for x in tok[1:4]])
            cols.append([int(x) for x in tok[4:7]])
        except ValueError as e:
            raise CorruptFileError(f"{path}:{n}: non-numeric point entry") from e
    p = np.asarray(pts, dtype=np.float32).reshape(-1, 3)
    if not np.isfinite(p).all():
        raise CorruptFileError(f"{path}: points contain NaN or inf")
    return p, np.asarray(cols, dtype=np.float32).reshape(-1, 3) / 255.0


def _read_colmap_binary(folder: Path):
    """(cameras, [(name, c2w, camera id)], points, colours) of a binary model, read by pycolmap."""
    import pycolmap

    try:
        rec = pycolmap.Reconstruction(str(folder))
    except (ValueError, RuntimeError) as e:
        raise CorruptFileError(f"cannot read the COLMAP binary model in {folder}: {e}") from e
    cams = {cid: colmap_camera(c.model.name, c.width, c.height, c.params, f"{folder}/cameras.bin (camera {cid})")
            for cid, c in rec.cameras.items()}
    entries = []
    for im in rec.images.values():
        if not im.has_pose:  # in the model but not registered
            continue
        w2c = np.eye(4)
        w2c[:3] = im.cam_from_world().matrix()
        entries.append((im.name, check_pose(np.linalg.inv(w2c), f"{folder}/images.bin image {im.name!r}"), im.camera_id))
    if not entries:
        raise CorruptFileError(f"the COLMAP binary model in {folder} has no registered images")
    pts = rec.points3D
    points = np.array([p.xyz for p in pts.values()], np.float32).reshape(-1, 3)
    colors = np.array([p.color for p in pts.values()], np.float32).reshape(-1, 3) / 255.0
    if not np.isfinite(points).all():
        raise CorruptFileError(f"{folder}: points contain NaN or inf")
    return cams, entries, (points if len(points) else None), (colors if len(points) else None)


def load_colmap(
    folder: PathLike,
    images_dir: PathLike | None = None,
    downscale: int = 1,
    *,
    max_views: int | None = None,
    progress: bool = True,
) -> PosedImages:
    """Load a COLMAP model, text (cameras/images/points3D.txt) or binary (.bin, read by pycolmap), and its images.

    ``images_dir`` defaults to the first existing of ``folder/images``, ``folder/../images`` and
    ``folder/../../images`` (the ``sparse/0`` layout). Distorted cameras (SIMPLE_RADIAL, RADIAL, OPENCV,
    FULL_OPENCV) are undistorted on load to pinhole cameras; several cameras give a rig trajectory (per-frame
    intrinsics, cameras named ``camera_<id>``), all resampled to the first camera's size. Frames are sorted
    by image name; ``names`` are the image names without extension; ``max_views`` keeps that many, evenly
    spread.
    """
    downscale = _check_downscale(downscale)
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"COLMAP model folder not found: {folder}")
    points = colors = None
    if (folder / "cameras.txt").is_file():
        cams = _parse_cameras(folder / "cameras.txt")
        entries = _parse_images(folder / "images.txt")
        if (folder / "points3D.txt").is_file():
            points, colors = _parse_points(folder / "points3D.txt")
    elif (folder / "cameras.bin").is_file():
        for f in ("images.bin", "points3D.bin"):
            if not (folder / f).is_file():
                raise MissingFileError(f"COLMAP binary model {folder} lacks {f}")
        cams, entries, points, colors = _read_colmap_binary(folder)
    else:
        raise MissingFileError(f"no COLMAP model in {folder} (expected cameras.txt or cameras.bin)")
    entries = sorted(entries, key=lambda e: e[0])
    entries = [entries[i] for i in pick_views(len(entries), max_views)]
    for name, _, cam_id in entries:
        if cam_id not in cams:
            raise CorruptFileError(f"{folder}: image {name!r} uses camera {cam_id}, which the model does not have")
    if images_dir is None:
        candidates = [folder / "images", folder.parent / "images", folder.parent.parent / "images"]
        found = [c for c in candidates if c.is_dir()]
        if not found:
            raise MissingFileError(
                f"no images folder found for COLMAP model {folder}; tried "
                f"{[str(c) for c in candidates]}"
            )
        images_dir = found[0]
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise MissingFileError(f"images folder not found: {images_dir}")

    prep = FramePrep(downscale)
    imgs, masks, intrs, any_alpha = [], [], [], False
    for name, _, cam_id in tqdm(entries, desc="loading COLMAP images", disable=not progress, leave=False):
        intr, dist = cams[cam_id]
        rgb, alpha = read_image(images_dir / name)
        if rgb.shape[:2] != (intr.height, intr.width):
            raise ShapeMismatchError(
                f"image {images_dir / name} is {rgb.shape[1]}x{rgb.shape[0]} but its camera {cam_id} "
                f"is {intr.width}x{intr.height}"
            )
        intrs.append(prep.camera(intr, dist))
        imgs.append(prep(intr, dist, rgb))
        masks.append(None if alpha is None else prep(intr, dist, alpha))
        any_alpha |= alpha is not None
    h, w = imgs[0].shape[:2]
    if any_alpha:
        masks = [np.ones((h, w), np.float32) if m is None else m for m in masks]
    cam_ids = [e[2] for e in entries]
    rig = len(set(cam_ids)) > 1
    return PosedImages(
        images=np.stack(imgs),
        trajectory=Trajectory(np.stack([e[1] for e in entries]), intrs[0], None, tuple(intrs),
                              tuple(f"camera_{c}" for c in cam_ids) if rig else None),
        masks=np.stack(masks) if any_alpha else None,
        points=points,
        point_colors=colors,
        names=[Path(e[0]).stem for e in entries],
    )


def save_colmap_text(images: PosedImages, folder: PathLike, *, images_subdir: str = "images",
                     image_format: str = "png", progress: bool = True) -> Path:
    """Write a COLMAP text model (one PINHOLE camera per distinct camera of a rig) to ``folder`` and the images
    to ``folder/images_subdir``.

    Poses become world-to-camera quaternions (qw >= 0) and translations; points3D.txt holds
    ``images.points`` (with empty tracks). Returns ``folder``.
    """
    if not isinstance(images, PosedImages):
        raise InvalidInputError(f"save_colmap_text expects PosedImages, got {type(images).__name__}")
    fmt = image_format.lower().lstrip(".")
    if fmt not in ("png", "jpg", "jpeg"):
        raise InvalidInputError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    import torch

    from scene_tools.transforms import matrix_to_quat

    folder = Path(folder)
    traj = images.trajectory
    cameras: list[Intrinsics] = []
    for i in range(len(traj)):
        if traj.intrinsics_at(i) not in cameras:
            cameras.append(traj.intrinsics_at(i))
    write_text_atomic(
        folder / "cameras.txt",
        "# Camera list with one line of data per camera:\n#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n" + "".join(
            f"{j + 1} PINHOLE {k.width} {k.height} {k.fx!r} {k.fy!r} {k.cx!r} {k.cy!r}\n" for j, k in enumerate(cameras)),
    )
    w2c = np.linalg.inv(images.trajectory.poses)
    quats = matrix_to_quat(torch.from_numpy(w2c[:, :3, :3])).numpy()
    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME", "#   POINTS2D[] as (X, Y, POINT3D_ID)"]
    for i, name in enumerate(tqdm(_safe_names(images), desc="saving COLMAP images", disable=not progress, leave=False)):
        fname = f"{name}.{fmt}"
        write_image(folder / images_subdir / fname, images.images[i])
        q, t = quats[i], w2c[i, :3, 3]
        cam_id = cameras.index(traj.intrinsics_at(i)) + 1
        lines.append(" ".join([str(i + 1), *(repr(float(x)) for x in q), *(repr(float(x)) for x in t), str(cam_id),
                               fname]))
        lines.append("")
    write_text_atomic(folder / "images.txt", "\n".join(lines) + "\n")
    pts_lines = ["# 3D point list with one line of data per point:", "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[]"]
    if images.points is not None:
        cols = images.point_colors if images.point_colors is not None else np.full_like(images.points, 0.5)
        c8 = np.clip(np.round(cols * 255), 0, 255).astype(int)
        for j, (p, c) in enumerate(zip(images.points, c8)):
            pts_lines.append(f"{j + 1} {float(p[0])!r} {float(p[1])!r} {float(p[2])!r} {c[0]} {c[1]} {c[2]} 0")
    write_text_atomic(folder / "points3D.txt", "\n".join(pts_lines) + "\n")
    return folder


def load_posed_images(path: PathLike, downscale: int = 1, max_views: int | None = None, *,
                      progress: bool = True) -> PosedImages:
    """Any capture the project reads, by what the folder holds: street frames (``frames.yaml``), a
    ``simharmony capture`` folder (``capture.json``), a ``transforms.json`` (or its folder) or a COLMAP model
    (text or binary; also under ``sparse/0`` or ``sparse``)."""
    from scene_tools.capture import load_capture
    from scene_tools.pbr import StreetFrames

    path = Path(path)
    if (path / "frames.yaml").is_file():
        images = StreetFrames.load(path).to_posed_images()
        return images.subset(pick_views(len(images), max_views)).downscaled(downscale)
    if (path / "capture.json").is_file():
        return load_capture(path, downscale, max_views=max_views, progress=progress)
    if path.suffix == ".json" or (path / "transforms.json").is_file():
        return load_transforms_json(path, downscale, max_views=max_views, progress=progress)
    for sub in (path, path / "sparse" / "0", path / "sparse"):
        if (sub / "cameras.txt").is_file() or (sub / "cameras.bin").is_file():
            return load_colmap(sub, downscale=downscale, max_views=max_views, progress=progress)
    raise MissingFileError(f"{path}: not a street frames folder, capture folder, transforms.json or COLMAP model")
