"""Pinhole cameras, poses and trajectories.

Conventions used everywhere in the project:

- World frame: z up. Street scenes run along +x, with +y to the left of a car driving along +x.
- Poses are camera-to-world 4x4 matrices in the OpenCV camera convention
  (x right, y down, z forward). ``viewmats`` are their inverses (world-to-camera), as gsplat expects.
- Intrinsics are pixel units with the pixel-centre convention of gsplat/OpenCV: pixel (u, v) covers
  [u, u+1) and its centre is u+0.5.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from simharmony.errors import InvalidCameraError, NonFiniteError, ShapeMismatchError
from simharmony.utils.checks import MAX_IMAGE_SIDE
from simharmony.utils.config import Config

ORTHONORMAL_TOL = 1e-4


@dataclass(frozen=True)
class Intrinsics(Config):
    """Pinhole intrinsics in pixels for an image of ``width`` x ``height``."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        for name in ("fx", "fy", "cx", "cy"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise InvalidCameraError(f"intrinsics {name}={v!r} is not a finite number")
        for name in ("width", "height"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not float(v).is_integer() or v <= 0:
                raise InvalidCameraError(f"image size must be positive integers, got {name}={v!r}")
        if max(self.width, self.height) > MAX_IMAGE_SIDE:  # renders are limited further (MAX_IMAGE_PIXELS)
            raise InvalidCameraError(f"image size {self.width}x{self.height} is over {MAX_IMAGE_SIDE} pixels on a side")
        if self.fx <= 0 or self.fy <= 0:
            raise InvalidCameraError(f"focal lengths must be positive, got fx={self.fx}, fy={self.fy}")

    @classmethod
    def from_fov(cls, fov_x_deg: float, width: int, height: int) -> Intrinsics:
        """Square pixels, principal point at the image centre, horizontal field of view in degrees."""
        if not 0 < fov_x_deg < 180:
            raise InvalidCameraError(f"horizontal field of view must be in (0, 180) degrees, got {fov_x_deg}")
        f = 0.5 * width / np.tan(np.deg2rad(fov_x_deg) / 2)
        return cls(float(f), float(f), width / 2.0, height / 2.0, int(width), int(height))

    @classmethod
    def from_matrix(cls, K: np.ndarray, width: int, height: int) -> Intrinsics:
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3):
            raise ShapeMismatchError(f"intrinsic matrix must be 3x3, got shape {K.shape}")
        return cls(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), int(width), int(height))

    @property
    def K(self) -> np.ndarray:
        """[3, 3] float64 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def fov_x_deg(self) -> float:
        return float(np.rad2deg(2 * np.arctan(0.5 * self.width / self.fx)))

    def scaled(self, factor: float) -> Intrinsics:
        """Intrinsics of the same camera at ``factor`` times the resolution."""
        if not (isinstance(factor, (int, float, np.floating, np.integer)) and np.isfinite(factor) and factor > 0):
            raise InvalidCameraError(f"scale factor must be a positive finite number, got {factor!r}")
        return self.resized(round(self.width * factor), round(self.height * factor))

    def resized(self, width: int, height: int) -> Intrinsics:
        """Intrinsics of the same camera with its image resampled to ``width`` x ``height`` (axes scale apart)."""
        if (width, height) == (self.width, self.height):
            return self
        if width < 1 or height < 1:
            raise InvalidCameraError(f"resampling the {self.width}x{self.height} image to {width}x{height} leaves no "
                                     "pixels (downscale less)")
        sx, sy = width / self.width, height / self.height
        return Intrinsics(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, int(width), int(height))


def check_pose(c2w: np.ndarray, name: str = "pose") -> np.ndarray:
    """Validate one camera-to-world matrix and return it as float64 [4, 4].

    Accepts [4, 4] or [3, 4]. Raises if it is not finite, its rotation is not orthonormal with
    determinant +1 (tolerance 1e-4), or its last row is not [0, 0, 0, 1].
    """
    m = np.asarray(c2w, dtype=np.float64)
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        raise ShapeMismatchError(f"{name} must be a 4x4 or 3x4 matrix, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise NonFiniteError(f"{name} contains NaN or inf")
    if not np.allclose(m[3], [0, 0, 0, 1], atol=ORTHONORMAL_TOL):
        raise InvalidCameraError(f"{name} last row must be [0, 0, 0, 1], got {m[3].tolist()}")
    R = m[:3, :3]
    err = np.abs(R.T @ R - np.eye(3)).max()
    if err > ORTHONORMAL_TOL:
        raise InvalidCameraError(f"{name} rotation is not orthonormal (max |R^T R - I| = {err:.2e})")
    if np.linalg.det(R) < 0:
        raise InvalidCameraError(f"{name} rotation has determinant -1 (a reflection, not a rotation)")
    return m


def check_poses(c2w: np.ndarray, name: str = "poses") -> np.ndarray:
    """Validate a stack of camera-to-world matrices: [N, 4, 4] (or [N, 3, 4]) -> float64 [N, 4, 4]."""
    arr = np.asarray(c2w, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[1:] not in ((4, 4), (3, 4)):
        raise ShapeMismatchError(f"{name} must have shape [N, 4, 4], got {arr.shape}")
    if len(arr) == 0:
        raise InvalidCameraError(f"{name} is empty")
    return np.stack([check_pose(p, f"{name}[{i}]") for i, p in enumerate(arr)])


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world [4, 4] (OpenCV convention) at ``eye`` looking at ``target``."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    forward = target - eye
    n = np.linalg.norm(forward)
    if n < 1e-12:
        raise InvalidCameraError("look_at: eye and target coincide")
    forward /= n
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:
        raise InvalidCameraError("look_at: viewing direction is parallel to the up vector")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, down, forward, eye
    return m


def opengl_to_opencv(c2w: np.ndarray) -> np.ndarray:
    """Convert camera-to-world poses from OpenGL/nerfstudio (x right, y up, z back) to OpenCV. Self-inverse."""
    out = np.array(c2w, dtype=np.float64, copy=True)
    out[..., :3, 1:3] *= -1
    return out


opencv_to_opengl = opengl_to_opencv


@dataclass
class Trajectory:
    """A camera path: ``poses`` [N, 4, 4] camera-to-world (OpenCV), ``intrinsics``, ``times`` [N] seconds.

    A capture from a camera rig has several cameras: ``frame_intrinsics`` then holds each frame's camera
    (all of one image size, which is ``intrinsics``'s, the first frame's; ``None`` when they are all equal)
    and ``cameras`` names each frame's camera. Single-camera trajectories leave both ``None``.
    """

    poses: np.ndarray
    intrinsics: Intrinsics
    times: np.ndarray | None = None
    frame_intrinsics: tuple[Intrinsics, ...] | None = None
    cameras: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.poses = check_poses(self.poses)
        n = len(self.poses)
        if self.times is None:
            self.times = np.arange(n, dtype=np.float64) / 10.0
        self.times = np.asarray(self.times, dtype=np.float64)
        if self.times.shape != (n,):
            raise ShapeMismatchError(f"times must have shape [{n}], got {self.times.shape}")
        if self.frame_intrinsics is not None:
            fi = tuple(self.frame_intrinsics)
            if len(fi) != n or not all(isinstance(k, Intrinsics) for k in fi):
                raise InvalidCameraError(f"frame_intrinsics must be {n} Intrinsics, one per pose")
            bad = [i for i, k in enumerate(fi) if (k.width, k.height) != (self.intrinsics.width, self.intrinsics.height)]
            if bad:
                raise ShapeMismatchError(
                    f"frame {bad[0]}'s camera is {fi[bad[0]].width}x{fi[bad[0]].height} but the trajectory's images "
                    f"are {self.intrinsics.width}x{self.intrinsics.height}; every camera of a rig must give one size"
                )
            self.frame_intrinsics = None if all(k == self.intrinsics for k in fi) else fi
        if self.cameras is not None:
            self.cameras = tuple(str(c) for c in self.cameras)
            if len(self.cameras) != n:
                raise InvalidCameraError(f"cameras must name {n} frames, got {len(self.cameras)} names")

    def intrinsics_at(self, i: int) -> Intrinsics:
        """The camera of frame ``i``."""
        if not -len(self) <= i < len(self):
            raise InvalidCameraError(f"frame {i} is out of range for a trajectory of {len(self)} frames")
        return self.intrinsics if self.frame_intrinsics is None else self.frame_intrinsics[i]

    @property
    def Ks(self) -> np.ndarray:
        """[N, 3, 3] float64 intrinsic matrices, one per frame."""
        if self.frame_intrinsics is None:
            return np.repeat(self.intrinsics.K[None], len(self), 0)
        return np.stack([k.K for k in self.frame_intrinsics])

    @property
    def camera_names(self) -> tuple[str, ...]:
        """Each frame's camera name (one camera, unnamed: ``"camera"``)."""
        return self.cameras if self.cameras is not None else ("camera",) * len(self)

    def camera_groups(self) -> list[tuple[str, list[int]]]:
        """[(camera name, frame indices)] per camera, in order of first appearance."""
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(self.camera_names):
            groups.setdefault(name, []).append(i)
        return list(groups.items())

    def by_camera(self) -> dict[str, Trajectory]:
        """One single-camera trajectory per camera of a rig."""
        out = {}
        for name, idx in self.camera_groups():
            fi = tuple(self.intrinsics_at(i) for i in idx)
            out[name] = Trajectory(self.poses[idx], fi[0], self.times[idx], fi)
        return out

    def scaled(self, factor: float) -> Trajectory:
        """The same trajectory with every camera at ``factor`` times the resolution."""
        k = self.intrinsics.scaled(factor)
        return self.resized(k.width, k.height)

    def resized(self, width: int, height: int) -> Trajectory:
        """The same trajectory with every camera's image resampled to ``width`` x ``height``."""
        if (width, height) == (self.intrinsics.width, self.intrinsics.height):
            return self
        fi = None if self.frame_intrinsics is None else tuple(k.resized(width, height) for k in self.frame_intrinsics)
        return Trajectory(self.poses, self.intrinsics.resized(width, height), self.times, fi, self.cameras)

    def __len__(self) -> int:
        return len(self.poses)

    def __getitem__(self, idx) -> Trajectory:
        idx = np.atleast_1d(np.arange(len(self))[idx])
        fi = None if self.frame_intrinsics is None else tuple(self.frame_intrinsics[i] for i in idx)
        cams = None if self.cameras is None else tuple(self.cameras[i] for i in idx)
        return Trajectory(self.poses[idx], self.intrinsics_at(int(idx[0])), self.times[idx], fi, cams)

    @property
    def viewmats(self) -> np.ndarray:
        """[N, 4, 4] world-to-camera matrices."""
        return np.linalg.inv(self.poses)

    @property
    def positions(self) -> np.ndarray:
        """[N, 3] camera centres in world coordinates."""
        return self.poses[:, :3, 3].copy()

    def shifted_laterally(self, meters: float) -> Trajectory:
        """The same path moved sideways by ``meters`` (positive = to the driver's left).

        "Sideways" is the camera's right axis projected onto the ground plane (z up), so pitch and
        roll do not tilt the shift. Orientation is unchanged, as for a vehicle in the next lane.
        """
        right = self.poses[:, :3, 0].copy()
        right[:, 2] = 0.0
        norm = np.linalg.norm(right, axis=1, keepdims=True)
        if np.any(norm < 1e-9):
            raise InvalidCameraError("cannot shift laterally: a camera looks straight up or down")
        left = -right / norm
        poses = self.poses.copy()
        poses[:, :3, 3] += meters * left
        return Trajectory(poses, self.intrinsics, self.times.copy(), self.frame_intrinsics, self.cameras)

    def to_dict(self) -> dict:
        out = {
            "intrinsics": self.intrinsics.to_dict(),
            "times": self.times.tolist(),
            "poses": [p[:3].tolist() for p in self.poses],  # 3x4 rows; last row is implied
        }
        if self.frame_intrinsics is not None:
            out["frame_intrinsics"] = [k.to_dict() for k in self.frame_intrinsics]
        if self.cameras is not None:
            out["cameras"] = list(self.cameras)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Trajectory:
        try:
            intr = Intrinsics.from_dict(data["intrinsics"])
            poses = np.asarray(data["poses"], dtype=np.float64)
            times = np.asarray(data["times"], dtype=np.float64)
            fi = data.get("frame_intrinsics")
            fi = None if fi is None else tuple(Intrinsics.from_dict(k) for k in fi)
            cams = data.get("cameras")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InvalidCameraError(f"trajectory data is incomplete or malformed: {e!r}") from e
        if poses.ndim == 3 and poses.shape[1:] == (3, 4):
            poses = np.concatenate([poses, np.tile([[[0.0, 0.0, 0.0, 1.0]]], (len(poses), 1, 1))], axis=1)
        return cls(poses, intr, times, fi, cams)

    def save(self, path) -> None:
        from simharmony.utils.io import save_yaml

        save_yaml(path, self.to_dict())

    @classmethod
    def load(cls, path) -> Trajectory:
        from simharmony.utils.io import load_yaml

        return cls.from_dict(load_yaml(path))


def straight_trajectory(
    intrinsics: Intrinsics,
    num_frames: int,
    start=(0.0, 0.0, 1.6),
    speed_mps: float = 8.0,
    fps: float = 10.0,
    heading_deg: float = 0.0,
    pitch_deg: float = -3.0,
    lateral_sway_m: float = 0.0,
) -> Trajectory:
    """An ego camera driving along ``heading_deg`` (0 = +x) at ``speed_mps`` with optional gentle sway."""
    if num_frames < 1:
        raise InvalidCameraError(f"num_frames must be >= 1, got {num_frames}")
    times = np.arange(num_frames) / fps
    h = np.deg2rad(heading_deg)
    fwd = np.array([np.cos(h), np.sin(h), 0.0])
    left = np.array([-np.sin(h), np.cos(h), 0.0])
    poses = []
    for t in times:
        sway = lateral_sway_m * np.sin(2 * np.pi * t / max(times[-1], 1e-6)) if num_frames > 1 else 0.0
        eye = np.asarray(start, dtype=np.float64) + fwd * speed_mps * t + left * sway
        look = fwd * np.cos(np.deg2rad(pitch_deg)) + np.array([0, 0, np.sin(np.deg2rad(pitch_deg))])
        poses.append(look_at(eye, eye + look))
    return Trajectory(np.stack(poses), intrinsics, times)
