"""Render-callback plugin: enhanced frames of the caller's kind, per-camera streams, toggles, resets
(size, teleport, failure), the failure policy, bad frames, bounded state over many frames, stats."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from simharmony.errors import ConfigError, InvalidInputError, NonFiniteError, ShapeMismatchError
from simharmony.harmonizer import Harmonizer
from simharmony.models import Enhancer
from simharmony.plugin import HarmonizedRenderer, PluginConfig, harmonized, pose_jump

from _helpers import small_enhancer

H, W = 24, 40

pytestmark = pytest.mark.usefixtures("one_torch_thread")


make_model = small_enhancer


def frame(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


def identity_render(camera):
    """Render callable whose 'camera' is the frame itself (or a dict holding it)."""
    return camera


def pose_at(x: float, yaw_deg: float = 0.0) -> np.ndarray:
    c, s = np.cos(np.deg2rad(yaw_deg)), np.sin(np.deg2rad(yaw_deg))
    m = np.eye(4)
    m[:2, :2] = [[c, -s], [s, c]]
    m[0, 3] = x
    return m


def model_first_frame(model: Enhancer, x: np.ndarray) -> np.ndarray:
    """Reference: the model itself on one frame without context (no plugin, no Harmonizer)."""
    with torch.no_grad():
        out, _ = model(torch.from_numpy(x).permute(2, 0, 1)[None])
    return out[0].permute(1, 2, 0).numpy()


# ---------------------------------------------------------------------------------------------- outputs
def test_fresh_enhancer_is_identity_and_trained_model_changes_frames():
    x = frame()
    ident = HarmonizedRenderer(identity_render, make_model(trained_like=False))
    np.testing.assert_allclose(ident(x), x, atol=1e-5)
    model = make_model()
    plug = HarmonizedRenderer(identity_render, model)
    y = plug(x)
    assert np.abs(y - x).mean() > 1e-3
    np.testing.assert_allclose(y, model_first_frame(model, x), atol=1e-5)
    assert plug.last_info().enhanced


@pytest.mark.parametrize(
    "make",
    [
        lambda x: (x * 255).round().astype(np.uint8),
        lambda x: x.astype(np.float32),
        lambda x: x.astype(np.float64),
        lambda x: torch.from_numpy(x).permute(2, 0, 1).contiguous(),  # [3, H, W] float32
        lambda x: torch.from_numpy((x * 255).round().astype(np.uint8)),  # [H, W, 3] uint8
        lambda x: torch.from_numpy(x).to(torch.float64),  # [H, W, 3] float64
    ],
    ids=["np-u8", "np-f32", "np-f64", "torch-chw-f32", "torch-hwc-u8", "torch-hwc-f64"],
)
def test_kind_dtype_layout_preserved(make):
    x = make(frame())
    ident = HarmonizedRenderer(identity_render, make_model(trained_like=False))
    y = ident(x)
    assert type(y) is type(x) and y.shape == x.shape and y.dtype == x.dtype
    if isinstance(x, torch.Tensor):
        assert y.device == x.device
        x, y = x.double().numpy(), y.double().numpy()
    tol = 1.0 if x.dtype == np.uint8 else 1e-5  # uint8 round trip: at most one level
    np.testing.assert_allclose(y.astype(np.float64), x.astype(np.float64), atol=tol)
    changed = HarmonizedRenderer(identity_render, make_model())(make(frame()))
    assert changed.shape == y.shape


def test_mapping_and_object_results_keep_their_other_fields():
    model = make_model()
    x, mask, depth = frame(), np.zeros((H, W), np.float32), np.full((H, W), 5.0, np.float32)
    mask[5:10, 5:20] = 1.0
    calls = []

    class Spy(Harmonizer):
        def enhance(self, frame, mask=None, depth=None, stream="default", cut=False, **kw):
            calls.append((mask is not None, depth is not None, stream, cut))
            return super().enhance(frame, mask=mask, depth=depth, stream=stream, cut=cut, **kw)

    plug = HarmonizedRenderer(lambda c: {"rgb": x, "mask": mask, "depth": depth, "extra": 7}, Spy(model), keep_raw=True)
    out = plug("cam")
    assert out["extra"] == 7 and out["rgb_raw"] is x and out["mask"] is mask
    assert np.abs(out["rgb"] - x).mean() > 1e-3
    assert calls == [(True, True, "default", False)]

    no_cond = HarmonizedRenderer(lambda c: {"rgb": x, "mask": mask}, Spy(model), use_mask=False)
    assert "rgb_raw" not in no_cond("cam")
    assert calls[-1][0] is False

    class Result:
        def __init__(self):
            self.rgb, self.inserted_mask, self.depth, self.pose = x, mask, depth, np.eye(4)

    r = Result()
    obj = HarmonizedRenderer(lambda c: r, Spy(model))("cam")
    assert isinstance(obj, Result) and obj is not r and r.rgb is x and obj.inserted_mask is mask
    assert np.abs(obj.rgb - x).mean() > 1e-3


# ---------------------------------------------------------------------------------------------- streams
def test_cameras_are_independent_streams():
    model = make_model()
    plug = HarmonizedRenderer(lambda cam: cam["rgb"], model, camera_key=lambda cam: cam["name"])
    for i in range(3):
        plug({"name": "front", "rgb": frame(i)})
    left_first = plug({"name": "left", "rgb": frame(10)})
    assert plug.context_length("front") == 3 and plug.context_length("left") == 1
    # the left camera's first frame saw no context from the front camera
    np.testing.assert_allclose(left_first, model_first_frame(model, frame(10)), atol=1e-5)
    # the keyword form names the camera per call and wins over the key function
    plug({"name": "front", "rgb": frame(3)}, camera_id="rear")
    assert plug.context_length("rear") == 1 and plug.context_length("front") == 3
    assert sorted(plug.cameras) == ["front", "left", "rear"]


def test_several_cameras_interleaved_match_separate_plugins():
    model = make_model()
    shared = HarmonizedRenderer(identity_render, model)
    alone = {c: HarmonizedRenderer(identity_render, model) for c in ("a", "b", "c")}
    for t in range(5):
        for k, c in enumerate(("a", "b", "c")):
            x = frame(10 * t + k)
            np.testing.assert_allclose(shared(x, camera_id=c), alone[c](x, camera_id=c), atol=1e-6)
    assert all(shared.context_length(c) == 4 for c in ("a", "b", "c"))


def test_toggle_returns_raw_and_resets_context():
    model = make_model()
    plug = HarmonizedRenderer(identity_render, model)
    for i in range(3):
        plug(frame(i))
    assert plug.context_length() == 3
    plug.enabled = False
    assert plug.context_length() == 0
    x = frame(5)
    assert plug(x) is x and not plug.last_info().enhanced
    assert plug.context_length() == 0
    plug.enabled = True
    y = plug(frame(6))  # no stale context from before the switch
    np.testing.assert_allclose(y, model_first_frame(model, frame(6)), atol=1e-5)
    assert plug.context_length() == 1
    assert plug.stats()["resets"]["toggle"] == 2


def test_size_change_resets_context():
    plug = HarmonizedRenderer(identity_render, make_model())
    for i in range(3):
        plug(frame(i))
    small = frame(9, h=16, w=24)
    out = plug(small)
    assert out.shape == small.shape and plug.context_length() == 1
    assert plug.last_info().reset_reason == "size" and plug.stats()["resets"]["size"] == 1


def test_teleport_resets_context_small_moves_do_not():
    model = make_model()
    x = frame()
    plug = HarmonizedRenderer(lambda pose: x, model, teleport_translation_m=5.0, teleport_rotation_deg=30.0)
    for i in range(3):
        plug(pose_at(0.8 * i, yaw_deg=3 * i))  # a car at 8 m/s, gently turning
    assert plug.context_length() == 3
    plug(pose_at(50.0))
    assert plug.context_length() == 1 and plug.last_info().reset_reason == "teleport"
    plug(pose_at(50.5))
    assert plug.context_length() == 2
    plug(pose_at(50.5, yaw_deg=90))  # turning on the spot
    assert plug.context_length() == 1 and plug.stats()["resets"]["teleport"] == 2
    # a pose in the render result counts too; thresholds of None switch detection off
    off = HarmonizedRenderer(lambda c: {"rgb": x, "pose": c}, model, teleport_translation_m=None,
                             teleport_rotation_deg=None)
    off(pose_at(0.0))
    off(pose_at(100.0, yaw_deg=120))
    assert off.context_length() == 2
    on = HarmonizedRenderer(lambda c: {"rgb": x, "pose": c}, model, pose_fn=None)
    on(pose_at(0.0))
    on(pose_at(100.0))
    assert on.context_length() == 1


def test_pose_jump_values():
    dt, dr = pose_jump(pose_at(0.0), pose_at(3.0, yaw_deg=45.0))
    assert dt == pytest.approx(3.0) and dr == pytest.approx(45.0)


# ---------------------------------------------------------------------------------------------- failures
class Broken(Harmonizer):
    def enhance(self, *args, **kwargs):
        raise RuntimeError("backend exploded")


def test_enhancer_error_returns_raw_logged_once_per_camera(caplog):
    plug = HarmonizedRenderer(identity_render, Broken(make_model()))
    with caplog.at_level(logging.WARNING, logger="simharmony.plugin"):
        for i in range(4):
            x = frame(i)
            assert plug(x) is x
        x = frame(9)
        assert plug(x, camera_id="other") is x
    warnings = [r for r in caplog.records if r.name == "simharmony.plugin"]
    assert len(warnings) == 2 and "RuntimeError" in warnings[0].getMessage()
    st = plug.stats()
    assert st["failed"] == 5 and st["failures"] == {"RuntimeError": 5} and st["enhanced"] == 0
    assert "RuntimeError: backend exploded" in plug.last_info("other").error


def test_strict_raises_enhancer_errors():
    plug = HarmonizedRenderer(identity_render, Broken(make_model()), strict=True)
    with pytest.raises(RuntimeError, match="backend exploded"):
        plug(frame())
    strict = HarmonizedRenderer(identity_render, make_model(), strict=True)
    bad = frame()
    bad[0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        strict(bad)
    with pytest.raises(ShapeMismatchError):
        strict(np.zeros((H, W, 4), np.float32))


def test_errors_of_the_render_callable_propagate():
    def render(camera):
        raise KeyError("no such camera in my simulator")

    plug = HarmonizedRenderer(render, make_model())
    with pytest.raises(KeyError, match="no such camera"):
        plug("cam")


def test_nan_frame_policy_then_recovery(caplog):
    model = make_model()
    plug = HarmonizedRenderer(identity_render, model)
    plug(frame(0))
    plug(frame(1))
    bad = frame(2)
    bad[3, 4, 1] = np.nan
    with caplog.at_level(logging.WARNING, logger="simharmony.plugin"):
        assert plug(bad) is bad
        assert plug(bad) is bad
    assert sum("NonFiniteError" in r.getMessage() for r in caplog.records) == 1
    good = plug(frame(3))  # context restarts after the gap
    np.testing.assert_allclose(good, model_first_frame(model, frame(3)), atol=1e-5)
    assert plug.context_length() == 1 and plug.last_info().reset_reason == "error"


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((H, W, 4), np.float32),
        np.zeros((H, W), np.float32),
        np.zeros((H, W, 3), np.int32),
        torch.zeros(2, H, W),
        np.zeros((1, 1, 3), np.uint8),
        {"image": np.zeros((H, W, 3), np.float32)},
        {"rgb": np.zeros((H, W, 3), np.float32), "mask": np.zeros((H + 1, W), np.float32)},
        "not a frame",
    ],
    ids=["4-channels", "2d", "int32", "torch-2ch", "1x1", "dict-no-rgb", "mask-size", "string"],
)
def test_bad_frames_are_returned_raw_and_counted(bad):
    plug = HarmonizedRenderer(identity_render, make_model())
    assert plug(bad) is bad
    st = plug.stats()
    assert st["failed"] == 1 and sum(st["failures"].values()) == 1
    with pytest.raises((InvalidInputError, ShapeMismatchError)):
        HarmonizedRenderer(identity_render, make_model(), strict=True)(bad)


def test_float_overshoot_is_clipped_not_failed():
    x = frame() * 1.03 - 0.01  # [-0.01, 1.02]: usual 3DGS overshoot
    y = HarmonizedRenderer(identity_render, make_model(trained_like=False))(x)
    np.testing.assert_allclose(y, np.clip(x, 0, 1), atol=1e-5)
    plug = HarmonizedRenderer(identity_render, make_model(), clip_input=False)
    assert plug(x) is x and plug.stats()["failures"] == {"InvalidInputError": 1}


# ---------------------------------------------------------------------------------------------- load
def test_many_frames_keep_state_bounded():
    model = make_model()
    k = model.config.context_frames
    plug = HarmonizedRenderer(identity_render, model, timing_window=16, max_cameras=3)
    xs = [frame(i, h=16, w=16) for i in range(4)]
    for t in range(60):
        cam = f"cam{t % 3}"
        plug(xs[t % 4], camera_id=cam)
        assert plug.context_length(cam) <= k
        assert all(len(s.context) <= k for s in plug.harmonizer._streams.values())
    st = plug.stats()
    assert st["frames"] == 60 and st["enhanced"] == 60
    assert all(c["render_ms"]["count"] == 16 and c["context_length"] == k for c in st["cameras"].values())
    for t in range(3):  # more cameras than max_cameras: the least recently used are dropped
        plug(xs[0], camera_id=f"new{t}")
    assert sorted(plug.cameras) == ["new0", "new1", "new2"]
    assert sorted(plug.harmonizer.streams) == ["new0", "new1", "new2"]


def test_stats_and_reset():
    plug = HarmonizedRenderer(identity_render, make_model())
    for i in range(5):
        plug(frame(i))
    st = plug.stats()
    assert st["frames"] == 5 and st["enhanced"] == 5 and st["failed"] == 0
    for key in ("render_ms", "enhance_ms"):
        s = st[key]
        assert s["count"] == 5 and 0 <= s["median"] <= s["p90"] and np.isfinite(s["mean"])
    plug.reset()
    assert plug.context_length() == 0 and plug.stats()["resets"]["manual"] == 1


def test_decorator_form_and_options():
    model = make_model(trained_like=False)

    @harmonized(model, strict=True)
    def render_pose(pose):
        """Render a pose."""
        return frame(int(pose[0, 3]))

    assert isinstance(render_pose, HarmonizedRenderer) and render_pose.__name__ == "render_pose"
    assert render_pose.__doc__ == "Render a pose."
    np.testing.assert_allclose(render_pose(pose_at(2.0)), frame(2), atol=1e-5)
    assert render_pose.config.strict
    with pytest.raises(ConfigError, match="unknown"):
        HarmonizedRenderer(identity_render, model, stirct=True)
    with pytest.raises(ConfigError):
        PluginConfig(teleport_translation_m=-1.0)
    cfg = PluginConfig(strict=True, teleport_rotation_deg=None)
    assert PluginConfig.from_dict(cfg.to_dict()) == cfg


def test_harmonizer_from_folder(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path / "enh")
    plug = HarmonizedRenderer(identity_render, str(tmp_path / "enh"))
    np.testing.assert_allclose(plug(frame()), model_first_frame(model, frame()), atol=1e-5)
