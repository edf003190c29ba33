"""nerfstudio model with a harmonizer: splatfacto plus a "Harmonizer" toggle and a "harmonized" output.

Needs nerfstudio (the ``nerfstudio`` extra; nerfstudio 1.1.5 is what this is written and tested against).

- :class:`SplatfactoHarmonizedModel` is a ``SplatfactoModel`` whose ``get_outputs_for_camera`` (what the
  viewer and evaluation call) adds ``"harmonized"`` [H, W, 3]. Its ``ViewerCheckbox("Harmonizer")`` and
  ``ViewerSlider("Harmonizer strength")`` are picked up by nerfstudio's viewer ("Custom Elements" in the
  control panel); changing them re-renders. Pick "harmonized" in the viewer's "Output type" dropdown.
  The Gaussians and checkpoint format are splatfacto's: existing splatfacto checkpoints load unchanged.
- :func:`attach_harmonizer` turns an already built ``SplatfactoModel`` (e.g. from nerfstudio's
  ``eval_setup`` on an existing run) into one, in place. ``simharmony ns-view`` uses it.
- CPU: splatfacto renders with gsplat's CUDA kernels (``.cuda()`` is hard-coded in ``get_outputs``).
  When the model is not on CUDA, this model renders with :func:`scene_tools.rasterize.rasterize`
  (this project's numba CPU rasterizer, gsplat's call shape; "classic" mode, eval only). Training needs
  CUDA. "antialiased" checkpoints render in classic mode on CPU (slightly sharper), with a warning.
- nerfstudio builds torchmetrics' LPIPS (AlexNet weights from the internet) when a splatfacto model is
  constructed. :func:`deferred_lpips` postpones that to the first evaluation, so the viewer works offline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.scene_box import OrientedBox
from nerfstudio.models.splatfacto import SplatfactoModel, SplatfactoModelConfig
from nerfstudio.viewer.viewer_elements import ViewerCheckbox, ViewerSlider

from simharmony.errors import BackendUnavailableError, InvalidInputError
from simharmony_nerfstudio.outputs import HarmonizedOutputs

log = logging.getLogger("simharmony_nerfstudio")

OUTPUT_NAME = "harmonized"


# ---------------------------------------------------------------------------------------------- LPIPS
class _DeferredLPIPS(torch.nn.Module):
    """Stands in for torchmetrics' LPIPS until it is first called (then builds it, which may download)."""

    def __init__(self, factory, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self._factory, self._args, self._kwargs = factory, args, kwargs
        self._metric: torch.nn.Module | None = None

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self._metric is None:
            self._metric = self._factory(*self._args, **self._kwargs).to(inputs[0].device)
        return self._metric(*inputs)


_lpips_lock = threading.RLock()  # re-entrant: a model built inside an active block enters it again
_lpips_depth = 0


@contextlib.contextmanager
def deferred_lpips(active: bool = True) -> Iterator[None]:
    """While active, models built in this block get an LPIPS metric that is only constructed when used."""
    global _lpips_depth
    if not active:
        yield
        return
    import torchmetrics.image.lpip as lpip_mod

    with _lpips_lock:
        real = lpip_mod.LearnedPerceptualImagePatchSimilarity
        if _lpips_depth == 0:
            lpip_mod.LearnedPerceptualImagePatchSimilarity = lambda *a, **k: _DeferredLPIPS(real, *a, **k)
        _lpips_depth += 1
        try:
            yield
        finally:
            _lpips_depth -= 1
            if _lpips_depth == 0:
                lpip_mod.LearnedPerceptualImagePatchSimilarity = real


# ---------------------------------------------------------------------------------------------- config
@dataclass
class SplatfactoHarmonizedModelConfig(SplatfactoModelConfig):
    """splatfacto's config plus the harmonizer's settings (nerfstudio config, written by nerfstudio)."""

    _target: type = field(default_factory=lambda: SplatfactoHarmonizedModel)
    harmonizer: str = "default"
    """Enhancer folder (Enhancer.save_pretrained), "default" (weights/enhancer; untrained identity with a
    warning while missing) or "untrained"."""
    harmonizer_enabled: bool = True
    """Initial state of the viewer's "Harmonizer" checkbox."""
    harmonizer_strength: float = 1.0
    """Initial blend: rgb + strength * (enhanced - rgb)."""
    harmonizer_use_depth: bool = False
    """Pass splatfacto's depth to the enhancer (scene units; the enhancer was trained on metres)."""
    cpu_rasterizer: bool = True
    """Render with scene_tools' CPU rasterizer when the model is not on CUDA (eval/viewer only)."""
    defer_lpips: bool = True
    """Build the LPIPS eval metric on first use instead of at construction (keeps the viewer offline)."""


def harmonized_model_config(base: SplatfactoModelConfig, **overrides: Any) -> SplatfactoHarmonizedModelConfig:
    """A :class:`SplatfactoHarmonizedModelConfig` with every splatfacto field of ``base`` kept."""
    if not isinstance(base, SplatfactoModelConfig):
        raise InvalidInputError(f"expected a SplatfactoModelConfig, got {type(base).__name__}")
    values = {f.name: getattr(base, f.name) for f in dataclasses.fields(SplatfactoModelConfig)
              if f.init and f.name != "_target"}
    if isinstance(base, SplatfactoHarmonizedModelConfig):
        values.update({f.name: getattr(base, f.name) for f in dataclasses.fields(SplatfactoHarmonizedModelConfig)
                       if f.init and f.name != "_target" and f.name not in values})
    values.update(overrides)
    return SplatfactoHarmonizedModelConfig(**values)


def harmonized_trainer_config(config: Any, **overrides: Any) -> Any:
    """A copy of a splatfacto ``TrainerConfig`` whose model is :class:`SplatfactoHarmonizedModelConfig`.

    Use it to load an existing splatfacto run (``config.yml``) with the harmonizer: the checkpoint is
    unchanged. The method name becomes ``splatfacto-harmonized``.
    """
    import copy

    model_cfg = getattr(getattr(config, "pipeline", None), "model", None)
    if not isinstance(model_cfg, SplatfactoModelConfig):
        raise InvalidInputError(f"not a splatfacto run: pipeline.model is {type(model_cfg).__name__}")
    new = copy.deepcopy(config)
    new.pipeline.model = harmonized_model_config(model_cfg, **overrides)
    new.method_name = "splatfacto-harmonized"
    return new


# ---------------------------------------------------------------------------------------------- CPU path
def _gl_to_viewmat(c2w: torch.Tensor) -> torch.Tensor:
    """nerfstudio camera-to-world [C, 3, 4] (OpenGL: x right, y up, looking down -z) -> world-to-camera
    [C, 4, 4] in OpenCV convention (x right, y down, z forward), as gsplat and scene_tools expect."""
    C = c2w.shape[0]
    m = torch.zeros(C, 4, 4, dtype=c2w.dtype, device=c2w.device)
    m[:, :3, :4] = c2w[:, :3, :4]
    m[:, 3, 3] = 1.0
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=c2w.dtype, device=c2w.device))
    return torch.linalg.inv(m @ flip)  # OpenCV camera axes are OpenGL's with y and z negated


_warned_antialiased = False


def render_splatfacto_cpu(model: SplatfactoModel, camera: Cameras) -> dict[str, torch.Tensor]:
    """splatfacto's eval outputs rendered with scene_tools' CPU rasterizer.

    camera: one nerfstudio camera. Returns {"rgb" [H, W, 3], "depth" [H, W, 1] (expected depth; the
    farthest value where nothing was hit, as splatfacto does), "accumulation" [H, W, 1], "background"
    [H, W, 3]}.
    """
    global _warned_antialiased
    from scene_tools.rasterize import rasterize

    if model.training:
        raise BackendUnavailableError("training splatfacto needs CUDA (gsplat); the CPU rasterizer renders eval/viewer "
                                      "frames only")
    if camera.shape[0] != 1:
        raise InvalidInputError(f"render one camera at a time, got {camera.shape[0]}")
    if model.config.rasterize_mode == "antialiased" and not _warned_antialiased:
        log.warning("rasterize_mode='antialiased' is rendered in classic mode by the CPU rasterizer")
        _warned_antialiased = True
    W, H = int(camera.width.item()), int(camera.height.item())
    background = model._get_background_color().float()
    sel = None
    if model.crop_box is not None:
        sel = model.crop_box.within(model.means).squeeze()
        if int(sel.sum()) == 0:
            return model.get_empty_outputs(W, H, background)

    def take(t: torch.Tensor) -> torch.Tensor:
        return t if sel is None else t[sel]

    with torch.no_grad():
        means, quats = take(model.means).float(), take(model.quats).float()
        scales = torch.exp(take(model.scales)).float()
        opacities = torch.sigmoid(take(model.opacities)).squeeze(-1).float()
        if model.config.sh_degree > 0:
            colors = torch.cat([take(model.features_dc)[:, None, :], take(model.features_rest)], dim=1).float()
            sh_degree = min(model.step // model.config.sh_degree_interval, model.config.sh_degree)
        else:
            colors, sh_degree = torch.sigmoid(take(model.features_dc)).float(), None
        viewmats = _gl_to_viewmat(camera.camera_to_worlds.float().cpu())
        Ks = camera.get_intrinsics_matrices().float().cpu()
        dev = means.device
        render, alpha, _ = rasterize(
            means.cpu(), quats.cpu(), scales.cpu(), opacities.cpu(), colors.cpu(), viewmats, Ks, W, H,
            near_plane=0.01, far_plane=1e10, sh_degree=sh_degree, render_mode="RGB+ED", backend="cpu",
        )
        render, alpha = render.to(dev), alpha.to(dev)
        bg = background.to(dev)
        rgb = (render[0, ..., :3] + (1.0 - alpha[0]) * bg).clamp(0.0, 1.0)
        depth = render[0, ..., 3:4]
        depth = torch.where(alpha[0] > 0, depth, depth.max())
    return {"rgb": rgb, "depth": depth, "accumulation": alpha[0], "background": bg.expand(H, W, 3)}


# ---------------------------------------------------------------------------------------------- model
class SplatfactoHarmonizedModel(SplatfactoModel):
    """splatfacto with a "harmonized" output, a viewer checkbox and a strength slider (see module docstring)."""

    config: SplatfactoHarmonizedModelConfig

    def populate_modules(self) -> None:
        with deferred_lpips(getattr(self.config, "defer_lpips", True)):
            super().populate_modules()
        self._setup_harmonizer()

    def _setup_harmonizer(self) -> None:
        cfg = self.config
        # Not an nn.Module attribute: the enhancer's weights stay out of splatfacto's state dict and
        # checkpoints, and the hook moves it to the frames' device itself.
        self._harmonized_outputs = HarmonizedOutputs(
            cfg.harmonizer, enabled=cfg.harmonizer_enabled, strength=cfg.harmonizer_strength,
            output_name=OUTPUT_NAME, use_depth=cfg.harmonizer_use_depth,
        )
        self.harmonizer_checkbox = ViewerCheckbox(
            "Harmonizer", default_value=bool(cfg.harmonizer_enabled),
            hint=f"simharmony enhancer on the '{OUTPUT_NAME}' output (choose it under Output type)",
        )
        self.harmonizer_strength = ViewerSlider(
            "Harmonizer strength", default_value=float(cfg.harmonizer_strength), min_value=0.0, max_value=1.0,
            step=0.05, hint="blend between the raw render (0) and the enhanced frame (1)",
        )

    @property
    def harmonized_outputs(self) -> HarmonizedOutputs:
        """The hook that adds the harmonized output (``.plugin.stats()``, ``.warning``, ``.source``)."""
        return self._harmonized_outputs

    def get_outputs(self, camera: Cameras) -> dict[str, Any]:
        if self.device.type != "cuda":
            if not self.config.cpu_rasterizer:
                raise BackendUnavailableError("splatfacto needs CUDA; set cpu_rasterizer=True to render on CPU")
            return render_splatfacto_cpu(self, camera)
        return super().get_outputs(camera)

    @torch.no_grad()
    def get_outputs_for_camera(self, camera: Cameras, obb_box: OrientedBox | None = None) -> dict[str, torch.Tensor]:
        outputs = super().get_outputs_for_camera(camera, obb_box=obb_box)
        hook = self._harmonized_outputs
        hook.enabled = bool(self.harmonizer_checkbox.value)
        hook.strength = min(1.0, max(0.0, float(self.harmonizer_strength.value)))
        return hook(outputs, pose=camera.camera_to_worlds)


def attach_harmonizer(model: SplatfactoModel, **overrides: Any) -> SplatfactoHarmonizedModel:
    """Turn a built ``SplatfactoModel`` into a :class:`SplatfactoHarmonizedModel` in place (same parameters).

    overrides: fields of :class:`SplatfactoHarmonizedModelConfig` (harmonizer, harmonizer_strength, ...).
    Call it before the viewer is created: the viewer collects its custom elements at start.
    """
    if isinstance(model, SplatfactoHarmonizedModel):
        model.config = harmonized_model_config(model.config, **overrides)
    elif isinstance(model, SplatfactoModel):
        if type(model) is not SplatfactoModel:
            raise InvalidInputError(f"attach_harmonizer handles plain SplatfactoModel instances, got {type(model).__name__}")
        model.config = harmonized_model_config(model.config, **overrides)
        model.__class__ = SplatfactoHarmonizedModel  # same fields and state dict; only methods are added
    else:
        raise InvalidInputError(f"attach_harmonizer expects a SplatfactoModel, got {type(model).__name__}")
    model._setup_harmonizer()
    return model


__all__ = [
    "OUTPUT_NAME",
    "SplatfactoHarmonizedModel",
    "SplatfactoHarmonizedModelConfig",
    "attach_harmonizer",
    "deferred_lpips",
    "harmonized_model_config",
    "harmonized_trainer_config",
    "render_splatfacto_cpu",
]
