"""Peers side by side: per-frame latency of the enhancer and of the field's architectures, in one run, on one
machine, on the same frame, with ratios to ours (absolute milliseconds drift on a shared machine; ratios within
one run do not).

- ours: the shipped enhancer through ``Harmonizer.enhance`` (uint8 in and out, mask and depth given), in the
  stream's steady state (K past frames cached).
- SD-Turbo single step (what Difix3D+ runs per frame): diffusers ``AutoencoderKL`` encode, one
  ``UNet2DConditionModel`` step at the fixed timestep with a precomputed null text embedding [1, 77, 1024], VAE
  decode; built from SD-Turbo's published configs (SD 2.1: UNet blocks 320/640/1280/1280, heads of 64 channels,
  cross-attention 1024, linear projections; VAE 128/256/512/512, 4 latent channels) with random weights:
  speed only (weights do not change the cost).
- Harmonizer (Ke et al. 2022) architecture: an EfficientNet-B0 encoder (torchvision, random weights) on the
  image and mask at 256 x 256 regresses the arguments of six white-box filters (brightness, contrast,
  saturation, temperature, highlight, shadow), applied at full resolution inside the mask: speed only.
- the parametric curves + shading model (``weights/parametric``) and the classical transfers (Reinhard Lab,
  lightness-preserving HSV).

    python benchmarks/bench_peers.py --threads 2 --res 512x288 --repeats 10 --slow-repeats 3
    python benchmarks/bench_peers.py --threads 2 --res 1024x576 --skip sd_turbo     # the fast ones at 1024x576
    python benchmarks/bench_peers.py --rasterizer --threads 2                          # the CPU rasterizer's peer

The rasterizer's peer: gsplat's own pure-PyTorch path (``gsplat.cuda._torch_impl``) cannot run on a CPU: its
``_rasterize_to_pixels`` calls the CUDA kernel ``rasterize_to_indices_in_range`` and its ``accumulate`` needs
nerfacc. So the peer is ``scene_tools._raster_reference``: plain PyTorch with autograd, compositing every
Gaussian at every pixel with gsplat's kernel rules (the tests check it against gsplat's torch projection),
on the same Gaussians, forward and backward; it is dense, so the scene is small.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from simharmony.baselines import lightness_preserving_hsv, reinhard_lab
from simharmony.harmonizer import Harmonizer
from simharmony.paths import ENHANCER_DIR, REPO_ROOT

SD21_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True,
)
SD21_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
)


def sd_turbo_step() -> Callable[[torch.Tensor], torch.Tensor]:
    """image [1, 3, H, W] in [0, 1] -> image: encode, one UNet step at t = 999, decode (random weights)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    unet, vae = UNet2DConditionModel(**SD21_UNET).eval(), AutoencoderKL(**SD21_VAE).eval()
    null_text = torch.zeros(1, 77, 1024)
    t = torch.tensor([999])

    def run(x: torch.Tensor) -> torch.Tensor:
        z = vae.encode(x * 2 - 1).latent_dist.mode() * 0.18215
        eps = unet(z, t, encoder_hidden_states=null_text).sample
        return (vae.decode((z - eps) / 0.18215).sample + 1) / 2

    run.parameters = sum(p.numel() for m in (unet, vae) for p in m.parameters())  # type: ignore[attr-defined]
    return run


class HarmonizerArchitecture(nn.Module):
    """Ke et al.'s Harmonizer: EfficientNet-B0 on image + mask at 256 x 256 -> six filter arguments in [-1, 1],
    applied by white-box filters at full resolution inside the mask (random weights: timing only)."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import efficientnet_b0

        net = efficientnet_b0()
        stem = net.features[0][0]
        net.features[0][0] = nn.Conv2d(4, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False)
        self.encoder = net.features
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 256), nn.SiLU(), nn.Linear(256, 6))

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        small = F.interpolate(torch.cat([image, mask], 1), size=(256, 256), mode="bilinear", align_corners=False)
        bright, contrast, sat, temp, high, shadow = torch.tanh(self.head(self.encoder(small)))[0] * 0.5
        x = image + bright
        x = (x - x.mean((2, 3), keepdim=True)) * (1 + contrast) + x.mean((2, 3), keepdim=True)
        grey = x.mean(1, keepdim=True)
        x = grey + (x - grey) * (1 + sat)
        x = x + temp * torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1) * 0.1
        lum = x.mean(1, keepdim=True).clamp(0, 1)
        x = x + high * lum**2 * 0.2 + shadow * (1 - lum) ** 2 * 0.2
        return image + mask * (x.clamp(0, 1) - image)


def median_ms(fn: Callable[[], object], repeats: int, warmup: int) -> tuple[float, float, float]:
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        fn()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times), max(times)


def rasterizer_peers(args: argparse.Namespace) -> int:
    """Forward + backward of the numba CPU rasterizer against the plain-PyTorch reference on one scene."""
    from bench_rasterizer import make_street_scene

    from scene_tools._raster_reference import reference_rasterize
    from scene_tools.rasterize import rasterize

    w, h = (int(v) for v in args.res.split("x"))
    scene = make_street_scene(args.gaussians, w, h)
    names = ("means", "quats", "scales", "opacities", "colors")

    def fwd_bwd(fn) -> Callable[[], object]:
        def run():
            params = {k: scene[k].clone().requires_grad_(True) for k in names}
            img, alpha = fn(**params, viewmats=scene["viewmats"], Ks=scene["Ks"], width=w, height=h)[:2]
            (img.square().mean() + alpha.mean()).backward()
            return img.detach(), params["means"].grad
        return run

    ours = fwd_bwd(lambda **kw: rasterize(**kw, backend="cpu"))
    ref = fwd_bwd(reference_rasterize)
    (img_o, g_o), (img_r, g_r) = ours(), ref()
    print(f"# rasterizer peers: {args.gaussians} Gaussians at {w}x{h}, {args.threads} threads, load "
          f"{os.getloadavg()[0]:.2f}; image max |ours - reference| {float((img_o - img_r).abs().max()):.2e}, "
          f"means grad relative difference {float((g_o - g_r).norm() / g_r.norm()):.2e}")
    med_o, *_ = median_ms(ours, args.repeats, args.warmup)
    med_r, *_ = median_ms(ref, args.slow_repeats, 1)
    print(f"\n| rasterizer (forward + backward) | median ms | x ours |\n|---|---:|---:|\n| ours (numba CPU) | {med_o:.1f} | 1.00 |"
          f"\n| plain-PyTorch reference (autograd, dense) | {med_r:.1f} | {med_r / med_o:.1f} |")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--res", default="512x288", help="WxH")
    p.add_argument("--repeats", type=int, default=10, help="timed calls of the fast methods")
    p.add_argument("--slow-repeats", type=int, default=3, help="timed calls of SD-Turbo")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--skip", nargs="*", default=[], help="method names to leave out")
    p.add_argument("--out", default="", help="also write the figures as JSON here")
    p.add_argument("--rasterizer", action="store_true", help="time the CPU rasterizer against its PyTorch peer")
    p.add_argument("--gaussians", type=int, default=2000, help="scene size of --rasterizer")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.rasterizer:
        return rasterizer_peers(args)
    import cv2

    cv2.setNumThreads(args.threads)
    w, h = (int(v) for v in args.res.split("x"))
    rng = np.random.default_rng(0)
    frame = rng.random((h, w, 3), dtype=np.float32)
    frame_u8 = (frame * 255).astype(np.uint8)
    mask = np.zeros((h, w), np.float32)
    mask[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = 1.0
    depth = np.full((h, w), 10.0, np.float32)
    x = torch.from_numpy(frame).permute(2, 0, 1)[None]
    m = torch.from_numpy(mask)[None, None]

    harmonizer = Harmonizer.from_pretrained(ENHANCER_DIR)
    for _ in range(harmonizer.context_frames):  # the steady state: K past frames cached
        harmonizer.enhance(frame_u8, mask=mask, depth=depth)
    methods: dict[str, tuple[Callable[[], object], int, str]] = {
        "ours": (lambda: harmonizer.enhance(frame_u8, mask=mask, depth=depth), args.repeats,
                 f"shipped v8, {sum(p.numel() for p in harmonizer.model.parameters()) / 1e6:.2f} M parameters, K = "
                 f"{harmonizer.context_frames} cached"),
    }
    if "harmonizer_arch" not in args.skip:
        ke = HarmonizerArchitecture().eval()
        methods["harmonizer_arch"] = (lambda: ke(x, m), args.repeats, "Ke et al. architecture (EfficientNet-B0 + 6 "
                                      f"filters), {sum(p.numel() for p in ke.parameters()) / 1e6:.2f} M parameters")
    if "sd_turbo" not in args.skip:
        sd = sd_turbo_step()
        methods["sd_turbo"] = (lambda: sd(x), args.slow_repeats,
                               f"SD-Turbo single step (UNet + VAE), {sd.parameters / 1e6:.0f} M parameters")
    parametric_dir = REPO_ROOT / "weights" / "parametric"
    if "parametric" not in args.skip and parametric_dir.is_dir():
        from simharmony.models.parametric import parametric_baseline

        par = parametric_baseline(parametric_dir)
        methods["parametric"] = (lambda: par(frame, mask), args.repeats, "parametric curves + shading (shipped)")
    if "reinhard_lab" not in args.skip:
        methods["reinhard_lab"] = (lambda: reinhard_lab(frame, mask), args.repeats, "classical")
    if "lightness_preserving_hsv" not in args.skip:
        methods["lightness_preserving_hsv"] = (lambda: lightness_preserving_hsv(frame, mask), args.repeats, "classical")

    print(f"# peers at {w}x{h}, {args.threads} torch threads, load {os.getloadavg()[0]:.2f}")
    results = {}
    with torch.inference_mode():
        for name, (fn, repeats, note) in methods.items():
            med, lo, hi = median_ms(fn, repeats, args.warmup if repeats > 3 else 1)
            results[name] = {"median_ms": med, "min_ms": lo, "max_ms": hi, "repeats": repeats, "note": note}
            print(f"{name}: {med:.1f} ms (min {lo:.1f}, max {hi:.1f}, {repeats} runs)", flush=True)
    ours = results["ours"]["median_ms"]
    print("\n| method | median ms | min-max | x ours | what |\n|---|---:|---:|---:|---|")
    for name, r in results.items():
        print(f"| {name} | {r['median_ms']:.1f} | {r['min_ms']:.1f}-{r['max_ms']:.1f} | {r['median_ms'] / ours:.2f} | "
              f"{r['note']} |")
    print(f"load at the end {os.getloadavg()[0]:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"res": args.res, "threads": args.threads, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
