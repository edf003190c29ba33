"""Enhancer model: codecs, identity at init, causal temporal attention, optional inputs, padding, file format."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from simharmony.errors import ConfigError, CorruptFileError, InvalidInputError, MissingFileError, ShapeMismatchError
from simharmony.models import (
    MACA,
    CausalTemporalAttention,
    CompactAutoencoder,
    Enhancer,
    EnhancerConfig,
    PixelUnshuffleCodec,
)
from simharmony.models.codec import high_pass

SMALL = {"channels": (16, 32, 32), "heads": 4, "emb_dim": 32, "cond_dim": 8}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_model(**kw) -> Enhancer:
    torch.manual_seed(0)
    return Enhancer(EnhancerConfig(**{**SMALL, **kw})).eval()


def perturb(model: Enhancer, temporal: bool = True, out: bool = True, std: float = 0.2) -> Enhancer:
    """Give the zero-initialised projections random values so the model is no longer the identity."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if temporal:
            for layer in model.temporal_layers():
                layer.proj_out.weight.copy_(torch.randn(layer.proj_out.weight.shape, generator=g) * std)
        if out:
            w = model.backbone.conv_out.weight
            w.copy_(torch.randn(w.shape, generator=g) * std * 0.2)
    return model


def frames(n: int, h: int = 32, w: int = 48, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, h, w, generator=g) for _ in range(n)]


# -- codecs -----------------------------------------------------------------------------------------------
def test_pixel_unshuffle_codec_is_lossless():
    codec = PixelUnshuffleCodec(4)
    x = torch.rand(2, 3, 16, 24)
    z = codec.encode(x)
    assert z.shape == (2, 48, 4, 6) and codec.latent_channels == 48 and codec.downscale == 4
    assert z.min() >= -1 and z.max() <= 1
    # independent reference: latent channel c*16 + i*4 + j holds pixel (4y+i, 4x+j) of colour c
    assert torch.equal(z[:, 1 * 16 + 2 * 4 + 3, 1, 2], x[:, 1, 4 + 2, 8 + 3] * 2 - 1)
    assert torch.equal(codec.decode(z), x)


@pytest.mark.parametrize("widths,f", [((8, 16), 4), ((8, 8, 16), 8)])
def test_compact_autoencoder_shapes(widths, f):
    ae = CompactAutoencoder(widths, latent_channels=6)
    x = torch.rand(2, 3, 32, 48)
    z, feats = ae.encode(x, return_features=True)
    assert ae.downscale == f and z.shape == (2, 6, 32 // f, 48 // f)
    assert [t.shape[-1] for t in feats] == [48 // 2 ** (i + 1) for i in range(len(widths))]
    assert ae.decode(z).shape == x.shape


def test_detail_skips_start_as_plain_decoder():
    torch.manual_seed(0)
    ae = CompactAutoencoder((8, 16), latent_channels=4, detail_skips=True)
    x = torch.rand(1, 3, 32, 32)
    z, feats = ae.encode(x, return_features=True)
    assert torch.equal(ae.decode(z, skips=feats), ae.decode(z))
    with torch.no_grad():
        for conv in ae.skip_convs:
            conv.weight.normal_(std=0.5)
    assert not torch.allclose(ae.decode(z, skips=feats), ae.decode(z))


def test_high_pass_removes_constants():
    x = torch.full((1, 2, 8, 8), 3.0)
    assert torch.allclose(high_pass(x), torch.zeros_like(x))


# -- identity at init ---------------------------------------------------------------------------------------
def test_fresh_model_is_identity_in_latent_and_image_space():
    model = small_model()
    x = frames(1, 32, 48)[0]
    with torch.no_grad():
        out, z = model(x)
    assert torch.equal(z, model.encode(x))
    assert torch.allclose(out, x, atol=1e-6)


def test_default_config_is_small_and_identity():
    torch.manual_seed(0)
    model = Enhancer().eval()
    assert model.num_parameters() < 3_000_000
    assert model.num_parameters(trainable_only=True) == sum(p.numel() for p in model.backbone.parameters())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out, _ = model(x)
    assert torch.allclose(out, x, atol=1e-6)


def test_null_embeddings_are_buffers_and_output_deterministic():
    model = perturb(small_model())
    names = dict(model.named_buffers())
    assert "backbone.null_time" in names and "backbone.null_cond" in names
    assert "backbone.null_time" not in dict(model.named_parameters())
    x, p = frames(2)
    with torch.no_grad():
        _, zp = model(p)
        a, _ = model(x, [zp])
        b, _ = model(x, [zp])
    assert torch.equal(a, b)


# -- temporal attention ---------------------------------------------------------------------------------------
def test_temporal_layers_are_identity_at_init_then_use_the_past():
    model = perturb(small_model(), temporal=False)  # non-trivial model, temporal projections still zero
    xs = frames(3)
    with torch.no_grad():
        past = [model(f)[1] for f in xs[1:]]
        no_past, _ = model(xs[0])
        with_past, _ = model(xs[0], past)
        assert torch.equal(no_past, with_past)
        perturb(model, out=False)
        with_past2, _ = model(xs[0], past)
        no_past2, _ = model(xs[0])
    assert (with_past2 - no_past2).abs().max() > 1e-4


def naive_temporal(layer: CausalTemporalAttention, x: torch.Tensor, past: torch.Tensor | None) -> torch.Tensor:
    """Per-location loop reference of CausalTemporalAttention."""
    b, c, h, w = x.shape
    hd, d = layer.heads, c // layer.heads
    xn = layer.norm(x)
    q = layer.q(xn)
    kv = [layer.kv(xn)]
    if past is not None:
        for t in range(past.shape[1]):
            p = F.adaptive_avg_pool2d(past[:, t], (h, w))
            kv.append(layer.kv_past(p) + layer.age[t][:, None, None])
    out = torch.zeros_like(x)
    for bi in range(b):
        for i in range(h):
            for j in range(w):
                for head in range(hd):
                    sl = slice(head * d, (head + 1) * d)
                    qv = q[bi, sl, i, j]
                    ks = torch.stack([k[bi, :c][sl, i, j] for k in kv])
                    vs = torch.stack([k[bi, c:][sl, i, j] for k in kv])
                    a = torch.softmax(ks @ qv / math.sqrt(d), dim=0)
                    out[bi, sl, i, j] = a @ vs
    o = layer.proj_out(out)
    return x + o


def test_temporal_attention_matches_per_location_reference():
    torch.manual_seed(0)
    layer = CausalTemporalAttention(8, 5, heads=2, max_past=4)
    nn.init.normal_(layer.proj_out.weight, std=0.5)
    x = torch.randn(2, 8, 3, 4)
    past = torch.randn(2, 3, 5, 6, 8)  # pooled 2x inside
    with torch.no_grad():
        assert torch.allclose(layer(x, past), naive_temporal(layer, x, past), atol=1e-5)
        assert torch.allclose(layer(x, None), naive_temporal(layer, x, None), atol=1e-5)


def stream(model: Enhancer, xs: list[torch.Tensor], k: int = 4) -> list[torch.Tensor]:
    outs, cache = [], []
    with torch.no_grad():
        for x in xs:
            out, z = model(x, cache[:k])
            cache.insert(0, z)
            outs.append(out)
    return outs


def test_causal_future_frames_never_change_the_past_outputs():
    model = perturb(small_model())
    xs = frames(7)
    ref = stream(model, xs)
    changed = xs[:4] + frames(3, seed=5)
    alt = stream(model, changed)
    for t in range(4):
        assert torch.equal(ref[t], alt[t])
    assert not torch.allclose(ref[5], alt[5])
    # changing an earlier frame changes later outputs through the cached context
    alt2 = stream(model, frames(1, seed=9) + xs[1:])
    assert not torch.allclose(ref[2], alt2[2])


@pytest.mark.parametrize("n_past", [0, 1, 2, 3, 4])
def test_fewer_than_k_past_frames(n_past):
    model = perturb(small_model())
    xs = frames(5)
    with torch.no_grad():
        past = [model(f)[1] for f in xs[1 : 1 + n_past]]
        out, _ = model(xs[0], past)
    assert out.shape == xs[0].shape and torch.isfinite(out).all()


def test_more_than_k_past_keeps_newest_k():
    model = perturb(small_model())
    xs = frames(7)
    with torch.no_grad():
        past = [model(f)[1] for f in xs[1:]]
        a, _ = model(xs[0], past)
        b, _ = model(xs[0], past[:4])
        c, _ = model(xs[0], torch.stack(past[:4], dim=1))
    assert torch.equal(a, b) and torch.allclose(b, c, atol=1e-6)


def test_past_latent_shape_mismatch_raises():
    model = small_model()
    x = frames(1)[0]
    with pytest.raises(ShapeMismatchError):
        model(x, [torch.zeros(1, 48, 4, 4)])


# -- optional inputs -----------------------------------------------------------------------------------------
def test_mask_and_depth_are_optional_and_used():
    model = perturb(small_model())
    x = frames(1)[0]
    mask = torch.zeros(1, 1, 32, 48)
    mask[..., 8:20, 10:30] = 1
    depth = torch.full((1, 1, 32, 48), float("inf"))
    depth[..., 16:, :] = 5.0
    with torch.no_grad():
        plain, _ = model(x)
        with_mask, _ = model(x, mask=mask)
        with_depth, _ = model(x, depth=depth)
        both, _ = model(x, mask=mask[:, 0], depth=depth)
    for o in (with_mask, with_depth, both):
        assert torch.isfinite(o).all() and not torch.allclose(o, plain)
    with pytest.raises(ShapeMismatchError):
        model(x, mask=torch.zeros(1, 1, 16, 16))
    with pytest.raises(InvalidInputError):
        model(x, depth=-depth.clamp(max=3))


def test_mask_given_mixes_items_with_and_without_a_mask():
    """mask_given=False items come out exactly as with mask=None, the others as with their mask."""
    model = perturb(small_model())
    x = frames(1)[0].repeat(3, 1, 1, 1)
    x[1] = x[1].flip(-1)
    mask = torch.zeros(3, 1, 32, 48)
    mask[..., 8:20, 10:30] = 1
    given = torch.tensor([True, False, True])
    with torch.no_grad():
        mixed, _ = model(x, mask=mask, mask_given=given)
        with_mask, _ = model(x, mask=mask)
        without, _ = model(x)
    torch.testing.assert_close(mixed[given], with_mask[given])
    torch.testing.assert_close(mixed[1], without[1])
    assert not torch.allclose(with_mask[1], without[1])  # the mask matters, so the test can fail
    with pytest.raises(InvalidInputError, match="needs a mask"):
        model(x, mask_given=given)
    with pytest.raises(ShapeMismatchError, match="mask_given"):
        model(x, mask=mask, mask_given=torch.ones(2, dtype=torch.bool))
    with pytest.raises(ShapeMismatchError, match="mask_given"):
        model(x, mask=mask, mask_given=torch.ones(3))


def test_model_without_condition_channels_rejects_them():
    model = small_model(use_mask=False, use_depth=False)
    x = frames(1)[0]
    with torch.no_grad():
        out, _ = model(x)
    assert torch.allclose(out, x, atol=1e-6)
    with pytest.raises(InvalidInputError):
        model(x, mask=torch.zeros(1, 1, 32, 48))


def test_maca_identity_at_init_and_only_touches_foreground():
    torch.manual_seed(0)
    maca = MACA(8)
    x = torch.randn(2, 8, 6, 6)
    m = torch.zeros(2, 1, 6, 6)
    m[:, :, :3] = 1.0
    assert torch.equal(maca(x, m), x)
    nn.init.normal_(maca.mlp[-1].weight, std=0.5)
    nn.init.normal_(maca.mlp[-1].bias, std=0.5)
    y = maca(x, m)
    assert torch.equal(y[:, :, 3:], x[:, :, 3:]) and not torch.allclose(y[:, :, :3], x[:, :, :3])


def test_maca_path_runs_in_the_model():
    model = perturb(small_model(maca=True))
    x = frames(1)[0]
    mask = torch.zeros(1, 1, 32, 48)
    mask[..., 4:20, 4:20] = 1
    with torch.no_grad():
        a, _ = model(x, mask=mask)
        for m in model.backbone.down_maca:
            nn.init.normal_(m.mlp[-1].weight, std=0.3)
        b, _ = model(x, mask=mask)
    assert torch.isfinite(b).all() and not torch.allclose(a, b)
    with pytest.raises(ConfigError):
        EnhancerConfig(maca=True, use_mask=False)


def test_odd_sizes_are_padded_and_cropped():
    model = small_model()
    x = torch.rand(1, 3, 37, 53)
    with torch.no_grad():
        out, z = model(x)
        assert out.shape == x.shape and torch.allclose(out, x, atol=1e-6)
        assert z.shape[-2:] == model.latent_size(37, 53) == (12, 16)
        perturb(model)
        out2, _ = model(x, [z, z])
        tiny = torch.rand(1, 3, 5, 7)
        out3, _ = model(tiny)
    assert out2.shape == x.shape and out3.shape == tiny.shape


def test_autoencoder_codec_is_frozen_and_backbone_gets_gradients():
    torch.manual_seed(0)
    model = Enhancer(EnhancerConfig(**SMALL, codec="autoencoder", ae_widths=(8, 8), ae_latent_channels=4, detail_skips=True))
    frozen = [p.requires_grad for n, p in model.codec.named_parameters() if not n.startswith("skip_convs.")]
    skips = [p.requires_grad for n, p in model.codec.named_parameters() if n.startswith("skip_convs.")]
    assert frozen and not any(frozen) and skips and all(skips)  # detail skips train with the enhancer
    x = torch.rand(1, 3, 32, 48)
    perturb(model)
    model.train()
    assert not model.codec.training
    out, z = model(x, [torch.zeros(1, 4, 8, 12)])
    assert out.shape == x.shape and z.shape == (1, 4, 8, 12)
    out.mean().backward()
    assert model.backbone.conv_out.weight.grad is not None and model.backbone.conv_out.weight.grad.abs().sum() > 0
    assert model.codec.skip_convs[0].weight.grad is not None and model.codec.enc[0][0].weight.grad is None


# -- config and files ------------------------------------------------------------------------------------------
def test_config_yaml_round_trip_and_validation(tmp_path):
    cfg = EnhancerConfig(channels=(16, 32), temporal_levels=(0, 1), maca=True, codec="autoencoder", codec_downscale=8, ae_widths=(8, 8, 16))
    cfg.save(tmp_path / "c.yaml")
    assert EnhancerConfig.load(tmp_path / "c.yaml") == cfg
    with pytest.raises(ConfigError):
        EnhancerConfig.from_dict({"nonsense": 1})
    with pytest.raises(ConfigError):
        EnhancerConfig(channels=(16, 32), temporal_levels=(3,))
    with pytest.raises(ConfigError):
        EnhancerConfig(codec="autoencoder", codec_downscale=4, ae_widths=(8, 8, 8))


def test_save_load_round_trip(tmp_path):
    model = perturb(small_model(maca=True))
    model.save_pretrained(tmp_path / "enh")
    loaded = Enhancer.from_pretrained(tmp_path / "enh")
    assert loaded.config == model.config
    x, p = frames(2)
    with torch.no_grad():
        _, zp = model(p)
        assert torch.equal(model(x, [zp])[0], loaded(x, [zp])[0])


def test_corrupt_and_mismatched_files(tmp_path):
    model = small_model()
    folder = model.save_pretrained(tmp_path / "enh")
    with pytest.raises(MissingFileError):
        Enhancer.from_pretrained(tmp_path / "nope")
    # truncated weights
    w = folder / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="truncated"):
        Enhancer.from_pretrained(folder)
    # weights of another architecture
    small_model(channels=(8, 16, 16)).save_pretrained(tmp_path / "other")
    (folder / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(CorruptFileError, match="does not match"):
        Enhancer.from_pretrained(folder)
    # non-finite weights
    bad = small_model()
    with torch.no_grad():
        bad.backbone.conv_in.weight[0, 0, 0, 0] = float("nan")
    bad.save_pretrained(tmp_path / "nan")
    with pytest.raises(CorruptFileError, match="non-finite"):
        Enhancer.from_pretrained(tmp_path / "nan")
    # broken and wrong configs
    cfg = tmp_path / "nan" / "config.yaml"
    cfg.write_text("format: simharmony-enhancer\nversion: 1\nconfig: {channels: [16, 32], bogus: 3}\n")
    with pytest.raises(ConfigError, match="bogus"):
        Enhancer.from_pretrained(tmp_path / "nan")
    cfg.write_text("format: something-else\n")
    with pytest.raises(ConfigError, match="not an enhancer config"):
        Enhancer.from_pretrained(tmp_path / "nan")
    cfg.write_text("config: [unclosed\n")
    with pytest.raises(CorruptFileError):
        Enhancer.from_pretrained(tmp_path / "nan")


def test_models_do_not_import_scene_tools():
    import pathlib

    import simharmony.models as pkg

    for f in pathlib.Path(pkg.__file__).parent.glob("*.py"):
        assert "scene_tools" not in f.read_text().replace("never imports ``scene_tools``", ""), f


def test_spatial_attention_pooled_keys_match_full_on_block_constant_input():
    from simharmony.models import SpatialSelfAttention

    torch.manual_seed(0)
    full = SpatialSelfAttention(8, 2, max_tokens=10_000)
    pooled = SpatialSelfAttention(8, 2, max_tokens=24)  # 96 tokens -> stride 2 -> 24 keys
    pooled.load_state_dict(full.state_dict())
    coarse = torch.randn(1, 8, 4, 6)
    x = coarse.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # each key appears 4 times
    with torch.no_grad():
        assert torch.allclose(full(x), pooled(x), atol=1e-5)
        y = torch.randn(1, 8, 8, 12)
        assert not torch.allclose(full(y), pooled(y), atol=1e-3)


def test_colour_anchor_identity_at_init_and_learns_to_undo_a_gain():
    """Fresh: the identity with and without past. A few hundred steps on the anchor alone learn to undo a
    per-channel gain of the current frame against the previous output of a moving scene (what one frame
    cannot reveal)."""
    from simharmony.models.layers import ColourAnchor

    torch.manual_seed(0)
    anchor = ColourAnchor(6, hidden=32)
    z = torch.rand(4, 6, 32, 32)
    assert torch.equal(anchor(z, None), z) and torch.equal(anchor(z, ColourAnchor.summary(z)), z)
    opt = torch.optim.Adam(anchor.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)

    def batch():
        scene = 0.2 + 0.6 * torch.rand(16, 6, 8, 9, generator=g)
        scene = F.interpolate(scene, size=(32, 36), mode="bilinear", align_corners=False)
        clean, prev = scene[..., 2:34], scene[..., :32]  # previous output: same scene, camera moved 2 px
        gain = torch.exp2(0.15 * torch.randn(16, 6, 1, 1, generator=g))
        return clean * gain, clean, ColourAnchor.summary(prev)

    z_in, clean, past = batch()
    before = (anchor(z_in, past) - clean).pow(2).mean().item()
    for _ in range(300):
        zi, c, p = batch()
        loss = (anchor(zi, p) - c).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = (anchor(z_in, past) - clean).pow(2).mean().item()
    assert after < 0.2 * before, (before, after)


def test_colour_anchor_drift_fit_ignores_local_change():
    """The robust fit reads a global gain and offset exactly and ignores an object that changes part of
    the frame, which a mean difference would take for drift."""
    from simharmony.models.layers import ColourAnchor

    coarse = torch.rand(2, 3, 6, 8, generator=torch.Generator().manual_seed(0))
    prev = F.interpolate(coarse, size=(48, 64), mode="bilinear", align_corners=False)  # a smooth scene
    gain, offset = torch.tensor([1.1, 0.95, 1.0]), torch.tensor([0.05, -0.02, 0.1])
    drifted = prev * gain[None, :, None, None] + offset[None, :, None, None]
    a, b, _, _ = ColourAnchor.fit_drift(ColourAnchor.summary(drifted), ColourAnchor.summary(prev))
    torch.testing.assert_close(a, gain.expand(2, 3), atol=1e-3, rtol=0)
    torch.testing.assert_close(b, offset.expand(2, 3), atol=1e-3, rtol=0)
    entered = prev.clone()
    entered[..., 10:30, 5:35] = 0.95  # an asset enters: ~20% of the frame
    a, b, _, inliers = ColourAnchor.fit_drift(ColourAnchor.summary(entered), ColourAnchor.summary(prev))
    assert (a - 1).abs().max() < 1e-3 and b.abs().max() < 1e-3 and inliers.max() < 0.9
    mean_shift = (ColourAnchor.summary(entered) - ColourAnchor.summary(prev)).mean(-1)
    assert mean_shift.abs().min() > 0.02


def test_colour_anchor_trusts_only_small_drift_of_an_explained_frame():
    """With limits the anchor still undoes a small drift, but leaves alone a frame its past does not
    explain (a scene cut nobody signalled) and a jump far beyond any flicker; without limits it "corrects"
    both towards the past."""
    from simharmony.models.layers import ColourAnchor

    g = torch.Generator().manual_seed(2)

    def scene():
        return F.interpolate(0.2 + 0.6 * torch.rand(1, 3, 8, 9, generator=g), size=(48, 54), mode="bilinear")

    first = scene()
    prev, moved, other = first[..., :48], first[..., 1:49], scene()[..., :48]  # camera moved 1 px; a new scene
    past = ColourAnchor.summary(prev)
    gain = torch.tensor([1.08, 0.95, 1.0])[None, :, None, None]
    limited = ColourAnchor(3, hidden=8, max_log_gain=0.35, max_misfit=0.5)
    free = ColourAnchor(3, hidden=8)
    for anchor in (limited, free):
        torch.nn.init.constant_(anchor.mlp[-1].bias, 1.0)  # alpha = 1: undo the whole fitted drift
    assert not torch.equal(limited(other, past), other)  # training: the limits act at inference only
    limited.eval()
    for cur, explained in ((moved, True), (other, False)):
        a, b, _, _ = ColourAnchor.fit_drift(ColourAnchor.summary(cur), past)
        misfit = ColourAnchor.misfit(ColourAnchor.summary(cur), past, a, b).item()
        assert misfit < 0.5 if explained else misfit > 0.7, misfit
    drifted = moved * gain
    undone = limited(drifted, past)
    assert (undone - moved).abs().mean() < 0.3 * (drifted - moved).abs().mean()  # the drift is undone
    assert torch.equal(limited(other, past), other)  # a cut: left alone
    assert torch.equal(limited(moved * 1.8, past), moved * 1.8)  # log gain 0.59: beyond any flicker
    assert (free(other, past) - other).abs().mean() > 0.01 and (free(moved * 1.8, past) - moved * 1.8).abs().mean() > 0.1
    cfg = EnhancerConfig(channels=(8, 16), heads=4, temporal_levels=(1,), context_frames=2, colour_anchor=True,
                         anchor_max_log_gain=0.35, anchor_max_misfit=0.5)
    built = Enhancer(cfg).backbone.colour_anchor
    assert (built.max_log_gain, built.max_misfit) == (0.35, 0.5)
    with pytest.raises(ConfigError, match="anchor_max"):
        EnhancerConfig(anchor_max_misfit=-1)


@pytest.mark.parametrize("regions", [2, 4])
def test_colour_anchor_regional_consensus(regions):
    """With regions, a drift every region shares is still read exactly, but a change that fills the lower
    half (which fools the global fit into a large gain) and a drift of opposite sign in two halves are
    not taken for drift at all."""
    from simharmony.errors import ConfigError
    from simharmony.models.layers import ColourAnchor

    coarse = torch.rand(2, 3, 6, 8, generator=torch.Generator().manual_seed(1))
    prev = F.interpolate(coarse, size=(48, 64), mode="bilinear", align_corners=False)
    gain, offset = torch.tensor([1.1, 0.9, 1.0]), torch.tensor([0.03, -0.02, 0.05])
    drifted = prev * gain[None, :, None, None] + offset[None, :, None, None]
    past = ColourAnchor.summary(prev)
    a, b = ColourAnchor.consensus_drift(ColourAnchor.summary(drifted), past, regions)
    # small regions of a smooth scene pin the gain down less well; the drift they predict is what counts
    torch.testing.assert_close(a, gain.expand(2, 3), atol=2e-3 * regions, rtol=0)
    torch.testing.assert_close(a[..., None] * past + b[..., None], ColourAnchor.summary(drifted), atol=1e-3 * regions, rtol=0)

    darkened = prev.clone()
    darkened[..., 24:, :] *= 0.4  # a dark floater fills the lower half
    global_a, _, _, _ = ColourAnchor.fit_drift(ColourAnchor.summary(darkened), past)
    assert (global_a - 1).abs().max() > 0.1  # the single fit is fooled
    a, b = ColourAnchor.consensus_drift(ColourAnchor.summary(darkened), past, regions)
    assert torch.equal(a, torch.ones_like(a)) and torch.equal(b, torch.zeros_like(b))

    split = prev.clone()
    split[..., :24, :] *= 1.1
    split[..., 24:, :] *= 0.9
    a, b = ColourAnchor.consensus_drift(ColourAnchor.summary(split), past, regions)
    assert torch.equal(a, torch.ones_like(a)) and b.abs().max() < 1e-6

    with pytest.raises(ConfigError, match="anchor_regions"):
        EnhancerConfig(anchor_regions=3)


def test_init_model_overrides_add_modules_only(tmp_path):
    from simharmony.errors import ConfigError
    from simharmony.training.trainer import with_added_modules

    torch.manual_seed(0)
    base = Enhancer(EnhancerConfig(channels=(8, 16), heads=4, temporal_levels=(1,), context_frames=2))
    with torch.no_grad():
        base.backbone.conv_out.weight.normal_(0, 0.05)
    grown = with_added_modules(base, {"colour_anchor": True})
    assert grown.config.colour_anchor and grown.backbone.colour_anchor is not None
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        a, z = base(x)
        b, _ = grown(x)
        assert torch.equal(a, b) and torch.equal(base(x, [z])[0], grown(x, [z])[0])  # zero-initialised anchor
    with pytest.raises(ConfigError, match="no fields"):
        with_added_modules(base, {"colour_ancor": True})
    with pytest.raises(ConfigError, match="change existing weights"):
        with_added_modules(base, {"channels": (8, 24)})


def test_output_deadzone_drops_sub_threshold_changes_at_inference_only():
    """output_deadzone soft-thresholds the change to the input: changes below it vanish, larger ones shrink
    by it, and in training mode the output is the plain one (gradients for small corrections still flow)."""
    import dataclasses

    from _helpers import small_enhancer

    plain = small_enhancer()
    dz = 0.01
    model = Enhancer(dataclasses.replace(plain.config, output_deadzone=dz)).eval()
    model.load_state_dict(plain.state_dict())
    frame = 0.2 + 0.6 * torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, z_ref = plain(frame)
        out, z = model(frame)
    change = ref - frame
    unclamped = (ref > 0) & (ref < 1)
    small, large = change.abs() <= dz, (change.abs() > dz + 1e-6) & unclamped
    assert small.any() and large.any()
    torch.testing.assert_close(out[small], frame[small], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[large], (ref - dz * change.sign())[large], atol=1e-6, rtol=0)
    assert torch.equal(z, z_ref)  # the stream's context is the model's latent, untouched
    model.train()
    with torch.no_grad():
        assert torch.equal(model(frame)[0], plain.train()(frame)[0])
    with pytest.raises(ConfigError, match="output_deadzone"):
        EnhancerConfig(output_deadzone=-0.1)
