"""CPU rasterizer vs an independent brute-force torch reference (values and autograd gradients), projection
vs gsplat's own pure-torch projection, input validation, and a CUDA comparison with gsplat (gpu marker)."""

from __future__ import annotations

import math

import pytest
import torch

from scene_tools._raster_cpu import project_gaussians
from scene_tools._raster_reference import reference_rasterize
from scene_tools.rasterize import rasterize
from scene_tools.sh import eval_sh, sh_bases
from simharmony.errors import (
    BackendUnavailableError,
    InvalidCameraError,
    InvalidInputError,
    NonFiniteError,
    ShapeMismatchError,
)

W, H = 40, 30
PARAM_NAMES = ("means", "quats", "scales", "opacities", "colors")


def make_scene(n=30, n_cams=2, d=3, seed=0, sh_degree=None, per_camera_colors=False, behind=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * torch.tensor([1.2, 0.8, 0.8]) + torch.tensor([0.0, 0.0, 4.0])
    if behind:
        means[:behind, 2] = -torch.rand(behind, generator=g) - 0.5  # behind every camera
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.3 + 0.04
    opacities = torch.rand(n, generator=g) * 0.9 + 0.05
    if sh_degree is not None:
        colors = torch.randn((n_cams,) * per_camera_colors + (n, (sh_degree + 1) ** 2, 3), generator=g) * 0.4
    else:
        colors = torch.rand((n_cams,) * per_camera_colors + (n, d), generator=g)
    viewmats = torch.eye(4).repeat(n_cams, 1, 1)
    for c in range(1, n_cams):  # small rotation about y plus a sideways shift
        a = 0.15 * c
        viewmats[c, :3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
        viewmats[c, :3, 3] = torch.tensor([0.3 * c, -0.1 * c, 0.2])
    Ks = torch.tensor([[36.0, 0, 19.3], [0, 38.0, 15.6], [0, 0, 1]]).repeat(n_cams, 1, 1)
    return {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "colors": colors,
            "viewmats": viewmats, "Ks": Ks}


def _run_both(scene, seed=1, **kw):
    """Render with the CPU path (float32) and the reference (float64) under one random linear loss."""
    ps = {k: scene[k].clone().requires_grad_(True) for k in PARAM_NAMES}
    img, alpha, meta = rasterize(**ps, viewmats=scene["viewmats"], Ks=scene["Ks"], width=W, height=H,
                                 backend="cpu", **kw)
    meta["means2d"].retain_grad()
    g = torch.Generator().manual_seed(seed)
    wi = torch.randn(img.shape, generator=g, dtype=torch.float64)
    wa = torch.randn(alpha.shape, generator=g, dtype=torch.float64)
    ((img.double() * wi).sum() + (alpha.double() * wa).sum()).backward()

    rs = {k: scene[k].double().clone().requires_grad_(True) for k in PARAM_NAMES}
    rkw = dict(kw)
    if rkw.get("backgrounds") is not None:
        rkw["backgrounds"] = rkw["backgrounds"].double()
    rimg, ralpha, rmeta = reference_rasterize(**rs, viewmats=scene["viewmats"].double(), Ks=scene["Ks"].double(),
                                              width=W, height=H, **rkw)
    rmeta["means2d"].retain_grad()
    ((rimg * wi).sum() + (ralpha * wa).sum()).backward()
    return (img, alpha, meta, ps), (rimg, ralpha, rmeta, rs)


def _close(a, b, rel, name):
    a, b = a.detach().double(), b.detach().double()
    err = (a - b).abs().max().item()
    scale = b.abs().max().item()
    assert err <= rel * scale + 1e-6, f"{name}: max err {err:.3g} vs scale {scale:.3g}"


def _check(ours, ref, val_rel=2e-5, grad_rel=1e-3, check_grads=PARAM_NAMES):
    img, alpha, meta, ps = ours
    rimg, ralpha, rmeta, rs = ref
    assert img.shape == rimg.shape and alpha.shape == ralpha.shape
    assert alpha.max() > 0.3, "scene should cover the image noticeably"
    _close(img, rimg, val_rel, "colors")
    _close(alpha, ralpha, val_rel, "alphas")
    for k in check_grads:
        assert ps[k].grad is not None, k
        _close(ps[k].grad, rs[k].grad, grad_rel, f"grad {k}")
    # culled entries carry zeros in meta, as in gsplat; compare visible ones
    vis = rmeta["valid"]
    assert torch.equal(meta["radii"] > 0, vis)
    assert torch.equal(meta["radii_xy"].long(), rmeta["radii"])
    assert meta["radii"].dtype == torch.int32 and meta["radii"].shape == vis.shape
    _close(meta["means2d"][vis], rmeta["means2d"][vis], 1e-5, "means2d")
    _close(meta["depths"][vis], rmeta["depths"][vis], 1e-5, "depths")
    _close(meta["means2d"].grad[vis], rmeta["means2d"].grad[vis], grad_rel, "grad means2d")
    assert torch.all(meta["means2d"].grad[~vis] == 0)


def test_rgb_matches_reference():
    _check(*_run_both(make_scene()))


def test_rgb_ed_with_background_matches_reference():
    scene = make_scene(seed=3)
    bg = torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.3]])
    ours, ref = _run_both(scene, backgrounds=bg, render_mode="RGB+ED")
    assert ours[0].shape == (2, H, W, 4)
    _check(ours, ref, val_rel=1e-4, grad_rel=2e-3)


@pytest.mark.parametrize("mode", ["D", "ED", "RGB+D"])
def test_depth_modes_match_reference(mode):
    ours, ref = _run_both(make_scene(seed=5), render_mode=mode, backgrounds=torch.rand(2, 3))
    _check(ours, ref, val_rel=1e-4, grad_rel=2e-3, check_grads=("means", "quats", "scales", "opacities"))


def test_multichannel_per_camera_colors_behind_camera_and_background():
    scene = make_scene(d=7, per_camera_colors=True, behind=5, seed=7)
    ours, ref = _run_both(scene, backgrounds=torch.rand(2, 7))
    assert ours[0].shape == (2, H, W, 7)
    radii = ours[2]["radii"]
    assert torch.all(radii[:, :5] == 0), "Gaussians behind the camera must be culled"
    assert torch.all(ours[3]["means"].grad[:5] == 0)
    _check(ours, ref)


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_sh_colors_match_reference(degree):
    scene = make_scene(sh_degree=degree, seed=11 + degree)
    _check(*_run_both(scene, sh_degree=degree))


def test_per_camera_sh_and_higher_k_than_degree():
    scene = make_scene(sh_degree=3, per_camera_colors=True, seed=4)
    _check(*_run_both(scene, sh_degree=1))  # K = 16 coefficients given, degree 1 used


def test_radius_clip_and_near_plane_match_reference():
    ours, ref = _run_both(make_scene(seed=9), radius_clip=2.0, near_plane=3.5)
    assert (ours[2]["radii"] == 0).sum() > 5
    _check(ours, ref)


def test_early_termination_matches_reference():
    """Dense, nearly opaque layers so most pixels stop at T < 1e-4 (exclusive termination)."""
    scene = make_scene(n=60, seed=21)
    scene["opacities"] = torch.full((60,), 0.99)
    scene["scales"] = scene["scales"] * 3 + 0.3
    ours, ref = _run_both(scene)
    assert (ours[1] > 0.999).float().mean() > 0.5
    _check(ours, ref)


def test_tile_size_does_not_change_result():
    scene = make_scene(seed=2)
    base = {k: scene[k] for k in PARAM_NAMES + ("viewmats", "Ks")}
    a, aa, _ = rasterize(**base, width=W, height=H, tile_size=16)
    b, bb, _ = rasterize(**base, width=W, height=H, tile_size=7)
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(aa, bb, atol=1e-6)


def test_float64_inputs_and_no_visible_gaussians():
    scene = make_scene(n=8, seed=1)
    scene["means"][:, 2] = -2.0  # all behind the cameras
    s64 = {k: v.double() for k, v in scene.items()}
    img, alpha, meta = rasterize(**s64, width=W, height=H, backgrounds=torch.ones(2, 3, dtype=torch.float64))
    assert img.dtype == torch.float64 and alpha.dtype == torch.float64
    assert torch.all(alpha == 0) and torch.all(img == 1)
    assert torch.all(meta["radii"] == 0)


def test_projection_matches_gsplat_torch_impl():
    impl = pytest.importorskip("gsplat.cuda._torch_impl")
    s = make_scene(seed=13)
    m2, conics, depths, radii = project_gaussians(s["means"], s["quats"], s["scales"], s["opacities"],
                                                  s["viewmats"], s["Ks"], W, H)
    covars, _ = impl._quat_scale_to_covar_preci(s["quats"], s["scales"], compute_preci=False)
    _, g_m2, g_depths, g_conics, _ = impl._fully_fused_projection(s["means"], covars, s["viewmats"], s["Ks"], W, H)
    vis = radii[..., 0] > 0
    assert vis.sum() > 20
    _close(m2[vis], g_m2[vis], 1e-6, "means2d")
    _close(conics[vis], g_conics[vis], 1e-4, "conics")
    _close(depths[vis], g_depths[vis], 1e-6, "depths")


def test_sh_bases_orthonormal():
    """Independent check of the SH constants: Monte-Carlo Gram matrix over the sphere is the identity."""
    g = torch.Generator().manual_seed(0)
    d = torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    Y = sh_bases(3, d)  # [M, 16]
    gram = 4 * math.pi * (Y.T @ Y) / d.shape[0]
    assert torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=0.03)
    coeffs = torch.zeros(16, 3, dtype=torch.float64)
    coeffs[0] = 1.0
    assert torch.allclose(eval_sh(3, d[:4], coeffs), torch.full((4, 3), 0.28209479177387814, dtype=torch.float64))


def test_means2d_grad_available_for_densification():
    s = make_scene(seed=6)
    img, _, meta = rasterize(**{k: s[k].requires_grad_(k == "means") for k in PARAM_NAMES},
                             viewmats=s["viewmats"], Ks=s["Ks"], width=W, height=H)
    meta["means2d"].retain_grad()
    img.sum().backward()
    assert meta["means2d"].shape == (2, 30, 2) and meta["means2d"].grad.abs().sum() > 0
    assert meta["width"] == W and meta["height"] == H and meta["n_cameras"] == 2
    assert meta["depths"].shape == (2, 30)


# ---------------------------------------------------------------------------------------------- bad input


def _good():
    s = make_scene(n=5, seed=0)
    return dict(**{k: s[k] for k in PARAM_NAMES + ("viewmats", "Ks")}, width=W, height=H)


@pytest.mark.parametrize(
    "change, err",
    [
        (lambda a: a.update(means=torch.zeros(5, 2)), ShapeMismatchError),
        (lambda a: a.update(quats=torch.zeros(4, 4)), ShapeMismatchError),
        (lambda a: a.update(scales=torch.ones(5)), ShapeMismatchError),
        (lambda a: a.update(opacities=torch.ones(5, 1)), ShapeMismatchError),
        (lambda a: a.update(colors=torch.ones(6, 3)), ShapeMismatchError),
        (lambda a: a.update(viewmats=torch.eye(4)), ShapeMismatchError),
        (lambda a: a.update(Ks=torch.eye(3).repeat(3, 1, 1)), ShapeMismatchError),
        (lambda a: a["means"].__setitem__((0, 0), float("nan")), NonFiniteError),
        (lambda a: a["scales"].__setitem__((1, 2), float("inf")), NonFiniteError),
        (lambda a: a["Ks"].__setitem__((0, 0, 0), -5.0), InvalidCameraError),
        (lambda a: a["Ks"].__setitem__((1, 1, 1), 0.0), InvalidCameraError),
        (lambda a: a.update(width=0), InvalidInputError),
        (lambda a: a.update(height=-3), InvalidInputError),
        (lambda a: a.update(width=40.0), InvalidInputError),
        (lambda a: a.update(render_mode="rgb"), InvalidInputError),
        (lambda a: a.update(backend="vulkan"), InvalidInputError),
        (lambda a: a.update(sh_degree=1), ShapeMismatchError),  # colors are [N, 3], not SH
        (lambda a: a.update(colors=torch.zeros(5, 4, 3), sh_degree=2), ShapeMismatchError),
        (lambda a: a.update(colors=torch.zeros(5, 16, 3), sh_degree=4), InvalidInputError),
        (lambda a: a.update(backgrounds=torch.zeros(2, 4)), ShapeMismatchError),
        (lambda a: a.update(near_plane=5.0, far_plane=1.0), InvalidCameraError),
        (lambda a: a.update(quats=torch.zeros(5, 4)), InvalidInputError),
        (lambda a: a.update(opacities=torch.ones(5, dtype=torch.int64)), InvalidInputError),
    ],
)
def test_bad_input_raises_specific_errors(change, err):
    args = _good()
    change(args)
    with pytest.raises(err):
        rasterize(**args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_gsplat_backend_without_cuda_raises():
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        rasterize(**_good(), backend="gsplat")


# ---------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["RGB", "RGB+ED"])
def test_cpu_matches_gsplat_on_cuda(mode):
    s = make_scene(n=200, seed=17, d=5)
    bg = torch.rand(2, 5)
    cpu = {k: s[k].clone().requires_grad_(k in PARAM_NAMES) for k in s}
    gpu = {k: s[k].cuda().requires_grad_(k in PARAM_NAMES) for k in s}
    out = []
    for args, dev in ((cpu, "cpu"), (gpu, "cuda")):
        img, alpha, meta = rasterize(**args, width=W, height=H, backgrounds=bg.to(dev), render_mode=mode,
                                     backend="cpu" if dev == "cpu" else "gsplat")
        g = torch.Generator().manual_seed(0)
        w = torch.randn(img.shape, generator=g).to(dev)
        ((img * w).sum() + alpha.sum()).backward()
        out.append((img.detach().cpu(), alpha.detach().cpu(), meta["radii"].cpu(),
                    {k: args[k].grad.cpu() for k in PARAM_NAMES}))
    (i0, a0, r0, g0), (i1, a1, r1, g1) = out
    assert torch.equal(r0, r1.to(r0.dtype))
    _close(i0, i1, 1e-3, "colors")
    _close(a0, a1, 1e-3, "alphas")
    for k in PARAM_NAMES:
        _close(g0[k], g1[k], 1e-2, f"grad {k}")


def test_cpu_gradients_do_not_depend_on_the_thread_count():
    """Reconstructions (and the data made from them) must not change with the machine's core count."""
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here")
    g = torch.Generator().manual_seed(3)
    n = 3000  # many Gaussians over many tiles, so per-Gaussian sums gather from several tiles
    means = (torch.rand(n, 3, generator=g) - 0.5) * 4 + torch.tensor([0.0, 0.0, 6.0])
    scene = {"means": means, "quats": torch.randn(n, 4, generator=g), "scales": torch.rand(n, 3, generator=g) * 0.2 + 0.02,
             "opacities": torch.rand(n, generator=g) * 0.9, "colors": torch.rand(n, 3, generator=g)}
    K = torch.tensor([[[200.0, 0, 128], [0, 200.0, 72], [0, 0, 1]]])
    weights = torch.rand(1, 144, 256, 3, generator=g)

    def grads(threads):
        before = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            ps = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
            img, alpha, _ = rasterize(**ps, viewmats=torch.eye(4)[None], Ks=K, width=256, height=144, backend="cpu")
            ((img * weights).sum() + alpha.sum()).backward()
        finally:
            numba.set_num_threads(before)
        return torch.cat([ps[k].grad.flatten() for k in PARAM_NAMES])

    one, two = grads(1), grads(2)
    assert one.abs().sum() > 0 and torch.equal(one, two)
