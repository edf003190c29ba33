"""OIDN denoising of path-traced frames (scene_tools.denoise, render_street(denoise=True)).

pyoidn is optional (``pip install pyoidn`` / ``.[denoise]``; CI installs only ``.[dev]``): tests that run
OIDN skip without it. Input checks and the missing-backend error run everywhere (they happen before
pyoidn is imported). Renders use the tiny street preset (48x32, 4 spp, 3 frames).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from scene_tools.denoise import denoise_available, denoise_hdr
from simharmony.errors import BackendUnavailableError, InvalidInputError, NonFiniteError, ShapeMismatchError

needs_oidn = pytest.mark.skipif(
    not denoise_available(), reason="pyoidn is not installed (optional extra: pip install pyoidn or '.[denoise]')"
)


def _scene(h: int = 48, w: int = 64):
    """Clean HDR image (smooth shading times a two-region albedo, sharp edge), its albedo and normals."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    shading = 0.6 + 0.4 * np.sin(x / w * np.pi)[..., None] * np.cos(y / h * 0.5 * np.pi)[..., None]
    albedo = np.where((x > w * 0.55)[..., None], [0.7, 0.3, 0.2], [0.2, 0.5, 0.8]).astype(np.float32)
    clean = (2.0 * shading * albedo).astype(np.float32)
    normal = np.zeros((h, w, 3), np.float32)
    normal[..., 2] = 1.0
    return clean, albedo, normal


def _noisy(clean: np.ndarray, seed: int = 0) -> np.ndarray:
    """Monte Carlo-like noise: a mean of 4 exponential samples per pixel (unbiased, non-negative)."""
    rng = np.random.default_rng(seed)
    return (clean * rng.exponential(1.0, (4, *clean.shape)).mean(0)).astype(np.float32)


def _mse(a, b) -> float:
    return float(((np.asarray(a, np.float64) - b) ** 2).mean())


# --------------------------------------------------------------------------------------------------
# denoise_hdr
# --------------------------------------------------------------------------------------------------


@needs_oidn
def test_denoising_a_noisy_synthetic_image_gets_closer_to_the_clean_one():
    clean, albedo, normal = _scene()
    noisy = _noisy(clean)
    before = noisy.copy()
    err_noisy = _mse(noisy, clean)
    for aux in ((None, None), (albedo, None), (albedo, normal)):
        out = denoise_hdr(noisy, *aux)
        assert out.shape == clean.shape and out.dtype == np.float32
        assert np.isfinite(out).all() and out.min() >= 0
        assert _mse(out, clean) < 0.25 * err_noisy, aux[0] is not None
    # clean_aux off works too, float64 and non-contiguous inputs are accepted, inputs are not modified
    out = denoise_hdr(noisy.astype(np.float64)[:, ::-1][:, ::-1], albedo, normal, clean_aux=False, quality="fast")
    assert _mse(out, clean) < 0.25 * err_noisy
    assert np.array_equal(noisy, before)


@needs_oidn
def test_denoising_keeps_a_clean_image_close():
    clean, albedo, normal = _scene()
    out = denoise_hdr(clean, albedo, normal)
    assert _mse(out, clean) < 1e-3 * float((clean**2).mean())


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"hdr": np.zeros((8, 8), np.float32)}, InvalidInputError),
        ({"hdr": np.zeros((8, 8, 4), np.float32)}, InvalidInputError),
        ({"hdr": np.zeros((0, 8, 3), np.float32)}, InvalidInputError),
        ({"hdr": "image"}, InvalidInputError),
        ({"hdr": np.zeros((8, 8, 3), bool)}, InvalidInputError),
        ({"hdr": np.full((8, 8, 3), -0.5, np.float32)}, InvalidInputError),
        ({"hdr": np.full((8, 8, 3), np.nan, np.float32)}, NonFiniteError),
        ({"hdr": np.full((8, 8, 3), np.inf, np.float32)}, NonFiniteError),
        ({"albedo": np.zeros((8, 9, 3), np.float32)}, ShapeMismatchError),
        ({"albedo": np.full((8, 8, 3), 1.5, np.float32)}, InvalidInputError),
        ({"albedo": np.full((8, 8, 3), np.nan, np.float32)}, NonFiniteError),
        ({"albedo": np.zeros((8, 8, 3)), "normal": np.zeros((4, 8, 3))}, ShapeMismatchError),
        ({"albedo": np.zeros((8, 8, 3)), "normal": np.full((8, 8, 3), 2.0)}, InvalidInputError),
        ({"normal": np.zeros((8, 8, 3), np.float32)}, InvalidInputError),  # OIDN needs albedo with normals
        ({"clean_aux": "yes"}, InvalidInputError),
        ({"quality": "best"}, InvalidInputError),
    ],
)
def test_bad_inputs_raise_project_errors(kwargs, error):
    args = {"hdr": np.ones((8, 8, 3), np.float32), **kwargs}
    with pytest.raises(error):
        denoise_hdr(**args)


def test_missing_pyoidn_raises_backend_unavailable_with_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyoidn", None)  # makes `import pyoidn` raise ImportError
    assert not denoise_available()
    with pytest.raises(BackendUnavailableError, match="pip install pyoidn"):
        denoise_hdr(np.ones((8, 8, 3), np.float32))


# --------------------------------------------------------------------------------------------------
# render_street(denoise=True)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("mitsuba")
    from scene_tools.street import StreetConfig, generate_street

    return generate_street(StreetConfig.tiny(seed=3))


def test_render_street_denoise_option_is_checked(tiny, monkeypatch):
    from scene_tools.pbr import render_street

    with pytest.raises(InvalidInputError):
        render_street(tiny, progress=False, denoise="yes")
    monkeypatch.setitem(sys.modules, "pyoidn", None)
    with pytest.raises(BackendUnavailableError, match="pip install pyoidn"):
        render_street(tiny, progress=False, denoise=True)


@needs_oidn
def test_render_street_denoised_frames_are_finite_flagged_and_less_noisy(tiny, tmp_path):
    from scene_tools.pbr import StreetFrames, render_street, tonemap

    raw = render_street(tiny, progress=False)
    den = render_street(tiny, progress=False, denoise=True)
    n, K = len(tiny.trajectory), tiny.trajectory.intrinsics
    assert den.hdr.shape == (n, K.height, K.width, 3)
    assert np.isfinite(den.hdr).all() and den.hdr.min() >= 0 and np.isfinite(den.rgb).all()
    np.testing.assert_array_equal(den.rgb, tonemap(den.hdr, den.render_info["exposure"]))
    assert not np.array_equal(den.hdr, raw.hdr)
    for k in ("depth", "instance_ids", "alpha"):  # only the colour is denoised
        np.testing.assert_array_equal(getattr(den, k), getattr(raw, k))
    assert raw.render_info["denoised"] is False and "denoiser" not in raw.render_info
    info = den.render_info
    assert info["denoised"] is True and info["denoiser"]["name"] == "oidn" and info["denoiser"]["hdr"] is True
    assert len(info["seconds"]["denoise"]) == n and len(info["seconds"]["aux"]) == n
    # closer to a 64-spp reference of the same poses (other sampler seeds) than the raw 4-spp frames
    ref = render_street(tiny, progress=False, spp=64, seed=1000)
    assert _mse(den.rgb, ref.rgb) < 0.7 * _mse(raw.rgb, ref.rgb)
    back = StreetFrames.load(den.save(tmp_path / "frames", previews=False))
    assert back.render_info == den.render_info


@needs_oidn
def test_aux_images_are_first_hit_albedo_and_camera_facing_normals(tiny):
    """The emitter renders give the parts' base colours and unit normals facing the camera where fully covered."""
    import mitsuba as mi

    from scene_tools.pbr import _aux_images, _WorldGeometry, render_street, set_variant

    set_variant(None)
    traj = tiny.trajectory[:1]
    fr = render_street(tiny, trajectory=traj, progress=False)
    albedo, normal = _aux_images(
        mi, _WorldGeometry(tiny, tiny.ids), float(traj.times[0]), traj.poses[0], traj.intrinsics, 4, 0
    )
    ids, alpha = fr.instance_ids[0], fr.alpha[0]
    assert np.all(albedo[alpha == 0] == 0) and np.all(normal[alpha == 0] == 0)  # sky
    full = alpha == 1
    length = np.linalg.norm(normal[full], axis=-1)
    assert np.median(length) > 0.999
    # normals face the camera: dot(n, direction to the camera) > 0
    K, c2w = traj.intrinsics, traj.poses[0]
    v, u = np.nonzero(full)
    rays = np.stack([(u + 0.5 - K.cx) / K.fx, (v + 0.5 - K.cy) / K.fy, np.ones_like(u, dtype=float)], -1) @ c2w[:3, :3].T
    assert np.mean((normal[full] * -rays).sum(-1) > 0) > 0.99
    # the road's albedo is its base colour
    road = tiny.ids_of("road")[0]
    colour = np.asarray(tiny.object(road).parts[0].base_color, np.float32)
    inner = (ids == road) & full
    np.testing.assert_allclose(np.median(albedo[inner], axis=0), colour, atol=1e-5)
