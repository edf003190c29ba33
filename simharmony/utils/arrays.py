"""numpy/torch interop for functions that accept either and hand back the kind they were given."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_numpy(x: Any) -> tuple[np.ndarray, Any]:
    """``x`` as a numpy array, and the torch device it came from (None for non-tensor input)."""
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy(), x.device
    return np.asarray(x), None
