"""Dataset presets and the `simharmony data` CLI: tiny end to end, default/holdout recipes, bad input."""

import dataclasses

import cv2
import numpy as np
import pytest

from simharmony.cli import main
from simharmony.data.presets import HOLDOUT_SEED_RANGE, PRESETS, TRAIN_SEED_RANGE, DatasetPreset, get_preset
from simharmony.data.registry import STREAMS, SYNTHETIC_STREAMS
from simharmony.data.shards import ShardDataset, stream_seconds
from simharmony.data.streams import IspStreamConfig, tiny_scene
from simharmony.errors import ConfigError


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ConfigError, match="default, holdout, real, real_objects, recon_extra, relight_street, tiny"):
        get_preset("huge")


def test_default_and_holdout_recipes():
    d, h = get_preset("default"), get_preset("holdout")
    assert set(d.streams) == set(h.streams) == set(SYNTHETIC_STREAMS)
    assert d.num_items >= 2000 and d.num_items * d.sequence_prob >= 400  # >= 300 sequences with a wide margin
    assert d.seq_len == 5 and (d.scene.width, d.scene.height) == (256, 144)
    assert min(h.streams.values()) >= 100 and (h.scene.width, h.scene.height) == (256, 144)
    # street and lighting seeds of the holdout come from a range disjoint from training's
    assert d.scene.seed_range == TRAIN_SEED_RANGE and h.scene.seed_range == HOLDOUT_SEED_RANGE
    assert TRAIN_SEED_RANGE[1] <= HOLDOUT_SEED_RANGE[0] and h.seed != d.seed
    # the extra reconstruction data: training streets (range and settings of default), another dataset seed
    x = get_preset("recon_extra")
    assert set(x.streams) < set(SYNTHETIC_STREAMS) and x.seed not in (d.seed, h.seed)
    assert x.scene == d.scene and x.recon == d.recon and x.overrides == d.overrides
    # balanced relighting: the same training streets, another seed, only the relight stream, in the street
    r = get_preset("relight_street")
    assert set(r.streams) == {"relight"} and r.seed not in (d.seed, h.seed, x.seed) and r.scene == d.scene
    assert r.stream_configs()["relight"].in_street and not d.stream_configs()["relight"].in_street
    for preset in (d, h, x, r):
        for name, cfg in preset.stream_configs().items():
            assert isinstance(cfg, STREAMS[name][0]) and cfg.scene == preset.scene
    for name in PRESETS:
        p = get_preset(name)
        assert DatasetPreset.from_dict(p.to_dict()) == p
    # large real objects: close-up photographs beside the default corpus, masks up to half the frame
    o = get_preset("real_objects")
    assert o.seed not in (d.seed, h.seed, x.seed, r.seed, get_preset("real").seed)
    names = [s.name for s in o.real_sources]
    assert "udacity_highway" in names and any(n.startswith("lomiri-wallpapers") for n in names)
    assert any(n.startswith("mate-backgrounds") for n in names) and abs(sum(s.weight for s in o.real_sources) - 1) < 1e-9
    for cfg in o.stream_configs().values():
        assert tuple(cfg.mask_area) == (0.02, 0.5) and cfg.corpus.sources == o.real_sources
    with pytest.raises(ConfigError):
        DatasetPreset(streams={"nope": 3})
    with pytest.raises(ConfigError):
        DatasetPreset(streams={"isp": -1})
    # per-stream overrides reach the stream configs; unknown fields are refused
    assert d.stream_configs()["isp"].items_per_scene == 8 and d.stream_configs()["novel_view"].items_per_scene == 20
    assert d.stream_configs()["novel_view"].mask_threshold == 0.08 and d.scene.spp == 8
    with pytest.raises(ConfigError, match="unknown fields"):
        DatasetPreset(overrides={"isp": {"nope": 1}}).stream_configs()
    with pytest.raises(ConfigError, match="recon"):
        DatasetPreset(recon={"iterations": 0}).stream_configs()


def test_holdout_seed_range_is_used():
    cfg = IspStreamConfig(scene=dataclasses.replace(tiny_scene(), seed_range=HOLDOUT_SEED_RANGE), seq_len=3,
                          min_object_pixels=12)
    it = next(STREAMS["isp"][1](cfg, seed=0, count=1))
    assert int(it.metadata["scene_id"].split("-")[1]) >= HOLDOUT_SEED_RANGE[0]
    assert it.metadata["lighting_seed"] >= HOLDOUT_SEED_RANGE[0]
    with pytest.raises(ConfigError):
        dataclasses.replace(tiny_scene(), seed_range=(5, 5))


def test_cli_tiny_generate_report_contact_sheet(tmp_path, capsys):
    out, cache = tmp_path / "ds", tmp_path / "cache"
    assert main(["data", "generate", "--preset", "tiny", "--out", str(out), "--cache-dir", str(cache), "--quiet"]) == 0
    ds = ShardDataset(out)
    assert len(ds) == get_preset("tiny").num_items
    assert ShardDataset.streams_of(ds.records) == set(SYNTHETIC_STREAMS)
    for i in range(len(ds)):
        it = ds.load_item(i)
        m = it.mask > 0.5
        assert m.any() and np.abs(it.input - it.target)[m].max() > 0.04, it.metadata["stream"]
    assert set(stream_seconds(out)) == set(SYNTHETIC_STREAMS)
    capsys.readouterr()

    assert main(["data", "report", str(out)]) == 0
    text = capsys.readouterr().out
    for name in SYNTHETIC_STREAMS:
        assert name in text
    assert "median" in text

    sheet = tmp_path / "sheet.png"
    assert main(["data", "contact-sheet", str(out), "--out", str(sheet)]) == 0
    img = cv2.imread(str(sheet))
    assert img.shape == (2 * len(SYNTHETIC_STREAMS) * 32, 3 * 48, 3)

    # resuming a complete dataset regenerates nothing
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.safetensors")}
    assert main(["data", "generate", "--preset", "tiny", "--out", str(out), "--cache-dir", str(cache), "--quiet"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.safetensors")} == before

    # another seed and only some streams: the same recipe's other items (a development split)
    dev = tmp_path / "dev"
    assert main(["data", "generate", "--preset", "tiny", "--out", str(dev), "--cache-dir", str(cache), "--quiet",
                 "--seed", "5", "--items", "isp=1"]) == 0
    one = ShardDataset(dev)
    assert len(one) == 1 and ShardDataset.streams_of(one.records) == {"isp"}
    first_isp = next(i for i in range(len(ds)) if ds.load_item(i).metadata["stream"] == "isp")
    assert not np.array_equal(one.load_item(0).target, ds.load_item(first_isp).target)


def test_cli_bad_input(tmp_path, capsys):
    assert main(["data", "generate", "--preset", "huge", "--out", str(tmp_path / "x")]) == 2
    assert "valid presets: default, holdout, real, real_objects, recon_extra, relight_street, tiny" in capsys.readouterr().err
    assert main(["data", "generate", "--preset", "tiny", "--out", str(tmp_path / "x"), "--shard", "3/2"]) == 2
    assert "--shard" in capsys.readouterr().err
    assert main(["data", "generate", "--preset", "tiny", "--out", str(tmp_path / "x"), "--items", "nope=3"]) == 2
    assert "STREAM=COUNT" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["data", "report", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
