"""The enhancer I_hat_t = D(F(E(I_t), past)): frozen codec + temporal UNet backbone, and its file format.

Usage::

    model = Enhancer(EnhancerConfig())
    out, z = model(frame, past_latents=[z_prev1, z_prev2])  # frame [B, 3, H, W] in [0, 1]
    model.save_pretrained("weights/enhancer")
    model = Enhancer.from_pretrained("weights/enhancer")

Latents returned by :meth:`Enhancer.forward` / :meth:`Enhancer.encode` are at the *padded* latent size
(H and W reflect-padded up to a multiple of ``config.total_downscale``), which is what ``past_latents``
must be; images are cropped back to H x W.

Folder format: ``config.yaml`` ({format, version, config}) and ``model.safetensors`` (all parameters and
buffers, metadata format/version). Wrong, truncated or mismatched files raise CorruptFileError/ConfigError.
Other model families register their folder format with :func:`register_format` (the converted diffusers
model does), so ``Enhancer.from_pretrained`` and the Harmonizer open any of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from simharmony.errors import ConfigError, CorruptFileError, InvalidInputError, MissingFileError, ShapeMismatchError
from simharmony.models.backbone import EnhancerConfig, TemporalUNet
from simharmony.models.codec import Codec, build_codec
from simharmony.models.layers import ShadowHead
from simharmony.utils.checks import resolve_device
from simharmony.utils.io import load_tensors, load_yaml, save_tensors, save_yaml, tensor_shapes

FORMAT = "simharmony-enhancer"
VERSION = 1
CONFIG_NAME = "config.yaml"
WEIGHTS_NAME = "model.safetensors"

# Other folder formats Enhancer.from_pretrained can open (e.g. the converted diffusers model): format -> loader.
_FORMAT_LOADERS: dict[str, Callable[[Path, str | torch.device], Enhancer]] = {}


def register_format(name: str, loader: Callable[[Path, str | torch.device], Enhancer]) -> None:
    """Let :meth:`Enhancer.from_pretrained` (and so the Harmonizer) open folders whose config says ``format: name``."""
    _FORMAT_LOADERS[name] = loader


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad x [B, C, H, W] on the right/bottom to multiples of ``multiple``; reflect when possible."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (0, 0)
    # reflect needs pad < size; tiny images fall back to replicate
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (ph, pw)


class Enhancer(nn.Module):
    """Codec (frozen) + :class:`TemporalUNet`. Deterministic; a fresh model with the lossless codec is the identity."""

    def __init__(self, config: EnhancerConfig | None = None, codec: Codec | None = None):
        super().__init__()
        self.config = config = config or EnhancerConfig()
        self.codec = codec if codec is not None else build_codec(config.codec, config.codec_downscale, config.ae_widths, config.ae_latent_channels, config.detail_skips)
        if self.codec.downscale != config.codec_downscale or self.codec.latent_channels != config.latent_channels:
            raise ConfigError(
                f"codec (downscale {self.codec.downscale}, {self.codec.latent_channels} channels) does not match config "
                f"(downscale {config.codec_downscale}, {config.latent_channels} channels)"
            )
        self.codec.freeze()
        self.backbone = TemporalUNet(config)
        self.shadow_head = ShadowHead(config.latent_channels) if getattr(config, "shadow_head", False) else None

    # -- codec side ---------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Enhancer:
        super().train(mode)
        self.codec.eval()  # the codec stays frozen
        return self

    @property
    def context_frames(self) -> int:
        return self.config.context_frames

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        m = self.config.total_downscale
        return height + (-height) % m, width + (-width) % m

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        ph, pw = self.padded_size(height, width)
        return ph // self.config.codec_downscale, pw // self.config.codec_downscale

    def encode(self, frame: torch.Tensor) -> torch.Tensor:
        """frame [B, 3, H, W] in [0, 1] -> latent [B, Cz, h, w] of the padded frame."""
        self._check_frame(frame)
        x, _ = _pad_to_multiple(frame, self.config.total_downscale)
        return self.codec.encode(x)

    def decode(self, latent: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """latent [B, Cz, h, w] -> image [B, 3, H, W] (cropped to ``size`` when given; not clamped)."""
        x = self.codec.decode(latent)
        return x if size is None else x[..., : size[0], : size[1]]

    # -- full model ---------------------------------------------------------------------------------------
    def forward(
        self,
        frame: torch.Tensor,
        past_latents: list[torch.Tensor] | torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        depth: torch.Tensor | None = None,
        past_kv: list[list[torch.Tensor]] | None = None,
        mask_given: torch.Tensor | None = None,
        depth_given: torch.Tensor | None = None,
        shadow_hint: torch.Tensor | None = None,
        shadow_hint_given: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Enhance one frame per batch item.

        frame [B, 3, H, W] in [0, 1]; past_latents: list of [B, Cz, h, w] (most recent first, 0..K; older
        ones beyond K are ignored) or a tensor [B, T, Cz, h, w]; mask [B, 1, H, W] in [0, 1] or None;
        depth [B, 1, H, W] (z-depth, inf = no hit) or None. mask_given [B] bool: which items' masks count
        (the others are treated exactly as mask=None, so one batch can mix items with and without a mask);
        None = all of them. depth_given [B] bool: the same for depth (items without geometry, e.g. real photos).
        shadow_hint [B, 1, H, W] in [0, 1] or None: where inserted objects' cast shadows fall
        (the simulator's shadow mapping; models built with ``use_shadow_hint``), shadow_hint_given [B]
        as for the mask.
        past_kv: instead of ``past_latents``, per temporal layer a list over past frames (most recent first)
        of their :meth:`context_features` entries (what a stream caches: K past frames cost one projection each).
        Returns (out [B, 3, H, W] clamped to [0, 1], latent_out [B, Cz, h, w] at the padded latent size).
        """
        cfg = self.config
        self._check_frame(frame)
        b, _, height, width = frame.shape
        x, _ = _pad_to_multiple(frame, cfg.total_downscale)
        z, feats = self.codec.encode(x, return_features=True)
        past = self._stack_past(past_latents, z)
        cond, mask_lat = self._conditions(b, height, width, z, {"mask": (mask, mask_given), "depth": (depth, depth_given),
                                                               "shadow_hint": (shadow_hint, shadow_hint_given)})
        if past_kv is not None:
            z_out = self.backbone(z, cond, None, mask_lat, past_kv=past_kv)
        else:
            z_out = self.backbone(z, cond, past, mask_lat)
        out = self.codec.decode(z_out, skips=feats)[..., :height, :width]
        if getattr(self, "shadow_head", None) is not None and shadow_hint is not None:
            # the shadow is drawn on the image only: the context latents stay shadow-free, and every frame's
            # shadow comes from its own hint (geometry, so it is as steady as the hint)
            hint = shadow_hint if shadow_hint.ndim == 4 else shadow_hint[:, None]
            if shadow_hint_given is not None:
                hint = hint * shadow_hint_given.to(hint.dtype)[:, None, None, None]
            hint_lat = cond[:, -2:-1]  # the hint at latent size (cond ends with hint, flag)
            out = ShadowHead.apply(out, hint.to(out.dtype), self.shadow_head(z, hint_lat))
        if cfg.output_deadzone > 0 and not self.training:
            # Soft-threshold the change: sub-level residual noise on pixels that need no fix (most pixels
            # of a harmonisation frame) is dropped; not while training, where it would zero small gradients.
            out = frame + F.softshrink(out - frame, cfg.output_deadzone)
        return out.clamp(0.0, 1.0), z_out

    def context_features(self, latent: torch.Tensor) -> list[torch.Tensor] | None:
        """Per temporal layer, what it reads from the past latent ``latent [B, Cz, h, w]`` (see
        ``TemporalUNet.context_features``); None when the backbone reads raw latents (diffusers UNets)."""
        fn = getattr(self.backbone, "context_features", None)
        return fn(latent) if fn is not None and self.context_frames > 0 else None

    def _check_frame(self, frame: torch.Tensor) -> None:
        if not isinstance(frame, torch.Tensor) or frame.ndim != 4 or frame.shape[1] != 3:
            raise InvalidInputError(f"frame must be a tensor [B, 3, H, W], got {getattr(frame, 'shape', type(frame))}")
        if not frame.is_floating_point():
            raise InvalidInputError(f"frame must be floating point in [0, 1], got {frame.dtype}")

    def _stack_past(self, past_latents, z: torch.Tensor) -> torch.Tensor | None:
        if past_latents is None:
            return None
        if isinstance(past_latents, torch.Tensor):
            if past_latents.ndim != 5:
                raise ShapeMismatchError(f"past_latents tensor must be [B, T, Cz, h, w], got {tuple(past_latents.shape)}")
            past = past_latents
        else:
            past_latents = list(past_latents)[: self.config.context_frames]
            if not past_latents:
                return None
            for i, p in enumerate(past_latents):
                if not isinstance(p, torch.Tensor) or p.shape != z.shape:
                    raise ShapeMismatchError(
                        f"past latent {i} has shape {tuple(getattr(p, 'shape', ()))}, expected {tuple(z.shape)} "
                        "(latents of the padded frame, as returned by forward/encode)"
                    )
            past = torch.stack(past_latents, dim=1)
        if past.shape[0] != z.shape[0] or past.shape[2:] != z.shape[1:]:
            raise ShapeMismatchError(f"past latents {tuple(past.shape)} do not match the current latent {tuple(z.shape)}")
        return past[:, : self.config.context_frames].to(z.dtype)

    def _conditions(self, b, height, width, z, inputs: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]):
        """Mask, depth and shadow hint (value, presence flag) at latent size, in ``cond_channels`` order.
        ``inputs`` {name: (value [B, 1, H, W] | None, given [B] bool | None)}. Returns (cond [B, Cc, h, w] | None,
        mask_lat [B, 1, h, w] | None)."""
        cfg = self.config
        used = {"mask": cfg.use_mask, "depth": cfg.use_depth, "shadow_hint": getattr(cfg, "use_shadow_hint", False)}
        for name, (value, given) in inputs.items():
            if value is not None and not used[name]:
                raise InvalidInputError(f"this model was built with use_{name}=False; pass {name}=None")
            if given is None:
                continue
            if value is None:
                raise InvalidInputError(f"{name}_given needs a {name} (it says which items' {name}s count)")
            if given.shape != (b,) or given.dtype != torch.bool:
                raise ShapeMismatchError(f"{name}_given must be a bool tensor of shape {(b,)}, got "
                                         f"{given.dtype} {tuple(given.shape)}")
        h, w = z.shape[-2:]
        chans = []
        mask_lat = None
        for name, (value, given) in inputs.items():
            if not used[name]:
                continue
            if value is None:
                chans += [z.new_zeros(b, 1, h, w), z.new_zeros(b, 1, h, w)]
                continue
            if value.ndim == 3:
                value = value[:, None]
            if value.shape != (b, 1, height, width):
                raise ShapeMismatchError(f"{name} has shape {tuple(value.shape)}, expected {(b, 1, height, width)}")
            value = value.to(z.dtype)
            if name == "depth":
                if given is not None:  # items without geometry may hold anything (inf): not read
                    value = torch.where(given[:, None, None, None], value, torch.ones_like(value))
                if torch.isnan(value).any() or (value < 0).any():
                    raise InvalidInputError("depth must be >= 0 (inf = no hit) and not NaN")
                value = cfg.depth_scale / (cfg.depth_scale + value)  # inf -> 0
            elif not torch.isfinite(value).all():
                raise InvalidInputError(f"{name} must be finite")
            value, _ = _pad_to_multiple(value, cfg.total_downscale)
            lat = F.adaptive_avg_pool2d(value, (h, w))  # area average: soft coverage per latent cell
            flag = torch.ones_like(lat)
            if given is not None:  # absent items: (0, 0) as for None
                flag = flag * given.to(lat.dtype)[:, None, None, None]
                lat = lat * flag
            if name == "mask":
                mask_lat = lat
            chans += [lat, flag]
        return (torch.cat(chans, dim=1) if chans else None), mask_lat

    # -- bookkeeping --------------------------------------------------------------------------------------
    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def temporal_layers(self):
        return self.backbone.temporal_layers()

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``folder/config.yaml`` and ``folder/model.safetensors`` (atomically)."""
        folder = Path(folder)
        save_tensors(folder / WEIGHTS_NAME, self.state_dict(), metadata={"format": FORMAT, "version": str(VERSION)})
        save_yaml(folder / CONFIG_NAME, {"format": FORMAT, "version": VERSION, "config": self.config.to_dict()})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, map_location: str | torch.device = "cpu") -> Enhancer:
        folder = Path(folder)
        if not folder.is_dir():
            raise MissingFileError(f"enhancer folder not found: {folder}")
        meta = load_yaml(folder / CONFIG_NAME)
        fmt = meta.get("format") if isinstance(meta, dict) else None
        if fmt != FORMAT and fmt in _FORMAT_LOADERS:
            return _FORMAT_LOADERS[fmt](folder, map_location)
        if fmt != FORMAT:
            raise ConfigError(f"{folder / CONFIG_NAME} is not an enhancer config (expected format: {FORMAT})")
        if meta.get("version") != VERSION:
            raise ConfigError(f"{folder / CONFIG_NAME}: unsupported version {meta.get('version')!r}, expected {VERSION}")
        config = EnhancerConfig.from_dict(meta.get("config"))
        map_location = resolve_device(map_location, "map_location")
        with torch.device("meta"):  # shapes only: a config that disagrees with its weights costs no memory
            shapes = {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}
        check_state_shapes(folder / WEIGHTS_NAME, shapes)
        model = cls(config)
        load_checked_state(model, folder / WEIGHTS_NAME, FORMAT)
        return model.to(map_location).eval()


def check_state_shapes(path: Path, expected: dict[str, tuple[int, ...]]) -> None:
    """Compare the tensor names and shapes in the header of safetensors ``path`` with ``expected`` (a model's
    state dict shapes) before anything is loaded or built: CorruptFileError naming the mismatches."""
    shapes = tensor_shapes(path)
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if expected[k] != shapes[k])
    if missing or unexpected or wrong:
        raise CorruptFileError(
            f"{path} does not match its config: missing {_short(missing)}, unexpected "
            f"{_short(unexpected)}, wrong shape {_short([f'{k} {shapes[k]} != {expected[k]}' for k in wrong])}"
        )


def load_checked_state(model: nn.Module, path: Path, fmt: str) -> None:
    """Load ``path`` (safetensors with metadata format ``fmt``) into ``model`` strictly: wrong, missing,
    extra, mis-shaped or non-finite tensors raise CorruptFileError naming them."""
    tensors, tmeta = load_tensors(path)
    if tmeta.get("format") != fmt:
        raise CorruptFileError(f"{path} is not an enhancer weights file (metadata format={tmeta.get('format')!r}, expected {fmt!r})")
    check_state_shapes(path, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    bad = sorted(k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if bad:
        raise CorruptFileError(f"{path} has non-finite values in {_short(bad)}")
    model.load_state_dict(tensors, strict=True)


def _short(items: list[str], n: int = 5) -> str:
    if not items:
        return "none"
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return "[" + ", ".join(items[:n]) + "]" + more


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["Enhancer", "EnhancerConfig", "count_parameters"]
