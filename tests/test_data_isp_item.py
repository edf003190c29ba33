"""PairItem validation and the software ISP (identity path against the renderer, independent references)."""

import numpy as np
import pytest

from simharmony.data.isp import IspParams, IspRanges, apply_isp, sample_isp_params, wb_gains_from_temperature
from simharmony.data.item import PairItem
from simharmony.errors import ConfigError, InvalidInputError, NonFiniteError, ShapeMismatchError


def _item(T=2, H=4, W=5, **over):
    rng = np.random.default_rng(0)
    kw = {
        "input": rng.uniform(size=(T, H, W, 3)).astype(np.float32),
        "target": rng.uniform(size=(T, H, W, 3)).astype(np.float32),
        "mask": np.ones((T, H, W), np.float32),
        "depth": np.full((T, H, W), 5.0, np.float32),
        "flow": np.zeros((T, H, W, 2), np.float32),
        "flow_valid": np.zeros((T, H, W), bool),
        "metadata": {"stream": "isp", "params": {}, "seed": 1, "scene_id": "s"},
    }
    kw.update(over)
    return PairItem(**kw)


def test_item_valid_and_frames():
    it = _item(T=3)
    it.flow[1:] = 1.0
    it.flow_valid[1:] = True
    assert it.is_sequence and it.num_frames == 3 and it.size == (4, 5)
    sub = it.frames(1, 2)
    assert sub.num_frames == 2 and not sub.flow_valid[0].any() and np.all(sub.flow[0] == 0)
    assert sub.flow_valid[1].all() and sub.metadata["frame_start"] == 1
    with pytest.raises(InvalidInputError):
        it.frames(2, 2)


@pytest.mark.parametrize(
    "over, err",
    [
        ({"target": np.zeros((2, 4, 6, 3), np.float32)}, ShapeMismatchError),
        ({"input": np.zeros((4, 5, 3), np.float32)}, ShapeMismatchError),
        ({"mask": np.full((2, 4, 5), 1.5, np.float32)}, InvalidInputError),
        ({"input": np.full((2, 4, 5, 3), np.nan, np.float32)}, NonFiniteError),
        ({"depth": np.full((2, 4, 5), np.nan, np.float32)}, NonFiniteError),
        ({"depth": np.zeros((2, 4, 5), np.float32)}, InvalidInputError),
        ({"flow_valid": np.ones((2, 4, 5), bool)}, InvalidInputError),
        ({"flow_valid": np.zeros((2, 4, 5), np.float32)}, InvalidInputError),
        ({"metadata": {"stream": "isp", "params": {}, "seed": 1}}, InvalidInputError),
        ({"metadata": {"stream": "isp", "params": {}, "seed": "1", "scene_id": "s"}}, InvalidInputError),
        ({"metadata": {"stream": "isp", "params": {"x": object()}, "seed": 1, "scene_id": "s"}}, InvalidInputError),
    ],
)
def test_item_rejects(over, err):
    with pytest.raises(err):
        _item(**over)


def test_item_depth_inf_ok():
    d = np.full((2, 4, 5), np.inf, np.float32)
    assert np.isinf(_item(depth=d).depth).all()


@pytest.fixture(scope="module")
def tiny_frames():
    from scene_tools.pbr import render_street
    from scene_tools.street import StreetConfig, generate_street

    layout = generate_street(StreetConfig.tiny(seed=2, exposure=1.3))
    return render_street(layout, progress=False)


def test_isp_identity_reproduces_renderer(tiny_frames):
    fr = tiny_frames
    params = IspParams(base_exposure=fr.render_info["exposure"])
    assert params.is_reference()
    for k in range(len(fr)):
        np.testing.assert_array_equal(apply_isp(fr.hdr[k], params), fr.rgb[k])


def test_isp_independent_references():
    rng = np.random.default_rng(1)
    hdr = rng.uniform(0, 0.8, size=(6, 7, 3)).astype(np.float32)
    srgb = lambda x: np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(np.maximum(x, 1e-12), 1 / 2.4) - 0.055)
    # +1 EV through a (non-reference) srgb path == doubling radiance
    out = apply_isp(hdr, IspParams(exposure_ev=1.0))
    np.testing.assert_allclose(out, np.clip(srgb(np.clip(2 * hdr, 0, 1)), 0, 1), atol=1e-5)
    # white balance gains per channel
    out = apply_isp(hdr, IspParams(wb_gains=(0.5, 1.0, 0.25), tone_curve="gamma", gamma=1.0))
    np.testing.assert_allclose(out, np.clip(hdr * [0.5, 1.0, 0.25], 0, 1), atol=1e-6)
    # saturation 0 -> grey (all channels equal to Rec.709 luma of the gamma output)
    out = apply_isp(hdr, IspParams(tone_curve="gamma", gamma=2.0, saturation=0.0))
    y = np.sqrt(np.clip(hdr, 0, 1)) @ np.array([0.2126, 0.7152, 0.0722])
    np.testing.assert_allclose(out, np.repeat(y[..., None], 3, -1), atol=1e-5)
    # black level lift, contrast S-curve fixed point at 0.5, monotone tone curves
    out = apply_isp(np.zeros((2, 2, 3), np.float32), IspParams(black_level=0.05))
    np.testing.assert_allclose(out, 0.05, atol=1e-6)
    half = (0.5 ** 2.2) * np.ones((1, 1, 3), np.float32)
    np.testing.assert_allclose(apply_isp(half, IspParams(tone_curve="gamma", gamma=2.2, contrast=1.4)), 0.5, atol=1e-5)
    ramp = np.linspace(0, 10, 200, dtype=np.float32)[:, None].repeat(3, 1)
    for curve in ("reinhard", "filmic", "gamma"):
        y = apply_isp(ramp, IspParams(tone_curve=curve))[:, 0]
        assert np.all(np.diff(y) >= -1e-7) and y[0] < 0.05 and 0.9 < y[-1] <= 1.0


def test_isp_noise_and_sampling_deterministic():
    hdr = np.full((16, 16, 3), 0.2, np.float32)
    p = IspParams(shot_noise=0.01, read_noise=0.01, noise_seed=3)
    a, b = apply_isp(hdr, p), apply_isp(hdr, p)
    np.testing.assert_array_equal(a, b)
    assert a.std() > 0.01
    s1 = sample_isp_params(np.random.default_rng(5))
    s2 = sample_isp_params(np.random.default_rng(5))
    assert s1 == s2 and not s1.is_reference()
    r = IspRanges()
    for k in range(30):
        s = sample_isp_params(np.random.default_rng(k))
        assert r.exposure_ev[0] <= s.exposure_ev <= r.exposure_ev[1] and s.tone_curve in r.tone_curves
    assert IspParams.from_dict(s1.to_dict()) == s1
    g = wb_gains_from_temperature(1.0)
    assert g[0] > 1 > g[2]


def test_isp_bad_input():
    with pytest.raises(ConfigError):
        IspParams(tone_curve="sepia")
    with pytest.raises(ConfigError):
        IspParams(wb_gains=(1.0, 0.0, 1.0))
    with pytest.raises(ConfigError):
        IspRanges(exposure_ev=(1.0, -1.0))
    with pytest.raises(ShapeMismatchError):
        apply_isp(np.zeros((4, 4), np.float32))
    with pytest.raises(NonFiniteError):
        apply_isp(np.full((2, 2, 3), np.inf, np.float32))
