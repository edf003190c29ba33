"""Builders shared by the harmonizer, plugin, simulator, viewer and training tests (imported as ``from _helpers import ...``)."""

from __future__ import annotations

import math

import torch

from simharmony.models import Enhancer, EnhancerConfig

SMALL = {"channels": (16, 32, 32), "heads": 4, "emb_dim": 32, "cond_dim": 8}


def small_enhancer(trained_like: bool = True, colour_anchor: bool = False) -> Enhancer:
    """A small Enhancer. Fresh it is the identity; ``trained_like`` sets non-zero temporal and output
    projections (and colour-anchor output layer), so the output differs from the input and the past matters."""
    torch.manual_seed(0)
    model = Enhancer(EnhancerConfig(**SMALL, colour_anchor=colour_anchor)).eval()
    if trained_like:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for layer in model.temporal_layers():
                layer.proj_out.weight.copy_(torch.randn(layer.proj_out.weight.shape, generator=g) * 0.2)
            model.backbone.conv_out.weight.copy_(torch.randn(model.backbone.conv_out.weight.shape, generator=g) * 0.04)
            if colour_anchor:
                last = model.backbone.colour_anchor.mlp[-1]
                last.weight.copy_(torch.randn(last.weight.shape, generator=g) * 0.05)
    return model


def recording_enhancer() -> tuple[Enhancer, list[torch.Tensor]]:
    """A tiny Enhancer whose forward records each input frame [B, 3, H, W] (detached copies) in the list."""
    model = Enhancer(EnhancerConfig(channels=(8, 16), heads=4, temporal_levels=(1,), context_frames=2))
    seen: list[torch.Tensor] = []
    real_forward = model.forward

    def record(x, past=None, **kw):
        seen.append(x.detach().clone())
        return real_forward(x, past, **kw)

    model.forward = record
    return model, seen


def training_batch(inp: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """A StepModule batch from input / target [B, T, H, W, 3]: empty mask and depth, zero flow, all valid."""
    b, t, h, w, _ = inp.shape
    return {"input": inp, "target": target, "mask": torch.zeros(b, t, h, w), "depth": torch.zeros(b, t, h, w),
            "flow": torch.zeros(b, t, h, w, 2), "flow_valid": torch.ones(b, t, h, w, dtype=torch.bool)}


def ground_and_post_scene(intrinsics, post_x: float, post_top: float, post_step: float, post_scale: float):
    """Textured ground on z = 0 (x in [-2, 30], y in [-6, 6]) and a yellow post (instance 2) at (post_x, -1.5)."""
    from scene_tools.gaussians import GaussianScene
    from scene_tools.scene import RenderConfig, Scene

    xs, ys = torch.arange(-2.0, 30.0, 0.5), torch.arange(-6.0, 6.0, 0.5)
    gx, gy = torch.meshgrid(xs, ys, indexing="ij")
    pts = torch.stack([gx, gy, torch.zeros_like(gx)], -1).reshape(-1, 3)
    col = torch.stack([0.5 + 0.35 * torch.sin(0.9 * pts[:, 0]), 0.5 + 0.3 * torch.cos(0.6 * pts[:, 1]),
                       torch.full_like(pts[:, 0], 0.4)], -1)
    g = GaussianScene.from_points(pts, col, scale=0.3, opacity=0.95)
    g.log_scales[:, 2] = math.log(0.02)
    zs = torch.arange(0.1, post_top, post_step)
    post = GaussianScene.from_points(torch.stack([torch.full_like(zs, post_x), torch.full_like(zs, -1.5), zs], -1),
                                     torch.tensor([[0.9, 0.9, 0.2]]).expand(len(zs), 3), scale=post_scale, opacity=0.95,
                                     instance_ids=torch.full((len(zs),), 2, dtype=torch.int32))
    return Scene(GaussianScene.concat([g, post]), config=RenderConfig(background_color=(0.3, 0.4, 0.6)),
                 intrinsics=intrinsics)
