"""The pretrained (diffusers) path: tiny random diffusers models built from configs, converted, streamed.

Nothing is downloaded: every diffusers/transformers model here is built from a config and saved to tmp.
"""

import argparse
import copy
import json
import shutil

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from simharmony.errors import ConfigError, CorruptFileError, MissingFileError, ShapeMismatchError
from simharmony.harmonizer import Harmonizer
from simharmony.models import Enhancer
from simharmony.models.diffusers_path import (
    DiffusersEnhancer,
    add_cli,
    alphas_cumprod,
    convert_diffusers,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UNET_KW = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A pipeline-style folder: unet/, vae/ (AutoencoderKL), vae_tiny/ (AutoencoderTiny), plus odd ones."""
    root = tmp_path_factory.mktemp("sd")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**UNET_KW)
    with torch.no_grad():  # non-trivial conv_out so "zeroed at conversion" is observable
        unet.conv_out.weight.normal_(0, 0.1)
    unet.save_pretrained(root / "unet")
    vae = diffusers.AutoencoderKL(
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=16,
        scaling_factor=0.5,
    )
    vae.save_pretrained(root / "vae")
    tiny = diffusers.AutoencoderTiny(
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
        latent_channels=4,
    )
    tiny.save_pretrained(root / "vae_tiny")
    diffusers.AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                            latent_channels=8, norm_num_groups=8, layers_per_block=1).save_pretrained(root / "vae8")
    # a 12-channel UNet (= pixel-unshuffle 2x), no VAE anywhere near it
    kw12 = dict(UNET_KW, in_channels=12, out_channels=12)
    diffusers.UNet2DConditionModel(**kw12).save_pretrained(root / "bare" / "unet12")
    return root


def frames(n=5, h=20, w=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 3, h, w, generator=g)


def train_head(model, std=0.1):
    """Stand-in for fine-tuning: a non-zero conv_out, so the UNet's features reach the output."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        w = model.backbone.unet.conv_out.weight
        w.copy_(torch.randn(w.shape, generator=g) * std)


def randomize_temporal(model, std=0.2, head=True):
    if head:
        train_head(model)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for layer in model.temporal_layers():
            layer.proj_out.weight.copy_(torch.randn(layer.proj_out.weight.shape, generator=g) * std)


def test_identity_at_conversion_kl(folders):
    model = convert_diffusers(folders / "unet")  # ../vae found from the pipeline layout
    assert model.config.codec == "diffusers_vae" and model.config.vae_class == "AutoencoderKL"
    assert model.config.total_downscale == 4  # VAE 2x * UNet 2x
    assert float(model.backbone.unet.conv_out.weight.detach().abs().max()) == 0.0
    x = frames(1)[0]
    with torch.no_grad():
        out, z = model(x)
        # independent reference: the stock VAE, padded by hand to 20x24 (already a multiple of 4)
        vae = diffusers.AutoencoderKL.from_pretrained(folders / "vae")
        ref_z = vae.encode(x * 2 - 1).latent_dist.mean * 0.5
        ref = (vae.decode(ref_z / 0.5).sample * 0.5 + 0.5).clamp(0, 1)
    torch.testing.assert_close(z, ref_z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_identity_exact_with_pixel_unshuffle_and_tiny_vae(folders):
    model = convert_diffusers(folders / "bare" / "unet12")
    assert model.config.codec == "pixel_unshuffle" and model.config.pixel_unshuffle_factor == 2
    x = frames(1, h=18, w=22)[0]  # not a multiple of 4: padded, then cropped
    with torch.no_grad():
        out, z = model(x)
    assert out.shape == x.shape and z.shape == (1, 12, 10, 12)
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)

    tiny = convert_diffusers(folders / "unet", folders / "vae_tiny")
    assert tiny.config.vae_class == "AutoencoderTiny" and tiny.config.codec_downscale == 2
    x = frames(1)[0]
    with torch.no_grad():
        out, _ = tiny(x)
        ref_vae = diffusers.AutoencoderTiny.from_pretrained(folders / "vae_tiny")
        ref = (ref_vae.decode(ref_vae.encode(x * 2 - 1).latents).sample * 0.5 + 0.5).clamp(0, 1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_deterministic_and_past_matters_only_after_training(folders):
    model = convert_diffusers(folders / "unet", context_frames=4)
    assert len(model.temporal_layers()) == 6  # down0 attention, down1 last resnet, mid attention, up0 last resnet, 2 up1 attentions
    train_head(model)  # the backbone now changes the latent, the temporal layers are still zero
    x = frames(3)
    with torch.no_grad():
        _, z1 = model(x[1])
        _, z2 = model(x[2])
        _, zn = model(x[0])
        out_past, zp = model(x[0], past_latents=[z1, z2])
        again, _ = model(x[0], past_latents=[z1, z2])
    assert torch.equal(out_past, again)  # deterministic
    assert float((zn - model.encode(x[0])).abs().max()) > 1e-3  # the head is live
    assert torch.equal(zn, zp)  # untrained temporal layers: exact identity, past ignored
    randomize_temporal(model)
    with torch.no_grad():
        _, zn2 = model(x[0])
        _, zp2 = model(x[0], past_latents=[z1, z2])
        _, zp3 = model(x[0], past_latents=[z1, z2, z1, z2, z1])  # beyond K: extra ones ignored
        _, zp4 = model(x[0], past_latents=[z1, z2, z1, z2])
    assert float((zp2 - zn2).abs().max()) > 1e-3
    assert torch.equal(zp3, zp4)


def test_temporal_sites_cover_every_block(folders):
    model = convert_diffusers(folders / "unet")
    names = sorted(model.backbone.temporal)
    mid = "mid_block_attentions_0"
    assert mid in names
    assert any(n.startswith("down_blocks_0_attentions") for n in names)
    assert any(n.startswith("down_blocks_1_resnets") for n in names)  # attention-free block: after last resnet
    assert any(n.startswith("up_blocks_1_attentions") for n in names)


def test_causal_streaming_and_harmonizer(folders, tmp_path):
    model = convert_diffusers(folders / "unet", context_frames=2)
    randomize_temporal(model)
    model.save_pretrained(tmp_path / "conv")
    seq = [(f[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8) for f in frames(5)]
    h = Harmonizer.from_pretrained(tmp_path / "conv")  # dispatches on the saved format
    assert isinstance(h.model, DiffusersEnhancer)
    model = h.model  # one instance below: bit-exact comparisons between streams
    outs = [h.enhance(f) for f in seq]
    assert h.context_length() == 2 and outs[0].shape == seq[0].shape and outs[0].dtype == np.uint8
    # causality: changing frame 4 leaves outputs 0..3 untouched; changing frame 1 changes frame 2's output
    h2 = Harmonizer(model)
    other = seq[:4] + [255 - seq[4]]
    outs2 = [h2.enhance(f) for f in other]
    for a, b in zip(outs[:4], outs2[:4], strict=True):
        assert np.array_equal(a, b)
    h3 = Harmonizer(model)
    outs3 = [h3.enhance(f) for f in [seq[0], 255 - seq[1], seq[2]]]
    assert not np.array_equal(outs3[2], outs[2])
    # the stream's first frame equals a context-free forward (fewer than K past frames at a stream's start)
    x0 = torch.from_numpy(seq[0]).permute(2, 0, 1).float()[None] / 255
    with torch.no_grad():
        ref, _ = model(x0)
    assert np.array_equal(outs[0], (ref[0] * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy())


def test_save_load_round_trip_without_original_folders(folders, tmp_path):
    model = convert_diffusers(folders / "unet", use_mask=True, use_depth=True, timestep=500)
    randomize_temporal(model)
    with torch.no_grad():
        model.backbone.cond_in.weight.normal_(0, 0.1)
    model.save_pretrained(tmp_path / "m")
    loaded = Enhancer.from_pretrained(tmp_path / "m")
    assert isinstance(loaded, DiffusersEnhancer) and loaded.config == model.config
    assert loaded.config.unet_config["block_out_channels"] == [32, 64]
    x = frames(2)
    mask = (torch.rand(1, 1, 20, 24) > 0.5).float()
    depth = torch.full((1, 1, 20, 24), 5.0)
    with torch.no_grad():
        _, z1 = model(x[1])
        a, za = model(x[0], [z1], mask=mask, depth=depth)
        b, zb = loaded(x[0], [z1], mask=mask, depth=depth)
        c, _ = model(x[0], [z1])
    # weights are bit-identical (below); outputs agree to float rounding (CPU kernels depend on alignment)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(za, zb, atol=1e-5, rtol=1e-5)
    assert not torch.equal(a, c)  # the (non-zero) condition conv is wired in
    sd1, sd2 = model.state_dict(), loaded.state_dict()
    assert set(sd1) == set(sd2) and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    # a truncated weights file is a clear error
    raw = (tmp_path / "m" / "model.safetensors").read_bytes()
    (tmp_path / "m" / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptFileError):
        DiffusersEnhancer.from_pretrained(tmp_path / "m")


def test_deepcopy_rebinds_hooks(folders):
    model = convert_diffusers(folders / "unet")
    train_head(model)
    ema = copy.deepcopy(model)
    randomize_temporal(ema, head=False)  # only the copy's temporal layers become non-zero
    x = frames(2)
    with torch.no_grad():
        _, z1 = model(x[1])
        _, za = model(x[0], [z1])
        _, zb = ema(x[0], [z1])
        _, zn = model(x[0])
    assert torch.equal(za, zn)  # the original still ignores the past
    assert float((za - zb).abs().max()) > 1e-3  # the copy's hooks run the copy's temporal layers


def test_x0_output_mode(folders):
    sched = folders / "scheduler"
    sched.mkdir(exist_ok=True)
    (sched / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler", "prediction_type": "v_prediction", "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "num_train_timesteps": 1000}))
    model = convert_diffusers(folders / "unet", output="x0", timestep=200)
    assert model.config.prediction_type == "v_prediction"
    ab = float(torch.cumprod(1 - torch.linspace(0.0001, 0.02, 1000, dtype=torch.float64), 0)[200])
    assert abs(model.config.alpha_bar - ab) < 1e-9
    assert float(model.backbone.unet.conv_out.weight.detach().abs().max()) > 0  # pretrained head kept
    z = torch.randn(1, 4, 10, 12)
    with torch.no_grad():
        v = model.backbone.unet(z, 200, encoder_hidden_states=torch.zeros(1, 1, 32), return_dict=False)[0]
        got = model.backbone(z)
    torch.testing.assert_close(got, ab**0.5 * z - (1 - ab) ** 0.5 * v, atol=1e-5, rtol=1e-5)
    sched.joinpath("scheduler_config.json").unlink()
    sched.rmdir()
    # SD's default schedule
    assert abs(float(alphas_cumprod()[999]) - 0.0047) < 1e-4


def test_errors(folders, tmp_path):
    with pytest.raises(MissingFileError):
        convert_diffusers(tmp_path / "nope")
    with pytest.raises(ConfigError, match="AutoencoderKL"):
        convert_diffusers(folders / "vae")  # a VAE where a UNet belongs
    with pytest.raises(ConfigError, match="UNet2DConditionModel"):
        convert_diffusers(folders / "unet", folders / "unet")  # a UNet where a VAE belongs
    with pytest.raises(ShapeMismatchError, match="latent channels"):
        convert_diffusers(folders / "unet", folders / "vae8")
    with pytest.raises(ConfigError):
        convert_diffusers(folders / "unet", text_encoder_dir=tmp_path)  # tokenizer missing
    (tmp_path / "lonely").mkdir()
    shutil.copytree(folders / "unet", tmp_path / "lonely" / "unet")
    with pytest.raises(MissingFileError, match="--vae"):
        convert_diffusers(tmp_path / "lonely" / "unet")  # 4 channels, no VAE: cannot pick a codec


def test_text_encoder_null_embedding(folders, tmp_path):
    tf = pytest.importorskip("transformers")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3, "a": 4, "b": 5}
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "tok" / "merges.txt").write_text("#version: 0.2\n")
    tok = tf.CLIPTokenizer(str(tmp_path / "tok" / "vocab.json"), str(tmp_path / "tok" / "merges.txt"), model_max_length=7)
    tok.save_pretrained(tmp_path / "tokenizer")
    torch.manual_seed(1)
    enc = tf.CLIPTextModel(tf.CLIPTextConfig(vocab_size=6, hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=7, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    enc.save_pretrained(tmp_path / "text_encoder")
    model = convert_diffusers(folders / "unet", text_encoder_dir=tmp_path / "text_encoder", tokenizer_dir=tmp_path / "tokenizer")
    null = model.backbone.null_condition
    assert model.config.null_source == "text_encoder" and tuple(null.shape) == (1, 7, 32)
    with torch.no_grad():
        ids = tok([""], padding="max_length", max_length=7, return_tensors="pt").input_ids
        ref = enc.eval()(input_ids=ids).last_hidden_state
    torch.testing.assert_close(null, ref)
    model.save_pretrained(tmp_path / "m")
    loaded = DiffusersEnhancer.from_pretrained(tmp_path / "m")  # no text encoder needed any more
    assert torch.equal(loaded.backbone.null_condition, null)


def test_cli(folders, tmp_path, capsys):
    out = tmp_path / "cli_out"
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    args = parser.parse_args(["convert-diffusers", "--unet", str(folders / "unet"), "--vae", str(folders / "vae_tiny"),
                              "--out", str(out), "--timestep", "250", "--context-frames", "3"])
    assert args.func(args) == 0
    assert "temporal layers" in capsys.readouterr().out
    m = Enhancer.from_pretrained(out)
    assert m.config.timestep == 250 and m.config.context_frames == 3 and m.config.vae_class == "AutoencoderTiny"
