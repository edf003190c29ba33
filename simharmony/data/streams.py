"""Paired data streams (DESIGN.md section 5): ISP modification, PBR shadows, Random Poisson Blending,
relighting (the reconstruction streams ``reinsert`` and ``novel_view`` are in
:mod:`simharmony.data.recon_streams`; every stream, the real ones of :mod:`simharmony.data.real` included,
is registered in :data:`simharmony.data.registry.STREAMS`).

Each stream has a ``@dataclass`` Config with documented ranges and a generator
``generate_<stream>(config, seed, count=None) -> Iterator[PairItem]`` that is deterministic in ``seed``
(``count=None`` = endless; use ``count`` or ``itertools.islice``). ``registry.STREAMS`` maps stream names to
``(ConfigClass, generator)``. Every stream renders procedural streets with Mitsuba
(:func:`scene_tools.pbr.render_street`) under random daylight (:func:`scene_tools.street.random_lighting`),
one T-frame ego sequence per scene (T = ``seq_len``), and makes ``items_per_scene`` items from it: each an
image (one random frame, T = 1) or, with probability ``sequence_prob``, the whole sequence.

- ``isp``: ``I_mix = M * I_isp + (1 - M) * I_orig`` with M the slightly soft mask of one vehicle or
  pedestrian (instance ids), I_isp the frame's linear HDR through a random software ISP
  (:mod:`simharmony.data.isp`, one parameter set per item, noise re-drawn per frame); target I_orig.
- ``shadow``: the object rendered alone (``only_ids``, premultiplied by alpha) composited in linear space
  over the street rendered without it (``exclude_ids``: no cast shadow, no interreflection) and tone
  mapped -> input; the full render -> target. Mask = the object's coverage, union where the target is
  darker than the input by more than ``shadow_threshold`` (its cast shadow), dilated by a pixel; outside
  the mask the input is the target (the renders differ there only by Monte Carlo noise). ``asset_mask`` =
  the object's coverage alone, dilated by a pixel: the mask a simulator would give. ``shadow_hint`` = where
  the object's shadow falls, and on the object where the rest of the street shades it, by shadow mapping
  (:func:`scene_tools.shadows.shadow_hint`: the object's mesh and the street's standing objects as Gaussians,
  the street's sun moved by a random ``hint_sun_jitter_deg`` error, the target's depth), as a simulator
  computes it at run time.
- ``rpb``: Random Poisson Blending (R2R): the object is Poisson-blended (``cv2.seamlessClone``) onto a
  random region of a reference image (the same frame index of the generator's next street, under other
  lighting), the blended foreground F_p is mixed ``alpha * F_p + (1 - alpha) * F_t`` and pasted back
  at its original position with the soft object mask -> input; the original -> target.
- ``relight``: the object rendered alone (``only_ids``) under another ``random_lighting`` (sun direction,
  colour, sky), composited in linear space over the street rendered under its own lighting without it
  (``exclude_ids``) and tone mapped -> input inside the mask; the consistent full render -> target.
  Mask = the object's coverage (alpha > 0.02) dilated by ``mask_dilate`` pixels; outside it input = target.
  Rendered alone, the object gets the full sun without the street's shadowing, so its inputs are nearly
  always too bright; ``in_street=True`` instead renders the whole street under the other lighting and takes
  the object's own pixels (its instance ids), so it is shadowed as the street would shadow it under that sun.

Every item's depth is the target's z-depth; flow/flow_valid are the target's geometric backward flow
(:func:`scene_tools.flow.sequence_flow`, moving objects included). :func:`stream_report` summarises
PSNR(input, target) inside the mask per stream.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from simharmony.data.isp import IspRanges, apply_isp, sample_isp_params
from simharmony.data.item import PairItem
from simharmony.errors import ConfigError, InvalidInputError
from simharmony.utils.config import Config

_SEED_MAX = 2**31 - 1


# --------------------------------------------------------------------------------------------------
# Shared config and scene rendering
# --------------------------------------------------------------------------------------------------


@dataclass
class SceneSource(Config):
    """Which streets are rendered: ``preset`` "tiny" (``StreetConfig.tiny``: 30 m street, few objects) or
    "default" (``StreetConfig()``: the 60 m demo street); image size ``width`` x ``height``; ``spp``
    samples per pixel; ``ego_speed_mps`` of the ego car (frames at 10 fps); ``seed_range`` [low, high):
    street and lighting seeds are drawn from it (disjoint ranges keep holdout sets apart from training,
    see :mod:`simharmony.data.presets`)."""

    preset: str = "default"
    width: int = 256
    height: int = 144
    spp: int = 16
    ego_speed_mps: float = 6.0
    seed_range: tuple[int, int] = (0, _SEED_MAX)

    def __post_init__(self) -> None:
        if self.preset not in ("tiny", "default"):
            raise ConfigError(f"SceneSource: preset={self.preset!r} must be 'tiny' or 'default'")
        if self.width < 8 or self.height < 8:
            raise ConfigError(f"SceneSource: image size {self.width}x{self.height} must be at least 8x8")
        if self.spp < 1:
            raise ConfigError(f"SceneSource: spp={self.spp} must be >= 1")
        if not (math.isfinite(self.ego_speed_mps) and self.ego_speed_mps >= 0):
            raise ConfigError(f"SceneSource: ego_speed_mps={self.ego_speed_mps} must be >= 0")
        lo, hi = (int(v) for v in self.seed_range)
        if not 0 <= lo < hi <= _SEED_MAX:
            raise ConfigError(f"SceneSource: seed_range={self.seed_range} must be [low, high) within [0, {_SEED_MAX}]")
        self.seed_range = (lo, hi)


def tiny_scene() -> SceneSource:
    """48x32 images at 4 spp on the tiny street: for tests."""
    return SceneSource(preset="tiny", width=48, height=32, spp=4)


@dataclass
class _StreamCommon:
    """Fields every stream config has (documented on each stream config), with the ISP stream's defaults;
    a stream redeclares the ones it changes (the field keeps its place)."""

    scene: SceneSource = field(default_factory=SceneSource)
    items_per_scene: int = 4
    sequence_prob: float = 0.2
    seq_len: int = 5
    categories: tuple[str, ...] = ("vehicle", "pedestrian")
    min_object_pixels: int = 40
    max_empty_scenes: int = 25

    def _check_common(self) -> None:
        o = type(self).__name__
        if self.items_per_scene < 1:
            raise ConfigError(f"{o}: items_per_scene={self.items_per_scene} must be >= 1")
        if not 0.0 <= self.sequence_prob <= 1.0:
            raise ConfigError(f"{o}: sequence_prob={self.sequence_prob} must be in [0, 1]")
        if self.seq_len < 2:
            raise ConfigError(f"{o}: seq_len={self.seq_len} must be >= 2")
        if self.min_object_pixels < 1:
            raise ConfigError(f"{o}: min_object_pixels={self.min_object_pixels} must be >= 1")
        bad = [c for c in self.categories if c not in ("vehicle", "pedestrian")]
        if not self.categories or bad:
            raise ConfigError(f"{o}: categories={self.categories} must be a non-empty subset of ('vehicle', 'pedestrian')")


@dataclass
class _Scene:
    """One rendered street sequence."""

    scene_id: str
    layout: Any  # StreetLayout
    frames: Any  # StreetFrames (full render, T frames)
    flow: np.ndarray  # [T, H, W, 2]
    flow_valid: np.ndarray  # [T, H, W]
    lighting_seed: int


def _street_config(src: SceneSource, scene_seed: int, num_frames: int):
    from scene_tools.street import CameraConfig, EgoConfig, StreetConfig

    camera = CameraConfig(width=src.width, height=src.height, fov_x_deg=75.0)
    ego = EgoConfig(num_frames=num_frames, speed_mps=src.ego_speed_mps, fps=10.0)
    if src.preset == "tiny":
        return StreetConfig.tiny(seed=scene_seed, camera=camera, ego=ego, spp=src.spp)
    return StreetConfig(seed=scene_seed, camera=camera, ego=ego, spp=src.spp)


def object_motions(layout, times: np.ndarray) -> list[dict[int, np.ndarray]]:
    """Per frame i: {moving id: [4, 4] world transform taking the object at times[i] to times[i-1]}."""
    out: list[dict[int, np.ndarray]] = [{}]
    for i in range(1, len(times)):
        out.append({
            iid: layout.object_pose(iid, times[i - 1]) @ np.linalg.inv(layout.object_pose(iid, times[i]))
            for iid in layout.moving_ids()
        })
    return out


def render_scene(src: SceneSource, scene_seed: int, num_frames: int, lighting_seed: int) -> _Scene:
    """Generate a street from ``scene_seed``, light it with ``random_lighting(lighting_seed)``, render
    ``num_frames`` ego frames and their geometric flow."""
    from scene_tools.flow import sequence_flow
    from scene_tools.pbr import render_street
    from scene_tools.street import generate_street, random_lighting

    layout = generate_street(_street_config(src, scene_seed, num_frames))
    lighting = random_lighting(lighting_seed)
    layout = dataclasses.replace(layout, lighting=lighting)
    frames = render_street(layout, progress=False, seed=scene_seed % 100_000)
    flow, valid = sequence_flow(
        frames.depth, frames.intrinsics.K, frames.poses, instance_ids=frames.instance_ids,
        object_motions=object_motions(layout, frames.times),
    )
    return _Scene(f"street-{scene_seed}", layout, frames, flow, valid, int(lighting_seed))


def _scenes(src: SceneSource, rng: np.random.Generator, num_frames: int) -> Iterator[_Scene]:
    while True:
        scene_seed, lighting_seed = (int(x) for x in rng.integers(*src.seed_range, size=2))
        yield render_scene(src, scene_seed, num_frames, lighting_seed)


def _candidates(scene: _Scene, categories, frame_idx: list[int], min_pixels: int) -> list[int]:
    """Foreground ids of ``categories`` covering >= ``min_pixels`` pixels in every frame of ``frame_idx``."""
    ids = [i for c in categories for i in scene.layout.ids_of(c)]
    inst = scene.frames.instance_ids[frame_idx]
    return sorted(i for i in ids if all((inst[k] == i).sum() >= min_pixels for k in range(len(frame_idx))))


def soft_mask(binary: np.ndarray, sigma: float) -> np.ndarray:
    """[H, W] {0, 1} -> [H, W] float32 in [0, 1] with slightly soft edges (Gaussian blur, max with a 1-px
    eroded core so the object interior stays exactly 1)."""
    m = binary.astype(np.float32)
    if sigma <= 0:
        return m
    blurred = cv2.GaussianBlur(m, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REPLICATE)
    core = cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    return np.clip(np.maximum(blurred, core), 0.0, 1.0).astype(np.float32)


def _item_frames(scene: _Scene, rng: np.random.Generator, sequence_prob: float) -> list[int]:
    T = len(scene.frames)
    if rng.uniform() < sequence_prob:
        return list(range(T))
    return [int(rng.integers(0, T))]


def _flow_for(scene: _Scene, idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
    flow, valid = scene.flow[idx].copy(), scene.flow_valid[idx].copy()
    flow[0], valid[0] = 0.0, False  # an image item (or the first frame) has no previous frame
    return flow, valid


def _metadata(stream: str, seed: int, index: int, scene: _Scene, idx: list[int], params: dict) -> dict:
    return {
        "stream": stream, "seed": int(seed), "item_index": int(index), "scene_id": scene.scene_id,
        "lighting_seed": scene.lighting_seed, "frames": [int(i) for i in idx], "params": params,
    }


def _generate(
    stream: str, config, seed: int, count: int | None, make: Callable[..., PairItem | None],
    lookahead: bool = False,
) -> Iterator[PairItem]:
    """Shared loop: scenes from ``seed``; ``make(scene, rng, index[, next_scene])`` returns an item or None
    (no usable object left in this scene)."""
    if count is not None and count < 0:
        raise InvalidInputError(f"count={count} must be >= 0 or None")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"seed={seed!r} must be an integer >= 0")
    rng = np.random.default_rng([int(seed), 0x5EED])
    # reconstruction streams render longer captures (``scene_frames``) and cut items out of them
    scenes = _scenes(config.scene, rng, getattr(config, "scene_frames", config.seq_len))
    made, empty = 0, 0
    scene = next(scenes) if (count is None or count > 0) else None
    while count is None or made < count:
        following = next(scenes) if lookahead else None
        produced = 0
        for _ in range(config.items_per_scene):
            if count is not None and made >= count:
                break
            item = make(scene, rng, made, following) if lookahead else make(scene, rng, made)
            if item is None:
                continue
            yield item
            made += 1
            produced += 1
        empty = 0 if produced else empty + 1
        if empty >= config.max_empty_scenes:
            raise InvalidInputError(
                f"{stream}: {empty} scenes in a row gave no usable foreground object "
                f"(min_object_pixels={config.min_object_pixels} at {config.scene.width}x{config.scene.height}); "
                "lower min_object_pixels or raise the resolution"
            )
        scene = following if lookahead else (next(scenes) if (count is None or made < count) else None)


# --------------------------------------------------------------------------------------------------
# 1. ISP modification
# --------------------------------------------------------------------------------------------------


@dataclass
class IspStreamConfig(_StreamCommon, Config):
    """ISP modification stream.

    - ``scene``: streets rendered (:class:`SceneSource`); ``seq_len`` frames per street (>= 2, default 5)
    - ``items_per_scene`` (default 4) items per street, each a sequence with probability ``sequence_prob``
      (default 0.2) else one random frame
    - ``categories``: foreground categories to modify; ``min_object_pixels`` (default 40): the object must
      cover at least this many pixels in every frame of the item
    - ``isp``: :class:`IspRanges` (exposure +-1.5 EV, white balance, tone curve, contrast, saturation,
      black level, noise); ``mask_sigma`` (px, default 0.7) softens the mask edge
    - ``min_change``: parameter sets are redrawn (up to 8 times) until the mean absolute change inside the
      mask is at least this (default 0.02), so no item sits at identity
    """

    isp: IspRanges = field(default_factory=IspRanges)
    mask_sigma: float = 0.7
    min_change: float = 0.02

    def __post_init__(self) -> None:
        self._check_common()
        if self.mask_sigma < 0 or self.min_change < 0:
            raise ConfigError("IspStreamConfig: mask_sigma and min_change must be >= 0")


def _make_isp(config: IspStreamConfig, seed: int, scene: _Scene, rng: np.random.Generator, index: int) -> PairItem | None:
    idx = _item_frames(scene, rng, config.sequence_prob)
    cands = _candidates(scene, config.categories, idx, config.min_object_pixels)
    if not cands:
        return None
    obj = int(cands[int(rng.integers(0, len(cands)))])
    fr = scene.frames
    mask = np.stack([soft_mask(fr.instance_ids[k] == obj, config.mask_sigma) for k in idx])
    target = fr.rgb[idx]
    exposure = float(fr.render_info.get("exposure", 1.0))
    for _attempt in range(8):
        params = sample_isp_params(rng, config.isp, base_exposure=exposure)
        isp = np.stack([
            apply_isp(fr.hdr[k], dataclasses.replace(params, noise_seed=(params.noise_seed + j) % _SEED_MAX))
            for j, k in enumerate(idx)
        ])
        inp = mask[..., None] * isp + (1.0 - mask[..., None]) * target
        change = float((np.abs(inp - target).mean(-1) * mask).sum() / max(mask.sum(), 1e-6))
        if change >= config.min_change:
            break
    flow, valid = _flow_for(scene, idx)
    md = _metadata("isp", seed, index, scene, idx, {
        "object_id": obj, "category": scene.layout.object(obj).category, "isp": params.to_dict(),
        "mean_abs_change_in_mask": round(change, 6),
    })
    return PairItem(np.clip(inp, 0, 1), target, mask, fr.depth[idx], flow, valid, md)


def generate_isp(config: IspStreamConfig | None = None, seed: int = 0, count: int | None = None) -> Iterator[PairItem]:
    """ISP-modification items (module docstring), deterministic in ``seed``; endless if ``count`` is None."""
    config = IspStreamConfig() if config is None else config
    yield from _generate("isp", config, seed, count, lambda s, r, i: _make_isp(config, seed, s, r, i))


# --------------------------------------------------------------------------------------------------
# 2. PBR shadows
# --------------------------------------------------------------------------------------------------


@dataclass
class ShadowStreamConfig(_StreamCommon, Config):
    """PBR shadow stream (object alone over the street without it, versus the full render).

    - ``scene``, ``seq_len``, ``sequence_prob`` (default 0.2), ``categories``, ``min_object_pixels``
      (default 40) as for the ISP stream; ``items_per_scene`` (default 2; each item costs two extra renders)
    - lighting: ``random_lighting`` per street (sun azimuth 0-360 deg, elevation 15-70 deg, intensity
      1.5-4.5, sky 0.25-0.7)
    - ``shadow_threshold``: display-space luma drop (default 0.03) above which a pixel counts as shadow;
      ``shadow_min_pixels`` (default 4): items whose object casts fewer visible shadow pixels are skipped
    - ``hint_sun_jitter_deg``: standard deviation of the error on the sun's azimuth and elevation (degrees)
      with which the item's ``shadow_hint`` is computed (default 4: a model trained on it tolerates an
      imperfect sun estimate; the holdout preset uses 0, the exact sun)
    """

    items_per_scene: int = 2
    shadow_threshold: float = 0.03
    shadow_min_pixels: int = 4
    hint_sun_jitter_deg: float = 4.0

    def __post_init__(self) -> None:
        self._check_common()
        if not 0 < self.shadow_threshold < 1:
            raise ConfigError(f"ShadowStreamConfig: shadow_threshold={self.shadow_threshold} must be in (0, 1)")
        if not 0 <= self.hint_sun_jitter_deg <= 45:
            raise ConfigError(f"ShadowStreamConfig: hint_sun_jitter_deg={self.hint_sun_jitter_deg} must be in [0, 45]")


def open_2x2(binary: np.ndarray) -> np.ndarray:
    """Morphological opening of a 0/1 uint8 [H, W] image with a 2x2 square, without a shift.

    cv2's default anchor for an even kernel is the same for erode and dilate, which shifts the result by
    a pixel; a true opening dilates with the reflected element, hence the two explicit anchors.
    """
    k2 = np.ones((2, 2), np.uint8)
    m = cv2.erode(binary, k2, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.dilate(m, k2, anchor=(1, 1), borderType=cv2.BORDER_CONSTANT, borderValue=0)


def shadow_mask(inp: np.ndarray, target: np.ndarray, obj_alpha: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Where the shadow-free composite ``inp`` [T, H, W, 3] is wrong, from the full render ``target``.

    shadow = target luma below input luma by more than ``threshold``, outside the object, after a 2x2
    opening (removes single-pixel path-tracing noise); mask [T, H, W] = (object coverage or shadow)
    dilated by one pixel (penumbra and edge pixels), as 0/1 float32. Returns (mask, shadow).
    """
    luma = np.array([0.2126, 0.7152, 0.0722], np.float32)
    drop = (inp - target) @ luma
    k3 = np.ones((3, 3), np.uint8)
    shadow = np.stack([open_2x2((d > threshold).astype(np.uint8)) for d in drop])
    shadow = shadow.astype(np.float32) * (obj_alpha < 0.5)
    core = ((obj_alpha > 0.02) | (shadow > 0)).astype(np.uint8)
    mask = np.stack([cv2.dilate(c, k3) for c in core]).astype(np.float32)
    return mask, shadow


def _make_shadow(config: ShadowStreamConfig, seed: int, scene: _Scene, rng: np.random.Generator, index: int) -> PairItem | None:
    from scene_tools.pbr import render_street, tonemap

    idx = _item_frames(scene, rng, config.sequence_prob)
    cands = _candidates(scene, config.categories, idx, config.min_object_pixels)
    rng.shuffle(cands)
    fr, layout = scene.frames, scene.layout
    exposure = float(fr.render_info.get("exposure", 1.0))
    traj = fr.trajectory[idx]
    rseed = int(fr.render_info.get("seed", 0)) + idx[0]  # same sampler seeds as the full render's frames
    for obj in cands[:2]:  # at most two tries per item: renders are the expensive part
        obj = int(obj)
        bg = render_street(layout, traj, exclude_ids=(obj,), progress=False, seed=rseed)
        fg = render_street(layout, traj, only_ids=(obj,), progress=False, seed=rseed)
        hdr = fg.hdr + (1.0 - fg.alpha[..., None]) * bg.hdr  # fg.hdr is premultiplied by alpha
        target = fr.rgb[idx]
        mask, shadow = shadow_mask(tonemap(hdr, exposure), target, fg.alpha, config.shadow_threshold)
        # Outside the mask the two renders differ only by Monte Carlo noise (the sampler paths diverge once
        # the geometry differs) and faint interreflections: keep the target there, so the pair teaches shadows.
        inp = np.where(mask[..., None] > 0, tonemap(hdr, exposure), target)
        if shadow.sum() < config.shadow_min_pixels * len(idx):
            continue
        flow, valid = _flow_for(scene, idx)
        md = _metadata("shadow", seed, index, scene, idx, {
            "object_id": obj, "category": layout.object(obj).category, "lighting": scene.layout.lighting.to_dict(),
            "shadow_pixels": int(shadow.sum()), "shadow_threshold": config.shadow_threshold,
        })
        # the object's own coverage: the mask a simulator inserting it gives (``mask`` needs the target)
        asset = coverage_mask(fg.alpha, dilate=1)
        sun = hint_sun(layout.lighting, [seed, index, 0x5AD0], config.hint_sun_jitter_deg)
        hint = object_shadow_hint(layout, obj, sun, fr.depth[idx], fr.trajectory, idx, asset)
        md["params"]["hint_sun"] = sun.to_dict()
        return PairItem(inp, target, mask, fr.depth[idx], flow, valid, md, asset_mask=asset, shadow_hint=hint)
    return None


def hint_sun(lighting, rng_key: list[int], sigma_deg: float):
    """The street's sun (a LightingConfig) as an item's shadow hint sees it: moved by a random ``sigma_deg``
    error drawn from a generator of its own (``rng_key``), so the item's other draws, and so its pixels, stay
    as they were."""
    from scene_tools.shadows import Sun

    sun = Sun(lighting.sun_azimuth_deg, max(lighting.sun_elevation_deg, 1.0))
    return sun.jittered(np.random.default_rng([int(k) for k in rng_key]), sigma_deg)


FLAT_CATEGORIES = ("ground", "road", "sidewalk", "lane_marking")  # surfaces that shade nothing standing on them
OCCLUDER_SPACING_M = 0.15  # the street as Gaussians for the hint: coarser than an asset, its shadows are large


def object_shadow_hint(layout, obj: int, sun, depth: np.ndarray, trajectory, idx: list[int],
                       exclude: np.ndarray) -> np.ndarray:
    """[T, H, W] shadow hint of street object ``obj`` (its mesh as Gaussians at each frame's time) in frames
    ``idx`` of ``trajectory`` with the items' ``depth`` [T, H, W]; on ``exclude`` (its coverage) the hint is
    where the rest of the street (its standing objects as Gaussians, as a reconstruction gives them) shades it."""
    from scene_tools.shadows import OCCLUDER_REACH_M, mesh_caster, shadow_hint

    o = layout.object(obj)
    mesh = o.mesh
    out = []
    static: dict = {}  # the standing objects that do not move, sampled once for all frames
    for k, i in enumerate(idx):
        t = float(trajectory.times[i])
        caster = mesh_caster(mesh, o.pose(t))
        occluders = street_occluders(layout, obj, t, caster.means.mean(0).numpy(), OCCLUDER_REACH_M + 10.0, static)
        out.append(shadow_hint([caster], sun, depth[k], trajectory.intrinsics_at(i).K, trajectory.poses[i],
                               exclude=exclude[k], occluders=occluders).numpy())
    return np.stack(out).astype(np.float32)


def street_occluders(layout, skip: int, t: float, centre: np.ndarray, radius_m: float, static: dict | None = None):
    """The street's standing objects (all but ``skip`` and the flat ground) whose bounds come within
    ``radius_m`` of ``centre`` [3] at time ``t``, as one world-space Caster (see ``mesh_caster``). ``static``:
    a dict kept between calls for one street, where the objects that do not move keep their samples."""
    import torch

    from scene_tools.shadows import Caster, mesh_caster

    parts = []
    for o in layout.objects:
        if o.instance_id == skip or o.category in FLAT_CATEGORIES:
            continue
        lo, hi = o.world_bounds(t)
        if np.linalg.norm(np.clip(centre, lo, hi) - centre) > radius_m:
            continue
        keep = static is not None and not o.is_moving
        part = static.get(o.instance_id) if keep else None
        if part is None:
            part = mesh_caster(o.mesh, o.pose(t), spacing_m=OCCLUDER_SPACING_M, seed=o.instance_id)
            if keep:
                static[o.instance_id] = part
        parts.append(part)
    if not parts:
        return None
    return Caster(*(torch.cat([getattr(c, f) for c in parts]) for f in ("means", "quats", "scales", "opacities")))


def generate_shadow(config: ShadowStreamConfig | None = None, seed: int = 0, count: int | None = None) -> Iterator[PairItem]:
    """PBR-shadow items (module docstring), deterministic in ``seed``; endless if ``count`` is None."""
    config = ShadowStreamConfig() if config is None else config
    yield from _generate("shadow", config, seed, count, lambda s, r, i: _make_shadow(config, seed, s, r, i))


# --------------------------------------------------------------------------------------------------
# 3. Random Poisson Blending
# --------------------------------------------------------------------------------------------------


@dataclass
class RpbStreamConfig(_StreamCommon, Config):
    """Random Poisson Blending stream (region-to-region-r2r).

    - ``scene``, ``seq_len``, ``sequence_prob`` (0.2), ``items_per_scene`` (4), ``categories``,
      ``min_object_pixels`` (40), ``mask_sigma`` (0.7 px) as for the ISP stream
    - ``alpha``: blend strength range (default [0.5, 1.0]): ``F = alpha * F_p + (1 - alpha) * F_t``
    - ``clone_dilate``: the Poisson region is the object mask dilated by this many pixels (default 2)
    - ``max_patch_fraction``: objects whose box exceeds this fraction of the image side are skipped (0.7)
    - ``min_change``: placements are redrawn (up to 8 times) until the mean absolute change inside the
      mask is at least this (default 0.02)
    The reference image is the same frame index of the next street the generator renders (other layout,
    other lighting); the placement is drawn once per item and kept across a sequence (shifted with the
    object's own motion, clamped to the image).
    """

    mask_sigma: float = 0.7
    alpha: tuple[float, float] = (0.5, 1.0)
    clone_dilate: int = 2
    max_patch_fraction: float = 0.7
    min_change: float = 0.02

    def __post_init__(self) -> None:
        self._check_common()
        a = tuple(self.alpha)
        if len(a) != 2 or not 0 <= a[0] <= a[1] <= 1:
            raise ConfigError(f"RpbStreamConfig: alpha={self.alpha} must be (low, high) within [0, 1]")
        if self.clone_dilate < 1:
            raise ConfigError(f"RpbStreamConfig: clone_dilate={self.clone_dilate} must be >= 1")
        if not 0 < self.max_patch_fraction <= 0.95:
            raise ConfigError(f"RpbStreamConfig: max_patch_fraction={self.max_patch_fraction} must be in (0, 0.95]")


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def poisson_blend_foreground(
    image: np.ndarray, clone_mask: np.ndarray, reference: np.ndarray, offset: tuple[int, int]
) -> np.ndarray:
    """Poisson-blend the masked part of ``image`` [H, W, 3] in [0, 1] onto ``reference`` [H', W', 3] shifted
    by ``offset`` = (dx, dy) pixels, and return the blended pixels *mapped back* to ``image``'s frame:
    [H, W, 3] float32 (equal to ``image`` outside ``clone_mask``).

    Uses ``cv2.seamlessClone`` (NORMAL_CLONE), which places the mask's bounding box (after clearing a
    1-pixel image border) with its centre at the given point: the point is chosen so that box lands at
    box + offset. The shifted box must lie inside ``reference`` (InvalidInputError otherwise).
    """
    m = (clone_mask > 0).astype(np.uint8) * 255
    m[0, :] = m[-1, :] = 0
    m[:, 0] = m[:, -1] = 0
    ys, xs = np.nonzero(m)
    if len(xs) == 0:
        raise InvalidInputError("clone_mask is empty (inside the 1-pixel border)")
    x0, y0, w, h = int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)
    dx, dy = int(offset[0]), int(offset[1])
    Hr, Wr = reference.shape[:2]
    if not (0 <= x0 + dx and x0 + dx + w <= Wr and 0 <= y0 + dy and y0 + dy + h <= Hr):
        raise InvalidInputError(f"shifted box ({x0 + dx}, {y0 + dy}, {w}x{h}) does not fit in the {Wr}x{Hr} reference")
    center = (x0 + dx + w // 2, y0 + dy + h // 2)
    blended = cv2.seamlessClone(_to_u8(image), _to_u8(reference), m, center, cv2.NORMAL_CLONE)
    out = image.astype(np.float32).copy()
    sl_src = (slice(y0, y0 + h), slice(x0, x0 + w))
    sl_dst = (slice(y0 + dy, y0 + dy + h), slice(x0 + dx, x0 + dx + w))
    inside = m[sl_src] > 0
    out[sl_src][inside] = blended[sl_dst][inside].astype(np.float32) / 255.0
    return out


def _box(binary: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(binary)
    return int(xs.min()), int(ys.min()), int(xs.max() + 1), int(ys.max() + 1)


def _make_rpb(
    config: RpbStreamConfig, seed: int, scene: _Scene, rng: np.random.Generator, index: int, reference: _Scene
) -> PairItem | None:
    idx = _item_frames(scene, rng, config.sequence_prob)
    cands = _candidates(scene, config.categories, idx, config.min_object_pixels)
    fr, H, W = scene.frames, scene.frames.rgb.shape[1], scene.frames.rgb.shape[2]
    rng.shuffle(cands)
    kernel = np.ones((2 * config.clone_dilate + 1,) * 2, np.uint8)
    for obj in cands:
        obj = int(obj)
        binaries = [(fr.instance_ids[k] == obj) for k in idx]
        clone = [cv2.dilate(b.astype(np.uint8), kernel) for b in binaries]
        boxes = [_box(c) for c in clone]
        if any((x1 - x0) > config.max_patch_fraction * W or (y1 - y0) > config.max_patch_fraction * H
               for x0, y0, x1, y1 in boxes):
            continue
        x0, y0, x1, y1 = boxes[0]
        mask = np.stack([soft_mask(b, config.mask_sigma) for b in binaries])
        target = fr.rgb[idx]
        for _attempt in range(8):
            # a random destination for the first frame's box (inside the 1-px border), same offset after
            nx = int(rng.integers(1, max(2, W - (x1 - x0))))
            ny = int(rng.integers(1, max(2, H - (y1 - y0))))
            dx, dy = nx - x0, ny - y0
            alpha = float(rng.uniform(*config.alpha))
            frames_in = []
            for j, k in enumerate(idx):
                bx0, by0, bx1, by1 = boxes[j]
                fdx = int(np.clip(dx, 1 - bx0, W - 1 - bx1))  # keep later frames' boxes inside the image
                fdy = int(np.clip(dy, 1 - by0, H - 1 - by1))
                fp = poisson_blend_foreground(target[j], clone[j], reference.frames.rgb[k], (fdx, fdy))
                ft = alpha * fp + (1.0 - alpha) * target[j]
                frames_in.append(mask[j][..., None] * ft + (1.0 - mask[j][..., None]) * target[j])
            inp = np.clip(np.stack(frames_in), 0.0, 1.0)
            change = float((np.abs(inp - target).mean(-1) * mask).sum() / max(mask.sum(), 1e-6))
            if change >= config.min_change:
                break
        flow, valid = _flow_for(scene, idx)
        md = _metadata("rpb", seed, index, scene, idx, {
            "object_id": obj, "category": scene.layout.object(obj).category, "reference_scene": reference.scene_id,
            "offset": [dx, dy], "alpha": round(alpha, 6), "mean_abs_change_in_mask": round(change, 6),
        })
        return PairItem(inp, target, mask, fr.depth[idx], flow, valid, md)
    return None


def generate_rpb(config: RpbStreamConfig | None = None, seed: int = 0, count: int | None = None) -> Iterator[PairItem]:
    """Random-Poisson-Blending items (module docstring), deterministic in ``seed``; endless if ``count`` is None."""
    config = RpbStreamConfig() if config is None else config
    yield from _generate(
        "rpb", config, seed, count, lambda s, r, i, ref: _make_rpb(config, seed, s, r, i, ref), lookahead=True
    )


# --------------------------------------------------------------------------------------------------
# 4. Relighting
# --------------------------------------------------------------------------------------------------


@dataclass
class RelightStreamConfig(_StreamCommon, Config):
    """Physically based relighting stream (the object lit by another sun and sky than its street).

    - ``scene``, ``seq_len``, ``sequence_prob`` (0.2), ``categories``, ``min_object_pixels`` (40) as for the
      ISP stream; ``items_per_scene`` (default 2; each item costs two extra renders)
    - the other lighting is ``random_lighting`` of a fresh seed (sun azimuth 0-360 deg, elevation 15-70 deg,
      intensity 1.5-4.5, warm-to-white sun, sky 0.25-0.7); it is redrawn (up to ``max_lighting_draws``
      = 3 times, one object-only render each) until the mean absolute change inside the mask is at least
      ``min_change`` (default 0.03)
    - ``mask_dilate`` (default 1 px): the mask is the object's coverage (alpha > 0.02) dilated by this
    - ``in_street`` (default False): render the whole street under the other lighting and replace only the
      object's pixels (instance id, no soft edge), so the object keeps the street's shadowing under the
      other sun; one full render per draw instead of an object-only one plus the street without it
    """

    items_per_scene: int = 2
    min_change: float = 0.03
    max_lighting_draws: int = 3
    mask_dilate: int = 1
    in_street: bool = False

    def __post_init__(self) -> None:
        self._check_common()
        if self.min_change < 0 or self.max_lighting_draws < 1 or self.mask_dilate < 0:
            raise ConfigError("RelightStreamConfig: min_change and mask_dilate must be >= 0, max_lighting_draws >= 1")


def coverage_mask(alpha: np.ndarray, dilate: int, threshold: float = 0.02) -> np.ndarray:
    """Object coverage ``alpha`` [T, H, W] -> 0/1 float32 mask [T, H, W]: alpha > ``threshold`` dilated by
    ``dilate`` pixels (square kernel; edge pixels mix object and background)."""
    k = np.ones((2 * dilate + 1,) * 2, np.uint8)
    core = (np.asarray(alpha) > threshold).astype(np.uint8)
    return np.stack([cv2.dilate(c, k) if dilate > 0 else c for c in core]).astype(np.float32)


def _make_relight(config: RelightStreamConfig, seed: int, scene: _Scene, rng: np.random.Generator, index: int) -> PairItem | None:
    from scene_tools.pbr import render_street, tonemap
    from scene_tools.street import random_lighting

    idx = _item_frames(scene, rng, config.sequence_prob)
    cands = _candidates(scene, config.categories, idx, config.min_object_pixels)
    if not cands:
        return None
    obj = int(cands[int(rng.integers(0, len(cands)))])
    fr, layout = scene.frames, scene.layout
    exposure = float(fr.render_info.get("exposure", 1.0))
    traj = fr.trajectory[idx]
    rseed = int(fr.render_info.get("seed", 0)) + idx[0]
    target = fr.rgb[idx]
    if config.in_street:
        own = (fr.instance_ids[idx] == obj).astype(np.float32)  # [T, H, W] the object's pixels
        own_mask = coverage_mask(own, config.mask_dilate, threshold=0.5)

        def relit(other):
            full = tonemap(render_street(layout, traj, lighting=other, progress=False, seed=rseed).hdr, exposure)
            return np.where(own[..., None] > 0, full, target), own_mask
    else:
        # the street under its own lighting without the object: what shows through the object's soft edges
        bg = render_street(layout, traj, exclude_ids=(obj,), progress=False, seed=rseed)

        def relit(other):
            fg = render_street(layout, traj, lighting=other, only_ids=(obj,), progress=False, seed=rseed)
            mask = coverage_mask(fg.alpha, config.mask_dilate)
            hdr = fg.hdr + (1.0 - fg.alpha[..., None]) * bg.hdr  # fg.hdr is premultiplied by alpha
            # outside the object the composite equals the consistent render up to Monte Carlo noise: keep the
            # target there, so the pair teaches only the object's lighting
            return np.where(mask[..., None] > 0, tonemap(hdr, exposure), target), mask

    best = None
    for _draw in range(config.max_lighting_draws):
        light_seed = int(rng.integers(*config.scene.seed_range))
        other = random_lighting(light_seed)
        inp, mask = relit(other)
        change = float((np.abs(inp - target).mean(-1) * mask).sum() / max(mask.sum(), 1e-6))
        if best is None or change > best[0]:
            best = (change, inp, mask, light_seed, other)
        if change >= config.min_change:
            break
    change, inp, mask, light_seed, other = best
    if mask.sum() == 0:
        return None
    flow, valid = _flow_for(scene, idx)
    md = _metadata("relight", seed, index, scene, idx, {
        "object_id": obj, "category": layout.object(obj).category, "lighting": layout.lighting.to_dict(),
        "object_lighting_seed": light_seed, "object_lighting": other.to_dict(),
        "mean_abs_change_in_mask": round(change, 6), "in_street": config.in_street,
    })
    return PairItem(np.clip(inp, 0.0, 1.0), target, mask, fr.depth[idx], flow, valid, md)


def generate_relight(config: RelightStreamConfig | None = None, seed: int = 0, count: int | None = None) -> Iterator[PairItem]:
    """Relighting items (module docstring), deterministic in ``seed``; endless if ``count`` is None."""
    config = RelightStreamConfig() if config is None else config
    yield from _generate("relight", config, seed, count, lambda s, r, i: _make_relight(config, seed, s, r, i))


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------

# Bumped when a stream's items change for the same config and seed (2: shadow items carry asset_mask; 3:
# re-insertion and novel-view reconstructions no longer depend on the thread count; 4: re-insertion's
# background is reconstructed without the object, so its shadow is missing from the input; 5: shadow and
# re-insertion items carry shadow_hint), so caches of generated items (the bench's smoke holdout) are made anew.
ITEMS_REVISION = 5
def psnr_in_mask(inp: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (dB) of ``inp`` vs ``target`` [..., H, W, 3] inside ``mask`` [..., H, W], pooled over all frames:
    :func:`simharmony.metrics.fpsnr` of the frames stacked into one image; inf if identical inside the
    mask, nan if the mask is empty."""
    from simharmony.metrics import fpsnr

    w = np.shape(inp)[-2]
    stack = lambda x, *tail: np.asarray(x).reshape(-1, w, *tail)  # noqa: E731
    return float(fpsnr(stack(inp, 3), stack(target, 3), stack(mask), empty="nan"))


def stream_report(items: Iterable[PairItem]) -> dict[str, dict[str, float]]:
    """Per stream: ``n``, ``median``, ``p10``, ``p90`` of PSNR(input, target) inside the mask (dB),
    ``identity`` = how many items are identical inside the mask, and ``sequences``."""
    psnrs: dict[str, list[float]] = {}
    seqs: dict[str, int] = {}
    for it in items:
        psnrs.setdefault(it.stream, []).append(psnr_in_mask(it.input, it.target, it.mask))
        seqs[it.stream] = seqs.get(it.stream, 0) + int(it.is_sequence)
    out = {}
    for name, vals in sorted(psnrs.items()):
        v = np.asarray(vals, np.float64)
        finite = v[np.isfinite(v)]
        q = np.percentile(finite, [10, 50, 90]) if len(finite) else [math.nan] * 3
        out[name] = {
            "n": len(v), "sequences": int(seqs[name]), "identity": int(np.isinf(v).sum()),
            "p10": float(q[0]), "median": float(q[1]), "p90": float(q[2]),
        }
    return out


def format_report(report: dict[str, dict[str, float]]) -> str:
    lines = [f"{'stream':<10}{'n':>6}{'seq':>6}{'ident':>7}{'p10':>8}{'median':>8}{'p90':>8}   PSNR in mask (dB)"]
    for name, r in report.items():
        lines.append(f"{name:<10}{r['n']:>6}{r['sequences']:>6}{r['identity']:>7}{r['p10']:>8.2f}{r['median']:>8.2f}{r['p90']:>8.2f}")
    return "\n".join(lines)

