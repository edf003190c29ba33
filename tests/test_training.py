"""Training package: losses against hand values, warp, EMA, config round trip, substitute features,
VGG16 file loading, a tiny end-to-end run, resume equivalence and bad-config errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from simharmony.errors import ConfigError, CorruptFileError, MissingFileError, ShapeMismatchError
from simharmony.models import Enhancer, EnhancerConfig
from simharmony.training import (
    EMA,
    RandomFeatures,
    TrainConfig,
    VGG16Features,
    l2_loss,
    log_mse_loss,
    temporal_warp_loss,
    train,
    warp_backward,
)
from simharmony.training.features import build_feature_extractor
from simharmony.training.losses import (
    PatchPerceptualLoss,
    crop_patches,
    feature_distance,
    patch_side_range,
    sample_patches,
    ssim_loss,
)
from simharmony.utils.io import save_tensors

ROOT = Path(__file__).resolve().parents[1]
TINY_CFG = ROOT / "configs" / "train_tiny.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from simharmony.data.presets import generate_preset

    d = tmp_path_factory.mktemp("tiny_data")
    generate_preset("tiny", d, progress=False)
    return d


def tiny_config(data: Path | list[Path], **changes) -> TrainConfig:
    cfg = TrainConfig.load(TINY_CFG)
    folders = [str(d) for d in data] if isinstance(data, list) else str(data)
    return TrainConfig.from_dict({**cfg.to_dict(), "data": folders, **changes})


# -- losses ---------------------------------------------------------------------------------------------------
def test_l2_loss_hand_value():
    a = torch.zeros(1, 3, 2, 2)
    b = torch.zeros(1, 3, 2, 2)
    b[0, 0, 0, 0] = 1.0
    b[0, 2, 1, 1] = -2.0
    assert l2_loss(a, b).item() == pytest.approx((1 + 4) / 12)


def test_log_mse_loss_hand_value_weighs_frames_alike():
    out = torch.zeros(2, 3, 2, 2)
    tgt = torch.zeros(2, 3, 2, 2)
    tgt[0] = 0.1  # frame 0: MSE 0.01 (20 dB); frame 1: identical
    want = (10 * math.log10(0.01 + 1e-5) + 10 * math.log10(1e-5)) / 2
    assert log_mse_loss(out, tgt).item() == pytest.approx(want, rel=1e-5)
    # per unit of error, the nearly right frame pulls far harder than the far-off one (plain MSE: alike)
    o = out.clone().requires_grad_(True)
    tgt[1, 0, 0, 0] = 0.01
    log_mse_loss(o, tgt).backward()
    g = o.grad.abs()
    assert g[1, 0, 0, 0] > 10 * g[0, 0, 0, 0]
    with pytest.raises(ShapeMismatchError):
        log_mse_loss(out, tgt[:1])
    with pytest.raises(ConfigError, match="l2_mode"):
        TrainConfig(l2_mode="psnr")


def test_ssim_loss_is_one_minus_the_benchmark_ssim_and_differentiable():
    import numpy as np

    from simharmony.metrics import ssim

    g = torch.Generator().manual_seed(0)
    tgt = torch.rand(2, 2, 3, 24, 30, generator=g)  # [B, T, 3, H, W]
    out = (tgt + 0.05 * torch.randn(tgt.shape, generator=g)).clamp(0, 1)
    want = np.mean([1.0 - ssim(out[b, t].permute(1, 2, 0).double().numpy(), tgt[b, t].permute(1, 2, 0).double().numpy())
                    for b in range(2) for t in range(2)])
    assert ssim_loss(out, tgt).item() == pytest.approx(want, rel=1e-4)
    assert ssim_loss(tgt, tgt).item() == pytest.approx(0.0, abs=1e-6)
    # a gradient step on the loss alone brings the output closer to the target
    o = out.clone().requires_grad_(True)
    ssim_loss(o, tgt).backward()
    assert o.grad.abs().sum() > 0
    assert ssim_loss(out - 0.5 * o.grad, tgt) < ssim_loss(out, tgt)
    with pytest.raises(ShapeMismatchError):
        ssim_loss(out, tgt[:1])
    with pytest.raises(ShapeMismatchError, match="11 x 11"):
        ssim_loss(out[..., :8, :], tgt[..., :8, :])
    with pytest.raises(ConfigError, match="loss weights"):
        TrainConfig(ssim_weight=-1.0)


def test_feature_distance_hand_value():
    fb = [torch.tensor([1.0, -1.0, 2.0, 0.0]).view(1, 4, 1, 1)]
    fa = [torch.tensor([1.0, 0.0, 2.0, 1.0]).view(1, 4, 1, 1)]
    # mean((a-b)^2) = 2/4, mean(b^2) = 6/4 -> 1/3; l1: mean|a-b| = 2/4, mean|b| = 4/4 -> 1/2
    assert feature_distance(fa, fb).item() == pytest.approx(1 / 3, rel=1e-6)
    assert feature_distance(fa, fb, distance="l1").item() == pytest.approx(0.5, rel=1e-6)
    assert feature_distance(fb, fb).item() == 0.0


def test_patch_range_and_crops():
    assert patch_side_range(144, 256, (128 / 576, 512 / 576)) == (32, 128)  # the paper's range scaled to 256x144
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 20 * 30, dtype=torch.float32).view(2, 1, 20, 30)
    for _ in range(20):
        boxes = sample_patches(2, 20, 30, (0.4, 0.9), g)
        assert 8 <= boxes.k <= 18
        p = crop_patches(x, boxes)
        assert p.shape == (2, 1, boxes.k, boxes.k)
        for i in range(2):
            y0, x0 = int(boxes.ys[i]), int(boxes.xs[i])
            assert torch.equal(p[i], x[i, :, y0 : y0 + boxes.k, x0 : x0 + boxes.k])


def test_perceptual_loss_same_place_in_output_and_target():
    img = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    loss = PatchPerceptualLoss(RandomFeatures(), (0.3, 1.0), num_patches=3)
    assert loss(img, img.clone(), torch.Generator().manual_seed(0)).item() == 0.0  # identical -> 0 at any place
    out = img.clone().requires_grad_(True)
    val = loss(out, img.flip(-1), torch.Generator().manual_seed(0))
    val.backward()
    assert val.item() > 0 and out.grad.abs().sum() > 0


def test_warp_matches_hand_built_translation():
    # frame t-1 has a pattern; frame t shows it moved right by 2 px and down by 1 px, so pixel p at t came
    # from p - (2, 1) at t-1: backward flow = (-2, -1) everywhere.
    h, w = 12, 16
    prev = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(2))
    cur = torch.zeros_like(prev)
    cur[..., 1:, 2:] = prev[..., :-1, :-2]
    flow = torch.zeros(1, h, w, 2)
    flow[..., 0], flow[..., 1] = -2.0, -1.0
    warped, inside = warp_backward(prev, flow)
    assert torch.allclose(warped[..., 1:, 2:], cur[..., 1:, 2:], atol=1e-6)
    assert not inside[0, 0].any() and not inside[0, :, :2].any() and inside[0, 1:, 2:].all()
    valid = torch.ones(1, h, w, dtype=torch.bool)
    assert temporal_warp_loss(cur, prev, flow, valid).item() == pytest.approx(0.0, abs=1e-10)
    # a half-pixel shift is the bilinear average of two neighbours
    flow_half = torch.zeros(1, h, w, 2)
    flow_half[..., 0] = 0.5
    wh, _ = warp_backward(prev, flow_half)
    assert torch.allclose(wh[..., :-1], 0.5 * (prev[..., :-1] + prev[..., 1:]), atol=1e-6)
    # the loss counts only valid pixels: one wrong pixel, marked invalid, costs nothing; marked valid, its error
    bad = cur.clone()
    bad[..., 5, 7] += 0.3
    valid2 = valid.clone()
    valid2[0, 5, 7] = False
    assert temporal_warp_loss(bad, prev, flow, valid2).item() == pytest.approx(0.0, abs=1e-10)
    n_valid = (h - 1) * (w - 2)
    assert temporal_warp_loss(bad, prev, flow, valid).item() == pytest.approx(3 * 0.09 / 3 / n_valid, rel=1e-4)


# -- features -------------------------------------------------------------------------------------------------
def test_substitute_penalises_checkerboard_far_more_than_l2():
    """Per unit of MSE, a 1-px checkerboard must cost much more than a smooth colour shift."""
    g = torch.Generator().manual_seed(3)
    h, w = 64, 96
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    # a "natural" image: smooth gradients, a few edges, mild texture
    img = torch.stack([0.3 + 0.3 * xx / w, 0.4 + 0.2 * yy / h, 0.5 - 0.2 * xx / w])[None]
    img[..., 20:40, 30:60] += 0.2
    img = (img + 0.02 * torch.rand(1, 3, h, w, generator=g)).clamp(0.05, 0.95)
    checker = (((yy + xx) % 2) * 2 - 1) * 0.03
    cb = img + checker
    shift = torch.stack([torch.cos(2 * math.pi * xx / w), torch.sin(2 * math.pi * yy / h), torch.ones_like(xx)])[None]
    shift = shift * ((cb - img).pow(2).mean() / shift.pow(2).mean()).sqrt()
    sh = img + shift
    assert l2_loss(cb, img).item() == pytest.approx(l2_loss(sh, img).item(), rel=1e-4)  # equal MSE
    feats = RandomFeatures(seed=0)
    ref = feats(img)
    p_cb = feature_distance(feats(cb), ref).item()
    p_sh = feature_distance(feats(sh), ref).item()
    assert p_cb > 20 * p_sh, (p_cb, p_sh)


def test_substitute_deterministic_and_frozen():
    a, b = RandomFeatures(seed=5), RandomFeatures(seed=5)
    x = torch.rand(1, 3, 24, 24)
    assert all(torch.equal(u, v) for u, v in zip(a(x), b(x)))
    assert not any(p.requires_grad for p in a.parameters())
    c = RandomFeatures(seed=6)
    assert not torch.equal(a(x)[-1], c(x)[-1])
    assert build_feature_extractor("substitute").__class__ is RandomFeatures


def test_vgg16_from_file(tmp_path):
    ref = VGG16Features()  # random weights, torchvision layout
    torch.nn.init.normal_(ref.features[0].weight)
    state = {f"features.{k}": v for k, v in ref.features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)  # ignored
    save_tensors(tmp_path / "vgg16.safetensors", state)
    m = VGG16Features.from_file(tmp_path / "vgg16.safetensors")
    x = torch.rand(1, 3, 32, 32)
    outs = m(x)
    assert [o.shape[1] for o in outs] == [64, 128, 256, 512] and outs[-1].shape[-1] == 4
    assert all(torch.equal(u, v) for u, v in zip(outs, ref(x)))
    # the features module alone (keys "0.weight", ...) loads too
    save_tensors(tmp_path / "trunk.safetensors", ref.features.state_dict())
    VGG16Features.from_file(tmp_path / "trunk.safetensors")
    # errors: missing key, wrong shape, unknown key, wrong suffix, missing file
    bad = dict(state)
    del bad["features.21.weight"]
    save_tensors(tmp_path / "missing.safetensors", bad)
    with pytest.raises(CorruptFileError, match="21.weight"):
        VGG16Features.from_file(tmp_path / "missing.safetensors")
    bad = dict(state)
    bad["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    save_tensors(tmp_path / "shape.safetensors", bad)
    with pytest.raises(CorruptFileError, match="shape"):
        VGG16Features.from_file(tmp_path / "shape.safetensors")
    save_tensors(tmp_path / "resnet.safetensors", {"conv1.weight": torch.zeros(64, 3, 7, 7)})
    with pytest.raises(CorruptFileError, match="unexpected"):
        VGG16Features.from_file(tmp_path / "resnet.safetensors")
    (tmp_path / "vgg.pth").write_bytes(b"x")
    with pytest.raises(CorruptFileError, match="safetensors"):
        VGG16Features.from_file(tmp_path / "vgg.pth")
    with pytest.raises(MissingFileError):
        build_feature_extractor(str(tmp_path / "nope.safetensors"))


# -- EMA ------------------------------------------------------------------------------------------------------
def test_ema_matches_hand_computation():
    m = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[1.0, 2.0]]))
    ema = EMA(m, decay=0.5, warmup=False)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[3.0, 2.0]]))
    ema.update(m)  # 0.5 * [1, 2] + 0.5 * [3, 2] = [2, 2]
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[0.0, 6.0]]))
    ema.update(m)  # 0.5 * [2, 2] + 0.5 * [0, 6] = [1, 4]
    assert torch.allclose(ema.shadow["weight"], torch.tensor([[1.0, 4.0]]))
    target = torch.nn.Linear(2, 1, bias=False)
    ema.copy_to(target)
    assert torch.allclose(target.weight, torch.tensor([[1.0, 4.0]]))
    # warmup: the n-th update uses min(decay, (1 + n) / (10 + n)): 0.1 first
    w = EMA(m, decay=0.99, warmup=True)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[10.0, 6.0]]))
    w.update(m)
    assert torch.allclose(w.shadow["weight"], 0.1 * torch.tensor([[0.0, 6.0]]) + 0.9 * torch.tensor([[10.0, 6.0]]))


# -- config ---------------------------------------------------------------------------------------------------
def test_config_yaml_round_trip_and_schedule(tmp_path):
    for path in (TINY_CFG, ROOT / "configs" / "train_default.yaml"):
        cfg = TrainConfig.load(path)
        cfg.save(tmp_path / "c.yaml")
        assert TrainConfig.load(tmp_path / "c.yaml") == cfg
    cfg = TrainConfig(denoise_pretrain_steps=2, image_steps=3, mixed_steps=4, temporal_every=2, warmup_steps=2, lr=1.0, min_lr_ratio=0.0)
    assert [cfg.phase(s) for s in range(9)] == ["denoise"] * 2 + ["image"] * 3 + ["temporal", "image", "temporal", "image"]
    assert cfg.lr_at(0) == pytest.approx(0.5) and cfg.lr_at(1) == pytest.approx(1.0)
    assert cfg.lr_at(8) < 0.05
    assert cfg.with_total_steps(18).total_steps == 18
    default = TrainConfig.load(ROOT / "configs" / "train_default.yaml")
    assert sum(p.numel() for p in Enhancer(default.model).parameters()) * 4 < 25e6  # shipped weights < 25 MB
    assert default.model == EnhancerConfig()  # the benchmarked model size


def test_bad_configs(tmp_path, tiny_data):
    with pytest.raises(ConfigError, match="unknown keys"):
        TrainConfig.from_dict({"lerning_rate": 1.0})
    with pytest.raises(ConfigError, match="patch_range"):
        TrainConfig(patch_range=(0.5, 0.2))
    with pytest.raises(ConfigError, match="mask_dropout"):
        TrainConfig(mask_dropout=1.5)
    with pytest.raises(ConfigError, match="autoencoder"):
        TrainConfig(model=EnhancerConfig(codec="autoencoder", codec_downscale=4))
    with pytest.raises(ConfigError, match="nope"):
        train(tiny_config(tiny_data, stream_weights={"nope": 1.0}), tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="identity_streams"):
        train(tiny_config(tiny_data, identity_prob=0.5, identity_streams=["nope"]), tmp_path / "a2", progress=False)
    with pytest.raises(MissingFileError):
        train(tiny_config(tmp_path / "no_such_data"), tmp_path / "b", progress=False)
    with pytest.raises(MissingFileError):
        train(tiny_config([tiny_data, tmp_path / "no_such_data"]), tmp_path / "b2", progress=False)
    with pytest.raises(ConfigError, match="non-empty list"):
        TrainConfig(data=[])
    with pytest.raises(ConfigError, match="data_streams names folders"):
        TrainConfig(data=["data/a"], data_streams={"data/b": ["isp"]})
    with pytest.raises(ConfigError, match="non-empty list of stream names"):
        TrainConfig(data=["data/a"], data_streams={"data/a": []})
    assert TrainConfig(data="data/a", data_streams={"data/a": "isp"}).data_streams == {"data/a": ["isp"]}
    (tmp_path / "feat.safetensors").write_bytes(b"garbage")
    with pytest.raises(CorruptFileError):
        train(tiny_config(tiny_data, features=str(tmp_path / "feat.safetensors")), tmp_path / "c", progress=False)


# -- end to end -----------------------------------------------------------------------------------------------
def _fixed_batch_l2(model: Enhancer, data: Path) -> float:
    """Mean L2 of the model's output on every item of the tiny preset (a fixed batch), mask and depth given."""
    from simharmony.data.shards import ShardDataset

    ds = ShardDataset(data)
    with torch.no_grad():
        errs = []
        for i in range(len(ds)):
            it = ds[i]
            out, _ = model(it["input"].permute(0, 3, 1, 2), mask=it["mask"][:, None], depth=it["depth"][:, None])
            errs.append(l2_loss(out, it["target"].permute(0, 3, 1, 2)).item())
    return sum(errs) / len(errs)


def test_train_on_several_dataset_folders(tmp_path, tiny_data):
    cfg = tiny_config([tiny_data, tiny_data], denoise_pretrain_steps=0, image_steps=2, mixed_steps=2, perceptual_weight=0.0,
                      ssim_weight=2.0, identity_prob=0.5, identity_streams=["relight"])
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.steps == 4 and result.final_dir is not None
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    assert steps and all(0 < r["loss"]["ssim"] < 1 and "perceptual" not in r["loss"] for r in steps)


def test_tiny_train_end_to_end(tmp_path, tiny_data):
    from simharmony.harmonizer import Harmonizer

    # the model starts as the identity, so lowering L2 takes a few dozen steps; perceptual off here (it is
    # exercised by the resume test and the loss tests)
    cfg = tiny_config(tiny_data, denoise_pretrain_steps=0, image_steps=30, mixed_steps=6, perceptual_weight=0.0,
                      lr=0.003, ema_decay=0.5, mask_dropout=0.0, depth_dropout=0.0, holdout=str(tiny_data), eval_every=18)
    torch.manual_seed(cfg.seed)
    before = _fixed_batch_l2(Enhancer(cfg.model).eval(), tiny_data)
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.steps == 36 and result.final_dir is not None
    after = _fixed_batch_l2(Enhancer.from_pretrained(result.final_dir), tiny_data)
    assert after < 0.92 * before, (before, after)
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if r["phase"] != "eval"]
    assert [r["step"] for r in train_recs] == list(range(1, 37))
    assert {r["phase"] for r in train_recs} == {"image", "temporal"}
    assert all({"lr", "grad_norm", "seconds", "loss"} <= set(r) for r in train_recs)
    assert any("temporal" in r["loss"] for r in train_recs if r["phase"] == "temporal")
    evals = [r for r in recs if r["phase"] == "eval"]
    assert [r["step"] for r in evals] == [18, 36] and all(math.isfinite(r["psnr_out"]) for r in evals)
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 1000
    h = Harmonizer.from_pretrained(result.final_dir)  # the EMA weights load in the streaming API
    frame = torch.rand(32, 48, 3)
    assert h.enhance(frame).shape == frame.shape and h.enhance(frame).shape == frame.shape


def test_resume_reproduces_uninterrupted_run(tmp_path, tiny_data):
    cfg = tiny_config(tiny_data, denoise_pretrain_steps=1, image_steps=2, mixed_steps=3, checkpoint_every=3, log_every=1)
    full = train(cfg, tmp_path / "full", progress=False)
    part = train(cfg, tmp_path / "resumed", progress=False, stop_after=3)
    assert part.steps == 3 and part.final_dir is None
    assert (tmp_path / "resumed" / "checkpoints" / "step_0000003" / "state.yaml").is_file()
    rest = train(cfg, tmp_path / "resumed", progress=False)
    assert rest.start_step == 3 and rest.steps == 6
    for a, b in ((full.model, rest.model), (full.ema_model, rest.ema_model)):
        sa, sb = a.state_dict(), b.state_dict()
        assert max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa) < 1e-6
    # the same loss sequence, logged once per step
    la = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(la, lb):
        assert ra["phase"] == rb["phase"]
        assert ra["loss"]["total"] == pytest.approx(rb["loss"]["total"], rel=1e-5, abs=1e-7)
    # and the weights moved (the test can fail)
    torch.manual_seed(cfg.seed)
    fresh = Enhancer(cfg.model).state_dict()
    assert max((fresh[k] - full.model.state_dict()[k]).abs().max().item() for k in fresh) > 1e-4


def test_identity_items_show_the_target_as_input():
    """identity_prob: the chosen items' inputs become their targets (whole sequences), the rest are untouched."""
    from _helpers import recording_enhancer, training_batch

    from simharmony.training.trainer import StepModule

    model, seen = recording_enhancer()
    b = 16
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(b, 2, 16, 16, 3, generator=g), torch.rand(b, 2, 16, 16, 3, generator=g)
    batch = training_batch(x, y)
    for p, lo, hi in ((0.0, 0, 0), (0.5, 1, b - 1), (1.0, b, b)):
        seen.clear()
        StepModule(model, None, TrainConfig(identity_prob=p, perceptual_weight=0.0))(batch, "temporal", torch.Generator().manual_seed(3))
        frames = torch.stack(seen, 1).permute(0, 1, 3, 4, 2)  # [B, T, H, W, 3] as the model saw them
        is_target = [torch.equal(frames[i], y[i]) for i in range(b)]
        assert all(is_target[i] or torch.equal(frames[i], x[i]) for i in range(b))
        assert lo <= sum(is_target) <= hi
    assert torch.equal(batch["input"], x)  # the caller's batch is not changed
    # identity_streams: the trainer flags the items of those streams; only flagged items are replaced
    ok = torch.arange(b) % 2 == 0
    seen.clear()
    StepModule(model, None, TrainConfig(identity_prob=1.0, perceptual_weight=0.0))({**batch, "identity_ok": ok}, "temporal",
                                                                                  torch.Generator().manual_seed(3))
    frames = torch.stack(seen, 1).permute(0, 1, 3, 4, 2)
    assert all(torch.equal(frames[i], y[i] if ok[i] else x[i]) for i in range(b))
    with pytest.raises(ConfigError, match="identity_prob"):
        TrainConfig(identity_prob=1.5)


def test_maskless_streams_never_show_the_model_their_mask():
    """Items of maskless_streams show the model only their asset mask (mask_given=False without one), and the
    step passes the masks and flags on."""
    from _helpers import recording_enhancer, training_batch

    from simharmony.training.trainer import StepModule, stream_flags

    x = torch.rand(5, 1, 16, 16, 3)
    batch = training_batch(x, x.clone())
    batch["stream"] = ["isp", "shadow", "novel_view", "reinsert", "shadow"]
    batch["mask"] = torch.rand(5, 1, 16, 16)
    batch["asset_mask"] = torch.zeros(5, 1, 16, 16)
    batch["asset_mask"][4] = 0.5  # the last shadow item carries its object's own mask
    batch["has_asset_mask"] = torch.tensor([False, False, False, False, True])
    flags = stream_flags(batch, TrainConfig())  # default: shadow and novel_view
    assert flags["mask_given"].tolist() == [True, False, False, True, True] and "identity_ok" not in flags
    shown = flags["mask"]
    assert torch.equal(shown[[0, 3]], batch["mask"][[0, 3]])  # other streams: their mask as given
    assert torch.equal(shown[4], batch["asset_mask"][4])  # the asset's mask, never the target-derived one
    assert not shown[1:3].any()  # nothing of the hidden masks reaches the model
    assert stream_flags({**batch, "stream": ["isp", "rpb", "relight", "isp", "rpb"]}, TrainConfig()) == {}
    assert stream_flags(batch, TrainConfig(maskless_streams=[])) == {}
    assert stream_flags(batch, TrainConfig(identity_prob=0.5, identity_streams=["isp"]))["identity_ok"].tolist() == [
        True, False, False, False, False]
    model, _ = recording_enhancer()
    calls = []
    real_forward = model.forward
    model.forward = lambda x, past=None, **kw: calls.append(kw) or real_forward(x, past, **kw)
    batch = {**batch, **flags}
    del batch["stream"]
    StepModule(model, None, TrainConfig(mask_dropout=0.0, perceptual_weight=0.0))(batch, "image", torch.Generator().manual_seed(0))
    assert torch.equal(calls[-1]["mask"], shown[:, 0, None]) and calls[-1]["mask_given"].tolist() == [True, False, False, True, True]
    StepModule(model, None, TrainConfig(mask_dropout=1.0, perceptual_weight=0.0))(batch, "image", torch.Generator().manual_seed(0))
    assert calls[-1]["mask"] is None and calls[-1]["mask_given"] is None
    with pytest.raises(ConfigError, match="maskless_streams"):
        TrainConfig(maskless_streams=["shadows"])


def test_denoise_timestep_hook_is_backward_compatible():
    cfg = EnhancerConfig(channels=(8, 16), heads=2, temporal_levels=(1,), context_frames=2, emb_dim=16, cond_dim=8, codec_downscale=2)
    torch.manual_seed(0)
    unet = Enhancer(cfg).backbone
    z = torch.randn(2, cfg.latent_channels, 8, 8)
    cond = torch.zeros(2, cfg.cond_channels, 8, 8)
    torch.nn.init.normal_(unet.conv_out.weight, std=0.1)  # make the output depend on the embedding
    null = unet(z, cond)
    assert torch.equal(null, unet(z, cond, timestep=None))
    same = unet(z, cond, timestep=torch.full((2,), float(cfg.null_timestep)))
    assert torch.allclose(same, null, atol=1e-5)  # the null time buffer is the embedding of null_timestep
    assert not torch.allclose(unet(z, cond, timestep=torch.tensor([10.0, 500.0])), null, atol=1e-4)


def test_apply_override_nested_yaml_values_and_unknown_keys():
    from simharmony.training.trainer import apply_override

    d = TrainConfig().to_dict()
    apply_override(d, "model.context_frames=0")
    apply_override(d, "perceptual_weight=0.1")
    apply_override(d, "l2_mode=log")
    cfg = TrainConfig.from_dict(d)
    assert cfg.model.context_frames == 0 and cfg.perceptual_weight == 0.1 and cfg.l2_mode == "log"
    with pytest.raises(ConfigError, match="no key 'context'"):
        apply_override(d, "model.context=0")
    with pytest.raises(ConfigError, match="key=value"):
        apply_override(d, "perceptual_weight")


def test_trainable_prefixes_freeze_the_rest(tmp_path, tiny_data):
    """An anchor added to a saved model and trained alone: every other weight is bit-identical afterwards,
    the anchor's moved; a prefix that names nothing is a ConfigError."""
    torch.manual_seed(0)
    base = Enhancer(tiny_config(tiny_data).model)
    with torch.no_grad():
        base.backbone.conv_out.weight.normal_(0, 0.05)
    base.save_pretrained(tmp_path / "base")
    cfg = tiny_config(tiny_data, init_model=str(tmp_path / "base"), init_model_overrides={"colour_anchor": True},
                      trainable=["backbone.colour_anchor"], denoise_pretrain_steps=0, image_steps=0, mixed_steps=3,
                      temporal_every=1, flicker_prob=1.0, lr=0.01, perceptual_weight=0.0)
    result = train(cfg, tmp_path / "run", progress=False)
    before, after = base.state_dict(), result.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    moved = [k for k in after if k.startswith("backbone.colour_anchor") and k not in before]
    assert moved and any(after[k].abs().max() > 0 for k in moved if k.endswith("mlp.2.weight"))
    with pytest.raises(ConfigError, match="trainable"):
        train(tiny_config(tiny_data, trainable=["backbone.colour_ancor"]), tmp_path / "bad", progress=False)
    with pytest.raises(ConfigError, match="trainable"):
        TrainConfig(trainable=[""])
