"""gsplat adapter: gsplat's ``rasterization`` call with the enhancer behind it.

    from simharmony_gsplat import HarmonizedRasterization

    rasterization = HarmonizedRasterization("default")    # where a renderer calls gsplat.rasterization
    colors, alphas, meta = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, W, H,
                                         render_mode="RGB+ED", camera_ids=["front", "left"])
    rasterization.enabled = False                         # raw renders again
    rasterization.stats()                                 # enhance ms, failures, resets per camera

Arguments and returns are ``gsplat.rasterization``'s (classic mode; ``scene_tools.rasterize.rasterize``
implements the same call, and runs gsplat's CUDA kernels on CUDA tensors, its CPU rasterizer otherwise).
What changes: the RGB channels of ``render_colors`` [C, H, W, 3(+1)] come back enhanced and clamped to
[0, 1], each camera of the batch its own temporal stream (``camera_ids``, default ``"cam0"``, ``"cam1"``, ...).
Alphas, ``meta`` and depth channels are returned as rendered. With "RGB+ED" / "RGB+D" the rendered depth
is the enhancer's depth input (pixels with alpha below ``alpha_hit`` count as no hit). Each camera's pose
(the inverse view matrix) drives the plugin's teleport detection.

The failure policy is the render hook's (:class:`simharmony.plugin.HarmonizedRenderer`): a frame the
enhancer fails on comes back raw, counted in ``stats()["failures"]``; errors of the rasterizer itself
propagate. The enhancer runs without gradients: this is for viewing and simulation, not for training.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

from simharmony.errors import InvalidInputError, ShapeMismatchError
from simharmony.plugin import HarmonizedRenderer
from simharmony.utils.checks import as_finite_number, check_hashable

_RGB_MODES = ("RGB", "RGB+D", "RGB+ED")


class HarmonizedRasterization:
    """A drop-in for ``gsplat.rasterization`` whose RGB output passes through a Harmonizer.

    harmonizer: a :class:`~simharmony.harmonizer.Harmonizer`, an Enhancer, an enhancer folder or "default".
    rasterize_fn: the rasterization call to wrap (default ``scene_tools.rasterize.rasterize``; pass
    ``gsplat.rasterization`` itself to use it unchanged). alpha_hit: below this alpha a pixel has no depth.
    plugin_options: :class:`~simharmony.plugin.PluginConfig` fields (``strict``, ``teleport_translation_m``, ...).
    """

    def __init__(self, harmonizer: Any = "default", *, rasterize_fn: Callable[..., Any] | None = None,
                 alpha_hit: float = 0.5, **plugin_options: Any) -> None:
        if rasterize_fn is None:
            from scene_tools.rasterize import rasterize as rasterize_fn
        if not callable(rasterize_fn):
            raise InvalidInputError(f"rasterize_fn must be callable, got {type(rasterize_fn).__name__}")
        self.alpha_hit = as_finite_number(alpha_hit, "alpha_hit", minimum=0.0)
        self.rasterize_fn = rasterize_fn
        self.plugin = HarmonizedRenderer(rasterize_fn, harmonizer, pose_fn=None, **plugin_options)

    @property
    def enabled(self) -> bool:
        return self.plugin.enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self.plugin.enabled = value

    def stats(self) -> dict[str, Any]:
        return self.plugin.stats()

    def reset(self, camera_id: Hashable | None = None) -> None:
        self.plugin.reset(camera_id)

    def __call__(self, means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
                 colors: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int, *,
                 render_mode: str = "RGB", camera_ids: Sequence[Hashable] | None = None,
                 **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        render_colors, render_alphas, meta = self.rasterize_fn(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height, render_mode=render_mode, **kwargs)
        if render_mode not in _RGB_MODES:  # depth only: nothing to enhance
            return render_colors, render_alphas, meta
        n_cams = render_colors.shape[0]
        rgb_channels = render_colors.shape[-1] - (render_mode != "RGB")
        if rgb_channels != 3:
            raise ShapeMismatchError(f"the enhancer takes 3 colour channels, but these colors render {rgb_channels}")
        ids = [f"cam{i}" for i in range(n_cams)] if camera_ids is None else list(camera_ids)
        if len(ids) != n_cams:
            raise ShapeMismatchError(f"camera_ids names {len(ids)} cameras, the render has {n_cams}")
        for cid in ids:
            check_hashable(cid, "camera_ids entry")
        poses = torch.linalg.inv(viewmats.detach().float().cpu())  # [C, 4, 4] camera-to-world
        out = render_colors.detach().clone()
        for c in range(n_cams):
            frame = {"rgb": out[c, ..., :3].clamp(0, 1), "pose": poses[c]}
            if render_mode != "RGB":
                depth = out[c, ..., 3]
                alpha = render_alphas[c, ..., 0].detach()
                if render_mode == "RGB+D":  # accumulated z: divide by alpha for the expected depth
                    depth = depth / alpha.clamp_min(1e-6)
                frame["depth"] = torch.where(alpha >= self.alpha_hit, depth.clamp_min(0), torch.inf)
            out[c, ..., :3] = self.plugin.enhance_frame(frame, camera_id=ids[c])["rgb"]
        return out, render_alphas, meta


__all__ = ["HarmonizedRasterization"]
