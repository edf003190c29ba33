"""nerfstudio integration on CPU: the hook that adds "harmonized", the entry point and method config, the
splatfacto model with its viewer checkbox, the CPU rasterizer path, and loading a plain splatfacto model."""

from __future__ import annotations

import math

import pytest
import torch
from test_viewer import SHIFT, colour_shift_model

from simharmony.errors import InvalidInputError
from simharmony.harmonizer import Harmonizer
from simharmony_nerfstudio import HarmonizedOutputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fake_outputs(h=24, w=32):
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(h, w, 3, generator=g) * 0.5 + 0.25
    return {"rgb": rgb, "depth": torch.full((h, w, 1), 3.0), "accumulation": torch.ones(h, w, 1)}


def shifted(rgb):
    return (rgb + torch.tensor(SHIFT)).clamp(0, 1)


# ---------------------------------------------------------------------------------------------- hook (no nerfstudio)
def test_hook_adds_harmonized_output_toggle_and_strength():
    hook = HarmonizedOutputs(Harmonizer(colour_shift_model()))
    out = fake_outputs()
    res = hook(out, pose=torch.eye(4)[:3][None])
    assert set(res) == set(out) | {"harmonized"} and res["rgb"] is out["rgb"]
    assert res["harmonized"].shape == (24, 32, 3) and res["harmonized"].dtype == torch.float32
    torch.testing.assert_close(res["harmonized"], shifted(out["rgb"]), atol=2e-3, rtol=0)
    hook.strength = 0.5
    half = hook(out)["harmonized"]
    torch.testing.assert_close(half, out["rgb"] + 0.5 * (shifted(out["rgb"]) - out["rgb"]), atol=2e-3, rtol=0)
    hook.enabled = False
    assert torch.equal(hook(out)["harmonized"], out["rgb"])  # key stays, frame is the raw one
    with pytest.raises(InvalidInputError):
        hook.strength = 1.5
    with pytest.raises(InvalidInputError, match="rgb"):
        hook({"depth": out["depth"]})


@pytest.mark.parametrize("payload", ["a: !!python/object/apply:os.system ['echo pwned']",
                                     "!!python/object/new:subprocess.Popen [['ls']]",
                                     "x: !!python/name:builtins.eval ''"])
def test_ns_view_refuses_a_config_that_would_run_code(tmp_path, capsys, payload):
    """nerfstudio's eval_setup reads config.yml with the unsafe yaml.Loader: ns-view checks its tags first."""
    from simharmony.cli import main

    path = tmp_path / "config.yml"
    path.write_text(payload)
    assert main(["ns-view", "--load-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "refusing YAML tag" in err and len(err.strip().splitlines()) == 1


def test_hook_failure_returns_raw_and_untrained_fallback_warns(tmp_path, monkeypatch):
    hook = HarmonizedOutputs(Harmonizer(colour_shift_model()))
    out = fake_outputs()
    hook(out)

    def broken(*a, **k):
        raise RuntimeError("boom")

    hook.plugin.harmonizer.enhance = broken
    assert torch.equal(hook(out)["harmonized"], out["rgb"])
    assert hook.plugin.stats()["failures"] == {"RuntimeError": 1}

    import simharmony.harmonizer as harmonizer_mod
    import simharmony.sim as sim_mod

    monkeypatch.setattr(harmonizer_mod, "ENHANCER_DIR", tmp_path / "missing")
    monkeypatch.setattr(sim_mod, "ENHANCER_DIR", tmp_path / "missing")
    hook2 = HarmonizedOutputs("default")
    torch.testing.assert_close(hook2(out)["harmonized"], out["rgb"], atol=2e-3, rtol=0)  # identity
    assert hook2.warning and "UNTRAINED" in hook2.warning


# ---------------------------------------------------------------------------------------------- nerfstudio
@pytest.fixture(scope="module")
def ns():
    pytest.importorskip("nerfstudio", reason="nerfstudio not installed (pip install 'simharmony[nerfstudio]')")
    from simharmony_nerfstudio import model

    return model


def make_model(ns, cls_cfg=None, **cfg):
    from nerfstudio.data.scene_box import SceneBox

    cfg_cls = cls_cfg or ns.SplatfactoHarmonizedModelConfig
    config = cfg_cls(num_random=40, **cfg)
    with ns.deferred_lpips():  # nerfstudio would download AlexNet weights for LPIPS here
        model = config.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]])), num_train_data=1,
                             metadata={})
    return model.eval()


def camera(z=4.0, w=32, h=24, f=30.0):
    from nerfstudio.cameras.cameras import Cameras, CameraType

    c2w = torch.eye(4)[:3][None].clone()  # OpenGL: looking down -z from (0, 0, z)
    c2w[0, 2, 3] = z
    return Cameras(camera_to_worlds=c2w, fx=f, fy=f, cx=w / 2, cy=h / 2, width=w, height=h,
                   camera_type=CameraType.PERSPECTIVE)


def test_entry_point_and_method_config(ns):
    from importlib.metadata import entry_points

    from nerfstudio.plugins.registry import discover_methods

    eps = entry_points(group="nerfstudio.method_configs")
    assert "splatfacto-harmonized" in eps.names
    methods, descriptions = discover_methods()
    cfg = methods["splatfacto-harmonized"]
    assert isinstance(cfg.pipeline.model, ns.SplatfactoHarmonizedModelConfig)
    assert cfg.pipeline.model._target is ns.SplatfactoHarmonizedModel and cfg.method_name == "splatfacto-harmonized"
    assert "Harmonizer" in descriptions["splatfacto-harmonized"]
    assert set(cfg.optimizers) >= {"means", "scales", "quats", "opacities", "features_dc", "features_rest"}


def test_saved_method_config_passes_the_tag_check(ns, tmp_path):
    """A real splatfacto-harmonized config.yml (nerfstudio's own yaml.dump) is accepted by ns-view's check."""
    import yaml
    from nerfstudio.plugins.registry import discover_methods

    from simharmony_nerfstudio import check_config_tags

    path = tmp_path / "config.yml"
    path.write_text(yaml.dump(discover_methods()[0]["splatfacto-harmonized"]))
    assert "!!python/object:" in path.read_text()
    check_config_tags(path)


def test_model_adds_output_and_checkbox_toggles_it(ns, monkeypatch):
    from nerfstudio.viewer.utils import parse_object
    from nerfstudio.viewer.viewer_elements import ViewerElement

    model = make_model(ns, harmonizer="untrained")
    model._harmonized_outputs = HarmonizedOutputs(Harmonizer(colour_shift_model()))
    out = fake_outputs()
    monkeypatch.setattr(model, "get_outputs", lambda cam: dict(out))  # a render faked on CPU
    res = model.get_outputs_for_camera(camera())
    assert res["harmonized"].shape == res["rgb"].shape == (24, 32, 3)
    torch.testing.assert_close(res["harmonized"], shifted(out["rgb"]), atol=2e-3, rtol=0)
    model.harmonizer_checkbox.value = False  # what the viewer's checkbox sets
    assert torch.equal(model.get_outputs_for_camera(camera())["harmonized"], out["rgb"])
    model.harmonizer_checkbox.value = True
    model.harmonizer_strength.value = 0.0
    assert torch.equal(model.get_outputs_for_camera(camera())["harmonized"], out["rgb"])
    # the viewer finds the GUI elements the same way nerfstudio's Viewer does
    names = {e.name for _, e in parse_object(model, ViewerElement, "Custom Elements")}
    assert {"Harmonizer", "Harmonizer strength"} <= names
    assert not any("harmon" in k for k in model.state_dict())  # checkpoints stay splatfacto's


def test_cpu_rasterizer_path_follows_nerfstudio_camera_conventions(ns):
    model = make_model(ns, harmonizer="untrained", sh_degree=0, background_color="black")
    with torch.no_grad():  # one opaque red Gaussian on the optical axis, one green one up and to the right
        p = model.gauss_params
        n = 2
        p["means"] = torch.nn.Parameter(torch.tensor([[0.0, 0.0, 0.0], [0.8, 0.6, 0.0]]))
        p["scales"] = torch.nn.Parameter(torch.full((n, 3), math.log(0.3)))
        p["quats"] = torch.nn.Parameter(torch.tensor([[1.0, 0, 0, 0]] * n))
        p["opacities"] = torch.nn.Parameter(torch.full((n, 1), 6.0))
        p["features_dc"] = torch.nn.Parameter(torch.tensor([[6.0, -6.0, -6.0], [-6.0, 6.0, -6.0]]))
        p["features_rest"] = torch.nn.Parameter(torch.zeros(n, 0, 3))
    out = model.get_outputs_for_camera(camera(z=4.0, w=40, h=30, f=30.0))
    rgb, depth = out["rgb"], out["depth"]
    assert rgb.shape == (30, 40, 3) and out["harmonized"].shape == (30, 40, 3)
    assert rgb[15, 20, 0] > 0.9 and rgb[15, 20, 1] < 0.1  # red at the centre
    assert abs(float(depth[15, 20, 0]) - 4.0) < 0.05  # 4 m along the view axis
    # green projects to u = 20 + 30 * 0.8 / 4 = 26, v = 15 - 30 * 0.6 / 4 = 10.5 (world +y is image up)
    assert rgb[10:12, 25:28, 1].max() > 0.8 and rgb[18:21, 12:15, 1].max() < 0.1
    assert float(out["accumulation"][0, 0, 0]) < 0.01 and rgb[0, 0].max() < 0.01  # black background


def test_existing_splatfacto_model_and_config_convert(ns):
    from nerfstudio.configs.method_configs import method_configs
    from nerfstudio.models.splatfacto import SplatfactoModel, SplatfactoModelConfig

    plain = make_model(ns, cls_cfg=SplatfactoModelConfig, sh_degree=1)
    assert type(plain) is SplatfactoModel
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    # a checkpoint of a plain splatfacto run loads into the harmonized model
    fresh = make_model(ns, harmonizer="untrained", sh_degree=1)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.means, plain.means)
    # and a built plain model is upgraded in place (what `simharmony ns-view` does after eval_setup)
    model = ns.attach_harmonizer(plain, harmonizer="untrained", harmonizer_strength=0.5)
    assert isinstance(model, ns.SplatfactoHarmonizedModel) and model.config.sh_degree == 1
    assert model.harmonizer_strength.value == 0.5 and model.config.harmonizer == "untrained"
    res = model.get_outputs_for_camera(camera())
    assert res["harmonized"].shape == res["rgb"].shape == (24, 32, 3)
    torch.testing.assert_close(res["harmonized"], res["rgb"], atol=2e-3, rtol=0)  # untrained = identity
    # trainer configs of existing runs convert too, keeping their fields
    base = method_configs["splatfacto"]
    conv = ns.harmonized_trainer_config(base, harmonizer="some/folder")
    assert conv.pipeline.model.harmonizer == "some/folder" and conv.method_name == "splatfacto-harmonized"
    assert conv.pipeline.model.sh_degree == base.pipeline.model.sh_degree and base.method_name == "splatfacto"
    with pytest.raises(InvalidInputError):
        ns.harmonized_trainer_config(method_configs["nerfacto"])
