"""Real-image streams (simharmony.data.real) and the bench's real scenarios, on tiny real-like data the tests
write themselves (smooth textured images, a short video, masks in the realdata folders' messy formats)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from simharmony.data.real import (
    RealCorpus,
    RealIdentityStreamConfig,
    RealIspStreamConfig,
    RealRpbStreamConfig,
    RealSource,
    RealVideoStreamConfig,
    dis_flow,
    generate_real_identity,
    generate_real_isp,
    generate_real_rpb,
    generate_real_video,
    object_mask,
    read_video,
    segment_mask,
    srgb_eotf,
)
from simharmony.errors import ConfigError, FileFormatError, MissingFileError


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth colourful image with edges [H, W, 3] uint8 (RGB)."""
    base = cv2.GaussianBlur(rng.uniform(0, 255, (h, w, 3)).astype(np.float32), (0, 0), 6)
    base = (base - base.min()) / max(np.ptp(base), 1e-6) * 200 + 20
    for _ in range(6):
        x, y = (int(v) for v in rng.integers(0, [w, h]))
        cv2.rectangle(base, (x, y), (x + w // 6, y + h // 6), [float(c) for c in rng.uniform(0, 255, 3)], -1)
    return base.clip(0, 255).astype(np.uint8)


def _write_rgb(path: Path, img: np.ndarray) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> RealCorpus:
    root = tmp_path_factory.mktemp("real")
    rng = np.random.default_rng(0)
    photos = root / "photos"
    photos.mkdir()
    for i in range(3):
        _write_rgb(photos / f"p{i}.jpg", _texture(rng, 120 + 20 * i, 200))
    frames = root / "frames"
    frames.mkdir()
    big = _texture(rng, 90, 300)
    for t in range(8):  # the scene pans 3 px per frame
        _write_rgb(frames / f"{t:05d}.png", big[:, 3 * t: 3 * t + 160])
    return RealCorpus(sources=[RealSource(path=str(photos), name="photos", licence="test"),
                               RealSource(path=str(frames), kind="video", name="clip", licence="test")])


SMALL = {"width": 64, "height": 36}


def test_real_streams_make_valid_deterministic_items(corpus):
    cases = [
        (generate_real_isp, RealIspStreamConfig(corpus=corpus, **SMALL)),
        (generate_real_rpb, RealRpbStreamConfig(corpus=corpus, **SMALL)),
        (generate_real_identity, RealIdentityStreamConfig(corpus=corpus, **SMALL)),
        (generate_real_video, RealVideoStreamConfig(corpus=corpus, seq_len=3, **SMALL)),
    ]
    for gen, cfg in cases:
        a = list(gen(cfg, seed=4, count=3))
        b = list(gen(cfg, seed=4, count=3))
        assert len(a) == 3
        for x, y in zip(a, b):
            assert np.array_equal(x.input, y.input) and x.metadata == y.metadata
            md = x.metadata
            assert md["licence"] == "test" and md["source"] in ("photos", "clip") and md["has_depth"] is False
            assert np.isinf(x.depth).all() and x.size == (36, 64)
        assert not np.array_equal(a[0].input, next(iter(gen(cfg, seed=5, count=1))).input)


def test_real_isp_changes_only_inside_the_mask(corpus):
    for it in generate_real_isp(RealIspStreamConfig(corpus=corpus, **SMALL), seed=1, count=4):
        outside = it.mask[0] == 0
        assert np.array_equal(it.input[0][outside], it.target[0][outside])
        assert it.metadata["params"]["mean_abs_change_in_mask"] >= 0.02 or it.metadata["params"]["isp"]


def test_identity_items_are_identical_with_or_without_a_mask(corpus):
    items = list(generate_real_identity(RealIdentityStreamConfig(corpus=corpus, mask_prob=0.5, **SMALL), seed=2, count=8))
    assert all(np.array_equal(it.input, it.target) for it in items)
    with_mask = [it.metadata["params"]["with_mask"] for it in items]
    assert any(with_mask) and not all(with_mask)
    assert all((it.mask.max() > 0) == it.metadata["params"]["with_mask"] for it in items)


def test_video_items_flicker_after_a_clean_first_frame_and_carry_flow(corpus):
    cfg = RealVideoStreamConfig(corpus=corpus, seq_len=4, flicker_prob=1.0, **SMALL)
    it = next(generate_real_video(cfg, seed=0, count=1))
    assert np.array_equal(it.input[0], it.target[0]) and not np.array_equal(it.input[1:], it.target[1:])
    assert it.flow_valid[1:].mean() > 0.5 and not it.flow_valid[0].any()
    clean = next(generate_real_video(RealVideoStreamConfig(corpus=corpus, seq_len=4, flicker_prob=0.0, **SMALL), seed=0, count=1))
    assert np.array_equal(clean.input, clean.target) and clean.mask.max() == 0
    with pytest.raises(ConfigError, match="no video source"):
        next(generate_real_video(RealVideoStreamConfig(corpus=RealCorpus(sources=[corpus.sources[0]]), **SMALL)))


def test_dis_flow_follows_a_pan_in_the_projects_convention():
    rng = np.random.default_rng(3)
    big = _texture(rng, 80, 200).astype(np.float32) / 255
    frames = np.stack([big[:, 40 - 2 * t: 160 - 2 * t] for t in range(3)])  # content moves 2 px right per frame
    flow, valid = dis_flow(frames)
    assert not valid[0].any() and np.abs(flow[0]).max() == 0
    inner = valid[1][10:-10, 10:-10]
    assert inner.mean() > 0.8
    # pixel p at t shows what p + flow shows at t-1: content moved right, so flow x is about -2
    assert abs(float(np.median(flow[1][10:-10, 10:-10][inner][:, 0])) + 2.0) < 0.3


def test_object_masks_are_soft_and_sized():
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = object_mask(rng, 72, 128, area=(0.05, 0.2))
        assert m.dtype == np.float32 and 0 <= m.min() and m.max() == 1
        assert 0.01 < (m > 0.5).mean() < 0.4


def test_segment_masks_follow_the_pictures_edges(corpus):
    """On a picture of flat patches (noise added), an edge-following mask lies inside the patches it covers:
    none is cut in two. Sizes stay in range, and the ISP stream uses such masks when asked."""
    rng = np.random.default_rng(1)
    labels = np.zeros((72, 128), np.int64)
    labels[:, 64:] = 1
    labels[10:40, 20:50] = 2  # a box on the left half
    labels[45:70, 80:120] = 3  # a box on the right half
    colours = np.array([[0.2, 0.3, 0.7], [0.8, 0.7, 0.2], [0.9, 0.1, 0.1], [0.1, 0.8, 0.3]], np.float32)
    image = (colours[labels] + rng.normal(0, 0.01, (72, 128, 3))).astype(np.float32)
    seen = set()
    for _ in range(20):
        m = segment_mask(rng, image, area=(0.05, 0.6))
        inside = m > 0.5
        assert m.dtype == np.float32 and m.max() == 1 and 0.03 < inside.mean() < 0.65
        covered = [k for k in range(4) if inside[labels == k].any()]
        for k in covered:  # a patch the mask enters it covers whole (the soft edge aside)
            core = cv2.erode((labels == k).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            assert inside[core].mean() > 0.97, (k, inside[core].mean())
        seen.add(tuple(covered))
    assert len(seen) >= 2  # different seeds reach different patches
    plain = list(generate_real_isp(RealIspStreamConfig(corpus=corpus, **SMALL), seed=2, count=4))
    again = list(generate_real_isp(RealIspStreamConfig(corpus=corpus, segment_prob=0.0, **SMALL), seed=2, count=4))
    edges = list(generate_real_isp(RealIspStreamConfig(corpus=corpus, segment_prob=1.0, **SMALL), seed=2, count=4))
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(plain, again))
    assert not all(np.array_equal(a.mask, b.mask) for a, b in zip(plain, edges))
    with pytest.raises(ConfigError, match="segment_prob"):
        RealIspStreamConfig(segment_prob=1.5)


def test_a_dataset_written_before_a_config_field_existed_still_resumes(corpus, tmp_path):
    """generation.yaml from before ``segment_prob`` existed (the field missing) means its default: the complete
    dataset resumes and regenerates nothing; a real change of settings is still refused."""
    from simharmony.data.shards import generate_dataset
    from simharmony.utils.io import load_yaml, save_yaml

    cfg = {"real_isp": RealIspStreamConfig(corpus=corpus, **SMALL)}
    out = tmp_path / "ds"
    generate_dataset(out, {"real_isp": 2}, seed=3, shard_size=2, configs=cfg, progress=False)
    record = load_yaml(out / "generation.yaml")
    del record["configs"]["real_isp"]["segment_prob"]
    save_yaml(out / "generation.yaml", record)
    shard = next((out / "shards").glob("*.safetensors"))
    before = shard.stat().st_mtime_ns
    generate_dataset(out, {"real_isp": 2}, seed=3, shard_size=2, configs=cfg, progress=False)
    assert shard.stat().st_mtime_ns == before
    changed = {"real_isp": RealIspStreamConfig(corpus=corpus, segment_prob=0.5, **SMALL)}
    with pytest.raises(ConfigError, match="other settings"):
        generate_dataset(out, {"real_isp": 2}, seed=3, shard_size=2, configs=changed, progress=False)


def test_srgb_eotf_inverts_the_renderers_oetf():
    from scene_tools.pbr import srgb_oetf

    x = np.linspace(0, 1, 101, dtype=np.float32)
    assert np.allclose(srgb_oetf(srgb_eotf(x)), x, atol=1e-5)


def test_eval_only_folders_and_bad_sources_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="reserved for evaluation"):
        next(generate_real_isp(RealIspStreamConfig(corpus=RealCorpus(sources=[RealSource(path="/x/real_object_masks")]))))
    with pytest.raises(MissingFileError, match="does not exist"):
        next(generate_real_isp(RealIspStreamConfig(corpus=RealCorpus(sources=[RealSource(path=str(tmp_path / "nope"))]))))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match="holds no image"):
        next(generate_real_isp(RealIspStreamConfig(corpus=RealCorpus(sources=[RealSource(path=str(tmp_path / "empty"))]))))
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(FileFormatError):
        read_video(bad)
    with pytest.raises(ConfigError, match="weight"):
        RealSource(path="x", weight=0)


def test_video_file_source(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    if not writer.isOpened():
        pytest.skip("OpenCV cannot write mp4 here")
    big = _texture(rng, 64, 140)
    for t in range(6):
        writer.write(cv2.cvtColor(np.ascontiguousarray(big[:, 4 * t: 4 * t + 96]), cv2.COLOR_RGB2BGR))
    writer.release()
    frames = read_video(path, start=1, stop=5)
    assert len(frames) == 4 and frames[0].shape == (64, 96, 3)
    corpus = RealCorpus(sources=[RealSource(path=str(path), licence="test")])
    it = next(generate_real_video(RealVideoStreamConfig(corpus=corpus, seq_len=3, **SMALL), seed=0, count=1))
    assert it.num_frames == 3 and it.metadata["source"] == "clip.mp4"


def test_depth_given_false_is_exactly_no_depth():
    from _helpers import small_enhancer

    model = small_enhancer()
    x = torch.rand(2, 3, 32, 48)
    depth = torch.full((2, 1, 32, 48), float("inf"))
    depth[0] = 5.0
    given = torch.tensor([True, False])
    with torch.no_grad():
        both, _ = model(x, depth=depth, depth_given=given)
        none, _ = model(x[1:], depth=None)
        first, _ = model(x[:1], depth=depth[:1])
    assert torch.allclose(both[1:], none, atol=1e-6) and torch.allclose(both[:1], first, atol=1e-6)


def test_trainer_never_gives_real_items_depth():
    from simharmony.training.config import TrainConfig
    from simharmony.training.trainer import stream_flags

    cfg = TrainConfig()
    batch = {"stream": ["isp", "real_isp"], "mask": torch.zeros(2, 1, 4, 4)}
    assert stream_flags(batch, cfg)["depth_given"].tolist() == [True, False]
    assert "depth_given" not in stream_flags({"stream": ["isp", "shadow"], "mask": torch.zeros(2, 1, 4, 4),
                                              "asset_mask": torch.zeros(2, 1, 4, 4), "has_asset_mask": torch.ones(2, dtype=torch.bool)}, cfg)


def _fake_realdata(root: Path) -> None:
    rng = np.random.default_rng(7)
    objects = root / "real_object_masks"
    objects.mkdir(parents=True)
    for i in range(3):
        _write_rgb(objects / f"o{i}.jpg", _texture(rng, 64, 64))
        m = np.zeros((64, 64, 3), np.uint8)
        m[16:48, 20:44] = 255
        cv2.imwrite(str(objects / f"o{i}.png"), m)
    frames = root / "udacity_highway" / "frames"
    frames.mkdir(parents=True)
    big = _texture(rng, 120, 400)
    for t in range(221):
        if t >= 161:  # only the held-out frames are read
            _write_rgb(frames / f"{t:05d}.jpg", big[:, t - 161: t - 161 + 213])
        else:
            (frames / f"{t:05d}.jpg").write_bytes(b"")
    tsai = root / "real_composites_tsai"
    (tsai / "image").mkdir(parents=True)
    (tsai / "mask").mkdir()
    _write_rgb(tsai / "image" / "c0.png", _texture(rng, 80, 120))
    m = np.full((80, 120), 22, np.uint8)  # the messy background value the README warns about
    m[20:60, 30:90] = 255
    cv2.imwrite(str(tsai / "mask" / "c0.png"), m)


def test_bench_real_scenarios_report_and_bars(tmp_path, monkeypatch, one_torch_thread):
    from simharmony.bench import get_bench_preset, run_bench
    from simharmony.bench.real import CLEAN_SIZES

    monkeypatch.setattr("simharmony.bench.real.CLEAN_SIZES", ((64, 36, 6), (96, 54, 3)))
    _fake_realdata(tmp_path / "realdata")
    cfg = get_bench_preset("real", real_dir=str(tmp_path / "realdata"), progress=False, parametric="")
    results = run_bench(cfg, tmp_path / "out")
    real = results["real"]
    comp = real["real_composites"]
    assert comp["available"] and comp["clips"] == 3 + 15
    assert comp["methods"]["identity"]["better_than_input"] == 0.0
    assert real["real_clean_video_64"]["methods"]["identity"]["psnr_median"] == 100.0
    assert real["real_composites_tsai"]["clips"] == 1
    assert "composites: fMSE below input's" in real["bars"] and "clean video 64: HF ratio <= 1.05" in real["bars"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Real images" in report and (tmp_path / "out" / "real_tsai.png").is_file()
    assert CLEAN_SIZES[0][0] == 512
    # a missing folder is "not available", never a number
    empty = run_bench(cfg.__class__.from_dict({**cfg.to_dict(), "real_dir": str(tmp_path / "missing")}), tmp_path / "out2")
    assert not empty["real"]["real_composites"]["available"] and "not found" in empty["real"]["real_composites"]["reason"]
    assert empty["real"]["bars"] == {}


def test_a_users_folder_as_the_real_corpus(corpus, tmp_path):
    from simharmony.data.presets import DatasetPreset, generate_preset
    from simharmony.data.shards import ShardDataset
    from simharmony.data.streams import SceneSource

    photos, out = corpus.sources[0].path, tmp_path / "ds"

    preset = DatasetPreset(name="mine", streams={"real_isp": 2, "real_identity": 2}, shard_size=2, overrides={},
                           scene=SceneSource(width=64, height=36), real_sources=[RealSource(path=photos, licence="CC0")])
    generate_preset(preset, out, progress=False)
    ds = ShardDataset(out)
    assert len(ds) == 4 and {ds.load_item(i).metadata["licence"] for i in range(4)} == {"CC0"}
