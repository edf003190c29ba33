"""Streams on tiny streets: valid items, degradation inside the mask, determinism, the Poisson mapping."""

import math

import numpy as np
import pytest

from simharmony.data.item import PairItem
from simharmony.data.registry import STREAMS, tiny_configs
from simharmony.data.streams import (
    RpbStreamConfig,
    format_report,
    poisson_blend_foreground,
    psnr_in_mask,
    stream_report,
)
from simharmony.errors import ConfigError, InvalidInputError

N = 5
BASE = ("isp", "rpb", "shadow")  # the streams this file covers; the others have their own test files


@pytest.fixture(scope="module")
def items():
    cfgs = tiny_configs()
    return {name: list(STREAMS[name][1](cfgs[name], seed=11, count=N)) for name in BASE}


@pytest.mark.parametrize("name", BASE)
def test_stream_items_valid_and_degraded(items, name):
    its = items[name]
    assert len(its) == N
    for it in its:
        assert isinstance(it, PairItem) and it.stream == name
        assert it.num_frames in (1, 3) and it.size == (32, 48)
        m = it.mask > 0.5
        assert m.any(), "mask must not be empty"
        assert np.abs(it.input - it.target)[m].max() > 0.05, "input must differ from target inside the mask"
        assert math.isfinite(psnr_in_mask(it.input, it.target, it.mask))
        if it.is_sequence:
            assert it.flow_valid[1:].mean() > 0.3 and not it.flow_valid[0].any()
        assert np.isfinite(it.depth).any()
        md = it.metadata
        assert md["scene_id"].startswith("street-") and md["seed"] == 11 and "object_id" in md["params"]


def test_isp_and_rpb_change_nothing_outside_the_mask(items):
    for name in ("isp", "rpb"):
        for it in items[name]:
            out = it.mask == 0
            np.testing.assert_allclose(it.input[out], it.target[out], atol=1e-6)


def test_shadow_mask_covers_a_darker_shadow(items):
    shadow_beside_asset = 0
    for it in items["shadow"]:
        oid = it.metadata["params"]["object_id"]
        assert it.metadata["params"]["shadow_pixels"] >= 2
        # the target is darker than the shadow-free input somewhere in the mask
        drop = (it.input - it.target).mean(-1)
        assert (drop[it.mask > 0] > 0.03).sum() >= 2, oid
        np.testing.assert_array_equal(it.input[it.mask == 0], it.target[it.mask == 0])
        # the object's own mask (what a simulator gives): inside the mask, without the cast shadow
        asset = it.asset_mask
        assert asset is not None and set(np.unique(asset)) <= {0.0, 1.0} and asset.any()
        assert (asset <= it.mask).all() and it.model_mask() is asset and it.model_mask(()) is it.mask
        shadow_beside_asset += int((drop[(it.mask > 0) & (asset == 0)] > 0.03).any())
    assert shadow_beside_asset > 0  # tiny frames: a contact shadow may lie within the asset's dilated edge


def test_report_medians_finite_not_identity(items):
    rep = stream_report([it for its in items.values() for it in its])
    assert set(rep) == set(BASE)
    for r in rep.values():
        assert r["n"] == N and r["identity"] == 0
        assert math.isfinite(r["median"]) and 8.0 < r["median"] < 45.0
        assert r["p10"] <= r["median"] <= r["p90"]
    assert "median" in format_report(rep)


def test_psnr_in_mask_reference():
    a = np.zeros((2, 2, 3))
    b = np.zeros((2, 2, 3))
    b[0, 0] = 0.1
    m = np.array([[1.0, 0.0], [0.0, 0.0]])
    assert psnr_in_mask(a, b, m) == pytest.approx(20.0)
    assert psnr_in_mask(a, b, 1 - m) == math.inf
    assert math.isnan(psnr_in_mask(a, b, np.zeros((2, 2))))


@pytest.mark.parametrize("name", BASE)
def test_streams_deterministic(items, name):
    cfg = tiny_configs()[name]
    again = list(STREAMS[name][1](cfg, seed=11, count=2))
    for a, b in zip(items[name][:2], again):
        np.testing.assert_array_equal(a.input, b.input)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.metadata == b.metadata
    other = next(STREAMS[name][1](cfg, seed=12, count=1))
    assert other.metadata["scene_id"] != items[name][0].metadata["scene_id"]


def test_poisson_mapping_against_shifted_copy():
    """Blending onto a reference that holds the same image shifted by (dx, dy) must give the image back:
    same gradients, same boundary. A wrong placement convention would not."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:60]
    img = np.stack([0.5 + 0.3 * np.sin(xx / 5.0 + c) * np.cos(yy / 7.0) for c in range(3)], -1).astype(np.float32)
    img = np.clip(img + rng.uniform(-0.02, 0.02, img.shape), 0, 1).astype(np.float32)
    mask = np.zeros((40, 60), np.uint8)
    mask[12:22, 20:33] = 1
    dx, dy = 9, -6
    ref = np.zeros((40, 60, 3), np.float32)
    ref[max(dy, 0):40 + min(dy, 0), max(dx, 0):60 + min(dx, 0)] = img[max(-dy, 0):40 - max(dy, 0), max(-dx, 0):60 - max(dx, 0)]
    out = poisson_blend_foreground(img, mask, ref, (dx, dy))
    inside = mask > 0
    assert np.abs(out[inside] - img[inside]).max() < 3 / 255
    wrong = poisson_blend_foreground(img, mask, ref, (dx + 3, dy))
    assert np.abs(wrong[inside] - img[inside]).mean() > 5 * np.abs(out[inside] - img[inside]).mean()
    with pytest.raises(InvalidInputError):
        poisson_blend_foreground(img, mask, ref, (40, 0))


def test_stream_config_errors():
    with pytest.raises(ConfigError):
        RpbStreamConfig(alpha=(0.9, 0.1))
    with pytest.raises(ConfigError):
        RpbStreamConfig(seq_len=1)
    with pytest.raises(ConfigError):
        RpbStreamConfig(categories=("building",))
    cfg = tiny_configs()["isp"]
    with pytest.raises(InvalidInputError):
        next(STREAMS["isp"][1](cfg, seed=-1, count=1))
    impossible = type(cfg).from_dict({**cfg.to_dict(), "min_object_pixels": 10_000, "max_empty_scenes": 2})
    with pytest.raises(InvalidInputError, match="no usable foreground"):
        next(STREAMS["isp"][1](impossible, seed=0, count=1))


def test_open_2x2_is_an_unshifted_opening():
    from simharmony.data.streams import open_2x2

    img = np.zeros((8, 8), np.uint8)
    img[2:5, 3:6] = 1  # a 3x3 block survives a 2x2 opening in place
    img[6, 1] = 1  # an isolated pixel is removed
    np.testing.assert_array_equal(open_2x2(img), (np.arange(8)[:, None] >= 2) & (np.arange(8)[:, None] < 5) & (np.arange(8) >= 3) & (np.arange(8) < 6))
