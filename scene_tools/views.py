"""``PosedImages``: the one container passed between capture loaders, the street renderer and reconstruction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scene_tools.cameras import Trajectory
from simharmony.errors import InvalidInputError, NonFiniteError, ShapeMismatchError


def resize_image(arr: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """[H, W(, C)] -> ``size`` = (w, h): area-averaged, or nearest for depths and ids (int32 kept exact)."""
    import cv2

    if arr.shape[1] == size[0] and arr.shape[0] == size[1]:
        return arr
    src = arr.astype(np.float32) if arr.dtype == np.int32 else arr  # cv2.resize has no int32
    out = cv2.resize(src, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)
    return out.astype(arr.dtype, copy=False)


@dataclass
class PosedImages:
    """Images with their cameras.

    - ``images``       [N, H, W, 3] float32 sRGB in [0, 1]
    - ``trajectory``   N poses (camera-to-world, OpenCV) and intrinsics of size W x H (per frame for a rig)
    - ``masks``        [N, H, W] float32 in [0, 1], optional: pixels to fit (1) or ignore (0)
    - ``depths``       [N, H, W] float32 z-depth in metres, optional; inf where nothing was hit
    - ``instance_ids`` [N, H, W] int32, optional; 0 is background
    - ``points``       [P, 3] float32 sparse world points for initialisation, optional (``point_colors`` [P, 3])
    """

    images: np.ndarray
    trajectory: Trajectory
    masks: np.ndarray | None = None
    depths: np.ndarray | None = None
    instance_ids: np.ndarray | None = None
    points: np.ndarray | None = None
    point_colors: np.ndarray | None = None
    names: list[str] | None = None

    def __post_init__(self) -> None:
        imgs = np.asarray(self.images)
        if imgs.dtype == np.uint8:
            imgs = imgs.astype(np.float32) / 255.0
        self.images = imgs.astype(np.float32, copy=False)
        if self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ShapeMismatchError(f"images must be [N, H, W, 3], got {list(self.images.shape)}")
        n, h, w, _ = self.images.shape
        if n != len(self.trajectory):
            raise ShapeMismatchError(f"{n} images but {len(self.trajectory)} camera poses")
        intr = self.trajectory.intrinsics
        if (intr.width, intr.height) != (w, h):
            raise ShapeMismatchError(f"images are {w}x{h} but intrinsics say {intr.width}x{intr.height}")
        if not np.all(np.isfinite(self.images)):
            raise NonFiniteError("images contain NaN or inf")
        for name, dtype in (("masks", np.float32), ("depths", np.float32), ("instance_ids", np.int32)):
            v = getattr(self, name)
            if v is None:
                continue
            v = np.asarray(v).astype(dtype, copy=False)
            if v.shape != (n, h, w):
                raise ShapeMismatchError(f"{name} must be [{n}, {h}, {w}], got {list(v.shape)}")
            setattr(self, name, v)
        if self.instance_ids is not None and self.instance_ids.size and self.instance_ids.min() < 0:
            bad = int(np.argmax((self.instance_ids < 0).reshape(n, -1).any(1)))
            raise InvalidInputError(f"instance_ids must be >= 0 (0 = background); view {bad} has "
                                    f"{int(self.instance_ids.min())}")
        if self.points is not None:
            self.points = np.asarray(self.points, dtype=np.float32).reshape(-1, 3)
            if self.point_colors is not None:
                self.point_colors = np.asarray(self.point_colors, dtype=np.float32).reshape(-1, 3)
                if len(self.point_colors) != len(self.points):
                    raise ShapeMismatchError("points and point_colors differ in length")
        if self.names is not None and len(self.names) != n:
            raise InvalidInputError(f"{len(self.names)} names for {n} images")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def height(self) -> int:
        return self.images.shape[1]

    @property
    def width(self) -> int:
        return self.images.shape[2]

    def downscaled(self, factor: int) -> PosedImages:
        """The same views at 1/``factor`` size: images and masks area-averaged, depths and ids nearest-sampled."""
        if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
            raise InvalidInputError(f"downscale factor must be a positive integer, got {factor!r}")
        if factor == 1:
            return self
        size = (max(1, round(self.width / factor)), max(1, round(self.height / factor)))

        def each(a: np.ndarray | None, nearest: bool = False) -> np.ndarray | None:
            return None if a is None else np.stack([resize_image(x, size, nearest) for x in a])

        traj = self.trajectory.resized(*size)
        return PosedImages(each(self.images), traj, each(self.masks), each(self.depths, True),
                           each(self.instance_ids, True), self.points, self.point_colors, self.names)

    def subset(self, idx) -> PosedImages:
        """A subset of views by index array, slice or boolean mask."""
        idx = np.arange(len(self))[idx]
        pick = lambda a: None if a is None else a[idx]
        return PosedImages(
            self.images[idx], self.trajectory[idx], pick(self.masks), pick(self.depths), pick(self.instance_ids),
            self.points, self.point_colors, None if self.names is None else [self.names[i] for i in idx],
        )
