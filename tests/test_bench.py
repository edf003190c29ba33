"""simharmony bench: presets, errors, metric plumbing, and a shrunken smoke run end to end."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math

import numpy as np
import pytest

from simharmony.bench import add_cli, config_from_args, get_bench_preset
from simharmony.bench.methods import Method, Unavailable, parametric_method, resolve_ours
from simharmony.bench.runner import build_methods, clip_metrics, run_bench
from simharmony.bench.scenarios import Clip, flicker_clips, holdout_clips, make_smoke_holdout
from simharmony.bench.stats import StreamBar, paired_difference, quality_bar, worst_clips
from simharmony.data.flicker import apply_flicker, flicker_gains
from simharmony.errors import ConfigError, InvalidInputError, MissingFileError


def _parser():
    p = argparse.ArgumentParser(prog="simharmony")
    add_cli(p.add_subparsers(dest="command", required=True))
    return p


def _strict_json(text: str):
    def bad(token):
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=bad)


def _psnr_np(a: np.ndarray, b: np.ndarray, cap: float) -> float:
    """Independent PSNR (data range 255) per frame, capped, averaged over frames."""
    vals = []
    for x, y in zip(a, b):
        m = np.mean((255.0 * x.astype(np.float64) - 255.0 * y.astype(np.float64)) ** 2)
        vals.append(cap if m == 0 else min(cap, 10 * math.log10(255.0**2 / m)))
    return float(np.mean(vals))


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown bench preset 'nope'.*full, real, smoke"):
        get_bench_preset("nope")
    args = _parser().parse_args(["bench", "--preset", "nope"])
    with pytest.raises(ConfigError, match="valid presets"):
        config_from_args(args)


def test_cli_arguments_map_to_config():
    args = _parser().parse_args(["bench", "--preset", "full", "--model", "m", "--per-frame-model", "p",
                                 "--parametric", "q", "--holdout", "h", "--threads", "3",
                                 "--model-variant", "no_tloss=a", "--model-variant", "no_perc=b"])
    cfg = config_from_args(args)
    assert (cfg.preset, cfg.model, cfg.per_frame_model, cfg.parametric, cfg.holdout_dir, cfg.threads) == (
        "full", "m", "p", "q", "h", 3)
    assert cfg.variants == {"no_tloss": "a", "no_perc": "b"} and not cfg.smoke_data
    with pytest.raises(ConfigError, match="NAME=DIR"):
        config_from_args(_parser().parse_args(["bench", "--model-variant", "oops"]))
    assert get_bench_preset("full", threads=2).to_dict() == type(cfg).from_dict(get_bench_preset("full", threads=2).to_dict()).to_dict()


def test_missing_holdout_folder_says_how_to_make_it(tmp_path):
    cfg = get_bench_preset("full", holdout_dir=str(tmp_path / "no_such"), progress=False)
    with pytest.raises(MissingFileError, match="simharmony data generate --preset holdout --out data/holdout"):
        run_bench(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # failed before writing anything


def test_bad_model_folder_is_an_error_and_absent_methods_are_not_available(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match="not a saved Enhancer"):
        build_methods(get_bench_preset("smoke", model=str(tmp_path / "empty")))
    with pytest.raises(MissingFileError, match="not a saved Enhancer"):
        build_methods(get_bench_preset("smoke", variants={"v": str(tmp_path / "nothing")}))
    par = parametric_method(str(tmp_path / "nothing"), "cpu")
    assert isinstance(par, Unavailable) and par.reason
    assert isinstance(parametric_method("", "cpu"), Unavailable)


def test_untrained_fallback_only_when_allowed(tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.setattr("simharmony.paths.ENHANCER_DIR", tmp_path / "missing")
    _, info = resolve_ours("", True, get_bench_preset("smoke").untrained_config, "cpu")
    assert not info.trained and "untrained" in info.source
    with pytest.raises(MissingFileError, match="pass --model"):
        resolve_ours("", False, {}, "cpu")
    _, missing, info = build_methods(get_bench_preset("full"))
    assert info is None and {"ours", "ours_per_frame", "ours_ema"} <= {u.name for u in missing}


def test_clip_metrics_against_hand_values():
    rng = np.random.default_rng(1)
    x = rng.uniform(0.2, 0.7, (3, 16, 20, 3)).astype(np.float32)
    mask = np.zeros((3, 16, 20), np.float32)
    mask[:, 4:10, 5:12] = 1.0
    target = x.copy()
    target[mask > 0] += 0.1  # 25.5 levels inside the mask -> fPSNR exactly 20 dB
    flow = np.zeros((3, 16, 20, 2), np.float32)
    clip = Clip("c", "g", x, target, mask, mask, None, flow, np.ones((3, 16, 20), bool))
    m = clip_metrics(x, clip, cap_db=100.0)
    assert m["fpsnr"] == pytest.approx(20.0, abs=1e-3)
    frac = mask[0].mean()
    assert m["psnr"] == pytest.approx(20.0 - 10 * math.log10(frac), abs=1e-3)
    assert m["mse"] == pytest.approx(25.5**2 * frac, rel=1e-4)
    assert clip_metrics(target, clip, cap_db=100.0)["psnr"] == 100.0  # identical -> capped
    # warping error with zero flow = mean squared frame difference; flicker from uint8 frames
    ref = np.mean([np.mean((x[t] - x[t - 1]).astype(np.float64) ** 2) for t in (1, 2)])
    assert m["warping_error"] == pytest.approx(ref, rel=1e-4)
    q = np.round(255 * x).astype(np.int16)
    assert m["flicker"] == pytest.approx((255 - np.abs(np.diff(q, axis=0)).mean()) / 255, abs=1e-9)


def test_smoke_end_to_end(tmp_path, monkeypatch, one_torch_thread):
    """Shrunken smoke preset (2 cheap streams, 3 scene frames) with an oracle method that returns the target."""
    import torch

    from simharmony.data.shards import ShardDataset
    from simharmony.models.backbone import EnhancerConfig
    from simharmony.models.enhancer import Enhancer

    monkeypatch.setattr("simharmony.paths.ENHANCER_DIR", tmp_path / "no_weights")  # fresh clone: no weights
    torch.manual_seed(0)
    Enhancer(EnhancerConfig(channels=(8, 16), heads=4, temporal_levels=(1,), context_frames=2)).save_pretrained(
        tmp_path / "variant")
    cfg = get_bench_preset(
        "smoke", cache_dir=str(tmp_path / "cache"), smoke_streams=("isp", "shadow"), num_frames=3,
        speed_repeats=2, speed_warmup=0, video_max_frames=8, progress=False, variants={"tiny": str(tmp_path / "variant")},
    )
    ds = ShardDataset(make_smoke_holdout(cfg))
    items = [ds.load_item(i) for i in range(len(ds))]
    assert any(it.num_frames >= 5 for it in items)  # sequences of smoke_seq_len frames
    lookup = {hashlib.sha1(np.ascontiguousarray(f).tobytes()).hexdigest(): t
              for it in items for f, t in zip(it.input, it.target)}

    def oracle(frame, mask, depth):
        return lookup.get(hashlib.sha1(np.ascontiguousarray(frame).tobytes()).hexdigest(), frame)

    out = tmp_path / "report"
    res = run_bench(cfg, out, extra_methods={"oracle": Method("oracle", "oracle (returns the target)", oracle,
                                                               kind="reference")})
    for f in ("report.md", "results.json", "contact_sheet.png", "plots/psnr_per_stream.png", "plots/temporal.png",
              "videos/isp.mp4", "videos/shadow.mp4", "videos/novel_trajectory.mp4", "videos/insertion.mp4",
              "videos/holdout_flicker.mp4"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    data = _strict_json((out / "results.json").read_text())
    assert data["meta"]["preset"] == "smoke" and data["meta"]["weights"]["ours"]["trained"] is False
    assert data["meta"]["git"]["revision"] is None or len(data["meta"]["git"]["revision"]) == 40
    assert {"parametric", "per_frame_model"} <= set(data["unavailable"])
    report = (out / "report.md").read_text()
    assert "UNTRAINED" in report and "not available" in report and "ours tiny" in report  # Table 6 column

    cap = cfg.psnr_cap_db
    for stream in ("isp", "shadow"):
        group = res["holdout"][stream]
        its = [it for it in items if it.stream == stream]
        expect = float(np.mean([_psnr_np(it.input, it.target, cap) for it in its]))
        assert group["methods"]["identity"]["psnr"] == pytest.approx(expect, abs=1e-6)
        assert expect < 60  # the input really differs from the target
        assert group["methods"]["oracle"]["psnr"] == cap and group["methods"]["oracle"]["fpsnr"] == cap
        assert group["methods"]["oracle"]["ssim"] == pytest.approx(1.0)
        # a fresh Enhancer is the identity; the oracle's temporal metrics are the target's
        assert group["methods"]["ours"]["psnr"] == pytest.approx(expect, abs=0.05)
        if group["counts"]["sequences"]:
            assert group["methods"]["oracle"]["flicker"] == pytest.approx(group["reference_target"]["flicker"])
    # flicker holdout: every holdout sequence (fewer than flicker_sequences here) with drifting inputs
    fl = res["scenarios"]["holdout_flicker"]
    stream_of = {r["id"]: r["stream"] for r, it in zip(ds.records, items) if it.num_frames > 1}
    assert fl["counts"]["sequences"] == min(cfg.flicker_sequences, len(stream_of)) > 0 and "Flicker holdout" in report
    clips = flicker_clips(make_smoke_holdout(cfg), dataclasses.replace(cfg, flicker_sequences=3))
    assert len(clips) == 3 and len({stream_of[c.id.removesuffix(":flicker")] for c in clips}) == 2  # round robin
    cuts = res["scenarios"]["holdout_cuts"]  # missed cuts: the oracle still returns every target
    assert cuts["counts"]["clips"] == cfg.cut_pairs and cuts["methods"]["oracle"]["psnr"] == cap
    assert cuts["methods"]["ours"]["psnr"] == pytest.approx(cuts["methods"]["identity"]["psnr"], abs=0.05)
    assert "Missed cuts:" in report
    for c in clips:
        k = [r["id"] for r in ds.records].index(c.id.removesuffix(":flicker"))
        gains = flicker_gains(np.random.default_rng([cfg.flicker_seed, k]), c.num_frames, cfg.flicker)
        assert np.array_equal(c.input, apply_flicker(items[k].input, gains)) and not np.array_equal(c.input, items[k].input)
        assert np.array_equal(c.input[0], items[k].input[0]) and np.array_equal(c.target, items[k].target)
        # shadow masks are cut out with the target's help: methods get the object's own mask there instead
        wanted = items[k].asset_mask if stream_of[c.id.removesuffix(":flicker")] == "shadow" else items[k].mask
        assert np.array_equal(c.model_mask, wanted)
    _, held = holdout_clips(make_smoke_holdout(cfg))
    for c, it in zip(held, items):
        if c.group == "shadow":  # the asset alone: inside the item's mask, without the cast shadow
            assert np.array_equal(c.model_mask, it.asset_mask) and (c.model_mask <= c.mask).all()
            assert c.model_mask.sum() < c.mask.sum()
        else:
            assert np.array_equal(c.model_mask, c.mask)
    _, held = holdout_clips(make_smoke_holdout(cfg), maskless_streams=())
    assert all(np.array_equal(c.model_mask, c.mask) for c in held)
    _, held = holdout_clips(make_smoke_holdout(cfg), mask_to_model=False)
    assert all(c.model_mask is None for c in held)
    assert "but on shadow, novel_view" in report
    # the quality bar: the oracle beats the input everywhere it can; an untrained Enhancer is near the identity
    for stream in ("isp", "shadow"):
        bar = res["quality_bars"]["oracle"][stream]
        assert bar["psnr_met"] and bar["ssim_met"] and bar["psnr_vs_input"]["low"] > 0
        assert abs(res["quality_bars"]["ours"][stream]["psnr_vs_input"]["mean"]) < 0.05
    assert set(res["quality_bars"]) >= {"ours", "oracle", "variant:tiny"} and "identity" not in res["quality_bars"]
    assert "## Quality bar on the holdout" in report and "`ours (temporal) [untrained]`" in report
    with pytest.raises(ConfigError, match="maskless_streams"):
        get_bench_preset("smoke", maskless_streams=("shadows",))
    nt = res["scenarios"]["novel_trajectory"]["methods"]
    assert 5 < nt["identity"]["psnr"] < 60 and nt["oracle"]["psnr"] == pytest.approx(nt["identity"]["psnr"])
    ins = res["scenarios"]["insertion"]["methods"]
    assert ins["identity"]["structure"] == pytest.approx(1.0) and ins["reinhard_lab"]["structure"] <= 1.0
    assert set(res["speed"]["ours"]) == {"128x72"} and res["speed"]["ours"]["128x72"]["median_ms"] > 0


def test_parametric_adapter_with_a_stand_in_module(monkeypatch, tmp_path):
    """The parametric baseline is another module: its absence or a mismatching interface is "not available"."""
    import sys
    import types

    class Good:
        @classmethod
        def from_pretrained(cls, folder):
            return cls()

        def harmonize(self, image, mask):
            return image * 0.5 + 0.25 * mask[..., None]

    class Bad(Good):
        def harmonize(self, image, mask):
            raise TypeError("expects [B, 3, H, W] tensors")

    mod = types.ModuleType("simharmony.models.parametric")
    mod.ParametricHarmonizer = Good
    monkeypatch.setitem(sys.modules, "simharmony.models.parametric", mod)
    m = parametric_method(str(tmp_path), "cpu")
    assert isinstance(m, Method)
    frame = np.full((12, 12, 3), 0.4, np.float32)
    mask = np.zeros((12, 12), np.float32)
    mask[3:6, 3:6] = 1.0
    out = m(frame, mask, None)
    assert out[0, 0, 0] == pytest.approx(0.2) and out[4, 4, 0] == pytest.approx(0.45)
    mod.ParametricHarmonizer = Bad
    bad = parametric_method(str(tmp_path), "cpu")
    assert isinstance(bad, Unavailable) and "expects [B, 3, H, W]" in bad.reason


def test_bar_chart_without_matplotlib_draws_with_opencv(monkeypatch, tmp_path):
    import sys

    import cv2

    from simharmony.bench.report import bar_chart

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    backend = bar_chart(tmp_path / "p.png", "t", ["a", "b"], {"m1": [20.0, 30.0], "m2": [25.0, float("nan")]}, "dB")
    img = cv2.imread(str(tmp_path / "p.png"))
    assert backend == "cv2" and img is not None and img.shape[1] >= 640


def test_paired_difference_interval():
    rng = np.random.default_rng(0)
    b = rng.normal(30, 3, 200)
    shifted = paired_difference(b + 0.2, b)  # the same shift on every item: no spread, a tight interval
    assert shifted.mean == pytest.approx(0.2) and shifted.low == pytest.approx(0.2) and shifted.significant
    noisy = paired_difference(b + rng.normal(0, 1, 200), b)  # no shift: the interval straddles 0
    assert noisy.low < 0 < noisy.high and not noisy.significant and noisy.n == 200
    assert noisy.high - noisy.low == pytest.approx(2 * 1.96 / math.sqrt(200), rel=0.25)
    assert paired_difference(b + 0.3 + rng.normal(0, 1, 200), b).significant
    assert paired_difference(b + 1, b, seed=3) == paired_difference(b + 1, b, seed=3)
    with pytest.raises(InvalidInputError, match="equal length"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(InvalidInputError, match="non-finite"):
        paired_difference([1.0, float("inf")], [1.0, 2.0])
    with pytest.raises(InvalidInputError, match="confidence"):
        paired_difference([1.0], [1.0], confidence=95)


def test_quality_bar_from_per_clip_metrics():
    rng = np.random.default_rng(1)
    ids = [f"c{i}" for i in range(50)]
    inp = {i: {"psnr": float(p), "ssim": 0.9} for i, p in zip(ids, rng.normal(30, 3, 50))}

    def method(dpsnr, dssim):
        return {i: {"psnr": v["psnr"] + dpsnr + 0.01 * rng.normal(), "ssim": v["ssim"] + dssim} for i, v in inp.items()}

    clips = {"identity": inp, "reinhard_lab": method(-2, -0.01), "lightness_preserving_hsv": method(-1, -0.01),
             "good": method(0.5, 0.001), "blurry": method(0.5, -0.001), "bad": method(-0.3, 0.0)}
    good = quality_bar(clips, "good")
    assert good.psnr_met and good.ssim_met and good.classical == "lightness_preserving_hsv"
    assert good.psnr_vs_classical.mean == pytest.approx(1.5, abs=0.01) and good.psnr_vs_input.significant
    assert StreamBar.from_dict(good.to_dict()) == good and good.to_dict()["verdict"] == good.verdict == "met"
    assert quality_bar(clips, "blurry").psnr_met and not quality_bar(clips, "blurry").ssim_met
    assert not quality_bar(clips, "bad").psnr_met and quality_bar(clips, "bad").ssim_met
    with pytest.raises(InvalidInputError, match="missing"):
        quality_bar({"good": clips["good"], "identity": inp}, "good")
    with pytest.raises(InvalidInputError, match="other clips"):
        quality_bar({**clips, "identity": dict(list(inp.items())[:10])}, "good")


def test_worst_clips_lists_only_losses_worst_first():
    inp = {f"c{i}": {"psnr": 30.0, "ssim": 0.9} for i in range(5)}
    ours = {i: {"psnr": 30.0 + d, "ssim": 0.9 + d / 100} for i, d in zip(inp, (0.5, -0.2, -0.4, 0.0, -0.1))}
    worst = worst_clips({"identity": inp, "ours": ours}, "ours", 2)
    assert [w["id"] for w in worst] == ["c2", "c1"]
    assert worst[0]["d_psnr"] == pytest.approx(-0.4) and worst[0]["d_ssim"] == pytest.approx(-0.004)
    assert len(worst_clips({"identity": inp, "ours": ours}, "ours", 10)) == 3  # c0 gains, c3 ties: not listed
    assert worst_clips({"identity": inp, "ours": inp}, "ours", 3) == []
    with pytest.raises(InvalidInputError, match="ours"):
        worst_clips({"identity": inp}, "ours", 1)


def test_failure_cases_are_found_shown_and_reported(tmp_path, one_torch_thread):
    """A model that harms its input: its worst items are listed worst first and drawn, one row each."""
    import torch
    from PIL import Image

    from simharmony.models.backbone import EnhancerConfig
    from simharmony.models.enhancer import Enhancer

    torch.manual_seed(0)
    model = Enhancer(EnhancerConfig(channels=(8, 16), heads=4, temporal_levels=(1,), context_frames=2))
    with torch.no_grad():
        for p in model.parameters():  # leave the identity: outputs that differ from the input
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "harmful")
    cfg = get_bench_preset("smoke", cache_dir=str(tmp_path / "cache"), smoke_streams=("isp",), smoke_items_per_stream=3,
                           num_frames=0, flicker_sequences=0, speed_repeats=1, speed_warmup=0, progress=False,
                           model=str(tmp_path / "harmful"), failure_cases=2)
    out = tmp_path / "report"
    res = run_bench(cfg, out)
    cases = res["failure_cases"]["isp"]
    clips = res["holdout"]["isp"]["clips"]
    assert len(cases) == 2 and cases[0]["d_ssim"] <= cases[1]["d_ssim"] < 0
    for c in cases:
        assert c["d_ssim"] == pytest.approx(clips["ours"][c["id"]]["ssim"] - clips["identity"][c["id"]]["ssim"])
        assert 0 <= c["frame"] < 5
    others = [clips["ours"][i]["ssim"] - clips["identity"][i]["ssim"] for i in clips["ours"] if i not in {c["id"] for c in cases}]
    assert all(d >= cases[1]["d_ssim"] for d in others)
    sheet = np.asarray(Image.open(out / "failure_cases.png"))
    row_h = sheet.shape[0] // 2
    assert sheet.shape[0] == 2 * row_h >= 2 * 144 and sheet.shape[1] == 5 * sheet.shape[1] // 5
    report = (out / "report.md").read_text()
    assert "Failure cases" in report and all(c["id"] in report for c in cases) and "failure_cases.png" in report
    assert _strict_json((out / "results.json").read_text())["failure_cases"]["isp"][0]["id"] == cases[0]["id"]
    with pytest.raises(ConfigError, match="failure_cases"):
        get_bench_preset("smoke", failure_cases=-1)


def test_cut_clips_play_two_sequences_as_one(tmp_path):
    """A missed-cut clip is sequence A then sequence B, unchanged, with no valid flow across the cut;
    pairs are seeded and B gives methods a mask exactly when A does."""
    from simharmony.bench.scenarios import cut_clips
    from simharmony.data.shards import ShardDataset

    cfg = get_bench_preset("smoke", cache_dir=str(tmp_path / "cache"), smoke_streams=("isp", "shadow"),
                           smoke_items_per_stream=4, progress=False, cut_pairs=5)
    folder = make_smoke_holdout(cfg)
    ds = ShardDataset(folder)
    index = {r["id"]: i for i, r in enumerate(ds.records)}
    clips = cut_clips(folder, cfg)
    assert len(clips) == 5 and [c.id for c in clips] == [c.id for c in cut_clips(folder, cfg)]
    assert [c.id for c in clips] != [c.id for c in cut_clips(folder, dataclasses.replace(cfg, cut_seed=1))]
    for c in clips:
        a_id, b_id = c.id.split("|")
        a, b = ds.load_item(index[a_id]), ds.load_item(index[b_id])
        assert a_id != b_id and a.num_frames > 1 and b.num_frames > 1 and c.group == "holdout_cuts"
        for field in ("input", "target", "depth", "flow"):
            assert np.array_equal(getattr(c, field), np.concatenate([getattr(a, field), getattr(b, field)])), field
        assert not c.flow_valid[a.num_frames].any() and c.flow_valid[a.num_frames + 1:].sum() == b.flow_valid[1:].sum() > 0
        assert (a.model_mask(cfg.maskless_streams) is None) == (b.model_mask(cfg.maskless_streams) is None)
    assert cut_clips(folder, dataclasses.replace(cfg, cut_pairs=0)) == []
    with pytest.raises(ConfigError, match="cut_pairs"):
        get_bench_preset("smoke", cut_pairs=-1)


def test_clip_metrics_add_lpips_only_when_its_network_is_here(tmp_path, monkeypatch):
    import torch

    from simharmony import metrics as M
    from simharmony.models.lpips import LPIPS
    from simharmony.utils.io import save_tensors

    rng = np.random.default_rng(0)
    x = rng.random((2, 32, 40, 3)).astype(np.float32)
    target = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
    clip = Clip("c", "g", x, target)
    monkeypatch.setenv(M.METRICS_WEIGHTS_ENV, str(tmp_path))  # empty: no LPIPS, and no made-up number
    assert "lpips" not in clip_metrics(x, clip, 100.0)
    torch.manual_seed(0)
    net = LPIPS("alex")
    for lin in net.lin:
        lin.weight.data.abs_()
    save_tensors(tmp_path / "lpips_alex.safetensors",
                 {k: v for k, v in net.state_dict().items() if k not in ("shift", "scale")}, {"lpips_net": "alex"})
    res = clip_metrics(x, clip, 100.0)
    assert res["lpips"] == pytest.approx(M.lpips_distance(x, target, net="alex")) and res["lpips"] > 0
    assert clip_metrics(target, clip, 100.0)["lpips"] == 0.0


def test_clip_metrics_add_flip_when_its_package_is_here():
    pytest.importorskip("flip_evaluator", reason="flip-evaluator (the metrics extra) is not installed")
    from simharmony import metrics as M

    rng = np.random.default_rng(1)
    x = rng.random((2, 24, 32, 3)).astype(np.float32)
    target = np.clip(x + 0.1, 0, 1).astype(np.float32)
    res = clip_metrics(x, Clip("c", "g", x, target), 100.0)
    assert res["flip"] == pytest.approx(M.flip(x, target)) and res["flip"] > 0


def test_set_metrics_fid_kid_per_stream_with_a_frame_cap(tmp_path, monkeypatch):
    """FID / KID per (stream, method) over at most ``set_metric_frames`` frames (random Inception: wiring only;
    the network itself is checked against its reference in test_metrics)."""
    import numpy as np
    import torch

    from simharmony import metrics as M
    from simharmony.bench.runner import SetMetrics
    from simharmony.bench.scenarios import Clip
    from simharmony.models.inception import FIDInceptionV3
    from simharmony.utils.io import save_tensors

    monkeypatch.setenv(M.METRICS_WEIGHTS_ENV, str(tmp_path))
    assert not SetMetrics(4).available  # no converted network: nothing collected, no score
    torch.manual_seed(0)
    net = FIDInceptionV3()
    for p in net.parameters():
        p.data = torch.randn_like(p) * 0.05 if p.ndim == 4 else p.data
    save_tensors(tmp_path / "fid_inception.safetensors", net.state_dict(), {"format": "simharmony.fid_inception"})
    rng = np.random.default_rng(0)
    sets = SetMetrics(4)
    assert sets.available and not SetMetrics(0).available
    for i in range(2):
        target = rng.random((3, 24, 32, 3)).astype(np.float32)
        clip = Clip(id=f"c{i}", group="isp", input=target, target=target)
        take = sets.take(clip)
        assert take == (3 if i == 0 else 1)  # the cap: 4 frames of the stream in all
        sets.add("isp", "identity", target[:take])
        sets.add("isp", "brighter", np.clip(target[:take] + 0.4, 0, 1))
    same, other = sets.scores("isp", "identity"), sets.scores("isp", "brighter")
    assert same["set_frames"] == 4 and abs(same["fid"]) < 1e-6 and other["fid"] > 0 and other["kid"] > same["kid"]
    assert sets.scores("shadow", "identity") == {}
