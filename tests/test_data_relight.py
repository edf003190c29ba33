"""Relighting stream on tiny streets: valid items, change only on the object, the other lighting is used."""

import math

import numpy as np
import pytest

from simharmony.data.item import PairItem
from simharmony.data.registry import STREAMS, tiny_configs
from simharmony.data.streams import RelightStreamConfig, coverage_mask, psnr_in_mask
from simharmony.errors import ConfigError

N = 3


@pytest.fixture(scope="module")
def items():
    return list(STREAMS["relight"][1](tiny_configs()["relight"], seed=5, count=N))


def test_relight_items_valid_and_degraded_inside_mask(items):
    assert len(items) == N
    for it in items:
        assert isinstance(it, PairItem) and it.stream == "relight" and it.size == (32, 48)
        m = it.mask > 0.5
        assert m.any()
        assert np.abs(it.input - it.target)[m].max() > 0.05, "the relit object must differ from the target"
        # outside the mask the input is the consistent render itself
        np.testing.assert_array_equal(it.input[~m], it.target[~m])
        assert math.isfinite(psnr_in_mask(it.input, it.target, it.mask))
        if it.is_sequence:
            assert not it.flow_valid[0].any() and it.flow_valid[1:].any()


def test_relight_mask_is_the_object_coverage(items):
    """The mask must cover the object's pixels (instance ids of the target frames, recomputed from the
    street) and stay close to them: dilation by one pixel at most."""
    from simharmony.data.streams import render_scene, tiny_scene

    it = items[0]
    md = it.metadata
    seed = int(md["scene_id"].split("-")[1])
    scene = render_scene(tiny_scene(), seed, 3, md["lighting_seed"])
    ids = scene.frames.instance_ids[md["frames"]] == md["params"]["object_id"]
    assert (it.mask[ids] == 1).all()
    grown = coverage_mask(ids.astype(np.float32), 2, threshold=0.5)
    assert (it.mask <= grown).all()


def test_relight_metadata_records_other_lighting(items):
    for it in items:
        p = it.metadata["params"]
        assert p["object_lighting"] != p["lighting"]
        assert "object_lighting_seed" in p and p["mean_abs_change_in_mask"] > 0


def test_relight_deterministic(items):
    again = next(STREAMS["relight"][1](tiny_configs()["relight"], seed=5, count=1))
    np.testing.assert_array_equal(again.input, items[0].input)
    assert again.metadata == items[0].metadata


def test_relight_in_street_replaces_only_the_object_pixels():
    """in_street: the object's own pixels come from the whole street rendered under the other lighting (so the
    street may shadow it); everything else, the dilated ring of the mask included, is the target."""
    from dataclasses import replace

    from simharmony.data.streams import render_scene, tiny_scene

    cfg = replace(tiny_configs()["relight"], in_street=True)
    it = next(STREAMS["relight"][1](cfg, seed=5, count=1))
    md = it.metadata
    assert md["params"]["in_street"] is True
    scene = render_scene(tiny_scene(), int(md["scene_id"].split("-")[1]), 3, md["lighting_seed"])
    own = scene.frames.instance_ids[md["frames"]] == md["params"]["object_id"]
    np.testing.assert_array_equal(it.input[~own], it.target[~own])
    assert np.abs(it.input - it.target)[own].max() > 0.05
    assert (it.mask[own] == 1).all() and (it.mask <= coverage_mask(own.astype(np.float32), 1, threshold=0.5)).all()


def test_relight_config_checks():
    with pytest.raises(ConfigError):
        RelightStreamConfig(max_lighting_draws=0)
    with pytest.raises(ConfigError):
        RelightStreamConfig(seq_len=1)
    cfg = RelightStreamConfig(min_change=0.1)
    assert RelightStreamConfig.from_dict(cfg.to_dict()) == cfg
