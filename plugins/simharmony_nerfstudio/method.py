"""nerfstudio method ``splatfacto-harmonized`` (entry point group ``nerfstudio.method_configs``).

    ns-train splatfacto-harmonized --data DATA        # splatfacto, plus the Harmonizer in the viewer
    ns-viewer --load-config outputs/.../splatfacto-harmonized/.../config.yml

The spec is built on first access (PEP 562 ``__getattr__``): nerfstudio's method registry imports entry
points while ``nerfstudio.configs.method_configs`` is still being imported, and the spec copies that
module's splatfacto config, which is complete by then.
"""

from __future__ import annotations

import copy
import importlib
from typing import Any

_SPEC = None


def _build_spec():
    from nerfstudio.plugins.types import MethodSpecification

    from simharmony_nerfstudio.model import harmonized_trainer_config

    configs = importlib.import_module("nerfstudio.configs.method_configs").method_configs
    config = harmonized_trainer_config(copy.deepcopy(configs["splatfacto"]))
    return MethodSpecification(
        config=config,
        description="splatfacto with the simharmony Harmonizer: a 'Harmonizer' toggle, strength slider and a "
                    "'harmonized' output in the viewer",
    )


def __getattr__(name: str) -> Any:
    global _SPEC
    if name == "splatfacto_harmonized":
        if _SPEC is None:
            _SPEC = _build_spec()
        return _SPEC
    raise AttributeError(name)
