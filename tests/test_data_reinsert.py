"""Asset re-insertion stream on tiny streets: valid items, the asset lands on the object, cache reuse."""

import dataclasses
import math

import numpy as np
import pytest

from simharmony.data.item import PairItem
from simharmony.data.recon_streams import ReinsertStreamConfig, resolve_cache_dir
from simharmony.data.registry import STREAMS, tiny_configs
from simharmony.data.streams import psnr_in_mask, render_scene, tiny_scene
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
    used = {it.metadata["params"][k] for it in items for k in ("reconstruction", "background_reconstruction")}
    objects = {it.metadata["params"]["object_id"] for it in items}
    assert set(files) == used and len(files) == 1 + len(objects), "one full reconstruction + one per object"
    mtimes = {f: (cache / f).stat().st_mtime_ns for f in files}
    again = next(STREAMS["reinsert"][1](tiny_configs(str(cache))["reinsert"], seed=3, count=1))
    assert {f: (cache / f).stat().st_mtime_ns for f in files} == mtimes, "cached reconstructions must be reused"
    np.testing.assert_array_equal(again.input, items[0].input)
    assert again.metadata == items[0].metadata


def test_background_is_reconstructed_without_the_object(monkeypatch, tmp_path):
    """The default background is a reconstruction of the capture rendered without the re-inserted object (so
    neither it nor its shadow is in the input); ``background="full"`` keeps the full reconstruction."""
    from scene_tools.pbr import render_street
    from simharmony.data import recon_streams

    calls = []
    real = recon_streams.cached_reconstruction

    def spy(images, recon_config, cache_dir, scene_id, key_parts):
        calls.append((images, key_parts))
        return real(images, recon_config, cache_dir, scene_id, key_parts)

    monkeypatch.setattr(recon_streams, "cached_reconstruction", spy)
    cfg = tiny_configs(str(tmp_path))["reinsert"]
    item = next(STREAMS["reinsert"][1](cfg, seed=3, count=1))
    obj = item.metadata["params"]["object_id"]
    without = [(im, k) for im, k in calls if k.get("exclude_ids") == [obj]]
    assert len(without) == 1 and item.metadata["params"]["background"] == "object_removed"
    images = without[0][0]
    md = item.metadata
    scene = render_scene(tiny_scene(), int(md["scene_id"].split("-")[1]), cfg.scene_frames, md["lighting_seed"])
    fr = scene.frames
    expected = render_street(scene.layout, fr.trajectory, exclude_ids=(obj,), progress=False,
                             seed=int(fr.render_info.get("seed", 0)))
    np.testing.assert_array_equal(images.images, expected.rgb)
    assert not (np.asarray(images.instance_ids) == obj).any()
    assert not np.array_equal(images.images, fr.rgb), "the capture without the object must differ from the full one"

    calls.clear()
    full = next(STREAMS["reinsert"][1](dataclasses.replace(cfg, background="full"), seed=3, count=1))
    assert not any("exclude_ids" in k for _, k in calls)
    assert full.metadata["params"]["background_reconstruction"] == full.metadata["params"]["reconstruction"]
    assert full.metadata["params"]["object_id"] == obj and full.metadata["frames"] == md["frames"]
    assert not np.array_equal(full.input, item.input)


def test_objects_per_scene_limits_the_reconstructions(tmp_path):
    # "full" backgrounds (cheap); seed 2's first street has two usable vehicles
    cfg = dataclasses.replace(tiny_configs(str(tmp_path))["reinsert"], background="full", items_per_scene=4)

    def objects(limit):
        items = STREAMS["reinsert"][1](dataclasses.replace(cfg, objects_per_scene=limit), seed=2, count=4)
        return {it.metadata["params"]["object_id"] for it in items}

    assert len(objects(0)) == 2
    assert len(objects(1)) == 1


def test_corrupt_cache_is_rebuilt(items, cache):
    path = next(p for p in cache.glob("*.safetensors") if p.name == items[0].metadata["params"]["reconstruction"])
    path.write_bytes(b"not a safetensors file")
    again = next(STREAMS["reinsert"][1](tiny_configs(str(cache))["reinsert"], seed=3, count=1))
    assert path.stat().st_size > 1000
    assert math.isfinite(psnr_in_mask(again.input, again.target, again.mask))


def test_reinsert_config(monkeypatch, tmp_path):
    with pytest.raises(ConfigError):
        ReinsertStreamConfig(mask_alpha=1.5)
    with pytest.raises(ConfigError):
        ReinsertStreamConfig(scene_frames=3, seq_len=5)
    with pytest.raises(ConfigError, match="background"):
        ReinsertStreamConfig(background="empty")
    with pytest.raises(ConfigError, match="objects_per_scene"):
        ReinsertStreamConfig(objects_per_scene=-1)
    cfg = tiny_configs("x")["reinsert"]
    assert ReinsertStreamConfig.from_dict(cfg.to_dict()) == cfg
    monkeypatch.setenv("SIMHARMONY_RECON_CACHE", str(tmp_path))
    assert resolve_cache_dir("") == tmp_path and resolve_cache_dir("abc").name == "abc"
