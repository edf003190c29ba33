"""Classical baselines: identity, masked Reinhard Lab, Li et al. lightness-preserving transfer, EMA."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np
import pytest
import torch

from simharmony import baselines as B
from simharmony.errors import InvalidInputError, NonFiniteError, ShapeMismatchError


def composite(h=40, w=48, seed=0):
    """Bluish textured background with a warm, darker textured foreground box; hard mask."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float32)
    img[:] = [0.35, 0.45, 0.6]
    img += 0.08 * rng.standard_normal((h, w, 1)) + 0.03 * rng.standard_normal((h, w, 3))
    mask = np.zeros((h, w), np.float32)
    mask[10:30, 12:36] = 1.0
    fg = np.array([0.6, 0.35, 0.2]) + 0.05 * rng.standard_normal((20, 24, 1)) + 0.02 * rng.standard_normal((20, 24, 3))
    img[10:30, 12:36] = fg
    return np.clip(img, 0.05, 0.95).astype(np.float32), mask


def lab_stats(img, sel):
    lab = cv2.cvtColor(img.astype(np.float32), cv2.COLOR_RGB2Lab)[sel]
    return lab.mean(0), lab.std(0)


def test_identity_exact():
    img, mask = composite()
    out = B.identity(img, mask)
    assert out.dtype == np.float32 and np.array_equal(out, img) and out is not img
    t = B.identity(torch.from_numpy(img), torch.from_numpy(mask))
    assert isinstance(t, torch.Tensor) and torch.equal(t, torch.from_numpy(img))


def test_reinhard_matches_background_lab_statistics():
    img, mask = composite()
    fg, bg = mask > 0.5, mask < 0.5
    mu_bg, sd_bg = lab_stats(img, bg)
    mu_fg0, _ = lab_stats(img, fg)
    assert np.abs(mu_fg0 - mu_bg).max() > 10  # the composite really is mismatched
    out = B.reinhard_lab(img, mask)
    mu_fg, sd_fg = lab_stats(out, fg)
    np.testing.assert_allclose(mu_fg, mu_bg, atol=0.3)
    np.testing.assert_allclose(sd_fg, sd_bg, rtol=0.03, atol=0.05)
    assert np.array_equal(out[bg], img[bg])  # outside the mask: bit-exact
    # torch in, torch out
    t = B.reinhard_lab(torch.from_numpy(img), torch.from_numpy(mask))
    np.testing.assert_allclose(t.numpy(), out, atol=1e-6)


def test_soft_mask_blends_and_keeps_zero_pixels():
    img, mask = composite()
    soft = cv2.GaussianBlur(mask, (7, 7), 2.0)
    soft[soft < 1e-3] = 0.0
    out = B.reinhard_lab(img, soft)
    zero = soft == 0
    assert np.array_equal(out[zero], img[zero])
    # out = m * transferred + (1 - m) * image, with statistics from soft > 0.5 / soft < 0.5
    transferred = B._reinhard_full(img, soft > 0.5, soft < 0.5)
    expected = soft[..., None] * transferred + (1 - soft[..., None]) * img
    np.testing.assert_allclose(out, expected, atol=1e-6)
    half = (soft > 0.3) & (soft < 0.7)
    assert half.any() and np.abs(out[half] - img[half]).max() > 0.02


def _hue(rgb):
    return np.array([colorsys.rgb_to_hsv(*map(float, p))[0] for p in rgb.reshape(-1, 3)])


def _hue_dist(h1, h2):
    d = np.abs(h1 - h2) % 1.0
    return np.minimum(d, 1.0 - d)


def test_lightness_preserving_transfer_hsv():
    rng = np.random.default_rng(1)
    inp = rng.uniform(0.05, 0.95, (10, 12, 3)).astype(np.float32)
    other = rng.uniform(0.05, 0.95, (10, 12, 3)).astype(np.float32)
    out = B.lightness_preserving_transfer(inp, other)
    np.testing.assert_allclose(out.max(-1), inp.max(-1), atol=1e-6)  # V of the input, exactly
    flat = out.reshape(-1, 3)
    sat_out = np.array([colorsys.rgb_to_hsv(*map(float, p))[1] for p in flat])
    sat_other = np.array([colorsys.rgb_to_hsv(*map(float, p))[1] for p in other.reshape(-1, 3)])
    assert _hue_dist(_hue(out), _hue(other)).max() < 1e-5  # hue of the other image
    np.testing.assert_allclose(sat_out, sat_other, atol=1e-5)
    # black pixels of the other image -> grey at the input's V
    other[0, 0] = 0.0
    out = B.lightness_preserving_transfer(inp, other)
    np.testing.assert_allclose(out[0, 0], inp[0, 0].max(), atol=1e-7)


def test_lightness_preserving_transfer_hsl():
    rng = np.random.default_rng(2)
    inp = rng.uniform(0.1, 0.9, (6, 7, 3)).astype(np.float32)
    other = rng.uniform(0.1, 0.9, (6, 7, 3)).astype(np.float32)
    out = B.lightness_preserving_transfer(inp, other, space="hsl")
    lightness = lambda x: 0.5 * (x.max(-1) + x.min(-1))
    np.testing.assert_allclose(lightness(out), lightness(inp), atol=1e-5)
    hls = [colorsys.rgb_to_hls(*map(float, p)) for p in out.reshape(-1, 3)]
    hls_o = [colorsys.rgb_to_hls(*map(float, p)) for p in other.reshape(-1, 3)]
    assert _hue_dist(np.array([h[0] for h in hls]), np.array([h[0] for h in hls_o])).max() < 1e-4
    with pytest.raises(InvalidInputError):
        B.lightness_preserving_transfer(inp, other, space="lab")
    with pytest.raises(ShapeMismatchError):
        B.lightness_preserving_transfer(inp, other[:, :5])


def test_lightness_preserving_hsv_baseline():
    img, mask = composite(seed=3)
    fg, bg = mask > 0.5, mask < 0.5
    out = B.lightness_preserving_hsv(img, mask)
    assert np.array_equal(out[bg], img[bg])
    v_in, v_out = img.max(-1), out.max(-1)
    # foreground V is an affine map of the composite's V matched to the background's V statistics
    assert np.corrcoef(v_in[fg], v_out[fg])[0, 1] > 0.9999
    assert v_out[fg].mean() == pytest.approx(v_in[bg].mean(), abs=2e-3)
    assert v_out[fg].std() == pytest.approx(v_in[bg].std(), rel=0.02)
    # hue from the Reinhard colours
    rein = B.reinhard_lab(img, mask)
    assert np.median(_hue_dist(_hue(out[fg]), _hue(rein[fg]))) < 1e-4
    assert B.BASELINES["lightness_preserving_hsv"] is B.lightness_preserving_hsv
    assert set(B.BASELINES) == {"identity", "reinhard_lab", "lightness_preserving_hsv"}


def test_match_lightness():
    img, mask = composite(seed=4)
    fg, bg = mask > 0.5, mask < 0.5
    out = B.match_lightness(img, mask)
    assert out.max(-1)[fg].mean() == pytest.approx(img.max(-1)[bg].mean(), abs=2e-3)
    assert np.array_equal(out[bg], img[bg])


@pytest.mark.parametrize("name", ["identity", "reinhard_lab", "lightness_preserving_hsv"])
def test_degenerate_masks_return_input(name):
    img, _ = composite(seed=5)
    fn = B.BASELINES[name]
    for m in (np.zeros(img.shape[:2]), np.ones(img.shape[:2]), np.full(img.shape[:2], 0.5)):
        np.testing.assert_array_equal(fn(img, m), img)


@pytest.mark.parametrize("name", ["identity", "reinhard_lab", "lightness_preserving_hsv"])
def test_bad_inputs(name):
    img, mask = composite(seed=6)
    fn = B.BASELINES[name]
    with pytest.raises(ShapeMismatchError):
        fn(img, mask[:, :-1])
    with pytest.raises(ShapeMismatchError):
        fn(img[..., :2], mask)
    with pytest.raises(InvalidInputError):
        fn(img, mask * 2.0)
    with pytest.raises(InvalidInputError):
        fn(img * 255, mask)
    with pytest.raises(InvalidInputError):
        fn((img * 255).astype(np.uint8), mask)
    bad = img.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        fn(bad, mask)
    assert fn(img, mask > 0.5).shape == img.shape  # bool masks accepted


def test_ema_closed_form_step():
    alpha = 0.3
    ema = B.EmaSmoother(alpha)
    a, b = np.full((2, 3, 3), 0.2), np.full((2, 3, 3), 0.9)
    for _ in range(3):
        np.testing.assert_allclose(ema(a), a, atol=1e-7)
    for n in range(6):
        y = ema(b)
        np.testing.assert_allclose(y, b + (a - b) * (1 - alpha) ** (n + 1), atol=1e-6)
    ema.reset()
    np.testing.assert_allclose(ema(b), b, atol=1e-7)  # fresh stream starts at the frame
    with pytest.raises(ShapeMismatchError):
        ema(np.zeros((4, 4, 3)))
    seq = B.EmaSmoother(1.0).smooth(np.stack([a, b, a]))
    np.testing.assert_allclose(seq, np.stack([a, b, a]), atol=1e-7)  # alpha 1: no smoothing
    tseq = B.EmaSmoother(0.5).smooth(torch.tensor(np.stack([a, b])))
    assert isinstance(tseq, torch.Tensor)
    np.testing.assert_allclose(tseq[1].numpy(), (a + b) / 2, atol=1e-6)


def test_ema_bad_inputs():
    for alpha in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(InvalidInputError):
            B.EmaSmoother(alpha)
    with pytest.raises(NonFiniteError):
        B.EmaSmoother(0.5)(np.array([np.nan]))
