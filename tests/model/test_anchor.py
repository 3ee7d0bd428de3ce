"""The clean-anchor input (model/anchor.py, `ModelConfig.anchor_input`): the rotation warp lands content
where a turning camera sees it, streaming still equals the chunk-causal forward, and growing trained
weights by the input (train/grow.py) changes nothing until training moves it."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from controls.camera import rotation_from_ypr
from model import ModelConfig, WorldModel
from model.anchor import GROUND_FAR_M, anchor_features, ground_copy_target, ground_sample_grid, ray_parallax, rotation_sample_grid
from model.transformer import anchor_frame_index
from tests.model.helpers import inputs, randomise
from tests.model.test_streaming import stream

H, W = 6, 9
FX = 8.0


def _camera(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0, translation=(0.0, 0.0, 0.0), fx: float = FX) -> torch.Tensor:
    """One camera_conditions row [20]: first_T_cam row-major and latent intrinsics (centre at the grid's middle)."""
    pose = np.eye(4)
    pose[:3, :3] = rotation_from_ypr(yaw, pitch, roll)
    pose[:3, 3] = translation
    return torch.tensor(np.concatenate([pose.reshape(16), [fx, fx, (W - 1) / 2, (H - 1) / 2]]), dtype=torch.float32)


def _columns(channels: int = 3) -> torch.Tensor:
    """An anchor [1, C, 1, H, W] whose value is its column index (channel c adds 10·c)."""
    u = torch.arange(W, dtype=torch.float32).expand(H, W)
    return torch.stack([u + 10 * c for c in range(channels)])[None, :, None]


def _features(anchor_camera: torch.Tensor, camera: torch.Tensor, anchor: torch.Tensor | None = None) -> torch.Tensor:
    anchor = _columns() if anchor is None else anchor
    return anchor_features(anchor, anchor_camera[None, None], camera[None, None])[0, :, 0]  # [C + 1, H, W]


def test_same_rotation_is_the_identity_whatever_the_translation():
    for anchor_camera, camera in [(_camera(), _camera(translation=(0.3, -0.1, 1.0))),
                                  (_camera(0.4, -0.2, 0.1), _camera(0.4, -0.2, 0.1, translation=(1.0, 0.0, 0.0)))]:
        out = _features(anchor_camera, camera)
        torch.testing.assert_close(out[:3], _columns()[0, :, 0], atol=1e-4, rtol=0)
        assert bool((out[3] == 1).all())


def test_turning_right_brings_in_what_was_right_of_centre():
    # Yawing right by atan(1/fx) moves the centre column's content one latent pixel: it now shows the
    # anchor's column cx + 1. Every pixel shows a column further right than its own (more towards the
    # edges, where the homography stretches), and the rightmost column has nothing to show. (The top
    # and bottom rows stretch out of view a little: 1/cos of the angle.)
    out = _features(_camera(), _camera(yaw=math.atan(1.0 / FX)))
    cx = (W - 1) // 2
    torch.testing.assert_close(out[0, 1:-1, cx], torch.full((H - 2,), cx + 1.0), atol=2e-3, rtol=0)
    valid = out[3].bool()
    u = torch.arange(W, dtype=torch.float32).expand(H, W)
    assert bool((out[0][valid] > u[valid] + 0.99).all())
    assert not bool(valid[:, -1].any()) and bool(valid[1:-1, : cx + 1].all())
    assert bool((out[:3, :, -1] == 0).all()), "invalid pixels must be zero in every channel"
    # Looking up shows rows of the anchor above each pixel's own; the top row leaves the view.
    rows = torch.arange(H, dtype=torch.float32)[:, None].expand(H, W)[None, None, None]
    up = _features(_camera(), _camera(pitch=math.atan(1.0 / FX)), anchor=rows)
    valid = up[1].bool()
    v = torch.arange(H, dtype=torch.float32)[:, None].expand(H, W)
    assert bool((up[0][valid] < v[valid] - 0.9).all())
    assert not bool(valid[0].any()) and bool(valid[-1, 1:-1].all())


def test_the_warp_uses_the_relative_rotation():
    # Both cameras turned by the same extra yaw see the same relative warp.
    base = _features(_camera(), _camera(yaw=0.1))
    turned = _features(_camera(yaw=0.7), _camera(yaw=0.8))
    torch.testing.assert_close(turned, base, atol=1e-4, rtol=0)
    # Looking the other way: nothing of the anchor is in view.
    behind = _features(_camera(), _camera(yaw=math.pi))
    assert bool((behind == 0).all())


def test_sample_grid_matches_projection_of_rotated_rays():
    g = torch.Generator().manual_seed(0)
    anchor_camera, camera = _camera(0.2, 0.1, -0.05), _camera(0.25, 0.05, 0.0)
    grid, valid = rotation_sample_grid(anchor_camera, camera, H, W)
    ra, rt = anchor_camera[:16].reshape(4, 4)[:3, :3].double(), camera[:16].reshape(4, 4)[:3, :3].double()
    for _ in range(5):
        v, u = int(torch.randint(H, (1,), generator=g)), int(torch.randint(W, (1,), generator=g))
        ray = torch.tensor([(u - (W - 1) / 2) / FX, (v - (H - 1) / 2) / FX, 1.0], dtype=torch.float64)
        d = ra.T @ rt @ ray
        ua, va = FX * d[0] / d[2] + (W - 1) / 2, FX * d[1] / d[2] + (H - 1) / 2
        inside = 0 <= ua <= W - 1 and 0 <= va <= H - 1
        assert bool(valid[v, u]) == inside
        if inside:
            torch.testing.assert_close(grid[v, u].double(), torch.stack([2 * ua / (W - 1) - 1, 2 * va / (H - 1) - 1]),
                                       atol=1e-5, rtol=0)


def test_no_cameras_means_no_warp_and_half_a_camera_is_refused():
    anchor = _columns()
    out = anchor_features(anchor, None, None)
    assert torch.equal(out[:, :3], anchor) and bool((out[:, 3] == 1).all())
    with pytest.raises(ValueError, match="both"):
        anchor_features(anchor, None, _camera()[None, None])
    with pytest.raises(ValueError, match=r"\[B, T, 20\]"):
        anchor_features(anchor, _camera()[None], _camera()[None, None])


def test_anchor_frame_index():
    assert anchor_frame_index((3, 2, 2)).tolist() == [0, 0, 0, 2, 2, 4, 4]
    assert anchor_frame_index((4,)).tolist() == [0, 0, 0, 0]


def _anchored(seed: int = 0) -> WorldModel:
    model = WorldModel(ModelConfig.preset("tiny", anchor_input=True))
    randomise(model, seed)
    return model.eval()


@pytest.mark.parametrize("with_camera", [True, False], ids=["camera", "no-camera"])
def test_streaming_equals_chunk_causal_with_the_anchor_input(with_camera):
    model = _anchored()
    x, t, text, mask, cam, plucker = inputs(model.config, 2, 7, 4, 6)
    cam = cam if with_camera else None
    sizes = (3, 2, 2)
    with torch.no_grad():
        whole = model.forward_chunk_causal(x, t, text, mask, cam, plucker, chunk_sizes=sizes, kv_window_chunks=1, sink=True)
        streamed, state = stream(model, x, t, text, mask, cam, plucker, sizes, kv_window_chunks=1, sink=True)
    torch.testing.assert_close(streamed, whole, rtol=1e-4, atol=1e-4)
    assert torch.equal(state.last_latent, x[:, :, -1:])
    assert (state.last_camera is None) == (not with_camera)
    if with_camera:
        assert torch.equal(state.last_camera, cam[:, -1])
    # The input matters: a different anchor (the frame before the second chunk) changes that chunk.
    x2 = x.clone()
    x2[:, :, 2] += 1.0
    with torch.no_grad():
        other = model.forward_chunk_causal(x2, t, text, mask, cam, plucker, chunk_sizes=sizes, kv_window_chunks=1, sink=True)
    assert (other[:, :, 3:5] - whole[:, :, 3:5]).abs().max() > 1e-3


def test_a_state_committed_without_cameras_cannot_anchor_a_chunk_with_them():
    model = _anchored()
    x, t, text, mask, cam, plucker = inputs(model.config, 1, 4, 4, 6)
    state = model.init_stream_state(1, (4, 6))
    with torch.no_grad():
        state = model.stream_commit(x[:, :, :2], text, mask, None, plucker[:, :, :2], state, timestep=t[:, :, :2])
        with pytest.raises(ValueError, match="without camera_conditions"):
            model.stream_forward(x[:, :, 2:], t[:, :, 2:], text, mask, cam[:, 2:], plucker[:, :, 2:], state)


def test_the_anchor_input_has_no_official_key():
    with pytest.raises(ValueError, match="anchor_input"):
        ModelConfig.preset("tiny", anchor_input=True, out_channels=16).to_official_dict()
    with pytest.raises(ValueError, match="bool"):
        ModelConfig.preset("tiny", anchor_input=1)
    # The official release never builds the embedder.
    assert WorldModel(ModelConfig.preset("tiny")).anchor_embedder is None


def _with_copy_gate(seed: int = 0, still: bool = False, ground_m: float = 0.0, depth: bool = False,
                    start_fade_m: float = 0.0, background_eye_m: float = 0.0, start_interpolation: str = "bilinear"
                    ) -> WorldModel:
    model = WorldModel(ModelConfig.preset("tiny", anchor_input=True, anchor_copy=True, anchor_copy_still=still,
                                          anchor_ground_m=ground_m, anchor_depth_copy=depth,
                                          anchor_start_fade_m=start_fade_m, anchor_background_eye_m=background_eye_m,
                                          anchor_start_interpolation=start_interpolation))
    randomise(model, seed)
    return model.eval()


@pytest.mark.parametrize("still, ground_m, depth, start_fade_m, background_eye_m, start_interpolation",
                         [(False, 0.0, False, 0.0, 0.0, "bilinear"), (True, 0.0, False, 0.0, 0.0, "bilinear"),
                          (True, 1.6, False, 0.0, 0.0, "bilinear"), (True, 0.0, True, 0.0, 0.0, "bilinear"),
                          (True, 0.0, True, 5.0, 0.0, "bilinear"), (True, 0.0, True, 5.0, 0.0, "bicubic"),
                          (True, 0.0, True, 5.0, 1.6, "bilinear")],
                         ids=["gate", "gate+still", "gate+still+ground", "gate+still+depth", "gate+still+depth+start",
                              "gate+still+depth+start-bicubic", "gate+still+depth+start+background"])
def test_streaming_equals_chunk_causal_with_the_copy_gate(still, ground_m, depth, start_fade_m, background_eye_m,
                                                          start_interpolation):
    model = _with_copy_gate(still=still, ground_m=ground_m, depth=depth, start_fade_m=start_fade_m,
                            background_eye_m=background_eye_m, start_interpolation=start_interpolation)
    if ground_m:
        model.copy_ground.data.fill_(0.8)
    if depth:
        model.copy_depth.data.fill_(0.7)
    if start_fade_m:
        # the start latent (frame 0) reaches the third chunk through the state's start, not its last latent
        model.copy_start.data.fill_(0.9)
    if background_eye_m:
        # the start's background reaches the later chunks through the state's start too
        model.copy_background.data.fill_(0.8)
    x, t, text, mask, cam, plucker = inputs(model.config, 2, 7, 4, 6)
    t[:, :, 0] = 0.0  # the image frame: the gate is off there
    sizes = (3, 2, 2)
    with torch.no_grad():
        whole = model.forward_chunk_causal(x, t, text, mask, cam, plucker, chunk_sizes=sizes, kv_window_chunks=1, sink=True)
        streamed, _ = stream(model, x, t, text, mask, cam, plucker, sizes, kv_window_chunks=1, sink=True)
    torch.testing.assert_close(streamed, whole, rtol=1e-4, atol=1e-4)


def test_a_full_copy_gate_lands_the_euler_step_on_the_warped_anchor():
    model = _with_copy_gate()
    with torch.no_grad():
        model.copy_gate.weight.zero_()
        model.copy_gate.bias.fill_(1.0)
    x, t, text, mask, cam, plucker = inputs(model.config, 1, 3, 4, 6)
    cam = torch.stack([_camera(), _camera(yaw=0.05), _camera(yaw=0.1)])[None]  # small turns: most of the view kept
    cam[..., 16:] = torch.tensor([5.0, 5.0, 2.5, 1.5])
    sigma = torch.tensor([0.0, 0.5, 0.3])
    t = (sigma * 1000)[None, None]
    state = model.init_stream_state(1, (4, 6))
    with torch.no_grad():
        v = model.stream_forward(x, t, text, mask, cam, plucker, state)
    features = anchor_features(x[:, :, :1].expand(-1, -1, 3, -1, -1), cam[:, :1].expand(-1, 3, -1), cam)
    warped, valid = features[:, :-1], features[:, -1:].bool()
    landed = x - sigma.view(1, 1, 3, 1, 1) * v  # one Euler step to σ = 0
    for f in (1, 2):
        inside = valid[:, :, f].expand_as(warped[:, :, f])
        assert inside.float().mean() > 0.5
        torch.testing.assert_close(landed[:, :, f][inside], warped[:, :, f][inside], atol=1e-4, rtol=1e-4)
    # Out of view and on the σ = 0 image frame the model's own velocity stands.
    model.copy_gate.bias.data.zero_()
    with torch.no_grad():
        own = model.stream_forward(x, t, text, mask, cam, plucker, state)
    assert torch.equal(v[:, :, 0], own[:, :, 0])
    outside = ~valid[:, :, 2].expand_as(v[:, :, 2])
    assert outside.any() and torch.equal(v[:, :, 2][outside], own[:, :, 2][outside])



def test_parallax_is_the_step_across_each_ray():
    still = ray_parallax(_camera(0.3, 0.1, 0.0, translation=(1.0, 2.0, 3.0)), _camera(0.6, 0.0, 0.0, translation=(1.0, 2.0, 3.0)), H, W)
    assert still.shape == (H, W) and bool((still == 0).all()), "turning on the spot moves nothing"
    # A step along the optical axis: nothing moves on the centre ray, |t|·sin(angle to the axis) elsewhere.
    forward = ray_parallax(_camera(), _camera(translation=(0.0, 0.0, 0.5)), H, W)
    v, u = torch.meshgrid(torch.arange(H) - (H - 1) / 2, torch.arange(W) - (W - 1) / 2, indexing="ij")
    off_axis = torch.sqrt(u.square() + v.square()) / FX  # tan of the angle to the axis
    torch.testing.assert_close(forward, 0.5 * off_axis / torch.sqrt(1 + off_axis.square()), atol=1e-5, rtol=0)
    # The step is taken in first-frame axes: a camera yawed by 90° stepping along the first frame's x
    # steps along its own optical axis, and a sideways step is across every ray (0.5 at the centre).
    yawed = ray_parallax(_camera(math.pi / 2), _camera(math.pi / 2, translation=(0.5, 0.0, 0.0)), H, W)
    torch.testing.assert_close(yawed, forward, atol=1e-5, rtol=0)
    side = ray_parallax(_camera(), _camera(translation=(0.5, 0.0, 0.0)), H, W)
    assert abs(float(side[(H - 1) // 2, (W - 1) // 2]) - 0.5) < 0.05 and bool((side > 0.3).all())


def test_the_still_term_copies_while_standing_and_fades_with_the_step():
    model = _with_copy_gate(still=True)
    with torch.no_grad():
        model.copy_gate.weight.zero_()
        model.copy_gate.bias.zero_()
        model.copy_still.fill_(1.0)
        model.copy_still_log_metres.fill_(math.log(0.01))
    x, t, text, mask, _, plucker = inputs(model.config, 1, 3, 4, 6)
    sigma = torch.tensor([0.0, 0.5, 0.5])
    t = (sigma * 1000)[None, None]

    def velocity(cam: torch.Tensor, still: float) -> torch.Tensor:
        model.copy_still.data.fill_(still)
        state = model.init_stream_state(1, (4, 6))
        with torch.no_grad():
            return model.stream_forward(x, t, text, mask, cam, plucker, state)

    standing = torch.stack([_camera(0.2)] * 3)[None]
    landed = x - sigma.view(1, 1, 3, 1, 1) * velocity(standing, 1.0)  # one Euler step to σ = 0
    for f in (1, 2):
        torch.testing.assert_close(landed[:, :, f], x[:, :, 0], atol=1e-4, rtol=1e-4)
    # A 0.5 m sideways step is 50 of s = 1 cm across every ray: the term is gone, the model's own velocity stands.
    walking = torch.stack([_camera(0.2), _camera(0.2, translation=(0.5, 0.0, 0.0)), _camera(0.2, translation=(1.0, 0.0, 0.0))])[None]
    torch.testing.assert_close(velocity(walking, 1.0), velocity(walking, 0.0), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="anchor_copy_still needs anchor_copy"):
        ModelConfig.preset("tiny", anchor_input=True, anchor_copy_still=True)


def test_the_ground_warp_lands_each_ray_where_it_meets_the_plane():
    # The first camera level at 1.6 m; the view stepped 0.7 m forward, 0.3 m right and 0.2 m up, turned and
    # pitched down a little. Each ray below the horizon meets the ground at a point the anchor camera (turned
    # the other way, 0.4 m to the left) sees at the grid's coordinates.
    anchor_camera = _camera(-0.1, 0.0, 0.0, translation=(-0.4, 0.0, 0.0))
    camera = _camera(0.15, -0.2, 0.0, translation=(0.3, -0.2, 0.7))
    grid, valid, on_ground = ground_sample_grid(anchor_camera, camera, H, W, ground_m=1.6)
    rot_grid, rot_valid = rotation_sample_grid(anchor_camera, camera, H, W)
    first_T_anchor, first_T_view = anchor_camera[:16].reshape(4, 4).double(), camera[:16].reshape(4, 4).double()
    for v in range(H):
        for u in range(W):
            ray = first_T_view[:3, :3] @ torch.tensor([(u - (W - 1) / 2) / FX, (v - (H - 1) / 2) / FX, 1.0], dtype=torch.float64)
            reach = (1.6 - first_T_view[1, 3]) / ray[1] if ray[1] > 0 else -1.0
            assert bool(on_ground[v, u]) == bool(0 < reach and reach * ray.norm() < GROUND_FAR_M)
            if not on_ground[v, u]:  # the sky: at infinity, the rotation alone
                assert bool(valid[v, u]) == bool(rot_valid[v, u])
                torch.testing.assert_close(grid[v, u], rot_grid[v, u], atol=1e-6, rtol=0)
                continue
            point = first_T_view[:3, 3] + reach * ray
            seen = first_T_anchor[:3, :3].T @ (point - first_T_anchor[:3, 3])
            ua, va = FX * seen[0] / seen[2] + (W - 1) / 2, FX * seen[1] / seen[2] + (H - 1) / 2
            assert bool(valid[v, u]) == bool(seen[2] > 0 and 0 <= ua <= W - 1 and 0 <= va <= H - 1)
            if valid[v, u]:
                torch.testing.assert_close(grid[v, u].double(), torch.stack([2 * ua / (W - 1) - 1, 2 * va / (H - 1) - 1]),
                                           atol=1e-5, rtol=0)
    assert on_ground.any() and (~on_ground).any() and valid[on_ground].any()
    # Standing still, the plane's warp is the identity too.
    still, still_valid, _ = ground_sample_grid(camera, camera, H, W, ground_m=1.6)
    identity, _ = rotation_sample_grid(camera, camera, H, W)
    torch.testing.assert_close(still[still_valid], identity[still_valid], atol=1e-5, rtol=0)


def full_copy_and_none(model: WorldModel, parameter: str, cam: torch.Tensor):
    """One streamed chunk of frames at σ = 0, 0.5, 0.5 on cameras `cam` [1, 3, 20] (latent intrinsics set here)
    with only the blend `parameter` open, at 1 (the gate and the still term closed), then with it closed too.
    Returns (the chunk's input x [1, C, 3, 4, 6], the cameras, where one Euler step lands, the velocity, the
    velocity with nothing open)."""
    with torch.no_grad():
        model.copy_gate.weight.zero_()
        model.copy_gate.bias.zero_()
        model.copy_still.zero_()
        getattr(model, parameter).fill_(1.0)
    x, _, text, mask, _, plucker = inputs(model.config, 1, 3, 4, 6)
    cam = cam.clone()
    cam[..., 16:] = torch.tensor([5.0, 5.0, 2.5, 1.5])
    sigma = torch.tensor([0.0, 0.5, 0.5])
    t = (sigma * 1000)[None, None]
    with torch.no_grad():
        v = model.stream_forward(x, t, text, mask, cam, plucker, model.init_stream_state(1, (4, 6)))
        getattr(model, parameter).zero_()
        own = model.stream_forward(x, t, text, mask, cam, plucker, model.init_stream_state(1, (4, 6)))
    return x, cam, x - sigma.view(1, 1, 3, 1, 1) * v, v, own


def test_a_full_ground_copy_lands_the_ground_on_the_plane_warped_anchor():
    model = _with_copy_gate(still=True, ground_m=1.6)
    cam = torch.stack([_camera(), _camera(translation=(0.0, 0.0, 0.3)), _camera(0.05, translation=(0.1, 0.0, 0.6))])[None]
    x, cam, landed, v, own = full_copy_and_none(model, "copy_ground", cam)
    target, on_ground = ground_copy_target(x[:, :, :1].expand(-1, -1, 3, -1, -1), cam[:, :1].expand(-1, 3, -1), cam, 1.6)
    for f in (1, 2):
        copied = (on_ground[:, f] & target[:, -1, f].bool())[:, None].expand_as(x[:, :, f])  # on the ground, in view
        assert copied.float().mean() > 0.3
        torch.testing.assert_close(landed[:, :, f][copied], target[:, :-1, f][copied], atol=1e-4, rtol=1e-4)
        # the sky and the rest keep the model's own velocity (the gate and the still term are closed)
        assert torch.equal(v[:, :, f][~copied], own[:, :, f][~copied])
    with pytest.raises(ValueError, match="anchor_ground_m needs anchor_copy"):
        ModelConfig.preset("tiny", anchor_input=True, anchor_ground_m=1.6)
    with pytest.raises(ValueError, match="anchor_ground_m must be"):
        ModelConfig.preset("tiny", anchor_input=True, anchor_copy=True, anchor_copy_still=True, anchor_ground_m=-1.0)
