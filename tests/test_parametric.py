"""Parametric curves + shading-map baseline (simharmony.models.parametric, simharmony.parametric_training)."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from simharmony.errors import (
    ConfigError,
    CorruptFileError,
    InvalidInputError,
    MissingFileError,
    NonFiniteError,
    ShapeMismatchError,
)
from simharmony.models.parametric import (
    ParametricConfig,
    ParametricHarmonizer,
    apply_curves,
    apply_parametric,
    curves_from_logits,
    curves_image,
    identity_curves,
    parametric_baseline,
    save_curves_png,
    upsample_shading,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = {"lowres": (16, 24), "widths": (8, 16), "hidden": 16, "shading_size": (4, 6)}


def _small(**kw) -> ParametricHarmonizer:
    torch.manual_seed(0)
    return ParametricHarmonizer(ParametricConfig(**{**SMALL, **kw}))


def _perturbed(**kw) -> ParametricHarmonizer:
    """A model whose output heads are random (a fresh one is the identity)."""
    m = _small(**kw)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in (m.curve_head[-1], m.shading_head):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.5)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * 0.5)
    return m.eval()


def _smooth_frame(h: int, w: int, b: int = 1) -> torch.Tensor:
    """A low-frequency image defined analytically, so two sizes show the same scene."""
    y = (torch.arange(h) + 0.5) / h
    x = (torch.arange(w) + 0.5) / w
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    chans = [0.5 + 0.4 * torch.sin(2.0 * xx + 1.0 * yy), 0.5 + 0.3 * torch.cos(3.0 * yy), 0.2 + 0.6 * xx * yy]
    return torch.stack(chans)[None].expand(b, -1, -1, -1).clone()


def _box_mask(h: int, w: int, b: int = 1) -> torch.Tensor:
    m = torch.zeros(b, 1, h, w)
    m[:, :, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1.0
    return m


# ----------------------------------------------------------------------------------------------------
# identity and curve validity


def test_identity_at_init():
    m = _small().eval()
    x = torch.rand(2, 3, 20, 30)
    mask = _box_mask(20, 30, 2)
    for kw in ({"mask": mask}, {}):
        out, params = m(x, **kw)
        assert torch.allclose(out, x, atol=1e-6)
        assert torch.allclose(params["curves"], identity_curves(2, 32), atol=1e-6)
        assert torch.allclose(params["shading"], torch.ones_like(params["shading"]))
        assert params["curves"].shape == (2, 3, 32) and params["shading"].shape == (2, 1, 4, 6)


def test_curves_from_logits_valid():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 3, 32, generator=g) * 4.0
    c = curves_from_logits(logits)
    assert (c[..., 1:] - c[..., :-1] >= 0).all(), "curves must be non-decreasing"
    assert c.min() >= 0 and c.max() <= 1
    assert torch.allclose(curves_from_logits(torch.zeros(1, 3, 32)), torch.linspace(0, 1, 32).expand(1, 3, 32), atol=1e-6)
    # the start logit moves the black point; large increments saturate at 1
    c = curves_from_logits(torch.cat([torch.full((1, 3, 1), 0.2), torch.full((1, 3, 31), 3.0)], dim=-1))
    assert torch.allclose(c[..., 0], torch.tensor(0.2)) and torch.allclose(c[..., -1], torch.tensor(1.0))


def test_predicted_parameters_valid():
    m = _perturbed(shading_channels=3, max_log_shading=0.5)
    curves, shading = m.predict_parameters(torch.rand(3, 3, 24, 40), _box_mask(24, 40, 3))
    assert not torch.allclose(curves, identity_curves(3, 32), atol=1e-3)  # the perturbation does something
    assert (curves[..., 1:] >= curves[..., :-1]).all() and curves.min() >= 0 and curves.max() <= 1
    assert shading.shape == (3, 3, 4, 6)
    assert shading.min() >= math.exp(-0.5) - 1e-6 and shading.max() <= math.exp(0.5) + 1e-6


# ----------------------------------------------------------------------------------------------------
# application


def test_apply_curves_hand_computed():
    # 4 knots at x = 0, 1/3, 2/3, 1 with y = 0, 0.5, 0.6, 1
    curves = torch.tensor([[0.0, 0.5, 0.6, 1.0], [0.0, 0.5, 0.6, 1.0], [1.0, 0.5, 0.0, 0.0]])[None]
    x = torch.tensor([0.0, 1 / 6, 0.5, 5 / 6, 1.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    out = apply_curves(x, curves)
    assert torch.allclose(out[0, 0, 0], torch.tensor([0.0, 0.25, 0.55, 0.8, 1.0]), atol=1e-6)
    assert torch.allclose(out[0, 2, 0], torch.tensor([1.0, 0.75, 0.25, 0.0, 0.0]), atol=1e-6)  # any curve, not only monotone


def test_apply_parameters_matches_numpy_interp():
    m = _small()
    k = 32
    knots = np.linspace(0, 1, k)
    ys = np.stack([knots**2, np.sqrt(knots), 0.1 + 0.8 * knots])
    x = torch.rand(2, 3, 7, 9, generator=torch.Generator().manual_seed(3))
    out = m.apply_parameters(x, torch.tensor(ys, dtype=torch.float32), None)
    ref = np.stack([np.interp(x[:, c].numpy(), knots, ys[c]) for c in range(3)], axis=1)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-6)


def test_shading_upsampling():
    # a [1, 2] grid [a, b] upsampled to width 4 with half-pixel centres: a, .75a+.25b, .25a+.75b, b
    s = torch.tensor([[[[0.5, 1.5]]]])
    up = upsample_shading(s, (3, 4))
    assert torch.allclose(up[0, 0, 1], torch.tensor([0.5, 0.75, 1.25, 1.5]))
    assert torch.allclose(up[0, 0, 0], up[0, 0, 2])
    # multiplicative, after the curves, grey map on all 3 channels
    x = torch.full((1, 3, 3, 4), 0.4)
    out = apply_parametric(x, identity_curves(1, 32), s)
    assert torch.allclose(out[0, :, 1], (0.4 * torch.tensor([0.5, 0.75, 1.25, 1.5])).expand(3, 4), atol=1e-6)


def test_resolution_independence():
    m = _perturbed()
    big, small = _smooth_frame(96, 160), _smooth_frame(48, 80)
    curves, shading = m.predict_parameters(big)
    out_big = m.apply_parameters(big, curves, shading)
    out_small = m.apply_parameters(small, curves, shading)
    down = F.interpolate(out_big, size=(48, 80), mode="area")
    assert (out_big - big).abs().mean() > 0.02  # the parameters change the image
    assert (down - out_small).abs().max() < 0.01
    # parameters predicted from either size agree too (the network only sees the fixed-size copy)
    c2, s2 = m.predict_parameters(small)
    assert (c2 - curves).abs().max() < 0.02 and (s2 - shading).abs().max() < 0.02


def test_mask_handling():
    m = _perturbed()
    x = torch.rand(1, 3, 20, 30, generator=torch.Generator().manual_seed(4))
    mask = _box_mask(20, 30)
    mask[..., 5, 10] = 0.5  # one soft pixel
    curves, shading = m.predict_parameters(x, mask)
    out = m.apply_parameters(x, curves, shading, mask)
    full = m.apply_parameters(x, curves, shading, None)  # global application
    assert torch.equal(out[mask.expand_as(out) == 0], x[mask.expand_as(x) == 0])  # bit-exact outside
    inside = mask.expand_as(out) == 1
    assert torch.allclose(out[inside], full[inside])
    assert torch.allclose(out[..., 5, 10], 0.5 * x[..., 5, 10] + 0.5 * full[..., 5, 10], atol=1e-6)
    assert (full - x).abs().amax(dim=1)[mask[:, 0] == 0].max() > 1e-3  # without the mask everything changes
    # forward: zero mask -> identity; global mode ignores the mask for application
    out0, _ = m(x, mask=torch.zeros_like(mask))
    assert torch.equal(out0, x)
    g = _perturbed(mask_mode="global")
    out_g, _ = g(x, mask=mask)
    assert (out_g - x).abs().amax(dim=1)[mask[:, 0] == 0].max() > 1e-3


def test_harmonize_baseline_interface(tmp_path):
    m = _perturbed()
    m.save_pretrained(tmp_path / "p")
    fn = parametric_baseline(tmp_path / "p")
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 1, (20, 30, 3)).astype(np.float32)
    mask = np.zeros((20, 30), np.float32)
    mask[5:15, 8:20] = 1.0
    out = fn(img, mask)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == img.shape
    assert np.array_equal(out[mask == 0], img[mask == 0])
    assert np.abs(out[mask == 1] - img[mask == 1]).max() > 1e-3
    ref, _ = m(torch.from_numpy(img).permute(2, 0, 1)[None], mask=torch.from_numpy(mask)[None, None])
    np.testing.assert_allclose(out, ref[0].detach().permute(1, 2, 0).numpy(), atol=1e-6)
    out_t = fn(torch.from_numpy(img), torch.from_numpy(mask > 0.5))
    assert isinstance(out_t, torch.Tensor) and torch.allclose(out_t, torch.from_numpy(out))
    assert np.array_equal(fn(img, np.zeros_like(mask)), img)
    with pytest.raises(ShapeMismatchError):
        fn(img, mask[:10])


# ----------------------------------------------------------------------------------------------------
# learning


def test_tiny_fit_learns_global_curve():
    """target = a known global curve of the frame; a few Adam steps must beat the identity clearly."""
    torch.manual_seed(0)
    m = ParametricHarmonizer(ParametricConfig(**SMALL))
    knots = torch.linspace(0, 1, 32)
    true_curves = torch.stack([knots**0.6, knots, knots**1.5])[None]
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def batch():
        base = torch.rand(8, 3, 1, 1, generator=g) * 0.6 + 0.2
        x = (base + 0.25 * (torch.rand(8, 3, 24, 32, generator=g) - 0.5)).clamp(0, 1)
        return x, apply_curves(x, true_curves.expand(8, -1, -1))

    for _ in range(120):
        x, y = batch()
        out, _ = m(x)
        loss = F.mse_loss(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = batch()
    with torch.no_grad():
        out, params = m(x)
    ident = F.mse_loss(x, y).item()
    assert F.mse_loss(out, y).item() < 0.1 * ident
    assert (params["curves"][:, 0, 16] - true_curves[0, 0, 16]).abs().max() < 0.05  # the red curve is read out


# ----------------------------------------------------------------------------------------------------
# files and bad input


def test_save_load_round_trip(tmp_path):
    m = _perturbed(shading_channels=3)
    folder = m.save_pretrained(tmp_path / "model")
    loaded = ParametricHarmonizer.from_pretrained(folder)
    assert loaded.config == m.config and not loaded.training
    x, mask = torch.rand(1, 3, 16, 24), _box_mask(16, 24)
    assert torch.equal(loaded(x, mask=mask)[0], m(x, mask=mask)[0])


def test_bad_files(tmp_path):
    m = _small()
    folder = m.save_pretrained(tmp_path / "model")
    with pytest.raises(MissingFileError):
        ParametricHarmonizer.from_pretrained(tmp_path / "nope")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError):
        ParametricHarmonizer.from_pretrained(folder)
    weights.unlink()
    with pytest.raises(MissingFileError):
        ParametricHarmonizer.from_pretrained(folder)
    # weights of another architecture
    _small(widths=(8, 12)).save_pretrained(tmp_path / "other")
    (tmp_path / "other" / "config.yaml").write_text((folder / "config.yaml").read_text())
    with pytest.raises(CorruptFileError, match="does not match"):
        ParametricHarmonizer.from_pretrained(tmp_path / "other")
    # a config of another format (e.g. an enhancer folder), or garbage
    (folder / "config.yaml").write_text("format: simharmony-enhancer\nversion: 1\nconfig: {}\n")
    with pytest.raises(ConfigError, match="not a parametric"):
        ParametricHarmonizer.from_pretrained(folder)
    (folder / "config.yaml").write_text("format: simharmony-parametric\nversion: 1\nconfig: {num_points: 1}\n")
    with pytest.raises(ConfigError):
        ParametricHarmonizer.from_pretrained(folder)
    (folder / "config.yaml").write_text("format: [unclosed\n")
    with pytest.raises(CorruptFileError):
        ParametricHarmonizer.from_pretrained(folder)


def test_bad_inputs():
    m = _small()
    x = torch.rand(1, 3, 8, 12)
    with pytest.raises(ShapeMismatchError):
        m(torch.rand(3, 8, 12))
    with pytest.raises(InvalidInputError, match="floating"):
        m((x * 255).to(torch.uint8))
    with pytest.raises(NonFiniteError):
        m(torch.full_like(x, float("nan")))
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        m(x * 255)
    with pytest.raises(ShapeMismatchError):
        m(x, mask=torch.ones(1, 1, 8, 11))
    with pytest.raises(InvalidInputError):
        m(x, mask=torch.full((1, 1, 8, 12), 2.0))
    with pytest.raises(InvalidInputError, match="use_mask=False"):
        _small(use_mask=False)(x, mask=torch.ones(1, 1, 8, 12))
    with pytest.raises(ShapeMismatchError):
        m.apply_parameters(x, torch.rand(2, 3, 32), None)
    with pytest.raises(NonFiniteError):
        m.apply_parameters(x, torch.full((1, 3, 32), float("nan")), None)
    with pytest.raises(InvalidInputError, match=">= 0"):
        m.apply_parameters(x, identity_curves(), -torch.ones(1, 1, 2, 2))
    for bad in ({"num_points": 1}, {"shading_channels": 2}, {"lowres": (4, 4)}, {"mask_mode": "soft"}, {"max_log_shading": 0.0}):
        with pytest.raises(ConfigError):
            ParametricConfig(**bad)
    with pytest.raises(ConfigError):
        ParametricConfig.from_dict({"lowress": [8, 8]})


def test_curves_png(tmp_path):
    img = curves_image(identity_curves(1, 32), size=128)
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8
    # the three identity curves overlap on the diagonal: its centre is coloured, a corner off it stays white
    assert not (img[62:66, 62:66] == 255).all() and (img[20, 100] >= 224).all()
    path = save_curves_png(tmp_path / "curves.png", torch.rand(3, 32))
    assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ShapeMismatchError):
        curves_image(np.zeros((2, 32)))


# ----------------------------------------------------------------------------------------------------
# training loop on a synthetic shard dataset


def _synthetic_dataset(root, n=8, h=24, w=32):
    """Items whose masked box is darkened by a fixed gain (input) with the clean frame as target."""
    from simharmony.data.item import PairItem
    from simharmony.data.shards import finalize_dataset, write_shard
    from simharmony.utils.io import save_yaml

    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        tgt = np.clip(rng.uniform(0.3, 0.8, (1, 1, 1, 3)) + rng.normal(0, 0.05, (1, h, w, 3)), 0, 1).astype(np.float32)
        mask = np.zeros((1, h, w), np.float32)
        mask[:, 6:18, 8:24] = 1.0
        inp = tgt * (1 - 0.4 * mask[..., None])
        items.append((f"isp-{i:07d}", PairItem(
            input=inp, target=tgt, mask=mask, depth=np.ones((1, h, w), np.float32), flow=np.zeros((1, h, w, 2), np.float32),
            flow_valid=np.zeros((1, h, w), bool), metadata={"stream": "isp", "params": {}, "seed": i, "scene_id": "s"})))
    save_yaml(root / "generation.yaml", {"streams": {"isp": n}, "shard_size": n, "seed": 0})
    write_shard(root / "shards", "isp-00000", items)
    finalize_dataset(root)
    return root


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return _synthetic_dataset(tmp_path_factory.mktemp("synth"))


def _cfg(**kw):
    from simharmony.parametric_training import ParametricTrainConfig

    return ParametricTrainConfig(**{"steps": 6, "batch_size": 4, "lr": 3e-3, "warmup": 0, "log_every": 2,
                                    "checkpoint_every": 3, "model": ParametricConfig(**SMALL), **kw})


def test_train_checkpoint_resume_is_exact(synth, tmp_path):
    from simharmony.parametric_training import train_parametric
    from simharmony.utils.io import load_tensors

    full = train_parametric(synth, tmp_path / "a", progress=False, config=_cfg())
    assert full["finished"] and full["step"] == 6
    # the same run stopped early (max_seconds=0: after one step, with a checkpoint), resumed twice
    for expected in (1, 2):
        part = train_parametric(synth, tmp_path / "b", progress=False, config=_cfg(), max_seconds=0.0)
        assert part["step"] == expected and not part["finished"]
    resumed = train_parametric(synth, tmp_path / "b", progress=False, config=_cfg())
    assert resumed["step"] == 6
    a, _ = load_tensors(tmp_path / "a" / "model.safetensors")
    b, _ = load_tensors(tmp_path / "b" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    lines = [json.loads(s) for s in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4, 6]
    ParametricHarmonizer.from_pretrained(tmp_path / "a")
    # a different training config in the same folder is refused
    with pytest.raises(ConfigError):
        train_parametric(synth, tmp_path / "b", progress=False, config=_cfg(lr=1e-2))


def test_train_improves_and_evaluates(synth, tmp_path):
    from simharmony.parametric_training import evaluate_parametric, train_parametric

    res = train_parametric(synth, tmp_path / "run", progress=False, config=_cfg(steps=40, checkpoint_every=100), holdout_dir=synth)
    h = res["holdout"]["all"]
    assert h["fpsnr_model"] > h["fpsnr_input"] + 2.0  # learned to undo the darkening
    assert h["psnr_model"] > h["psnr_input"]
    assert (tmp_path / "run" / "holdout.yaml").is_file()
    again = evaluate_parametric(tmp_path / "run", synth, max_items_per_stream=2, progress=False)
    assert again["isp"]["frames"] == 2 and again["isp"]["psnr_model"] != again["isp"]["psnr_model_no_mask"]
    # a stream whose masks are cut out with the target's help: "with the mask" is the model without it
    hidden = evaluate_parametric(tmp_path / "run", synth, max_items_per_stream=2, progress=False, maskless_streams=("isp",))
    assert hidden["isp"]["psnr_model"] == hidden["isp"]["psnr_model_no_mask"]


def test_training_hides_masks_of_maskless_streams(synth, tmp_path, monkeypatch):
    from simharmony.parametric_training import train_parametric

    seen = []
    real_forward = ParametricHarmonizer.forward

    def record(self, x, mask=None, present=None, **kw):
        seen.append(present)
        return real_forward(self, x, mask=mask, present=present, **kw)

    monkeypatch.setattr(ParametricHarmonizer, "forward", record)
    for maskless, shown in (((), True), (("isp",), False)):
        seen.clear()
        train_parametric(synth, tmp_path / str(shown), progress=False, config=_cfg(steps=3, mask_drop_prob=0.0, maskless_streams=maskless))
        assert len(seen) == 3 and all(bool((p == 1).all()) == shown and bool((p == 0).all()) != shown for p in seen)
    with pytest.raises(ConfigError, match="maskless_streams"):
        _cfg(maskless_streams=("shadows",))


def test_cli(synth, tmp_path):
    from simharmony.parametric_training import add_cli

    p = argparse.ArgumentParser()
    add_cli(p.add_subparsers(dest="command"))
    args = p.parse_args(["train-parametric", "--data", str(synth), "--out", str(tmp_path / "cli"), "--steps", "2",
                         "--batch-size", "2", "--quiet"])
    assert args.func(args) == 0
    assert (tmp_path / "cli" / "model.safetensors").is_file() and (tmp_path / "cli" / "train.yaml").is_file()
    bad = p.parse_args(["train-parametric", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "x"), "--quiet"])
    with pytest.raises(MissingFileError):
        bad.func(bad)
