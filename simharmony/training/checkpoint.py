"""Atomic training checkpoints: safetensors for tensors, YAML for the rest; no pickle.

    out_dir/checkpoints/step_0000250/
        model.safetensors      the raw (trained) weights: Enhancer state dict
        ema.safetensors        the EMA shadow weights
        optim.safetensors      AdamW state tensors, keys "state.<param index>.<name>"
        state.yaml             step (= steps completed), EMA update count, optimiser param groups,
                               seeds, sampler epoch, world size; written last

A checkpoint is written into a hidden temporary folder and renamed into place, so a kill at any moment
leaves either no ``step_*`` folder or a complete one. :func:`latest_checkpoint` only returns folders with
a readable ``state.yaml``; older checkpoints beyond ``keep`` are deleted after the new one is in place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simharmony.errors import CorruptFileError
from simharmony.training.ema import EMA
from simharmony.utils.io import ensure_writable_dir, load_tensors, load_yaml, save_tensors, save_yaml, write_text_atomic

FORMAT = "simharmony-train-checkpoint"
_NAME = re.compile(r"^step_(\d{7})$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups, scalars


def _optimizer_state(tensors: dict[str, torch.Tensor], groups: list[dict], scalars: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = v
    for key, v in scalars.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    return {"state": state, "param_groups": groups}


def save_checkpoint(root: str | os.PathLike, step: int, model: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer,
                    extra: dict[str, Any] | None = None, keep: int = 3) -> Path:
    """Write ``root/step_XXXXXXX`` atomically (module docstring); keep the newest ``keep`` checkpoints."""
    root = ensure_writable_dir(root)
    final = root / checkpoint_name(step)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    meta = {"format": FORMAT}
    save_tensors(tmp / "model.safetensors", model.state_dict(), metadata=meta)
    save_tensors(tmp / "ema.safetensors", ema.state_dict(), metadata=meta)
    otensors, groups, scalars = _optimizer_tensors(optimizer)
    save_tensors(tmp / "optim.safetensors", otensors, metadata=meta)
    save_yaml(tmp / "state.yaml", {"format": FORMAT, "step": int(step), "ema_updates": int(ema.num_updates),
                                   "param_groups": groups, "optim_scalars": scalars, **(extra or {})})
    if final.exists():  # a re-run reached the same step: replace the old folder
        trash = root / f".{final.name}.old-{os.getpid()}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def append_metrics(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line to a run's metrics log."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, allow_nan=True) + "\n")


def truncate_metrics(path: str | os.PathLike, upto_step: int) -> None:
    """Keep only the metrics lines of steps <= ``upto_step`` (a resumed run redoes the rest); a line cut
    by a kill is dropped. Rewritten atomically."""
    path = Path(path)
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= upto_step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    write_text_atomic(path, "".join(line + "\n" for line in keep))


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / "state.yaml").is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def clean_stale(root: str | os.PathLike) -> None:
    """Remove temporary folders of checkpoints a killed run did not finish."""
    root = Path(root)
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith(".step_"):
                shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(path: str | os.PathLike, model: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer,
                    device: torch.device | str = "cpu") -> dict[str, Any]:
    """Restore model, EMA and optimizer from ``path``; returns the state.yaml contents."""
    path = Path(path)
    state = load_yaml(path / "state.yaml")
    if not isinstance(state, dict) or state.get("format") != FORMAT or "step" not in state:
        raise CorruptFileError(f"{path / 'state.yaml'} is not a training checkpoint record")
    tensors, _ = load_tensors(path / "model.safetensors")
    expected = model.state_dict()
    if set(tensors) != set(expected) or any(tensors[k].shape != expected[k].shape for k in expected):
        raise CorruptFileError(f"{path / 'model.safetensors'} does not match the model being trained (another model config?)")
    model.load_state_dict(tensors)
    ema_tensors, _ = load_tensors(path / "ema.safetensors", device=str(device))
    ema.load_state_dict(ema_tensors, state.get("ema_updates", 0))
    otensors, _ = load_tensors(path / "optim.safetensors", device=str(device))
    try:
        optimizer.load_state_dict(_optimizer_state(otensors, state["param_groups"], state.get("optim_scalars", {})))
    except (ValueError, KeyError) as e:
        raise CorruptFileError(f"{path}: optimizer state does not match the parameters being trained: {e}") from e
    return state


__all__ = ["append_metrics", "checkpoint_name", "clean_stale", "latest_checkpoint", "list_checkpoints", "load_checkpoint", "save_checkpoint", "truncate_metrics"]
