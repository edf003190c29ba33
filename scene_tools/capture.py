"""Structure from motion for captures without poses: a folder of photos, or a video, to a COLMAP model.

``capture(source, out_dir)`` runs COLMAP through pycolmap: SIFT features, matching (sequential for video,
exhaustive for a few unordered photos), incremental mapping. It writes, all at once when it succeeds:

- ``out_dir/images/``: the frames of a video (JPEG, quality 95); a folder source is read where it is;
- ``out_dir/database.db``: COLMAP's features and matches;
- ``out_dir/sparse/0/``: the largest model, binary, as COLMAP writes it (poses, cameras, sparse points);
- ``out_dir/capture.json``: the source, the config, how many images registered and which did not, timings.

:func:`load_capture` then reads it as :class:`~scene_tools.views.PosedImages` (undistorted, pinhole).
Lenses are solved as ``camera_model`` (SIMPLE_PINHOLE by default): one camera for the whole capture when all
images share a size, else one per image.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from tqdm.auto import tqdm

from scene_tools.lens import COLMAP_DISTORTED_MODELS, COLMAP_PINHOLE_MODELS
from scene_tools.views import PosedImages
from simharmony.errors import (
    CorruptFileError,
    FileFormatError,
    InvalidInputError,
    MissingFileError,
    ReconstructionFailedError,
    ShapeMismatchError,
)
from simharmony.utils.config import Config, require, require_finite_fields
from simharmony.utils.io import PathLike, current_umask, write_text_atomic

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
MIN_IMAGES = 3


@dataclass
class CaptureConfig(Config):
    """How :func:`capture` runs structure from motion. Defaults suit a forward-driving dash camera."""

    matching: Literal["auto", "sequential", "exhaustive"] = "auto"  # auto: sequential for video or > 60 images
    sequential_overlap: int = 10  # neighbours matched per frame in sequential matching
    # COLMAP model solved for the lens (undistorted on load). Driving straight ahead pins the lens loosely:
    # SIMPLE_RADIAL's k ran away (|k| > 100) on udacity_highway and split it into 4 models, so the default
    # solves the focal length only; use SIMPLE_RADIAL or OPENCV for visibly distorted, varied footage
    camera_model: str = "SIMPLE_PINHOLE"
    camera_mode: Literal["auto", "single", "per_image"] = "auto"  # auto: single when all images share a size
    max_image_size: int = 640  # features are extracted at most this large (longest side, pixels)
    max_num_features: int = 2048
    init_min_tri_angle: float = 4.0  # degrees; COLMAP's 16 rarely finds a pair when driving straight ahead
    min_registered_fraction: float = 0.5  # fewer registered images than this fraction is an error
    num_threads: int = -1  # -1: all cores
    seed: int = 0

    # video sources
    video_every: int = 1  # keep every n-th frame
    video_max_frames: int | None = None
    video_max_size: int | None = None  # resize frames so the longest side is at most this (None: as decoded)

    def __post_init__(self) -> None:
        require_finite_fields(self)
        own = "CaptureConfig"
        require(self.matching in ("auto", "sequential", "exhaustive"), own,
                f"matching must be auto, sequential or exhaustive, got {self.matching!r}")
        require(self.camera_mode in ("auto", "single", "per_image"), own,
                f"camera_mode must be auto, single or per_image, got {self.camera_mode!r}")
        supported = (*COLMAP_PINHOLE_MODELS, *COLMAP_DISTORTED_MODELS)
        require(self.camera_model in supported, own, f"camera_model must be one of {supported}, got {self.camera_model!r}")
        require(self.num_threads == -1 or self.num_threads >= 1, own,
                f"num_threads must be -1 (all cores) or >= 1, got {self.num_threads}")
        require(self.sequential_overlap >= 1, own, f"sequential_overlap must be >= 1, got {self.sequential_overlap}")
        require(self.max_image_size >= 64, own, f"max_image_size must be >= 64, got {self.max_image_size}")
        require(self.max_num_features >= 64, own, f"max_num_features must be >= 64, got {self.max_num_features}")
        require(0.0 < self.init_min_tri_angle < 90.0, own,
                f"init_min_tri_angle must be in (0, 90), got {self.init_min_tri_angle}")
        require(0.0 <= self.min_registered_fraction <= 1.0, own,
                f"min_registered_fraction must be in [0, 1], got {self.min_registered_fraction}")
        require(self.video_every >= 1, own, f"video_every must be >= 1, got {self.video_every}")
        require(self.video_max_frames is None or self.video_max_frames >= MIN_IMAGES, own,
                f"video_max_frames must be None or >= {MIN_IMAGES}, got {self.video_max_frames}")
        require(self.video_max_size is None or self.video_max_size >= 64, own,
                f"video_max_size must be None or >= 64, got {self.video_max_size}")


@dataclass
class CaptureResult:
    """What :func:`capture` returns: where the model is, how many images registered, and how long it took."""

    out_dir: Path
    model_dir: Path
    images_dir: Path
    num_images: int
    num_registered: int
    unregistered: list[str]
    num_points: int
    seconds: dict[str, float]

    @property
    def registered_fraction(self) -> float:
        return self.num_registered / max(self.num_images, 1)


# ---------------------------------------------------------------------------------------------- inputs
def list_images(folder: PathLike) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"image folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def iter_video_frames(video: PathLike, start: int = 0, stop: int = 0, *,
                      progress: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """(index, [H, W, 3] uint8 BGR) of frames [start, stop) of ``video`` (stop 0 = to the end). A missing file is
    a MissingFileError; one that cannot be opened, or gives no frame in the range, a CorruptFileError."""
    video = Path(video)
    if not video.is_file():
        raise MissingFileError(f"video not found: {video}")
    cap = cv2.VideoCapture(str(video))
    try:
        if not cap.isOpened():
            raise CorruptFileError(f"cannot decode video {video} (not a video, or a codec OpenCV's FFmpeg lacks)")
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        seen = 0
        with tqdm(total=total, desc=f"decoding {video.name}", unit="frame", disable=not progress, leave=False) as bar:
            index = 0
            while stop == 0 or index < stop:
                ok, frame = cap.read()
                if not ok:
                    break
                bar.update()
                if index >= start:
                    seen += 1
                    yield index, frame
                index += 1
    finally:
        cap.release()
    if not seen:
        raise CorruptFileError(f"video {video}: no frame could be decoded in [{start}, {stop or 'end'})")


def fit_max_side(img: np.ndarray, max_side: int | None) -> np.ndarray:
    """``img`` downscaled (area) so its longer side is at most ``max_side``; unchanged if it already is (or None)."""
    if max_side is None or max(img.shape[:2]) <= max_side:
        return img
    s = max_side / max(img.shape[:2])
    return cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)


def extract_video_frames(video: PathLike, out_dir: PathLike, *, every: int = 1, max_frames: int | None = None,
                         max_size: int | None = None, progress: bool = True) -> list[Path]:
    """Decode ``video`` into ``out_dir/00000.jpg, ...`` (every ``every``-th frame, at most ``max_frames``,
    the longest side at most ``max_size``). A file that cannot be decoded is a CorruptFileError."""
    out_dir = Path(out_dir)
    paths: list[Path] = []
    for index, frame in iter_video_frames(video, progress=progress):
        if index % every:
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{len(paths):05d}.jpg"
        if not cv2.imwrite(str(path), fit_max_side(frame, max_size), [cv2.IMWRITE_JPEG_QUALITY, 95]):
            raise FileFormatError(f"cannot write frame {path}")
        paths.append(path)
        if max_frames is not None and len(paths) >= max_frames:
            break
    return paths


def _image_sizes(paths: list[Path], progress: bool) -> dict[Path, tuple[int, int]]:
    sizes = {}
    for p in tqdm(paths, desc="checking images", disable=not progress, leave=False):
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise CorruptFileError(f"cannot decode image {p} (corrupt or unsupported format)")
        sizes[p] = (img.shape[1], img.shape[0])
    return sizes


# ---------------------------------------------------------------------------------------------- SfM
def _prepare_output(out_dir: Path) -> Path:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileFormatError(f"output folder {out_dir} exists and is not empty; choose a new one or remove it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))


def capture(source: PathLike, out_dir: PathLike, config: CaptureConfig | None = None, *,
            progress: bool = True) -> CaptureResult:
    """Poses, lens and sparse points for a video or a folder of images, by COLMAP structure from motion.

    Raises MissingFileError / CorruptFileError for a missing source, an undecodable video or image;
    InvalidInputError for fewer than 3 images; ShapeMismatchError for mixed sizes with ``camera_mode="single"``;
    ReconstructionFailedError when no model is found or fewer than ``min_registered_fraction`` of the images
    register (saying how many did). Nothing is left in ``out_dir`` unless it succeeds.
    """
    import pycolmap

    config = config or CaptureConfig()
    source, out_dir = Path(source), Path(out_dir)
    if not source.exists():
        raise MissingFileError(f"capture source not found: {source}")
    is_video = source.is_file()
    if is_video and source.suffix.lower() not in VIDEO_SUFFIXES:
        raise InvalidInputError(f"{source} is neither a folder of images nor a video ({', '.join(VIDEO_SUFFIXES)})")
    work = _prepare_output(out_dir)
    seconds: dict[str, float] = {}
    glog_level = pycolmap.logging.minloglevel
    if not log.isEnabledFor(logging.DEBUG):  # COLMAP's per-image lines and solver warnings drown the bars
        pycolmap.logging.minloglevel = pycolmap.logging.ERROR
    try:
        t0 = time.perf_counter()
        if is_video:
            paths = extract_video_frames(source, work / "images", every=config.video_every,
                                         max_frames=config.video_max_frames, max_size=config.video_max_size,
                                         progress=progress)
            images_dir = work / "images"
        else:
            paths = list_images(source)
            images_dir = source.resolve()
        if len(paths) < MIN_IMAGES:
            raise InvalidInputError(f"{source}: structure from motion needs at least {MIN_IMAGES} images, got "
                                    f"{len(paths)}")
        sizes = _image_sizes(paths, progress)
        mixed = len(set(sizes.values())) > 1
        if mixed and config.camera_mode == "single":
            raise ShapeMismatchError(f"{source}: images have several sizes {sorted(set(sizes.values()))} but "
                                     "camera_mode='single' needs one; use camera_mode='per_image'")
        single = config.camera_mode == "single" or (config.camera_mode == "auto" and not mixed)
        seconds["decode"] = time.perf_counter() - t0

        pycolmap.set_random_seed(config.seed)
        threads = config.num_threads if config.num_threads > 0 else (os.cpu_count() or 1)
        database = work / "database.db"
        stages = tqdm(total=3, desc="structure from motion: features", disable=not progress, leave=False)
        t0 = time.perf_counter()
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = config.camera_model
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.num_threads = threads
        extraction.max_image_size = config.max_image_size
        extraction.sift.max_num_features = config.max_num_features
        names = [p.name for p in paths]
        pycolmap.extract_features(database, images_dir, image_names=names,
                                  camera_mode=pycolmap.CameraMode.SINGLE if single else pycolmap.CameraMode.PER_IMAGE,
                                  reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu)
        seconds["features"] = time.perf_counter() - t0
        stages.update()

        t0 = time.perf_counter()
        sequential = config.matching == "sequential" or (config.matching == "auto" and (is_video or len(paths) > 60))
        stages.set_description(f"structure from motion: {'sequential' if sequential else 'exhaustive'} matching")
        matching = pycolmap.FeatureMatchingOptions()
        matching.num_threads = threads
        if sequential:
            pairing = pycolmap.SequentialPairingOptions()
            pairing.overlap = config.sequential_overlap
            pycolmap.match_sequential(database, matching_options=matching, pairing_options=pairing,
                                      device=pycolmap.Device.cpu)
        else:
            pycolmap.match_exhaustive(database, matching_options=matching, device=pycolmap.Device.cpu)
        seconds["matching"] = time.perf_counter() - t0
        stages.update()

        t0 = time.perf_counter()
        stages.set_description("structure from motion: mapping")
        mapper = pycolmap.IncrementalPipelineOptions()
        mapper.num_threads = threads
        mapper.random_seed = config.seed
        mapper.mapper.init_min_tri_angle = config.init_min_tri_angle
        registered_bar = tqdm(total=len(paths), desc="mapping images", disable=not progress, leave=False)
        models = pycolmap.incremental_mapping(database, images_dir, work / "sparse_all", options=mapper,
                                              next_image_callback=lambda: registered_bar.update())
        registered_bar.close()
        seconds["mapping"] = time.perf_counter() - t0
        stages.update()
        stages.close()
        if not models:
            raise ReconstructionFailedError(f"{source}: structure from motion found no model: no pair of the "
                                            f"{len(paths)} images had enough matches with parallax to start")
        best = max(models.values(), key=lambda r: r.num_reg_images())
        registered = {best.images[i].name for i in best.reg_image_ids()}
        need = max(MIN_IMAGES, round(config.min_registered_fraction * len(paths)))
        if len(registered) < need:
            raise ReconstructionFailedError(
                f"{source}: only {len(registered)} of {len(paths)} images registered in the largest model "
                f"({len(models)} model(s) found); need at least {need} "
                f"(min_registered_fraction={config.min_registered_fraction})"
            )
        (work / "sparse" / "0").mkdir(parents=True)
        best.write_binary(str(work / "sparse" / "0"))
        shutil.rmtree(work / "sparse_all")
        result = CaptureResult(out_dir=out_dir, model_dir=out_dir / "sparse" / "0",
                               images_dir=out_dir / "images" if is_video else images_dir, num_images=len(paths),
                               num_registered=len(registered), unregistered=sorted(set(names) - registered),
                               num_points=best.num_points3D(), seconds=seconds)
        write_text_atomic(work / "capture.json", json.dumps({
            "source": str(source.resolve()), "video": is_video,
            "images_dir": "images" if is_video else str(images_dir), "num_images": len(paths),
            "num_registered": len(registered), "unregistered": result.unregistered, "num_points": result.num_points,
            "num_models": len(models), "seconds": seconds, "config": config.to_dict(),
        }, indent=2))
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.chmod(work, 0o777 & ~current_umask())  # mkdtemp makes it private
        os.replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        pycolmap.logging.minloglevel = glog_level
    log.info("capture %s: %d of %d images registered, %d points", source, result.num_registered, len(paths),
             result.num_points)
    return result


def load_capture(out_dir: PathLike, downscale: int = 1, *, max_views: int | None = None,
                 progress: bool = True) -> PosedImages:
    """The registered images of a :func:`capture` folder, undistorted, with their poses and sparse points."""
    from scene_tools.loaders import load_colmap

    out_dir = Path(out_dir)
    meta_path = out_dir / "capture.json"
    if not meta_path.is_file():
        raise MissingFileError(f"{out_dir} is not a capture folder (no capture.json); run `simharmony capture` first")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        images_dir = out_dir / meta["images_dir"] if meta["video"] else Path(meta["images_dir"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CorruptFileError(f"cannot read {meta_path}: {e!r}") from e
    return load_colmap(out_dir / "sparse" / "0", images_dir=images_dir, downscale=downscale, max_views=max_views,
                       progress=progress)


# ---------------------------------------------------------------------------------------------- metric frame
def align_to_ground(images: PosedImages, camera_height_m: float = 1.5, *, seed: int = 0) -> tuple[PosedImages, dict]:
    """Move a structure-from-motion capture (arbitrary orientation and scale) into the project's street frame:
    z up, the road at z = 0 under the first camera, x along the first camera's view, metres.

    A first up comes from the camera path, since a vehicle drives on its road: the normal of the path's
    plane when it turns, else the cameras' mean up axis made perpendicular to the direction of travel (for
    a camera that does not move, that mean alone). The road is then the plane with most sparse points below
    the cameras (RANSAC, normal within 15 degrees of that up), whose normal becomes up; the scale makes the
    cameras' median height above it ``camera_height_m``, the one assumption (1.5 m suits a car's windscreen
    camera). Structure from motion on a forward-moving camera
    pins the focal length loosely, so this scale is approximate. Needs the capture's sparse points.
    Returns the moved capture and ``{"scale", "up", "first_up_from", "camera_height_sfm", "ground_inliers"}``.
    """
    if images.points is None or len(images.points) < 20:
        raise InvalidInputError("align_to_ground needs the capture's sparse points (at least 20)")
    if not (camera_height_m > 0):
        raise InvalidInputError(f"camera_height_m must be positive, got {camera_height_m}")
    poses, pts = images.trajectory.poses, images.points.astype(np.float64)
    cams = poses[:, :3, 3]
    up = -poses[:, :3, 1].mean(0)  # OpenCV cameras: y points down
    up /= np.linalg.norm(up)
    centre = cams.mean(0)
    _, sv, axes = np.linalg.svd(cams - centre, full_matrices=False)
    sv = np.concatenate([sv, np.zeros(3 - len(sv))])
    spread_scene = np.median(np.linalg.norm(pts - centre, axis=1))
    up_from = "camera axes"
    if len(cams) >= 3 and sv[0] > 1e-3 * spread_scene * np.sqrt(len(cams)):  # the cameras move
        if sv[1] > 0.2 * sv[0] and sv[2] < 0.2 * sv[1]:  # a turning, planar path: its normal
            normal = axes[2] if axes[2] @ up > 0 else -axes[2]
            up, up_from = normal, "path plane"
        else:  # a straight path: the mean camera up, perpendicular to travel
            travel = axes[0]
            up = up - (up @ travel) * travel
            up, up_from = up / np.linalg.norm(up), "camera axes, perpendicular to travel"
    cam_heights = (cams - centre) @ up
    below = pts[(pts - centre) @ up < cam_heights.min()]
    if len(below) < 10:
        raise ReconstructionFailedError("no sparse points below the cameras: cannot find the road to set the scale")
    rng = np.random.default_rng(seed)
    tol = 0.03 * np.median(np.abs((below - centre) @ up))
    best, best_in = None, None
    for _ in range(500):  # RANSAC: the plane with most points, its normal within 15 degrees of up
        a, b, c = below[rng.choice(len(below), 3, replace=False)]
        n = np.cross(b - a, c - a)
        if np.linalg.norm(n) < 1e-12:
            continue
        n = n / np.linalg.norm(n) * (1 if n @ up > 0 else -1)
        if n @ up < np.cos(np.deg2rad(15.0)):
            continue
        inliers = np.abs((below - a) @ n) < tol
        if best_in is None or inliers.sum() > best_in.sum():
            best, best_in = n, inliers
    if best is None or best_in.sum() < 10:
        raise ReconstructionFailedError("could not fit a road plane to the sparse points below the cameras")
    ground = below[best_in]
    road_point = ground.mean(0)
    up = np.linalg.svd(ground - road_point)[2][-1]  # least-squares refit on the inliers
    up = up if up @ best > 0 else -up
    cam_heights = (cams - road_point) @ up
    cam_height = float(np.median(cam_heights))
    if cam_height <= 0:
        raise ReconstructionFailedError("the road plane found is not below the cameras")
    scale = camera_height_m / cam_height
    fwd = poses[0, :3, 2] - (poses[0, :3, 2] @ up) * up
    if np.linalg.norm(fwd) < 1e-6:
        raise ReconstructionFailedError("the first camera looks straight up or down: no forward direction")
    fwd /= np.linalg.norm(fwd)
    R = np.stack([fwd, np.cross(up, fwd), up])  # rows: new x, y, z in old coordinates
    origin = cams[0] - cam_heights[0] * up  # the road under the first camera

    def move(x: np.ndarray) -> np.ndarray:
        return scale * (x - origin) @ R.T

    new_poses = poses.copy()
    new_poses[:, :3, :3] = R @ poses[:, :3, :3]
    new_poses[:, :3, 3] = move(cams)
    t = images.trajectory
    moved = PosedImages(images.images, type(t)(new_poses, t.intrinsics, t.times, t.frame_intrinsics, t.cameras),
                        images.masks, None if images.depths is None else images.depths * np.float32(scale),
                        images.instance_ids, move(pts).astype(np.float32), images.point_colors, images.names)
    return moved, {"scale": float(scale), "up": up.tolist(), "first_up_from": up_from, "camera_height_sfm": cam_height,
                   "ground_inliers": int(best_in.sum())}


__all__ = ["CaptureConfig", "CaptureResult", "align_to_ground", "capture", "extract_video_frames", "fit_max_side",
           "iter_video_frames", "list_images", "load_capture"]
