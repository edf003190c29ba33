"""Codec trainer: it learns, resumes exactly, and its final folder starts an enhancer run."""

from __future__ import annotations

import pytest
import torch

from simharmony.data.shards import ShardDataset
from simharmony.errors import ConfigError
from simharmony.models import Enhancer
from simharmony.models.codec import CompactAutoencoder
from simharmony.training import TrainConfig, train
from simharmony.training.codec_trainer import CodecTrainConfig, reconstruction_psnr, train_codec
from simharmony.utils.io import load_tensors

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL_MODEL = {"channels": [8, 16], "heads": 2, "temporal_levels": [1], "context_frames": 2, "emb_dim": 16, "cond_dim": 8}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from simharmony.data.presets import generate_preset

    d = tmp_path_factory.mktemp("codec_data")
    generate_preset("tiny", d, progress=False)
    return d


def small_cfg(data, **changes) -> CodecTrainConfig:
    base = {"data": str(data), "holdout": str(data), "widths": [8, 8], "latent_channels": 6, "steps": 6, "batch_size": 4,
            "crop": 16, "warmup_steps": 2, "lr": 3e-3, "checkpoint_every": 3, "log_every": 1, "eval_items": 6,
            "perceptual_weight": 0.1, "model": SMALL_MODEL}
    return CodecTrainConfig.from_dict({**base, **changes})


def test_training_improves_reconstruction(tiny_data, tmp_path):
    cfg = small_cfg(tiny_data, steps=60, checkpoint_every=60, lr=5e-3)
    torch.manual_seed(cfg.seed)
    before = reconstruction_psnr(CompactAutoencoder(cfg.widths, cfg.latent_channels), ShardDataset(tiny_data), 6)
    res = train_codec(cfg, tmp_path / "run", progress=False)
    assert res.holdout_psnr is not None and res.holdout_psnr > before + 3.0, (before, res.holdout_psnr)
    assert (res.final_dir / "codec_report.yaml").is_file()


def test_resume_matches_uninterrupted_run(tiny_data, tmp_path):
    cfg = small_cfg(tiny_data)
    train_codec(cfg, tmp_path / "straight", progress=False)
    part = train_codec(cfg, tmp_path / "resumed", progress=False, stop_after=3)
    assert part.steps == 3 and not part.final_dir.exists()
    again = train_codec(cfg, tmp_path / "resumed", progress=False)
    assert again.start_step == 3
    a, _ = load_tensors(tmp_path / "straight" / "final" / "model.safetensors")
    b, _ = load_tensors(tmp_path / "resumed" / "final" / "model.safetensors")
    for k in a:
        if k.startswith("codec."):
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_final_folder_starts_an_enhancer_run_with_the_codec_frozen(tiny_data, tmp_path):
    res = train_codec(small_cfg(tiny_data, detail_skips=True), tmp_path / "codec", progress=False)
    init = Enhancer.from_pretrained(res.final_dir)
    assert init.config.codec == "autoencoder" and init.config.detail_skips
    tcfg = TrainConfig.from_dict({**TrainConfig.load("configs/train_tiny.yaml").to_dict(), "data": str(tiny_data),
                                  "init_model": str(res.final_dir)})
    out = train(tcfg, tmp_path / "enh", progress=False)
    trained = Enhancer.from_pretrained(out.final_dir)
    for (name, p0), (_, p1) in zip(init.codec.named_parameters(), trained.codec.named_parameters()):
        if name.startswith("skip_convs."):
            continue
        assert torch.equal(p0, p1), f"codec parameter {name} changed during enhancer training"
    skips_moved = any(not torch.equal(p0, p1) for (n, p0), (_, p1) in zip(init.codec.named_parameters(), trained.codec.named_parameters())
                      if n.startswith("skip_convs."))
    assert skips_moved, "the detail skips should train with the enhancer"


def test_bad_configs_are_rejected():
    with pytest.raises(ConfigError, match="crop"):
        CodecTrainConfig(widths=(8, 8), crop=18)
    with pytest.raises(ConfigError, match="widths"):
        CodecTrainConfig(widths=())
    with pytest.raises(ConfigError, match="unknown keys"):
        CodecTrainConfig.from_dict({"widht": [8]})
