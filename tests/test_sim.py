"""Simulator: render(trajectory) and step(pose) over a tiny Gaussian scene through the plugin; weights
resolution; toggles, resets and the failure policy inside the loop; the shipped demo at low resolution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import simharmony.harmonizer as harmonizer_mod
from scene_tools.cameras import Intrinsics, straight_trajectory
from scene_tools.gaussians import GaussianScene
from scene_tools.scene import RenderConfig, Scene
from simharmony.errors import InvalidInputError, MissingFileError
from simharmony.harmonizer import Harmonizer
from simharmony.models import Enhancer
from simharmony.paths import DEMO_SCENE_DIR
from simharmony.sim import SimSequence, Simulator, resolve_harmonizer

from _helpers import ground_and_post_scene, small_enhancer

INTR = Intrinsics.from_fov(70.0, 40, 24)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


make_model = small_enhancer


def tiny_scene() -> Scene:
    """Textured ground and a yellow pole (instance 2) at (10, -1.5)."""
    return ground_and_post_scene(INTR, post_x=10.0, post_top=3.0, post_step=0.15, post_scale=0.15)


def trajectory(n: int = 4):
    return straight_trajectory(INTR, n, start=(0.0, 0.0, 1.6), speed_mps=5.0, pitch_deg=-5.0)


def reference_loop(model: Enhancer, frames) -> list[np.ndarray]:
    """Independent streaming loop over the model with the scene's mask and depth (no plugin, no Harmonizer)."""
    cache, outs = [], []
    with torch.no_grad():
        for f in frames:
            out, z = model(f.rgb.permute(2, 0, 1)[None], cache[:4], mask=f.inserted_mask[None, None],
                           depth=f.depth[None, None])
            cache.insert(0, z)
            outs.append(out[0].permute(1, 2, 0).numpy())
    return outs


def test_render_trajectory_raw_matches_scene_and_harmonized_matches_reference():
    traj = trajectory()
    ref_frames = tiny_scene().render(traj, progress=False)
    model = make_model()
    sim = Simulator(tiny_scene(), model, progress=False)
    seq = sim.render(traj)
    assert isinstance(seq, SimSequence) and len(seq) == 4
    np.testing.assert_allclose(seq.raw, ref_frames.rgb.numpy(), atol=1e-6)
    np.testing.assert_array_equal(seq.depth, ref_frames.depth.numpy())
    assert seq.raw.shape == (4, 24, 40, 3) and seq.harmonized.dtype == np.float32
    for got, want in zip(seq.harmonized, reference_loop(model, ref_frames)):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert all(f.enhanced for f in seq) and np.abs(seq.harmonized - seq.raw).mean() > 1e-3
    np.testing.assert_allclose(seq.times, traj.times)
    np.testing.assert_allclose(seq.poses, traj.poses)
    assert seq.timings()["enhance_ms"]["count"] == 4 and sim.stats()["enhanced"] == 4
    assert sim.plugin.context_length("ego") == 4


def test_identity_model_leaves_frames_unchanged():
    sim = Simulator(tiny_scene(), make_model(trained_like=False), progress=False)
    seq = sim.render(trajectory(2))
    np.testing.assert_allclose(seq.harmonized, seq.raw, atol=1e-5)


def test_step_closed_loop_resets_on_teleport_size_and_render_restarts():
    sim = Simulator(tiny_scene(), make_model(), progress=False)
    traj = trajectory(3)
    frames = [sim.step(p) for p in traj.poses]
    assert [f.time for f in frames] == pytest.approx([0.0, 0.1, 0.2])
    assert [f.index for f in frames] == [0, 1, 2] and sim.plugin.context_length("ego") == 3
    assert bool(frames[2].gbuffers.flow_valid.any())  # flow to the previous step
    far = traj.poses[-1].copy()
    far[0, 3] += 20.0
    sim.step(far)
    assert sim.plugin.context_length("ego") == 1 and sim.plugin.last_info("ego").reset_reason == "teleport"
    f = sim.step(far, intrinsics=INTR.scaled(0.5))  # new size: scene and stream restart
    assert f.raw.shape == (12, 20, 3) and f.index == 0 and sim.plugin.context_length("ego") == 1
    seq = sim.render(traj)  # a whole trajectory starts from a clean state
    assert seq[0].index == 0 and sim.plugin.context_length("ego") == 3


def test_toggle_and_no_harmonizer():
    sim = Simulator(tiny_scene(), make_model(), progress=False)
    pose = trajectory(1).poses[0]
    sim.enabled = False
    f = sim.step(pose)
    assert not f.enhanced and f.harmonized is f.raw and f.enhance_ms is None
    sim.enabled = True
    assert sim.step(pose).enhanced
    raw_only = Simulator(tiny_scene(), None, progress=False)
    g = raw_only.step(pose)
    assert not raw_only.enabled and g.harmonized is g.raw and raw_only.stats()["frames"] == 1
    with pytest.raises(InvalidInputError, match="no harmonizer"):
        raw_only.enabled = True


def test_enhancer_failure_keeps_the_loop_running_unless_strict():
    class Broken(Harmonizer):
        def enhance(self, *args, **kwargs):
            raise RuntimeError("out of memory")

    sim = Simulator(tiny_scene(), Broken(make_model()), progress=False)
    seq = sim.render(trajectory(2))
    assert not any(f.enhanced for f in seq) and np.array_equal(seq.harmonized, seq.raw)
    assert sim.stats()["failures"] == {"RuntimeError": 2}
    strict = Simulator(tiny_scene(), Broken(make_model()), strict=True, progress=False)
    with pytest.raises(RuntimeError, match="out of memory"):
        strict.render(trajectory(2))


def test_weights_resolution(tmp_path, monkeypatch):
    monkeypatch.setattr(harmonizer_mod, "ENHANCER_DIR", tmp_path / "absent")
    with pytest.raises(MissingFileError, match="not trained yet"):
        Simulator(tiny_scene(), "default")
    h, source = resolve_harmonizer("default", untrained_fallback=True)
    assert isinstance(h, Harmonizer) and "UNTRAINED" in source
    with pytest.raises(MissingFileError, match="not found"):
        Simulator(tiny_scene(), str(tmp_path / "nowhere"))
    with pytest.raises(InvalidInputError):
        Simulator(tiny_scene(), 3.5)
    model = make_model()
    model.save_pretrained(tmp_path / "enh")
    a = Simulator(tiny_scene(), tmp_path / "enh", progress=False).render(trajectory(2)).harmonized
    b = Simulator(tiny_scene(), model, progress=False).render(trajectory(2)).harmonized
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_sequence_video(tmp_path):
    seq = Simulator(tiny_scene(), make_model(), progress=False).render(trajectory(2))
    rows = seq.panels(depth=True)
    assert rows[0].shape == (24, 120, 3) and rows[0].dtype == np.uint8
    path = seq.write_video(tmp_path / "v.mp4")
    assert path.stat().st_size > 0


@pytest.mark.skipif(not (DEMO_SCENE_DIR / "scene.yaml").is_file(), reason="demo scene not built")
def test_demo_simulator_low_resolution():
    sim = Simulator.from_demo(make_model(trained_like=False), scale=0.25, progress=False)
    assert sim.intrinsics.width == 64 and sim.trajectory.intrinsics == sim.intrinsics
    seq = sim.render(sim.trajectory[10:12])
    assert seq.raw.shape == (2, 36, 64, 3)
    assert float(seq.inserted_mask.max()) > 0.5  # its inserted vehicle is in view
    np.testing.assert_allclose(seq.harmonized, seq.raw, atol=1e-5)


# ---------------------------------------------------------------------------------------------- examples
def _load_example(name: str):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file runs
    spec.loader.exec_module(mod)
    return mod


def lane_scene() -> Scene:
    """Dark road, white lines at y = 0 and y = -3 (lane centre -1.5), a red box at x in [14, 16] in the lane."""
    xs, ys = torch.arange(-2.0, 40.0, 0.25), torch.arange(-5.0, 5.0, 0.25)
    gx, gy = torch.meshgrid(xs, ys, indexing="ij")
    road = torch.stack([gx, gy, torch.zeros_like(gx)], -1).reshape(-1, 3)
    lx = torch.arange(-2.0, 40.0, 0.08)
    lines = torch.cat([torch.stack([lx, torch.full_like(lx, y), torch.full_like(lx, 0.01)], -1) for y in (0.0, -3.0)])
    bx, by, bz = torch.arange(14.0, 16.01, 0.2), torch.arange(-2.5, -0.49, 0.2), torch.arange(0.0, 1.61, 0.2)
    box = torch.stack(torch.meshgrid(bx, by, bz, indexing="ij"), -1).reshape(-1, 3)
    parts = [
        GaussianScene.from_points(road, torch.full_like(road, 0.06), scale=0.2, opacity=0.98),
        GaussianScene.from_points(lines, torch.full_like(lines, 0.95), scale=0.06, opacity=0.98),
        GaussianScene.from_points(box, torch.tensor([[0.8, 0.1, 0.1]]).expand(len(box), 3), scale=0.15, opacity=0.98),
    ]
    parts[0].log_scales[:, 2] = math.log(0.02)
    parts[1].log_scales[:, 2] = math.log(0.01)
    return Scene(GaussianScene.concat(parts), config=RenderConfig(background_color=(0.5, 0.6, 0.8)),
                 intrinsics=Intrinsics.from_fov(80.0, 128, 72))


def test_closed_loop_controller_sees_lane_and_obstacle():
    cl = _load_example("closed_loop")
    cfg = cl.ControllerConfig()
    sim = Simulator(lane_scene(), None, progress=False)
    state = cl.EgoState(x=0.0, y=-1.0, yaw=0.0, speed=6.0)  # 0.5 m left of the lane centre
    f = sim.step(cl.camera_pose(state, 1.6, math.radians(-5.0)))
    seen = cl.perceive(f.harmonized, f.depth, f.pose, sim.intrinsics, cfg)
    assert seen.lane_offset_m == pytest.approx(-0.5, abs=0.15)  # the centre is to the right
    assert abs(seen.lane_heading_rad) < 0.05
    assert 13.0 < seen.gap_m < 14.5  # the box's near face is 14 m ahead
    nxt, cmd = cl.control(state, seen, cfg, 0.1)
    assert cmd["yaw_rate_rad_s"] < 0 and nxt.y < state.y + 0.6 and cmd["target_speed_mps"] < cfg.cruise_speed_mps
    far = cl.EgoState(x=-30.0, y=-1.5, yaw=0.0, speed=3.0)  # box beyond the perception range
    g = sim.step(cl.camera_pose(far, 1.6, math.radians(-5.0)))
    clear = cl.perceive(g.harmonized, g.depth, g.pose, sim.intrinsics, cfg)
    assert clear.gap_m == math.inf
    assert cl.control(far, clear, cfg, 0.1)[0].speed > far.speed  # nothing ahead: accelerate


@pytest.mark.slow
@pytest.mark.skipif(not (DEMO_SCENE_DIR / "scene.yaml").is_file(), reason="demo scene not built")
def test_examples_run_end_to_end(tmp_path):
    cl = _load_example("closed_loop")
    assert cl.main(["--frames", "3", "--scale", "0.25", "--model", "untrained", "--out", str(tmp_path / "cl"),
                    "--quiet"]) == 0
    assert (tmp_path / "cl" / "closed_loop.mp4").stat().st_size > 0
    ia = _load_example("insert_asset")
    assert ia.main(["--frames", "3", "--scale", "0.25", "--model", "untrained", "--out", str(tmp_path / "ia"),
                    "--sun", "60", "25", "--quiet"]) == 0
    assert (tmp_path / "ia" / "insert_asset.json").is_file()
    with pytest.raises(SystemExit):  # a sun below the horizon is refused before anything is rendered
        ia.main(["--sun", "60", "-5", "--out", str(tmp_path / "ia2"), "--quiet"])
    assert not (tmp_path / "ia2").exists()
