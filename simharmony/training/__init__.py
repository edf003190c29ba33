"""Training of the enhancer (diffusion-harmonizer section 3.3; DESIGN.md section 4).

- :mod:`~simharmony.training.config`: :class:`TrainConfig` (YAML), the phase schedule and learning rate.
- :mod:`~simharmony.training.losses`: L2, multi-scale patch perceptual loss, temporal warping loss.
- :mod:`~simharmony.training.features`: VGG16 from a local safetensors file, or the documented substitute.
- :mod:`~simharmony.training.ema`: EMA of the weights. :mod:`~simharmony.training.checkpoint`: atomic checkpoints.
- :mod:`~simharmony.training.trainer`: :func:`train` (resumable, torchrun data-parallel) and ``add_cli``.

Command line: ``simharmony train --config configs/train_default.yaml --out runs/NAME``, or data-parallel
``torchrun --nproc_per_node 2 -m simharmony.training --config ... --out ...``.
"""

from simharmony.training.config import TrainConfig
from simharmony.training.ema import EMA
from simharmony.training.features import RandomFeatures, VGG16Features, build_feature_extractor
from simharmony.training.losses import PatchPerceptualLoss, l2_loss, log_mse_loss, temporal_warp_loss, warp_backward
from simharmony.training.trainer import TrainResult, add_cli, evaluate, train

__all__ = [
    "EMA",
    "PatchPerceptualLoss",
    "RandomFeatures",
    "TrainConfig",
    "TrainResult",
    "VGG16Features",
    "add_cli",
    "build_feature_extractor",
    "evaluate",
    "l2_loss",
    "log_mse_loss",
    "temporal_warp_loss",
    "train",
    "warp_backward",
]
