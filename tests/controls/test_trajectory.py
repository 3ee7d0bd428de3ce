"""Trajectories: DSL parity with the official roll-out, presets, file round trips and bad files."""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from diffusers.pipelines.sana_wm import cam_utils
from hypothesis import given, settings
from hypothesis import strategies as st

from controls import formats
from controls.camera import is_rigid, make_pose, rotation_from_ypr
from controls.trajectory import PRESETS, Trajectory, from_action_string, load, preset, save

ACTIONS = [
    "w-5",
    "w-3,jl-2",
    "wd-7,l-4,i-9,none-2,sa-5",
    "i-90,w-3",  # pitch runs into the 85 deg clamp
    "k-100,wl-5,ik-3",
    "W - 4 ， j-3",  # whitespace and a full-width comma, as accepted officially
]


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize(
    "speeds",
    [{}, {"translation_speed": 0.025, "rotation_speed_deg": 0.6, "pitch_limit_deg": 60.0}],
    ids=["defaults", "demo-speeds"],
)
def test_action_string_matches_official(action, speeds):
    ref = cam_utils.action_string_to_c2w(action, **speeds)
    ours = from_action_string(action, **speeds)
    assert ours.shape == ref.shape and ours.dtype == np.float64
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


@settings(max_examples=20, deadline=None)
@given(
    segments=st.lists(
        st.tuples(st.sets(st.sampled_from("wasdijkl"), min_size=1, max_size=4), st.integers(1, 40)),
        min_size=1,
        max_size=6,
    )
)
def test_random_action_strings_match_official(segments):
    action = ",".join("".join(sorted(k)) + f"-{n}" for k, n in segments)
    np.testing.assert_allclose(from_action_string(action), cam_utils.action_string_to_c2w(action), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("action", "match"),
    [
        ("", "empty"),
        ("w", "not '<keys>-<frames>'"),
        ("w-", "not '<keys>-<frames>'"),
        ("w-0", "non-positive"),
        ("w--3", "unknown keys"),
        ("x-3", r"unknown keys \['x'\]"),
        ("w-3,,a-2", "not '<keys>-<frames>'"),
        ("w-2.5", "not '<keys>-<frames>'"),
        ("-3", "unknown keys"),
        ("w-100001", "more than 100000"),
    ],
)
def test_malformed_action_strings_raise(action, match):
    with pytest.raises(ValueError, match=match):
        from_action_string(action)


def test_presets_are_metric_rigid_and_clamped():
    for name in PRESETS:
        t = preset(name, n_frames=33, width=320, height=176, hfov_deg=70.0)
        assert t.world_T_cams.shape == (33, 4, 4) and t.intrinsics.shape == (33, 4)
        assert all(is_rigid(p) for p in t.world_T_cams)
        np.testing.assert_allclose(t.world_T_cams[:, 1, 3], 0.0, atol=1e-12)  # all stay at eye height
    walk = preset("walk_forward", n_frames=33)
    np.testing.assert_allclose(walk.world_T_cams[-1, :3, 3], [0, 0, 2.8])  # 2 s at 1.4 m/s
    assert preset("pan", n_frames=17).world_T_cams[-1, 0, 2] == pytest.approx(math.sin(math.radians(30)))
    cond = preset("orbit", n_frames=17, width=128, height=64).conditioning((8, 16, 16))
    assert cond["camera_conditions"].shape == (3, 20) and cond["chunk_plucker"].shape == (48, 3, 4, 8)


def test_load_preset_dsl_and_errors():
    assert load("walk_forward", n_frames=9, width=64, height=32).n_frames == 9
    t = load("w-4,l-2", width=64, height=32, scene_scale=2.0)
    np.testing.assert_allclose(t.world_T_cams[4, :3, 3], [0, 0, 0.4])
    with pytest.raises(ValueError, match="neither a trajectory file, a preset"):
        load("walk_fwd")
    with pytest.raises(ValueError, match="does not exist"):
        load("missing/path.json")
    with pytest.raises(ValueError, match="n_frames applies to presets only"):
        load("w-3", n_frames=4)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("spin")


def random_trajectory(rng: np.random.Generator, n: int, constant_k: bool) -> Trajectory:
    angles = rng.uniform(-1.4, 1.4, size=(n, 3))
    pos = rng.normal(scale=5.0, size=(n, 3))
    poses = np.stack([make_pose(rotation_from_ypr(*a), p) for a, p in zip(angles, pos)])
    W, H = int(rng.integers(16, 2000)), int(rng.integers(16, 2000))
    k = np.array([rng.uniform(0.3, 3) * W, rng.uniform(0.3, 3) * H, rng.uniform(0, W), rng.uniform(0, H)])
    K = np.broadcast_to(k, (n, 4)) if constant_k else k * rng.uniform(0.9, 1.1, size=(n, 4))
    return Trajectory(poses, K, W, H, float(rng.choice([10.0, 16.0, 24.0, 30.0])))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 12),
    fmt=st.sampled_from(formats.FORMATS),
    scale=st.sampled_from([1.0, 0.25, 3.7]),
    constant_k=st.booleans(),
)
def test_every_format_round_trips(seed, n, fmt, scale, constant_k):
    t = random_trajectory(np.random.default_rng(seed), n, constant_k)
    name = {"re10k": "cams.txt", "sana_bench": "cams.npz", "nerfstudio": "transforms.json", "json": "cams.json"}[fmt]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        save(t, path, scene_scale=scale)
        size = {"width": t.width, "height": t.height} if fmt == "re10k" else {}
        back = load(path, fps=t.fps, scene_scale=scale, **size)
    np.testing.assert_allclose(back.world_T_cams, t.world_T_cams, atol=1e-9, rtol=0)
    np.testing.assert_allclose(back.intrinsics, t.intrinsics, atol=1e-9, rtol=1e-12)
    assert (back.width, back.height, back.fps) == (t.width, t.height, t.fps)


def test_re10k_file_layout_and_scale(tmp_path):
    t = preset("walk_forward", n_frames=3, width=200, height=100)
    save(t, tmp_path / "c.txt", scene_scale=0.5)
    lines = (tmp_path / "c.txt").read_text().splitlines()
    assert len(lines) == 4 and len(lines[1].split()) == 19
    cols = [float(x) for x in lines[3].split()]
    assert cols[0] == 125000  # microseconds at 16 fps
    assert cols[3] == pytest.approx(0.5) and cols[4] == pytest.approx(0.5)  # normalised principal point
    # w2c translation of a camera 0.175 m ahead, in file units of 0.5 m.
    assert cols[7 + 11] == pytest.approx(-0.175 / 0.5)
    with pytest.raises(ValueError, match="pass width= and height="):
        load(tmp_path / "c.txt")


def test_nerfstudio_uses_opengl_axes(tmp_path):
    t = preset("walk_forward", n_frames=2, width=64, height=32)
    save(t, tmp_path / "transforms.json")
    obj = json.loads((tmp_path / "transforms.json").read_text())
    np.testing.assert_allclose(np.array(obj["frames"][0]["transform_matrix"]), np.diag([1.0, -1, -1, 1]))
    assert obj["w"] == 64 and obj["fl_x"] > 0


GOOD_LINE = "0 0.5 0.9 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("url\n" + GOOD_LINE + " 7\n", "expected 19 columns"),
        ("url\n" + " ".join(GOOD_LINE.split()[:-2]) + "\n", "expected 19 columns"),
        ("url\n" + GOOD_LINE.replace("0.9", "nan") + "\n", "NaN or inf"),
        ("url\n" + GOOD_LINE.replace("0.9", "abc") + "\n", "non-numeric"),
        ("url\n" + GOOD_LINE + "\n" + GOOD_LINE + "\n", "timestamps must increase"),
        ("url\n" + GOOD_LINE.replace("0 0 1 0 0 0 0 1 0 0 0 0 1 0", "0 0 2 0 0 0 0 1 0 0 0 0 1 0") + "\n", "not a rigid"),
        ("url\n" + GOOD_LINE.replace(" 0.9 ", " -0.9 ") + "\n", "implausible"),
        ("url\n", "no camera lines"),
    ],
)
def test_bad_re10k_files_raise(tmp_path, content, match):
    (tmp_path / "c.txt").write_text(content)
    with pytest.raises(ValueError, match=match):
        load(tmp_path / "c.txt", width=64, height=32)


def test_bad_npz_and_json_files_raise(tmp_path):
    np.savez(tmp_path / "a.npz", c2w=np.eye(4)[None])
    with pytest.raises(ValueError, match=r"missing arrays \['intrinsics'\]"):
        load(tmp_path / "a.npz", width=8, height=8)
    np.savez(tmp_path / "b.npz", c2w=np.eye(4)[None].repeat(2, 0), intrinsics=np.eye(3)[None])
    with pytest.raises(ValueError, match="2 poses but 1 intrinsics"):
        load(tmp_path / "b.npz", width=8, height=8)
    far = np.eye(4)[None].copy()
    far[0, 0, 3] = 1e9
    np.savez(tmp_path / "c.npz", c2w=far, intrinsics=np.eye(3)[None] * [[[5], [5], [1]]])
    with pytest.raises(ValueError, match="beyond"):
        load(tmp_path / "c.npz", width=8, height=8)
    t = preset("pan", n_frames=2, width=64, height=32)
    save(t, tmp_path / "t.json")
    with pytest.raises(ValueError, match="file says width=64, caller asked for 128"):
        load(tmp_path / "t.json", width=128)
    obj = json.loads((tmp_path / "t.json").read_text())
    obj["intrinsics"] = [[1.0, 2.0, 3.0]] * 2
    (tmp_path / "u.json").write_text(json.dumps(obj))
    with pytest.raises(ValueError, match=r"intrinsics must have shape \[F, 4\]"):
        load(tmp_path / "u.json")
    obj = json.loads((tmp_path / "t.json").read_text())
    obj["world_T_cams"][1][0][0] = float("inf")
    (tmp_path / "v.json").write_text(json.dumps(obj))
    with pytest.raises(ValueError, match="non-finite"):
        load(tmp_path / "v.json")
    (tmp_path / "w.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        load(tmp_path / "w.json")
    (tmp_path / "transforms.json").write_text(json.dumps({"frames": [{"transform_matrix": [[1, 0, 0]]}]}))
    with pytest.raises(ValueError, match="4x4 or 3x4"):
        load(tmp_path / "transforms.json")


def test_trajectory_validation_and_resize():
    poses = np.eye(4)[None]
    with pytest.raises(ValueError, match="intrinsics must be"):
        Trajectory(poses, np.ones((2, 4)), 8, 8)
    with pytest.raises(ValueError, match="width must be"):
        Trajectory(poses, [[5.0, 5.0, 4.0, 4.0]], 0, 8)
    with pytest.raises(ValueError, match="fps"):
        Trajectory(poses, [[5.0, 5.0, 4.0, 4.0]], 8, 8, fps=float("nan"))
    t = Trajectory(poses, [[1000.0, 1000.0, 960.0, 540.0]], 1920, 1080).resized_to(1280, 704)
    np.testing.assert_allclose(t.intrinsics[0], [1000 * 1280 / 1920, 1000 * 720 / 1080, 640.0, 352.0])
    with pytest.raises(ValueError):
        t.world_T_cams[0, 0, 0] = 2.0  # read-only
