"""Procedural street layouts: the ground-truth scenes that ``scene_tools.pbr`` renders with Mitsuba 3.

A layout is pure geometry and materials (numpy + trimesh, no renderer import):

- ground, road, sidewalks, lane markings and buildings (static), a closing building at the far end;
- parked vehicles along both curbs and moving vehicles driving along the two lanes;
- pedestrian proxies on the sidewalks, some of them walking;
- the sun + sky lighting and the ego camera trajectory.

World frame (as everywhere in the project): z up, the street runs along +x from x=0 to x=length, +y is
to the left of a car driving along +x. The road is centred on y=0 with its surface at z=0; the right
(ego) lane is centred at y=-lane_width/2.

Everything is deterministic given ``StreetConfig.seed`` (one ``np.random.default_rng`` drawn in a fixed
order). Colours are *linear* RGB reflectances in [0, 1] (what Mitsuba's ``rgb`` textures expect).

Entry point: :func:`generate_street`.
"""

from __future__ import annotations

import colorsys
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import trimesh

from scene_tools.cameras import Intrinsics, Trajectory, straight_trajectory
from simharmony.errors import ConfigError, InvalidInputError
from simharmony.utils.config import Config, all_finite, require

CATEGORIES = ("ground", "road", "sidewalk", "lane_marking", "building", "vehicle", "pedestrian")
FOREGROUND_CATEGORIES = ("vehicle", "pedestrian")
RGB = tuple[float, float, float]


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


def _check_range_pair(owner: str, name: str, pair, lo: float = 0.0, strict: bool = True) -> None:
    a, b = pair
    require(all_finite(a, b), owner, f"{name}={pair} must be finite")
    ok = (a > lo) if strict else (a >= lo)
    require(ok and b >= a, owner, f"{name}={tuple(pair)} must satisfy {lo} {'<' if strict else '<='} min <= max")


def _check_rgb(owner: str, name: str, rgb) -> None:
    require(len(rgb) == 3 and all_finite(*rgb) and min(rgb) >= 0, owner, f"{name}={rgb} must be 3 finite values >= 0")


def sun_direction(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """[3] unit vector from the scene towards the sun (z up; azimuth from +x towards +y)."""
    az, el = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
    return np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])


@dataclass
class LightingConfig(Config):
    """Sun (a directional emitter) plus a uniform sky (a constant environment emitter).

    ``sun_azimuth_deg`` is measured in the ground plane from +x towards +y (the direction *towards* the
    sun); ``sun_elevation_deg`` above the horizon. ``sun_intensity`` scales ``sun_color`` into the
    irradiance on a surface facing the sun; ``sky_intensity`` scales ``sky_color`` into the sky radiance.
    """

    sun_azimuth_deg: float = 150.0
    sun_elevation_deg: float = 40.0
    sun_color: RGB = (1.0, 0.94, 0.85)
    sun_intensity: float = 3.0
    sky_color: RGB = (0.6, 0.75, 1.0)
    sky_intensity: float = 0.5

    def __post_init__(self) -> None:
        o = "LightingConfig"
        require(all_finite(self.sun_azimuth_deg), o, "sun_azimuth_deg must be finite")
        require(
            all_finite(self.sun_elevation_deg) and -90.0 <= self.sun_elevation_deg <= 90.0,
            o,
            f"sun_elevation_deg={self.sun_elevation_deg} must be in [-90, 90]",
        )
        _check_rgb(o, "sun_color", self.sun_color)
        _check_rgb(o, "sky_color", self.sky_color)
        for name in ("sun_intensity", "sky_intensity"):
            v = getattr(self, name)
            require(all_finite(v) and v >= 0, o, f"{name}={v} must be finite and >= 0")

    def sun_direction(self) -> np.ndarray:
        """[3] unit vector from the scene towards the sun."""
        return sun_direction(self.sun_azimuth_deg, self.sun_elevation_deg)

    def sun_irradiance(self) -> np.ndarray:
        """[3] linear RGB irradiance on a surface facing the sun."""
        return self.sun_intensity * np.asarray(self.sun_color, dtype=np.float64)

    def sky_radiance(self) -> np.ndarray:
        """[3] linear RGB radiance of the (uniform) sky."""
        return self.sky_intensity * np.asarray(self.sky_color, dtype=np.float64)


def random_lighting(seed: int) -> LightingConfig:
    """A plausible random daylight (sun anywhere above 15 degrees, warm-to-white sun, bluish sky), deterministic."""
    rng = np.random.default_rng(seed)
    warm = rng.uniform(0.0, 1.0)
    sun = (1.0, 1.0 - 0.15 * warm, 1.0 - 0.35 * warm)
    blue = rng.uniform(0.0, 1.0)
    sky = (0.75 - 0.2 * blue, 0.82 - 0.1 * blue, 1.0)
    return LightingConfig(
        sun_azimuth_deg=float(rng.uniform(0.0, 360.0)),
        sun_elevation_deg=float(rng.uniform(15.0, 70.0)),
        sun_color=tuple(float(c) for c in sun),
        sun_intensity=float(rng.uniform(1.5, 4.5)),
        sky_color=tuple(float(c) for c in sky),
        sky_intensity=float(rng.uniform(0.25, 0.7)),
    )


@dataclass
class CameraConfig(Config):
    """Pinhole ego camera: image size in pixels and horizontal field of view in degrees."""

    width: int = 256
    height: int = 144
    fov_x_deg: float = 75.0

    def __post_init__(self) -> None:
        o = "CameraConfig"
        require(
            self.width >= 1 and self.height >= 1, o, f"image size must be positive, got {self.width}x{self.height}"
        )
        require(
            all_finite(self.fov_x_deg) and 0 < self.fov_x_deg < 180, o, f"fov_x_deg={self.fov_x_deg} must be in (0, 180)"
        )

    def intrinsics(self) -> Intrinsics:
        return Intrinsics.from_fov(self.fov_x_deg, self.width, self.height)


@dataclass
class EgoConfig(Config):
    """Ego trajectory: a straight drive along the right lane at ``speed_mps``, sampled at ``fps``."""

    num_frames: int = 40
    speed_mps: float = 6.0
    fps: float = 10.0
    camera_height: float = 1.6
    start_x: float = 4.0
    pitch_deg: float = -3.0

    def __post_init__(self) -> None:
        o = "EgoConfig"
        require(self.num_frames >= 1, o, f"num_frames={self.num_frames} must be >= 1")
        require(all_finite(self.speed_mps) and self.speed_mps >= 0, o, f"speed_mps={self.speed_mps} must be >= 0")
        require(all_finite(self.fps) and self.fps > 0, o, f"fps={self.fps} must be > 0")
        require(
            all_finite(self.camera_height) and self.camera_height > 0, o, f"camera_height={self.camera_height} must be > 0"
        )
        require(all_finite(self.start_x), o, "start_x must be finite")
        require(
            all_finite(self.pitch_deg) and -80 < self.pitch_deg < 80, o, f"pitch_deg={self.pitch_deg} must be in (-80, 80)"
        )


@dataclass
class BuildingConfig(Config):
    """Rows of box buildings on both sides (windows on the street facade) and one closing the far end."""

    width_range: tuple[float, float] = (6.0, 14.0)
    depth_range: tuple[float, float] = (8.0, 14.0)
    height_range: tuple[float, float] = (6.0, 20.0)
    setback_range: tuple[float, float] = (0.0, 1.5)
    gap_probability: float = 0.3
    gap_range: tuple[float, float] = (1.0, 3.0)
    windows: bool = True
    close_far_end: bool = True

    def __post_init__(self) -> None:
        o = "BuildingConfig"
        for name in ("width_range", "depth_range", "height_range", "gap_range"):
            _check_range_pair(o, name, getattr(self, name))
        _check_range_pair(o, "setback_range", self.setback_range, strict=False)
        require(0.0 <= self.gap_probability <= 1.0, o, f"gap_probability={self.gap_probability} must be in [0, 1]")


@dataclass
class VehicleConfig(Config):
    """Parked vehicles in the parking strips of both curbs and moving vehicles in both lanes.

    Moving vehicles in the ego lane start ahead of the camera and drive faster than it
    (``ego speed + ego_lane_speedup_range``); those in the opposite lane drive towards it.
    """

    num_parked: int = 6
    num_moving: int = 3
    opposite_speed_range: tuple[float, float] = (4.0, 9.0)
    ego_lane_speedup_range: tuple[float, float] = (0.5, 3.0)

    def __post_init__(self) -> None:
        o = "VehicleConfig"
        require(self.num_parked >= 0 and self.num_moving >= 0, o, "vehicle counts must be >= 0")
        _check_range_pair(o, "opposite_speed_range", self.opposite_speed_range)
        _check_range_pair(o, "ego_lane_speedup_range", self.ego_lane_speedup_range, strict=False)


@dataclass
class PedestrianConfig(Config):
    """Pedestrian proxies (legs, torso, head) on the sidewalks; a fraction of them walk along the street."""

    count: int = 6
    height_range: tuple[float, float] = (1.5, 1.95)
    walking_fraction: float = 0.5
    walking_speed_range: tuple[float, float] = (0.8, 1.6)

    def __post_init__(self) -> None:
        o = "PedestrianConfig"
        require(self.count >= 0, o, f"count={self.count} must be >= 0")
        _check_range_pair(o, "height_range", self.height_range)
        _check_range_pair(o, "walking_speed_range", self.walking_speed_range)
        require(0.0 <= self.walking_fraction <= 1.0, o, f"walking_fraction={self.walking_fraction} must be in [0, 1]")


@dataclass
class StreetConfig(Config):
    """Everything that defines a procedural street and how it is rendered by default.

    Road: ``road_width`` holds two driving lanes of ``lane_width`` around y=0 and a parking strip at each
    curb (``road_width/2 - lane_width`` wide). ``spp`` (samples per pixel, default 16), ``max_depth``
    (path length: 3 = direct light + one indirect bounce) and ``exposure`` are render defaults.
    The defaults are the demo street: ~60 m long, 256x144 images, 40 frames.
    """

    seed: int = 0
    length: float = 60.0
    road_width: float = 10.0
    lane_width: float = 3.0
    sidewalk_width: float = 2.5
    sidewalk_height: float = 0.15
    lane_markings: bool = True
    buildings: BuildingConfig = field(default_factory=BuildingConfig)
    vehicles: VehicleConfig = field(default_factory=VehicleConfig)
    pedestrians: PedestrianConfig = field(default_factory=PedestrianConfig)
    lighting: LightingConfig = field(default_factory=LightingConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    ego: EgoConfig = field(default_factory=EgoConfig)
    spp: int = 16
    max_depth: int = 3
    exposure: float = 1.0

    def __post_init__(self) -> None:
        o = "StreetConfig"
        require(
            isinstance(self.seed, (int, np.integer)) and self.seed >= 0, o, f"seed={self.seed} must be an integer >= 0"
        )
        require(all_finite(self.length) and self.length >= 10.0, o, f"length={self.length} must be >= 10 m")
        for name in ("road_width", "lane_width", "sidewalk_width"):
            v = getattr(self, name)
            require(all_finite(v) and v > 0, o, f"{name}={v} must be > 0")
        require(all_finite(self.sidewalk_height) and self.sidewalk_height >= 0, o, "sidewalk_height must be >= 0")
        require(
            self.road_width >= 2 * self.lane_width,
            o,
            f"road_width={self.road_width} must hold two lanes of lane_width={self.lane_width}",
        )
        require(self.spp >= 1, o, f"spp={self.spp} must be >= 1")
        require(self.max_depth >= 1, o, f"max_depth={self.max_depth} must be >= 1")
        require(all_finite(self.exposure) and self.exposure > 0, o, f"exposure={self.exposure} must be > 0")
        if self.vehicles.num_parked > 0:
            require(
                self.parking_width >= 2.0,
                o,
                f"parked vehicles need a parking strip >= 2 m, got road_width/2 - lane_width = "
                f"{self.parking_width:.2f}",
            )

    @property
    def parking_width(self) -> float:
        return self.road_width / 2 - self.lane_width

    @classmethod
    def tiny(cls, seed: int = 0, **overrides) -> StreetConfig:
        """A fast preset for tests: 30 m street, lower buildings, 48x32 images, 3 frames, 4 spp."""
        base = {
            "seed": seed,
            "length": 30.0,
            "buildings": BuildingConfig(height_range=(5.0, 12.0)),
            "vehicles": VehicleConfig(num_parked=3, num_moving=2),
            "pedestrians": PedestrianConfig(count=3),
            "camera": CameraConfig(width=48, height=32, fov_x_deg=75.0),
            "ego": EgoConfig(num_frames=3, speed_mps=6.0, fps=10.0),
            "spp": 4,
        }
        base.update(overrides)
        return cls(**base)


# --------------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------------


@dataclass
class MeshPart:
    """One material on one mesh. ``mesh`` is in the owning object's local frame; ``base_color`` is linear RGB."""

    name: str
    mesh: trimesh.Trimesh
    base_color: RGB
    roughness: float = 0.6
    metallic: float = 0.0


@dataclass
class SceneObject:
    """One instance of the street.

    - ``instance_id`` > 0, unique in the layout (0 means sky in rendered id maps)
    - ``parts``: meshes with materials, in the local frame
    - ``base_pose`` [4, 4] object-to-world at t=0; ``velocity`` [3] m/s in world, so that
      ``pose(t) = translate(velocity * t) @ base_pose`` (zero velocity = static)
    """

    instance_id: int
    name: str
    category: str
    parts: list[MeshPart]
    base_pose: np.ndarray
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(3))
    attributes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise InvalidInputError(f"object {self.name}: category {self.category!r} is not one of {CATEGORIES}")
        if int(self.instance_id) <= 0:
            raise InvalidInputError(f"object {self.name}: instance_id must be > 0, got {self.instance_id}")
        self.base_pose = np.asarray(self.base_pose, dtype=np.float64).reshape(4, 4)
        self.velocity = np.asarray(self.velocity, dtype=np.float64).reshape(3)

    @property
    def is_foreground(self) -> bool:
        return self.category in FOREGROUND_CATEGORIES

    @property
    def is_moving(self) -> bool:
        return bool(np.any(self.velocity != 0))

    @property
    def base_color(self) -> RGB:
        """Linear RGB of the main (first) part."""
        return self.parts[0].base_color

    @property
    def roughness(self) -> float:
        return self.parts[0].roughness

    @property
    def mesh(self) -> trimesh.Trimesh:
        """All parts merged into one mesh in the local frame."""
        if len(self.parts) == 1:
            return self.parts[0].mesh.copy()
        return trimesh.util.concatenate([p.mesh for p in self.parts])

    def pose(self, t: float = 0.0) -> np.ndarray:
        """[4, 4] object-to-world at time ``t`` seconds."""
        m = self.base_pose.copy()
        m[:3, 3] += self.velocity * float(t)
        return m

    def world_mesh(self, t: float = 0.0) -> trimesh.Trimesh:
        return self.mesh.apply_transform(self.pose(t))

    def world_bounds(self, t: float = 0.0) -> np.ndarray:
        """[2, 3] axis-aligned world bounds (min, max) at time ``t``."""
        return self.world_mesh(t).bounds.copy()


@dataclass
class StreetLayout:
    """A generated street: objects, lighting and the ego trajectory (see :func:`generate_street`)."""

    config: StreetConfig
    objects: list[SceneObject]
    trajectory: Trajectory
    lighting: LightingConfig

    def __post_init__(self) -> None:
        ids = [o.instance_id for o in self.objects]
        if len(set(ids)) != len(ids):
            raise InvalidInputError("instance ids in a layout must be unique")
        self._by_id = {o.instance_id: o for o in self.objects}

    @property
    def ids(self) -> list[int]:
        return [o.instance_id for o in self.objects]

    def object(self, instance_id: int) -> SceneObject:
        try:
            return self._by_id[int(instance_id)]
        except (KeyError, TypeError, ValueError):
            raise InvalidInputError(
                f"unknown instance id {instance_id!r}; this layout has ids {min(self.ids)}..{max(self.ids)}"
            ) from None

    def check_ids(self, ids: Iterable[int], what: str = "ids") -> tuple[int, ...]:
        """Validate instance ids; returns them as a sorted tuple of ints. Unknown ids raise InvalidInputError."""
        if isinstance(ids, (int, np.integer)):
            ids = [ids]
        out = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                raise InvalidInputError(f"{what}: instance ids must be integers, got {i!r}")
            if int(i) not in self._by_id:
                raise InvalidInputError(f"{what}: unknown instance id {int(i)}; valid ids are {self.ids}")
            out.append(int(i))
        return tuple(sorted(set(out)))

    def ids_of(self, category: str) -> list[int]:
        if category not in CATEGORIES:
            raise InvalidInputError(f"unknown category {category!r}; expected one of {CATEGORIES}")
        return [o.instance_id for o in self.objects if o.category == category]

    def foreground_ids(self) -> list[int]:
        return [o.instance_id for o in self.objects if o.is_foreground]

    def moving_ids(self) -> list[int]:
        return [o.instance_id for o in self.objects if o.is_moving]

    def object_pose(self, instance_id: int, t: float = 0.0) -> np.ndarray:
        return self.object(instance_id).pose(t)

    def with_objects(self, objects: list[SceneObject]) -> StreetLayout:
        """The same street with a different object list (e.g. a test moving one vehicle)."""
        return StreetLayout(self.config, list(objects), self.trajectory, self.lighting)

    def summary(self) -> dict:
        """Plain-data description (YAML-safe): seed, street size, and per-instance name/category/flags."""
        return {
            "seed": int(self.config.seed),
            "length": float(self.config.length),
            "road_width": float(self.config.road_width),
            "lane_width": float(self.config.lane_width),
            "objects": [
                {
                    "id": int(o.instance_id),
                    "name": o.name,
                    "category": o.category,
                    "is_foreground": bool(o.is_foreground),
                    "moving": bool(o.is_moving),
                    "base_color": [float(c) for c in o.base_color],
                }
                for o in self.objects
            ],
        }


# --------------------------------------------------------------------------------------------------
# Meshes
# --------------------------------------------------------------------------------------------------


def _translation(xyz) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = xyz
    return m


def _yaw_pose(xyz, yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    m = _translation(xyz)
    m[:2, :2] = [[c, -s], [s, c]]
    return m


def _box(extents, center) -> trimesh.Trimesh:
    return trimesh.creation.box(extents=extents, transform=_translation(center))


def _srgb_to_linear(c) -> RGB:
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return tuple(float(v) for v in lin)


def _hsv(h: float, s: float, v: float) -> RGB:
    """An sRGB-looking colour from HSV, returned as linear RGB."""
    return _srgb_to_linear(colorsys.hsv_to_rgb(h % 1.0, s, v))


_CAR_PAINTS = [  # sRGB-ish car colours: white, black, silver, grey, red, blue, dark green, yellow, beige
    (0.92, 0.92, 0.9),
    (0.08, 0.08, 0.09),
    (0.72, 0.73, 0.75),
    (0.42, 0.43, 0.45),
    (0.7, 0.08, 0.07),
    (0.1, 0.22, 0.55),
    (0.1, 0.3, 0.18),
    (0.9, 0.72, 0.1),
    (0.75, 0.68, 0.55),
]

# kind: length, width, body height, cabin height, cabin length fraction, wheel radius (ranges)
_VEHICLE_KINDS = {
    "compact": ((3.6, 4.0), (1.65, 1.75), (0.6, 0.7), (0.5, 0.6), (0.5, 0.6), (0.28, 0.31)),
    "sedan": ((4.4, 4.9), (1.75, 1.85), (0.65, 0.75), (0.48, 0.56), (0.45, 0.55), (0.31, 0.34)),
    "suv": ((4.5, 5.0), (1.85, 1.95), (0.85, 0.95), (0.6, 0.7), (0.55, 0.65), (0.35, 0.38)),
    "van": ((5.0, 5.6), (1.9, 2.0), (1.0, 1.15), (0.85, 1.0), (0.78, 0.85), (0.33, 0.36)),
}
_GLASS = _srgb_to_linear((0.12, 0.15, 0.18))
_RUBBER = _srgb_to_linear((0.05, 0.05, 0.05))


def vehicle_parts(rng: np.random.Generator, kind: str | None = None) -> tuple[list[MeshPart], dict]:
    """A vehicle proxy in its local frame (origin on the ground under its centre, +x forward, z up).

    Body box + cabin box + four wheel cylinders. Returns (parts, attributes with kind and dimensions).
    """
    kind = kind or str(rng.choice(list(_VEHICLE_KINDS)))
    lr, wr, bhr, chr_, cfr, rr = _VEHICLE_KINDS[kind]
    length, width = rng.uniform(*lr), rng.uniform(*wr)
    body_h, cabin_h, cabin_frac, r = rng.uniform(*bhr), rng.uniform(*chr_), rng.uniform(*cfr), rng.uniform(*rr)
    paint = np.asarray(_CAR_PAINTS[rng.integers(len(_CAR_PAINTS))]) * rng.uniform(0.9, 1.05)
    clearance = 0.55 * r
    body = _box((length, width, body_h), (0.0, 0.0, clearance + body_h / 2))
    cabin_len = cabin_frac * length
    cabin_x = -0.08 * length if kind != "van" else -0.5 * (length - cabin_len) + 0.05
    cabin = _box((cabin_len, 0.92 * width, cabin_h), (cabin_x, 0.0, clearance + body_h + cabin_h / 2))
    wheels = []
    for sx in (-1, 1):
        for sy in (-1, 1):
            cyl = trimesh.creation.cylinder(radius=r, height=0.22, sections=16)
            rot = trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0])  # axis z -> y
            cyl.apply_transform(rot)
            cyl.apply_translation((sx * (length / 2 - 1.25 * r), sy * (width / 2 - 0.08), r))
            wheels.append(cyl)
    parts = [
        MeshPart("body", body, _srgb_to_linear(paint), roughness=float(rng.uniform(0.25, 0.45)), metallic=0.0),
        MeshPart("cabin", cabin, _GLASS, roughness=0.15),
        MeshPart("wheels", trimesh.util.concatenate(wheels), _RUBBER, roughness=0.9),
    ]
    attrs = {
        "kind": kind,
        "length": float(length),
        "width": float(width),
        "height": float(clearance + body_h + cabin_h),
    }
    return parts, attrs


def pedestrian_parts(rng: np.random.Generator, height_range=(1.5, 1.95)) -> tuple[list[MeshPart], dict]:
    """A pedestrian proxy in its local frame (origin between the feet, facing +x): legs, torso, head."""
    h = rng.uniform(*height_range)
    girth = rng.uniform(0.85, 1.2)
    leg_h, torso_h, head_r = 0.47 * h, 0.33 * h, 0.065 * h
    legs = _box((0.22 * girth, 0.34 * girth, leg_h), (0.0, 0.0, leg_h / 2))
    torso = trimesh.creation.cylinder(radius=0.19 * girth, height=torso_h, sections=12)
    torso.apply_translation((0.0, 0.0, leg_h + torso_h / 2))
    head = trimesh.creation.icosphere(subdivisions=1, radius=head_r)
    head.apply_translation((0.0, 0.0, leg_h + torso_h + 0.02 * h + head_r))
    skin = _hsv(rng.uniform(0.03, 0.1), rng.uniform(0.3, 0.6), rng.uniform(0.35, 0.9))
    parts = [
        MeshPart("torso", torso, _hsv(rng.uniform(), rng.uniform(0.2, 0.9), rng.uniform(0.25, 0.95)), roughness=0.8),
        MeshPart("legs", legs, _hsv(rng.uniform(), rng.uniform(0.1, 0.7), rng.uniform(0.1, 0.6)), roughness=0.85),
        MeshPart("head", head, skin, roughness=0.6),
    ]
    return parts, {"height": float(h)}


def _building_parts(
    rng: np.random.Generator, width: float, depth: float, height: float, facade_sign: float, windows: bool
) -> list[MeshPart]:
    """A box building centred on its footprint; ``facade_sign`` (+1/-1) = which local y side faces the street."""
    walls = _box((width, depth, height), (0.0, 0.0, height / 2))
    colour = _hsv(rng.uniform(), rng.uniform(0.08, 0.4), rng.uniform(0.45, 0.88))
    parts = [MeshPart("walls", walls, colour, roughness=float(rng.uniform(0.8, 0.95)))]
    if windows:
        boxes = []
        floor_h = rng.uniform(2.8, 3.4)
        win_w, win_h = rng.uniform(0.9, 1.5), rng.uniform(1.1, 1.6)
        spacing = win_w + rng.uniform(1.0, 2.0)
        n_cols = int((width - 1.0) // spacing)
        n_rows = int((height - 1.0) // floor_h)
        y = facade_sign * (depth / 2 + 0.02)
        for row in range(n_rows):
            z = (row + 0.55) * floor_h
            for col in range(n_cols):
                x = (col - (n_cols - 1) / 2) * spacing
                boxes.append(_box((win_w, 0.08, win_h), (x, y, z)))
        if boxes:
            glass = _hsv(rng.uniform(0.55, 0.62), rng.uniform(0.1, 0.4), rng.uniform(0.12, 0.3))
            parts.append(MeshPart("windows", trimesh.util.concatenate(boxes), glass, roughness=0.1))
    return parts


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------


def _place_along(
    rng, lo: float, hi: float, lengths: list[float], gap: float, attempts: int = 200
) -> list[float] | None:
    """Random non-overlapping centres in [lo, hi] for segments of ``lengths`` with ``gap`` between them."""
    for _ in range(attempts):
        xs = rng.uniform(lo, hi, size=len(lengths))
        order = np.argsort(xs)
        ok = all(
            xs[order[k + 1]] - xs[order[k]] >= (lengths[order[k]] + lengths[order[k + 1]]) / 2 + gap
            for k in range(len(xs) - 1)
        )
        if ok:
            return [float(x) for x in xs]
    return None


def generate_street(config: StreetConfig | None = None) -> StreetLayout:
    """Build the street for ``config`` (default: the demo street). Deterministic per ``config.seed``.

    Instance ids are assigned 1, 2, ... in creation order: ground, road, sidewalks, lane markings,
    buildings, parked vehicles, moving vehicles, pedestrians.
    """
    cfg = config or StreetConfig()
    if not isinstance(cfg, StreetConfig):
        raise ConfigError(f"generate_street expects a StreetConfig, got {type(cfg).__name__}")
    rng = np.random.default_rng(cfg.seed)
    L, rw, lw, sw, sh = cfg.length, cfg.road_width, cfg.lane_width, cfg.sidewalk_width, cfg.sidewalk_height
    bc = cfg.buildings
    objects: list[SceneObject] = []

    def add(name, category, parts, pose=None, velocity=None, **attrs) -> SceneObject:
        obj = SceneObject(
            len(objects) + 1,
            name,
            category,
            parts,
            np.eye(4) if pose is None else pose,
            np.zeros(3) if velocity is None else velocity,
            attrs,
        )
        objects.append(obj)
        return obj

    x0, x1 = -20.0, L + 8.0  # the street surfaces extend behind the start and to the far-end building
    # Ground: below the road so that it only shows between buildings and past the far end.
    add(
        "ground",
        "ground",
        [
            MeshPart(
                "ground",
                _box((x1 - x0 + 200, 200, 0.1), ((x0 + x1) / 2, 0, -0.07)),
                _srgb_to_linear((0.32, 0.36, 0.26)),
                roughness=0.95,
            )
        ],
    )
    add(
        "road",
        "road",
        [
            MeshPart(
                "asphalt",
                _box((x1 - x0, rw, 0.1), ((x0 + x1) / 2, 0, -0.05)),
                _srgb_to_linear((0.22, 0.22, 0.23)),
                roughness=0.9,
            )
        ],
    )
    # Sidewalks run under the buildings so the setback strip is pavement, not grass.
    walk_w = sw + bc.setback_range[1] + 2.0
    pave = _srgb_to_linear((0.58, 0.56, 0.52))
    for side, name in ((-1, "sidewalk_right"), (1, "sidewalk_left")):
        yc = side * (rw / 2 + walk_w / 2)
        add(
            name,
            "sidewalk",
            [
                MeshPart(
                    "pavement",
                    _box((x1 - x0, walk_w, sh + 0.1), ((x0 + x1) / 2, yc, (sh - 0.1) / 2)),
                    pave,
                    roughness=0.85,
                )
            ],
        )
    if cfg.lane_markings:
        paint = _srgb_to_linear((0.9, 0.9, 0.86))
        dash, period, thick = 3.0, 6.0, 0.01
        dashes = [
            _box((dash, 0.15, thick), (x, 0.0, thick / 2)) for x in np.arange(x0 + dash / 2, x1 - dash / 2, period)
        ]
        add("centre_line", "lane_marking", [MeshPart("paint", trimesh.util.concatenate(dashes), paint, roughness=0.8)])
        edges = [_box((x1 - x0, 0.12, thick), ((x0 + x1) / 2, s * lw, thick / 2)) for s in (-1, 1)]
        add("lane_edges", "lane_marking", [MeshPart("paint", trimesh.util.concatenate(edges), paint, roughness=0.8)])

    # Buildings, left then right, walking along x.
    for side, label in ((1, "left"), (-1, "right")):
        x, k = -10.0, 0
        while x < L + 2.0:
            w = rng.uniform(*bc.width_range)
            d = rng.uniform(*bc.depth_range)
            h = rng.uniform(*bc.height_range)
            setback = rng.uniform(*bc.setback_range)
            y = side * (rw / 2 + sw + setback + d / 2)
            parts = _building_parts(rng, w, d, h, -side, bc.windows)  # the facade faces the road (towards y=0)
            add(
                f"building_{label}_{k}",
                "building",
                parts,
                _translation((x + w / 2, y, 0.0)),
                size=[float(w), float(d), float(h)],
            )
            x += w + (rng.uniform(*bc.gap_range) if rng.uniform() < bc.gap_probability else 0.0)
            k += 1
    if bc.close_far_end:
        d, h = 12.0, rng.uniform(max(bc.height_range[0], 10.0), max(bc.height_range[1], 12.0))
        w_across = rw + 2 * (walk_w + 30.0)
        parts = _building_parts(rng, d, w_across, h, 1.0, False)
        # A windowless block across the street closes the view down the street (no sky below the horizon).
        add(
            "building_far_end",
            "building",
            parts,
            _translation((x1 + d / 2, 0.0, 0.0)),
            size=[d, float(w_across), float(h)],
        )

    # Parked vehicles: fixed slots along both parking strips, a random subset filled.
    vc = cfg.vehicles
    ego = cfg.ego
    slot = 7.0
    slots = [(s, xs) for s in (-1, 1) for xs in np.arange(slot / 2, L - slot / 2 + 1e-6, slot)]
    if vc.num_parked > len(slots):
        raise ConfigError(
            f"VehicleConfig.num_parked={vc.num_parked} exceeds the {len(slots)} parking slots of a {L} m street"
        )
    chosen = sorted(rng.choice(len(slots), size=vc.num_parked, replace=False).tolist()) if vc.num_parked else []
    for k, idx in enumerate(chosen):
        side, xs = slots[idx]
        parts, attrs = vehicle_parts(rng)
        y = side * (rw / 2 - cfg.parking_width / 2)
        yaw = 0.0 if side < 0 else np.pi  # parked in the driving direction of the adjacent lane
        pose = _yaw_pose((xs + rng.uniform(-0.6, 0.6), y, 0.0), yaw)
        add(f"parked_vehicle_{k}", "vehicle", parts, pose, **attrs, moving=False)

    # Moving vehicles: ego lane (+x, ahead of the camera, faster than it) and opposite lane (-x).
    lanes = rng.integers(0, 2, size=vc.num_moving)  # 0 = ego lane, 1 = opposite lane
    for lane in (0, 1):
        n = int(np.sum(lanes == lane))
        if n == 0:
            continue
        specs = [vehicle_parts(rng) for _ in range(n)]
        lengths = [a["length"] for _, a in specs]
        if lane == 0:
            lo, hi, y, heading = ego.start_x + 10.0, max(L - 2.0, ego.start_x + 12.0), -lw / 2, 1.0
            speeds = ego.speed_mps + rng.uniform(*vc.ego_lane_speedup_range, size=n)
        else:
            lo, hi, y, heading = ego.start_x + 15.0, L + 10.0, lw / 2, -1.0
            speeds = rng.uniform(*vc.opposite_speed_range, size=n)
        xs = _place_along(rng, lo, max(hi, lo + 1.0), lengths, gap=4.0)
        if xs is None:
            raise ConfigError(f"cannot fit {n} moving vehicles in lane {lane} of a {L} m street; lower num_moving")
        # The leader (furthest along the heading) gets the highest speed so gaps only grow: no collisions.
        order = np.argsort(-heading * np.asarray(xs))
        speeds = np.sort(speeds)[::-1]
        for rank, i in enumerate(order):
            parts, attrs = specs[i]
            pose = _yaw_pose((xs[i], y, 0.0), 0.0 if heading > 0 else np.pi)
            vel = np.array([heading * speeds[rank], 0.0, 0.0])
            add(
                f"moving_vehicle_{lane}_{rank}",
                "vehicle",
                parts,
                pose,
                vel,
                **attrs,
                moving=True,
                speed_mps=float(speeds[rank]),
            )

    # Pedestrians on both sidewalks.
    pc = cfg.pedestrians
    placed: list[np.ndarray] = []
    for k in range(pc.count):
        parts, attrs = pedestrian_parts(rng, pc.height_range)
        for _ in range(100):
            side = 1 if rng.uniform() < 0.5 else -1
            p = np.array([rng.uniform(0.0, L), side * (rw / 2 + rng.uniform(0.4, max(sw - 0.4, 0.41))), sh])
            if all(np.linalg.norm(p[:2] - q[:2]) > 0.9 for q in placed):
                break
        placed.append(p)
        walking = rng.uniform() < pc.walking_fraction
        direction = 1.0 if rng.uniform() < 0.5 else -1.0
        speed = rng.uniform(*pc.walking_speed_range) if walking else 0.0
        yaw = (0.0 if direction > 0 else np.pi) if walking else rng.uniform(0, 2 * np.pi)
        vel = np.array([direction * speed, 0.0, 0.0]) if walking else np.zeros(3)
        add(f"pedestrian_{k}", "pedestrian", parts, _yaw_pose(p, yaw), vel, **attrs, walking=bool(walking))

    traj = straight_trajectory(
        cfg.camera.intrinsics(),
        ego.num_frames,
        start=(ego.start_x, -lw / 2, ego.camera_height),
        speed_mps=ego.speed_mps,
        fps=ego.fps,
        pitch_deg=ego.pitch_deg,
    )
    return StreetLayout(cfg, objects, traj, dataclasses.replace(cfg.lighting))
