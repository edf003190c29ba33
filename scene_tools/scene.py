"""Scenes with inserted assets, and rendering along a trajectory with G-buffers.

A :class:`Scene` is a background :class:`~scene_tools.gaussians.GaussianScene` (a reconstructed street)
plus assets from the databank, each moved along an :class:`ObjectTrack`. ``Scene.render(trajectory)``
and the streaming ``Scene.render_frame(pose)`` return one :class:`FrameRender` per camera:

=================  ==============  =============================================================
field              shape / dtype   meaning
=================  ==============  =============================================================
``rgb``            [H, W, 3] f32   colour in [0, 1], composited over ``RenderConfig.background_color``
``depth``          [H, W] f32      expected z-depth (metres along the camera axis) where
                                   ``alpha >= depth_alpha_threshold`` (0.5), ``inf`` elsewhere
``alpha``          [H, W] f32      accumulated opacity
``inserted_mask``  [H, W] f32      accumulated opacity of inserted assets only (the harmonizer's mask)
``instance_ids``   [H, W] i32      dominant contributor: the instance with the largest accumulated
                                   weight, 0 when the background (id 0) or empty space (1 - alpha) wins
``flow``           [H, W, 2] f32   backward flow t -> t-1 in pixels (x, y), from depth, camera poses and
                                   the motion of inserted objects; zeros for the first frame
``flow_valid``     [H, W] bool     pixels whose flow is trustworthy (not occluded, finite depth);
                                   all False for the first frame
``shadow_hint``    [H, W] f32      where the sun is blocked at a surface rendered lit, in [0, 1]: the
                   or None         inserted assets' cast shadows, and the scene's shadow on the assets
                                   (:func:`scene_tools.shadows.shadow_hint`); None when the scene has
                                   no sun (:attr:`Scene.sun`), no inserted asset, or
                                   ``RenderConfig.shadow_hints`` is off
=================  ==============  =============================================================

Everything is produced by one rasterize call per frame: colour channels are
``[r, g, b, inserted_weight, onehot(instance_1), ..., onehot(instance_M)]`` with ``render_mode="RGB+ED"``.
The one-hot channels cover the instances visible in the frame (Gaussians culled with a 3-sigma margin),
at most ``RenderConfig.max_instance_channels`` (32) of them; if more are visible, the extra instances are
rendered in additional one-hot-only passes of up to 32 channels each (``instance_overflow="passes"``) or
an error is raised (``"error"``).

View-dependent colour (SH) of inserted assets is evaluated with view directions rotated into the asset's
local frame, so rotating an asset rotates its appearance with it.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from scene_tools.assets import Asset, AssetBank
from scene_tools.cameras import Intrinsics, Trajectory, check_pose, check_poses
from scene_tools.gaussians import CHECKSUM_KEY, GaussianScene, sh_degree_from_k, tensors_checksum, verify_checksum
from scene_tools.sh import eval_sh
from scene_tools.shadows import Caster, Sun, shadow_hint
from scene_tools.transforms import matrix_to_quat, quat_multiply, quat_to_matrix
from simharmony.errors import (
    ConfigError,
    CorruptFileError,
    InvalidCameraError,
    InvalidInputError,
    InvalidSceneError,
    MissingFileError,
    NonFiniteError,
    ShapeMismatchError,
    UnknownAssetError,
)
from simharmony.utils.config import Config
from simharmony.utils.io import PathLike, load_tensors, load_yaml, save_tensors, save_yaml

SCENE_FORMAT = "simharmony.scene"
SCENE_FORMAT_VERSION = 1
INSTANCE_CHANNEL_CAP = 32


# ---------------------------------------------------------------------------------------------- config
@dataclass
class RenderConfig(Config):
    """How :class:`Scene` renders frames (round-trips to YAML)."""

    background_color: tuple[float, float, float] = (0.0, 0.0, 0.0)
    near_plane: float = 0.01
    far_plane: float = 1e10
    eps2d: float = 0.3
    depth_alpha_threshold: float = 0.5  # depth is inf where alpha is below this
    max_instance_channels: int = INSTANCE_CHANNEL_CAP  # one-hot instance channels in the main pass
    instance_overflow: Literal["passes", "error"] = "passes"
    backend: str = "auto"
    frame_dt: float = 0.1  # time step assumed by render_frame(time=None)
    flow_rel_tol: float = 0.03  # relative depth tolerance of the flow occlusion test
    clamp_rgb: bool = True
    shadow_hints: bool = True  # compute FrameRender.shadow_hint when the scene has a sun and inserted assets
    scene_shadows_on_assets: bool = True  # the hint also covers where the background shades an inserted asset

    def __post_init__(self) -> None:
        if len(self.background_color) != 3 or not all(math.isfinite(c) for c in self.background_color):
            raise ConfigError(f"background_color must be three finite numbers, got {self.background_color!r}")
        if not 0 < self.near_plane < self.far_plane:
            raise ConfigError(f"need 0 < near_plane < far_plane, got {self.near_plane}, {self.far_plane}")
        if not 0.0 < self.depth_alpha_threshold <= 1.0:
            raise ConfigError(f"depth_alpha_threshold must be in (0, 1], got {self.depth_alpha_threshold}")
        if self.max_instance_channels < 1:
            raise ConfigError(f"max_instance_channels must be >= 1, got {self.max_instance_channels}")
        if self.instance_overflow not in ("passes", "error"):
            raise ConfigError(f"instance_overflow must be 'passes' or 'error', got {self.instance_overflow!r}")
        if not self.frame_dt > 0:
            raise ConfigError(f"frame_dt must be positive, got {self.frame_dt}")


# ---------------------------------------------------------------------------------------------- rotations
def _rot_to_quat(R: np.ndarray) -> np.ndarray:
    return matrix_to_quat(torch.as_tensor(R, dtype=torch.float64)).numpy()


def _quat_to_rot(q: np.ndarray) -> np.ndarray:
    return quat_to_matrix(torch.as_tensor(q, dtype=torch.float64)).numpy()


def slerp(q0: np.ndarray, q1: np.ndarray, u: float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions (w, x, y, z) along the shorter arc, u in [0, 1]."""
    q0 = q0 / np.linalg.norm(q0)
    q1 = q1 / np.linalg.norm(q1)
    d = float(np.dot(q0, q1))
    if d < 0.0:  # q and -q are the same rotation; take the short way round
        q1, d = -q1, -d
    if d > 0.9995:  # nearly parallel: normalised lerp avoids dividing by sin(~0)
        q = q0 + u * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = math.acos(min(d, 1.0))
    s = math.sin(theta)
    return (math.sin((1 - u) * theta) * q0 + math.sin(u * theta) * q1) / s


def yaw_pose(x: float, y: float, z: float, yaw: float) -> np.ndarray:
    """[4, 4] object-to-world pose at (x, y, z) facing ``yaw`` radians about +z (0 = +x)."""
    c, s = math.cos(yaw), math.sin(yaw)
    m = np.eye(4)
    m[:2, :2] = [[c, -s], [s, c]]
    m[:3, 3] = (x, y, z)
    return m


# ---------------------------------------------------------------------------------------------- tracks
@dataclass(eq=False)
class ObjectTrack:
    """An object's motion: ``times`` [T] seconds (strictly increasing) and ``poses`` [T, 4, 4] object-to-world.

    :meth:`pose_at` interpolates linearly in translation and by slerp in rotation, and holds the first /
    last pose outside [times[0], times[-1]].
    """

    times: np.ndarray
    poses: np.ndarray

    def __post_init__(self) -> None:
        self.poses = check_poses(self.poses, "track poses")
        self.times = np.asarray(self.times, dtype=np.float64).reshape(-1)
        if self.times.shape != (len(self.poses),):
            raise ShapeMismatchError(f"track has {len(self.poses)} poses but times has shape {list(self.times.shape)}")
        if not np.all(np.isfinite(self.times)):
            raise NonFiniteError("track times contain NaN or inf")
        if len(self.times) > 1 and not np.all(np.diff(self.times) > 0):
            raise InvalidInputError("track times must be strictly increasing")
        self._quats = np.stack([_rot_to_quat(p[:3, :3]) for p in self.poses])

    def __len__(self) -> int:
        return len(self.times)

    @classmethod
    def static(cls, pose: np.ndarray) -> ObjectTrack:
        """A track that stays at ``pose`` [4, 4] forever."""
        return cls(np.zeros(1), np.asarray(pose, dtype=np.float64)[None])

    @property
    def is_static(self) -> bool:
        return len(self) == 1 or bool(np.allclose(self.poses, self.poses[:1], atol=1e-9))

    def pose_at(self, t: float) -> np.ndarray:
        """Object-to-world [4, 4] float64 at time ``t`` (seconds)."""
        t = float(t)
        if not math.isfinite(t):
            raise NonFiniteError(f"time must be finite, got {t}")
        if len(self) == 1 or t <= self.times[0]:
            return self.poses[0].copy()
        if t >= self.times[-1]:
            return self.poses[-1].copy()
        i = int(np.searchsorted(self.times, t, side="right")) - 1
        u = (t - self.times[i]) / (self.times[i + 1] - self.times[i])
        out = np.eye(4)
        out[:3, :3] = _quat_to_rot(slerp(self._quats[i], self._quats[i + 1], u))
        out[:3, 3] = (1 - u) * self.poses[i, :3, 3] + u * self.poses[i + 1, :3, 3]
        return out

    def motion(self, t: float, t_prev: float) -> np.ndarray:
        """[4, 4] world transform taking the object's points at ``t`` to where they were at ``t_prev``."""
        return self.pose_at(t_prev) @ np.linalg.inv(self.pose_at(t))

    @classmethod
    def along_trajectory(
        cls,
        trajectory: Trajectory,
        lateral_offset_m: float,
        forward_offset_m: float = 0.0,
        ground_z: float = 0.0,
        speed_scale: float = 1.0,
    ) -> ObjectTrack:
        """An object driving on the road along the ego ``trajectory`` shifted sideways.

        The ego path is shifted by ``lateral_offset_m`` (positive = to the ego's left, as
        :meth:`Trajectory.shifted_laterally`; the paper inserts along a 3 m shift) and dropped onto the
        ground plane ``z = ground_z``. At the ego's time ``t_i`` the object is at arc length
        ``forward_offset_m + speed_scale * s_i`` along that path, where ``s_i`` is the arc length the shifted
        path has covered by frame i (so ``speed_scale=1`` keeps it level with the ego, 0 parks it). Beyond the
        path's ends it continues straight. It faces along the path's direction of motion (its local +x).
        """
        for name, v in (("lateral_offset_m", lateral_offset_m), ("forward_offset_m", forward_offset_m),
                        ("ground_z", ground_z), ("speed_scale", speed_scale)):
            if not math.isfinite(float(v)):
                raise NonFiniteError(f"{name} must be finite, got {v}")
        shifted = trajectory.shifted_laterally(float(lateral_offset_m))
        xy = shifted.positions[:, :2]
        seg = np.linalg.norm(np.diff(xy, axis=0), axis=1)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        target = float(forward_offset_m) + float(speed_scale) * s  # arc length of the object at each frame
        # knots of the path with strictly increasing arc length (a stopped ego repeats positions)
        keep = np.concatenate([[True], seg > 1e-6])
        ks, kxy = s[keep], xy[keep]
        if len(ks) < 2:  # the ego never moves: use its viewing direction on the ground
            fwd = shifted.poses[0, :3, 2].copy()
            fwd[2] = 0.0
            if np.linalg.norm(fwd) < 1e-9:
                raise InvalidCameraError("along_trajectory: ego does not move and looks straight up/down")
            fwd /= np.linalg.norm(fwd)
            yaw = math.atan2(fwd[1], fwd[0])
            pos = kxy[0][None] + target[:, None] * fwd[None, :2]
            poses = [yaw_pose(p[0], p[1], ground_z, yaw) for p in pos]
            return cls(np.asarray(trajectory.times), np.stack(poses))
        # heading at knots: central differences inside, one-sided at the ends; unwrapped for interpolation
        d = np.gradient(kxy, ks, axis=0)
        kyaw = np.unwrap(np.arctan2(d[:, 1], d[:, 0]))
        poses = []
        for a in target:
            if a <= ks[0]:
                e = kxy[1] - kxy[0]
                p = kxy[0] + (a - ks[0]) * e / np.linalg.norm(e)
                yaw = kyaw[0]
            elif a >= ks[-1]:
                e = kxy[-1] - kxy[-2]
                p = kxy[-1] + (a - ks[-1]) * e / np.linalg.norm(e)
                yaw = kyaw[-1]
            else:
                p = np.array([np.interp(a, ks, kxy[:, 0]), np.interp(a, ks, kxy[:, 1])])
                yaw = float(np.interp(a, ks, kyaw))
            poses.append(yaw_pose(p[0], p[1], ground_z, yaw))
        return cls(np.asarray(trajectory.times), np.stack(poses))


# ---------------------------------------------------------------------------------------------- SH
def eval_sh_colors(sh: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """RGB as gsplat computes it from SH: clamp_min(eval_sh(sh, dirs) + 0.5, 0).

    sh [N, K, 3], dirs [N, 3] viewing directions camera -> Gaussian (any length) -> [N, 3].
    """
    return (eval_sh(sh_degree_from_k(sh.shape[1]), dirs, sh) + 0.5).clamp_min(0.0)


# ---------------------------------------------------------------------------------------------- frames
@dataclass(eq=False)
class FrameRender:
    """One rendered frame with its G-buffers (see the module docstring for meanings and shapes).

    Tensors live on the scene's device; ``pose`` is camera-to-world [4, 4] float64 (OpenCV).
    """

    rgb: torch.Tensor
    depth: torch.Tensor
    alpha: torch.Tensor
    inserted_mask: torch.Tensor
    instance_ids: torch.Tensor
    flow: torch.Tensor
    flow_valid: torch.Tensor
    pose: np.ndarray
    intrinsics: Intrinsics
    time: float
    index: int
    shadow_hint: torch.Tensor | None = None

    @property
    def height(self) -> int:
        return self.rgb.shape[0]

    @property
    def width(self) -> int:
        return self.rgb.shape[1]


class StackedFrames(list):
    """A list of frames (each with ``pose`` and ``time``) whose per-frame fields named in ``STACKABLE``
    read as one stacked array: ``seq.<field>`` is ``seq.stack("<field>")``."""

    STACKABLE: tuple[str, ...] = ()

    def _stack(self, values: list):  # torch.stack or np.stack, by subclass
        raise NotImplementedError

    def stack(self, name: str):
        """Stack one field over frames: e.g. ``stack("depth")`` -> [N, H, W]."""
        if name not in self.STACKABLE:
            raise InvalidInputError(f"cannot stack {name!r}; stackable fields are {list(self.STACKABLE)}")
        if not self:
            raise InvalidInputError("the sequence is empty")
        return self._stack([getattr(f, name) for f in self])

    def __getattr__(self, name: str):
        if name in type(self).STACKABLE:
            return self.stack(name)
        raise AttributeError(name)

    @property
    def poses(self) -> np.ndarray:
        return np.stack([f.pose for f in self])

    @property
    def times(self) -> np.ndarray:
        return np.array([f.time for f in self])


class FrameSequence(StackedFrames):
    """A list of :class:`FrameRender` with stacking helpers: ``seq.rgb`` is [N, H, W, 3] (torch), and so on."""

    STACKABLE = ("rgb", "depth", "alpha", "inserted_mask", "instance_ids", "flow", "flow_valid")

    def _stack(self, values: list) -> torch.Tensor:
        return torch.stack(values)

    @property
    def trajectory(self) -> Trajectory:
        return Trajectory(self.poses, self[0].intrinsics, self.times, tuple(f.intrinsics for f in self))

    def to_posed_images(self):
        """A :class:`~scene_tools.views.PosedImages` (numpy) with rgb, depth and instance ids."""
        from scene_tools.views import PosedImages

        return PosedImages(
            self.rgb.cpu().numpy(), self.trajectory, depths=self.depth.cpu().numpy(),
            instance_ids=self.instance_ids.cpu().numpy(),
        )


# ---------------------------------------------------------------------------------------------- scene
@dataclass(eq=False)
class InsertedObject:
    """An asset placed in a scene: its instance id there, the asset, and the track it follows."""

    instance_id: int
    asset: Asset
    track: ObjectTrack


@dataclass
class _State:
    prev: FrameRender | None = None
    index: int = 0


class Scene:
    """A background Gaussian scene plus inserted assets; renders frames with G-buffers.

    ``intrinsics`` is the default camera for :meth:`render_frame` calls that give none. ``metadata["sun"]``
    ({azimuth_deg, elevation_deg}, :class:`~scene_tools.shadows.Sun`) is the scene's sun, which places the
    inserted assets' shadow hints; scenes of synthetic streets fall back to their ``metadata["lighting"]``.
    """

    def __init__(
        self,
        background: GaussianScene,
        *,
        name: str = "scene",
        metadata: dict[str, Any] | None = None,
        config: RenderConfig | None = None,
        intrinsics: Intrinsics | None = None,
    ) -> None:
        if not isinstance(background, GaussianScene):
            raise InvalidInputError(f"background must be a GaussianScene, got {type(background).__name__}")
        if intrinsics is not None and not isinstance(intrinsics, Intrinsics):
            raise InvalidCameraError(f"intrinsics must be an Intrinsics, got {type(intrinsics).__name__}")
        self.background = background
        self.name = str(name)
        self.metadata = dict(metadata or {})
        self.config = config if config is not None else RenderConfig()
        self.intrinsics = intrinsics
        self.objects: list[InsertedObject] = []
        self._state = _State()
        self._light_maps: dict = {}  # shadow_hint's cache of the assets' light views
        self._occluders: tuple[GaussianScene, Caster] | None = None
        Sun.from_metadata(self.metadata.get("sun"))  # a bad metadata["sun"] is named here, not mid-render

    @property
    def sun(self) -> Sun | None:
        """The scene's sun (z up, azimuth from +x towards +y), or None when unknown."""
        if self.metadata.get("sun") is not None:
            return Sun.from_metadata(self.metadata["sun"])
        light = self.metadata.get("lighting")
        elevation = light.get("sun_elevation_deg") if isinstance(light, dict) else None
        if isinstance(elevation, (int, float)) and elevation > 0 and "sun_azimuth_deg" in light:
            return Sun(light["sun_azimuth_deg"], elevation)
        return None

    @sun.setter
    def sun(self, value: Sun | dict | None) -> None:
        """Set (a Sun or {azimuth_deg, elevation_deg}) or forget (None) the sun; kept in ``metadata["sun"]``."""
        sun = Sun.from_metadata(value)
        if sun is None:
            self.metadata.pop("sun", None)
        else:
            self.metadata["sun"] = sun.to_dict()

    # ------------------------------------------------------------------ contents
    @property
    def device(self) -> torch.device:
        return self.background.device

    def _max_id(self) -> int:
        m = int(self.background.instance_ids.max()) if len(self.background) else 0
        for o in self.objects:
            m = max(m, o.instance_id)
        return m

    def insert(self, asset: Asset | str, track: ObjectTrack, *, bank: AssetBank | None = None) -> int:
        """Place ``asset`` (or an asset id looked up in ``bank``) on ``track``; returns its new instance id.

        Instance ids of inserted assets start above every id already in the scene.
        """
        if isinstance(asset, str):
            if bank is None:
                raise UnknownAssetError(f"asset {asset!r} given by id but no AssetBank to look it up in (pass bank=)")
            asset = bank.get(asset)
        if not isinstance(asset, Asset):
            raise InvalidInputError(f"insert expects an Asset or an asset id, got {type(asset).__name__}")
        if not isinstance(track, ObjectTrack):
            raise InvalidInputError(f"track must be an ObjectTrack, got {type(track).__name__}")
        if len(asset.gaussians) == 0:
            raise InvalidSceneError(f"asset {asset.id!r} has no Gaussians")
        if asset.gaussians.device != self.device:
            asset = Asset(asset.gaussians.to(self.device), asset.info, asset.mesh)
        iid = self._max_id() + 1
        self.objects.append(InsertedObject(iid, asset, track))
        return iid

    def remove(self, instance_id: int) -> None:
        """Take an inserted object out again (UnknownAssetError if no inserted object has that id)."""
        for i, o in enumerate(self.objects):
            if o.instance_id == int(instance_id):
                del self.objects[i]
                return
        raise UnknownAssetError(
            f"no inserted object with instance id {instance_id}; inserted ids: {[o.instance_id for o in self.objects]}"
        )

    @property
    def inserted_ids(self) -> list[int]:
        return [o.instance_id for o in self.objects]

    # ------------------------------------------------------------------ rendering
    def reset(self) -> None:
        """Forget the previous frame: the next :meth:`render_frame` starts a new sequence (no flow, index 0)."""
        self._state = _State()

    def render(self, trajectory: Trajectory, progress: bool = True) -> FrameSequence:
        """Render every pose of ``trajectory`` at its times; equals ``reset()`` then ``render_frame`` per pose.

        A rig's trajectory (several ``cameras``) is rendered camera by camera, each its own sequence; the
        frames come back in the trajectory's order.
        """
        if not isinstance(trajectory, Trajectory):
            raise InvalidInputError(f"render expects a Trajectory, got {type(trajectory).__name__}")
        frames: list[FrameRender | None] = [None] * len(trajectory)
        bar = tqdm(total=len(trajectory), desc=f"render {self.name}", disable=not progress, leave=False)
        for _, idx in trajectory.camera_groups():  # a rig's cameras are separate sequences (flow within one)
            self.reset()
            for i in idx:
                frames[i] = self.render_frame(trajectory.poses[i], float(trajectory.times[i]), trajectory.intrinsics_at(i))
                bar.update()
        bar.close()
        return FrameSequence(frames)

    def render_frame(
        self, pose: np.ndarray, time: float | None = None, intrinsics: Intrinsics | None = None
    ) -> FrameRender:
        """Render one camera-to-world ``pose`` [4, 4] (OpenCV) at ``time`` seconds.

        ``time=None`` means the previous frame's time plus ``config.frame_dt`` (0 for the first frame);
        ``intrinsics=None`` means the previous frame's, else the scene's default. Flow is computed to the
        previous frame rendered since the last :meth:`reset`; the image size may not change in between.
        """
        pose = check_pose(pose, "camera pose")
        prev = self._state.prev
        if intrinsics is None:
            intrinsics = prev.intrinsics if prev is not None else self.intrinsics
        if intrinsics is None:
            raise InvalidCameraError("no intrinsics: pass intrinsics= or give the Scene default intrinsics")
        if not isinstance(intrinsics, Intrinsics):
            raise InvalidCameraError(f"intrinsics must be an Intrinsics, got {type(intrinsics).__name__}")
        if prev is not None and (prev.width, prev.height) != (intrinsics.width, intrinsics.height):
            raise ShapeMismatchError(
                f"image size changed from {prev.width}x{prev.height} to {intrinsics.width}x{intrinsics.height} "
                "within a sequence; flow needs equal sizes (call reset() to start a new sequence)"
            )
        if time is None:
            time = prev.time + self.config.frame_dt if prev is not None else 0.0
        time = float(time)
        if not math.isfinite(time):
            raise NonFiniteError(f"time must be finite, got {time}")

        bufs = self._rasterize_gbuffers(pose, intrinsics, time)
        h, w = intrinsics.height, intrinsics.width
        if prev is None:
            flow = torch.zeros(h, w, 2, dtype=torch.float32, device=self.device)
            valid = torch.zeros(h, w, dtype=torch.bool, device=self.device)
        else:
            flow, valid = self._flow(bufs, pose, intrinsics, time, prev)
        frame = FrameRender(
            rgb=bufs["rgb"], depth=bufs["depth"], alpha=bufs["alpha"], inserted_mask=bufs["inserted_mask"],
            instance_ids=bufs["instance_ids"], flow=flow, flow_valid=valid, pose=pose, intrinsics=intrinsics,
            time=time, index=self._state.index, shadow_hint=self._shadow_hint(bufs, pose, intrinsics, time),
        )
        self._state.prev = frame
        self._state.index += 1
        return frame

    def shadow_casters(self, time: float) -> list[Caster]:
        """The inserted assets as shadow casters at ``time``: each in its own frame, placed by its track, so a
        light view is reused while the sun keeps its direction relative to the asset (a parked car, a car
        driving straight)."""
        return [Caster(o.asset.gaussians.means, o.asset.gaussians.quats, o.asset.gaussians.scales,
                       o.asset.gaussians.opacities, pose=o.track.pose_at(time), key=o.asset.id) for o in self.objects]

    def _shadow_hint(self, bufs: dict[str, torch.Tensor], pose: np.ndarray, intr: Intrinsics, time: float) -> torch.Tensor | None:
        sun = self.sun
        if not (self.config.shadow_hints and self.objects and sun is not None):
            return None
        occluders = self.shadow_occluders() if self.config.scene_shadows_on_assets else None
        return shadow_hint(self.shadow_casters(time), sun, bufs["depth"], intr.K, pose, exclude=bufs["inserted_mask"],
                           cache=self._light_maps, occluders=occluders)

    def shadow_occluders(self) -> Caster:
        """The background Gaussians as what may shade an inserted asset (world space; kept while the
        background object stays the same)."""
        bg = self.background
        if self._occluders is None or self._occluders[0] is not bg:
            self._occluders = (bg, Caster(bg.means.detach(), bg.quats.detach(), bg.scales.detach(),
                                          bg.opacities.detach()))
            self._light_maps.clear()  # maps drawn from another background
        return self._occluders[1]

    def _world_gaussians(self, time: float, campos: torch.Tensor) -> dict[str, torch.Tensor]:
        """All Gaussians in world space at ``time`` with colours evaluated for camera centre ``campos`` [3]."""
        parts = []
        bg = self.background
        if len(bg):
            parts.append(dict(
                means=bg.means, quats=bg.quats, scales=bg.scales, opacities=bg.opacities,
                rgb=eval_sh_colors(bg.sh, bg.means - campos), ids=bg.instance_ids,
                inserted=torch.zeros(len(bg), device=self.device),
            ))
        for o in self.objects:
            g = o.asset.gaussians
            T = torch.as_tensor(o.track.pose_at(time), dtype=torch.float32, device=self.device)
            R, t = T[:3, :3], T[:3, 3]
            means = g.means @ R.T + t
            q = matrix_to_quat(R)[None].expand(len(g), 4)
            dirs_local = (means - campos) @ R  # R^T (mean - campos): view direction in the asset frame
            parts.append(dict(
                means=means, quats=quat_multiply(q, g.quats), scales=g.scales, opacities=g.opacities,
                rgb=eval_sh_colors(g.sh, dirs_local), ids=torch.full((len(g),), o.instance_id, dtype=torch.int32,
                                                                      device=self.device),
                inserted=torch.ones(len(g), device=self.device),
            ))
        if not parts:
            return {}
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _visible_instances(self, g: dict[str, torch.Tensor], viewmat: torch.Tensor, intr: Intrinsics) -> list[int]:
        """Instance ids (> 0) with at least one Gaussian within the image (3-sigma margin) in front of the camera."""
        ids = g["ids"]
        cand = ids > 0
        if not bool(cand.any()):
            return []
        m = g["means"][cand]
        pc = m @ viewmat[:3, :3].T + viewmat[:3, 3]
        z = pc[:, 2]
        front = z > self.config.near_plane
        zc = z.clamp_min(self.config.near_plane)
        u = intr.fx * pc[:, 0] / zc + intr.cx
        v = intr.fy * pc[:, 1] / zc + intr.cy
        r = 3.0 * max(intr.fx, intr.fy) * g["scales"][cand].max(dim=1).values / zc + 1.0
        inside = front & (u > -r) & (u < intr.width + r) & (v > -r) & (v < intr.height + r)
        return sorted(int(i) for i in torch.unique(ids[cand][inside]).tolist())

    def _rasterize_gbuffers(self, pose: np.ndarray, intr: Intrinsics, time: float) -> dict[str, torch.Tensor]:
        from scene_tools.rasterize import rasterize

        cfg, dev = self.config, self.device
        h, w = intr.height, intr.width
        bg_rgb = torch.tensor(cfg.background_color, dtype=torch.float32, device=dev)
        c2w = torch.as_tensor(pose, dtype=torch.float32, device=dev)
        viewmat = torch.as_tensor(np.linalg.inv(pose), dtype=torch.float32, device=dev)
        g = self._world_gaussians(time, c2w[:3, 3])
        if not g:  # nothing to draw: empty background, no inserted assets
            return dict(
                rgb=bg_rgb.expand(h, w, 3).clone(), depth=torch.full((h, w), math.inf, device=dev),
                alpha=torch.zeros(h, w, device=dev), inserted_mask=torch.zeros(h, w, device=dev),
                instance_ids=torch.zeros(h, w, dtype=torch.int32, device=dev),
            )
        inst = self._visible_instances(g, viewmat, intr)
        cap = cfg.max_instance_channels
        if len(inst) > cap and cfg.instance_overflow == "error":
            raise InvalidSceneError(
                f"{len(inst)} instances visible but at most {cap} one-hot instance channels are rendered "
                "(RenderConfig.max_instance_channels); raise it or use instance_overflow='passes'"
            )
        chunks = [inst[i:i + cap] for i in range(0, len(inst), cap)] or [[]]
        Ks = torch.as_tensor(intr.K, dtype=torch.float32, device=dev)[None]

        def onehot(ids_chunk: list[int]) -> torch.Tensor:
            table = torch.tensor(ids_chunk, dtype=torch.int32, device=dev)
            return (g["ids"][:, None] == table[None]).float()  # [N, M]

        def call(colors: torch.Tensor, backgrounds: torch.Tensor, mode: str):
            return rasterize(
                g["means"], g["quats"], g["scales"], g["opacities"], colors, viewmat[None], Ks, w, h,
                near_plane=cfg.near_plane, far_plane=cfg.far_plane, eps2d=cfg.eps2d, backgrounds=backgrounds,
                render_mode=mode, backend=cfg.backend,
            )

        # main pass: rgb | inserted weight | one-hot of the first chunk | expected depth (appended by ED)
        colors = torch.cat([g["rgb"], g["inserted"][:, None], onehot(chunks[0])], dim=1)
        backgrounds = torch.cat([bg_rgb, torch.zeros(colors.shape[1] - 3, device=dev)])[None]
        out, alphas, _ = call(colors, backgrounds, "RGB+ED")
        out, alpha = out[0], alphas[0, ..., 0]
        weights = [out[..., 4:4 + len(chunks[0])]]
        for ch in chunks[1:]:  # overflow: extra one-hot-only passes
            extra, _, _ = call(onehot(ch), torch.zeros(1, len(ch), device=dev), "RGB")
            weights.append(extra[0])
        wts = torch.cat(weights, dim=-1)  # [H, W, M]

        rgb = out[..., :3].clamp(0.0, 1.0) if cfg.clamp_rgb else out[..., :3]
        ed = out[..., -1]
        depth = torch.where(alpha >= cfg.depth_alpha_threshold, ed, torch.full_like(ed, math.inf))
        inserted_mask = out[..., 3].clamp(0.0, 1.0)
        if inst:
            best_w, best_k = wts.max(dim=-1)
            zero_w = torch.maximum(1.0 - alpha, alpha - wts.sum(-1))  # empty space or background (id 0) wins
            table = torch.tensor(inst, dtype=torch.int32, device=dev)
            ids = torch.where(best_w > zero_w, table[best_k], torch.zeros_like(table[best_k]))
        else:
            ids = torch.zeros(h, w, dtype=torch.int32, device=dev)
        return dict(rgb=rgb.contiguous(), depth=depth.contiguous(), alpha=alpha.contiguous(),
                    inserted_mask=inserted_mask.contiguous(), instance_ids=ids.to(torch.int32).contiguous())

    def _flow(self, bufs, pose: np.ndarray, intr: Intrinsics, time: float, prev: FrameRender):
        from scene_tools.flow import geometric_flow

        motion = {}
        for o in self.objects:
            if not o.track.is_static:
                motion[o.instance_id] = torch.as_tensor(o.track.motion(time, prev.time), dtype=torch.float64)
        flow, valid = geometric_flow(
            bufs["depth"], torch.as_tensor(intr.K, dtype=torch.float64), torch.as_tensor(pose, dtype=torch.float64),
            torch.as_tensor(prev.pose, dtype=torch.float64), instance_ids_t=bufs["instance_ids"],
            object_motion=motion or None, depth_prev=prev.depth, rel_tol=self.config.flow_rel_tol,
        )
        return (torch.as_tensor(flow, dtype=torch.float32, device=self.device),
                torch.as_tensor(valid, dtype=torch.bool, device=self.device))

    # ------------------------------------------------------------------ storage
    def save(self, folder: PathLike) -> None:
        """Write the scene to ``folder`` (replaced as a whole, atomically; existing non-scene folders are refused).

        Layout: ``scene.yaml`` (name, metadata, render config, intrinsics, objects), ``background.safetensors``,
        ``assets/<asset id>.safetensors``, ``tracks.safetensors`` (``track_<iid>_times`` / ``track_<iid>_poses``).
        Every .safetensors file carries a sha256 checksum of its tensors, verified by :meth:`load` (scenes
        saved before tracks and backgrounds had one still load).
        """
        folder = Path(folder)
        if folder.exists():
            if not folder.is_dir():
                raise InvalidInputError(f"{folder} exists and is not a folder")
            if any(folder.iterdir()) and not (folder / "scene.yaml").is_file():
                raise InvalidInputError(f"refusing to overwrite {folder}: it is not empty and holds no scene.yaml")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
        try:
            self._write(tmp)
            os.chmod(tmp, 0o755)  # mkdtemp makes 0700 folders
            if folder.exists():
                old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
                os.replace(folder, old)
                os.replace(tmp, folder)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _write(self, folder: Path) -> None:
        self.background.save(folder / "background.safetensors")
        tracks, objects, written = {}, [], set()
        for o in self.objects:
            if o.asset.id not in written:
                o.asset.save(folder / "assets" / f"{o.asset.id}.safetensors")
                written.add(o.asset.id)
            tracks[f"track_{o.instance_id}_times"] = torch.as_tensor(o.track.times, dtype=torch.float64)
            tracks[f"track_{o.instance_id}_poses"] = torch.as_tensor(o.track.poses, dtype=torch.float64)
            objects.append({"instance_id": o.instance_id, "asset_id": o.asset.id,
                            "asset_file": f"assets/{o.asset.id}.safetensors"})
        if tracks:
            save_tensors(folder / "tracks.safetensors", tracks,
                         {"format": "simharmony.tracks", CHECKSUM_KEY: tensors_checksum(tracks)})
        data = {
            "format": SCENE_FORMAT,
            "version": SCENE_FORMAT_VERSION,
            "name": self.name,
            "metadata": self.metadata,
            "render": self.config.to_dict(),
            "intrinsics": self.intrinsics.to_dict() if self.intrinsics is not None else None,
            "objects": objects,
        }
        try:
            save_yaml(folder / "scene.yaml", data)
        except Exception as e:  # yaml.RepresenterError for numpy values etc.
            raise InvalidInputError(f"scene metadata must be plain YAML data (str, numbers, lists, dicts): {e}") from e

    @classmethod
    def load(cls, folder: PathLike, device: str = "cpu") -> Scene:
        """Read a scene written by :meth:`save`; missing or corrupt files raise errors naming the file."""
        folder = Path(folder)
        if not folder.is_dir():
            raise MissingFileError(f"scene folder not found: {folder}")
        manifest = folder / "scene.yaml"
        data = load_yaml(manifest)
        if not isinstance(data, dict) or data.get("format") != SCENE_FORMAT:
            raise CorruptFileError(f"{manifest} is not a simharmony scene manifest (expected format {SCENE_FORMAT!r})")
        try:
            config = RenderConfig.from_dict(data.get("render") or {})
            intr = Intrinsics.from_dict(data["intrinsics"]) if data.get("intrinsics") else None
            objects = list(data.get("objects") or [])
        except (ValueError, TypeError) as e:
            raise CorruptFileError(f"{manifest}: invalid contents: {e}") from e
        background = GaussianScene.load(folder / "background.safetensors", device=device)
        scene = cls(background, name=str(data.get("name", folder.name)), metadata=data.get("metadata") or {},
                    config=config, intrinsics=intr)
        if objects:
            tracks, tmeta = load_tensors(folder / "tracks.safetensors")
            verify_checksum(folder / "tracks.safetensors", tracks, tmeta)
            assets: dict[str, Asset] = {}
            for entry in objects:
                try:
                    iid, aid, afile = int(entry["instance_id"]), str(entry["asset_id"]), str(entry["asset_file"])
                except (KeyError, TypeError, ValueError) as e:
                    raise CorruptFileError(f"{manifest}: bad object entry {entry!r}") from e
                if iid < 1:  # inserted objects get ids above the background's (>= 0)
                    raise CorruptFileError(f"{manifest}: object entry {entry!r} has instance id {iid}, expected >= 1")
                if aid not in assets:
                    assets[aid] = Asset.load(folder / afile, device=device)
                kt, kp = f"track_{iid}_times", f"track_{iid}_poses"
                if kt not in tracks or kp not in tracks:
                    raise CorruptFileError(f"{folder / 'tracks.safetensors'} lacks the track of instance {iid}")
                try:
                    track = ObjectTrack(tracks[kt].numpy(), tracks[kp].numpy())
                except ValueError as e:
                    raise CorruptFileError(
                        f"{folder / 'tracks.safetensors'}: track of instance {iid} invalid: {e}"
                    ) from e
                scene.objects.append(InsertedObject(iid, assets[aid], track))
        return scene


__all__ = [
    "FrameRender",
    "FrameSequence",
    "InsertedObject",
    "ObjectTrack",
    "RenderConfig",
    "Scene",
    "eval_sh_colors",
    "slerp",
    "yaw_pose",
]
