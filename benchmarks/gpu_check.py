"""One-command GPU check: every CUDA path of the project, run once, one PASS / FAIL line each.

    bash benchmarks/gpu_check.sh            # or: python benchmarks/gpu_check.py --out outputs/gpu_check.json

Checks (about 5 minutes on one GPU):

1. ``rasterize``: gsplat on CUDA against the CPU fallback on the same 20k Gaussians, forward (colours,
   alphas) and backward (gradients of means, colours, opacities);
2. Mitsuba ``cuda_ad_rgb`` against ``scalar_rgb`` on one frame of the default street (mean colour);
3. the shipped enhancer at 1024x576 in float32 and bfloat16: median latency of 10 runs, and the largest
   difference of the bf16 output from float32;
4. four training steps of a small enhancer under bf16 autocast: finite losses that change;
5. LPIPS on CUDA against the CPU (when its converted weights are present; skipped otherwise).

Without CUDA it prints ``no CUDA: nothing to check`` and exits 0. Figures go to ``--out`` (JSON). The exit
code is 1 when a check fails. Every GPU path was written on CPU-only machines: this is how they get run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch


def _random_gaussians(n: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * torch.tensor([2.0, 1.0, 1.0]) + torch.tensor([0.0, 0.0, 6.0])
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.08 + 0.01
    opac = torch.rand(n, generator=g) * 0.8 + 0.1
    colors = torch.rand(n, 3, generator=g)
    return {k: v.to(device).requires_grad_(k in ("means", "colors", "opacities"))
            for k, v in {"means": means, "quats": quats, "scales": scales, "opacities": opac, "colors": colors}.items()}


def check_rasterizer() -> dict:
    from scene_tools.rasterize import rasterize

    K = torch.tensor([[[300.0, 0, 160], [0, 300.0, 90], [0, 0, 1]]])
    view = torch.eye(4)[None]
    out = {}
    for name, device, backend in (("gsplat", "cuda", "gsplat"), ("cpu", "cpu", "cpu")):
        p = _random_gaussians(20_000, device)
        rgb, alpha, _ = rasterize(p["means"], p["quats"], p["scales"], p["opacities"], p["colors"],
                                  view.to(device), K.to(device), 320, 180, backend=backend)
        (rgb.square().sum() + alpha.sum()).backward()
        out[name] = {"rgb": rgb.detach().cpu(), "alpha": alpha.detach().cpu(),
                     **{f"grad_{k}": p[k].grad.detach().cpu() for k in ("means", "colors", "opacities")}}
    diffs = {k: float((out["gsplat"][k] - out["cpu"][k]).abs().max()) for k in out["cpu"]}
    rel = {k: diffs[k] / max(float(out["cpu"][k].abs().max()), 1e-12) for k in diffs}
    ok = diffs["rgb"] < 1e-2 and diffs["alpha"] < 1e-2 and all(rel[k] < 5e-2 for k in rel if k.startswith("grad"))
    return {"ok": ok, "max_abs_diff": diffs, "max_rel_diff": rel}


def check_mitsuba() -> dict:
    from scene_tools.pbr import render_street, set_variant
    from scene_tools.street import StreetConfig, generate_street

    layout = generate_street(StreetConfig(seed=0))
    traj = layout.trajectory[:1].scaled(0.25)
    frames = {}
    for variant in ("cuda_ad_rgb", "scalar_rgb"):
        set_variant(variant)
        t0 = time.perf_counter()
        frames[variant] = (render_street(layout, trajectory=traj, spp=16, progress=False).rgb[0], time.perf_counter() - t0)
    a, b = frames["cuda_ad_rgb"][0], frames["scalar_rgb"][0]
    mean_diff = float(np.abs(a.mean((0, 1)) - b.mean((0, 1))).max())
    return {"ok": mean_diff < 0.02, "mean_colour_diff": mean_diff, "seconds_cuda": frames["cuda_ad_rgb"][1],
            "seconds_scalar": frames["scalar_rgb"][1]}


def check_enhancer_bf16() -> dict:
    from simharmony.harmonizer import Harmonizer

    frame = torch.rand(576, 1024, 3, device="cuda")
    res = {}
    for dtype in (torch.float32, torch.bfloat16):
        h = Harmonizer.from_pretrained("default", device="cuda", dtype=dtype)
        times = []
        for i in range(12):
            h.reset("bench")
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = h.enhance(frame, stream="bench")
            torch.cuda.synchronize()
            if i >= 2:
                times.append((time.perf_counter() - t0) * 1e3)
        res[str(dtype)] = {"median_ms": statistics.median(times), "out": out.float().cpu()}
    diff = float((res["torch.bfloat16"]["out"] - res["torch.float32"]["out"]).abs().max())
    return {"ok": diff < 0.05, "max_diff_bf16_vs_fp32": diff,
            "median_ms_fp32": res["torch.float32"]["median_ms"], "median_ms_bf16": res["torch.bfloat16"]["median_ms"]}


def check_training_bf16() -> dict:
    from simharmony.models.enhancer import Enhancer, EnhancerConfig

    torch.manual_seed(0)
    model = Enhancer(EnhancerConfig(channels=(8, 16), heads=4, temporal_levels=(1,), context_frames=2)).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(2, 3, 144, 256, device="cuda")
    target = (x * 0.8 + 0.1).clamp(0, 1)
    losses = []
    for _ in range(4):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, latent = model(x)
            out, _ = model(x, [latent.detach()])  # the temporal path too
            loss = torch.nn.functional.l1_loss(out.float(), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    ok = bool(np.all(np.isfinite(losses))) and losses[-1] != losses[0]
    return {"ok": ok, "losses": losses}


def check_metrics_cuda() -> dict:
    from simharmony import metrics as M

    rng = np.random.default_rng(0)
    a = rng.random((2, 64, 96, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    cpu = M.lpips_distance(a, b, net="alex")
    if not M.is_available(cpu):
        return {"ok": None, "skipped": str(cpu)}
    gpu = M.lpips_distance(torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda(), net="alex")
    psnr_gpu = M.psnr(torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda())
    out = {"ok": abs(gpu - cpu) < 1e-4 and abs(psnr_gpu - M.psnr(a, b)) < 1e-6, "lpips_cpu": cpu, "lpips_cuda": gpu}
    feats_cpu = M.inception_features(a)  # FID's Inception, when converted: CUDA features against CPU ones
    if M.is_available(feats_cpu):
        feats_gpu = M.inception_features(torch.from_numpy(a).cuda())
        out["inception_max_abs_diff"] = float(np.abs(feats_gpu - feats_cpu).max())
        out["ok"] = out["ok"] and out["inception_max_abs_diff"] < 1e-3
    return out


CHECKS: dict[str, Callable[[], dict]] = {
    "rasterize gsplat vs CPU": check_rasterizer,
    "Mitsuba cuda_ad_rgb": check_mitsuba,
    "enhancer 1024x576 fp32 / bf16": check_enhancer_bf16,
    "training steps, bf16 autocast": check_training_bf16,
    "metrics on CUDA": check_metrics_cuda,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="outputs/gpu_check.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA: nothing to check (torch.cuda.is_available() is False)")
        return 0
    print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    report, failed = {}, 0
    for name, fn in CHECKS.items():
        t0 = time.perf_counter()
        try:
            res = fn()
        except Exception as e:  # noqa: BLE001 - a check that crashes is a FAIL with its traceback, and the others still run
            res = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        res["seconds"] = time.perf_counter() - t0
        status = "SKIP" if res["ok"] is None else "PASS" if res["ok"] else "FAIL"
        failed += status == "FAIL"
        figures = {k: v for k, v in res.items() if k not in ("ok", "traceback")}
        print(f"{status} {name}: {json.dumps(figures, default=str)[:400]}")
        report[name] = res
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(f"gpu_check: {failed} failed; figures in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
