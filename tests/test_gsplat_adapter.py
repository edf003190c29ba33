"""The gsplat adapter (plugins/simharmony_gsplat): rasterization's call with the enhancer behind it."""

from __future__ import annotations

import pytest
import torch
from simharmony_gsplat import HarmonizedRasterization
from test_rasterize import make_scene
from test_viewer import SHIFT, colour_shift_model

from scene_tools.rasterize import rasterize
from simharmony.errors import InvalidInputError, ShapeMismatchError
from simharmony.harmonizer import Harmonizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
W, H = 40, 32


def render_args(n_cams=2):
    s = make_scene(n=60, n_cams=n_cams)
    return (s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], s["viewmats"], s["Ks"], W, H)


def test_rgb_is_enhanced_per_camera_and_the_rest_is_as_rendered():
    args = render_args()
    raw, raw_alpha, raw_meta = rasterize(*args, render_mode="RGB+ED")
    adapter = HarmonizedRasterization(Harmonizer(colour_shift_model()))
    out, alpha, meta = adapter(*args, render_mode="RGB+ED", camera_ids=["front", "left"])
    assert out.shape == raw.shape and torch.equal(alpha, raw_alpha) and torch.equal(out[..., 3], raw[..., 3])
    assert set(meta) == set(raw_meta) and torch.equal(meta["radii"], raw_meta["radii"])
    expected = (raw[..., :3].clamp(0, 1) + torch.tensor(SHIFT)).clamp(0, 1)
    torch.testing.assert_close(out[..., :3], expected, atol=2e-3, rtol=0)
    stats = adapter.stats()
    assert set(stats["cameras"]) == {"front", "left"} and stats["enhanced"] == 2 and stats["failed"] == 0
    assert adapter.plugin.context_length("front") == 1  # each camera is its own temporal stream


def test_disabled_gives_the_clamped_raw_render_and_depth_modes_pass_through():
    args = render_args(n_cams=1)
    adapter = HarmonizedRasterization(Harmonizer(colour_shift_model()))
    adapter.enabled = False
    raw, _, _ = rasterize(*args)
    out, _, _ = adapter(*args)
    torch.testing.assert_close(out, raw.clamp(0, 1))
    adapter.enabled = True
    depth_raw, _, _ = rasterize(*args, render_mode="ED")
    depth_out, _, _ = adapter(*args, render_mode="ED")
    assert torch.equal(depth_out, depth_raw) and adapter.stats()["frames"] == 1  # the disabled RGB call only


def test_enhancer_failure_returns_the_raw_frame_and_counts_it():
    args = render_args(n_cams=1)
    adapter = HarmonizedRasterization(Harmonizer(colour_shift_model()))

    def broken(*a, **k):
        raise RuntimeError("boom")

    adapter.plugin.harmonizer.enhance = broken
    raw, _, _ = rasterize(*args)
    out, _, _ = adapter(*args)
    torch.testing.assert_close(out, raw.clamp(0, 1))
    assert adapter.stats()["failures"] == {"RuntimeError": 1}


def test_bad_input_is_named():
    adapter = HarmonizedRasterization(Harmonizer(colour_shift_model()))
    with pytest.raises(ShapeMismatchError, match="camera_ids names 1 cameras"):
        adapter(*render_args(), camera_ids=["front"])
    with pytest.raises(InvalidInputError, match="camera_ids entry must be hashable"):
        adapter(*render_args(), camera_ids=[["a"], "b"])
    s = make_scene(n=20, n_cams=1, d=5)
    with pytest.raises(ShapeMismatchError, match="3 colour channels"):
        adapter(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], s["viewmats"], s["Ks"], W, H)
    with pytest.raises(InvalidInputError, match="rasterize_fn must be callable"):
        HarmonizedRasterization(Harmonizer(colour_shift_model()), rasterize_fn="gsplat")
