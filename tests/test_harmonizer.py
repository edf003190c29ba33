"""Streaming Harmonizer: independent streams, bounded cache, resets, in/out kinds, batching, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import simharmony.harmonizer as harmonizer_mod
from simharmony.errors import InvalidInputError, MissingFileError, NonFiniteError, ShapeMismatchError
from simharmony.harmonizer import Harmonizer
from simharmony.models import Enhancer

from _helpers import small_enhancer


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_model(trivial: bool = False) -> Enhancer:
    return small_enhancer(trained_like=not trivial)


def np_frames(n, h=32, w=48, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((h, w, 3), dtype=np.float32) for _ in range(n)]


def reference_stream(model, xs, k=4):
    """Independent streaming loop over the model itself (no Harmonizer)."""
    cache, outs = [], []
    with torch.no_grad():
        for x in xs:
            t = torch.from_numpy(x).permute(2, 0, 1)[None]
            out, z = model(t, cache[:k])
            cache.insert(0, z)
            outs.append(out[0].permute(1, 2, 0).numpy())
    return outs


def test_stream_matches_reference_and_cache_is_bounded():
    model = make_model()
    h = Harmonizer(model)
    xs = np_frames(7)
    ref = reference_stream(model, xs)
    calls = []
    real = model.forward
    model.forward = lambda *a, **kw: calls.append(kw.get("past_kv") is not None) or real(*a, **kw)
    for t, x in enumerate(xs):
        out = h.enhance(x)
        assert h.context_length() == min(t + 1, 4)
        np.testing.assert_allclose(out, ref[t], atol=1e-6)
    # frames after the first read the cached per-layer keys/values, not the raw latents
    assert calls == [False] + [True] * (len(xs) - 1) and len(h._streams["default"].context) == 4


def test_stream_with_colour_anchor_matches_reference():
    """The anchor reads the previous output's statistics from the cached context entries as it would from
    the latents: the stream equals the plain loop, and the anchor does change the output."""
    model = small_enhancer(colour_anchor=True)
    h = Harmonizer(model)
    xs = np_frames(6, seed=3)
    ref = reference_stream(model, xs)
    outs = [h.enhance(x) for x in xs]
    for out, r in zip(outs, ref):
        np.testing.assert_allclose(out, r, atol=1e-6)
    model.backbone.colour_anchor = None
    assert np.abs(reference_stream(model, xs)[3] - ref[3]).max() > 1e-3


def test_streams_are_independent():
    model = make_model()
    a, b = np_frames(4, seed=1), np_frames(4, seed=2)
    h = Harmonizer(model)
    outs_a = []
    for fa, fb in zip(a, b):
        outs_a.append(h.enhance(fa, stream="A"))
        h.enhance(fb, stream="B")
    ref = reference_stream(model, a)
    for o, r in zip(outs_a, ref):
        np.testing.assert_allclose(o, r, atol=1e-6)
    assert set(h.streams) == {"A", "B"}


def test_resolution_change_cut_and_reset():
    model = make_model()
    h = Harmonizer(model)
    for x in np_frames(3):
        h.enhance(x, stream="cam")
    assert h.context_length("cam") == 3
    big = np_frames(1, 40, 56, seed=3)[0]
    out = h.enhance(big, stream="cam")
    assert h.context_length("cam") == 1
    np.testing.assert_allclose(out, reference_stream(model, [big])[0], atol=1e-6)
    h.enhance(big, stream="cam")
    out_cut = h.enhance(big, stream="cam", cut=True)
    assert h.context_length("cam") == 1
    np.testing.assert_allclose(out_cut, reference_stream(model, [big])[0], atol=1e-6)
    h.enhance(big, stream="other")
    h.reset("cam")
    assert h.context_length("cam") == 0 and h.context_length("other") == 1
    h.reset()
    assert h.streams == []


def test_batch_equals_sequential():
    model = make_model()
    seq, bat = Harmonizer(model), Harmonizer(model)
    a, b, c = np_frames(3, seed=4), np_frames(3, seed=5), np_frames(3, 24, 40, seed=6)
    mask = np.zeros((32, 48), bool)
    mask[5:20, 5:30] = True
    batch_sizes = []
    real_forward = model.forward
    model.forward = lambda x, *args, **kw: batch_sizes.append(x.shape[0]) or real_forward(x, *args, **kw)
    for t in range(3):
        batch_sizes.clear()
        outs = bat.enhance_batch({"a": a[t], "b": b[t], "c": c[t]}, masks={"a": mask})
        assert sorted(batch_sizes) == [1, 2]  # a (masked) and b (no mask) in one forward, c (other size) apart
        np.testing.assert_allclose(outs["a"], seq.enhance(a[t], mask=mask, stream="a"), atol=1e-5)
        np.testing.assert_allclose(outs["b"], seq.enhance(b[t], stream="b"), atol=1e-5)
        np.testing.assert_allclose(outs["c"], seq.enhance(c[t], stream="c"), atol=1e-5)
        assert list(outs) == ["a", "b", "c"]


def test_input_output_kinds_roundtrip_with_identity_model():
    h = Harmonizer(make_model(trivial=True))
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = h.enhance(u8, stream=1)
    assert out.dtype == np.uint8 and out.shape == u8.shape and np.array_equal(out, u8)
    f64 = rng.random((20, 30, 3))
    out = h.enhance(f64, stream=2)
    assert out.dtype == np.float64 and np.allclose(out, f64, atol=1e-6)
    chw = torch.rand(3, 20, 30)
    out = h.enhance(chw, stream=3)
    assert isinstance(out, torch.Tensor) and out.shape == chw.shape and torch.allclose(out, chw, atol=1e-6)
    hwc = torch.randint(0, 256, (20, 30, 3), dtype=torch.uint8)
    out = h.enhance(hwc, stream=4)
    assert out.dtype == torch.uint8 and out.shape == hwc.shape and torch.equal(out, hwc)


def test_mask_and_depth_kinds():
    h = Harmonizer(make_model())
    x = np_frames(1)[0]
    depth = np.full((32, 48), np.inf, np.float32)
    depth[20:] = 4.0
    for mask in (np.ones((32, 48), bool), np.full((32, 48, 1), 255, np.uint8), torch.rand(1, 32, 48)):
        out = h.enhance(x, mask=mask, depth=depth, stream="m")
        assert out.shape == x.shape and np.isfinite(out).all()


def test_bad_inputs_raise_specific_errors():
    h = Harmonizer(make_model())
    x = np_frames(1)[0]
    with pytest.raises(ShapeMismatchError):
        h.enhance(np.zeros((32, 48), np.float32))
    with pytest.raises(ShapeMismatchError):
        h.enhance(np.zeros((32, 48, 4), np.float32))
    with pytest.raises(ShapeMismatchError):
        h.enhance(torch.zeros(4, 32, 48))
    nan = x.copy()
    nan[3, 4, 1] = np.nan
    with pytest.raises(NonFiniteError):
        h.enhance(nan)
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        h.enhance(x * 255)
    with pytest.raises(InvalidInputError):
        h.enhance(np.zeros((32, 48, 3), np.int32))
    with pytest.raises(InvalidInputError):
        h.enhance([[0.0] * 3])
    with pytest.raises(ShapeMismatchError):
        h.enhance(x, mask=np.zeros((16, 48), bool))
    with pytest.raises(InvalidInputError):
        h.enhance(x, mask=np.full((32, 48), 2.0, np.float32))
    with pytest.raises(NonFiniteError):
        h.enhance(x, depth=np.full((32, 48), np.nan, np.float32))
    with pytest.raises(InvalidInputError):
        h.enhance(x, depth=np.full((32, 48), -1.0, np.float32))
    with pytest.raises(InvalidInputError):
        h.enhance_batch({})
    assert h.streams == []  # nothing was enhanced


def test_from_pretrained_folder_model_and_missing_default(tmp_path, monkeypatch):
    model = make_model()
    model.save_pretrained(tmp_path / "enh")
    x = np_frames(1)[0]
    a = Harmonizer.from_pretrained(tmp_path / "enh").enhance(x)
    b = Harmonizer.from_pretrained(model).enhance(x)
    np.testing.assert_allclose(a, b, atol=1e-6)
    monkeypatch.setattr(harmonizer_mod, "ENHANCER_DIR", tmp_path / "absent")
    with pytest.raises(MissingFileError, match="not trained yet"):
        Harmonizer.from_pretrained("default")
    monkeypatch.setattr(harmonizer_mod, "ENHANCER_DIR", tmp_path / "enh")
    np.testing.assert_allclose(Harmonizer.from_pretrained("default").enhance(x), a, atol=1e-6)


def test_bfloat16_close_to_float32():
    x = np_frames(1)[0]
    f32, bf = Harmonizer(make_model()), Harmonizer(make_model(), dtype=torch.bfloat16)
    for _ in range(2):  # the second frame uses one cached latent
        ref, out = f32.enhance(x), bf.enhance(x)
    assert out.dtype == np.float32 and np.abs(out - ref).mean() < 0.02
    with pytest.raises(InvalidInputError):
        Harmonizer(make_model(), dtype=torch.float16)


def test_reencode_context_matches_for_lossless_codec():
    xs = np_frames(3)
    a, b = Harmonizer(make_model()), Harmonizer(make_model(), reencode_context=True)
    cached = {}  # the latent each stream derives its cached context from

    def recording(name, real):
        def context_features(z):
            cached.setdefault(name, z.clone())
            return real(z)
        return context_features

    for name, h in (("a", a), ("b", b)):
        h.model.context_features = recording(name, h.model.context_features)
    a.enhance(xs[0]), b.enhance(xs[0])
    za, zb = cached["a"], cached["b"]
    # lossless codec in [-1, 1]: E(clamp(D(z))) is z clamped to [-1, 1]
    assert not torch.equal(za, zb) and torch.allclose(zb, za.clamp(-1, 1), atol=1e-6)
    for x in xs[1:]:
        oa, ob = a.enhance(x), b.enhance(x)
    assert np.abs(oa - ob).mean() < 0.02


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_stream():
    h = Harmonizer(make_model(), device="cuda", dtype=torch.bfloat16)
    x = torch.rand(3, 64, 96, device="cuda")
    for _ in range(5):
        out = h.enhance(x)
    assert out.device.type == "cuda" and out.shape == x.shape and h.context_length() == 4
