"""Dataset presets: what ``simharmony data generate --preset NAME`` makes.

- ``tiny``: two items per stream on 48x32 tiny streets (60-step reconstructions); for tests, under a minute.
- ``default``: the training set at 256x144: >= 2,000 items, >= 300 of them sequences (5 frames), street
  and lighting seeds drawn from :data:`TRAIN_SEED_RANGE`.
- ``recon_extra``: more training items of the streams the enhancer finds hardest (3DGS re-insertion, novel
  views, Poisson blending) from other streets of the training range (another dataset seed); trained on
  together with ``default`` (``TrainConfig.data`` takes several folders). 44 minutes on 2 cores.
- ``relight_street``: 240 relighting items with ``in_street=True`` (the object shadowed by the street under the
  other sun: inputs too dark as often as too bright, where the default relighting items are nearly always
  too bright); another dataset seed of the training range. About 9 minutes on 2 cores.
- ``real``: real-image training items (:mod:`simharmony.data.real`: ISP region mismatch, Poisson blending,
  identity pairs, real video with and without flicker) from the default real corpus, which holds out the
  Udacity clip's last 60 frames; needs ``../shared/realdata`` and the Debian photo packages. ~1.5 minutes.
- ``holdout``: >= 100 items per stream at 256x144 from :data:`HOLDOUT_SEED_RANGE`, disjoint from the
  training range, so no holdout street (layout, its objects = the re-insertion assets) and no lighting
  (street lighting and the relighting stream's object lighting seeds) is ever used in training. Another
  dataset seed as well, so its chunk seeds differ too.

Each preset is a :class:`DatasetPreset` (a Config: round-trips to YAML) whose :meth:`DatasetPreset.stream_configs`
gives the per-stream configs for :func:`simharmony.data.shards.generate_dataset`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simharmony.data.real import REAL_STREAMS, RealCorpus, RealSource
from simharmony.data.recon_streams import default_recon
from simharmony.data.registry import STREAMS, SYNTHETIC_STREAMS, tiny_configs
from simharmony.data.streams import _SEED_MAX, SceneSource
from simharmony.errors import ConfigError
from simharmony.utils.config import Config
from simharmony.utils.io import PathLike

TRAIN_SEED_RANGE = (0, 2**30)
HOLDOUT_SEED_RANGE = (2**30, _SEED_MAX)

# default training counts per stream (sum 2,040): cheap streams get more items, the reconstruction ones fewer
DEFAULT_COUNTS = {"isp": 860, "rpb": 520, "shadow": 240, "relight": 200, "reinsert": 100, "novel_view": 120}
# more items per street where a street is cheap to vary (ISP, RPB) or expensive to make (renders of the
# street without / with only the object, reconstructions): this is what keeps default + holdout within
# the 90-minute budget on 2 cores (docs/BENCHMARKS.md)
DEFAULT_OVERRIDES = {
    "isp": {"items_per_scene": 8}, "rpb": {"items_per_scene": 6}, "shadow": {"items_per_scene": 4},
    "relight": {"items_per_scene": 4}, "reinsert": {"items_per_scene": 12},
    # 0.08: above the path tracer's per-pixel noise at 8 spp (3.5% of pixels exceed 0.06, 1.4% at 16 spp)
    "novel_view": {"items_per_scene": 20, "mask_threshold": 0.08},
}
# samples per pixel of the Mitsuba targets at 256x144: 8 spp costs ~0.6x of 16 (bench_mitsuba.py)
DEFAULT_SPP = 8


@dataclass
class DatasetPreset(Config):
    """A named dataset recipe.

    - ``streams``: {stream: item count}; ``seed``: dataset seed (chunk seeds derive from it); ``shard_size``
    - ``scene``: the streets (size, spp, ``seed_range``); ``seq_len`` / ``sequence_prob``: sequence items
    - ``scene_frames``, ``recon``, ``cache_dir``: capture length, reconstruction settings and cache of the
      reconstruction streams (``cache_dir`` "" = ``$SIMHARMONY_RECON_CACHE`` or ``data/cache/recon``)
    - ``overrides``: {stream: {config field: value}} applied on top (e.g. ``items_per_scene``)
    - ``tiny``: use :func:`simharmony.data.streams.tiny_configs` (test sizes) instead of the fields above
    - ``real_sources``: the real streams' images (:class:`~simharmony.data.real.RealSource`: folders of photos
      or frames, videos); [] = :func:`~simharmony.data.real.default_corpus`
    """

    name: str = "default"
    streams: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_COUNTS))
    seed: int = 0
    shard_size: int = 32
    scene: SceneSource = field(default_factory=lambda: SceneSource(spp=DEFAULT_SPP, seed_range=TRAIN_SEED_RANGE))
    seq_len: int = 5
    sequence_prob: float = 0.25
    scene_frames: int = 12
    recon: dict[str, Any] = field(default_factory=default_recon)
    cache_dir: str = ""
    overrides: dict[str, dict] = field(default_factory=lambda: {k: dict(v) for k, v in DEFAULT_OVERRIDES.items()})
    tiny: bool = False
    real_sources: list[RealSource] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.streams) - set(STREAMS))
        if unknown:
            raise ConfigError(f"DatasetPreset {self.name!r}: unknown streams {unknown}; available: {sorted(STREAMS)}")
        bad = {k: v for k, v in self.streams.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0}
        if bad:
            raise ConfigError(f"DatasetPreset {self.name!r}: item counts must be integers >= 0, got {bad}")
        bad = sorted(set(self.overrides) - set(STREAMS))
        if bad:
            raise ConfigError(f"DatasetPreset {self.name!r}: overrides for unknown streams {bad}")
        if self.shard_size < 1:
            raise ConfigError(f"DatasetPreset {self.name!r}: shard_size={self.shard_size} must be >= 1")

    @property
    def num_items(self) -> int:
        return sum(self.streams.values())

    def stream_configs(self) -> dict[str, Config]:
        """{stream: its Config} for the streams of this preset."""
        if self.tiny:
            cfgs = tiny_configs(self.cache_dir)
            return {k: cfgs[k] for k in self.streams}
        out = {}
        for name in self.streams:
            cls = STREAMS[name][0]
            names = {f.name for f in dataclasses.fields(cls)}
            if name in REAL_STREAMS:  # real images: sized like the streets, no street settings
                kw = {"width": self.scene.width, "height": self.scene.height, "corpus": RealCorpus(sources=list(self.real_sources))}
                if "seq_len" in names:
                    kw["seq_len"] = self.seq_len
            else:
                kw = {"scene": self.scene, "seq_len": self.seq_len, "sequence_prob": self.sequence_prob}
            if "recon" in names:
                kw.update(scene_frames=self.scene_frames, recon=self.recon, cache_dir=self.cache_dir)
            cfg = cls(**kw)
            if self.overrides.get(name):
                extra = sorted(set(self.overrides[name]) - names)
                if extra:
                    raise ConfigError(f"DatasetPreset {self.name!r}: overrides for {name!r} name unknown fields {extra}")
                cfg = cls.from_dict({**cfg.to_dict(), **self.overrides[name]})
            out[name] = cfg
        return out


def tiny_preset() -> DatasetPreset:
    return DatasetPreset(name="tiny", streams={k: 2 for k in SYNTHETIC_STREAMS}, seed=0, shard_size=2,
                         scene=SceneSource(preset="tiny", width=48, height=32, spp=4, seed_range=TRAIN_SEED_RANGE),
                         seq_len=3, sequence_prob=0.3, scene_frames=8, tiny=True)


def default_preset() -> DatasetPreset:
    return DatasetPreset(name="default")


# extra training items for the streams v3 still loses on (docs/BENCHMARKS.md, "Shipped default enhancer v3")
RECON_EXTRA_COUNTS = {"rpb": 240, "reinsert": 300, "novel_view": 200}


def recon_extra_preset() -> DatasetPreset:
    return DatasetPreset(name="recon_extra", streams=dict(RECON_EXTRA_COUNTS), seed=7)


def relight_street_preset() -> DatasetPreset:
    overrides = {k: dict(v) for k, v in DEFAULT_OVERRIDES.items()}
    overrides["relight"] = {**overrides["relight"], "in_street": True}
    return DatasetPreset(name="relight_street", streams={"relight": 240}, seed=11, shard_size=30, overrides=overrides)


def holdout_preset() -> DatasetPreset:
    overrides = {k: dict(v) for k, v in DEFAULT_OVERRIDES.items()}
    for stream in ("shadow", "reinsert"):  # evaluated with the exact sun
        overrides[stream] = {**overrides[stream], "hint_sun_jitter_deg": 0.0}
    return DatasetPreset(name="holdout", streams={k: 100 for k in SYNTHETIC_STREAMS}, seed=1_000_003, shard_size=25,
                         scene=SceneSource(spp=DEFAULT_SPP, seed_range=HOLDOUT_SEED_RANGE), overrides=overrides)


# real-image training items (simharmony.data.real): the default corpus (the Udacity clip without its last 60
# frames, the Debian photographs); about 1.5 minutes on 2 cores
REAL_COUNTS = {"real_isp": 800, "real_rpb": 300, "real_identity": 400, "real_video": 300}


def real_preset() -> DatasetPreset:
    return DatasetPreset(name="real", streams=dict(REAL_COUNTS), seed=23, shard_size=50, overrides={})


# real composites of large objects: close-up photographs (simharmony.data.real.objects_corpus), masks up to
# half the frame, as a car near the camera covers (the "real" preset's masks stop at a quarter), and half of the
# changed and of the already-right regions outlined by the picture's own edges, as an inserted object is
REAL_OBJECTS_COUNTS = {"real_isp": 600, "real_identity": 200, "real_rpb": 100}
REAL_OBJECTS_MASK_AREA = [0.02, 0.5]  # a list: presets round-trip through YAML


def real_objects_preset() -> DatasetPreset:
    from simharmony.data.real import objects_corpus

    overrides = {k: {"mask_area": REAL_OBJECTS_MASK_AREA} for k in REAL_OBJECTS_COUNTS}
    for k in ("real_isp", "real_identity"):
        overrides[k]["segment_prob"] = 0.5
    return DatasetPreset(name="real_objects", streams=dict(REAL_OBJECTS_COUNTS), seed=29, shard_size=50,
                         overrides=overrides, real_sources=objects_corpus().sources)


PRESETS: dict[str, Callable[[], DatasetPreset]] = {
    "tiny": tiny_preset,
    "default": default_preset,
    "holdout": holdout_preset,
    "recon_extra": recon_extra_preset,
    "relight_street": relight_street_preset,
    "real": real_preset,
    "real_objects": real_objects_preset,
}


def get_preset(name: str) -> DatasetPreset:
    """The preset called ``name``; ConfigError listing the valid names otherwise."""
    if name not in PRESETS:
        raise ConfigError(f"unknown dataset preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()


def generate_preset(
    preset: str | DatasetPreset, out_dir: PathLike, shard: tuple[int, int] = (0, 1), progress: bool = True,
    workers: int = 1,
) -> dict:
    """Generate (or resume) ``preset`` into ``out_dir`` with :func:`simharmony.data.shards.generate_dataset`
    (``workers`` processes); the preset is saved as ``out_dir/preset.yaml``. Returns the dataset record."""
    from simharmony.data.shards import generate_dataset
    from simharmony.utils.io import save_yaml

    p = get_preset(preset) if isinstance(preset, str) else preset
    record = generate_dataset(out_dir, p.streams, seed=p.seed, shard_size=p.shard_size, shard=shard,
                              configs=p.stream_configs(), progress=progress, workers=workers)
    save_yaml(Path(out_dir) / "preset.yaml", p.to_dict())
    return record


__all__ = [
    "DEFAULT_COUNTS", "HOLDOUT_SEED_RANGE", "PRESETS", "REAL_COUNTS", "RECON_EXTRA_COUNTS", "TRAIN_SEED_RANGE", "DatasetPreset",
    "generate_preset", "get_preset",
]
