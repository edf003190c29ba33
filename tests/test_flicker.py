"""Per-frame exposure / white-balance flicker: gains, application (numpy and torch alike), the training
augmentation (temporal batches only, targets untouched) and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simharmony.data.flicker import FlickerConfig, apply_flicker, flicker_gains
from simharmony.errors import ConfigError, ShapeMismatchError


def test_gains_first_frame_clean_deterministic_and_spread():
    cfg = FlickerConfig(ev_sigma=0.3, wb_sigma=0.05, gamma=2.0)
    g = flicker_gains(np.random.default_rng(3), 2000, cfg)
    assert g.shape == (2000, 3) and g.dtype == np.float32
    assert np.array_equal(g[0], np.ones(3, np.float32))
    assert np.array_equal(g, flicker_gains(np.random.default_rng(3), 2000, cfg))
    log2 = np.log2(g[1:].astype(np.float64))
    # ev / gamma is shared by the channels, wb is not: std of the channel mean ~ sqrt((0.3/2)^2 + 0.05^2/3)
    assert log2.mean(1).std() == pytest.approx(np.sqrt(0.15**2 + 0.05**2 / 3), rel=0.1)
    assert (log2[:, 0] - log2[:, 1]).std() == pytest.approx(0.05 * np.sqrt(2), rel=0.1)
    assert np.all(flicker_gains(np.random.default_rng(0), 4, FlickerConfig(ev_sigma=0, wb_sigma=0)) == 1)


def test_apply_hand_value_clip_and_torch_equals_numpy():
    frames = np.full((2, 2, 3, 3), 0.5, np.float32)
    gains = np.array([[1, 1, 1], [0.5, 1.5, 3.0]], np.float32)
    out = apply_flicker(frames, gains)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert np.allclose(out[0], 0.5) and np.allclose(out[1, ..., 0], 0.25) and np.allclose(out[1, ..., 1], 0.75)
    assert np.allclose(out[1, ..., 2], 1.0)  # clipped
    rnd = np.random.default_rng(1).uniform(size=(3, 4, 5, 3)).astype(np.float32)
    g = flicker_gains(np.random.default_rng(2), 3)
    assert torch.allclose(apply_flicker(torch.from_numpy(rnd), g), torch.from_numpy(apply_flicker(rnd, g)))


def test_bad_input():
    with pytest.raises(ShapeMismatchError, match=r"\[T, H, W, 3\]"):
        apply_flicker(np.zeros((4, 5, 3)), np.ones((4, 3)))
    with pytest.raises(ShapeMismatchError, match=r"gains must be \[2, 3\]"):
        apply_flicker(np.zeros((2, 4, 5, 3)), np.ones((3, 3)))
    with pytest.raises(ShapeMismatchError, match="num_frames"):
        flicker_gains(np.random.default_rng(0), 0)
    with pytest.raises(ConfigError, match="ev_sigma"):
        FlickerConfig(ev_sigma=-0.1)
    with pytest.raises(ConfigError, match="gamma"):
        FlickerConfig(gamma=0.0)


def test_training_flicker_only_on_temporal_inputs(one_torch_thread):
    """StepModule drifts the inputs of sequences (never frame 0, never single frames) and never the target."""
    from _helpers import recording_enhancer, training_batch

    from simharmony.training import TrainConfig
    from simharmony.training.trainer import StepModule

    model, seen = recording_enhancer()
    cfg = TrainConfig(flicker_prob=1.0, perceptual_weight=0.0, mask_dropout=1.0, depth_dropout=1.0)
    step = StepModule(model, None, cfg)
    x = torch.rand(2, 3, 16, 16, 3) * 0.5
    batch = training_batch(x, x.clone())
    step(batch, "temporal", torch.Generator().manual_seed(0))
    frames = torch.stack(seen, 1).permute(0, 1, 3, 4, 2)  # [B, T, H, W, 3] as the model saw them
    assert torch.equal(frames[:, 0], x[:, 0])
    ratio = frames[:, 1:] / x[:, 1:]  # one gain per (sequence, frame, channel), away from the clip
    assert (ratio.flatten(2, 3).std(2) < 1e-5).all() and ((ratio.flatten(2, 3).mean(2) - 1).abs() > 1e-4).all()
    assert torch.equal(batch["target"], x)
    seen.clear()
    one = {k: v[:, :1] for k, v in batch.items()}
    step(one, "image", torch.Generator().manual_seed(0))
    assert torch.equal(seen[0].permute(0, 2, 3, 1), x[:, 0])


def test_occluder_grows_and_is_deterministic():
    from simharmony.data.flicker import apply_occluder, occluder_alphas

    a = occluder_alphas(np.random.default_rng(5), 6, 36, 64)
    assert a.shape == (6, 36, 64) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    cover = a.mean((1, 2))
    assert np.all(np.diff(cover) > 0) and cover[-1] > 2 * cover[0]
    assert np.array_equal(a, occluder_alphas(np.random.default_rng(5), 6, 36, 64))
    frames = np.full((6, 36, 64, 3), 0.8, np.float32)
    out = apply_occluder(frames, a, np.array([0.1, 0.2, 0.3]))
    assert np.allclose(out[..., 0], 0.8 - 0.7 * a) and np.allclose(out[..., 2], 0.8 - 0.5 * a)
    assert torch.allclose(apply_occluder(torch.from_numpy(frames), a, [0.1, 0.2, 0.3]), torch.from_numpy(out))
    with pytest.raises(ShapeMismatchError, match="alphas"):
        apply_occluder(frames, a[:5], [0, 0, 0])


def test_training_occluder_in_input_and_target_and_out_of_warp_loss(one_torch_thread):
    """StepModule's occluder goes into input and target alike, leaves single frames alone and removes its
    pixels from the warping loss's valid flow."""
    from simharmony.models import Enhancer, EnhancerConfig
    from simharmony.training import TrainConfig
    from simharmony.training.trainer import StepModule

    model = Enhancer(EnhancerConfig(channels=(8, 16), heads=4, temporal_levels=(1,), context_frames=2))
    step = StepModule(model, None, TrainConfig(occluder_prob=1.0, perceptual_weight=0.0))
    b, t, h, w = 2, 3, 16, 24
    x = torch.rand(b, t, h, w, 3)
    batch = {"input": x, "target": x.clone(), "mask": torch.zeros(b, t, h, w), "depth": torch.zeros(b, t, h, w),
             "flow": torch.zeros(b, t, h, w, 2), "flow_valid": torch.ones(b, t, h, w, dtype=torch.bool)}
    out = step._occlude(batch, torch.Generator().manual_seed(0))
    assert torch.equal(out["input"], out["target"]) and not torch.equal(out["input"], x)
    changed = (out["input"] - x).abs().amax(-1) > 0.01  # [B, T, H, W]: coverage > 0.01 there
    assert not out["flow_valid"][:, 1:][changed[:, 1:]].any() and out["flow_valid"].any()
    assert torch.equal(batch["input"], x)  # the loader's batch is not modified in place
    losses = step(batch, "temporal", torch.Generator().manual_seed(0))
    assert torch.isfinite(losses["total"])
