"""Shadow hints (scene_tools.shadows): geometry against hand-computed shadows, the scene, data, model and
Harmonizer paths that carry the hint, and bad input."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from scene_tools.cameras import Intrinsics, look_at
from scene_tools.gaussians import GaussianScene
from scene_tools.scene import ObjectTrack, RenderConfig, Scene, yaw_pose
from scene_tools.shadows import OCCLUDER_CELL_M, Caster, Sun, light_view, occluder_map, shadow_hint, sun_direction
from simharmony.errors import ConfigError, InvalidInputError, ShapeMismatchError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

INTR = Intrinsics.from_fov(60.0, 96, 72)


def box_caster(centre=(0.0, 0.0), size=(2.0, 1.0), z=(0.5, 1.5), step=0.1) -> Caster:
    """A solid box of small opaque Gaussians: x, y extents ``size`` around ``centre``, from z[0] to z[1]."""
    xs = torch.arange(-size[0] / 2, size[0] / 2 + 1e-6, step) + centre[0]
    ys = torch.arange(-size[1] / 2, size[1] / 2 + 1e-6, step) + centre[1]
    zs = torch.arange(z[0], z[1] + 1e-6, step)
    pts = torch.stack(torch.meshgrid(xs, ys, zs, indexing="ij"), -1).reshape(-1, 3)
    n = len(pts)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    return Caster(pts, quats, torch.full((n, 3), 0.6 * step), torch.full((n,), 0.95))


def ground_view():
    """A camera 12 m above the origin looking straight down (x right, y down in the image): pose and depth of
    the ground plane z = 0, and the world (x, y) of every pixel centre."""
    pose = look_at(eye=(0.0, 0.0, 12.0), target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0))
    h, w = INTR.height, INTR.width
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    rays = np.stack([(u - INTR.cx) / INTR.fx, (v - INTR.cy) / INTR.fy, np.ones_like(u)], -1)
    world_dirs = rays @ pose[:3, :3].T
    s = -pose[2, 3] / world_dirs[..., 2]  # hit z = 0
    pts = pose[:3, 3] + world_dirs * s[..., None]
    depth = s  # rays have z = 1 in the camera: the ray parameter is the z-depth
    return pose, depth.astype(np.float32), pts


def expected_shadow(pts: np.ndarray, direction: np.ndarray, box=((-1, 1), (-0.5, 0.5)), z=(0.5, 1.5)) -> np.ndarray:
    """Ground points whose ray towards the sun passes through the box (sampled along the ray)."""
    hit = np.zeros(pts.shape[:2], bool)
    for zz in np.linspace(z[0], z[1], 21):
        p = pts[..., :2] + direction[:2] * (zz / direction[2])
        hit |= (p[..., 0] >= box[0][0]) & (p[..., 0] <= box[0][1]) & (p[..., 1] >= box[1][0]) & (p[..., 1] <= box[1][1])
    return hit


@pytest.mark.parametrize("azimuth, elevation", [(0.0, 90.0), (0.0, 45.0), (120.0, 35.0), (250.0, 60.0)])
def test_hint_falls_where_the_sun_ray_meets_the_box(azimuth, elevation):
    pose, depth, pts = ground_view()
    sun = Sun(azimuth, elevation)
    hint = shadow_hint([box_caster()], sun, depth, INTR.K, pose).numpy()
    want = expected_shadow(pts, sun.direction)
    got = hint > 0.5
    # the splats' soft edges (3 sigma = 0.18 m, stacked along the light) reach up to two pixels (0.15 m each)
    # beyond the box: compare with that margin; a misplaced shadow (a metre or more) still fails
    near = cv2.dilate(want.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert want.sum() > 40 and (got & want).sum() / want.sum() > 0.95 and (got & near).sum() / got.sum() > 0.9
    assert hint.min() >= 0 and hint.max() <= 1
    # the shadow lies away from the sun: its centroid moves against the sun's ground direction
    if elevation < 90:
        c = pts[got].mean(0)
        assert c[:2] @ sun.direction[:2] < -0.3


def test_caster_below_the_receiver_casts_nothing_and_exclude_and_several_casters():
    pose, depth, _ = ground_view()
    sun = Sun(30.0, 50.0)
    under = box_caster(z=(-2.5, -1.5))  # behind the ground as the sun sees it
    assert shadow_hint([under], sun, depth, INTR.K, pose).max() < 1e-3
    one = shadow_hint([box_caster()], sun, depth, INTR.K, pose, stride=1)
    other = box_caster(centre=(3.0, 2.0))
    both = shadow_hint([box_caster(), other], sun, depth, INTR.K, pose, stride=1)
    alone = shadow_hint([other], sun, depth, INTR.K, pose, stride=1)
    torch.testing.assert_close(both, 1 - (1 - one) * (1 - alone), atol=1e-5, rtol=0)
    # the default runs the test on 2 x 2 blocks: the same map, a little softer at its edges
    coarse = shadow_hint([box_caster()], sun, depth, INTR.K, pose)
    assert (coarse - one).abs().mean() < 0.02 and ((coarse > 0.5) == (one > 0.5)).float().mean() > 0.98
    ex = torch.zeros_like(one)
    ex[:, : INTR.width // 2] = 1.0
    cut = shadow_hint([box_caster()], sun, depth, INTR.K, pose, exclude=ex, stride=1)
    assert cut[:, : INTR.width // 2].max() == 0 and torch.equal(cut[:, INTR.width // 2:], one[:, INTR.width // 2:])
    sky = np.full_like(depth, np.inf)
    assert shadow_hint([box_caster()], sun, sky, INTR.K, pose).max() == 0  # no surface: no shadow
    assert shadow_hint([], sun, depth, INTR.K, pose).max() == 0


@pytest.mark.parametrize("wall_height, shaded_from_x", [(3.0, None), (4.0, 0.5), (6.5, -1.0)])
def test_scene_occluders_shade_the_caster_itself(wall_height, shaded_from_x):
    """A wall at x = 3..3.2 under a sun from +x at 45 degrees shades the plane z = 1.5 (the box's top) from
    x = 3 - (height - 1.5) on: not at all, its far half, or all of it. The hint on the box's pixels says so;
    off the box (the ground) it stays the box's own cast shadow."""
    pose, depth, pts = ground_view()
    top = (np.abs(pts[..., 0]) <= 1.0) & (np.abs(pts[..., 1]) <= 0.5)
    depth = np.where(top, depth - 1.5, depth).astype(np.float32)
    pts = np.where(top[..., None], pts + np.array([0.0, 0.0, 1.5]), pts)
    wall = box_caster(centre=(3.1, 0.0), size=(0.2, 10.0), z=(0.0, wall_height), step=0.1)
    sun = Sun(0.0, 45.0)
    ex = top.astype(np.float32)
    plain = shadow_hint([box_caster()], sun, depth, INTR.K, pose, exclude=ex, stride=1)
    hint = shadow_hint([box_caster()], sun, depth, INTR.K, pose, exclude=ex, stride=1, occluders=wall).numpy()
    np.testing.assert_array_equal(hint[~top], plain.numpy()[~top])
    assert plain.numpy()[top].max() == 0  # without occluders nothing shades the box
    inner = top & (np.abs(pts[..., 0]) < 0.85) & (np.abs(pts[..., 1]) < 0.35)  # two pixels from the box's edges
    if shaded_from_x is None:
        assert hint[top].max() < 0.05
    else:
        want = pts[..., 0] > shaded_from_x
        edge = np.abs(pts[..., 0] - shaded_from_x) < 0.3  # the wall top's soft splats
        assert (hint[inner & want & ~edge] > 0.8).all() and (hint[inner & ~want & ~edge] < 0.2).all()
    with pytest.raises(InvalidInputError, match="exclude"):
        shadow_hint([box_caster()], sun, depth, INTR.K, pose, occluders=wall)
    with pytest.raises(InvalidInputError, match="world space"):
        shadow_hint([box_caster()], sun, depth, INTR.K, pose, exclude=ex, occluders=Caster(
            wall.means, wall.quats, wall.scales, wall.opacities, pose=np.eye(4)))


def test_occluder_columns_find_every_gaussian_in_the_frustum():
    """The sun-column lookup of occluder_map finds exactly the Gaussians a test of every one would keep
    (a scattered street of small and large Gaussians, boxes at several places, several suns), so the map
    drawn from them is the one drawn from all."""
    g = torch.Generator().manual_seed(3)
    n = 4000
    means = torch.rand(n, 3, generator=g) * torch.tensor([120.0, 40.0, 12.0]) - torch.tensor([60.0, 20.0, 0.0])
    scales = torch.rand(n, 3, generator=g) * 0.3 + 0.02
    scales[::97] *= 20.0  # a few larger than a column cell
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    street = Caster(means, quats, scales, torch.full((n,), 0.8))
    assert (street.extent > OCCLUDER_CELL_M).any() and (street.extent <= OCCLUDER_CELL_M).any()
    for az, el in ((0.0, 45.0), (130.0, 20.0), (250.0, 70.0)):
        direction = sun_direction(az, el)
        for cx, cy in ((0.0, 0.0), (25.0, -8.0), (-50.0, 15.0)):
            box = box_caster(centre=(cx, cy), size=(4.0, 2.0), z=(0.0, 1.5), step=0.25)
            view = light_view(box, direction, 64, 80.0, behind_radii=0.5)
            pl = street.means @ view["viewmat"][:3, :3].T + view["viewmat"][:3, 3]
            m = street.extent
            hw = view["radius"] * pl[:, 2] / view["dist"]
            want = ((pl[:, 2] > view["near"] - m) & (pl[:, 2] < view["far"] + m)
                    & (pl[:, 0].abs() < hw + m) & (pl[:, 1].abs() < hw + m)).nonzero()[:, 0]
            t = view["viewmat"][:3, 3]
            widest = view["radius"] * (view["far"] + OCCLUDER_CELL_M) / view["dist"]
            found = street.sun_columns(view["viewmat"][:3, :3]).candidates((-float(t[0]), -float(t[1])), widest)
            assert len(found) < n and bool(torch.isin(want, found).all())
            drawn = occluder_map(box, street, direction)
            if len(want):
                from scene_tools.rasterize import rasterize

                out, alphas, _ = rasterize(street.means[want], street.quats[want], street.scales[want],
                                           street.opacities[want], torch.ones(len(want), 1), view["viewmat"][None],
                                           view["K"][None], 64, 64, near_plane=view["near"], far_plane=view["far"],
                                           render_mode="ED")
                assert torch.equal(drawn["alpha"], alphas[0, ..., 0]) and torch.equal(drawn["depth"], out[0, ..., 0])
            else:
                assert drawn["alpha"].max() == 0


def test_light_view_is_near_orthographic_and_frames_the_caster():
    c = box_caster()
    view = light_view(c, sun_direction(40.0, 30.0), size=64)
    pl = c.means.double() @ view["viewmat"][:3, :3].double().T + view["viewmat"][:3, 3].double()
    px = view["K"][0, 0].double() * pl[:, 0] / pl[:, 2] + view["K"][0, 2].double()
    assert px.min() > 0 and px.max() < 64
    assert (pl[:, 2].max() - pl[:, 2].min()) / pl[:, 2].mean() < 0.02  # far away: parallel rays


def test_sun_validation_and_jitter():
    with pytest.raises(InvalidInputError, match="elevation"):
        Sun(10.0, 0.0)
    with pytest.raises(InvalidInputError, match="finite"):
        Sun(float("nan"), 30.0)
    with pytest.raises(InvalidInputError, match="finite"):
        Sun("north", 30.0)
    with pytest.raises(InvalidInputError, match="sun"):
        Sun.from_metadata([1, 2])
    np.testing.assert_allclose(Sun(90.0, 0.001).direction, [0, 1, 0], atol=1e-4)
    a = Sun(100.0, 40.0).jittered(np.random.default_rng(3), 4.0)
    b = Sun(100.0, 40.0).jittered(np.random.default_rng(3), 4.0)
    assert a == b and a != Sun(100.0, 40.0) and Sun(100.0, 40.0).jittered(np.random.default_rng(3), 0.0) == Sun(100.0, 40.0)
    pose, depth, _ = ground_view()
    with pytest.raises(InvalidInputError, match="sun direction"):
        shadow_hint([box_caster()], np.zeros(3), depth, INTR.K, pose)
    with pytest.raises(ShapeMismatchError):
        shadow_hint([box_caster()], Sun(), depth[None], INTR.K, pose)
    with pytest.raises(ShapeMismatchError, match="Caster.quats"):
        Caster(torch.zeros(4, 3), torch.zeros(3, 4), torch.zeros(4, 3), torch.zeros(4))


# ---------------------------------------------------------------------------------------------- scene
def _ground() -> GaussianScene:
    xs, ys = torch.arange(-2.0, 30.0, 0.35), torch.arange(-7.0, 7.0, 0.35)
    gx, gy = torch.meshgrid(xs, ys, indexing="ij")
    pts = torch.stack([gx, gy, torch.zeros_like(gx)], -1).reshape(-1, 3)
    g = GaussianScene.from_points(pts, torch.full((len(pts), 3), 0.6), scale=0.2, opacity=0.95)
    g.log_scales[:, 2] = math.log(0.02)
    return g


def _box_asset():
    from scene_tools.assets import extract_asset

    c = box_caster(centre=(30.0, 5.0), size=(4.0, 1.8), z=(0.3, 1.5), step=0.25)
    src = GaussianScene.from_points(c.means, torch.full((len(c.means), 3), 0.8), scale=0.15, opacity=0.97,
                                    instance_ids=torch.full((len(c.means),), 9, dtype=torch.int32))
    return extract_asset(src, 9, category="vehicle", source="box", heading=0.0)


def test_scene_frames_carry_the_hint_when_the_sun_is_known(tmp_path):
    pose = look_at(eye=(0.0, 0.0, 3.0), target=(10.0, 0.5, 0.0), up=(0.0, 0.0, 1.0))
    # the sun on the left (+y; the camera looks along +x): the shadow falls to the right of the object
    scene = Scene(_ground(), intrinsics=INTR, metadata={"sun": {"azimuth_deg": 90.0, "elevation_deg": 35.0}})
    scene.insert(_box_asset(), ObjectTrack.static(yaw_pose(10.0, 0.5, 0.0, 0.2)))
    f = scene.render_frame(pose)
    assert f.shadow_hint is not None and f.shadow_hint.shape == (INTR.height, INTR.width)
    h = f.shadow_hint
    assert (h > 0.5).sum() > 30  # a visible shadow on the ground...
    assert h[f.inserted_mask > 0.9].max() < 0.1  # ...never on the object itself
    cols = np.arange(INTR.width)[None, :]
    obj = f.inserted_mask.numpy()
    assert (h.numpy() * cols).sum() / h.sum().item() > (obj * cols).sum() / obj.sum()
    # the sun in front of the camera (azimuth 0 = +x): the shadow falls towards the camera, below the object
    front = Scene(_ground(), intrinsics=INTR, metadata={"sun": {"azimuth_deg": 0.0, "elevation_deg": 35.0}})
    front.insert(_box_asset(), ObjectTrack.static(yaw_pose(10.0, 0.5, 0.0, 0.2)))
    hf = front.render_frame(pose).shadow_hint
    rows = np.arange(INTR.height)[:, None]
    assert (hf.numpy() * rows).sum() / hf.sum().item() > (h.numpy() * rows).sum() / h.sum().item()
    # saved and loaded with the scene; forgotten with sun = None; off by config
    scene.save(tmp_path / "s")
    assert Scene.load(tmp_path / "s").sun == Sun(90.0, 35.0)
    scene.sun = None
    scene.reset()
    assert scene.render_frame(pose).shadow_hint is None
    scene.sun = Sun(90.0, 35.0)
    scene.config = RenderConfig(shadow_hints=False)
    scene.reset()
    assert scene.render_frame(pose).shadow_hint is None
    # synthetic streets fall back to their lighting
    assert Scene(_ground(), metadata={"lighting": {"sun_azimuth_deg": 10.0, "sun_elevation_deg": 20.0}}).sun == Sun(10.0, 20.0)
    with pytest.raises(ConfigError, match="elevation"):
        Scene(_ground(), metadata={"sun": {"azimuth_deg": 10.0, "elevation_deg": -5.0}})
    with pytest.raises(ConfigError, match="unknown"):
        Scene(_ground(), metadata={"sun": {"azimuth": 10.0}})


def test_scene_shades_its_inserted_asset_and_a_parked_asset_reuses_its_map():
    """A wall on the sun's side (+y, 3 m from the box, 4 m high, sun at 35 degrees: its shadow reaches 5.7 m)
    shades the inserted box: the hint covers the box's pixels; without the wall, or with
    ``scene_shadows_on_assets`` off, it does not."""
    pose = look_at(eye=(0.0, 0.0, 3.0), target=(10.0, 0.5, 0.0), up=(0.0, 0.0, 1.0))
    wall = box_caster(centre=(10.0, 4.0), size=(12.0, 0.3), z=(0.0, 4.0), step=0.15)
    bg = GaussianScene.concat([_ground(), GaussianScene.from_points(wall.means, torch.full((len(wall.means), 3), 0.5),
                                                                    scale=0.09, opacity=0.97)])
    sun = {"sun": {"azimuth_deg": 90.0, "elevation_deg": 35.0}}
    track = ObjectTrack.static(yaw_pose(10.0, 0.5, 0.0, 0.2))
    hints = {}
    for name, background, config in (("wall", bg, RenderConfig()), ("open", _ground(), RenderConfig()),
                                      ("off", bg, RenderConfig(scene_shadows_on_assets=False))):
        scene = Scene(background, intrinsics=INTR, metadata=sun, config=config)
        scene.insert(_box_asset(), track)
        f = scene.render_frame(pose)
        obj = f.inserted_mask.numpy() > 0.9
        hints[name] = f.shadow_hint.numpy()[obj]
        if name == "wall":  # rendered again (the parked box keeps its pose): its occluder map comes from the cache
            assert sum(1 for k in scene._light_maps if k[0] == "occluders") == 1
            slot = next(k for k in scene._light_maps if k[0] == "occluders")
            kept = scene._light_maps[slot][1]
            scene.reset()
            np.testing.assert_array_equal(scene.render_frame(pose).shadow_hint.numpy()[obj], hints[name])
            assert scene._light_maps[slot][1] is kept
            scene.objects[0].track = ObjectTrack.static(yaw_pose(10.5, 0.5, 0.0, 0.2))  # moved: drawn again
            scene.reset()
            scene.render_frame(pose)
            assert scene._light_maps[slot][1] is not kept
            assert sum(1 for k in scene._light_maps if k[0] == "occluders") == 1
    assert obj.sum() > 50
    assert np.median(hints["wall"]) > 0.8
    assert hints["open"].max() < 0.1 and hints["off"].max() < 0.1


# ---------------------------------------------------------------------------------------------- model
def _hint_model():
    from simharmony.models.backbone import EnhancerConfig
    from simharmony.models.enhancer import Enhancer

    torch.manual_seed(0)
    return Enhancer(EnhancerConfig(channels=(8, 16), heads=4, temporal_levels=(1,), context_frames=2,
                                   use_shadow_hint=True)).eval()


def test_enhancer_hint_input_starts_as_the_identity_and_is_read_once_trained():
    from simharmony.models.backbone import EnhancerConfig
    from simharmony.models.enhancer import Enhancer
    from simharmony.training.trainer import with_added_modules

    torch.manual_seed(0)
    base = Enhancer(EnhancerConfig(channels=(8, 16), heads=4, temporal_levels=(1,), context_frames=2))
    with torch.no_grad():
        base.backbone.conv_out.weight.normal_(0, 0.05)  # a model that changes frames
    grown = with_added_modules(base, {"use_shadow_hint": True}).eval()
    base.eval()
    x, hint = torch.rand(2, 3, 32, 48), torch.rand(2, 1, 32, 48)
    a, _ = base(x)
    b, _ = grown(x, shadow_hint=hint)
    torch.testing.assert_close(a, b, atol=0, rtol=0)  # hint_in starts at zero
    with torch.no_grad():
        grown.backbone.hint_in.weight.normal_(0, 0.5)
    c, _ = grown(x, shadow_hint=hint)
    d, _ = grown(x, shadow_hint=hint, shadow_hint_given=torch.tensor([True, False]))
    e, _ = grown(x)
    assert (c - a).abs().max() > 1e-3
    torch.testing.assert_close(d[0], c[0])
    torch.testing.assert_close(d[1], e[1])  # an item whose hint is not given is run as without one
    with pytest.raises(InvalidInputError, match="use_shadow_hint=False"):
        base(x, shadow_hint=hint)
    with pytest.raises(ShapeMismatchError, match="shadow_hint"):
        grown(x, shadow_hint=hint[:, :, :16])
    with pytest.raises(InvalidInputError, match="finite"):
        grown(x, shadow_hint=torch.full_like(hint, float("nan")))


def test_harmonizer_passes_hints_to_models_that_read_them():
    from simharmony.harmonizer import Harmonizer

    model = _hint_model()
    with torch.no_grad():
        model.backbone.hint_in.weight.normal_(0, 0.5)
        model.backbone.conv_out.weight.normal_(0, 0.05)
    h = Harmonizer.from_pretrained(model)
    assert h.reads_shadow_hint
    frame = np.random.default_rng(0).uniform(size=(32, 48, 3)).astype(np.float32)
    hint = np.zeros((32, 48), np.float32)
    hint[10:20, 10:30] = 1.0
    with_hint = h.enhance(frame, shadow_hint=hint, stream="a")
    without = h.enhance(frame, stream="b")
    assert np.abs(with_hint - without).max() > 1e-3
    out = h.enhance_batch({"c": frame, "d": frame}, shadow_hints={"c": hint})  # mixed in one batch
    np.testing.assert_allclose(out["c"], with_hint, atol=1e-5)
    np.testing.assert_allclose(out["d"], without, atol=1e-5)
    with pytest.raises(InvalidInputError, match="shadow hint must be in"):
        h.enhance(frame, shadow_hint=hint * 2, stream="e")
    with pytest.raises(InvalidInputError, match="not in frames"):
        h.enhance_batch({"c": frame}, shadow_hints={"zz": hint})
    # a model without the hint input ignores it (the render hook passes hints whenever it has them)
    from simharmony.models.backbone import EnhancerConfig
    from simharmony.models.enhancer import Enhancer

    plain = Harmonizer.from_pretrained(Enhancer(EnhancerConfig(channels=(8, 16), heads=4, temporal_levels=(1,))).eval())
    assert not plain.reads_shadow_hint and Harmonizer.from_pretrained("default").reads_shadow_hint  # v9 reads it
    np.testing.assert_array_equal(plain.enhance(frame, shadow_hint=hint, stream="p"), plain.enhance(frame, stream="q"))


# ---------------------------------------------------------------------------------------------- data
def test_items_and_shards_carry_the_hint(tmp_path):
    from simharmony.data.item import PairItem
    from simharmony.data.shards import ShardDataset, finalize_dataset, write_shard
    from simharmony.utils.io import save_yaml

    t, h, w = 3, 8, 12
    rng = np.random.default_rng(0)
    hint = rng.uniform(size=(t, h, w)).astype(np.float32)
    flow = np.zeros((t, h, w, 2), np.float32)
    item = PairItem(rng.uniform(size=(t, h, w, 3)), rng.uniform(size=(t, h, w, 3)), np.zeros((t, h, w)),
                    np.ones((t, h, w)), flow, np.zeros((t, h, w), bool),
                    {"stream": "shadow", "params": {}, "seed": 0, "scene_id": "s"}, shadow_hint=hint)
    assert item.frames(1, 2).shadow_hint.shape == (2, h, w)
    with pytest.raises(InvalidInputError, match="shadow_hint"):
        PairItem(**{**item.arrays(), "shadow_hint": hint * 3}, metadata=item.metadata)
    with pytest.raises(ShapeMismatchError, match="shadow_hint"):
        PairItem(**{**item.arrays(), "shadow_hint": hint[:, :4]}, metadata=item.metadata)
    plain = PairItem(**{k: v for k, v in item.arrays().items() if k != "shadow_hint"}, metadata=item.metadata)
    write_shard(tmp_path / "shards", "shadow-00000", [("shadow-0000000", item), ("shadow-0000001", plain)])
    save_yaml(tmp_path / "generation.yaml", {"seed": 0, "shard_size": 2, "streams": {"shadow": 2}})
    finalize_dataset(tmp_path)
    ds = ShardDataset(tmp_path)
    a, b = ds[0], ds[1]
    assert bool(a["has_shadow_hint"]) and not bool(b["has_shadow_hint"])
    np.testing.assert_allclose(a["shadow_hint"].numpy(), hint, atol=0.5 / 255)
    assert b["shadow_hint"].abs().max() == 0


def test_shadow_stream_items_carry_a_hint_that_meets_the_rendered_shadow():
    """The tiny shadow stream's hint, computed from the object's mesh and the street's sun as at run time,
    covers the cast shadow the path tracer rendered (where the target is darker than the shadow-free input)."""
    from simharmony.data.registry import tiny_configs
    from simharmony.data.streams import generate_shadow

    cfg = tiny_configs("")["shadow"]
    hits = total = 0
    for it in generate_shadow(cfg, seed=1, count=3):
        assert it.shadow_hint is not None and it.shadow_hint.shape == it.mask.shape
        assert "hint_sun" in it.metadata["params"]
        luma = np.array([0.2126, 0.7152, 0.0722], np.float32)
        shade = ((it.input - it.target) @ luma > 0.05) & (it.asset_mask < 0.5)
        hits += (it.shadow_hint[shade] > 0.2).sum()
        total += shade.sum()
    assert total > 10 and hits / total > 0.5, (hits, total)


def test_shadow_head_darkens_only_where_the_hint_is_and_starts_as_the_identity():
    from simharmony.models.backbone import EnhancerConfig
    from simharmony.models.enhancer import Enhancer
    from simharmony.training.trainer import with_added_modules

    with pytest.raises(ConfigError, match="shadow_head"):
        EnhancerConfig(shadow_head=True)
    torch.manual_seed(0)
    base = Enhancer(EnhancerConfig(channels=(8, 16), heads=4, temporal_levels=(1,), context_frames=2)).eval()
    grown = with_added_modules(base, {"use_shadow_hint": True, "shadow_head": True}).eval()
    x = torch.rand(2, 3, 32, 48) * 0.8 + 0.1
    hint = torch.zeros(2, 1, 32, 48)
    hint[:, :, 8:24, 16:40] = 1.0
    a, _ = base(x)
    torch.testing.assert_close(grown(x, shadow_hint=hint)[0], a, atol=0, rtol=0)  # zero last conv: no change
    with torch.no_grad():
        grown.shadow_head.out.bias.copy_(torch.tensor([0.5, 0.4, 0.2]))  # a bluish shadow
    out, _ = grown(x, shadow_hint=hint, shadow_hint_given=torch.tensor([True, False]))
    inside, outside = hint[0, 0] > 0, hint[0, 0] == 0
    ratio = out[0][:, inside] / a[0][:, inside]
    torch.testing.assert_close(ratio.mean(1), torch.tensor([0.5, 0.6, 0.8]), atol=0.02, rtol=0)
    torch.testing.assert_close(out[0][:, outside], a[0][:, outside])  # no hint: no shadow
    torch.testing.assert_close(out[1], a[1])  # an item without a hint is left as it was


def test_a_new_shadow_head_learns_it_gets_gradient_at_its_zero_start():
    """A fresh head changes nothing yet must still receive gradient (a plain clamp at zero would give none)."""
    from simharmony.models.layers import ShadowHead

    torch.manual_seed(0)
    head = ShadowHead(48)
    x, hint = torch.rand(1, 3, 16, 16), torch.ones(1, 1, 16, 16)
    target = x * 0.6  # a shadow
    out = ShadowHead.apply(x, hint, head(torch.rand(1, 48, 4, 4), torch.ones(1, 1, 4, 4)))
    torch.testing.assert_close(out, x)
    ((out - target) ** 2).mean().backward()
    assert head.out.bias.grad is not None and bool((head.out.bias.grad < 0).all())  # darker is better: a grows


def test_render_hook_and_simulator_pass_the_hint_on():
    from simharmony.harmonizer import Harmonizer
    from simharmony.plugin import HarmonizedRenderer

    h = Harmonizer.from_pretrained(_hint_model())
    seen = []
    real = h.enhance
    h.enhance = lambda *a, **kw: seen.append(kw.get("shadow_hint")) or real(*a, **kw)
    frame = np.random.default_rng(0).uniform(size=(32, 48, 3)).astype(np.float32)
    hint = np.full((32, 48), 0.5, np.float32)
    render = HarmonizedRenderer(lambda cam: {"rgb": frame, "shadow_hint": hint}, h, strict=True)
    render(0)
    assert seen[-1] is hint
    off = HarmonizedRenderer(lambda cam: {"rgb": frame, "shadow_hint": hint}, h, strict=True, use_shadow_hint=False)
    off(0)
    assert seen[-1] is None
    # a Simulator over a scene with a sun hands the scene's hint to the enhancer and keeps it on the frame
    from simharmony.sim import Simulator

    pose = look_at(eye=(0.0, 0.0, 3.0), target=(10.0, 0.5, 0.0), up=(0.0, 0.0, 1.0))
    scene = Scene(_ground(), intrinsics=INTR, metadata={"sun": {"azimuth_deg": 90.0, "elevation_deg": 35.0}})
    scene.insert(_box_asset(), ObjectTrack.static(yaw_pose(10.0, 0.5, 0.0, 0.2)))
    f = Simulator(scene, h).step(pose)
    assert f.shadow_hint is not None and f.shadow_hint.max() > 0.5
    np.testing.assert_array_equal(seen[-1].numpy() if hasattr(seen[-1], "numpy") else seen[-1], f.shadow_hint)
