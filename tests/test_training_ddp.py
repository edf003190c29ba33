"""Data-parallel training: 2 gloo processes on CPU (torch.multiprocessing.spawn, the torchrun environment
variables set by hand) train a few steps on a small synthetic dataset; both ranks must end with identical,
changed weights, and rank 0 alone writes the run folder."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import torch

from simharmony.data.item import PairItem
from simharmony.data.shards import finalize_dataset, write_shard
from simharmony.utils.io import load_tensors, save_tensors, save_yaml

ROOT = Path(__file__).resolve().parents[1]


def make_dataset(root: Path, n: int = 6, h: int = 16, w: int = 24) -> Path:
    """n items of stream "isp" (every other one a 3-frame sequence) with a learnable colour change in the mask."""
    rng = np.random.default_rng(0)
    items = []
    for k in range(n):
        t = 3 if k % 2 else 1
        target = rng.uniform(0.2, 0.8, (t, h, w, 3)).astype(np.float32)
        mask = np.zeros((t, h, w), np.float32)
        mask[:, 4:12, 6:18] = 1.0
        inp = np.clip(target + 0.15 * mask[..., None] * np.array([1.0, -0.5, 0.2], np.float32), 0, 1)
        valid = np.ones((t, h, w), bool)
        valid[0] = False
        items.append((f"isp-{k:07d}", PairItem(inp, target, mask, np.full((t, h, w), 10.0, np.float32),
                                                np.zeros((t, h, w, 2), np.float32), valid,
                                                {"stream": "isp", "params": {}, "seed": k, "scene_id": "synthetic"})))
    (root / "shards").mkdir(parents=True)
    write_shard(root / "shards", "isp-00000", items)
    save_yaml(root / "generation.yaml", {"streams": {"isp": n}, "shard_size": n, "seed": 0})
    finalize_dataset(root)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg_dict: dict, out: str, result_dir: str) -> None:
    import os

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world),
                       "RANK": str(rank), "LOCAL_RANK": str(rank)})
    from simharmony.training import TrainConfig, train

    result = train(TrainConfig.from_dict(cfg_dict), out, progress=False)
    save_tensors(Path(result_dir) / f"rank{rank}.safetensors", result.model.state_dict())


def test_two_gloo_processes_train_identically(tmp_path):
    import torch.multiprocessing as mp

    from simharmony.models import Enhancer
    from simharmony.training import TrainConfig

    data = make_dataset(tmp_path / "data")
    cfg = TrainConfig.load(ROOT / "configs" / "train_tiny.yaml")
    cfg = TrainConfig.from_dict({**cfg.to_dict(), "data": str(data), "batch_size": 2, "denoise_pretrain_steps": 1,
                                 "image_steps": 2, "mixed_steps": 2, "checkpoint_every": 5, "device": "cpu"})
    mp.spawn(_worker, args=(2, _free_port(), cfg.to_dict(), str(tmp_path / "run"), str(tmp_path)), nprocs=2, join=True)
    s0, _ = load_tensors(tmp_path / "rank0.safetensors")
    s1, _ = load_tensors(tmp_path / "rank1.safetensors")
    assert set(s0) == set(s1)
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k  # gradients all-reduced: the ranks never drift apart
    torch.manual_seed(cfg.seed)
    fresh = Enhancer(cfg.model).state_dict()
    assert max((fresh[k] - s0[k]).abs().max().item() for k in fresh) > 1e-4  # training ran and moved the weights
    run = tmp_path / "run"
    assert (run / "final" / "model.safetensors").is_file() and (run / "checkpoints" / "step_0000005").is_dir()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 5  # one writer: each step logged once
