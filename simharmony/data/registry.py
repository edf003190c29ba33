"""Every data stream by name: :data:`STREAMS` maps a stream name to ``(ConfigClass, generator)``.

The streams live in three modules that import one another only one way (streams <- recon_streams, and
streams <- real); this module sits above them and is what the shards, presets, training and benchmark read:

- :mod:`simharmony.data.streams`: ``isp``, ``shadow``, ``rpb``, ``relight`` (procedural streets, Mitsuba)
- :mod:`simharmony.data.recon_streams`: ``reinsert``, ``novel_view`` (3DGS reconstructions of the streets)
- :mod:`simharmony.data.real`: ``real_isp``, ``real_rpb``, ``real_identity``, ``real_video`` (real images)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from simharmony.data.item import PairItem
from simharmony.data.real import REAL_STREAMS
from simharmony.data.recon_streams import (
    NovelViewStreamConfig,
    ReinsertStreamConfig,
    generate_novel_view,
    generate_reinsert,
    tiny_recon_configs,
)
from simharmony.data.streams import (
    IspStreamConfig,
    RelightStreamConfig,
    RpbStreamConfig,
    ShadowStreamConfig,
    generate_isp,
    generate_relight,
    generate_rpb,
    generate_shadow,
    tiny_scene,
)
from simharmony.utils.config import Config, require

# the streams rendered from procedural streets (the holdout and tiny presets cover these)
SYNTHETIC: dict[str, tuple[type, Callable[..., Iterator[PairItem]]]] = {
    "isp": (IspStreamConfig, generate_isp),
    "shadow": (ShadowStreamConfig, generate_shadow),
    "rpb": (RpbStreamConfig, generate_rpb),
    "relight": (RelightStreamConfig, generate_relight),
    "reinsert": (ReinsertStreamConfig, generate_reinsert),
    "novel_view": (NovelViewStreamConfig, generate_novel_view),
}
SYNTHETIC_STREAMS: tuple[str, ...] = tuple(SYNTHETIC)
STREAMS: dict[str, tuple[type, Callable[..., Iterator[PairItem]]]] = {**SYNTHETIC, **REAL_STREAMS}


def tiny_configs(cache_dir: str = "") -> dict[str, Config]:
    """Per-stream configs of the synthetic streams on 48x32 tiny streets (3 frames per sequence): for tests.
    ``cache_dir``: where the reconstruction streams cache their reconstructions ("" = their default)."""
    common = {"scene": tiny_scene(), "seq_len": 3, "min_object_pixels": 12, "sequence_prob": 0.3}
    return {
        "isp": IspStreamConfig(**common),
        "shadow": ShadowStreamConfig(**common, shadow_min_pixels=2),
        "rpb": RpbStreamConfig(**common),
        "relight": RelightStreamConfig(**common),
        **tiny_recon_configs(cache_dir),
    }


def stream_names(value: str | Iterable[str], owner: str, field_name: str) -> tuple[str, ...]:
    """A config field that names streams (one name or several) as a tuple; ConfigError naming unknown ones."""
    names = (value,) if isinstance(value, str) else tuple(value)
    unknown = sorted(set(names) - set(STREAMS))
    require(not unknown, owner, f"{field_name} names unknown streams {unknown}; valid: {sorted(STREAMS)}")
    return names


__all__ = ["STREAMS", "SYNTHETIC_STREAMS", "stream_names", "tiny_configs"]
