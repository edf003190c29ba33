"""Add a harmonized frame to a nerfstudio-style outputs dict; no nerfstudio import (testable anywhere).

    hook = HarmonizedOutputs("weights/enhancer", strength=1.0)
    outputs = model.get_outputs_for_camera(camera)           # {"rgb": [H, W, 3], "depth": [H, W, 1], ...}
    outputs = hook(outputs, pose=camera.camera_to_worlds)    # + "harmonized": [H, W, 3], same device and dtype
    hook.enabled = False                                      # "harmonized" is then the raw "rgb"

The output key stays present when the hook is off (it then equals "rgb"), so a viewer's output list
does not change under the user's feet. ``strength`` blends: ``rgb + strength * (enhanced - rgb)``.

Frames go through the render plugin (:class:`simharmony.plugin.HarmonizedRenderer`), so its failure
policy (log once, return the raw frame; ``strict`` raises), context resets on size changes and camera
jumps, and timing statistics apply. The Harmonizer is loaded on first use, on the device of the first
frame, so building a model loads nothing.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Hashable, Mapping
from typing import Any

import torch

from simharmony.errors import InvalidInputError
from simharmony.harmonizer import Harmonizer
from simharmony.models import Enhancer
from simharmony.plugin import HarmonizedRenderer, PluginConfig

HarmonizerSpec = Harmonizer | Enhancer | str | os.PathLike


def _no_render(*_args: Any, **_kwargs: Any) -> Any:  # the plugin is only used through enhance_frame()
    raise InvalidInputError("HarmonizedOutputs enhances frames rendered elsewhere; it does not render")


class HarmonizedOutputs:
    """Callable adding ``output_name`` (default "harmonized") to outputs dicts that hold ``"rgb"`` [H, W, 3].

    harmonizer: a Harmonizer, an Enhancer, a folder saved with ``Enhancer.save_pretrained``, "default"
    (weights/enhancer) or "untrained"; with ``untrained_fallback`` a missing "default" gives an untrained
    Enhancer (the identity) and :attr:`warning` says so. use_depth: pass the outputs' "depth" on (off by
    default: nerfstudio depth is in scene units, the enhancer expects metres). strict: raise enhancer errors.
    """

    def __init__(
        self,
        harmonizer: HarmonizerSpec = "default",
        *,
        enabled: bool = True,
        strength: float = 1.0,
        output_name: str = "harmonized",
        use_depth: bool = False,
        strict: bool = False,
        untrained_fallback: bool = True,
        plugin_config: PluginConfig | None = None,
    ) -> None:
        if not isinstance(output_name, str) or not output_name or output_name == "rgb":
            raise InvalidInputError(f"output_name must be a non-empty string other than 'rgb', got {output_name!r}")
        self.spec = harmonizer
        self.output_name = output_name
        self.enabled = bool(enabled)
        self.strength = strength
        self.untrained_fallback = untrained_fallback
        cfg = plugin_config if plugin_config is not None else PluginConfig()
        self._plugin_config = PluginConfig.from_dict({**cfg.to_dict(), "strict": strict, "use_depth": use_depth,
                                                      "use_mask": False})
        self._plugin: HarmonizedRenderer | None = None
        self._lock = threading.Lock()
        self.source = ""  # where the weights came from, once loaded
        self.warning: str | None = None

    @property
    def strength(self) -> float:
        return self._strength

    @strength.setter
    def strength(self, value: float) -> None:
        v = float(value)
        if not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise InvalidInputError(f"strength must be in [0, 1], got {value}")
        self._strength = v

    @property
    def plugin(self) -> HarmonizedRenderer | None:
        """The render plugin once the harmonizer is loaded (stats(), reset(), ...)."""
        return self._plugin

    def _ensure(self, device: torch.device) -> HarmonizedRenderer:
        if self._plugin is None:
            from simharmony.sim import resolve_harmonizer

            spec = self.spec
            if isinstance(spec, Harmonizer):
                h, src = spec, "given Harmonizer"
            else:
                dev = "cuda" if device.type == "cuda" else "cpu"
                h, src = resolve_harmonizer(spec, device=dev, untrained_fallback=self.untrained_fallback)
            self.source = src
            if "untrained" in src.lower():
                self.warning = f"Harmonizer: {src}"
            self._plugin = HarmonizedRenderer(_no_render, h, pose_fn=None, config=self._plugin_config)
        return self._plugin

    def __call__(self, outputs: Mapping[str, Any], pose: Any = None, camera_id: Hashable = "viewer") -> dict[str, Any]:
        """Return a copy of ``outputs`` with ``output_name`` [H, W, 3] added (``rgb`` itself is unchanged).

        pose: the camera-to-world matrix ([1, 3, 4], [3, 4] or [4, 4]) used to detect camera jumps.
        """
        if not isinstance(outputs, Mapping) or "rgb" not in outputs:
            raise InvalidInputError("outputs must be a mapping with an 'rgb' entry [H, W, 3]")
        rgb = outputs["rgb"]
        out = dict(outputs)
        if not isinstance(rgb, torch.Tensor) or rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise InvalidInputError(f"outputs['rgb'] must be a torch tensor [H, W, 3], got "
                                    f"{tuple(rgb.shape) if isinstance(rgb, torch.Tensor) else type(rgb).__name__}")
        if not self.enabled or self.strength == 0.0:
            out[self.output_name] = rgb
            return out
        with self._lock:  # one viewer render thread per client; the stream state is shared
            plugin = self._ensure(rgb.device)
            frame = {"rgb": rgb.detach()}
            if "depth" in outputs and outputs["depth"] is not None:
                frame["depth"] = outputs["depth"].detach()
            result = plugin.enhance_frame(frame, camera_id=camera_id, pose=pose)
        enhanced = result["rgb"].to(device=rgb.device, dtype=rgb.dtype)
        if self.strength < 1.0:
            enhanced = rgb.detach() + self.strength * (enhanced - rgb.detach())
        out[self.output_name] = enhanced
        return out


__all__ = ["HarmonizedOutputs"]
