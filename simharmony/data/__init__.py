"""Data curation: paired (input, target) items, the software ISP, the generating streams and shards.

- :mod:`simharmony.data.item`: :class:`PairItem`, the one item format
- :mod:`simharmony.data.isp`: :class:`IspParams`, :func:`sample_isp_params`, :func:`apply_isp`
- :mod:`simharmony.data.streams`: stream configs and generators (``isp``, ``shadow``, ``rpb``, ``relight``)
  and the report
- :mod:`simharmony.data.recon_streams`: the reconstruction streams (``reinsert``, ``novel_view``) and their cache
- :mod:`simharmony.data.real`: the real-image corpus and streams (``real_isp``, ``real_rpb``, ``real_identity``,
  ``real_video``)
- :mod:`simharmony.data.registry`: :data:`STREAMS`, every stream by name (the modules above import one way only)
- :mod:`simharmony.data.presets`: ``tiny`` / ``default`` / ``holdout`` dataset presets (``simharmony data``)
- :mod:`simharmony.data.flicker`: per-frame exposure / white-balance flicker of input sequences (training
  augmentation and the benchmark's flicker holdout)
- :mod:`simharmony.data.shards`: :func:`generate_dataset`, :class:`ShardDataset`, :class:`MixingBatchSampler`

This package may import ``scene_tools`` (it renders the streets); the model code must not.
"""

from simharmony.data.isp import IspParams, IspRanges, apply_isp, sample_isp_params
from simharmony.data.item import PairItem
from simharmony.data.registry import STREAMS
from simharmony.data.shards import MixingBatchSampler, ShardDataset, finalize_dataset, generate_dataset
from simharmony.data.streams import psnr_in_mask, stream_report

__all__ = [
    "STREAMS",
    "IspParams",
    "IspRanges",
    "MixingBatchSampler",
    "PairItem",
    "ShardDataset",
    "apply_isp",
    "finalize_dataset",
    "generate_dataset",
    "psnr_in_mask",
    "sample_isp_params",
    "stream_report",
]
