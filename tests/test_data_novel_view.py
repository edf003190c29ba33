"""Novel-view artifact stream on tiny streets: each DIFIX3D+ degradation, targets at the right poses."""

import dataclasses

import numpy as np
import pytest

from simharmony.data.item import PairItem
from simharmony.data.recon_streams import DEGRADATIONS, NovelViewStreamConfig, difference_mask
from simharmony.data.registry import STREAMS, tiny_configs
from simharmony.data.streams import psnr_in_mask, render_scene, tiny_scene
from simharmony.errors import ConfigError


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    cache = tmp_path_factory.mktemp("recon_cache")
    base = tiny_configs(str(cache))["novel_view"]
    out = {}
    for kind in DEGRADATIONS:  # one street (same seed) for all: the full reconstruction is shared
        cfg = dataclasses.replace(base, degradations=(kind,), degradation_weights=(1.0,), items_per_scene=2)
        out[kind] = list(STREAMS["novel_view"][1](cfg, seed=4, count=2))
    out["_cache"] = cache
    return out


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_each_degradation_gives_valid_degraded_items(items, kind):
    its = items[kind]
    assert len(its) == 2
    for it in its:
        assert isinstance(it, PairItem) and it.stream == "novel_view" and it.size == (32, 48)
        assert it.metadata["params"]["degradation"] == kind
        m = it.mask > 0.5
        assert m.any()
        assert np.abs(it.input - it.target)[m].max() > 0.06
        assert 8.0 < psnr_in_mask(it.input, it.target, it.mask) < 45.0
        # the mask is exactly the documented difference mask
        np.testing.assert_array_equal(it.mask, difference_mask(it.input, it.target, 0.06, 2))


def test_degradation_parameters(items):
    for it in items["sparse"]:
        p = it.metadata["params"]
        assert p["every"] in (2, 3) and p["train_views"] == list(range(0, 8, p["every"]))
        assert p["every"] == items["sparse"][0].metadata["params"]["every"], "one k per street"
        if it.num_frames == 1:
            assert it.metadata["frames"][0] not in p["train_views"], "single frames are views left out"
    for it in items["underfit"]:
        p = it.metadata["params"]
        assert 0.25 <= p["fraction"] <= 0.75 and p["iterations"] == round(p["fraction"] * p["schedule"])
    for kind in ("cross", "cycle"):
        assert all(it.metadata["params"]["shift_m"] == 2.0 for it in items[kind])
    # sparse, underfit and cycle use their own reconstructions; cross shares the full one with cycle's first
    names = {it.metadata["params"]["reconstruction"] for k in DEGRADATIONS for it in items[k]}
    assert len(list(items["_cache"].glob("*.safetensors"))) >= len(names) >= 4


def test_cross_target_is_the_shifted_pbr_render(items):
    """Cross-referencing renders the 2 m shifted trajectory: its target must be the PBR render there (an
    independent Mitsuba render of the shifted poses), not the ego frame."""
    from scene_tools.pbr import render_street

    it = items["cross"][0]
    md = it.metadata
    scene = render_scene(tiny_scene(), int(md["scene_id"].split("-")[1]), 8, md["lighting_seed"])
    traj = scene.frames.trajectory[md["frames"]].shifted_laterally(2.0)
    ref = render_street(scene.layout, traj, progress=False, spp=16, seed=99)
    err_shifted = np.abs(it.target - ref.rgb).mean()
    err_ego = np.abs(it.target - scene.frames.rgb[md["frames"]]).mean()
    assert err_shifted < 0.5 * err_ego, (err_shifted, err_ego)  # 4 spp vs 16 spp noise stays in err_shifted
    np.testing.assert_allclose(it.depth[np.isfinite(ref.depth)], ref.depth[np.isfinite(ref.depth)], rtol=1e-4)


def test_other_degradations_target_the_ego_frames(items):
    for kind in ("sparse", "underfit", "cycle"):
        it = items[kind][0]
        md = it.metadata
        scene = render_scene(tiny_scene(), int(md["scene_id"].split("-")[1]), 8, md["lighting_seed"])
        np.testing.assert_array_equal(it.target, scene.frames.rgb[md["frames"]])


def test_difference_mask_reference():
    a = np.zeros((1, 6, 6, 3), np.float32)
    b = a.copy()
    b[0, 2:4, 2:4] = 0.5  # a 2x2 block survives the opening
    b[0, 0, 5] = 0.5  # an isolated pixel does not
    m = difference_mask(a, b, 0.06, 1)
    expect = np.zeros((6, 6), np.float32)
    expect[1:5, 1:5] = 1
    np.testing.assert_array_equal(m[0], expect)


def test_novel_view_config_checks():
    with pytest.raises(ConfigError):
        NovelViewStreamConfig(degradations=("blur",), degradation_weights=(1.0,))
    with pytest.raises(ConfigError):
        NovelViewStreamConfig(underfit_fractions=(0.9,))
    with pytest.raises(ConfigError):
        NovelViewStreamConfig(sparse_every=(1,))
    with pytest.raises(ConfigError):
        NovelViewStreamConfig(degradation_weights=(1.0, 1.0))
    cfg = tiny_configs("x")["novel_view"]
    assert NovelViewStreamConfig.from_dict(cfg.to_dict()) == cfg
