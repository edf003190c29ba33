"""Reconstruction-based data streams (DESIGN.md section 5): asset re-insertion and novel-view artifacts.

Both streams render a street capture of ``scene_frames`` ego frames with Mitsuba (the PBR ground truth,
:func:`simharmony.data.streams.render_scene`), reconstruct it with 3DGS (:func:`scene_tools.reconstruct.
reconstruct`) and cut items of one frame or ``seq_len`` consecutive frames out of the capture. Targets are
always PBR renders at the item's poses; depth / flow / flow_valid are the target's (exact, from the PBR
z-depth and :func:`scene_tools.flow.sequence_flow`).

Reconstructions are expensive, so they are cached per street: ``<cache_dir>/<scene id>-<key>.safetensors``
where the key hashes the scene source, the scene and lighting seeds, the training views, the
reconstruction config and how the training images were made (PBR or a cycle render). Repeated items of
one street, other streams, later runs and resumed runs reuse them; a corrupt cache file is rebuilt.

- ``reinsert``: the street is reconstructed from all its views (Gaussians labelled with instance ids), the
  Gaussians of one parked vehicle become an asset (:func:`scene_tools.assets.extract_asset`) and are
  re-inserted with :class:`scene_tools.scene.Scene` on an :class:`~scene_tools.scene.ObjectTrack` built
  from the object's own layout poses at the frame times (no shadow: Gaussians cast none). The background
  (``background``) is by default a second reconstruction of the capture rendered without the object
  (``"object_removed"``: like the paper's static background, it holds neither the object nor its shadow,
  so the pair teaches the shadow too); ``"full"`` takes the full reconstruction minus the object's
  Gaussians, whose ground still carries the object's shadow baked in (with ``objects_per_scene=0``: the
  stream before ITEMS_REVISION 4).
  Input = the Gaussian render (background reconstruction included, as in a simulator); target = the PBR
  frames; mask = ``inserted_mask > mask_alpha`` dilated by ``mask_dilate`` pixels, the mask a simulator
  gives. Outside the mask the input carries the background's reconstruction error (the model sees that
  in deployment too) and lacks the object's shadow.
- ``novel_view``: the four degradations of DIFIX3D+, one drawn per item (weights ``degradation_weights``):

  * ``sparse``: reconstruct from every k-th view (k from ``sparse_every``, one k per street), render the
    item's frames (single-frame items are drawn among the views left out);
  * ``underfit``: stop at a fraction (``underfit_fractions``, within 25-75%, one per street) of the
    iteration schedule (the learning-rate decay still spans the full schedule: a truly interrupted run);
  * ``cross``: reconstruct from the ego trajectory, render the trajectory shifted ``cross_shift_m`` to the
    left; the target is the PBR render of that shifted trajectory;
  * ``cycle``: reconstruct, render the whole trajectory shifted ``cycle_shift_m`` to the left,
    reconstruct again from those renders, render back at the original poses.

  Mask: per pixel ``mean_c |input - target| > mask_threshold`` (default 0.06 in display units, above the
  path tracer's noise at the default spp), opened with a 2x2 kernel (drops isolated noise pixels) and
  dilated by ``mask_dilate`` (2) pixels so the artifacts' soft surroundings are included. Items whose mask
  has fewer than ``min_mask_pixels`` pixels per frame (a reconstruction that is already right there) are
  skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from simharmony.data.item import PairItem
from simharmony.data.streams import (
    open_2x2,
    SceneSource,
    _flow_for,
    _generate,
    _metadata,
    _Scene,
    _StreamCommon,
    hint_sun,
    object_motions,
)
from simharmony.errors import ConfigError, CorruptFileError
from simharmony.utils.config import Config

DEFAULT_CACHE_DIR = "data/cache/recon"


# Reconstruction settings as plain dicts of ReconstructionConfig fields (scalars only, so they round-trip
# through YAML unchanged): scene_tools is imported only when a stream config is built or used, so
# reading shards never imports it.
_DEFAULT_RECON = {
    "iterations": 300, "lr_decay_steps": 300, "sh_degree": 0, "init_num_points": 6000, "sky_init_points": 400,
    "densify_start": 50, "densify_every": 50, "densify_stop": 220, "opacity_reset_every": 10_000,
    "max_gaussians": 20_000, "heldout_every": 0, "eval_every": 10_000, "log_every": 50,
    "checkpoint_every": 10_000, "device": "cpu",
}
_TINY_RECON = {
    "iterations": 60, "lr_decay_steps": 60, "sh_degree": 0, "init_num_points": 1500, "sky_init_points": 100,
    "densify_start": 20, "densify_every": 20, "densify_stop": 50, "opacity_reset_every": 10_000,
    "max_gaussians": 6000, "heldout_every": 0, "eval_every": 10_000, "log_every": 10,
    "checkpoint_every": 10_000, "device": "cpu",
}


def default_recon() -> dict:
    """Reconstruction settings (ReconstructionConfig fields) for data generation at 256x144: a short CPU
    schedule (300 steps, at most 20k Gaussians), SH degree 0, no held-out views (every view trains), checkpoints off (the cache
    keeps the result). Set ``"device": "cuda"`` on a GPU machine (results then differ from CPU runs)."""
    return dict(_DEFAULT_RECON)


def tiny_recon() -> dict:
    """A 60-step reconstruction for 48x32 test streets (seconds on a CPU)."""
    return dict(_TINY_RECON)


def make_recon_config(recon: dict, **changes):
    """``recon`` (+ ``changes``) -> :class:`scene_tools.reconstruct.ReconstructionConfig` (ConfigError if invalid)."""
    from scene_tools.reconstruct import ReconstructionConfig

    return ReconstructionConfig.from_dict({**recon, **changes})


def resolve_cache_dir(cache_dir: str) -> Path:
    """``cache_dir`` or, when empty, ``$SIMHARMONY_RECON_CACHE`` or ``data/cache/recon``."""
    return Path(cache_dir or os.environ.get("SIMHARMONY_RECON_CACHE", "") or DEFAULT_CACHE_DIR)


# --------------------------------------------------------------------------------------------------
# Cached reconstruction and rendering
# --------------------------------------------------------------------------------------------------


# Part of every cache key: bump it when the same config reconstructs differently (2: the CPU rasterizer's
# gradients became independent of the thread count), so no stale reconstruction is reused.
RECON_REVISION = 2


def _cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_reconstruction(images, recon_config, cache_dir: Path, scene_id: str, key_parts: dict):
    """Reconstruct ``images`` (PosedImages) with ``recon_config`` or load the cached result.

    ``key_parts`` must identify the images (scene, seeds, views, how they were made); the config is added
    to the key. Returns (GaussianScene, cache path, hit: bool)."""
    from scene_tools.gaussians import GaussianScene
    from scene_tools.reconstruct import reconstruct

    key = _cache_key({**key_parts, "recon": recon_config.to_dict(), "num_images": len(images.images),
                      "revision": RECON_REVISION})
    path = Path(cache_dir) / f"{scene_id}-{key}.safetensors"
    if path.is_file():
        try:
            return GaussianScene.load(path), path, True
        except (CorruptFileError, OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # truncated / foreign file: rebuild it
    result = reconstruct(images, recon_config, progress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    result.scene.save(path)
    return result.scene, path, False


def render_gaussians(gaussians, trajectory, inserts=(), sun=None) -> dict[str, np.ndarray]:
    """Render a GaussianScene (plus ``inserts`` = [(asset, ObjectTrack)]) along ``trajectory``:
    {rgb [T, H, W, 3], depth [T, H, W], inserted_mask [T, H, W]} as numpy float32, and ``shadow_hint``
    [T, H, W] when a ``sun`` (:class:`scene_tools.shadows.Sun`) is given and something is inserted."""
    from scene_tools.scene import Scene

    scene = Scene(gaussians, intrinsics=trajectory.intrinsics)
    scene.sun = sun
    for asset, track in inserts:
        scene.insert(asset, track)
    frames = scene.render(trajectory, progress=False)
    out = {name: frames.stack(name).detach().cpu().numpy().astype(np.float32) for name in ("rgb", "depth", "inserted_mask")}
    if sun is not None and inserts:
        out["shadow_hint"] = np.stack([f.shadow_hint.detach().cpu().numpy() for f in frames]).astype(np.float32)
    return out


def _scene_key(src: SceneSource, scene: _Scene) -> dict:
    return {"source": src.to_dict(), "scene_id": scene.scene_id, "lighting_seed": scene.lighting_seed,
            "frames": len(scene.frames)}


def _window(T: int, seq_len: int, rng: np.random.Generator, sequence_prob: float, singles=None) -> list[int]:
    """``seq_len`` consecutive frames with probability ``sequence_prob``, else one frame (from ``singles``)."""
    if rng.uniform() < sequence_prob and T >= seq_len:
        start = int(rng.integers(0, T - seq_len + 1))
        return list(range(start, start + seq_len))
    pool = list(singles) if singles else list(range(T))
    return [int(pool[int(rng.integers(0, len(pool)))])]


def difference_mask(inp: np.ndarray, target: np.ndarray, threshold: float, dilate: int) -> np.ndarray:
    """[T, H, W, 3] pair -> 0/1 float32 mask [T, H, W]: mean |inp - target| over channels > ``threshold``,
    2x2 opening (isolated noise pixels go), then dilation by ``dilate`` pixels."""
    diff = np.abs(np.asarray(inp, np.float32) - np.asarray(target, np.float32)).mean(-1)
    kd = np.ones((2 * dilate + 1,) * 2, np.uint8)
    out = []
    for d in diff:
        m = open_2x2((d > threshold).astype(np.uint8))
        out.append(cv2.dilate(m, kd) if dilate > 0 else m)
    return np.stack(out).astype(np.float32)


def _pbr_at(scene: _Scene, trajectory, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PBR rgb, depth, flow, flow_valid of the scene's layout at ``trajectory`` (its own lighting)."""
    from scene_tools.flow import sequence_flow
    from scene_tools.pbr import render_street

    fr = render_street(scene.layout, trajectory, progress=False, seed=seed)
    flow, valid = sequence_flow(
        fr.depth, fr.intrinsics.K, fr.poses, instance_ids=fr.instance_ids,
        object_motions=object_motions(scene.layout, fr.times),
    )
    flow[0], valid[0] = 0.0, False
    return fr.rgb, fr.depth, flow, valid


# --------------------------------------------------------------------------------------------------
# 5. Asset re-insertion
# --------------------------------------------------------------------------------------------------


REINSERT_BACKGROUNDS = ("object_removed", "full")


@dataclass
class _ReconStreamCommon(_StreamCommon):
    """Fields of the streams that reconstruct a captured street (documented on each stream config)."""

    scene_frames: int = 12
    sequence_prob: float = 0.3
    recon: dict[str, Any] = field(default_factory=default_recon)
    cache_dir: str = ""
    mask_dilate: int = 1

    def _check_common(self) -> None:
        super()._check_common()
        o = type(self).__name__
        if not isinstance(self.recon, dict):
            raise ConfigError(f"{o}: recon must be a mapping of ReconstructionConfig fields, got {type(self.recon).__name__}")
        try:
            make_recon_config(self.recon)
        except ConfigError as e:
            raise ConfigError(f"{o}.recon: {e}") from e
        if self.scene_frames < self.seq_len:
            raise ConfigError(f"{o}: scene_frames={self.scene_frames} must be >= seq_len={self.seq_len}")
        if self.mask_dilate < 0:
            raise ConfigError(f"{o}: mask_dilate={self.mask_dilate} must be >= 0")


@dataclass
class ReinsertStreamConfig(_ReconStreamCommon, Config):
    """Asset re-insertion stream (module docstring).

    - ``scene``; ``scene_frames`` (default 12) frames per captured street (all reconstructed);
      ``seq_len`` (5), ``sequence_prob`` (0.3), ``items_per_scene`` (4: the street's reconstructions serve them all)
    - ``categories`` (vehicle), ``parked_only`` (True: a moving vehicle smears in a static reconstruction),
      ``min_object_pixels`` (40, in the target, every frame), ``min_asset_gaussians`` (20)
    - ``background``: ``"object_removed"`` (a reconstruction of the capture rendered without the object: no
      shadow) or ``"full"`` (the full reconstruction minus the object's Gaussians: its shadow stays);
      ``objects_per_scene`` (2; 0 = no limit): distinct objects re-inserted per street, since each one
      costs a PBR render and a reconstruction of its own with ``"object_removed"``
    - ``recon``: :class:`scene_tools.reconstruct.ReconstructionConfig` fields as a dict (:func:`default_recon`);
      ``cache_dir`` ("" = ``$SIMHARMONY_RECON_CACHE`` or ``data/cache/recon``)
    - ``mask_alpha`` (0.3): inserted-opacity threshold of the mask; ``mask_dilate`` (1 px)
    - ``hint_sun_jitter_deg`` (4; the holdout preset: 0): the items' ``shadow_hint`` (the re-inserted asset's
      shadow by shadow mapping, as ``Scene.render_frame`` computes it) uses the street's sun moved by this
      random error on each angle
    """

    categories: tuple[str, ...] = ("vehicle",)
    parked_only: bool = True
    min_asset_gaussians: int = 20
    background: str = "object_removed"
    objects_per_scene: int = 2
    mask_alpha: float = 0.3
    hint_sun_jitter_deg: float = 4.0

    def __post_init__(self) -> None:
        self._check_common()
        if not 0 <= self.hint_sun_jitter_deg <= 45:
            raise ConfigError(f"ReinsertStreamConfig: hint_sun_jitter_deg={self.hint_sun_jitter_deg} must be in [0, 45]")
        if not 0 < self.mask_alpha < 1:
            raise ConfigError(f"ReinsertStreamConfig: mask_alpha={self.mask_alpha} must be in (0, 1)")
        if self.min_asset_gaussians < 1:
            raise ConfigError("ReinsertStreamConfig: min_asset_gaussians must be >= 1")
        if self.background not in REINSERT_BACKGROUNDS:
            raise ConfigError(f"ReinsertStreamConfig: background={self.background!r} must be one of {REINSERT_BACKGROUNDS}")
        if self.objects_per_scene < 0:
            raise ConfigError(f"ReinsertStreamConfig: objects_per_scene={self.objects_per_scene} must be >= 0 (0 = no limit)")


def _render_seed(scene: _Scene, first_frame: int = 0) -> int:
    """The capture's sampler seed for a render that starts at frame ``first_frame`` of it."""
    return int(scene.frames.render_info.get("seed", 0)) + first_frame


def _street_reconstruction(config, scene: _Scene, without: int | None = None):
    """The street reconstructed from all its captured views (the Gaussians labelled with instance ids), or,
    with ``without``, from the capture rendered again without that object (no geometry, so no shadow; the
    capture's sampler seeds). (GaussianScene, cache path, hit); kept on the scene for its later items."""
    from scene_tools.pbr import render_street

    memo = scene.__dict__.setdefault("_reconstructions", {})
    if without not in memo:
        fr = scene.frames
        key = {**_scene_key(config.scene, scene), "views": list(range(len(fr))), "made_by": "pbr"}
        if without is None:
            images = fr.to_posed_images()
        else:
            images = render_street(scene.layout, fr.trajectory, exclude_ids=(without,), progress=False,
                                   seed=_render_seed(scene)).to_posed_images()
            key["exclude_ids"] = [int(without)]
        memo[without] = cached_reconstruction(
            images, make_recon_config(config.recon), resolve_cache_dir(config.cache_dir), scene.scene_id, key)
    return memo[without]


def _make_reinsert(config: ReinsertStreamConfig, seed: int, scene: _Scene, rng: np.random.Generator, index: int) -> PairItem | None:
    import torch

    from scene_tools.assets import extract_asset
    from scene_tools.scene import ObjectTrack

    fr, layout = scene.frames, scene.layout
    gs, cache_path, _hit = _street_reconstruction(config, scene)
    used = scene.__dict__.setdefault("_reinsert_used", set())  # (object, frames) already made from this street
    objects = {o for o, _ in used}
    full_up = 0 < config.objects_per_scene <= len(objects)  # then only objects already re-inserted here
    for _attempt in range(4):
        idx = _window(len(fr), config.seq_len, rng, config.sequence_prob)
        inst = fr.instance_ids[idx]
        cands = []
        for c in config.categories:
            for i in layout.ids_of(c):
                if config.parked_only and layout.object(i).is_moving:
                    continue
                if int((gs.instance_ids == i).sum()) < config.min_asset_gaussians or (int(i), tuple(idx)) in used:
                    continue
                if full_up and int(i) not in objects:
                    continue
                if all((inst[k] == i).sum() >= config.min_object_pixels for k in range(len(idx))):
                    cands.append(int(i))
        if cands:
            break
    if not cands:
        return None
    obj = cands[int(rng.integers(0, len(cands)))]
    used.add((obj, tuple(idx)))
    times = fr.times
    t_ref = float(times[len(times) // 2])  # the reconstruction saw the object around the capture's middle
    pose_ref = layout.object_pose(obj, t_ref)
    heading = float(np.arctan2(pose_ref[1, 0], pose_ref[0, 0]))
    asset = extract_asset(
        gs, obj, category=layout.object(obj).category, source=scene.scene_id,
        lighting=layout.lighting.to_dict(), heading=heading, created_by="simharmony.data.recon_streams",
    )
    if config.background == "object_removed":
        background, bg_path, _hit = _street_reconstruction(config, scene, without=obj)
    else:
        background, bg_path = gs.select(gs.instance_ids != obj), cache_path
    source_pose = np.asarray(asset.info.source_pose, np.float64)
    item_times = times[idx]
    poses = np.stack([layout.object_pose(obj, t) @ np.linalg.inv(pose_ref) @ source_pose for t in item_times])
    track = ObjectTrack(item_times, poses)
    sun = hint_sun(layout.lighting, [seed, index, 0x5AD1], config.hint_sun_jitter_deg)
    with torch.no_grad():
        out = render_gaussians(background, fr.trajectory[idx], inserts=[(asset, track)], sun=sun)
    target = fr.rgb[idx]
    inp = np.clip(out["rgb"], 0.0, 1.0)
    k = np.ones((2 * config.mask_dilate + 1,) * 2, np.uint8)
    mask = np.stack([cv2.dilate((m > config.mask_alpha).astype(np.uint8), k) for m in out["inserted_mask"]])
    mask = mask.astype(np.float32)
    if (mask.reshape(len(idx), -1).sum(1) < config.min_object_pixels // 2).any():
        return None  # the asset lost most of its Gaussians (outliers) or is hidden: nothing to harmonise
    flow, valid = _flow_for(scene, idx)
    from simharmony.data.streams import psnr_in_mask

    md = _metadata("reinsert", seed, index, scene, idx, {
        "object_id": obj, "category": layout.object(obj).category, "asset_id": asset.id,
        "asset_gaussians": len(asset.gaussians), "background_gaussians": len(background),
        "lighting": layout.lighting.to_dict(), "recon_iterations": int(make_recon_config(config.recon).iterations),
        "reconstruction": cache_path.name, "background": config.background, "background_reconstruction": bg_path.name,
        "psnr_in_mask": round(psnr_in_mask(inp, target, mask), 4), "hint_sun": sun.to_dict(),
    })
    return PairItem(inp, target, mask, fr.depth[idx], flow, valid, md, shadow_hint=out["shadow_hint"])


def generate_reinsert(config: ReinsertStreamConfig | None = None, seed: int = 0, count: int | None = None) -> Iterator[PairItem]:
    """Asset re-insertion items (module docstring), deterministic in ``seed``; endless if ``count`` is None."""
    config = ReinsertStreamConfig() if config is None else config
    yield from _generate("reinsert", config, seed, count, lambda s, r, i: _make_reinsert(config, seed, s, r, i))


# --------------------------------------------------------------------------------------------------
# 1. Novel-view artifacts
# --------------------------------------------------------------------------------------------------

DEGRADATIONS = ("sparse", "underfit", "cross", "cycle")


@dataclass
class NovelViewStreamConfig(_ReconStreamCommon, Config):
    """Novel-view artifact stream, DIFIX3D+'s four degradations (module docstring).

    - ``scene``; ``scene_frames`` (12) frames per captured street; ``seq_len`` (5), ``sequence_prob``
      (0.3), ``items_per_scene`` (6: the street's reconstructions are shared by its items)
    - ``degradations`` and ``degradation_weights`` (uniform); ``sparse_every`` (2, 3): keep every k-th view;
      ``underfit_fractions`` (0.25, 0.5, 0.75) of ``recon.iterations``; ``cross_shift_m`` (2.0) and
      ``cycle_shift_m`` (2.0) metres to the left
    - ``recon`` (fields of ReconstructionConfig, :func:`default_recon`), ``cache_dir`` as for the reinsert stream
    - mask: ``mask_threshold`` (0.06), ``mask_dilate`` (2 px), ``min_mask_pixels`` (8 per frame)
    """

    items_per_scene: int = 6
    min_object_pixels: int = 1  # unused, as are the categories: artifacts are not per object
    degradations: tuple[str, ...] = DEGRADATIONS
    degradation_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    sparse_every: tuple[int, ...] = (2, 3)
    underfit_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    cross_shift_m: float = 2.0
    cycle_shift_m: float = 2.0
    mask_threshold: float = 0.06
    mask_dilate: int = 2
    min_mask_pixels: int = 8

    def __post_init__(self) -> None:
        self._check_common()
        o = "NovelViewStreamConfig"
        bad = [d for d in self.degradations if d not in DEGRADATIONS]
        if not self.degradations or bad:
            raise ConfigError(f"{o}: degradations={self.degradations} must be a non-empty subset of {DEGRADATIONS}")
        w = tuple(float(x) for x in self.degradation_weights)
        if len(w) != len(self.degradations) or min(w) < 0 or sum(w) <= 0:
            raise ConfigError(f"{o}: degradation_weights={self.degradation_weights} needs one weight >= 0 per "
                              "degradation, not all zero")
        if not self.sparse_every or min(self.sparse_every) < 2:
            raise ConfigError(f"{o}: sparse_every={self.sparse_every} must hold integers >= 2")
        if not self.underfit_fractions or not all(0.25 <= f <= 0.75 for f in self.underfit_fractions):
            raise ConfigError(f"{o}: underfit_fractions={self.underfit_fractions} must lie in [0.25, 0.75]")
        if not 0 < self.mask_threshold < 1 or self.min_mask_pixels < 1:
            raise ConfigError(f"{o}: mask_threshold must be in (0, 1) and min_mask_pixels >= 1")


def _street_pick(scene: _Scene, what: str, n: int) -> int:
    """One choice in range(n) per street (stable hash of the street id): the street's items share it, so
    each street needs one sparse and one underfit reconstruction, not one per choice."""
    return zlib.crc32(f"{scene.scene_id}/{scene.lighting_seed}/{what}".encode()) % n


def _make_novel_view(config: NovelViewStreamConfig, seed: int, scene: _Scene, rng: np.random.Generator, index: int) -> PairItem | None:
    import torch

    from scene_tools.views import PosedImages

    fr = scene.frames
    T = len(fr)
    cache = resolve_cache_dir(config.cache_dir)
    base_key = _scene_key(config.scene, scene)
    w = np.asarray(config.degradation_weights, np.float64)
    kind = config.degradations[int(rng.choice(len(w), p=w / w.sum()))]
    recon = make_recon_config(config.recon)
    params: dict = {"degradation": kind}
    shifted = None
    if kind == "sparse":
        k = int(config.sparse_every[_street_pick(scene, "sparse", len(config.sparse_every))])
        train = list(range(0, T, k))
        left_out = [i for i in range(T) if i not in train]
        idx = _window(T, config.seq_len, rng, config.sequence_prob, singles=left_out)
        images = PosedImages(fr.rgb[train], fr.trajectory[train], depths=fr.depth[train])
        gs, path, _ = cached_reconstruction(images, recon, cache, scene.scene_id,
                                            {**base_key, "views": train, "made_by": "pbr"})
        params.update(every=k, train_views=train)
    elif kind == "underfit":
        frac = float(config.underfit_fractions[_street_pick(scene, "underfit", len(config.underfit_fractions))])
        full = recon.iterations
        steps = max(1, round(frac * full))
        # the schedule (lr decay, densification) is the full run's: this is that run stopped early
        rc = dataclasses.replace(recon, iterations=steps, lr_decay_steps=recon.lr_decay_steps or full)
        idx = _window(T, config.seq_len, rng, config.sequence_prob)
        images = PosedImages(fr.rgb, fr.trajectory, depths=fr.depth)
        gs, path, _ = cached_reconstruction(images, rc, cache, scene.scene_id,
                                            {**base_key, "views": list(range(T)), "made_by": "pbr"})
        params.update(fraction=frac, iterations=steps, schedule=full)
    else:
        idx = _window(T, config.seq_len, rng, config.sequence_prob)
        gs, path, _ = _street_reconstruction(config, scene)  # the reinsert stream's too: one cache entry
        if kind == "cross":
            shifted = fr.trajectory[idx].shifted_laterally(config.cross_shift_m)
            params.update(shift_m=config.cross_shift_m)
        else:  # cycle: renders of the shifted trajectory become the training images of a second reconstruction
            side = fr.trajectory.shifted_laterally(config.cycle_shift_m)
            with torch.no_grad():
                mid = render_gaussians(gs, side)
            depth = np.where(np.isfinite(mid["depth"]), mid["depth"], np.inf).astype(np.float32)
            images2 = PosedImages(np.clip(mid["rgb"], 0, 1), side, depths=depth)
            gs, path, _ = cached_reconstruction(
                images2, recon, cache, scene.scene_id,
                {**base_key, "views": list(range(T)), "made_by": f"cycle:{config.cycle_shift_m}"},
            )
            params.update(shift_m=config.cycle_shift_m)
    traj = shifted if shifted is not None else fr.trajectory[idx]
    with torch.no_grad():
        inp = np.clip(render_gaussians(gs, traj)["rgb"], 0.0, 1.0)
    if shifted is not None:
        target, depth, flow, valid = _pbr_at(scene, shifted, _render_seed(scene, idx[0]))
    else:
        target, depth = fr.rgb[idx], fr.depth[idx]
        flow, valid = _flow_for(scene, idx)
    mask = difference_mask(inp, target, config.mask_threshold, config.mask_dilate)
    if (mask.reshape(len(idx), -1).sum(1) < config.min_mask_pixels).any():
        return None
    from simharmony.data.streams import psnr_in_mask

    params.update(reconstruction=path.name, recon_iterations=int(recon.iterations),
                  psnr_in_mask=round(psnr_in_mask(inp, target, mask), 4), mask_fraction=round(float(mask.mean()), 6))
    md = _metadata("novel_view", seed, index, scene, idx, params)
    return PairItem(inp, target, mask, depth, flow, valid, md)


def generate_novel_view(config: NovelViewStreamConfig | None = None, seed: int = 0, count: int | None = None) -> Iterator[PairItem]:
    """Novel-view artifact items (module docstring), deterministic in ``seed``; endless if ``count`` is None."""
    config = NovelViewStreamConfig() if config is None else config
    yield from _generate("novel_view", config, seed, count, lambda s, r, i: _make_novel_view(config, seed, s, r, i))


def tiny_recon_configs(cache_dir: str = "") -> dict[str, Config]:
    """Reinsert / novel-view configs on 48x32 tiny streets (8-frame captures, 3-frame sequences, 60-step
    reconstructions): for tests."""
    from simharmony.data.streams import tiny_scene

    common = {"scene": tiny_scene(), "seq_len": 3, "scene_frames": 8, "sequence_prob": 0.3,
              "recon": tiny_recon(), "cache_dir": cache_dir}
    return {
        "reinsert": ReinsertStreamConfig(**common, min_object_pixels=12, min_asset_gaussians=10),
        "novel_view": NovelViewStreamConfig(**common, items_per_scene=4),
    }


__all__ = [
    "DEGRADATIONS", "NovelViewStreamConfig", "REINSERT_BACKGROUNDS", "ReinsertStreamConfig", "cached_reconstruction", "default_recon",
    "difference_mask", "generate_novel_view", "generate_reinsert", "make_recon_config", "render_gaussians",
    "resolve_cache_dir",
    "tiny_recon", "tiny_recon_configs",
]
