"""PoseIntegrator: metric motion, clamps, determinism, snapshot validation and drops."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controls.camera import is_rigid, look_at, make_pose, rotation_yaw
from controls.integrator import ControlSettings, InputSnapshot, IntegratorState, Key, PoseIntegrator

FPS = 16.0


def test_identity_start_and_one_pose_per_frame():
    integ = PoseIntegrator()
    poses = integ.advance(None, 5)
    assert poses.shape == (5, 4, 4)
    np.testing.assert_array_equal(poses, np.broadcast_to(np.eye(4), (5, 4, 4)))
    assert integ.advance(None, 0).shape == (0, 4, 4)


@settings(max_examples=25, deadline=None)
@given(yaw=st.floats(-720, 720), tau=st.floats(0.0, 0.5), speed=st.floats(0.2, 5.0))
def test_holding_forward_covers_speed_times_time_minus_lag(yaw, tau, speed):
    """Holding W for 2 s moves v*(2 - tau*(1-exp(-2/tau))) along the facing direction: within v*tau of 2v."""
    start_pose = make_pose(rotation_yaw(math.radians(yaw)), [0.5, -1.6, 2.0])
    integ = PoseIntegrator(ControlSettings(walk_speed_mps=speed, smoothing_tau_s=tau), start_pose, fps=FPS)
    start = integ.position
    heading = np.array([math.sin(math.radians(yaw)), 0.0, math.cos(math.radians(yaw))])
    integ.advance(InputSnapshot(seq=2, client_time_ms=1.0, keys=Key.FORWARD, yaw_deg=yaw), 32)  # 2 s
    moved = integ.position - start
    lag = speed * tau * (1 - math.exp(-2.0 / tau)) if tau > 0 else 0.0
    assert np.linalg.norm(moved) == pytest.approx(2 * speed - lag, rel=1e-9, abs=1e-9)
    assert 2 * speed - speed * tau - 1e-9 <= np.linalg.norm(moved) <= 2 * speed + 1e-9
    np.testing.assert_allclose(moved / np.linalg.norm(moved), heading, atol=1e-6)


def test_default_walk_two_seconds_is_2p8_metres_minus_documented_lag():
    integ = PoseIntegrator()
    integ.advance(InputSnapshot(seq=1, client_time_ms=0.0, keys=Key.FORWARD), 32)
    assert integ.position[2] == pytest.approx(2.8 - 1.4 * 0.1, abs=1e-6)
    integ.advance(InputSnapshot(seq=2, client_time_ms=2000.0), 32)  # release: coasts out the lag
    assert integ.position[2] == pytest.approx(2.8, abs=1e-6)
    assert np.linalg.norm(integ.velocity) < 1e-6


@settings(max_examples=30, deadline=None)
@given(
    script=st.lists(
        st.tuples(
            st.integers(0, 1023),
            st.one_of(st.none(), st.floats(-400, 400)),
            st.one_of(st.none(), st.floats(-90, 90)),
            st.floats(-500, 500),
            st.floats(-500, 500),
            st.integers(1, 8),
        ),
        min_size=1,
        max_size=8,
    ),
    fly=st.booleans(),
)
def test_pitch_never_passes_clamp_and_walking_keeps_height(script, fly):
    cfg = ControlSettings(pitch_limit_deg=60.0, fly=fly)
    integ = PoseIntegrator(cfg)
    for seq, (keys, yaw, pitch, dx, dy, n) in enumerate(script, start=1):
        snap = InputSnapshot(seq, float(seq), Key(keys), yaw, pitch, None, dx, dy)
        poses = integ.advance(snap, n)
        assert abs(integ.pitch_deg) <= 60.0 + 1e-9
        assert all(is_rigid(p) for p in poses)
        if not fly:
            np.testing.assert_array_equal(poses[:, 1, 3], 0.0)


@settings(max_examples=20, deadline=None)
@given(yaws=st.lists(st.floats(-1000, 1000), min_size=1, max_size=6), dx=st.floats(-300, 300))
def test_pure_yaw_never_changes_height_or_position(yaws, dx):
    integ = PoseIntegrator(start_world_T_cam=look_at([1.0, -1.5, 2.0], [3.0, -1.5, 5.0]))
    for i, y in enumerate(yaws):
        poses = integ.advance(InputSnapshot(seq=2 * i + 1, client_time_ms=0.0, yaw_deg=y), 3)
        poses2 = integ.advance(InputSnapshot(seq=2 * i + 2, client_time_ms=0.0, look_dx_px=dx), 3)
        for p in np.concatenate([poses, poses2]):
            np.testing.assert_allclose(p[:3, 3], [1.0, -1.5, 2.0], atol=1e-12)
            assert p[1, 3] == -1.5


def test_look_deltas_mouse_up_looks_up_and_invert_y():
    integ = PoseIntegrator(ControlSettings(smoothing_tau_s=0.0, look_sensitivity_deg_per_px=0.1))
    poses = integ.advance(InputSnapshot(seq=1, client_time_ms=0.0, look_dx_px=100.0, look_dy_px=-100.0), 1)
    assert integ.yaw_deg == pytest.approx(10.0) and integ.pitch_deg == pytest.approx(10.0)
    forward = poses[0][:3, 2]
    assert forward[0] > 0 and forward[1] < 0  # turned right, looking up (world up is -y)
    inv = PoseIntegrator(ControlSettings(smoothing_tau_s=0.0, invert_y=True))
    inv.advance(InputSnapshot(seq=1, client_time_ms=0.0, look_dy_px=-100.0), 1)
    assert inv.pitch_deg == pytest.approx(-10.0)


def test_keys_strafe_fly_sprint_roll():
    cfg = ControlSettings(smoothing_tau_s=0.0, fly=True, vertical_speed_mps=2.0)
    integ = PoseIntegrator(cfg)
    integ.advance(InputSnapshot(seq=1, client_time_ms=0.0, keys=Key.RIGHT | Key.UP), 16)
    np.testing.assert_allclose(integ.position, [1.4, -2.0, 0.0], atol=1e-12)  # up is -y
    integ.advance(InputSnapshot(seq=2, client_time_ms=0.0, keys=Key.FORWARD | Key.SPRINT), 16)
    np.testing.assert_allclose(integ.position, [1.4, -2.0, 4.2], atol=1e-12)
    integ.advance(InputSnapshot(seq=3, client_time_ms=0.0, keys=Key.ROLL_RIGHT), 16)
    assert integ.roll_deg == pytest.approx(45.0)
    assert integ.world_T_cam[1, 0] > 0  # the camera's right axis dips down
    walk = PoseIntegrator(ControlSettings(smoothing_tau_s=0.0))
    walk.advance(InputSnapshot(seq=1, client_time_ms=0.0, keys=Key.FORWARD | Key.RIGHT | Key.UP), 16)
    np.testing.assert_allclose(np.linalg.norm(walk.position), 1.4, atol=1e-12)  # diagonal not faster
    assert walk.position[1] == 0.0


def test_deterministic_and_state_restore_replays_exactly():
    script = [(Key.FORWARD, 10.0, 0.0), (Key.FORWARD | Key.LEFT, 30.0, 20.0), (Key.BACK, -40.0, -50.0)]

    def run(integ, start_seq):
        return np.concatenate(
            [integ.advance(InputSnapshot(start_seq + i, 0.0, k, y, p), 7) for i, (k, y, p) in enumerate(script)]
        )

    a, b = PoseIntegrator(), PoseIntegrator()
    np.testing.assert_array_equal(run(a, 1), run(b, 1))
    saved = a.state()
    assert isinstance(saved, IntegratorState)
    first = run(a, 10)
    a.restore(saved)
    np.testing.assert_array_equal(run(a, 20), first)


def test_reset_returns_to_start_and_keeps_drop_count():
    start = look_at([0.0, -1.0, 0.0], [1.0, -1.0, 1.0])
    integ = PoseIntegrator(start_world_T_cam=start)
    integ.advance(InputSnapshot(seq=5, client_time_ms=0.0, keys=Key.FORWARD), 4)
    integ.advance(InputSnapshot(seq=4, client_time_ms=0.0), 1)
    integ.reset()
    np.testing.assert_allclose(integ.world_T_cam, start, atol=1e-12)
    assert integ.dropped_snapshots == 1 and np.all(integ.velocity == 0)
    np.testing.assert_allclose(integ.advance(None, 2), [start, start], atol=1e-12)


def test_integrator_drops_stale_and_bad_snapshots_and_keeps_going():
    integ = PoseIntegrator(ControlSettings(smoothing_tau_s=0.0))
    integ.advance(InputSnapshot(seq=10, client_time_ms=0.0, keys=Key.FORWARD), 16)
    before = integ.position
    integ.advance(InputSnapshot(seq=9, client_time_ms=0.0, keys=Key.BACK), 16)  # stale: still walking forward
    assert integ.dropped_snapshots == 1 and "stale" in integ.last_drop_reason
    assert integ.position[2] == pytest.approx(before[2] + 1.4)
    integ.advance(InputSnapshot(seq=10, client_time_ms=0.0, keys=Key.FORWARD), 1)  # the same one again: fine
    assert integ.dropped_snapshots == 1
    for bad in (
        {"type": "input", "seq": 11, "t": 0, "yaw": float("nan")},
        {"type": "input", "seq": 12, "t": 0, "pitch": 1e9},
        {"type": "input", "seq": 13},
        "garbage",
    ):
        integ.advance(bad, 1)
    assert integ.dropped_snapshots == 5
    assert integ.yaw_deg == 0.0 and integ.pitch_deg == 0.0
    integ.advance({"type": "input", "seq": 14, "t": 1.0, "keys": 0, "yaw": 5.0}, 1)
    assert integ.yaw_deg == pytest.approx(5.0) and integ.dropped_snapshots == 5


def test_from_message_parses_protocol_example():
    snap = InputSnapshot.from_message(
        {"type": "input", "seq": 42, "t": 1234.5, "keys": 1, "yaw": 12.5, "pitch": -3.0, "roll": 0.0}
    )
    assert snap == InputSnapshot(42, 1234.5, Key.FORWARD, 12.5, -3.0, 0.0)
    assert InputSnapshot.from_message({"type": "input", "seq": 1.0, "t": 0, "dx": 3, "dy": -2}).look_dx_px == 3
    nulls = InputSnapshot.from_message({"type": "input", "seq": 2, "t": 0, "keys": None, "yaw": None, "dx": None})
    assert nulls == InputSnapshot(2, 0.0)


def test_settings_change_applies_new_clamp():
    integ = PoseIntegrator(ControlSettings(smoothing_tau_s=0.0))
    integ.advance(InputSnapshot(seq=1, client_time_ms=0.0, pitch_deg=55.0), 1)
    integ.settings = ControlSettings(smoothing_tau_s=0.0, pitch_limit_deg=30.0)
    integ.advance(None, 1)
    assert integ.pitch_deg == pytest.approx(30.0)
    with pytest.raises(ValueError, match="ControlSettings"):
        integ.settings = {"walk_speed_mps": 2.0}


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        ({"type": "input", "seq": 1, "t": 0, "yaw": float("inf")}, "yaw_deg must be finite"),
        ({"type": "input", "seq": 1, "t": float("nan")}, "client_time_ms must be finite"),
        ({"type": "input", "seq": 1, "t": 0, "pitch": 91}, "pitch_deg=91 is out of range"),
        ({"type": "input", "seq": -1, "t": 0}, "seq must be an integer"),
        ({"type": "input", "seq": 1.5, "t": 0}, "seq must be an integer"),
        ({"type": "input", "seq": 1, "t": 0, "keys": 4096}, "unknown bits"),
        ({"type": "input", "seq": 1, "t": 0, "keys": "w"}, "keys must be an integer"),
        ({"type": "input", "seq": 1, "t": 0, "dx": 1e7}, "look_dx_px"),
        ({"type": "input", "seq": 1, "t": 0, "yaw": "12"}, "yaw_deg must be a number"),
        ({"type": "input", "seq": 1, "t": 0, "speed": 3}, "unknown fields"),
        ({"type": "reset"}, "type 'input'"),
        ({"type": "input", "t": 0}, "lacks 'seq'"),
        ([1, 2], "JSON object"),
    ],
)
def test_from_message_rejects_bad_fields(msg, match):
    with pytest.raises(ValueError, match=match):
        InputSnapshot.from_message(msg)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"walk_speed_mps": float("nan")}, "walk_speed_mps must be finite"),
        ({"walk_speed_mps": -1.0}, "walk_speed_mps"),
        ({"pitch_limit_deg": 95.0}, "pitch_limit_deg"),
        ({"sprint_factor": 0.5}, "sprint_factor"),
        ({"smoothing_tau_s": -0.1}, "smoothing_tau_s"),
        ({"fly": "yes"}, "fly must be a bool"),
    ],
)
def test_control_settings_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ControlSettings(**kwargs)


def test_integrator_rejects_bad_construction():
    with pytest.raises(ValueError, match="rigid"):
        PoseIntegrator(start_world_T_cam=np.diag([2.0, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="exceeds the clamp"):
        PoseIntegrator(start_world_T_cam=look_at([0, 0, 0], [0, -5, 1]))
    with pytest.raises(ValueError, match="fps"):
        PoseIntegrator(fps=0.0)
    with pytest.raises(ValueError, match="n_frames"):
        PoseIntegrator().advance(None, -1)
