"""Benchmark presets: :class:`BenchConfig` (a YAML round-tripping dataclass) and the ``smoke`` / ``full`` presets.

- ``smoke``: runs on a fresh clone in CI (2 cores, well under 3 minutes): a few holdout-like items are
  generated on the fly from the tiny data streams (48x32 streets, 5-frame sequences), the novel-trajectory
  and insertion scenarios use the shipped demo street at a quarter of its resolution (64x36) for 6 frames,
  speed is measured at 128x72 with 1 thread. The model is ``--model`` if given, else ``weights/enhancer``, else a small
  *untrained* Enhancer (the identity: its residual output is zero-initialised), and the report says so.
- ``full``: the holdout dataset folder (``data/holdout``, made by ``simharmony data generate --preset
  holdout --out data/holdout``), the demo street at 256x144 along its whole 40-frame trajectory, PBR ground
  truth at 64 spp (as the demo street itself), speed at 512x288 and 1024x576, shipped default weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from simharmony.data.flicker import FlickerConfig
from simharmony.data.item import TARGET_DERIVED_MASK_STREAMS
from simharmony.data.registry import stream_names
from simharmony.errors import ConfigError
from simharmony.paths import DEMO_SCENE_DIR
from simharmony.utils.config import Config, all_finite, require

ALL_STREAMS = ("isp", "shadow", "rpb", "relight", "reinsert", "novel_view")


def _small_enhancer() -> dict:
    """EnhancerConfig fields of the small untrained stand-in model (fast at any size, exact identity)."""
    return {"channels": [16, 32], "heads": 4, "temporal_levels": [1], "context_frames": 2}


@dataclass
class BenchConfig(Config):
    """Everything one ``simharmony bench`` run does. Paths are relative to the working directory.

    Data: ``holdout_dir`` (a finalized dataset folder) unless ``smoke_data`` (generate ``smoke_items_per_stream``
    items of each of ``smoke_streams`` from the tiny stream configs with ``smoke_seq_len``-frame sequences
    into ``cache_dir``); ``max_items_per_stream`` (0 = all) caps the holdout items per stream.
    Scenes: ``scene_dir`` (the demo street), rendered at ``render_scale`` of its size for ``num_frames``
    frames along the ego trajectory shifted ``novel_shift_m`` (novel trajectory, PBR ground truth at
    ``gt_spp``) and ``insert_shift_m`` (object insertion, no ground truth).
    Methods: ``model`` ("" = weights/enhancer; with ``untrained_fallback`` a small untrained Enhancer
    (``untrained_config``) when that is missing), ``per_frame_model``, ``parametric`` ("" = not given),
    ``variants`` {name: folder} (ablation models), ``ema_alpha`` (weight of the newest frame).
    Flicker holdout: up to ``flicker_sequences`` holdout sequences (round-robin over streams; 0 = off)
    with per-frame exposure / white-balance flicker ``flicker`` on their inputs, seeded by ``flicker_seed``
    (:mod:`simharmony.data.flicker`); targets unchanged.
    Missed cuts: ``cut_pairs`` seeded (``cut_seed``) pairs of holdout sequences played as one clip (0 = off).
    Inputs to the models: ``mask_to_model`` / ``depth_to_model``; ``maskless_streams``: holdout streams whose
    items give no method their mask, only the inserted object's ``asset_mask`` where they carry one (default: those whose mask is cut out with the target's help,
    :data:`~simharmony.data.item.TARGET_DERIVED_MASK_STREAMS`). ``psnr_cap_db``: per-frame PSNR and
    fPSNR are capped there (identical frames would give inf).
    Speed: ``speed_sizes`` [(W, H)], ``speed_repeats`` timed calls after ``speed_warmup``.
    Output: ``video_max_frames`` per video, ``video_fps``; ``failure_cases``: per holdout stream, the items
    where ours loses the most SSIM against the input, listed and shown (0 = off).
    Set metrics: FID and KID per stream and method over the first ``set_metric_frames`` frames (output against
    target, every frame of a sequence counts, as the paper's per-frame FID; 0 = off; they need the converted
    FID Inception, and cost about a second per frame at one CPU thread: the full preset's 6 streams x 7 methods
    x 32 frames take about 20 minutes more).
    Real images (:mod:`simharmony.bench.real`): ``real`` runs the real-image scenarios from ``real_dir``
    ("" = ``$SIMHARMONY_REALDATA`` or ``../shared/realdata``; each reports "not available" where its folder is
    missing); ``real_only`` runs only those (no holdout needed).
    Threads: ``eval_threads`` torch threads while evaluating (1: small frames and float64 metrics stall on
    OpenMP synchronisation with more on busy 2-core machines), ``threads`` torch/OpenCV threads for the speed
    table (0 = torch's default); ``device`` ("auto" = cuda when available).
    """

    preset: str = "full"
    holdout_dir: str = "data/holdout"
    max_items_per_stream: int = 0
    smoke_data: bool = False
    smoke_streams: tuple[str, ...] = ALL_STREAMS
    smoke_items_per_stream: int = 2
    smoke_seq_len: int = 5
    smoke_seed: int = 7
    scene_dir: str = str(DEMO_SCENE_DIR)
    num_frames: int = 40
    render_scale: float = 1.0
    gt_spp: int = 64
    novel_shift_m: float = 2.0
    insert_shift_m: float = 3.0
    model: str = ""
    untrained_fallback: bool = False
    untrained_config: dict = field(default_factory=_small_enhancer)
    per_frame_model: str = ""
    parametric: str = ""
    variants: dict[str, str] = field(default_factory=dict)
    ema_alpha: float = 0.5
    flicker_sequences: int = 60
    flicker_seed: int = 0
    flicker: FlickerConfig = field(default_factory=FlickerConfig)
    cut_pairs: int = 40
    cut_seed: int = 0
    mask_to_model: bool = True
    maskless_streams: tuple[str, ...] = TARGET_DERIVED_MASK_STREAMS
    depth_to_model: bool = True
    psnr_cap_db: float = 100.0
    speed_sizes: tuple[tuple[int, int], ...] = ((512, 288), (1024, 576))
    speed_repeats: int = 10
    speed_warmup: int = 2
    video_max_frames: int = 60
    video_fps: float = 10.0
    failure_cases: int = 3
    set_metric_frames: int = 32
    threads: int = 0
    eval_threads: int = 1
    device: str = "auto"
    cache_dir: str = "data/cache/bench"
    progress: bool = True
    real: bool = True
    real_only: bool = False
    real_dir: str = ""

    def __post_init__(self) -> None:
        o = "BenchConfig"
        self.smoke_streams = stream_names(self.smoke_streams, o, "smoke_streams")
        self.maskless_streams = stream_names(self.maskless_streams, o, "maskless_streams")
        self.speed_sizes = tuple(tuple(int(v) for v in s) for s in self.speed_sizes)
        require(self.max_items_per_stream >= 0, o, f"max_items_per_stream={self.max_items_per_stream} must be >= 0")
        require(self.smoke_items_per_stream >= 1, o, "smoke_items_per_stream must be >= 1")
        require(self.smoke_seq_len >= 2, o, f"smoke_seq_len={self.smoke_seq_len} must be >= 2")
        require(self.flicker_sequences >= 0 and self.flicker_seed >= 0, o, "flicker_sequences and flicker_seed must be >= 0")
        require(self.cut_pairs >= 0 and self.cut_seed >= 0, o, "cut_pairs and cut_seed must be >= 0")
        require(self.num_frames >= 0, o, f"num_frames={self.num_frames} must be >= 0 (0 skips the scene scenarios)")
        require(all_finite(self.render_scale) and 0 < self.render_scale <= 4, o, "render_scale must be in (0, 4]")
        require(self.gt_spp >= 1, o, f"gt_spp={self.gt_spp} must be >= 1")
        require(all_finite(self.novel_shift_m, self.insert_shift_m), o, "shifts must be finite")
        require(all_finite(self.ema_alpha) and 0 < self.ema_alpha <= 1, o, f"ema_alpha={self.ema_alpha} must be in (0, 1]")
        require(all_finite(self.psnr_cap_db) and self.psnr_cap_db > 0, o, "psnr_cap_db must be > 0")
        require(all(len(s) == 2 and s[0] >= 16 and s[1] >= 16 for s in self.speed_sizes), o,
                f"speed_sizes must be (W, H) pairs of at least 16 pixels, got {self.speed_sizes}")
        require(self.speed_repeats >= 1 and self.speed_warmup >= 0, o, "speed_repeats >= 1 and speed_warmup >= 0")
        require(self.video_max_frames >= 1 and self.video_fps > 0, o, "video_max_frames >= 1 and video_fps > 0")
        require(self.failure_cases >= 0, o, f"failure_cases={self.failure_cases} must be >= 0")
        require(self.set_metric_frames >= 0, o, f"set_metric_frames={self.set_metric_frames} must be >= 0")
        require(self.threads >= 0, o, f"threads={self.threads} must be >= 0")
        require(self.eval_threads >= 0, o, f"eval_threads={self.eval_threads} must be >= 0")
        require(self.device in ("auto", "cpu", "cuda"), o, f"device={self.device!r} must be 'auto', 'cpu' or 'cuda'")
        for name in self.variants:
            require(bool(name) and "/" not in name, o, f"variant name {name!r} must be non-empty without '/'")


def smoke_preset() -> BenchConfig:
    return BenchConfig(
        preset="smoke", smoke_data=True, holdout_dir="", num_frames=6, render_scale=0.25, gt_spp=4, real=False,
        untrained_fallback=True, speed_sizes=((128, 72),), speed_repeats=5, speed_warmup=1, video_max_frames=30,
        set_metric_frames=4,  # FID / KID on CPU: about a second per 299 x 299 Inception pass at one thread
        threads=1,  # tiny frames: a second thread only adds OpenMP synchronisation on a busy CI machine
    )


def full_preset() -> BenchConfig:
    from simharmony.paths import PARAMETRIC_DIR

    # the shipped parametric baseline takes part when its weights are there
    return BenchConfig(preset="full", parametric=str(PARAMETRIC_DIR) if (PARAMETRIC_DIR / "model.safetensors").is_file() else "")


def real_preset() -> BenchConfig:
    """Only the real-image scenarios (a few minutes; no holdout data needed)."""
    return dataclasses.replace(full_preset(), preset="real", real_only=True)


PRESETS: dict[str, Callable[[], BenchConfig]] = {"smoke": smoke_preset, "full": full_preset, "real": real_preset}


def get_bench_preset(name: str, **overrides) -> BenchConfig:
    """The preset called ``name`` with ``overrides`` (BenchConfig fields) applied; ConfigError otherwise."""
    if name not in PRESETS:
        raise ConfigError(f"unknown bench preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}")
    cfg = PRESETS[name]()
    names = {f.name for f in dataclasses.fields(BenchConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"unknown BenchConfig fields {unknown}")
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


__all__ = ["ALL_STREAMS", "PRESETS", "BenchConfig", "full_preset", "get_bench_preset", "smoke_preset"]
