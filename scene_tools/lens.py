"""Lens distortion: parse the models captures come with, and undistort images once, on load.

Supported: OpenCV's radial-tangential model with its rational extension, which covers COLMAP's
SIMPLE_RADIAL, RADIAL, OPENCV and FULL_OPENCV cameras and the ``k1, k2, k3, p1, p2`` keys of a
nerfstudio / instant-ngp ``transforms.json``. Fisheye models are refused with a clear error: they need
a wider-than-pinhole output that the rest of the project (pinhole rendering) cannot use.

:class:`Undistorter` maps a distorted camera to a pinhole camera of the same image size whose field of
view holds only valid pixels (no black borders), and resamples images, masks, depths and instance ids.
"""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass

import cv2
import numpy as np

from scene_tools.cameras import Intrinsics
from simharmony.errors import CorruptFileError, InvalidCameraError

# COLMAP camera models: name -> number of parameters
COLMAP_PINHOLE_MODELS = {"SIMPLE_PINHOLE": 3, "PINHOLE": 4}
COLMAP_DISTORTED_MODELS = {"SIMPLE_RADIAL": 4, "RADIAL": 5, "OPENCV": 8, "FULL_OPENCV": 12}
COLMAP_FISHEYE_MODELS = ("SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "OPENCV_FISHEYE", "THIN_PRISM_FISHEYE",
                         "RAD_TAN_THIN_PRISM_FISHEYE", "FOV")


@dataclass(frozen=True)
class LensDistortion:
    """OpenCV distortion coefficients (radial k1..k3, tangential p1, p2, rational k4..k6); all zero = pinhole."""

    k1: float = 0.0
    k2: float = 0.0
    p1: float = 0.0
    p2: float = 0.0
    k3: float = 0.0
    k4: float = 0.0
    k5: float = 0.0
    k6: float = 0.0

    def __post_init__(self) -> None:
        for name, v in zip(("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6"), astuple(self)):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
                raise InvalidCameraError(f"distortion coefficient {name} must be a number, got {v!r}")
        bad = {k: v for k, v in zip(("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6"), astuple(self))
               if not math.isfinite(v)}
        if bad:
            raise InvalidCameraError(f"distortion coefficients must be finite, got {bad}")

    @property
    def is_zero(self) -> bool:
        return not any(astuple(self))

    @property
    def coefficients(self) -> np.ndarray:
        """[8] float64 in OpenCV's order (k1, k2, p1, p2, k3, k4, k5, k6)."""
        return np.array(astuple(self), dtype=np.float64)


def colmap_camera(model: str, width: int, height: int, params, where: str) -> tuple[Intrinsics, LensDistortion]:
    """(pinhole part, distortion) of a COLMAP camera; unknown and fisheye models raise InvalidCameraError."""
    try:
        params = [float(p) for p in params]
    except (TypeError, ValueError) as e:
        raise CorruptFileError(f"{where}: camera parameters must be numbers, got {list(params)[:12]}") from e
    if model in COLMAP_FISHEYE_MODELS:
        raise InvalidCameraError(
            f"{where}: camera model {model} is a fisheye/FOV lens, which is not supported (only pinhole and "
            "radial-tangential lenses: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV)"
        )
    need = COLMAP_PINHOLE_MODELS.get(model, COLMAP_DISTORTED_MODELS.get(model))
    if need is None:
        raise InvalidCameraError(
            f"{where}: unknown camera model {model!r}; supported: "
            f"{', '.join([*COLMAP_PINHOLE_MODELS, *COLMAP_DISTORTED_MODELS])}"
        )
    if len(params) != need:
        raise CorruptFileError(f"{where}: camera model {model} needs {need} parameters, got {len(params)}")
    if model in ("PINHOLE", "OPENCV", "FULL_OPENCV"):
        fx, fy, cx, cy, rest = *params[:4], params[4:]
    else:  # SIMPLE_PINHOLE, SIMPLE_RADIAL, RADIAL: f cx cy [k...]
        fx, fy, cx, cy, rest = params[0], params[0], params[1], params[2], params[3:]
    if model == "SIMPLE_RADIAL":
        dist = LensDistortion(k1=rest[0])
    elif model == "RADIAL":
        dist = LensDistortion(k1=rest[0], k2=rest[1])
    elif model in ("OPENCV", "FULL_OPENCV"):  # k1 k2 p1 p2 [k3 k4 k5 k6]: OpenCV's own order
        dist = LensDistortion(*rest)
    else:
        dist = LensDistortion()
    if not (fx > 0 and fy > 0 and width > 0 and height > 0):
        raise InvalidCameraError(f"{where}: a camera needs positive focal lengths and size, got f=({fx}, {fy}), "
                                 f"{width}x{height}")
    return Intrinsics(fx, fy, cx, cy, int(width), int(height)), dist


class Undistorter:
    """Resample images of a distorted camera into a pinhole camera of the same size.

    The pinhole camera keeps the principal point at the image centre and has the largest focal length for
    which every output pixel sees through the lens (OpenCV's ``getOptimalNewCameraMatrix`` with alpha 0), so
    no output pixel is invented. Intrinsics use the +0.5 pixel-centre convention of the rest of the project;
    OpenCV's maps put pixel centres at integers, hence the half-pixel shifts.
    """

    def __init__(self, intrinsics: Intrinsics, distortion: LensDistortion) -> None:
        self.distorted = intrinsics
        self.distortion = distortion
        size = (intrinsics.width, intrinsics.height)
        K = intrinsics.K.copy()
        K[:2, 2] -= 0.5
        d = distortion.coefficients
        new_K, _ = cv2.getOptimalNewCameraMatrix(K, d, size, 0.0, size, centerPrincipalPoint=True)
        if not np.all(np.isfinite(new_K)) or new_K[0, 0] <= 0 or new_K[1, 1] <= 0:
            raise InvalidCameraError(f"cannot undistort camera {intrinsics} with {distortion}: the lens model has no "
                                     "valid pinhole view (distortion coefficients too large?)")
        self._map_x, self._map_y = cv2.initUndistortRectifyMap(K, d, None, new_K, size, cv2.CV_32FC1)
        inside = ((self._map_x >= -0.5) & (self._map_x <= size[0] - 0.5)
                  & (self._map_y >= -0.5) & (self._map_y <= size[1] - 0.5))
        if inside.mean() < 0.99:
            raise InvalidCameraError(
                f"undistorting camera {intrinsics} with {distortion} would leave {100 * (1 - inside.mean()):.1f}% of "
                "pixels without a source; the distortion model is not monotonic over the image"
            )
        self.intrinsics = Intrinsics(float(new_K[0, 0]), float(new_K[1, 1]), float(new_K[0, 2]) + 0.5,
                                     float(new_K[1, 2]) + 0.5, intrinsics.width, intrinsics.height)

    def __call__(self, image: np.ndarray, nearest: bool = False) -> np.ndarray:
        """Undistort one [H, W] or [H, W, C] array (bilinear; ``nearest`` for depths and instance ids)."""
        if image.shape[:2] != (self.distorted.height, self.distorted.width):
            raise InvalidCameraError(f"image is {image.shape[1]}x{image.shape[0]}, the camera "
                                     f"{self.distorted.width}x{self.distorted.height}")
        src = image
        if src.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
            src = src.astype(np.float32)
        out = cv2.remap(src, self._map_x, self._map_y, cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)
        return out.astype(image.dtype, copy=False)
