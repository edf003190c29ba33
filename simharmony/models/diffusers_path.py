"""Pretrained path: a diffusers UNet2DConditionModel (+ AutoencoderKL/AutoencoderTiny) as a single-step enhancer.

diffusion-harmonizer section 3.1 turns a multi-step latent diffusion model into a deterministic one-step
enhancer: the *clean* latent E(I_t) goes in (no noise), the timestep and the text condition are fixed
"null" constants, and causal temporal attention over up to K past latents is inflated into the UNet.

    model = convert_diffusers("sd/unet", vae_dir="sd/vae")   # local folders only, nothing downloaded
    out, z = model(frame, past_latents=[z1, z2])              # same interface as Enhancer
    model.save_pretrained("weights/sd_enhancer")              # config.yaml (with the diffusers configs) + safetensors
    Harmonizer.from_pretrained("weights/sd_enhancer")         # rebuilds without the original folders

Pieces (models only, no pipeline):

- :class:`DiffusersVAECodec`: a frozen diffusers VAE as E/D. Images [0, 1] -> [-1, 1] -> the mean of the
  latent distribution (AutoencoderKL) or the tiny encoder's latents (AutoencoderTiny), then
  ``(z - shift_factor) * scaling_factor``; decoding inverts both. Frames are padded to a multiple of the
  VAE's downscale times the UNet's (so every UNet level divides evenly).
- :class:`DiffusersTemporalUNet`: the converted backbone. Fixed timestep (``config.timestep``, a plain int:
  the paper fixes it to a constant without giving a number; 999 by default, as the compact backbone's
  ``null_timestep``). The null condition ``encoder_hidden_states [1, L, D]`` is a buffer: zeros by default,
  or the empty prompt's embedding computed ONCE at conversion by a text encoder from a local folder.
  An all-zero condition makes every cross-attention key equal, so its output does not depend on L and
  L=1 is exact (and cheaper); a text-encoder embedding keeps the tokenizer's length (77 for CLIP).
- Temporal inflation: a zero-initialised :class:`~simharmony.models.layers.CausalTemporalAttention` after
  every spatial attention (Transformer2DModel) of each down/mid/up block, and after the last ResNet of
  blocks that have no attention. They are attached with forward hooks, so the UNet stays a stock diffusers
  module with its original parameter names (``backbone.unet.*``); temporal layers live in
  ``backbone.temporal.*``. They read the cached past *latents* (most recent first), like the compact model.
- Output (``config.output``):
  ``"residual"`` (default): ``z_out = z + unet(z, t, null)`` with ``unet.conv_out`` zero-initialised at
  conversion, so the converted model is exactly the identity in latent space (D(E(I)) in image space) and
  fine-tuning learns a correction, like the compact backbone.
  ``"x0"``: read the UNet output as the scheduler's prediction at the fixed timestep with ``z`` taken as
  x_t, and return the implied x0: epsilon -> (z - sqrt(1-a) eps) / sqrt(a), v -> sqrt(a) z - sqrt(1-a) v,
  sample -> as is (a = alphas_cumprod[t], stored in the config). Keeps the pretrained output head, but the
  converted model is not the identity, and near t=999 (a ~ 0.005) it amplifies errors ~14x: use a low
  timestep with it.
- Optional mask/depth channels (as in :class:`~simharmony.models.Enhancer`) enter through a
  zero-initialised 3x3 conv added to ``unet.conv_in``'s output (InstructPix2Pix-style inflation, identity
  at conversion).

diffusers (and transformers for the optional text encoder) are imported lazily; without them this path
raises :class:`~simharmony.errors.BackendUnavailableError` naming the pip command.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from simharmony.errors import (
    BackendUnavailableError,
    ConfigError,
    MissingFileError,
    ShapeMismatchError,
)
from simharmony.models.backbone import check_output_deadzone
from simharmony.models.codec import Codec, PixelUnshuffleCodec
from simharmony.models.enhancer import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    Enhancer,
    load_checked_state,
    register_format,
)
from simharmony.models.layers import CausalTemporalAttention, zero_module
from simharmony.utils.config import Config, require_finite_fields
from simharmony.utils.io import load_yaml, save_tensors, save_yaml

FORMAT = "simharmony-diffusers-enhancer"
VERSION = 1
VAE_CLASSES = ("AutoencoderKL", "AutoencoderTiny")
PIP_DIFFUSERS = "pip install 'simharmony[diffusers]'  (or: pip install diffusers)"
PIP_TRANSFORMERS = "pip install transformers"


# -- lazy imports -------------------------------------------------------------------------------------------
def _diffusers():
    try:
        import diffusers
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise BackendUnavailableError(f"the pretrained (diffusers) enhancer path needs diffusers: {PIP_DIFFUSERS}") from e
    return diffusers


def _build(cls, config: dict[str, Any]) -> nn.Module:
    """``cls.from_config`` with only the keys its constructor takes (diffusers also registers derived keys,
    e.g. AutoencoderTiny's block_out_channels, and warns when they come back)."""
    accepted = inspect.signature(cls.__init__).parameters
    return cls.from_config({k: v for k, v in config.items() if k in accepted})


def _transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover
        raise BackendUnavailableError(f"computing the null embedding with a text encoder needs transformers: {PIP_TRANSFORMERS}") from e
    return transformers


# -- config -------------------------------------------------------------------------------------------------
@dataclass
class DiffusersEnhancerConfig(Config):
    """Everything needed to rebuild a converted model without the original folders (saved as config.yaml).

    ``unet_config`` / ``vae_config`` are the diffusers ``config.json`` contents (private ``_`` keys dropped).
    Exposes the attributes :class:`~simharmony.models.Enhancer` reads (``codec_downscale``,
    ``latent_channels``, ``total_downscale``, ``context_frames``, ``use_mask``, ``use_depth``, ``depth_scale``).
    """

    unet_config: dict[str, Any] = field(default_factory=dict)
    codec: Literal["diffusers_vae", "pixel_unshuffle"] = "diffusers_vae"
    vae_class: Literal["AutoencoderKL", "AutoencoderTiny"] = "AutoencoderKL"
    vae_config: dict[str, Any] = field(default_factory=dict)
    pixel_unshuffle_factor: int = 2  # codec="pixel_unshuffle" only: needs unet in_channels == 3 * f * f
    timestep: int = 999  # the fixed "null" timestep
    output: Literal["residual", "x0"] = "residual"
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"  # output="x0" only
    alpha_bar: float = 0.0047  # alphas_cumprod[timestep] of the training schedule (output="x0" only)
    null_tokens: int = 1  # L of the stored null condition [1, L, D]
    null_source: str = "zeros"  # provenance: "zeros" or "text_encoder" (the empty prompt)
    context_frames: int = 4  # K
    temporal_heads: int = 8  # per layer: the largest count <= this that divides its channels
    use_mask: bool = False
    use_depth: bool = False
    depth_scale: float = 10.0
    output_deadzone: float = 0.0  # at inference, changes to the input smaller than this are dropped (Enhancer)

    def __post_init__(self) -> None:
        require_finite_fields(self)  # alpha_bar, depth_scale, output_deadzone: NaN passes the range checks below
        check_output_deadzone(self.output_deadzone)
        u = self.unet_config
        for key in ("in_channels", "out_channels", "block_out_channels"):
            if key not in u:
                raise ConfigError(f"DiffusersEnhancerConfig.unet_config lacks {key!r} (expected a UNet2DConditionModel config)")
        if u["in_channels"] != u["out_channels"]:
            raise ConfigError(f"UNet in_channels {u['in_channels']} != out_channels {u['out_channels']}: a latent-to-latent enhancer needs them equal")
        for key in ("class_embed_type", "addition_embed_type"):
            if u.get(key) is not None:
                raise ConfigError(f"UNets with {key}={u[key]!r} need extra conditioning inputs; only text-conditioned UNets (SD 1.x/2.x style) are supported")
        if u.get("encoder_hid_dim_type") not in (None, "text_proj"):
            raise ConfigError(f"encoder_hid_dim_type={u['encoder_hid_dim_type']!r} is not supported (only None or 'text_proj')")
        if self.codec == "diffusers_vae":
            if not self.vae_config:
                raise ConfigError("codec='diffusers_vae' needs vae_config")
            if self.vae_latent_channels != u["in_channels"]:
                raise ConfigError(f"VAE latent_channels {self.vae_latent_channels} != UNet in_channels {u['in_channels']}")
        elif 3 * self.pixel_unshuffle_factor**2 != u["in_channels"]:
            raise ConfigError(f"pixel_unshuffle factor {self.pixel_unshuffle_factor} gives {3 * self.pixel_unshuffle_factor**2} channels, UNet in_channels is {u['in_channels']}")
        n_train = int(u.get("num_train_timesteps", 1000) or 1000)
        if not 0 <= self.timestep < max(n_train, 1000):
            raise ConfigError(f"timestep must be in [0, {max(n_train, 1000)}), got {self.timestep}")
        if not 0.0 < self.alpha_bar <= 1.0:
            raise ConfigError(f"alpha_bar must be in (0, 1], got {self.alpha_bar}")
        if self.null_tokens < 1 or self.context_frames < 0 or self.temporal_heads < 1 or self.depth_scale <= 0:
            raise ConfigError("null_tokens and temporal_heads must be >= 1, context_frames >= 0, depth_scale > 0")

    # -- what Enhancer reads --------------------------------------------------------------------------------
    @property
    def vae_latent_channels(self) -> int:
        return int(self.vae_config.get("latent_channels", 4))

    @property
    def codec_downscale(self) -> int:
        if self.codec == "pixel_unshuffle":
            return self.pixel_unshuffle_factor
        if self.vae_class == "AutoencoderTiny":
            return 2 ** (len(self.vae_config.get("encoder_block_out_channels", (64,) * 4)) - 1)
        return 2 ** (len(self.vae_config.get("block_out_channels", (64,))) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.unet_config["in_channels"])

    @property
    def unet_downscale(self) -> int:
        return 2 ** (len(self.unet_config["block_out_channels"]) - 1)

    @property
    def total_downscale(self) -> int:
        return self.codec_downscale * self.unet_downscale

    @property
    def maca(self) -> bool:
        return False

    @property
    def cond_channels(self) -> int:
        return 2 * int(self.use_mask) + 2 * int(self.use_depth)

    @property
    def condition_dim(self) -> int:
        """D of the null condition: what the UNet's cross-attention (or its encoder_hid_proj) takes."""
        u = self.unet_config
        if u.get("encoder_hid_dim_type") == "text_proj":
            return int(u["encoder_hid_dim"])
        cad = u.get("cross_attention_dim", 1280)
        if isinstance(cad, (list, tuple)):
            if len(set(cad)) != 1:
                raise ConfigError(f"per-block cross_attention_dim {cad} is not supported")
            cad = cad[0]
        return int(cad)


# -- codec --------------------------------------------------------------------------------------------------
class DiffusersVAECodec(Codec):
    """A frozen diffusers AutoencoderKL / AutoencoderTiny. x [B, 3, H, W] in [0, 1] -> z [B, Cz, H/f, W/f]."""

    def __init__(self, vae_class: str, vae_config: dict[str, Any], vae: nn.Module | None = None):
        super().__init__()
        if vae_class not in VAE_CLASSES:
            raise ConfigError(f"vae_class must be one of {VAE_CLASSES}, got {vae_class!r}")
        if vae is None:
            vae = _build(getattr(_diffusers(), vae_class), vae_config)
        self.vae = vae
        self.is_kl = vae_class == "AutoencoderKL"
        cfg = vae.config
        self.latent_channels = int(cfg.latent_channels)
        self.scaling_factor = float(cfg.scaling_factor if cfg.scaling_factor is not None else 1.0)
        self.shift_factor = float(getattr(cfg, "shift_factor", None) or 0.0)
        if self.is_kl:
            self.downscale = 2 ** (len(cfg.block_out_channels) - 1)
        else:
            self.downscale = 2 ** (len(cfg.encoder_block_out_channels) - 1)
            up = int(cfg.upsampling_scaling_factor) ** (len(cfg.decoder_block_out_channels) - 1)
            if up != self.downscale:
                raise ConfigError(f"AutoencoderTiny encoder downscales {self.downscale}x but its decoder upsamples {up}x")

    def encode(self, x: torch.Tensor, return_features: bool = False):
        out = self.vae.encode(x * 2.0 - 1.0)
        z = out.latent_dist.mean if self.is_kl else out.latents  # the mean: deterministic
        z = (z - self.shift_factor) * self.scaling_factor
        return (z, []) if return_features else z

    def decode(self, z: torch.Tensor, skips: list[torch.Tensor] | None = None) -> torch.Tensor:
        x = self.vae.decode(z / self.scaling_factor + self.shift_factor).sample
        return x * 0.5 + 0.5


# -- backbone -----------------------------------------------------------------------------------------------
def _heads(channels: int, most: int) -> int:
    return max(h for h in range(1, most + 1) if channels % h == 0)


def _replace_sample(output, new: torch.Tensor):
    """Put ``new`` where a diffusers sub-module returned its hidden states (tensor, tuple or output object)."""
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple):
        return (new, *output[1:])
    output.sample = new
    return output


def _first_sample(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    return output[0] if isinstance(output, tuple) else output.sample


class DiffusersTemporalUNet(nn.Module):
    """F: z [B, Cz, h, w], cond [B, Cc, h, w] | None, past [B, T, Cz, h, w] | None, mask_lat (unused) -> z_out.

    Same call signature as :class:`~simharmony.models.TemporalUNet`; ``h, w`` must be multiples of
    ``config.unet_downscale``.
    """

    def __init__(self, config: DiffusersEnhancerConfig, unet: nn.Module | None = None):
        super().__init__()
        self.config = config
        if unet is None:
            unet = _build(_diffusers().UNet2DConditionModel, config.unet_config)
        self.unet = unet
        self.register_buffer("null_condition", torch.zeros(1, config.null_tokens, config.condition_dim))
        cz = config.latent_channels
        heads, k = config.temporal_heads, max(config.context_frames, 1)
        self.temporal = nn.ModuleDict()
        self._active: dict[str, Any] | None = None  # per-call inputs the hooks read (past, cond)
        for name, module, ch in self.temporal_sites():
            key = name.replace(".", "_")
            self.temporal[key] = CausalTemporalAttention(ch, cz, _heads(ch, heads), k)
            # a partial of a bound method (not a closure): deepcopy (EMA) rebinds it to the copy
            module.register_forward_hook(functools.partial(self._temporal_hook, key))
        if config.cond_channels:
            self.cond_in = zero_module(nn.Conv2d(config.cond_channels, unet.conv_in.out_channels, 3, padding=1))
            unet.conv_in.register_forward_hook(self._cond_hook)
        else:
            self.cond_in = None

    def temporal_sites(self) -> list[tuple[str, nn.Module, int]]:
        """(name, module, channels) after which a temporal layer runs: each block's attentions, else its last resnet."""
        sites = []
        blocks = [(f"down_blocks.{i}", b) for i, b in enumerate(self.unet.down_blocks)]
        if self.unet.mid_block is not None:
            blocks.append(("mid_block", self.unet.mid_block))
        blocks += [(f"up_blocks.{i}", b) for i, b in enumerate(self.unet.up_blocks)]
        for prefix, block in blocks:
            attns = getattr(block, "attentions", None)
            if attns is not None and len(attns):
                # attention j follows a resnet of the same width (resnet j in down/up blocks, j+1 in the mid block)
                sites += [(f"{prefix}.attentions.{j}", a, int(block.resnets[min(j, len(block.resnets) - 1)].out_channels)) for j, a in enumerate(attns)]
            else:
                last = block.resnets[-1]
                sites.append((f"{prefix}.resnets.{len(block.resnets) - 1}", last, int(last.out_channels)))
        return sites

    def _temporal_hook(self, key: str, module: nn.Module, args, output):
        past = self._active["past"] if self._active is not None else None
        return _replace_sample(output, self.temporal[key](_first_sample(output), past))

    def _cond_hook(self, module, args, output):
        cond = self._active["cond"] if self._active is not None else None
        return output if cond is None else output + self.cond_in(cond.to(output.dtype))

    def forward(
        self,
        z: torch.Tensor,
        cond: torch.Tensor | None = None,
        past: torch.Tensor | None = None,
        mask_lat: torch.Tensor | None = None,
    ) -> torch.Tensor:
        cfg = self.config
        if past is not None:
            past = past[:, : cfg.context_frames]  # most recent first: keep the newest K
            if past.shape[1] == 0:
                past = None
        null = self.null_condition.to(z.dtype).expand(z.shape[0], -1, -1)
        self._active = {"past": past, "cond": cond}
        try:
            pred = self.unet(z, cfg.timestep, encoder_hidden_states=null, return_dict=False)[0]
        finally:
            self._active = None
        if cfg.output == "residual":
            return z + pred
        if cfg.prediction_type == "sample":
            return pred
        a = cfg.alpha_bar
        if cfg.prediction_type == "epsilon":
            return (z - math.sqrt(1.0 - a) * pred) / math.sqrt(a)
        return math.sqrt(a) * z - math.sqrt(1.0 - a) * pred  # v_prediction

    def temporal_layers(self) -> list[CausalTemporalAttention]:
        return list(self.temporal.values())


# -- the enhancer -------------------------------------------------------------------------------------------
class DiffusersEnhancer(Enhancer):
    """:class:`~simharmony.models.Enhancer` with a frozen diffusers VAE (or pixel-unshuffle) and a converted UNet.

    Same ``forward(frame, past_latents, mask, depth) -> (out, latent_out)``, ``encode``/``decode`` and
    ``save_pretrained``/``from_pretrained`` as the compact model; build one with :func:`convert_diffusers`.
    """

    def __init__(self, config: DiffusersEnhancerConfig, unet: nn.Module | None = None, vae: nn.Module | None = None):
        nn.Module.__init__(self)  # Enhancer.__init__ builds the compact codec/backbone; we build our own
        if not isinstance(config, DiffusersEnhancerConfig):
            raise ConfigError(f"config must be a DiffusersEnhancerConfig, got {type(config).__name__}")
        self.config = config
        if config.codec == "diffusers_vae":
            self.codec = DiffusersVAECodec(config.vae_class, config.vae_config, vae)
        else:
            self.codec = PixelUnshuffleCodec(config.pixel_unshuffle_factor)
        if self.codec.latent_channels != config.latent_channels:
            raise ShapeMismatchError(f"codec gives {self.codec.latent_channels} latent channels, the UNet takes {config.latent_channels}")
        self.codec.freeze()
        self.backbone = DiffusersTemporalUNet(config, unet)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``folder/config.yaml`` (with the diffusers configs) and ``folder/model.safetensors``."""
        folder = Path(folder)
        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        save_tensors(folder / WEIGHTS_NAME, state, metadata={"format": FORMAT, "version": str(VERSION)})
        save_yaml(folder / CONFIG_NAME, {"format": FORMAT, "version": VERSION, "config": self.config.to_dict()})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, map_location: str | torch.device = "cpu") -> DiffusersEnhancer:
        folder = Path(folder)
        if not folder.is_dir():
            raise MissingFileError(f"enhancer folder not found: {folder}")
        meta = load_yaml(folder / CONFIG_NAME)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ConfigError(f"{folder / CONFIG_NAME} is not a converted diffusers enhancer config (expected format: {FORMAT})")
        if meta.get("version") != VERSION:
            raise ConfigError(f"{folder / CONFIG_NAME}: unsupported version {meta.get('version')!r}, expected {VERSION}")
        model = cls(DiffusersEnhancerConfig.from_dict(meta.get("config")))
        load_checked_state(model, folder / WEIGHTS_NAME, FORMAT)
        return model.to(map_location).eval()


register_format(FORMAT, DiffusersEnhancer.from_pretrained)


# -- conversion ---------------------------------------------------------------------------------------------
def _read_model_config(folder: str | os.PathLike, expected: tuple[str, ...], what: str) -> tuple[Path, dict]:
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"{what} folder not found: {folder}")
    path = folder / "config.json"
    if not path.is_file():
        raise MissingFileError(f"{path} not found: expected a diffusers {what} folder (config.json + weights), as written by save_pretrained")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e
    name = cfg.get("_class_name") if isinstance(cfg, dict) else None
    if name not in expected:
        raise ConfigError(f"{folder} holds a {name!r}, expected {' or '.join(expected)}")
    return folder, cfg


def _plain(value: Any) -> Any:
    """JSON-like config values to YAML-safe plain types (tuples -> lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _public(config) -> dict[str, Any]:
    return {k: _plain(v) for k, v in dict(config).items() if not k.startswith("_")}


def alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012, beta_schedule: str = "scaled_linear") -> torch.Tensor:
    """The training noise schedule's cumulative alpha products [N] (float64); defaults are Stable Diffusion's."""
    n = num_train_timesteps
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = torch.tensor([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)], dtype=torch.float64)
    else:
        raise ConfigError(f"beta_schedule {beta_schedule!r} not supported (linear, scaled_linear, squaredcos_cap_v2)")
    return torch.cumprod(1.0 - betas, dim=0)


def null_text_embedding(text_encoder_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike) -> torch.Tensor:
    """The empty prompt's embedding [1, L, D] from a local text encoder + tokenizer (transformers), computed once."""
    tf = _transformers()
    for folder, what in ((text_encoder_dir, "text encoder"), (tokenizer_dir, "tokenizer")):
        if not Path(folder).is_dir():
            raise MissingFileError(f"{what} folder not found: {folder}")
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        encoder = tf.AutoModel.from_pretrained(str(text_encoder_dir), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ConfigError(f"could not load the text encoder/tokenizer from {text_encoder_dir} / {tokenizer_dir}: {e}") from e
    if hasattr(encoder, "get_encoder") and getattr(encoder.config, "is_encoder_decoder", False):
        encoder = encoder.get_encoder()  # T5-style: only the encoder stack embeds the prompt
    length = min(int(getattr(tokenizer, "model_max_length", 77) or 77), 512)
    ids = tokenizer([""], padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    with torch.inference_mode():
        emb = encoder.eval()(input_ids=ids).last_hidden_state
    return emb.detach().float().clone()


def convert_diffusers(
    unet_dir: str | os.PathLike,
    vae_dir: str | os.PathLike | None = None,
    *,
    text_encoder_dir: str | os.PathLike | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    scheduler_dir: str | os.PathLike | None = None,
    timestep: int = 999,
    context_frames: int = 4,
    output: Literal["residual", "x0"] = "residual",
    temporal_heads: int = 8,
    use_mask: bool = False,
    use_depth: bool = False,
) -> DiffusersEnhancer:
    """Convert local diffusers folders into a single-step temporal :class:`DiffusersEnhancer`.

    unet_dir: a UNet2DConditionModel folder. vae_dir: an AutoencoderKL/AutoencoderTiny folder; when None, a
    sibling ``../vae`` of a pipeline layout is used if present, else a pixel-unshuffle codec when the UNet
    takes 3*f*f channels. text_encoder_dir + tokenizer_dir (optional, both or neither): the null condition
    is the empty prompt's embedding instead of zeros. scheduler_dir (``output="x0"``): its
    scheduler_config.json gives prediction_type and the beta schedule (sibling ``../scheduler`` if present,
    else Stable Diffusion's defaults). Nothing is downloaded (``local_files_only=True``).
    """
    dif = _diffusers()
    unet_dir, _ = _read_model_config(unet_dir, ("UNet2DConditionModel",), "UNet2DConditionModel")
    if vae_dir is None and (unet_dir.parent / "vae" / "config.json").is_file():
        vae_dir = unet_dir.parent / "vae"
    if (text_encoder_dir is None) != (tokenizer_dir is None):
        raise ConfigError("pass both text_encoder_dir and tokenizer_dir, or neither (zero null condition)")
    unet = dif.UNet2DConditionModel.from_pretrained(str(unet_dir), local_files_only=True)
    kwargs: dict[str, Any] = {}
    vae = None
    if vae_dir is not None:
        vae_dir, vae_json = _read_model_config(vae_dir, VAE_CLASSES, "VAE")
        vae = getattr(dif, vae_json["_class_name"]).from_pretrained(str(vae_dir), local_files_only=True)
        if int(vae.config.latent_channels) != int(unet.config.in_channels):
            raise ShapeMismatchError(f"VAE {vae_dir} has {vae.config.latent_channels} latent channels but UNet {unet_dir} takes {unet.config.in_channels}")
        kwargs.update(codec="diffusers_vae", vae_class=vae_json["_class_name"], vae_config=_public(vae.config))
    else:
        f = math.isqrt(int(unet.config.in_channels) // 3)
        if 3 * f * f != unet.config.in_channels:
            raise MissingFileError(f"no VAE given and none at {unet_dir.parent / 'vae'}; the UNet takes {unet.config.in_channels} channels, so pass vae_dir (--vae)")
        kwargs.update(codec="pixel_unshuffle", pixel_unshuffle_factor=f)
    if output == "x0":
        sched = {}
        if scheduler_dir is None and (unet_dir.parent / "scheduler" / "scheduler_config.json").is_file():
            scheduler_dir = unet_dir.parent / "scheduler"
        if scheduler_dir is not None:
            path = Path(scheduler_dir) / "scheduler_config.json"
            if not path.is_file():
                raise MissingFileError(f"{path} not found")
            sched = json.loads(path.read_text())
        ab = alphas_cumprod(int(sched.get("num_train_timesteps", 1000)), float(sched.get("beta_start", 0.00085)), float(sched.get("beta_end", 0.012)), sched.get("beta_schedule", "scaled_linear"))
        if not 0 <= timestep < len(ab):
            raise ConfigError(f"timestep must be in [0, {len(ab)}), got {timestep}")
        kwargs.update(prediction_type=sched.get("prediction_type", "epsilon"), alpha_bar=float(ab[timestep]))
    null = None
    if text_encoder_dir is not None:
        null = null_text_embedding(text_encoder_dir, tokenizer_dir)
        kwargs.update(null_tokens=int(null.shape[1]), null_source="text_encoder")
    config = DiffusersEnhancerConfig(
        unet_config=_public(unet.config),
        timestep=timestep,
        context_frames=context_frames,
        output=output,
        temporal_heads=temporal_heads,
        use_mask=use_mask,
        use_depth=use_depth,
        **kwargs,
    )
    if null is not None and null.shape[-1] != config.condition_dim:
        raise ShapeMismatchError(f"text encoder gives {null.shape[-1]}-d embeddings, the UNet's cross-attention takes {config.condition_dim}")
    model = DiffusersEnhancer(config, unet=unet, vae=vae)
    with torch.no_grad():
        if null is not None:
            model.backbone.null_condition.copy_(null)
        if output == "residual":
            zero_module(model.backbone.unet.conv_out)  # converted model = identity in latent space
    return model.eval()


# -- CLI ----------------------------------------------------------------------------------------------------
def _cmd_convert(args: argparse.Namespace) -> int:
    model = convert_diffusers(
        args.unet,
        args.vae,
        text_encoder_dir=args.text_encoder,
        tokenizer_dir=args.tokenizer,
        scheduler_dir=args.scheduler,
        timestep=args.timestep,
        context_frames=args.context_frames,
        output=args.output,
        use_mask=args.use_mask,
        use_depth=args.use_depth,
    )
    out = model.save_pretrained(args.out)
    cfg = model.config
    print(
        f"converted {args.unet} ({cfg.codec}{'/' + cfg.vae_class if cfg.codec == 'diffusers_vae' else ''}, "
        f"{cfg.latent_channels} latent channels, timestep {cfg.timestep}, output {cfg.output}, null {cfg.null_source} "
        f"[1, {cfg.null_tokens}, {cfg.condition_dim}], {len(model.temporal_layers())} temporal layers, K={cfg.context_frames}, "
        f"{model.num_parameters() / 1e6:.2f} M parameters) -> {out}"
    )
    return 0


def add_cli(subparsers) -> argparse.ArgumentParser:
    """``simharmony convert-diffusers``: local diffusers folders -> a single-step enhancer folder."""
    from simharmony.utils.checks import arg_int

    p = subparsers.add_parser("convert-diffusers", help="convert a local diffusers UNet (+VAE) into a single-step temporal enhancer")
    p.add_argument("--unet", required=True, help="UNet2DConditionModel folder (config.json + weights)")
    p.add_argument("--vae", default=None, help="AutoencoderKL/AutoencoderTiny folder (default: ../vae next to the UNet)")
    p.add_argument("--text-encoder", default=None, help="text encoder folder: null condition = empty-prompt embedding (default: zeros)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (with --text-encoder)")
    p.add_argument("--scheduler", default=None, help="scheduler folder (prediction type and betas for --output x0)")
    p.add_argument("--out", required=True, help="output folder (config.yaml + model.safetensors)")
    p.add_argument("--timestep", type=arg_int(0), default=999, help="the fixed timestep (default 999)")
    p.add_argument("--context-frames", type=arg_int(0), default=4, help="K past latents the temporal layers attend to")
    p.add_argument("--output", choices=("residual", "x0"), default="residual", help="residual (zero conv_out, identity at init) or x0 from the prediction")
    p.add_argument("--use-mask", action="store_true", help="add a zero-initialised inserted-asset mask input")
    p.add_argument("--use-depth", action="store_true", help="add a zero-initialised depth input")
    p.set_defaults(func=_cmd_convert)
    return p


__all__ = [
    "DiffusersEnhancer",
    "DiffusersEnhancerConfig",
    "DiffusersTemporalUNet",
    "DiffusersVAECodec",
    "add_cli",
    "alphas_cumprod",
    "convert_diffusers",
    "null_text_embedding",
]
