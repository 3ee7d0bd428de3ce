"""The renderer: determinism, geometry of depth, motion cues and input validation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from controls.camera import intrinsics_from_fov, rotation_yaw
from sim import DEFAULT_HFOV_DEG, default_intrinsics
from sim import primitives as P
from sim.world import EYE_HEIGHT_M, Primitives, Scene, pose_from_yaw

SIZE = 96


@pytest.fixture(scope="module")
def scene():
    return Scene.from_seed(5, "meadow")


def _with_prims(scene: Scene, kinds, centres, halves, yaws=None) -> Scene:
    """The same world with only the given primitives."""
    half = np.array(halves, dtype=np.float32)
    prims = Primitives(
        kind=np.array(kinds, dtype=np.int8), centre=np.array(centres, dtype=np.float64), half=half,
        yaw=np.zeros(len(kinds), np.float32) if yaws is None else np.array(yaws, np.float32),
        colour=np.full((len(kinds), 3), 0.5, np.float32), texture=np.zeros(len(kinds), np.float32),
        bound=np.linalg.norm(half, axis=1).astype(np.float32) * 1.001,
    )
    return Scene(scene.seed, scene.theme, scene.sun_dir, prims, scene.ground, scene.detail, scene.clouds)


def test_default_intrinsics_match_controls():
    assert np.allclose(default_intrinsics(160, 96), intrinsics_from_fov(160, 96, DEFAULT_HFOV_DEG))


def test_same_seed_and_pose_give_the_same_bytes(scene):
    pose = scene.spawn_world_T_cam(0)
    K = default_intrinsics(SIZE, SIZE)
    a = scene.render(pose, K, SIZE, SIZE)
    b = Scene.from_seed(5, "meadow").render(pose, K, SIZE, SIZE)
    assert a.rgb.shape == (1, SIZE, SIZE, 3) and a.rgb.dtype == np.uint8
    assert a.depth.shape == (1, SIZE, SIZE) and a.depth.dtype == np.float32
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.depth, b.depth)
    # Rendering in a batch gives the same bytes as one at a time.
    poses = np.stack([pose, scene.spawn_world_T_cam(1)])
    batch = scene.render(poses, K, SIZE, SIZE)
    assert np.array_equal(batch.rgb[0], a.rgb[0])
    other = Scene.from_seed(6, "meadow").render(pose, K, SIZE, SIZE)
    assert not np.array_equal(other.rgb, a.rgb)


def test_naming_the_theme_or_fog_a_seed_picked_gives_the_same_scene():
    picked = Scene.from_seed(4)
    named = Scene.from_seed(4, picked.theme.name, fog=picked.fog_density > picked.theme.fog_density)
    assert np.array_equal(picked.ground.texels, named.ground.texels)
    assert np.array_equal(picked.prims.centre, named.prims.centre) and picked.fog_density == named.fog_density


def test_splitting_a_batch_changes_nothing(scene, monkeypatch):
    import sim.renderer

    poses = np.stack([scene.spawn_world_T_cam(i) for i in range(3)])
    K = default_intrinsics(40, 30)
    whole = scene.render(poses, K, 40, 30)
    monkeypatch.setattr(sim.renderer, "MAX_RAYS_PER_BATCH", 40 * 30)  # one frame per batch
    split = scene.render(poses, K, 40, 30)
    assert np.array_equal(whole.rgb, split.rgb) and np.array_equal(whole.depth, split.depth)


def test_ground_depth_is_the_ray_plane_distance(scene):
    empty = _with_prims(scene, [], np.zeros((0, 3)), np.zeros((0, 3)))
    pose = pose_from_yaw([3.0, -EYE_HEIGHT_M, 4.0], 0.7)
    pitch = math.radians(-20.0)  # look down a little
    pose[:3, :3] = pose[:3, :3] @ np.array([[1, 0, 0], [0, math.cos(pitch), -math.sin(pitch)], [0, math.sin(pitch), math.cos(pitch)]])
    K = default_intrinsics(SIZE, SIZE)
    depth = empty.render(pose, K, SIZE, SIZE).depth[0]
    u, v = np.meshgrid(np.arange(SIZE), np.arange(SIZE))
    rays_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, dtype=float)], -1)
    rays_world = rays_cam @ pose[:3, :3].T
    down = rays_world[..., 1] > 1e-6
    expected = np.where(down, EYE_HEIGHT_M / np.where(down, rays_world[..., 1], 1.0), np.inf)
    assert down.mean() > 0.5 and (~down).any()
    assert np.array_equal(np.isinf(depth), ~down)
    assert np.allclose(depth[down], expected[down], rtol=1e-4)


@pytest.mark.parametrize("kind, half, near_face", [
    (P.BOX, (1.0, 1.0, 0.5), 0.5),
    (P.ELLIPSOID, (0.7, 0.7, 0.7), 0.7),
    (P.CYLINDER, (0.6, 1.5, 0.6), 0.6),
], ids=["box", "sphere", "cylinder"])
def test_object_depth_matches_its_geometry(scene, kind, half, near_face):
    # A level camera at eye height, 5 m from the object's centre along +z, at the centre's height.
    centre = np.array([40.0, -1.6, 45.0])
    only = _with_prims(scene, [kind], [centre], [half])
    pose = pose_from_yaw(centre - [0.0, 0.0, 5.0], 0.0)
    K = intrinsics_from_fov(64, 64, 60.0)
    depth = only.render(pose, K, 64, 64).depth[0]
    assert depth[32, 32] == pytest.approx(5.0 - near_face, rel=1e-5)
    # The same object turned by its yaw: a box seen corner-on is nearer at the centre pixel.
    if kind == P.BOX:
        turned = _with_prims(scene, [kind], [centre], [(1.0, 1.0, 1.0)], yaws=[math.pi / 4])
        assert turned.render(pose, K, 64, 64).depth[0, 32, 32] == pytest.approx(5.0 - math.sqrt(2.0), rel=1e-5)


def test_full_yaw_turn_returns_the_same_image(scene):
    K = default_intrinsics(SIZE, SIZE)
    pose = scene.spawn_world_T_cam(2)
    images = []
    turned = pose.copy()
    for step in range(36):
        turned[:3, :3] = rotation_yaw(math.radians(10.0)) @ turned[:3, :3]
        if step in (17, 35):
            images.append(scene.render(turned, K, SIZE, SIZE).rgb[0].astype(int))
    start = scene.render(pose, K, SIZE, SIZE).rgb[0].astype(int)
    half_turn, full_turn = images
    assert np.abs(full_turn - start).max() <= 1
    assert (full_turn == start).all(axis=-1).mean() > 0.999
    assert np.abs(half_turn - start).mean() > 10


def _block_flow(a: np.ndarray, b: np.ndarray, y: int, x: int, block: int, search: int) -> tuple[int, int, float, float]:
    """Integer displacement of the block at (y, x) from a to b by exhaustive SSD, with best and median costs."""
    ref = a[y:y + block, x:x + block]
    costs = {}
    for dy in range(-search, search + 1):
        for dx in range(-search, search + 1):
            yy, xx = y + dy, x + dx
            if 0 <= yy and yy + block <= b.shape[0] and 0 <= xx and xx + block <= b.shape[1]:
                costs[dy, dx] = float(((b[yy:yy + block, xx:xx + block] - ref) ** 2).mean())
    (dy, dx), best = min(costs.items(), key=lambda kv: kv[1])
    return dy, dx, best, float(np.median(list(costs.values())))


def test_walking_forward_makes_the_ground_flow_away_from_the_vanishing_point():
    scene = Scene.from_seed(12, "desert")
    size, block, search = 128, 12, 12
    K = default_intrinsics(size, size)
    start = scene.spawn_world_T_cam(0)
    ahead = start.copy()
    ahead[:3, 3] += start[:3, 2] * 0.3  # 0.3 m along the optical axis
    a, b = (scene.render(p, K, size, size).rgb[0].astype(np.float32).mean(-1) for p in (start, ahead))
    cx, cy = K[0, 2], K[1, 2]
    outward, counted = 0, 0
    for y in range(int(cy) + 16, size - block - 2, block):
        for x in range(4, size - block - 4, block):
            dy, dx, best, typical = _block_flow(a, b, y, x, block, search)
            if best > 0.2 * typical or (dx, dy) == (0, 0):
                continue  # textureless or ambiguous block
            counted += 1
            radial = np.array([x + block / 2 - cx, y + block / 2 - cy])
            outward += float(np.dot([dx, dy], radial)) > 0
    assert counted >= 20
    assert outward / counted > 0.9


def test_is_free_rejects_points_inside_and_near_objects(scene):
    prims = scene.prims
    assert not scene.is_free(prims.centre).any()
    assert scene.distance(prims.centre).max() < 0
    # The spawn is free, level, at eye height, and the same every time.
    pose = scene.spawn_world_T_cam(0)
    assert scene.is_free(pose[:3, 3], 1.5)
    assert pose[1, 3] == pytest.approx(-EYE_HEIGHT_M) and np.allclose(pose[:3, 1], [0, 1, 0])
    assert np.array_equal(pose, Scene.from_seed(5, "meadow").spawn_world_T_cam(0))
    # Next to a box: free with a small radius, not with a radius reaching the box.
    box = _with_prims(scene, [P.BOX], [[10.0, -1.0, 10.0]], [(1.0, 1.0, 1.0)])
    point = np.array([10.0, -1.0, 11.5])
    assert box.distance(point) == pytest.approx(0.5)
    assert box.is_free(point, 0.3) and not box.is_free(point, 0.6)
    # The world wraps: the same box one period away.
    assert not box.is_free(point + [box.period, 0.0, -box.period], 0.6)
    assert not box.is_free([0.0, -0.1, 0.0], 0.3)  # too close to the ground


def test_orbit_preset_is_placed_in_free_space(scene):
    from controls.trajectory import preset

    relative = preset("orbit", n_frames=81, width=64, height=64).world_T_cams
    poses = scene.place_trajectory(relative)
    assert scene.is_free(poses[:, :3, 3], 0.3).all()
    assert np.allclose(np.linalg.inv(poses[0]) @ poses, relative, atol=1e-9)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "3", 2**63, None])
def test_bad_scene_seed_is_rejected(seed):
    with pytest.raises(ValueError, match="seed"):
        Scene.from_seed(seed)


def test_bad_inputs_are_rejected(scene):
    K = default_intrinsics(32, 32)
    good = scene.spawn_world_T_cam(0)
    with pytest.raises(ValueError, match="unknown theme 'mars'"):
        Scene.from_seed(1, "mars")
    nan = good.copy()
    nan[0, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        scene.render(nan, K, 32, 32)
    scaled = good.copy()
    scaled[:3, :3] *= 2.0
    with pytest.raises(ValueError, match="not rigid"):
        scene.render(scaled, K, 32, 32)
    mirrored = good.copy()
    mirrored[:3, 0] *= -1.0
    with pytest.raises(ValueError, match="det R = -1"):
        scene.render(mirrored, K, 32, 32)
    under = good.copy()
    under[1, 3] = 0.5
    with pytest.raises(ValueError, match="y = 0.500, at or below the ground"):
        scene.render(under, K, 32, 32)
    with pytest.raises(ValueError, match=r"shape \(3, 4\)"):
        scene.render(good[:3], K, 32, 32)
    for bad_K in (K * np.array([[-1, 1, 1], [1, 1, 1], [1, 1, 1]]), K + np.array([[0, 0.5, 0], [0, 0, 0], [0, 0, 0]]), K[:2]):
        with pytest.raises(ValueError, match="K must"):
            scene.render(good, bad_K, 32, 32)
    with pytest.raises(ValueError, match="width must be an int"):
        scene.render(good, K, 0, 32)
    with pytest.raises(ValueError, match="positions must be finite"):
        scene.is_free([np.inf, -1.0, 0.0])
    with pytest.raises(ValueError, match="radius"):
        scene.is_free([0.0, -1.0, 0.0], -1.0)
    with pytest.raises(ValueError, match="spawn index"):
        scene.spawn_world_T_cam(-2)


def test_fog_hides_the_distance_and_is_optional():
    clear, foggy = Scene.from_seed(9, "meadow", fog=False), Scene.from_seed(9, "meadow", fog=True)
    assert foggy.fog_density > 5 * clear.fog_density
    pose = clear.spawn_world_T_cam(0)
    K = default_intrinsics(SIZE, SIZE)
    a, b = clear.render(pose, K, SIZE, SIZE), foggy.render(pose, K, SIZE, SIZE)
    assert np.array_equal(a.depth, b.depth)
    far = (a.depth[0] > 15.0) & np.isfinite(a.depth[0])
    assert far.sum() > 100
    # Fog washes out the contrast of what is far away.
    assert b.rgb[0][far].astype(float).std(axis=0).mean() < 0.6 * a.rgb[0][far].astype(float).std(axis=0).mean()
    with pytest.raises(ValueError, match="fog must be"):
        Scene.from_seed(9, fog="yes")


def test_themes_validate_their_values():
    from dataclasses import replace

    from sim.themes import THEMES

    with pytest.raises(ValueError, match="not RGB"):
        replace(THEMES["meadow"], ground=(1.2, 0.0, 0.0))
    with pytest.raises(ValueError, match="sun elevation"):
        replace(THEMES["dusk"], sun_elevation_deg=(10.0, 95.0))
    with pytest.raises(ValueError, match="object families"):
        replace(THEMES["snow"], objects={"spaceship": 1.0})


def test_supersampling_smooths_colours_and_keeps_centre_depth(scene):
    pose = scene.spawn_world_T_cam(0)
    K = default_intrinsics(48, 32)
    plain, smooth = scene.render(pose, K, 48, 32), scene.render(pose, K, 48, 32, supersample=3)
    assert smooth.rgb.shape == plain.rgb.shape
    finite = np.isfinite(plain.depth)
    assert np.array_equal(np.isfinite(smooth.depth), finite)
    assert np.allclose(smooth.depth[finite], plain.depth[finite], rtol=1e-4)
    # The same picture (not shifted by a sub-pixel offset) ...
    a, b = plain.rgb.astype(float), smooth.rgb.astype(float)
    assert np.abs(a - b).mean() < 12
    # ... made of the 3 x 3 samples of the three-times larger image around each pixel centre.
    fine = scene.render(pose, [[K[0, 0] * 3, 0, K[0, 2] * 3 + 1], [0, K[1, 1] * 3, K[1, 2] * 3 + 1], [0, 0, 1]], 144, 96)
    mean = fine.rgb.reshape(1, 32, 3, 48, 3, 3).astype(float).mean(axis=(2, 4))
    assert np.abs(mean - b).max() <= 0.5 + 1e-9
    with pytest.raises(ValueError, match="supersample"):
        scene.render(pose, K, 48, 32, supersample=2)
