"""Silent failures found by a hostile-input review (issue 26): each test failed on the code before its fix.

1. float frames far outside [0, 1] (0..255 in float) were clipped to white and returned as enhanced;
2. non-finite config numbers (depth_scale: .nan) loaded; 3. NaN enhancer output was returned as good;
4. images.txt without POINTS2D lines lost every second image, duplicate names passed;
5. `simharmony view --port 99999` hung, a taken port was silently replaced;
6. the Harmonizer kept every stream's context forever; 7. enhance_batch ignored keys not in frames;
8. damaged scene .safetensors loaded (no checksum), negative / float instance ids passed validate().
"""

from __future__ import annotations

import json
import math
import socket
import struct

import cv2
import numpy as np
import pytest
import torch

from simharmony.errors import (
    ConfigError,
    CorruptFileError,
    InvalidInputError,
    InvalidSceneError,
    NonFiniteError,
)
from simharmony.harmonizer import CLIP_TOLERANCE, DEFAULT_MAX_STREAMS, Harmonizer
from simharmony.models import Enhancer, EnhancerConfig
from simharmony.paths import ENHANCER_DIR
from simharmony.plugin import HarmonizedRenderer

from _helpers import small_enhancer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

H, W = 16, 24


def frame(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


def tiny_enhancer() -> Enhancer:
    """The smallest useful Enhancer (2 levels, K = 2): for tests that run many frames."""
    torch.manual_seed(0)
    return Enhancer(EnhancerConfig(channels=(8, 16), heads=4, temporal_levels=(1,), context_frames=2,
                                   emb_dim=16, cond_dim=4)).eval()


def nan_depth_model() -> Enhancer:
    """A small Enhancer whose config was changed after construction to depth_scale = NaN (what a NaN in
    config.yaml did before configs were checked): every output pixel is NaN when depth is given."""
    model = small_enhancer()
    model.config.depth_scale = float("nan")
    return model


def has_default_weights() -> bool:
    return (ENHANCER_DIR / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------- 1. range
def test_255_float_frame_is_a_failure_not_a_white_enhanced_frame():
    x = frame() * 255.0  # float32 holding 0..255
    plug = HarmonizedRenderer(lambda c: x, small_enhancer())
    y = plug(0)
    assert y is x  # the raw frame comes back, not a clipped near-white one
    info = plug.last_info()
    assert not info.enhanced and "InvalidInputError" in info.error and "[0, 1]" in info.error
    stats = plug.stats()
    assert stats["failures"] == {"InvalidInputError": 1} and stats["failed"] == 1 and stats["enhanced"] == 0
    strict = HarmonizedRenderer(lambda c: x, small_enhancer(), strict=True)
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        strict(0)


@pytest.mark.skipif(not has_default_weights(), reason="shipped weights/enhancer not present")
def test_255_float_frame_with_the_shipped_weights():
    h = Harmonizer.from_pretrained("default")
    x = frame(1, 32, 48) * 255.0
    plug = HarmonizedRenderer(lambda c: x, h)
    assert plug(0) is x and plug.stats()["failures"] == {"InvalidInputError": 1}


@pytest.mark.parametrize("as_torch", [False, True])
def test_clip_accepts_overshoot_within_the_bound_only(as_torch):
    h = Harmonizer(small_enhancer())
    x = frame()
    over = x * (1.0 + 2 * (CLIP_TOLERANCE - 0.01)) - (CLIP_TOLERANCE - 0.01)  # just inside the bound
    far = x * (1.0 + 2 * (CLIP_TOLERANCE + 0.01)) - (CLIP_TOLERANCE + 0.01)  # just outside
    conv = (lambda a: torch.from_numpy(a).permute(2, 0, 1)) if as_torch else (lambda a: a)
    h.enhance(conv(over), clip=True)
    # valid frames are unchanged: a usual small overshoot is clipped as before
    y = frame(3)
    y[0, 0] = [1.02, -0.01, 0.5]
    a = Harmonizer(h.model).enhance(conv(y), clip=True)
    b = Harmonizer(h.model).enhance(conv(np.clip(y, 0, 1)))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    for bad in (far, x * 255.0, x * 2.0 - 1.0):
        with pytest.raises(InvalidInputError, match="clip=True clips"):
            h.enhance(conv(bad), clip=True)
        with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
            h.enhance(conv(bad))


# ---------------------------------------------------------------------------------------------- 2. config
@pytest.mark.parametrize("field, value", [
    ("depth_scale", math.nan), ("depth_scale", math.inf), ("anchor_max_log_gain", math.inf),
    ("anchor_max_log_gain", math.nan), ("anchor_max_misfit", math.nan),
])
def test_enhancer_config_numbers_must_be_finite(field, value):
    with pytest.raises(ConfigError, match=field):
        EnhancerConfig(**{field: value})


def test_nan_in_saved_config_yaml_is_refused(tmp_path):
    tiny_enhancer().save_pretrained(tmp_path / "m")
    cfg = tmp_path / "m" / "config.yaml"
    text = cfg.read_text()
    assert "depth_scale: 10.0" in text
    cfg.write_text(text.replace("depth_scale: 10.0", "depth_scale: .nan"))
    with pytest.raises(ConfigError, match="depth_scale"):
        Enhancer.from_pretrained(tmp_path / "m")
    with pytest.raises(ConfigError, match="depth_scale"):
        EnhancerConfig.from_dict({"depth_scale": float("nan")})


def test_diffusers_config_numbers_must_be_finite():
    from simharmony.models.diffusers_path import DiffusersEnhancerConfig

    unet = {"in_channels": 12, "out_channels": 12, "block_out_channels": [32]}
    DiffusersEnhancerConfig(unet_config=unet, codec="pixel_unshuffle")  # fine
    for field in ("depth_scale", "alpha_bar", "output_deadzone"):
        with pytest.raises(ConfigError, match=field):
            DiffusersEnhancerConfig(unet_config=unet, codec="pixel_unshuffle", **{field: math.nan})


# ---------------------------------------------------------------------------------------------- 3. output
def test_nan_output_is_a_failure_and_leaves_the_context_alone():
    model = nan_depth_model()
    h = Harmonizer(model)
    x, depth = frame(), np.full((H, W), 5.0, np.float32)
    h.enhance(x, stream="s")  # no depth: fine, context 1
    before = [t.clone() for t in h._streams["s"].context[0]]
    with pytest.raises(NonFiniteError, match="'s'"):
        h.enhance(x, depth=depth, stream="s")
    assert h.context_length("s") == 1
    assert all(torch.equal(a, b) for a, b in zip(before, h._streams["s"].context[0]))


def test_non_finite_output_in_one_group_updates_no_stream():
    h = Harmonizer(nan_depth_model())
    with pytest.raises(NonFiniteError) as err:
        h.enhance_batch({"a": frame(0), "b": frame(1)}, depths={"a": np.full((H, W), 5.0, np.float32)})
    assert "'a'" in str(err.value) and "'b'" not in str(err.value)
    assert h.context_length("a") == 0 and h.context_length("b") == 0


def test_infinite_latent_is_caught_even_when_the_clamped_image_looks_fine():
    model = small_enhancer()
    with torch.no_grad():
        model.backbone.conv_out.bias.fill_(float("inf"))
    with pytest.raises(NonFiniteError):
        Harmonizer(model).enhance(frame())


def test_plugin_returns_the_raw_frame_on_nan_output_and_counts_it():
    x, depth = frame(), np.full((H, W), 5.0, np.float32)
    result = {"rgb": x, "depth": depth}
    plug = HarmonizedRenderer(lambda c: result, nan_depth_model())
    out = plug(0)
    assert out is result and not plug.last_info().enhanced
    assert plug.stats()["failures"] == {"NonFiniteError": 1}
    strict = HarmonizedRenderer(lambda c: result, nan_depth_model(), strict=True)
    with pytest.raises(NonFiniteError):
        strict(0)


@pytest.mark.skipif(not has_default_weights(), reason="shipped weights/enhancer not present")
def test_nan_output_with_the_shipped_weights():
    h = Harmonizer.from_pretrained("default")
    h.model.config.depth_scale = float("nan")
    x = frame(2, 32, 48)
    plug = HarmonizedRenderer(lambda c: {"rgb": x, "depth": np.full((32, 48), 7.0, np.float32)}, h)
    out = plug(0)
    assert out["rgb"] is x and plug.stats()["failures"] == {"NonFiniteError": 1}


# ---------------------------------------------------------------------------------------------- 4. COLMAP
def _colmap(tmp_path, images_txt: str, names=("a.png", "b.png", "c.png")):
    (tmp_path / "cameras.txt").write_text("1 PINHOLE 24 16 30 30 12 8\n")
    (tmp_path / "images.txt").write_text(images_txt)
    (tmp_path / "images").mkdir(exist_ok=True)
    for i, n in enumerate(names):
        cv2.imwrite(str(tmp_path / "images" / n), np.full((H, W, 3), 40 * i, np.uint8))


def _image_line(i: int, name: str, tx: float) -> str:
    return f"{i} 1 0 0 0 {tx} 0 0 1 {name}"


def test_images_txt_without_points2d_lines_keeps_every_image(tmp_path):
    lines = [_image_line(1, "a.png", 0.0), _image_line(2, "b.png", 1.0), _image_line(3, "c.png", 2.0)]
    _colmap(tmp_path, "# hand-made\n" + "\n".join(lines) + "\n")
    from scene_tools.loaders import load_colmap

    p = load_colmap(tmp_path, progress=False)
    assert p.names == ["a", "b", "c"]
    assert np.allclose(p.trajectory.poses[:, 0, 3], [0.0, -1.0, -2.0])


def test_images_txt_mixing_present_empty_and_missing_points2d_lines(tmp_path):
    from scene_tools.loaders import load_colmap

    text = "\n".join([_image_line(1, "a.png", 0.0), "10.5 3.0 -1 12.0 6.5 7",  # with points
                      _image_line(2, "b.png", 1.0),  # none at all
                      _image_line(3, "c.png", 2.0), ""]) + "\n"  # an empty POINTS2D line, as COLMAP writes it
    _colmap(tmp_path, text)
    assert load_colmap(tmp_path, progress=False).names == ["a", "b", "c"]


@pytest.mark.parametrize("text, match", [
    (_image_line(1, "a.png", 0) + "\n\n" + _image_line(2, "a.png", 1) + "\n\n", "'a.png' appears twice"),
    (_image_line(1, "a.png", 0) + "\n\n" + _image_line(2, "a.png", 1) + "\n", "'a.png' appears twice"),
    (_image_line(1, "a.png", 0) + "\n1.0 2.0 -1 3.0\n", "neither an image line"),  # 4 numbers: not triples
    (_image_line(1, "a.png", 0) + "\n1.0 2.0 -1\n4.0 5.0 -1\n", "POINTS2D line without an image line"),
    (_image_line(1, "a.png", 0) + "\nhello world\n", "neither an image line"),
    ("1 1 0 0 0 0 0 0 1\n", "expected an image line"),  # no name
])
def test_images_txt_lines_that_are_neither_kind_raise(tmp_path, text, match):
    from scene_tools.loaders import load_colmap

    _colmap(tmp_path, text, names=("a.png",))
    with pytest.raises(CorruptFileError, match=match):
        load_colmap(tmp_path, progress=False)


# ---------------------------------------------------------------------------------------------- 5. port
@pytest.fixture
def no_app_loading(monkeypatch):
    """`simharmony view` must refuse a bad port before it loads a scene (which would then hang in viser)."""
    from simharmony_viewer import ViewerApp

    def fail(*args, **kwargs):
        raise AssertionError("the viewer loaded its scene before checking the port")

    monkeypatch.setattr(ViewerApp, "from_paths", staticmethod(fail))


@pytest.mark.parametrize("port", ["99999", "0", "-5"])
def test_view_with_an_invalid_port_is_a_one_line_error(no_app_loading, capsys, port):
    from simharmony.cli import main

    with pytest.raises(SystemExit) as exc:  # argparse refuses it: usage, then one error line, exit code 2
        main(["view", "--port", port, "--model", "none"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--port: must be an integer in [1, 65535]" in err.splitlines()[-1] and "Traceback" not in err


def test_view_with_a_taken_port_is_a_one_line_error(no_app_loading, capsys):
    from simharmony.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["view", "--port", str(port), "--host", "127.0.0.1", "--model", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(port) in err and len(err.splitlines()) == 1


def test_viewer_server_checks_the_port_before_starting_viser(monkeypatch):
    viser = pytest.importorskip("viser")
    from simharmony_viewer.server import ViewerServer

    def no_server(*args, **kwargs):
        raise AssertionError("viser started on a bad port")

    monkeypatch.setattr(viser, "ViserServer", no_server)
    with pytest.raises(InvalidInputError, match="1..65535"):
        ViewerServer(None, port=99999)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(InvalidInputError, match=str(s.getsockname()[1])):
            ViewerServer(None, host="127.0.0.1", port=s.getsockname()[1])


# ---------------------------------------------------------------------------------------------- 6. streams
def test_stream_contexts_are_bounded_least_recently_used_first():
    model = tiny_enhancer()
    h = Harmonizer(model, max_streams=3)
    x = frame()
    for s in range(10):
        h.enhance(x, stream=s)
    assert h.streams == [7, 8, 9] and h.context_length(0) == 0
    h.enhance(x, stream=7)  # touched: now the most recent
    h.enhance(x, stream=10)  # evicts 8, the least recently used
    assert h.streams == [9, 7, 10] and h.context_length(7) == 2
    # an evicted stream starts afresh, exactly like a new one
    y = frame(5)
    assert np.array_equal(h.enhance(y, stream=0), Harmonizer(model).enhance(y, stream=0))


def test_default_bound_with_many_stream_ids():
    h = Harmonizer(tiny_enhancer())
    assert h.max_streams == DEFAULT_MAX_STREAMS == 64
    x = frame()
    for s in range(DEFAULT_MAX_STREAMS + 40):
        h.enhance(x, stream=f"client-{s}")
    assert len(h.streams) == DEFAULT_MAX_STREAMS and h.streams[-1] == f"client-{DEFAULT_MAX_STREAMS + 39}"


def test_a_batch_larger_than_the_bound_still_works():
    h = Harmonizer(tiny_enhancer(), max_streams=2)
    out = h.enhance_batch({s: frame(s) for s in range(5)})
    assert sorted(out) == list(range(5)) and len(h.streams) == 5  # this call's streams are kept
    h.enhance(frame(), stream="x")
    assert h.streams == [4, "x"]


def test_max_streams_is_checked_and_follows_the_plugin():
    with pytest.raises(InvalidInputError, match="max_streams"):
        Harmonizer(tiny_enhancer(), max_streams=0)
    plug = HarmonizedRenderer(lambda c: c, tiny_enhancer(), max_cameras=5)
    assert plug.harmonizer.max_streams == 5


# ---------------------------------------------------------------------------------------------- 7. batch keys
@pytest.mark.parametrize("kw", [
    {"masks": {"typo": np.ones((H, W), np.float32)}},
    {"depths": {"typo": np.ones((H, W), np.float32)}},
    {"cuts": {"typo"}},
])
def test_enhance_batch_refuses_keys_not_in_frames(kw):
    h = Harmonizer(small_enhancer())
    with pytest.raises(InvalidInputError, match="typo"):
        h.enhance_batch({"front": frame()}, **kw)
    assert h.streams == []  # nothing touched


def test_enhance_batch_refuses_a_string_as_cuts():
    with pytest.raises(InvalidInputError, match="cuts"):
        Harmonizer(small_enhancer()).enhance_batch({"front": frame()}, cuts="front")


# ---------------------------------------------------------------------------------------------- 8. scene files
def _gaussians(n: int = 20, ids=None):
    from scene_tools.gaussians import GaussianScene

    g = torch.Generator().manual_seed(3)
    return GaussianScene.from_points(torch.randn(n, 3, generator=g), torch.rand(n, 3, generator=g),
                                     instance_ids=ids)


def _tensor_span(raw: bytes, name: str) -> tuple[int, int]:
    """Byte range of tensor ``name`` in a safetensors file (header: u64 length, JSON with data offsets)."""
    (n,) = struct.unpack("<Q", raw[:8])
    start, end = json.loads(raw[8 : 8 + n])[name]["data_offsets"]
    return 8 + n + start, 8 + n + end


def _overwrite_tensor_bytes(path, name: str, fill: int = 0xFF) -> None:
    raw = bytearray(path.read_bytes())
    a, b = _tensor_span(raw, name)
    raw[a:b] = bytes([fill]) * (b - a)
    path.write_bytes(bytes(raw))


def _flip_first_byte(path, name: str) -> None:
    raw = bytearray(path.read_bytes())
    a, _ = _tensor_span(raw, name)
    raw[a] ^= 0x01
    path.write_bytes(bytes(raw))


def test_damaged_scene_file_fails_its_checksum(tmp_path):
    from scene_tools.gaussians import GaussianScene

    s = _gaussians()
    s.save(tmp_path / "s.safetensors")
    back = GaussianScene.load(tmp_path / "s.safetensors")
    assert all(torch.equal(v, getattr(back, k)) for k, v in s.tensors().items())
    _overwrite_tensor_bytes(tmp_path / "s.safetensors", "instance_ids")  # ids would read as -1
    with pytest.raises(CorruptFileError, match="checksum"):
        GaussianScene.load(tmp_path / "s.safetensors")
    s.save(tmp_path / "t.safetensors")  # the file's last bytes, whatever tensor they belong to
    raw = bytearray((tmp_path / "t.safetensors").read_bytes())
    raw[-8:] = b"\x00\x01\x02\x03\x04\x05\x06\x07"
    (tmp_path / "t.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="checksum"):
        GaussianScene.load(tmp_path / "t.safetensors")


def test_old_scene_files_without_checksum_load_but_are_validated(tmp_path):
    from scene_tools.gaussians import GaussianScene
    from simharmony.utils.io import save_tensors

    s = _gaussians()
    meta = {"format": "simharmony.gaussians", "version": "1", "metadata": "{}"}
    save_tensors(tmp_path / "old.safetensors", s.tensors(), meta)
    back = GaussianScene.load(tmp_path / "old.safetensors")
    assert all(torch.equal(v, getattr(back, k)) for k, v in s.tensors().items())
    _overwrite_tensor_bytes(tmp_path / "old.safetensors", "instance_ids")
    with pytest.raises(InvalidSceneError, match="old.safetensors.*instance_ids must be >= 0"):
        GaussianScene.load(tmp_path / "old.safetensors")


def test_validate_refuses_negative_and_float_instance_ids():
    ids = torch.zeros(20, dtype=torch.int32)
    _gaussians(ids=ids)
    _gaussians(ids=ids.long())  # any integer dtype
    ids[3] = -1
    with pytest.raises(InvalidSceneError, match="1 Gaussian.*negative"):
        _gaussians(ids=ids)
    with pytest.raises(InvalidSceneError, match="integers"):
        _gaussians(ids=torch.full((20,), 2.5))
    s = _gaussians()
    s.instance_ids = torch.full((20,), -1, dtype=torch.int32)
    with pytest.raises(InvalidSceneError):
        s.validate()


def test_damaged_tracks_file_of_a_saved_scene_fails_its_checksum(tmp_path):
    from scene_tools.assets import extract_asset
    from scene_tools.scene import ObjectTrack, Scene, yaw_pose

    src = _gaussians(30, ids=torch.full((30,), 4, dtype=torch.int32))
    asset = extract_asset(src, 4, category="vehicle", source="unit", heading=0.0)
    scene = Scene(_gaussians())
    track = ObjectTrack(np.array([0.0, 1.0]), np.stack([yaw_pose(0.0, 0.0, 0.0, 0.0), yaw_pose(1.0, 0.0, 0.0, 0.1)]))
    iid = scene.insert(asset, track)
    scene.save(tmp_path / "scene")
    back = Scene.load(tmp_path / "scene")
    assert back.inserted_ids == [iid]
    np.testing.assert_array_equal(back.objects[0].track.times, [0.0, 1.0])
    _flip_first_byte(tmp_path / "scene" / "tracks.safetensors", f"track_{iid}_times")  # 0.0 -> 5e-324: plausible
    with pytest.raises(CorruptFileError, match="tracks.safetensors.*checksum"):
        Scene.load(tmp_path / "scene")
