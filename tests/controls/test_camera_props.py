"""Properties of the pure camera functions (hypothesis) and their input checks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from controls.camera import (
    compose,
    intrinsics_from_fov,
    intrinsics_matrix,
    intrinsics_vec4,
    invert,
    is_rigid,
    look_at,
    make_pose,
    opencv_to_opengl,
    opengl_to_opencv,
    plucker_rays,
    prepare_camera,
    relative_poses,
    rotation_from_ypr,
    rotation_pitch,
    rotation_roll,
    rotation_yaw,
    ypr_from_rotation,
)

angle = st.floats(-math.pi, math.pi)
coord = st.floats(-100, 100)
poses = st.builds(
    lambda y, p, r, x, yy, z: make_pose(rotation_from_ypr(y, p, r), [x, yy, z]), angle, angle, angle, coord, coord, coord
)


@settings(max_examples=40, deadline=None)
@given(a=poses, b=poses)
def test_inverse_round_trips_and_composes(a, b):
    np.testing.assert_allclose(compose(a, invert(a)), np.eye(4), atol=1e-12)
    np.testing.assert_allclose(invert(invert(a)), a, atol=1e-12)
    np.testing.assert_allclose(invert(compose(a, b)), compose(invert(b), invert(a)), atol=1e-10)
    assert is_rigid(compose(a, b))
    np.testing.assert_array_equal(opengl_to_opencv(opencv_to_opengl(a)), a)


@settings(max_examples=40, deadline=None)
@given(y=st.floats(-3.1, 3.1), p=st.floats(-1.5, 1.5), r=st.floats(-3.1, 3.1))
def test_ypr_round_trip(y, p, r):
    np.testing.assert_allclose(ypr_from_rotation(rotation_from_ypr(y, p, r)), (y, p, r), atol=1e-9)


def test_rotation_sign_conventions():
    forward = np.array([0.0, 0.0, 1.0])
    assert (rotation_yaw(0.3) @ forward)[0] > 0  # yaw right
    assert (rotation_pitch(0.3) @ forward)[1] < 0  # pitch looks up (world up is -y)
    assert (rotation_roll(0.3) @ np.array([1.0, 0, 0]))[1] > 0  # roll right: right axis dips
    np.testing.assert_allclose(look_at([0, 0, 0], [0, 0, 5]), np.eye(4), atol=1e-15)
    np.testing.assert_allclose(look_at([0, 0, 0], [1, 0, 0])[:3, :3], rotation_yaw(math.pi / 2), atol=1e-15)


@settings(max_examples=30, deadline=None)
@given(eye=st.tuples(coord, coord, coord), target=st.tuples(coord, coord, coord))
def test_look_at_points_the_camera_at_the_target(eye, target):
    eye, target = np.array(eye), np.array(target)
    d = target - eye
    horizontal = math.hypot(d[0], d[2])
    if np.linalg.norm(d) == 0 or horizontal == 0:
        with pytest.raises(ValueError):
            look_at(eye, target)
        return
    assume(np.linalg.norm(d) > 1e-3 and horizontal > 1e-3 * np.linalg.norm(d))
    P = look_at(eye, target)
    assert is_rigid(P)
    np.testing.assert_allclose(P[:3, 2], d / np.linalg.norm(d), atol=1e-9)
    assert abs(P[1, 0]) < 1e-9  # no roll: the right axis stays horizontal
    assert P[1, 1] > 0  # image down points to world down


@settings(max_examples=25, deadline=None)
@given(pose=poses, fov=st.floats(20, 120), h=st.integers(1, 9), w=st.integers(1, 9))
def test_plucker_directions_unit_and_moments_orthogonal(pose, fov, h, w):
    rays = plucker_rays(intrinsics_from_fov(w, h, fov), pose, h, w)  # [6, h, w]
    assert rays.shape == (6, h, w)
    d, m = rays[:3], rays[3:]
    np.testing.assert_allclose(np.linalg.norm(d, axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose((d * m).sum(0), 0.0, atol=1e-9)
    # The moment is the camera centre crossed with the direction.
    np.testing.assert_allclose(m, np.cross(pose[:3, 3], d, axis=0), atol=1e-9)


def test_plucker_identity_pose_known_rays_and_batching():
    K = [2.0, 2.0, 1.0, 1.0]
    rays = plucker_rays(K, np.eye(4), 3, 3)
    np.testing.assert_allclose(rays[:3, 1, 1], [0, 0, 1])  # the principal point looks straight ahead
    np.testing.assert_allclose(rays[:3, 0, 0], np.array([-0.5, -0.5, 1]) / np.linalg.norm([-0.5, -0.5, 1]))
    np.testing.assert_array_equal(rays[3:], 0.0)  # camera at the origin: zero moments
    batch = plucker_rays(np.broadcast_to(np.asarray(K, float), (2, 5, 4)), np.eye(4), 3, 3)
    assert batch.shape == (2, 5, 6, 3, 3)
    np.testing.assert_array_equal(batch[1, 4], rays)


def test_relative_poses_and_intrinsics_helpers():
    P = np.stack([make_pose(rotation_yaw(0.1 * i), [i, 0, 0]) for i in range(4)])
    rel = relative_poses(P)
    np.testing.assert_array_equal(rel[0], np.eye(4))
    np.testing.assert_allclose(compose(P[0], rel), P, atol=1e-12)
    K = intrinsics_from_fov(1280, 704, 90.0)
    np.testing.assert_allclose(K, [[640, 0, 640], [0, 640, 352], [0, 0, 1]])
    np.testing.assert_array_equal(intrinsics_matrix(intrinsics_vec4(K)), K)
    assert intrinsics_vec4(torch.tensor([1.0, 2.0, 3.0, 4.0])).dtype == np.float64


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: invert(np.eye(3)), r"\[\.\.\., 4, 4\]"),
        (lambda: compose(np.full((4, 4), np.nan), np.eye(4)), "NaN or inf"),
        (lambda: look_at([0, 0, 0], [0, 0, 0]), "coincide"),
        (lambda: look_at([0, 0, 0], [0, -3, 0]), "parallel"),
        (lambda: intrinsics_from_fov(64, 64, 180.0), "hfov_deg"),
        (lambda: intrinsics_from_fov(0, 64, 60.0), "positive"),
        (lambda: plucker_rays([0.0, 1.0, 1.0, 1.0], np.eye(4), 2, 2), "focal lengths must be positive"),
        (lambda: plucker_rays(np.eye(2), np.eye(4), 2, 2), "intrinsics must be"),
        (lambda: prepare_camera(np.eye(4)[None], np.ones((2, 4)), (64, 64), (8, 16, 16)), "2 frames but poses have 1"),
        (lambda: prepare_camera(np.eye(4)[None], np.ones(4), (64, 64), (8, 16, 8)), "vae_stride"),
        (lambda: prepare_camera(np.eye(4)[None], np.ones(4), (8, 64), (8, 16, 16)), "smaller than the spatial stride"),
        (lambda: prepare_camera(np.zeros((0, 4, 4)), np.ones(4), (64, 64), (8, 16, 16)), "F>=1"),
        (lambda: relative_poses(np.eye(4)), r"\[N>=1, 4, 4\]"),
    ],
)
def test_camera_functions_reject_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
