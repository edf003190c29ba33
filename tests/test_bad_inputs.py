"""A table of bad inputs for every public API and command (issue 26): each must raise the project's own
exception (a SimHarmonyError subclass) with a message that names the bad argument, or, for a command,
end with exit code 2 and one error line naming it. No raw library exception, no traceback, no silence."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _helpers import small_enhancer

from simharmony.errors import (
    BackendUnavailableError,
    ConfigError,
    CorruptFileError,
    InvalidCameraError,
    InvalidInputError,
    InvalidSceneError,
    ItemIndexError,
    MissingFileError,
    NonFiniteError,
    ShapeMismatchError,
    SimHarmonyError,
    UnknownAssetError,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FRAME = np.random.default_rng(0).random((16, 24, 3), dtype=np.float32)
EYE = np.eye(4)


@dataclass
class Case:
    name: str
    call: Callable[[Path], object]  # gets a fresh tmp_path
    error: type[SimHarmonyError]
    names: str  # regex the message must match: the bad argument's name

    def __str__(self) -> str:
        return self.name


def harmonizer():
    from simharmony.harmonizer import Harmonizer

    return Harmonizer(small_enhancer())


def renderer(**kw):
    from simharmony.plugin import HarmonizedRenderer

    return HarmonizedRenderer(lambda cam: FRAME, harmonizer(), **kw)


def intrinsics():
    from scene_tools.cameras import Intrinsics

    return Intrinsics(20.0, 20.0, 12.0, 8.0, 24, 16)


def gaussians(**over):
    from scene_tools.gaussians import GaussianScene

    n = 4
    fields = dict(means=torch.zeros(n, 3), quats=torch.tensor([[1.0, 0, 0, 0]] * n), log_scales=torch.zeros(n, 3),
                  logit_opacities=torch.zeros(n), sh=torch.zeros(n, 1, 3))
    fields.update(over)
    return GaussianScene(**fields)


def scene():
    from scene_tools.scene import Scene

    return Scene(gaussians(means=torch.randn(4, 3) + torch.tensor([0.0, 0.0, 5.0])), intrinsics=intrinsics())


def transforms(tmp: Path, top: dict | None = None, frame: dict | None = None, size=(8, 8)) -> Path:
    cv2.imwrite(str(tmp / "a.png"), np.zeros((size[1], size[0], 3), np.uint8))
    data = {"camera_angle_x": 0.8, **(top or {}),
            "frames": [{"file_path": "a.png", "transform_matrix": EYE.tolist(), **(frame or {})}]}
    (tmp / "transforms.json").write_text(json.dumps(data))
    return tmp / "transforms.json"


def enhancer_folder(tmp: Path, **config_over) -> Path:
    import yaml

    small_enhancer().save_pretrained(tmp / "m")
    meta = yaml.safe_load((tmp / "m" / "config.yaml").read_text())
    meta["config"].update(config_over)
    (tmp / "m" / "config.yaml").write_text(yaml.safe_dump(meta))
    return tmp / "m"


def shard_dataset(tmp: Path):
    from simharmony.data.shards import ShardDataset, generate_dataset

    generate_dataset(tmp / "ds", {"isp": 2}, shard_size=2, configs=None, progress=False)
    return ShardDataset(tmp / "ds")


def _imp(module: str, name: str):
    import importlib

    return getattr(importlib.import_module(module), name)


API_CASES = [
    # -- Harmonizer ------------------------------------------------------------------------------------------
    Case("Harmonizer device banana", lambda t: _imp("simharmony.harmonizer", "Harmonizer")(small_enhancer(), device="banana"),
         InvalidInputError, "device"),
    Case("Harmonizer device not a string", lambda t: _imp("simharmony.harmonizer", "Harmonizer")(small_enhancer(), device=3.5),
         InvalidInputError, "device"),
    Case("Harmonizer device cuda:7", lambda t: _imp("simharmony.harmonizer", "Harmonizer")(small_enhancer(), device="cuda:7"),
         BackendUnavailableError, "cuda"),
    Case("Harmonizer model not an Enhancer", lambda t: _imp("simharmony.harmonizer", "Harmonizer")("weights"),
         InvalidInputError, "model"),
    Case("Harmonizer dtype float16", lambda t: _imp("simharmony.harmonizer", "Harmonizer")(small_enhancer(), dtype=torch.float16),
         InvalidInputError, "dtype"),
    Case("Harmonizer max_streams 0", lambda t: _imp("simharmony.harmonizer", "Harmonizer")(small_enhancer(), max_streams=0),
         InvalidInputError, "max_streams"),
    Case("Harmonizer.from_pretrained missing folder", lambda t: _imp("simharmony.harmonizer", "Harmonizer").from_pretrained(t / "nope"),
         MissingFileError, "enhancer folder"),
    Case("enhance unhashable stream", lambda t: harmonizer().enhance(FRAME, stream=["a"]), InvalidInputError, "stream"),
    Case("reset unhashable stream", lambda t: harmonizer().reset({"a": 1}), InvalidInputError, "stream"),
    Case("enhance frame is a path", lambda t: harmonizer().enhance("frame.png"), InvalidInputError, "frame"),
    Case("enhance frame 2-D", lambda t: harmonizer().enhance(FRAME[..., 0]), ShapeMismatchError, "frame"),
    Case("enhance frame 4 channels", lambda t: harmonizer().enhance(np.zeros((16, 24, 4), np.float32)), ShapeMismatchError, "frame"),
    Case("enhance frame int32", lambda t: harmonizer().enhance(np.zeros((16, 24, 3), np.int32)), InvalidInputError, "dtype"),
    Case("enhance frame NaN", lambda t: harmonizer().enhance(np.full((16, 24, 3), np.nan, np.float32)), NonFiniteError, "frame"),
    Case("enhance frame 0..255 floats", lambda t: harmonizer().enhance(FRAME * 255), InvalidInputError, r"\[0, 1\]"),
    Case("enhance frame 1x1", lambda t: harmonizer().enhance(np.zeros((1, 1, 3), np.float32)), ShapeMismatchError, "frame too small"),
    Case("enhance frame 8000x8000", lambda t: harmonizer().enhance(np.zeros((8000, 8000, 3), np.uint8)), InvalidInputError,
         "frame is 8000x8000"),
    Case("enhance mask wrong size", lambda t: harmonizer().enhance(FRAME, mask=np.ones((8, 8), np.float32)), ShapeMismatchError,
         "mask size"),
    Case("enhance mask out of range", lambda t: harmonizer().enhance(FRAME, mask=np.full((16, 24), 2.0, np.float32)),
         InvalidInputError, "mask"),
    Case("enhance uint8 mask of 0/1", lambda t: harmonizer().enhance(FRAME, mask=np.ones((16, 24), np.uint8)), InvalidInputError,
         "uint8 mask holds only 0 and 1"),
    Case("enhance mask is a list", lambda t: harmonizer().enhance(FRAME, mask=[[1.0]]), InvalidInputError, "mask"),
    Case("enhance depth NaN", lambda t: harmonizer().enhance(FRAME, depth=np.full((16, 24), np.nan, np.float32)), NonFiniteError,
         "depth"),
    Case("enhance depth negative", lambda t: harmonizer().enhance(FRAME, depth=-np.ones((16, 24), np.float32)), InvalidInputError,
         "depth"),
    Case("enhance_batch frames not a mapping", lambda t: harmonizer().enhance_batch([FRAME]), InvalidInputError, "frames"),
    Case("enhance_batch masks for unknown stream", lambda t: harmonizer().enhance_batch({"a": FRAME}, masks={"b": None}),
         InvalidInputError, "masks"),
    Case("enhance_batch cuts a string", lambda t: harmonizer().enhance_batch({"a": FRAME}, cuts="a"), InvalidInputError, "cuts"),
    # -- render hook -----------------------------------------------------------------------------------------
    Case("HarmonizedRenderer render_fn not callable", lambda t: _imp("simharmony.plugin", "HarmonizedRenderer")("f", harmonizer()),
         InvalidInputError, "render_fn"),
    Case("HarmonizedRenderer enabled 'false'", lambda t: renderer(enabled="false"), InvalidInputError, "enabled"),
    Case("HarmonizedRenderer.enabled = 0", lambda t: setattr(renderer(), "enabled", 0), InvalidInputError, "enabled"),
    Case("HarmonizedRenderer unknown option", lambda t: renderer(colour="red"), ConfigError, "colour"),
    Case("HarmonizedRenderer camera_key not callable", lambda t: renderer(camera_key="front"), InvalidInputError, "camera_key"),
    Case("HarmonizedRenderer strict, unhashable camera_id", lambda t: renderer(strict=True)(None, camera_id=["x"]),
         InvalidInputError, "camera_id"),
    Case("PluginConfig max_cameras 0", lambda t: _imp("simharmony.plugin", "PluginConfig")(max_cameras=0), ConfigError, "max_cameras"),
    Case("PluginConfig teleport NaN", lambda t: _imp("simharmony.plugin", "PluginConfig")(teleport_translation_m=float("nan")),
         ConfigError, "teleport_translation_m"),
    # -- models ----------------------------------------------------------------------------------------------
    Case("EnhancerConfig heads 0", lambda t: _imp("simharmony.models", "EnhancerConfig")(heads=0), ConfigError, "heads"),
    Case("EnhancerConfig attention_max_tokens 0", lambda t: _imp("simharmony.models", "EnhancerConfig")(attention_max_tokens=0),
         ConfigError, "attention_max_tokens"),
    Case("EnhancerConfig huge channels", lambda t: _imp("simharmony.models", "EnhancerConfig")(channels=(100000, 200000, 300000)),
         ConfigError, "channels"),
    Case("EnhancerConfig depth_scale NaN", lambda t: _imp("simharmony.models", "EnhancerConfig")(depth_scale=float("nan")),
         ConfigError, "depth_scale"),
    Case("EnhancerConfig unknown key", lambda t: _imp("simharmony.models", "EnhancerConfig").from_dict({"chanels": [8]}),
         ConfigError, "chanels"),
    Case("Enhancer.from_pretrained config disagrees with weights",
         lambda t: _imp("simharmony.models", "Enhancer").from_pretrained(enhancer_folder(t, channels=[2048, 2048, 2048])),
         CorruptFileError, "does not match its config"),
    Case("Enhancer.from_pretrained map_location banana",
         lambda t: _imp("simharmony.models", "Enhancer").from_pretrained(enhancer_folder(t), map_location="banana"),
         InvalidInputError, "map_location"),
    Case("TrainConfig negative lr", lambda t: _imp("simharmony.training.config", "TrainConfig")(lr=-1.0), ConfigError, "lr"),
    # -- cameras and trajectories ----------------------------------------------------------------------------
    Case("Intrinsics fx is a string", lambda t: _imp("scene_tools.cameras", "Intrinsics")("20", 20.0, 12.0, 8.0, 24, 16),
         InvalidCameraError, "fx"),
    Case("Intrinsics 40000x40000", lambda t: _imp("scene_tools.cameras", "Intrinsics")(100.0, 100.0, 2e4, 2e4, 40000, 40000),
         InvalidCameraError, "40000x40000"),
    Case("Intrinsics width 0", lambda t: _imp("scene_tools.cameras", "Intrinsics")(20.0, 20.0, 12.0, 8.0, 0, 16),
         InvalidCameraError, "width"),
    Case("Intrinsics resized to 0x0", lambda t: intrinsics().resized(0, 0), InvalidCameraError, "leaves no pixels"),
    Case("Intrinsics.scaled by NaN", lambda t: intrinsics().scaled(float("nan")), InvalidCameraError, "scale factor"),
    Case("Trajectory empty", lambda t: _imp("scene_tools.cameras", "Trajectory")(np.zeros((0, 4, 4)), intrinsics()),
         InvalidCameraError, "poses"),
    Case("Trajectory pose not a rotation", lambda t: _imp("scene_tools.cameras", "Trajectory")(np.ones((2, 4, 4)), intrinsics()),
         InvalidCameraError, "pose"),
    Case("Trajectory times wrong length",
         lambda t: _imp("scene_tools.cameras", "Trajectory")(np.stack([EYE, EYE]), intrinsics(), times=np.zeros(3)),
         ShapeMismatchError, "times"),
    # -- Gaussian scenes and rendering -----------------------------------------------------------------------
    Case("GaussianScene means [N, 2]", lambda t: gaussians(means=torch.zeros(4, 2)), ShapeMismatchError, "means"),
    Case("GaussianScene means a list", lambda t: gaussians(means=[[0.0, 0.0, 0.0]] * 4), InvalidSceneError, "means"),
    Case("GaussianScene integer quats", lambda t: gaussians(quats=torch.ones(4, 4, dtype=torch.int64)), InvalidSceneError, "quats"),
    Case("GaussianScene NaN scales", lambda t: gaussians(log_scales=torch.full((4, 3), float("nan"))), NonFiniteError, "log_scales"),
    Case("GaussianScene negative instance ids", lambda t: gaussians(instance_ids=-torch.ones(4, dtype=torch.int32)),
         InvalidSceneError, "instance_ids"),
    Case("GaussianScene.from_points colours 0..255",
         lambda t: _imp("scene_tools.gaussians", "GaussianScene").from_points(torch.zeros(2, 3), torch.full((2, 3), 200.0)),
         InvalidInputError, "colors"),
    Case("GaussianScene.from_points opacity 2",
         lambda t: _imp("scene_tools.gaussians", "GaussianScene").from_points(torch.zeros(2, 3), torch.zeros(2, 3), opacity=2.0),
         InvalidInputError, "opacity"),
    Case("GaussianScene.load missing file", lambda t: _imp("scene_tools.gaussians", "GaussianScene").load(t / "x.safetensors"),
         MissingFileError, "x.safetensors"),
    Case("GaussianScene.load device banana", lambda t: (gaussians().save(t / "g.safetensors"),
         _imp("scene_tools.gaussians", "GaussianScene").load(t / "g.safetensors", device="banana")), InvalidInputError, "device"),
    Case("rasterize 20000x20000", lambda t: _imp("scene_tools.rasterize", "rasterize")(
        torch.zeros(1, 3), torch.tensor([[1.0, 0, 0, 0]]), torch.ones(1, 3), torch.ones(1), torch.ones(1, 3),
        torch.eye(4)[None], torch.eye(3)[None], 16000, 16000), InvalidInputError, "render is 16000x16000"),
    Case("rasterize render_mode", lambda t: _imp("scene_tools.rasterize", "rasterize")(
        torch.zeros(1, 3), torch.tensor([[1.0, 0, 0, 0]]), torch.ones(1, 3), torch.ones(1), torch.ones(1, 3),
        torch.eye(4)[None], torch.eye(3)[None], 8, 8, render_mode="RGBD"), InvalidInputError, "render_mode"),
    Case("Scene.render_frame pose 3x3", lambda t: scene().render_frame(np.eye(3)), ShapeMismatchError, "pose"),
    Case("Scene.render_frame pose NaN", lambda t: scene().render_frame(np.full((4, 4), np.nan)), NonFiniteError, "pose"),
    Case("ObjectTrack times not increasing",
         lambda t: _imp("scene_tools.scene", "ObjectTrack")(np.array([1.0, 0.0]), np.stack([EYE, EYE])), InvalidInputError, "times"),
    # -- loaders ---------------------------------------------------------------------------------------------
    Case("transforms.json camera_angle_y 0", lambda t: _imp("scene_tools.loaders", "load_transforms_json")(
        transforms(t, {"camera_angle_y": 0}), progress=False), InvalidCameraError, "camera_angle_y"),
    Case("transforms.json time 'noon'", lambda t: _imp("scene_tools.loaders", "load_transforms_json")(
        transforms(t, frame={"time": "noon"}), progress=False), CorruptFileError, "time"),
    Case("transforms.json fl_x a string", lambda t: _imp("scene_tools.loaders", "load_transforms_json")(
        transforms(t, {"fl_x": "wide"}), progress=False), CorruptFileError, "fl_x"),
    Case("transforms.json fisheye", lambda t: _imp("scene_tools.loaders", "load_transforms_json")(
        transforms(t, {"camera_model": "OPENCV_FISHEYE"}), progress=False), InvalidCameraError, "camera_model"),
    Case("transforms.json downscale 0", lambda t: _imp("scene_tools.loaders", "load_transforms_json")(
        transforms(t), downscale=0, progress=False), InvalidInputError, "downscale"),
    Case("transforms.json downscale to nothing", lambda t: _imp("scene_tools.loaders", "load_transforms_json")(
        transforms(t, size=(2, 2)), downscale=4, progress=False), InvalidInputError, "downscale"),
    Case("transforms.json missing", lambda t: _imp("scene_tools.loaders", "load_transforms_json")(t / "nope.json"),
         MissingFileError, "nope.json"),
    Case("load_colmap empty folder", lambda t: _imp("scene_tools.loaders", "load_colmap")(t), MissingFileError, "cameras"),
    Case("load_ply not a ply", lambda t: ((t / "x.ply").write_text("hello"), _imp("scene_tools.ply", "load_ply")(t / "x.ply")),
         CorruptFileError, "x.ply"),
    Case("pick_views negative", lambda t: _imp("scene_tools.loaders", "pick_views")(10, -1), InvalidInputError, "max_views"),
    # -- assets ----------------------------------------------------------------------------------------------
    Case("AssetBank.query min_size 'abc'", lambda t: _imp("scene_tools.assets", "AssetBank")(t / "bank").query(min_size="abc"),
         InvalidInputError, "min_size"),
    Case("AssetBank.query max_size (1, 2)", lambda t: _imp("scene_tools.assets", "AssetBank")(t / "bank").query(max_size=(1, 2)),
         ShapeMismatchError, "max_size"),
    Case("AssetBank.get unknown id", lambda t: _imp("scene_tools.assets", "AssetBank")(t / "bank").get("car_0000"),
         UnknownAssetError, "car_0000"),
    Case("AssetBank missing folder, create=False", lambda t: _imp("scene_tools.assets", "AssetBank")(t / "bank", create=False),
         MissingFileError, "bank"),
    # -- data ------------------------------------------------------------------------------------------------
    Case("ShardDataset['abc']", lambda t: shard_dataset(t)["abc"], InvalidInputError, "item index"),
    Case("ShardDataset[99]", lambda t: shard_dataset(t)[99], ItemIndexError, "item 99"),
    Case("ShardDataset[(0, 1)]", lambda t: shard_dataset(t)[(0, 1)], InvalidInputError, "tuple key"),
    Case("ShardDataset missing folder", lambda t: _imp("simharmony.data.shards", "ShardDataset")(t / "nope"), MissingFileError, "nope"),
    Case("generate_dataset unknown stream", lambda t: _imp("simharmony.data.shards", "generate_dataset")(
        t / "ds", {"isp2": 1}, progress=False), ConfigError, "isp2"),
    Case("generate_dataset negative count", lambda t: _imp("simharmony.data.shards", "generate_dataset")(
        t / "ds", {"isp": -1}, progress=False), ConfigError, "isp"),
    # -- metrics ---------------------------------------------------------------------------------------------
    Case("psnr shapes differ", lambda t: _imp("simharmony.metrics", "psnr")(np.zeros((4, 4, 3)), np.zeros((5, 4, 3))),
         ShapeMismatchError, "same shape"),
    Case("fmse empty mask", lambda t: _imp("simharmony.metrics", "fmse")(FRAME, FRAME, np.zeros((16, 24))), InvalidInputError, "mask"),
    Case("ssim NaN image", lambda t: _imp("simharmony.metrics", "ssim")(np.full((16, 16, 3), np.nan), np.zeros((16, 16, 3))),
         NonFiniteError, "a"),
    Case("flicker_score of one frame", lambda t: _imp("simharmony.metrics", "flicker_score")(FRAME[None]), InvalidInputError,
         "frames"),
]


@pytest.mark.parametrize("case", API_CASES, ids=str)
def test_bad_api_input_raises_a_named_project_error(case: Case, tmp_path):
    with pytest.raises(SimHarmonyError) as exc:
        case.call(tmp_path)
    assert isinstance(exc.value, case.error), f"{case}: got {type(exc.value).__name__}: {exc.value}"
    assert re.search(case.names, str(exc.value)), f"{case}: message does not name {case.names!r}: {exc.value}"


# -- commands: argparse refusals (exit 2, last line names the option) and the CLI's own errors ----------------
CLI_CASES = [
    (["demo", "--frames", "0"], "--frames"),
    (["demo", "--shift", "nan"], "--shift"),
    (["render-street", "--out", "{tmp}/s", "--spp", "0"], "--spp"),
    (["render-street", "--out", "{tmp}/s", "--seed", "-3"], "--seed"),
    (["reconstruct", "--data", "{tmp}", "--out", "{tmp}/r", "--downscale", "0"], "--downscale"),
    (["reconstruct", "--data", "{tmp}", "--out", "{tmp}/r", "--max-views", "x"], "--max-views"),
    (["reconstruct", "--data", "{tmp}/nowhere", "--out", "{tmp}/r"], "nowhere"),
    (["capture", "{tmp}/nowhere.mp4", "--out", "{tmp}/c"], "nowhere.mp4"),
    (["capture", "{tmp}", "--out", "{tmp}/c", "--every", "0"], "--every"),
    (["data", "contact-sheet", "{tmp}", "--out", "{tmp}/x.png", "--per-stream", "-1"], "--per-stream"),
    (["data", "generate", "--preset", "nope", "--out", "{tmp}/d"], "nope"),
    (["data", "generate", "--preset", "tiny", "--out", "{tmp}/d", "--workers", "0"], "--workers"),
    (["data", "report", "{tmp}/nowhere"], "nowhere"),
    (["simulate", "--frames", "-2"], "--frames"),
    (["simulate", "--scale", "0"], "--scale"),
    (["bench", "--preset", "nope"], "nope"),
    (["bench", "--threads", "0"], "--threads"),
    (["train", "--config", "{tmp}/nowhere.yaml", "--out", "{tmp}/run"], "nowhere.yaml"),
    (["train", "--config", "configs/train_default.yaml", "--out", "{tmp}/run", "--steps", "0"], "--steps"),
    (["train-parametric", "--data", "{tmp}", "--out", "{tmp}/p", "--lr", "-1"], "--lr"),
    (["view", "--port", "70000"], "--port"),
    (["view", "--scale", "-1"], "--scale"),
    (["ns-view", "--load-config", "{tmp}/nowhere.yml"], "nowhere.yml"),
    (["ns-view", "--load-config", "{tmp}/c.yml", "--strength", "2"], "--strength"),
    (["assets", "{tmp}/nowhere"], "nowhere"),
    (["convert-lpips", "{tmp}/nowhere.tar.gz", "--out-dir", "{tmp}/w"], "nowhere.tar.gz"),
]


@pytest.mark.parametrize("argv,names", CLI_CASES, ids=[" ".join(a[:3]) for a, _ in CLI_CASES])
def test_bad_command_input_is_one_named_line_and_exit_code_2(argv, names, tmp_path, capsys):
    from simharmony.cli import main

    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: usage, then one error line
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert "error:" in last and names in last, last


def test_the_tables_cover_enough_cases():
    assert len(API_CASES) + len(CLI_CASES) >= 60


def test_outputs_are_contiguous_so_cv2_can_draw_on_them():
    h = harmonizer()
    for frame in (FRAME, (FRAME * 255).astype(np.uint8)):
        out = h.enhance(frame, stream=str(frame.dtype))
        assert out.flags["C_CONTIGUOUS"]
        cv2.rectangle(out, (1, 1), (5, 5), (1, 1, 1), 1)  # raised "Layout of the output array is incompatible" before


def test_big_endian_inputs_give_the_native_result():
    mask = np.zeros((16, 24), np.float32)
    mask[4:10, 6:14] = 1
    native = harmonizer().enhance(FRAME, mask=mask)
    swapped = harmonizer().enhance(FRAME.astype(">f4"), mask=mask.astype(">f4"))
    np.testing.assert_array_equal(native, swapped.astype(np.float32))
