"""Benchmark the CPU Gaussian rasterizer (scene_tools.rasterize, backend="cpu") on street-like random scenes.

Gaussians fill a street frustum (road, two facades, scattered objects, a few far sky blobs); scales are
chosen so most footprints are a few pixels wide, with ~3% large ones. For each (N, resolution) we time
forward-only (under torch.no_grad) and forward+backward (loss on colour and alpha, grads for all
parameters plus means2d.retain_grad()), medians over --repeats runs after warm-up (JIT compile excluded).

    python benchmarks/bench_rasterizer.py                  # N = 10k, 50k at 256x144 and 512x288
    python benchmarks/bench_rasterizer.py --n 50000 --res 256x144 --repeats 15
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numba
import numpy as np
import torch

from scene_tools.cameras import look_at
from scene_tools.rasterize import rasterize


def make_street_scene(n: int, width: int, height: int, seed: int = 0, fov_x_deg: float = 70.0):
    """A street-like random Gaussian scene seen from one camera (world z up, street along +x).

    Returns dict of means [n, 3], quats [n, 4], scales [n, 3], opacities [n], colors [n, 3],
    viewmats [1, 4, 4], Ks [1, 3, 3].
    """
    g = torch.Generator().manual_seed(seed)

    def U(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    fx = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2)
    K = torch.tensor([[fx, 0, width / 2], [0, fx, height / 2], [0, 0, 1.0]])
    c2w = torch.tensor(look_at((0.0, 0.0, 1.6), (20.0, 0.0, 1.2)), dtype=torch.float32)
    viewmat = torch.linalg.inv(c2w)

    n_road, n_fac, n_obj = int(0.35 * n), int(0.45 * n), int(0.17 * n)
    n_sky = n - n_road - n_fac - n_obj
    x_road = 1.0 + 59.0 * U(0, 1, n_road) ** 1.5  # denser near the camera
    road = torch.stack([x_road, U(-7, 7, n_road), U(-0.05, 0.05, n_road)], -1)
    x_fac = U(2, 70, n_fac)
    side = torch.where(torch.rand(n_fac, generator=g) < 0.5, -8.0, 8.0)
    fac = torch.stack([x_fac, side + U(-0.3, 0.3, n_fac), U(0, 12, n_fac)], -1)
    obj = torch.stack([U(3, 50, n_obj), U(-5, 5, n_obj), U(0, 2.5, n_obj)], -1)
    sky = torch.stack([U(80, 150, n_sky), U(-80, 80, n_sky), U(15, 60, n_sky)], -1)
    means = torch.cat([road, fac, obj, sky])

    dist = (means - c2w[:3, 3]).norm(dim=-1)
    pix_sigma = torch.exp(U(math.log(0.4), math.log(3.0), n))  # footprint std in pixels
    big = torch.rand(n, generator=g) < 0.03
    pix_sigma = torch.where(big, U(8, 30, n), pix_sigma)
    sigma = pix_sigma * dist / fx
    scales = sigma[:, None] * U(0.3, 1.5, n, 3)
    quats = torch.randn(n, 4, generator=g)
    opacities = U(0.05, 1.0, n)
    colors = U(0, 1, n, 3)
    return {
        "means": means, "quats": quats, "scales": scales, "opacities": opacities, "colors": colors,
        "viewmats": viewmat[None], "Ks": K[None],
    }


def _time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench(n: int, width: int, height: int, repeats: int) -> dict:
    s = make_street_scene(n, width, height)
    params = {k: s[k].clone().requires_grad_(True) for k in ("means", "quats", "scales", "opacities", "colors")}

    def fwd():
        with torch.no_grad():
            return rasterize(**{k: s[k] for k in params}, viewmats=s["viewmats"], Ks=s["Ks"], width=width,
                             height=height, backend="cpu")

    def fwd_bwd():
        for p in params.values():
            p.grad = None
        img, alpha, meta = rasterize(**params, viewmats=s["viewmats"], Ks=s["Ks"], width=width, height=height,
                                     backend="cpu")
        meta["means2d"].retain_grad()
        (img.square().mean() + alpha.mean()).backward()
        return meta

    t_f = _time(fwd, repeats)
    t_fb = _time(fwd_bwd, repeats)
    meta = fwd_bwd()
    radii = meta["radii"][0]
    visible = int((radii > 0).sum())
    return {"n": n, "res": f"{width}x{height}", "visible": visible, "median_radius": float(radii[radii > 0].float().median()),
            "fwd": t_f, "fwd_bwd": t_fb}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 50_000])
    ap.add_argument("--res", nargs="+", default=["256x144", "512x288"])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: unchanged)")
    ap.add_argument("--numba-threads", type=int, default=None, help="numba.set_num_threads (default: unchanged)")
    args = ap.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if args.numba_threads:
        numba.set_num_threads(args.numba_threads)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")

    print(f"torch {torch.__version__} threads={torch.get_num_threads()}, numba {numba.__version__} "
          f"threads={numba.get_num_threads()} layer={numba.config.THREADING_LAYER}, cpus={os.cpu_count()}, "
          f"load avg={os.getloadavg()[0]:.2f}")
    t0 = time.perf_counter()
    make = make_street_scene(64, 64, 36)
    rasterize(**{k: make[k] for k in ("means", "quats", "scales", "opacities", "colors")}, viewmats=make["viewmats"],
              Ks=make["Ks"], width=64, height=36, backend="cpu")
    print(f"first call (JIT compile or cache load): {time.perf_counter() - t0:.2f} s\n")

    rows = []
    for res in args.res:
        w, h = (int(v) for v in res.lower().split("x"))
        for n in args.n:
            rows.append(bench(n, w, h, args.repeats))
    print("| N | resolution | visible | median radius px | forward ms | forward+backward ms |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']} | {r['res']} | {r['visible']} | {r['median_radius']:.0f} | {1e3 * r['fwd']:.1f} | "
              f"{1e3 * r['fwd_bwd']:.1f} |")
    print(f"\nmedians over {args.repeats} repeats after 2 warm-up runs; load avg now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
