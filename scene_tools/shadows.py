"""Shadow hints: where an inserted object's cast shadow falls in a frame, from what the simulator knows.

The simulator knows the inserted object's Gaussians and pose, the rendered depth of the frame and, when the
scene has one, the sun. That is enough for classic shadow mapping, done with the project's own rasterizer:

1. render the caster's opacity and expected depth as seen from the sun (a directional light: a far pinhole
   camera on the sun's side with a narrow field of view, so its projection is near-orthographic);
2. lift every frame pixel to world space through the depth buffer and project it into that light view;
3. a surface point lies in the shadow where the light view's opacity is high and the caster is nearer the
   sun than the point.

The result, :func:`shadow_hint`, is a soft [H, W] map in [0, 1]: the share of direct sunlight the inserted
objects block at each pixel's surface (0 on the sky). On the objects' own pixels it is, given the scene's
Gaussians as ``occluders``, the share the scene blocks there (the same shadow map, drawn with the scene around
the object from the sun: a car in a building's shadow), since an inserted object is rendered as if alone under
the sun. Both say the same to the enhancer: the sun is blocked where the render shows it lit. It takes the hint
as an optional input beside mask and depth and learns the shadow's darkness, colour and softness from the pixels.

World frame: the project's street frame, z up, metres (synthetic streets; real captures moved there by
:func:`scene_tools.capture.align_to_ground`). The sun is given as azimuth (in the ground plane, from +x
towards +y, the direction *towards* the sun) and elevation above the horizon, as in
:class:`scene_tools.street.LightingConfig`, and stored in a scene's metadata under ``"sun"``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from scene_tools.cameras import check_pose
from scene_tools.flow import check_K
from scene_tools.street import sun_direction
from simharmony.errors import InvalidInputError, ShapeMismatchError
from simharmony.utils.config import Config

LIGHT_MAP_PX = 96  # light-view resolution per caster: a car's 5 m over 96 px is 5 cm per texel
SHADOW_BIAS_M = 0.05  # a receiver must lie this far behind the caster (along the light) to be shadowed
SHADOW_RAMP_M = 0.10  # ... and is fully shadowed this much further: no acne on the caster's own surface
LIGHT_MAP_CACHE = 64  # light views kept by a shadow_hint cache
# a cached light view serves sun directions (in the caster's frame) that round alike to 0.01: within about
# 0.6 degrees, well inside the 4-degree sun error the enhancer is trained to tolerate
HINT_STRIDE = 2  # the shadow test runs on 2 x 2 pixel blocks: the enhancer pools the hint to 1/4 size anyway
OCCLUDER_MAP_PX = 64  # the scene seen from the sun around an asset: 9 cm texels across a car, drawn every frame
OCCLUDER_CELL_M = 2.0  # the scene's Gaussians are binned in 2 m columns along the sun (Caster.sun_columns)
OCCLUDER_REACH_M = 80.0  # how far towards the sun scene occluders of an inserted object are looked for: a 20 m
# building under a 15-degree sun is 77 m away along the light from the end of its shadow


@dataclass
class Sun(Config):
    """A directional sun: ``azimuth_deg`` (ground plane, from +x towards +y) and ``elevation_deg`` (0-90]."""

    azimuth_deg: float = 150.0
    elevation_deg: float = 40.0

    def __post_init__(self) -> None:
        for name in ("azimuth_deg", "elevation_deg"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise InvalidInputError(f"Sun.{name} must be a finite number, got {v!r}")
        if not 0.0 < self.elevation_deg <= 90.0:
            raise InvalidInputError(
                f"Sun.elevation_deg={self.elevation_deg} must be in (0, 90]: a sun at or below the horizon casts no "
                "shadow a hint could place"
            )
        self.azimuth_deg, self.elevation_deg = float(self.azimuth_deg), float(self.elevation_deg)

    @property
    def direction(self) -> np.ndarray:
        return sun_direction(self.azimuth_deg, self.elevation_deg)

    def jittered(self, rng: np.random.Generator, sigma_deg: float) -> Sun:
        """This sun moved by a Gaussian error of ``sigma_deg`` on each angle (an imperfect estimate)."""
        if sigma_deg <= 0:
            return self
        el = float(np.clip(self.elevation_deg + rng.normal(0.0, sigma_deg), 2.0, 90.0))
        return Sun((self.azimuth_deg + rng.normal(0.0, sigma_deg)) % 360.0, el)

    @classmethod
    def from_metadata(cls, value: Any) -> Sun | None:
        """A scene's ``metadata["sun"]`` ({azimuth_deg, elevation_deg}) -> Sun; None stays None."""
        if value is None:
            return None
        if isinstance(value, Sun):
            return value
        if not isinstance(value, dict):
            raise InvalidInputError(f"scene metadata 'sun' must be a mapping {{azimuth_deg, elevation_deg}}, got {value!r}")
        return cls.from_dict(value)


@dataclass
class Caster:
    """Gaussians that cast a shadow: means [N, 3], quats [N, 4] (wxyz), scales [N, 3], opacities [N], in the
    frame ``pose`` [4, 4] places in the world (None: already in world space). ``key`` (hashable, optional)
    names the Gaussians for a light-map cache: a caster that keeps its Gaussians and only moves or turns
    reuses its light view while the sun keeps its direction in the caster's own frame."""

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    pose: np.ndarray | None = None
    key: Any = None

    def __post_init__(self) -> None:
        n = self.means.shape[0] if isinstance(self.means, torch.Tensor) and self.means.ndim == 2 else -1
        shapes = {"means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,)}
        for name, shape in shapes.items():
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                raise ShapeMismatchError(f"Caster.{name} must be a tensor {shape}, got {getattr(t, 'shape', type(t))}")
            setattr(self, name, t.float())
        if self.pose is not None:
            self.pose = np.asarray(self.pose, np.float64)
            if self.pose.shape != (4, 4) or not np.isfinite(self.pose).all():
                raise InvalidInputError(f"Caster.pose must be a finite [4, 4] matrix, got shape {self.pose.shape}")

    @cached_property
    def extent(self) -> torch.Tensor:
        """[N] three standard deviations along each Gaussian's longest axis (kept: a scene's occluders are
        culled against every frame's light view)."""
        return 3.0 * self.scales.max(dim=1).values

    def sun_columns(self, rotation: torch.Tensor) -> SunColumns:
        """These Gaussians (world space) binned along a light view's ``rotation`` [3, 3] (world-to-light; it
        depends on the sun alone). One kept at a time: a static scene under a fixed sun builds it once."""
        kept = getattr(self, "_sun_columns", None)
        if kept is None or not torch.equal(kept.rotation, rotation):
            kept = self._sun_columns = SunColumns(self, rotation)
        return kept

    def in_world(self) -> Caster:
        """The same Gaussians with their means moved to world space (rotations and scales are kept: the light
        view needs only where they are and how big)."""
        if self.pose is None:
            return self
        R = torch.as_tensor(self.pose[:3, :3], dtype=torch.float32, device=self.means.device)
        t = torch.as_tensor(self.pose[:3, 3], dtype=torch.float32, device=self.means.device)
        return Caster(self.means @ R.T + t, self.quats, self.scales, self.opacities)

    def local_direction(self, direction: np.ndarray) -> np.ndarray:
        """A world direction in the caster's own frame."""
        return direction if self.pose is None else self.pose[:3, :3].T @ direction


class SunColumns:
    """A caster's Gaussians in a light view's axes (``rotated`` [N, 3] = means @ rotation.T: x, y across the sun,
    z along it), binned by x, y in :data:`OCCLUDER_CELL_M` cells, so that a light view framing a few metres
    finds the Gaussians in its column without testing all of them. Gaussians larger than a cell (3-sigma
    extent) are candidates for every view."""

    def __init__(self, caster: Caster, rotation: torch.Tensor):
        self.rotation = rotation.clone()
        self.rotated = caster.means @ rotation.T  # [N, 3]; computed as occluder_map's full test would
        large = caster.extent > OCCLUDER_CELL_M
        self.large = large.nonzero()[:, 0]  # [L] ascending
        small = (~large).nonzero()[:, 0]
        cells = torch.floor(self.rotated[small, :2] / OCCLUDER_CELL_M).long()  # [S, 2]
        self.lo = cells.min(0).values if len(small) else torch.zeros(2, dtype=torch.long)
        self.nx = int(cells[:, 0].max() - self.lo[0]) + 1 if len(small) else 1
        key = (cells[:, 1] - self.lo[1]) * self.nx + (cells[:, 0] - self.lo[0])
        order = torch.argsort(key, stable=True)
        self.keys, self.small = key[order].contiguous(), small[order]  # [S] sorted by cell

    def candidates(self, centre_xy: tuple[float, float], half_width: float) -> torch.Tensor:
        """Indices [M] (unordered) of the Gaussians that may lie within ``half_width`` (+ their extent) of
        ``centre_xy`` across the sun: every small one in the cells that square touches, and every large one."""
        parts = [self.large]
        if len(self.small):
            reach = half_width + OCCLUDER_CELL_M  # a small Gaussian reaches at most a cell beyond its centre
            (x0, y0), (x1, y1) = ([math.floor((c + sgn * reach) / OCCLUDER_CELL_M) for c in centre_xy] for sgn in (-1, 1))
            lo_x, lo_y = int(self.lo[0]), int(self.lo[1])
            x0, x1 = max(x0, lo_x) - lo_x, min(x1, lo_x + self.nx - 1) - lo_x
            if x0 <= x1:
                rows = torch.arange(max(y0, lo_y) - lo_y, y1 - lo_y + 1)
                if len(rows):
                    bounds = torch.searchsorted(self.keys, torch.stack([rows * self.nx + x0, rows * self.nx + x1 + 1]))
                    parts += [self.small[a:b] for a, b in bounds.T.tolist() if b > a]
        return torch.cat(parts)


def light_view(caster: Caster, direction: np.ndarray, size: int = LIGHT_MAP_PX, reach_m: float = 0.0,
               behind_radii: float = 2.0) -> dict[str, Any]:
    """A near-orthographic pinhole camera looking along ``-direction`` (towards the scene from the sun) that
    frames the caster (its Gaussians in their own frame): returns {"viewmat" [4, 4] world-to-light, "K" [3, 3]}
    (float32), its "near" / "far" planes (``reach_m`` beyond the caster towards the sun, ``behind_radii`` of
    its radius past its centre), its "radius", its "dist" from the caster's centre and its "size" in pixels."""
    dev = caster.means.device
    d = np.asarray(direction, np.float64)
    d = d / np.linalg.norm(d)
    m = caster.means.double().cpu().numpy()
    centre = 0.5 * (m.min(0) + m.max(0))
    sig = caster.scales.double().cpu().numpy().max(1, initial=0.0)
    radius = float(np.max(np.linalg.norm(m - centre, axis=1) + 3.0 * sig)) + 1e-3
    # far away: rays within 0.3 degrees of parallel, and at most a tenth of the caster's size apart reach_m away
    dist = max(200.0 * radius, 10.0 * reach_m)
    fwd = -d
    ref = np.array([0.0, 0.0, 1.0]) if abs(fwd[2]) < 0.99 else np.array([1.0, 0.0, 0.0])
    x = np.cross(fwd, ref)
    x /= np.linalg.norm(x)
    y = np.cross(fwd, x)
    R = np.stack([x, y, fwd])  # rows: light camera axes in world coordinates (OpenCV: x right, y down, z forward)
    eye = centre + d * dist
    view = np.eye(4)
    view[:3, :3], view[:3, 3] = R, -R @ eye
    f = 0.5 * size * dist / radius
    K = np.array([[f, 0.0, size / 2.0], [0.0, f, size / 2.0], [0.0, 0.0, 1.0]])
    return {"viewmat": torch.as_tensor(view, dtype=torch.float32, device=dev),
            "K": torch.as_tensor(K, dtype=torch.float32, device=dev),
            "near": dist - max(2.0 * radius, reach_m), "far": dist + behind_radii * radius, "radius": radius,
            "dist": dist, "size": size}


def light_map(caster: Caster, direction: np.ndarray, size: int = LIGHT_MAP_PX) -> dict[str, Any]:
    """The caster seen from the sun: ``light_view`` plus "alpha" [S, S] (opacity) and "depth" [S, S]
    (expected distance along the light; meaningful where alpha > 0)."""
    view = light_view(caster, direction, size)
    return {**view, **draw_from_sun(caster, None, view)}


def draw_from_sun(gaussians: Caster, idx: torch.Tensor | None, view: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The Gaussians ``idx`` [M] of ``gaussians`` (None: all) drawn in the light ``view`` (:func:`light_view`)
    between its near and far planes -> {"alpha" [S, S], "depth" [S, S] (expected distance along the light)}."""
    from scene_tools.rasterize import rasterize

    size, dev = view["size"], gaussians.means.device
    parts = (gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities)
    means, quats, scales, opacities = parts if idx is None else (x[idx] for x in parts)
    if not len(means):
        return {"alpha": torch.zeros(size, size, device=dev), "depth": torch.zeros(size, size, device=dev)}
    ones = torch.ones(len(means), 1, device=dev)
    out, alphas, _ = rasterize(means, quats, scales, opacities, ones, view["viewmat"][None], view["K"][None], size,
                               size, near_plane=view["near"], far_plane=view["far"], render_mode="ED")
    return {"alpha": alphas[0, ..., 0], "depth": out[0, ..., 0]}


def in_light_frustum(light_xyz: torch.Tensor, extent: torch.Tensor, view: dict[str, Any]) -> torch.Tensor:
    """[M] bool: which Gaussians (centres ``light_xyz`` [M, 3] in the light camera, 3-sigma ``extent`` [M]) may
    touch the light ``view``'s frustum between its near and far planes."""
    half_width = view["radius"] * light_xyz[:, 2] / view["dist"]  # the frustum's half width at each one's depth
    return ((light_xyz[:, 2] > view["near"] - extent) & (light_xyz[:, 2] < view["far"] + extent)
            & (light_xyz[:, 0].abs() < half_width + extent) & (light_xyz[:, 1].abs() < half_width + extent))


def occluder_map(frame: Caster, occluders: Caster, direction: np.ndarray, size: int = OCCLUDER_MAP_PX,
                 reach_m: float = OCCLUDER_REACH_M) -> dict[str, Any]:
    """The scene's Gaussians ``occluders`` (world space) seen from the sun in the light view that frames the
    caster ``frame``, from ``reach_m`` on its sun side to half its radius past its centre: like
    :func:`light_map`, a shadow map, here of what may shade the inserted object itself. Only the occluders inside
    that narrow frustum are drawn; those further back could only shade the object's far side, which its own
    body shades already (and the ground under it, the bulk of them, never shades it). They are looked up in
    the occluders' sun columns (:meth:`Caster.sun_columns`, built once per sun), not tested one by one."""
    view = light_view(frame.in_world(), direction, size, reach_m, behind_radii=0.5)
    R, t = view["viewmat"][:3, :3], view["viewmat"][:3, 3]
    columns = occluders.sun_columns(R)
    # the frustum's half width grows with depth: at most radius * (far + extent) / dist for a kept Gaussian
    widest = view["radius"] * (view["far"] + OCCLUDER_CELL_M) / view["dist"]
    cand = columns.candidates((-float(t[0]), -float(t[1])), widest)  # [M]
    keep = in_light_frustum(columns.rotated[cand] + t, occluders.extent[cand], view)
    idx = torch.sort(cand[keep]).values  # the occluders' own order, as a test of all of them keeps it
    return {**view, **draw_from_sun(occluders, idx, view)}


def _shade(lm: dict[str, Any], pts: torch.Tensor, bias_m: float, ramp_m: float) -> torch.Tensor:
    """How much of the sun the shadow map ``lm`` blocks at world points ``pts`` [..., 3] (in ``lm``'s frame)."""
    size = lm["size"]
    pl = pts @ lm["viewmat"][:3, :3].T + lm["viewmat"][:3, 3]  # [..., 3] in the light camera
    inv_z = 1.0 / pl[..., 2].clamp_min(1e-6)
    scale = 2.0 / size  # pixel -> grid_sample's [-1, 1] (align_corners=False)
    gx = (lm["K"][0, 0] * pl[..., 0] * inv_z + lm["K"][0, 2]) * scale - 1.0
    gy = (lm["K"][1, 1] * pl[..., 1] * inv_z + lm["K"][1, 2]) * scale - 1.0
    maps = torch.stack([lm["alpha"], lm["depth"] * lm["alpha"]])[None]  # depth premultiplied: no halo
    sampled = F.grid_sample(maps, torch.stack([gx, gy], dim=-1)[None], mode="bilinear", padding_mode="zeros",
                            align_corners=False)[0]
    alpha = sampled[0].clamp(0.0, 1.0)
    occ_depth = sampled[1] / alpha.clamp_min(1e-6)
    return alpha * ((pl[..., 2] - occ_depth - bias_m) / ramp_m).clamp(0.0, 1.0)


def shadow_hint(
    casters: list[Caster],
    sun: Sun | np.ndarray,
    depth: torch.Tensor | np.ndarray,
    K: np.ndarray | torch.Tensor,
    pose: np.ndarray | torch.Tensor,
    *,
    exclude: torch.Tensor | np.ndarray | None = None,
    size: int = LIGHT_MAP_PX,
    bias_m: float = SHADOW_BIAS_M,
    ramp_m: float = SHADOW_RAMP_M,
    stride: int = HINT_STRIDE,
    cache: dict | None = None,
    occluders: Caster | None = None,
    reach_m: float = OCCLUDER_REACH_M,
) -> torch.Tensor:
    """Soft map [H, W] float32 in [0, 1] of where the sun is blocked at a surface the frame shows lit: where
    ``casters`` (the inserted objects) shadow the scene, and, given ``occluders``, where the scene shadows them.

    ``sun``: a :class:`Sun` or a [3] direction towards it; ``depth`` [H, W] z-depth of the frame (inf = sky),
    ``K`` [3, 3] its intrinsics, ``pose`` [4, 4] camera-to-world (OpenCV). ``exclude`` [H, W] in [0, 1]: the
    casters' own coverage (the inserted mask), where the hint is scaled by ``1 - exclude``. Several casters
    combine as independent occluders: ``1 - prod(1 - hint_i)``. ``stride``: the shadow test runs at the
    centres of ``stride`` x ``stride`` pixel blocks and is upsampled bilinearly (the enhancer reads the hint
    at a quarter of the frame's resolution; 1 = every pixel). ``cache``: a dict that keeps the light views
    of keyed casters (:class:`Caster`) between calls (and their occluder maps while they keep their pose); at
    most :data:`LIGHT_MAP_CACHE` entries are kept.
    ``occluders``: the scene's Gaussians in world space (a :class:`Caster` without pose). The casters were
    rendered as if alone under the sun; on their own pixels (``exclude``, required then) the hint is where the
    scene, up to ``reach_m`` towards the sun, blocks it (:func:`occluder_map`): a car driving into a building's
    shadow. The scene's shadows on itself are in its pixels already and are not part of the hint.
    """
    direction = sun.direction if isinstance(sun, Sun) else np.asarray(sun, np.float64)
    if direction.shape != (3,) or not np.isfinite(direction).all() or np.linalg.norm(direction) < 1e-9:
        raise InvalidInputError(f"sun direction must be a finite non-zero [3] vector, got {direction}")
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= 16:
        raise InvalidInputError(f"stride must be an int in [1, 16], got {stride!r}")
    depth = torch.as_tensor(depth, dtype=torch.float32)
    if depth.ndim != 2:
        raise ShapeMismatchError(f"depth must be [H, W], got {tuple(depth.shape)}")
    if torch.isnan(depth).any():
        raise InvalidInputError("depth contains NaN (use inf where nothing was hit)")
    dev = depth.device
    h, w = depth.shape
    K = check_K(K)
    c2w = check_pose(pose.detach().cpu().numpy() if isinstance(pose, torch.Tensor) else pose, "camera pose")
    ex = None
    if occluders is not None and exclude is None:
        raise InvalidInputError("shadow_hint: occluders need exclude (the casters' own coverage, where they apply)")
    if occluders is not None and occluders.pose is not None:
        raise InvalidInputError("shadow_hint: occluders must be in world space (a Caster without pose)")
    if exclude is not None:
        ex = torch.as_tensor(exclude, dtype=torch.float32, device=dev)
        if ex.shape != (h, w):
            raise ShapeMismatchError(f"exclude must be [H, W] = {(h, w)}, got {tuple(ex.shape)}")
    casters = [c for c in casters if len(c.means)]
    if not casters:
        return torch.zeros(h, w, dtype=torch.float32, device=dev)
    # block centres (x * stride + stride / 2 in pixel units), each with the depth of the pixel it falls in
    s = stride if min(h, w) >= 2 * stride else 1
    hs, ws = -(-h // s), -(-w // s)
    xs = torch.arange(ws, device=dev, dtype=torch.float32) * s + s / 2.0
    ys = torch.arange(hs, device=dev, dtype=torch.float32) * s + s / 2.0
    d = depth[ys.long().clamp_max(h - 1)][:, xs.long().clamp_max(w - 1)]
    finite = torch.isfinite(d)
    d = torch.where(finite, d, torch.zeros_like(d))
    u = (xs - float(K[0, 2])) / float(K[0, 0])
    v = (ys - float(K[1, 2])) / float(K[1, 1])
    cam = torch.stack([u[None, :] * d, v[:, None] * d, d], dim=-1)  # [hs, ws, 3]
    R = torch.as_tensor(c2w[:3, :3], dtype=torch.float32, device=dev)
    t = torch.as_tensor(c2w[:3, 3], dtype=torch.float32, device=dev)
    world = cam @ R.T + t
    unit = direction / np.linalg.norm(direction)
    lit = torch.ones(hs, ws, dtype=torch.float32, device=dev)  # product of (1 - hint_i)
    for caster in casters:
        local_dir = caster.local_direction(unit)
        key = None if caster.key is None or cache is None else (caster.key, tuple(np.round(local_dir, 2)), size)
        lm = cache.get(key) if key is not None else None
        if lm is None:
            lm = light_map(caster, local_dir, size)
            if key is not None:
                _cache_put(cache, key, lm)
        pts = world
        if caster.pose is not None:  # the receivers in the caster's own frame: R^T (x - t)
            Rc = torch.as_tensor(caster.pose[:3, :3], dtype=torch.float32, device=dev)
            tc = torch.as_tensor(caster.pose[:3, 3], dtype=torch.float32, device=dev)
            pts = (world - tc) @ Rc
        lit = lit * (1.0 - _shade(lm, pts, bias_m, ramp_m))
    blocked = _full_size((1.0 - lit) * finite, s, depth)
    if ex is None:
        return blocked.contiguous()
    ex = ex.clamp(0.0, 1.0)
    blocked = blocked * (1.0 - ex)
    crop = _blocks_around(ex, s, hs, ws) if occluders is not None and len(occluders.means) else None
    if crop is not None:
        # only the blocks the asset's pixels are interpolated from: the rest of the frame is not the asset's
        y0, y1, x0, x1 = crop
        lit_self = torch.ones(y1 - y0, x1 - x0, dtype=torch.float32, device=dev)
        for caster in casters:
            # an asset that keeps its pose under a fixed sun (parked, a paused simulation) reuses its map; one
            # slot per asset, so a moving one does not push the light views out of the cache
            slot = None if caster.key is None or cache is None else ("occluders", caster.key)
            state = (id(occluders), tuple(np.round(unit, 2)), reach_m,
                     None if caster.pose is None else tuple(np.round(caster.pose[:3], 2).ravel()))
            kept = cache.get(slot) if slot is not None else None
            om = kept[1] if kept is not None and kept[0] == state else None
            if om is None:
                om = occluder_map(caster, occluders, unit, OCCLUDER_MAP_PX, reach_m)
                if slot is not None:
                    cache.pop(slot, None)
                    _cache_put(cache, slot, (state, om))
            lit_self = lit_self * (1.0 - _shade(om, world[y0:y1, x0:x1], bias_m, ramp_m))
        rows, cols = slice(y0 * s, min(y1 * s, h)), slice(x0 * s, min(x1 * s, w))
        shade = _full_size((1.0 - lit_self) * finite[y0:y1, x0:x1], s, depth[rows, cols])
        blocked[rows, cols] += shade * ex[rows, cols]
    return blocked.contiguous()


def _blocks_around(ex: torch.Tensor, stride: int, hs: int, ws: int, margin: int = 2) -> tuple[int, int, int, int] | None:
    """The block rows [y0, y1) and columns [x0, x1) of a ``stride`` grid ([hs, ws] blocks) that cover where
    ``ex`` [H, W] > 0 with ``margin`` blocks to spare (bilinear upsampling reads one block beyond a pixel's
    own, so values inside stay those of the whole map); None where ``ex`` is empty."""
    rows, cols = (ex > 0).any(dim=1).nonzero()[:, 0], (ex > 0).any(dim=0).nonzero()[:, 0]
    if not len(rows):
        return None
    return (max(int(rows[0]) // stride - margin, 0), min(int(rows[-1]) // stride + 1 + margin, hs),
            max(int(cols[0]) // stride - margin, 0), min(int(cols[-1]) // stride + 1 + margin, ws))


def _cache_put(cache: dict, key: Any, value: Any) -> None:
    while len(cache) >= LIGHT_MAP_CACHE:  # oldest first
        cache.pop(next(iter(cache)))
    cache[key] = value


def _full_size(blocks: torch.Tensor, stride: int, depth: torch.Tensor) -> torch.Tensor:
    """A [hs, ws] map on ``stride`` x ``stride`` blocks upsampled to ``depth``'s [H, W] (zero on the sky)."""
    if stride == 1:
        return blocks
    h, w = depth.shape
    up = F.interpolate(blocks[None, None], scale_factor=stride, mode="bilinear", align_corners=False)[0, 0, :h, :w]
    return up * torch.isfinite(depth)


def mesh_caster(mesh, pose: np.ndarray | None = None, spacing_m: float = 0.08, seed: int = 0) -> Caster:
    """Gaussians on a triangle mesh's surface (a ``trimesh.Trimesh``, local frame; ``pose`` [4, 4] to world):
    the synthetic streets' objects as the shadow hint sees a reconstructed asset. Even samples ``spacing_m``
    apart, isotropic, opaque."""
    import trimesh

    area = float(mesh.area)
    if area <= 0:
        raise InvalidInputError("mesh_caster: the mesh has no surface area")
    count = max(16, math.ceil(area / spacing_m**2))
    pts, _ = trimesh.sample.sample_surface(mesh, count, seed=seed)
    pts = np.asarray(pts, np.float64)
    if pose is not None:
        pts = pts @ np.asarray(pose)[:3, :3].T + np.asarray(pose)[:3, 3]
    n = len(pts)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    return Caster(torch.as_tensor(pts, dtype=torch.float32), quats, torch.full((n, 3), 0.6 * spacing_m),
                  torch.full((n,), 0.95))


__all__ = ["LIGHT_MAP_PX", "OCCLUDER_MAP_PX", "OCCLUDER_REACH_M", "Caster", "Sun", "draw_from_sun", "in_light_frustum",
           "light_map", "light_view", "mesh_caster", "occluder_map", "shadow_hint", "sun_direction"]
