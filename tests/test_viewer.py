"""Standalone viewer logic (ViewerApp) on a tiny scene, its viser wiring without a browser, and the CLI."""

from __future__ import annotations

import argparse
import base64
import contextlib
import math
import re
import socket

import cv2
import numpy as np
import pytest
import torch

from scene_tools.assets import AssetBank, extract_asset
from scene_tools.cameras import Intrinsics, straight_trajectory
from scene_tools.scene import Scene
from simharmony.errors import InvalidInputError, MissingFileError, UnknownAssetError
from simharmony.harmonizer import Harmonizer
from simharmony.models import Enhancer, EnhancerConfig
from simharmony_viewer import ViewerApp, ViewerConfig, add_cli

from _helpers import ground_and_post_scene

SMALL = {"channels": (16, 32, 32), "heads": 4, "emb_dim": 32, "cond_dim": 8}
INTR = Intrinsics.from_fov(70.0, 48, 32)
SHIFT = (0.3, 0.0, -0.3)  # what the colour-shift model adds to R, G, B

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def colour_shift_model(shift=SHIFT) -> Enhancer:
    """An Enhancer that adds a constant ``shift`` to R, G, B (then clamps): its residual conv has only a bias.

    The pixel-unshuffle codec (factor f) maps image x in [0, 1] to latents 2x - 1, channel c*f*f + k for
    colour c, so a latent bias b on colour c's f*f channels adds b / 2 to that colour.
    """
    torch.manual_seed(0)
    model = Enhancer(EnhancerConfig(**SMALL)).eval()
    f = model.config.codec_downscale
    conv = model.backbone.conv_out
    with torch.no_grad():
        conv.weight.zero_()
        for c, s in enumerate(shift):
            conv.bias[c * f * f:(c + 1) * f * f] = 2.0 * s
    return model


def tiny_scene() -> Scene:
    """Textured ground and a yellow post (instance 2) ahead and to the right of the ego path."""
    return ground_and_post_scene(INTR, post_x=8.0, post_top=2.0, post_step=0.12, post_scale=0.25)


def trajectory(n: int = 6):
    return straight_trajectory(INTR, n, start=(0.0, 0.0, 1.6), speed_mps=5.0, pitch_deg=-5.0)


@pytest.fixture()
def bank(tmp_path) -> AssetBank:
    asset = extract_asset(tiny_scene().background, 2, category="post", source="tiny")
    b = AssetBank(tmp_path / "bank")
    b.add(asset)
    return b


def make_app(bank=None, harmonizer=True, **cfg) -> ViewerApp:
    h = Harmonizer(colour_shift_model()) if harmonizer else None
    return ViewerApp(tiny_scene(), trajectory(), h, bank, config=ViewerConfig(**cfg), harmonizer_note="test model")


def expected_shifted(raw_u8: np.ndarray) -> np.ndarray:
    x = raw_u8.astype(np.float32) / 255.0 + np.array(SHIFT, dtype=np.float32)
    return (np.clip(x, 0, 1) * 255.0 + 0.5).astype(np.uint8)


def test_raw_frame_matches_scene_render_and_harmonized_adds_the_shift():
    app = make_app()
    app.set_frame(2)
    f = app.render()
    ref_scene = tiny_scene()
    ref = ref_scene.render_frame(trajectory().poses[2], float(trajectory().times[2]), INTR).rgb.numpy()
    assert f.raw.shape == (32, 48, 3) and f.raw.dtype == np.uint8
    assert np.abs(f.raw.astype(int) - np.round(ref * 255).astype(int)).max() <= 1
    assert f.harmonized is None and f.shown is f.raw and "frame 3/6" in f.status

    app.set_harmonize(True)
    g = app.render()
    assert g.harmonized is not None and g.shown is g.harmonized
    np.testing.assert_array_equal(g.raw, f.raw)  # same state: the raw render is reused
    assert np.abs(g.harmonized.astype(int) - expected_shifted(g.raw).astype(int)).max() <= 2
    assert "harmonizer" in g.status

    app.set_harmonize(False)
    np.testing.assert_array_equal(app.render().shown, f.raw)


def test_lateral_shift_moves_the_camera():
    app = make_app()
    app.set_frame(1)
    base = app.render().raw
    app.set_lateral_shift(2.0)
    np.testing.assert_allclose(app.camera_pose(), trajectory().shifted_laterally(2.0).poses[1])
    moved = app.render().raw
    assert np.abs(moved.astype(int) - base.astype(int)).mean() > 2.0
    with pytest.raises(InvalidInputError, match="lateral shift"):
        app.set_lateral_shift(99.0)
    with pytest.raises(InvalidInputError, match="lateral shift"):
        app.set_lateral_shift(float("nan"))


def test_insert_and_remove_asset_changes_the_frame(bank):
    app = make_app(bank, insert_lateral_m=1.0, insert_forward_m=6.0, insert_speed_scale=0.0)
    assert app.asset_ids == bank.list()
    base = app.render().raw
    iid = app.insert_asset(app.asset_ids[0])
    assert app.inserted == [(iid, app.asset_ids[0])] and iid in app.scene.inserted_ids
    with_asset = app.render().raw
    assert (np.abs(with_asset.astype(int) - base.astype(int)).max(-1) > 30).sum() > 10  # the post shows up
    assert app.remove_inserted() == iid and app.scene.inserted_ids == []
    np.testing.assert_array_equal(app.render().raw, base)
    with pytest.raises(UnknownAssetError):
        app.insert_asset("no-such-asset")
    with pytest.raises(InvalidInputError, match="nothing inserted"):
        app.remove_inserted()


def test_temporal_context_continues_on_next_frame_and_restarts_on_jumps():
    app = make_app()
    app.set_harmonize(True)
    h = app.harmonizer
    for i in range(3):
        app.set_frame(i)
        app.render()
    assert h.context_length("viewer") == 3
    app.render()  # same frame again: no second entry
    assert h.context_length("viewer") == 3
    app.set_frame(5)  # a jump
    app.render()
    assert h.context_length("viewer") == 1
    app.set_lateral_shift(0.5)  # same index, new camera path
    app.render()
    assert h.context_length("viewer") == 1


def test_bad_input_and_missing_harmonizer():
    app = make_app(harmonizer=False)
    with pytest.raises(InvalidInputError, match="no harmonizer"):
        app.set_harmonize(True)
    with pytest.raises(InvalidInputError, match="out of range"):
        app.set_frame(6)
    with pytest.raises(InvalidInputError, match="must be an int"):
        app.set_frame(1.5)
    with pytest.raises(InvalidInputError, match="no asset bank"):
        app.insert_asset("x")
    with pytest.raises(InvalidInputError):
        ViewerApp("not a scene", trajectory())


def test_enhancer_failure_shows_raw_frame():
    app = make_app()
    app.set_harmonize(True)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    app.harmonizer.enhance = broken
    f = app.render()
    assert f.harmonized is None and f.shown is f.raw and "FAILED" in f.status and "boom" in f.status


def test_from_paths_warns_when_default_weights_are_missing(tmp_path, monkeypatch):
    import simharmony.harmonizer as harmonizer_mod
    import simharmony.sim as sim_mod
    from simharmony.paths import DEMO_ASSETS_DIR, DEMO_SCENE_DIR

    monkeypatch.setattr(harmonizer_mod, "ENHANCER_DIR", tmp_path / "missing")
    monkeypatch.setattr(sim_mod, "ENHANCER_DIR", tmp_path / "missing")
    app = ViewerApp.from_paths(DEMO_SCENE_DIR, DEMO_ASSETS_DIR, "default", config=ViewerConfig(scale=0.25))
    assert app.warning and "UNTRAINED" in app.warning
    assert app.num_frames > 1 and app.asset_ids and (app.intrinsics.width, app.intrinsics.height) == (64, 36)
    model_dir = tmp_path / "model"
    colour_shift_model().save_pretrained(model_dir)
    app2 = ViewerApp.from_paths(DEMO_SCENE_DIR, None, str(model_dir), config=ViewerConfig(scale=0.25))
    assert app2.warning is None and app2.asset_ids == [] and str(model_dir) in app2.harmonizer_note


def test_cli_parser():
    p = argparse.ArgumentParser()
    add_cli(p.add_subparsers(dest="command"))
    args = p.parse_args(["view", "--port", "9123", "--model", "untrained", "--scale", "0.5"])
    assert args.command == "view" and args.port == 9123 and args.model == "untrained" and args.scale == 0.5
    assert callable(args.func)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def decode_panel_image(markdown: str) -> np.ndarray:
    m = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", markdown)
    assert m, "no PNG data URL in the panel markdown"
    img = cv2.imdecode(np.frombuffer(base64.b64decode(m.group(1)), np.uint8), cv2.IMREAD_COLOR)
    return img[..., ::-1]


@contextlib.contextmanager
def served(app: ViewerApp):
    """A ViewerServer of ``app`` that has shown its first frame; stopped afterwards."""
    pytest.importorskip("viser")
    from simharmony_viewer.server import ViewerServer

    srv = ViewerServer(app, port=free_port())
    try:
        assert srv.wait_for_frames(1, timeout=60)
        yield srv
    finally:
        srv.stop()


def settle(srv, done) -> None:
    """GUI callbacks run on viser's thread pool: wait (frame by frame, 10 s at most) until ``done()``."""
    for _ in range(50):
        if done():
            return
        srv.wait_for_frames(srv.frames_shown + 1, timeout=0.2)


def test_server_pushes_frames_and_reacts_to_gui_values(bank):
    app = make_app(bank)
    with served(app) as srv:
        raw = decode_panel_image(srv.image_md.content)
        np.testing.assert_array_equal(raw, app.render().raw)
        assert "**raw**" in srv.image_md.content
        n = srv.frames_shown
        srv.harmonize_cb.value = True  # as if clicked: runs the on_update callback
        assert srv.wait_for_frames(n + 1, timeout=60)
        settle(srv, lambda: "**harmonized**" in srv.image_md.content)
        assert app.harmonize
        shown = decode_panel_image(srv.image_md.content)
        assert np.abs(shown.astype(int) - expected_shifted(raw).astype(int)).max() <= 2
        assert list(srv.asset_dd.options) == bank.list()


# ---------------------------------------------------------------------------------------------- free camera
def test_free_camera_renders_any_pose_with_one_stream_per_client():
    from simharmony_viewer.app import compose_split

    app = make_app()
    pose0 = trajectory().poses[2]
    k = Intrinsics.from_fov(70.0, 64, 36)
    raw = app.render_view(pose0, k, stream="a")
    assert raw.raw.shape == (36, 64, 3) and raw.harmonized is None and "free camera, 64x36" in raw.status
    np.testing.assert_array_equal(raw.raw, _u8(app.scene.render_frame(pose0, float(app.trajectory.times[app.frame_index]), k).rgb))
    app.set_harmonize(True)
    h = app.harmonizer
    for step in range(3):  # a smooth move: every frame enters the stream's context
        pose = pose0.copy()
        pose[:3, 3] += [0.2 * step, 0.0, 0.0]
        frame = app.render_view(pose, k, stream="a")
    assert h.context_length("a") == 3 and "(new context)" not in frame.status
    assert np.abs(frame.shown.astype(int) - expected_shifted(frame.raw).astype(int)).max() <= 2
    far = pose0.copy()
    far[:3, 3] += [20.0, 0.0, 0.0]  # a teleport restarts the context
    assert "(new context)" in app.render_view(far, k, stream="a").status and h.context_length("a") == 1
    app.render_view(far, Intrinsics.from_fov(70.0, 32, 18), stream="a")  # so does a new resolution
    assert h.context_length("a") == 1
    app.render_view(pose0, k, stream="b")  # another client: its own stream
    assert h.context_length("b") == 1 and h.context_length("a") == 1
    # split view: left raw, right harmonized
    app.set_split(0.5)
    f = app.render_view(far, k, stream="a")
    np.testing.assert_array_equal(f.shown[:, :31], f.raw[:, :31])
    np.testing.assert_array_equal(f.shown[:, 33:], f.harmonized[:, 33:])
    assert np.array_equal(compose_split(f.raw, f.harmonized, 0.0), f.harmonized)
    with pytest.raises(InvalidInputError, match="split"):
        app.set_split(1.5)
    with pytest.raises(InvalidInputError, match="pose"):
        app.render_view(np.eye(3), k, stream="a")


def _u8(rgb) -> np.ndarray:
    return (np.clip(rgb.detach().cpu().numpy(), 0, 1) * 255 + 0.5).astype(np.uint8)


def test_any_scene_opens_ply_and_reconstruction_folders(tmp_path):
    from scene_tools.ply import save_ply
    from simharmony_viewer.app import load_scene_any, trajectory_through

    gaussians = tiny_scene().background
    save_ply(gaussians, tmp_path / "scene.ply")
    (tmp_path / "recon").mkdir()
    gaussians.save(tmp_path / "recon" / "scene.safetensors")
    for path in (tmp_path / "scene.ply", tmp_path / "recon"):
        app = ViewerApp.from_paths(path, None, None)
        frame = app.render()
        assert frame.raw.shape == (144, 256, 3) and frame.raw.std() > 5, f"{path}: nothing visible"
        assert len(app.trajectory) == 40
    scene, traj = load_scene_any(tmp_path / "recon")
    assert traj is None and len(trajectory_through(scene, frames=5)) == 5
    with pytest.raises(MissingFileError, match="no scene at"):
        load_scene_any(tmp_path)


def test_park_asset_at_a_ground_point_and_tracks(bank):
    from simharmony_viewer.server import client_view, ground_hit, matrix_to_wxyz, wxyz_to_matrix

    app = make_app(bank)
    iid = app.park_asset(bank.list()[0], 6.0, -1.0)
    tracks = app.inserted_tracks()
    assert list(tracks) == [iid] and np.allclose(tracks[iid][:, :2], [6.0, -1.0]) and tracks[iid].shape == (6, 3)
    # helpers of the server: ray to the ground, viser camera to pose + intrinsics, quaternions
    assert np.allclose(ground_hit([0, 0, 2], [1, 0, -1]), [2, 0, 0]) and ground_hit([0, 0, 2], [0, 0, 1]) is None
    r = trajectory().poses[1][:3, :3]
    assert np.allclose(wxyz_to_matrix(matrix_to_wxyz(r)), r, atol=1e-9)
    pose, k = client_view([1, 2, 3], matrix_to_wxyz(r), fov_y=math.radians(60), aspect=16 / 9, width_px=320)
    assert np.allclose(pose[:3, :3], r) and (k.width, k.height) == (320, 180)
    assert k.fy == pytest.approx(90 / math.tan(math.radians(30)))


def test_sun_control_gives_inserted_assets_a_shadow_hint_that_reaches_the_enhancer(bank):
    app = make_app(bank, insert_lateral_m=1.0, insert_forward_m=6.0, insert_speed_scale=0.0)
    app.insert_asset(app.asset_ids[0])
    seen = []
    real = app.harmonizer.enhance
    app.harmonizer.enhance = lambda *a, **kw: seen.append(kw.get("shadow_hint")) or real(*a, **kw)
    app.set_harmonize(True)
    assert app.sun is None
    app.render()
    assert seen[-1] is None  # no sun: no hint
    app.set_sun(90.0, 30.0)  # low sun on the left: the post's shadow falls to the right on the ground
    assert app.sun.azimuth_deg == 90.0
    app.render()
    hint = seen[-1]
    assert hint is not None and float(hint.max()) > 0.5
    app.set_sun(None)
    app.render()
    assert app.sun is None and seen[-1] is None
    with pytest.raises(InvalidInputError, match="elevation"):
        app.set_sun(10.0, -3.0)


def test_server_sun_controls_set_the_scene_sun(bank):
    app = make_app(bank)
    with served(app) as srv:
        assert not srv.sun_cb.value and srv.sun_az.disabled
        srv.sun_az.value = 200.0
        srv.sun_cb.value = True  # as if clicked: runs the on_update callback
        settle(srv, lambda: app.sun is not None)
        assert app.sun is not None and app.sun.azimuth_deg == 200.0 and not srv.sun_az.disabled
        srv.sun_cb.value = False
        settle(srv, lambda: app.sun is None)
        assert app.sun is None
