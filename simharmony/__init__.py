"""simharmony: an online, temporally stable harmonizer for frames rendered by neural simulators.

The flat public API (as diffusers and nerfstudio users expect), imported lazily so that ``import
simharmony`` stays light (no torch until a name is used)::

    from simharmony import Harmonizer, HarmonizedRenderer, Simulator
    h = Harmonizer.from_pretrained("default")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "Harmonizer": "simharmony.harmonizer",
    "HarmonizedRenderer": "simharmony.plugin",
    "Simulator": "simharmony.sim",
    "Enhancer": "simharmony.models.enhancer",
    "EnhancerConfig": "simharmony.models.backbone",
    "TrainConfig": "simharmony.training.config",
    "train": "simharmony.training.trainer",
    "BenchConfig": "simharmony.bench.config",
    "run_bench": "simharmony.bench",
    "RealCaptureConfig": "simharmony.bench.real_capture",
    "run_real_capture": "simharmony.bench.real_capture",
    "PairItem": "simharmony.data.item",
    "generate_dataset": "simharmony.data.shards",
    "ShardDataset": "simharmony.data.shards",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module 'simharmony' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
