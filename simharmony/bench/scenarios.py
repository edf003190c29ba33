"""Benchmark scenarios as lists of :class:`Clip` (DESIGN.md section 7, diffusion-harmonizer section 4).

- ``holdout``: every item of a holdout dataset folder (:class:`~simharmony.data.shards.ShardDataset`), one
  clip per item (images T = 1, sequences T > 1); in the smoke preset the folder is generated on the fly
  from the tiny stream configs (:func:`make_smoke_holdout`).
- ``novel_trajectory``: the demo street's 3DGS reconstruction (``weights/demo_street`` without its inserted
  vehicle) rendered along its ego trajectory shifted ``novel_shift_m`` to the left; ground truth = the
  Mitsuba render of the *same* street (the StreetConfig recorded in the scene's build config, whose
  layout, lighting and ego trajectory are checked against the scene's metadata) along the same shifted
  poses at the same times. Flow for the warping error is the exact PBR flow (moving objects included).
- ``holdout_flicker``: holdout sequences (``flicker_sequences`` of them, round-robin over streams) whose
  inputs get seeded per-frame exposure / white-balance flicker (frame 0 clean, :mod:`simharmony.data.flicker`);
  targets, masks and flow unchanged. It measures what the temporal context is for: undoing drift that a
  single frame cannot reveal.
- ``holdout_cuts``: ``cut_pairs`` seeded pairs of holdout sequences (A, B) played as one clip with no reset
  between them: a scene cut the caller did not signal. The frames after the cut show what a stale
  context costs (compare a streaming method with the same weights reset every frame).
- ``insertion``: the demo scene *with* its inserted vehicle (as ``simharmony demo --shift 3`` renders it)
  along the ego trajectory shifted ``insert_shift_m``; no ground truth; flow from the Gaussian render.

This module may import ``scene_tools`` (the bench sits above the model code).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simharmony.bench.config import BenchConfig
from simharmony.data.item import TARGET_DERIVED_MASK_STREAMS
from simharmony.errors import InvalidSceneError, MissingFileError

log = logging.getLogger(__name__)

HOLDOUT_HINT = "generate it with `simharmony data generate --preset holdout --out data/holdout`"


@dataclass(eq=False)
class Clip:
    """One evaluation sequence (T = 1 for an image).

    - ``input`` [T, H, W, 3] float32 in [0, 1]: what every method gets
    - ``target`` [T, H, W, 3] | None: ground truth (None: no-GT scenario)
    - ``mask`` [T, H, W] float32 | None: region of the foreground metrics (fMSE, fPSNR, masked structure)
    - ``model_mask`` [T, H, W] | None: the mask the methods are given (None: they get none)
    - ``depth`` [T, H, W] | None (inf = no hit), ``flow`` [T, H, W, 2] backward flow t -> t-1 in pixels
      (entry 0 unused) and ``flow_valid`` [T, H, W] bool, for the warping error
    - ``shadow_hint`` [T, H, W] | None: where the inserted object's shadow falls (given to methods that take it)
    """

    id: str
    group: str
    input: np.ndarray
    target: np.ndarray | None = None
    mask: np.ndarray | None = None
    model_mask: np.ndarray | None = None
    depth: np.ndarray | None = None
    flow: np.ndarray | None = None
    flow_valid: np.ndarray | None = None
    shadow_hint: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return int(self.input.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(W, H)."""
        return int(self.input.shape[2]), int(self.input.shape[1])


def _key(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------------
# holdout streams
# --------------------------------------------------------------------------------------------------


def make_smoke_holdout(cfg: BenchConfig) -> Path:
    """Generate (or reuse) the smoke preset's holdout-like dataset in ``cfg.cache_dir``; returns its folder.

    ``cfg.smoke_items_per_stream`` items of each of ``cfg.smoke_streams`` from the tiny stream configs
    (48x32 tiny streets) with ``cfg.smoke_seq_len``-frame sequences, half of the items sequences on average.
    """
    from simharmony.data.registry import tiny_configs
    from simharmony.data.shards import generate_dataset
    from simharmony.data.streams import ITEMS_REVISION

    cache = Path(cfg.cache_dir)
    base = tiny_configs(str(cache / "recon"))
    configs = {}
    for name in cfg.smoke_streams:
        c = base[name]
        kw = {"seq_len": cfg.smoke_seq_len, "sequence_prob": 0.5, "items_per_scene": 2}
        if hasattr(c, "scene_frames"):
            kw["scene_frames"] = max(c.scene_frames, cfg.smoke_seq_len)
        configs[name] = dataclasses.replace(c, **kw)
    counts = {name: cfg.smoke_items_per_stream for name in configs}
    key = _key({"counts": counts, "seed": cfg.smoke_seed, "configs": {k: v.to_dict() for k, v in configs.items()},
                "items_revision": ITEMS_REVISION})
    out = cache / f"smoke_holdout-{key}"
    if not (out / "dataset.yaml").is_file():
        generate_dataset(out, counts, seed=cfg.smoke_seed, shard_size=cfg.smoke_items_per_stream, configs=configs,
                         progress=cfg.progress)
    return out


def _model_mask(item, mask_to_model: bool, maskless_streams: Sequence[str]) -> np.ndarray | None:
    """The mask a method is given for a holdout item (None when masks are off): its own, or where its stream's
    mask is cut out with the target's help (``maskless_streams``) its asset mask if any (PairItem.model_mask)."""
    return item.model_mask(maskless_streams) if mask_to_model else None


def holdout_clips(folder: str | Path, max_items_per_stream: int = 0, mask_to_model: bool = True,
                  maskless_streams: Sequence[str] = TARGET_DERIVED_MASK_STREAMS,
                  ids: Collection[str] | None = None) -> tuple[int, Iterator[Clip]]:
    """(count, lazy iterator of clips): one clip per item of the dataset folder (manifest order), at most
    ``max_items_per_stream`` per stream (0 = all), only the items ``ids`` when given. Items are read one at
    a time (a holdout set does not fit in memory at once). Methods get the item's mask (``model_mask``), on ``maskless_streams`` its asset mask.
    MissingFileError (saying how to make it) when the folder is not a dataset."""
    from simharmony.data.shards import ShardDataset

    folder = Path(folder)
    if not (folder / "dataset.yaml").is_file():
        raise MissingFileError(f"holdout dataset folder {folder} not found (no dataset.yaml there); {HOLDOUT_HINT}")
    ds = ShardDataset(folder)
    picked, per_stream = [], {}
    for i, rec in enumerate(ds.records):
        if ids is not None and rec["id"] not in ids:
            continue
        n = per_stream.get(rec["stream"], 0)
        if not max_items_per_stream or n < max_items_per_stream:
            per_stream[rec["stream"]] = n + 1
            picked.append(i)
    if not picked:
        raise MissingFileError(f"holdout dataset {folder} holds no items; {HOLDOUT_HINT}")

    def clips() -> Iterator[Clip]:
        for i in picked:
            it = ds.load_item(i)
            yield Clip(
                id=ds.records[i]["id"], group=it.stream, input=it.input, target=it.target, mask=it.mask,
                model_mask=_model_mask(it, mask_to_model, maskless_streams),
                depth=it.depth if it.metadata.get("has_depth", True) else None, flow=it.flow,
                flow_valid=it.flow_valid, shadow_hint=it.shadow_hint,
            )

    return len(picked), clips()


def flicker_clips(folder: str | Path, cfg: BenchConfig) -> list[Clip]:
    """The ``holdout_flicker`` scenario: up to ``cfg.flicker_sequences`` sequence items of the holdout
    folder, taken round-robin over streams in manifest order, each with its own seeded flicker."""
    from simharmony.data.flicker import apply_flicker, flicker_gains
    from simharmony.data.shards import ShardDataset

    if cfg.flicker_sequences == 0:
        return []
    ds = ShardDataset(folder)
    by_stream: dict[str, list[int]] = {}
    for i, rec in enumerate(ds.records):
        if rec["num_frames"] > 1:
            by_stream.setdefault(rec["stream"], []).append(i)
    picked: list[int] = []
    queues = [list(v) for _, v in sorted(by_stream.items())]
    while len(picked) < cfg.flicker_sequences and any(queues):
        for q in queues:
            if q and len(picked) < cfg.flicker_sequences:
                picked.append(q.pop(0))
    clips = []
    for i in picked:
        it = ds.load_item(i)
        rng = np.random.default_rng([cfg.flicker_seed, i])
        clips.append(Clip(
            id=f"{ds.records[i]['id']}:flicker", group="holdout_flicker",
            input=apply_flicker(it.input, flicker_gains(rng, it.input.shape[0], cfg.flicker)), target=it.target,
            mask=it.mask, model_mask=_model_mask(it, cfg.mask_to_model, cfg.maskless_streams), depth=it.depth, flow=it.flow,
            flow_valid=it.flow_valid,
        ))
    return clips


def _join_frames(x: np.ndarray | None, y: np.ndarray | None, frames: tuple[int, int], fill) -> np.ndarray | None:
    """[Ta, ...] and [Tb, ...] -> [Ta + Tb, ...]; a missing side (None) is ``fill``; None when both are."""
    if x is None and y is None:
        return None
    like = x if x is not None else y
    x, y = (np.full((n, *like.shape[1:]), fill, like.dtype) if v is None else v for v, n in zip((x, y), frames))
    return np.concatenate([x, y])


def cut_clips(folder: str | Path, cfg: BenchConfig) -> list[Clip]:
    """The ``holdout_cuts`` scenario: ``cfg.cut_pairs`` seeded pairs of distinct holdout sequences (A, B),
    each one clip of A's frames then B's. B is drawn among the sequences that give methods a mask when A
    does (and none when A gives none), so every frame gets what its own item gives. B's first frame has no
    valid flow (nothing moved there from A's last frame); a missing metrics mask counts as empty."""
    from simharmony.data.shards import ShardDataset

    if cfg.cut_pairs == 0:
        return []
    ds = ShardDataset(folder)

    def given(item) -> np.ndarray | None:
        return _model_mask(item, cfg.mask_to_model, cfg.maskless_streams)

    def kind(i: int) -> tuple:  # what must match for two sequences to play as one clip
        it = ds.load_item(i)  # one at a time: a holdout's sequences do not fit in memory at once
        return given(it) is None, it.input.shape[1:], it.depth is None

    kinds = {i: kind(i) for i, rec in enumerate(ds.records) if rec["num_frames"] > 1}
    rng = np.random.default_rng(cfg.cut_seed)
    clips: list[Clip] = []
    for _ in range(cfg.cut_pairs):
        a = int(rng.choice(list(kinds)))
        partners = [i for i in kinds if i != a and kinds[i] == kinds[a]]
        if not partners:
            continue
        b = int(rng.choice(partners))
        ia, ib = ds.load_item(a), ds.load_item(b)
        frames = (ia.num_frames, ib.num_frames)
        valid = _join_frames(ia.flow_valid, ib.flow_valid, frames, False)
        if valid is not None:
            valid[ia.num_frames] = False
        clips.append(Clip(
            id=f"{ds.records[a]['id']}|{ds.records[b]['id']}", group="holdout_cuts",
            input=np.concatenate([ia.input, ib.input]), target=np.concatenate([ia.target, ib.target]),
            mask=_join_frames(ia.mask, ib.mask, frames, 0.0), model_mask=_join_frames(given(ia), given(ib), frames, 0.0),
            depth=_join_frames(ia.depth, ib.depth, frames, np.inf), flow=_join_frames(ia.flow, ib.flow, frames, 0.0),
            flow_valid=valid,
        ))
    return clips


# --------------------------------------------------------------------------------------------------
# the demo street: novel trajectory and insertion
# --------------------------------------------------------------------------------------------------


def demo_street_layout(scene):
    """The StreetLayout the demo scene was reconstructed from, checked against the scene's metadata.

    Uses the StreetConfig recorded in ``metadata.build_config.street`` (the default StreetConfig for the
    shipped demo) and checks that its ego trajectory and lighting are the ones the scene recorded, so the
    PBR ground truth shows the street the Gaussians were fitted to.
    """
    from scene_tools.cameras import Trajectory
    from scene_tools.street import StreetConfig, generate_street

    md = scene.metadata
    try:
        street_cfg = StreetConfig.from_dict(md["build_config"]["street"])
        ego = Trajectory.from_dict(md["ego_trajectory"])
    except KeyError as e:
        raise InvalidSceneError(f"scene {scene.name!r} has no build_config.street / ego_trajectory metadata ({e}); "
                                "it was not made by scene_tools.demo_scene") from None
    layout = generate_street(street_cfg)
    if len(layout.trajectory) != len(ego) or not np.allclose(layout.trajectory.poses, ego.poses, atol=1e-6):
        raise InvalidSceneError(f"scene {scene.name!r}: the ego trajectory of its recorded street does not match "
                                "the scene's ego_trajectory; the PBR ground truth would show another street")
    if "lighting" in md and layout.lighting.to_dict() != md["lighting"]:
        raise InvalidSceneError(f"scene {scene.name!r}: recorded lighting differs from its street config's lighting")
    return layout, ego


def _scaled(traj, scale: float, num_frames: int):
    traj = traj[: max(1, min(num_frames, len(traj)))]
    return traj.scaled(scale)


def pbr_ground_truth(layout, trajectory, spp: int, cache_dir: str | Path, progress: bool = True):
    """Mitsuba render of ``layout`` along ``trajectory`` (cached under ``cache_dir/pbr-<key>``) and its exact
    backward flow (moving objects included) -> (StreetFrames, flow [T, H, W, 2], flow_valid [T, H, W])."""
    from scene_tools.flow import sequence_flow
    from scene_tools.pbr import StreetFrames, render_street
    from simharmony.data.streams import object_motions

    key = _key({"street": layout.config.to_dict(), "lighting": layout.lighting.to_dict(),
                "traj": trajectory.to_dict(), "spp": spp})
    folder = Path(cache_dir) / f"pbr-{key}"
    if (folder / "frames.yaml").is_file():
        frames = StreetFrames.load(folder)
    else:
        frames = render_street(layout, trajectory=trajectory, spp=spp, progress=progress)
        frames.save(folder, previews=False)
    flow, valid = sequence_flow(frames.depth, frames.intrinsics.K, frames.poses, instance_ids=frames.instance_ids,
                                object_motions=object_motions(layout, frames.times))
    return frames, flow, valid


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy()


def scene_clips(cfg: BenchConfig) -> tuple[list[Clip], list[Clip], dict]:
    """The novel-trajectory clip (with PBR ground truth) and the insertion clip, plus a description dict."""
    from scene_tools.scene import Scene

    scene_dir = Path(cfg.scene_dir)
    if not (scene_dir / "scene.yaml").is_file():
        raise MissingFileError(f"demo scene not found at {scene_dir} (no scene.yaml); build it with "
                               "`simharmony build-demo-scene`")
    scene = Scene.load(scene_dir)
    layout, ego = demo_street_layout(scene)
    info = {"scene_dir": str(scene_dir), "street_seed": layout.config.seed,
            "street_is_default_config": _is_default_street(layout.config), "lighting": layout.lighting.to_dict()}

    # (b) novel trajectory: background only (the inserted vehicle has no PBR counterpart)
    novel_traj = _scaled(ego.shifted_laterally(cfg.novel_shift_m), cfg.render_scale, cfg.num_frames)
    objects, scene.objects = scene.objects, []
    renders = scene.render(novel_traj, progress=cfg.progress)
    scene.objects = objects
    gt, flow, valid = pbr_ground_truth(layout, novel_traj, cfg.gt_spp, cfg.cache_dir, cfg.progress)
    fg_ids = np.asarray(sorted(layout.foreground_ids()), np.int32)
    fg_mask = np.isin(gt.instance_ids, fg_ids).astype(np.float32)  # vehicles and pedestrians in the ground truth
    novel = Clip(
        id=f"demo_street_shift{cfg.novel_shift_m:g}m", group="novel_trajectory", input=_np(renders.rgb).astype(np.float32),
        target=np.clip(gt.rgb, 0.0, 1.0).astype(np.float32), mask=fg_mask, model_mask=None,
        depth=_np(renders.depth), flow=flow, flow_valid=valid,
    )
    intr = novel_traj.intrinsics
    info["novel_trajectory"] = {"shift_m": cfg.novel_shift_m, "frames": len(novel_traj), "size": [intr.width, intr.height],
                                "gt_spp": cfg.gt_spp, "gt_variant": gt.render_info.get("variant"),
                                "mask": "vehicles and pedestrians in the PBR ground truth (fMSE / fPSNR region)",
                                "flow": "exact PBR flow with object motion (scene_tools.flow.sequence_flow)"}

    # (c) insertion: with the inserted vehicle, as `simharmony demo --shift 3` renders it
    ins_traj = _scaled(ego.shifted_laterally(cfg.insert_shift_m), cfg.render_scale, cfg.num_frames)
    renders = scene.render(ins_traj, progress=cfg.progress)
    inserted = _np(renders.inserted_mask).astype(np.float32)
    hints = [f.shadow_hint for f in renders]
    insertion = Clip(
        id=f"demo_street_insert_shift{cfg.insert_shift_m:g}m", group="insertion",
        input=_np(renders.rgb).astype(np.float32), target=None, mask=inserted, model_mask=inserted,
        depth=_np(renders.depth), flow=_np(renders.flow), flow_valid=_np(renders.flow_valid),
        shadow_hint=None if any(h is None for h in hints) else np.stack([_np(h) for h in hints]).astype(np.float32),
    )
    info["insertion"] = {"shift_m": cfg.insert_shift_m, "frames": len(ins_traj), "size": [intr.width, intr.height],
                         "inserted_assets": [o.asset.id for o in objects],
                         "inserted_pixel_fraction": float((inserted > 0.5).mean()),
                         "flow": "geometric flow of the Gaussian render (Scene.render_frame)"}
    return [novel], [insertion], info


def _is_default_street(config) -> bool:
    from scene_tools.street import StreetConfig

    return config.to_dict() == StreetConfig().to_dict()


__all__ = [
    "HOLDOUT_HINT",
    "Clip",
    "demo_street_layout",
    "cut_clips",
    "holdout_clips",
    "make_smoke_holdout",
    "pbr_ground_truth",
    "scene_clips",
]
