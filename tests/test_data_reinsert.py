"""Asset re-insertion stream on tiny streets: valid items, the asset lands on the object, cache reuse."""

import math

import numpy as np
import pytest

from simharmony.data.item import PairItem
from simharmony.data.recon_streams import ReinsertStreamConfig, resolve_cache_dir
from simharmony.data.streams import STREAMS, psnr_in_mask, render_scene, tiny_configs, tiny_scene
from simharmony.errors import ConfigError

N = 3


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("recon_cache")


@pytest.fixture(scope="module")
def items(cache):
    return list(STREAMS["reinsert"][1](tiny_configs(str(cache))["reinsert"], seed=3, count=N))


def test_reinsert_items_valid_and_degraded_inside_mask(items):
    assert len(items) == N
    for it in items:
        assert isinstance(it, PairItem) and it.stream == "reinsert" and it.size == (32, 48)
        m = it.mask > 0.5
        assert m.any() and m.mean() < 0.5, "the mask marks one inserted vehicle"
        assert np.abs(it.input - it.target)[m].max() > 0.05
        assert 8.0 < psnr_in_mask(it.input, it.target, it.mask) < 45.0
        assert it.metadata["params"]["category"] == "vehicle"
    keys = [(it.metadata["params"]["object_id"], tuple(it.metadata["frames"])) for it in items]
    assert len(set(keys)) == len(keys), "items of one street must not repeat (object, frames)"


def test_reinserted_asset_lands_on_the_object(items):
    """The inserted-object mask must cover the object's pixels in the PBR ground truth (an independent
    render's instance ids): a wrong pose convention would put the asset elsewhere."""
    for it in items:
        md = it.metadata
        scene = render_scene(tiny_scene(), int(md["scene_id"].split("-")[1]), 8, md["lighting_seed"])
        obj = scene.frames.instance_ids[md["frames"]] == md["params"]["object_id"]
        m = it.mask > 0.5
        assert (obj & m).sum() >= 0.9 * obj.sum()
        assert (obj & m).sum() >= 0.35 * m.sum(), "the mask must be mostly the object (plus a dilated rim)"


def test_reinsert_reuses_cached_reconstruction(items, cache):
    files = sorted(p.name for p in cache.glob("*.safetensors"))
    assert len(files) == 1 and items[0].metadata["params"]["reconstruction"] == files[0]
    mtime = (cache / files[0]).stat().st_mtime_ns
    again = next(STREAMS["reinsert"][1](tiny_configs(str(cache))["reinsert"], seed=3, count=1))
    assert (cache / files[0]).stat().st_mtime_ns == mtime, "a cached reconstruction must be reused, not rebuilt"
    np.testing.assert_array_equal(again.input, items[0].input)
    assert again.metadata == items[0].metadata


def test_corrupt_cache_is_rebuilt(items, cache):
    path = next(cache.glob("*.safetensors"))
    path.write_bytes(b"not a safetensors file")
    again = next(STREAMS["reinsert"][1](tiny_configs(str(cache))["reinsert"], seed=3, count=1))
    assert path.stat().st_size > 1000
    assert math.isfinite(psnr_in_mask(again.input, again.target, again.mask))


def test_reinsert_config(monkeypatch, tmp_path):
    with pytest.raises(ConfigError):
        ReinsertStreamConfig(mask_alpha=1.5)
    with pytest.raises(ConfigError):
        ReinsertStreamConfig(scene_frames=3, seq_len=5)
    cfg = tiny_configs("x")["reinsert"]
    assert ReinsertStreamConfig.from_dict(cfg.to_dict()) == cfg
    monkeypatch.setenv("SIMHARMONY_RECON_CACHE", str(tmp_path))
    assert resolve_cache_dir("") == tmp_path and resolve_cache_dir("abc").name == "abc"
