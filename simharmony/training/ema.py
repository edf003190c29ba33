"""Exponential moving average of a model's weights (the weights that ship).

After every optimizer step: ``shadow = d * shadow + (1 - d) * param`` for each floating-point parameter,
with ``d = decay`` or, with ``warmup=True``, ``d = min(decay, (1 + n) / (10 + n))`` at the n-th update
(n = 0, 1, ...), so early shadows are not dominated by the random initialisation. Buffers (the null
embeddings, ImageNet constants) are copied, not averaged. The shadow lives in float32 whatever the model's
dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from simharmony.errors import ConfigError, CorruptFileError


class EMA:
    """EMA of ``model``'s state dict. ``update(model)`` after each step; ``copy_to(model)`` to use it."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        # only trained parameters are averaged; frozen ones (the codec) and buffers are copied exactly
        self.param_names = {name for name, p in model.named_parameters() if p.is_floating_point() and p.requires_grad}
        self.shadow: dict[str, torch.Tensor] = {k: v.detach().float().clone() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        if self.warmup:
            return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for name, value in model.state_dict().items():
            s = self.shadow[name]
            if name in self.param_names:
                s.mul_(d).add_(value.detach().float(), alpha=1.0 - d)
            else:
                s.copy_(value.detach())
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the shadow weights into ``model`` (cast to each tensor's dtype)."""
        state = model.state_dict()
        model.load_state_dict({k: self.shadow[k].to(dtype=v.dtype, device=v.device) for k, v in state.items()})

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, tensors: dict[str, torch.Tensor], num_updates: int) -> None:
        missing, extra = sorted(set(self.shadow) - set(tensors)), sorted(set(tensors) - set(self.shadow))
        if missing or extra:
            raise CorruptFileError(f"EMA state does not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
        for k, v in tensors.items():
            if v.shape != self.shadow[k].shape:
                raise CorruptFileError(f"EMA tensor {k} has shape {tuple(v.shape)}, expected {tuple(self.shadow[k].shape)}")
            self.shadow[k] = v.detach().float().clone().to(self.shadow[k].device)
        self.num_updates = int(num_updates)

    def to(self, device: torch.device | str) -> EMA:
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self


__all__ = ["EMA"]
