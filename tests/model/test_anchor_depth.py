"""The depth copy (model/anchor_depth.py, `ModelConfig.anchor_depth_copy`): the depth warp lands each ray
where it meets the anchor's surface, the head predicts inverse depth from a latent and its rays, a full
c_depth lands the Euler step on the depth-warped anchor, streaming equals the chunk-causal forward, and
growing trained weights by it changes nothing until c_depth opens. (Streaming against the chunk-causal
forward: tests/model/test_anchor.py, with the other copies.)"""
from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

from model import ModelConfig, WorldModel
from model.anchor import depth_copy_target, depth_sample_grid, rotation_sample_grid, start_copy_target
from model.anchor_depth import AnchorDepthHead, inverse_depth_targets, ray_channels
from tests.model.helpers import inputs, randomise
from tests.model.test_anchor import FX, H, W, _camera, _with_copy_gate, full_copy_and_none
from tests.train.test_grow import assert_computes_the_same
from train.grow import add_anchor_depth_copy, add_anchor_start_copy


def _hand_warp(anchor_camera: torch.Tensor, camera: torch.Tensor, surface) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid and validity by hand: each view ray meets `surface(origin, ray) -> reach` (float64, first-frame
    axes), and the point is projected into the anchor camera."""
    first_T_anchor, first_T_view = anchor_camera[:16].reshape(4, 4).double(), camera[:16].reshape(4, 4).double()
    grid, valid = torch.zeros(H, W, 2, dtype=torch.float64), torch.zeros(H, W, dtype=torch.bool)
    for v in range(H):
        for u in range(W):
            ray = first_T_view[:3, :3] @ torch.tensor([(u - (W - 1) / 2) / FX, (v - (H - 1) / 2) / FX, 1.0], dtype=torch.float64)
            point = first_T_view[:3, 3] + surface(first_T_view[:3, 3], ray) * ray
            seen = first_T_anchor[:3, :3].T @ (point - first_T_anchor[:3, 3])
            ua, va = FX * seen[0] / seen[2] + (W - 1) / 2, FX * seen[1] / seen[2] + (H - 1) / 2
            valid[v, u] = bool(seen[2] > 0 and -1e-3 <= ua <= W - 1 + 1e-3 and -1e-3 <= va <= H - 1 + 1e-3)  # _project's slack
            grid[v, u] = torch.stack([2 * ua / (W - 1) - 1, 2 * va / (H - 1) - 1]).clamp(-1.0, 1.0)
    return grid, valid


def test_the_depth_warp_lands_each_ray_on_a_wall_at_the_anchors_depth():
    # A wall 4 m in front of the anchor camera (constant inverse depth 0.25); the view stepped 0.5 m forward and
    # 0.3 m right, turned a little. One fixed-point step is exact for a constant depth.
    anchor_camera = _camera(0.05, 0.0, 0.0, translation=(0.0, 0.0, 0.0))
    camera = _camera(-0.1, 0.05, 0.0, translation=(0.3, 0.0, 0.5))
    first_R_anchor = anchor_camera[:16].reshape(4, 4)[:3, :3].double()
    normal = first_R_anchor[:, 2]  # the anchor's optical axis: the wall is {x : normal·x = 4}

    def wall(origin, ray):
        return (4.0 - normal @ origin) / (normal @ ray)

    grid, valid = depth_sample_grid(anchor_camera, camera, torch.full((H, W), 0.25))
    hand_grid, hand_valid = _hand_warp(anchor_camera, camera, wall)
    assert torch.equal(valid, hand_valid) and valid.float().mean() > 0.5
    torch.testing.assert_close(grid[valid].double(), hand_grid[valid], atol=1e-5, rtol=0)
    # Stepping 0.5 m towards a wall 4 m away moves what the rotation warp would put there.
    rot_grid, _ = rotation_sample_grid(anchor_camera, camera, H, W)
    assert (grid[valid] - rot_grid[valid]).abs().max() > 0.05


def test_the_depth_warp_converges_on_a_slanted_floor():
    # The ground 1.6 m below a level anchor camera, as inverse z-depth per anchor pixel (0 above the horizon);
    # the view walked 0.7 m forward: the fixed point finds where each ray meets the floor.
    anchor_camera, camera = _camera(), _camera(0.1, 0.0, 0.0, translation=(0.1, 0.0, 0.7))
    rows = (torch.arange(H, dtype=torch.float32) - (H - 1) / 2) / FX  # the ray's downward slope per row
    inverse = (rows / 1.6).clamp_min(0.0)[:, None].expand(H, W)

    def floor(origin, ray):
        return (1.6 - origin[1]) / ray[1] if ray[1] > 0 else float("inf")

    grid, valid = depth_sample_grid(anchor_camera, camera, inverse, iterations=8)
    hand_grid, hand_valid = _hand_warp(anchor_camera, camera, lambda o, r: floor(o, r) if r[1] > 0 else 1e9)
    below = hand_valid & valid & (rows[:, None] > 0.15).expand(H, W)  # well below the horizon, where the floor is smooth
    assert below.sum() >= 6
    torch.testing.assert_close(grid[below].double(), hand_grid[below], atol=2e-3, rtol=0)


def test_no_depth_is_the_rotation_warp_and_standing_is_the_identity():
    anchor_camera, camera = _camera(0.2, 0.1, 0.0, translation=(0.5, 0.0, 1.0)), _camera(-0.1, 0.0, 0.0, translation=(0.0, 0.0, 2.0))
    grid, valid = depth_sample_grid(anchor_camera, camera, torch.zeros(H, W))
    rot_grid, rot_valid = rotation_sample_grid(anchor_camera, camera, H, W)
    assert torch.equal(valid, rot_valid)
    torch.testing.assert_close(grid, rot_grid, atol=1e-6, rtol=0)
    near = torch.rand(H, W, generator=torch.Generator().manual_seed(0)) * 2.0
    still, still_valid = depth_sample_grid(camera, camera, near)
    identity, _ = rotation_sample_grid(camera, camera, H, W)
    assert bool(still_valid.all())
    torch.testing.assert_close(still, identity, atol=1e-5, rtol=0)
    # A point the step has passed (1 m away, the camera 2 m further along its axis) is not copied.
    passed, passed_valid = depth_sample_grid(_camera(), _camera(translation=(0.0, 0.0, 2.0)), torch.ones(H, W))
    assert not passed_valid.any()


def test_inverse_depth_targets_average_each_cell_with_the_sky_at_zero():
    depth = torch.full((1, 4, 4), float("inf"))
    depth[0, :2, :2] = 2.0  # the whole top-left cell at 2 m
    depth[0, 2:, 2:] = torch.tensor([[1.0, 4.0], [float("inf"), 0.5]])
    targets = inverse_depth_targets(depth, 2)
    torch.testing.assert_close(targets, torch.tensor([[[0.5, 0.0], [0.0, (1.0 + 0.25 + 0.0 + 2.0) / 4]]]))


def test_the_depth_head_sees_the_latent_and_the_rays():
    head = AnchorDepthHead(8, width=16)
    randomise(head, 3)
    anchor = torch.randn(2, 8, 3, H, W)
    cameras = torch.stack([torch.stack([_camera(0.1 * i, 0.05 * j) for j in range(3)]) for i in range(2)])
    cameras[..., 16:] = torch.tensor([FX, FX, (W - 1) / 2, (H - 1) / 2])
    out = head(anchor, cameras)
    assert out.shape == (2, 3, H, W) and out.dtype == torch.float32 and bool((out >= 0).all())
    # Per frame: a frame's prediction depends on its own latent and camera only.
    torch.testing.assert_close(head(anchor[:, :, 1:2], cameras[:, 1:2])[:, 0], out[:, 1], atol=1e-5, rtol=0)
    pitched = cameras.clone()
    pitched[:, 1] = _camera(0.0, 0.4)
    assert not torch.allclose(head(anchor, pitched)[:, 1], out[:, 1]), "the rays are an input"
    # The rays: unit rays in first-frame axes, and the downward slope with camera z = 1 (0 on the centre row).
    rays = ray_channels(_camera()[None, None], H, W)[0, 0]
    torch.testing.assert_close(rays[:3].norm(dim=0), torch.ones(H, W), atol=1e-6, rtol=0)
    torch.testing.assert_close(rays[3], ((torch.arange(H) - (H - 1) / 2) / FX)[:, None].expand(H, W), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="anchor_camera"):
        head(anchor, cameras[:, :2])


def test_a_full_depth_copy_lands_the_euler_step_on_the_depth_warped_anchor():
    model = _with_copy_gate(1, still=True, depth=True)
    # frame 2 turned far enough that part of its view was never in the anchor's
    cam = torch.stack([_camera(), _camera(translation=(0.0, 0.0, 0.3)), _camera(0.4, translation=(0.1, 0.0, 0.6))])[None]
    x, cam, landed, v, own = full_copy_and_none(model, "copy_depth", cam)
    anchor, anchor_camera = x[:, :, :1].expand(-1, -1, 3, -1, -1), cam[:, :1].expand(-1, 3, -1)
    with torch.no_grad():
        target = depth_copy_target(anchor, anchor_camera, cam, model.anchor_depth(anchor, anchor_camera))
    for f in (1, 2):
        copied = target[:, -1:, f].bool().expand_as(x[:, :, f])
        assert copied.float().mean() > 0.3
        torch.testing.assert_close(landed[:, :, f][copied], target[:, :-1, f][copied], atol=1e-4, rtol=1e-4)
        assert torch.equal(v[:, :, f][~copied], own[:, :, f][~copied])
    assert not bool(target[:, -1, 2].bool().all()), "frame 2 sees beyond the anchor's view"
    assert torch.equal(v[:, :, 0], own[:, :, 0]), "the image frame (σ = 0) is never copied"
    with pytest.raises(ValueError, match="anchor_depth_copy needs anchor_copy"):
        ModelConfig.preset("tiny", anchor_input=True, anchor_depth_copy=True)


def test_growing_the_depth_copy_changes_nothing_until_c_depth_opens():
    model = WorldModel(ModelConfig.preset("tiny", anchor_input=True, anchor_copy=True, anchor_copy_still=True))
    randomise(model, 7)
    model.eval()
    grown = add_anchor_depth_copy(model).eval()
    assert grown.config.anchor_depth_copy and float(grown.copy_depth.detach()) == 0.0
    assert_computes_the_same(grown, model)
    # c_depth gets its gradient at once, and the head through the warp once c_depth is open.
    grown.train()
    x, t, text, mask, cam, plucker = inputs(model.config, 2, 5, 4, 6)
    grown(x, t, text, mask, cam, plucker).square().mean().backward()
    assert grown.copy_depth.grad.abs().max() > 0
    opened = add_anchor_depth_copy(model, 0.5)
    opened(x, t, text, mask, cam, plucker).square().mean().backward()
    assert float(opened.copy_depth.detach()) == 0.5 and opened.anchor_depth.out.weight.grad.abs().max() > 0
    with pytest.raises(ValueError, match="already has the depth copy"):
        add_anchor_depth_copy(grown)
    with pytest.raises(ValueError, match="grow the model with --anchor-copy first"):
        add_anchor_depth_copy(WorldModel(ModelConfig.preset("tiny", anchor_input=True)))
    with pytest.raises(ValueError, match=r"c_depth must be in \[0, 1\]"):
        add_anchor_depth_copy(model, 1.5)


def test_the_depth_set_has_one_target_per_latent_frame(tmp_path):
    """`train.depth_head` renders walks, encodes them and pools their true depth per latent cell; the head
    fitted on a few walks beats a constant on a held-out one."""
    from model.vae import TinyVAE, TinyVAEConfig
    from train.depth_head import load_depth_set, prepare_depth_set, train_depth_head

    vae = TinyVAE(TinyVAEConfig()).eval()
    paths = prepare_depth_set(vae, tmp_path, clips=3, n_frames=9, size=32)
    assert [p.name for p in paths] == sorted(p.name for p in tmp_path.glob("*.pt")) and len(paths) == 3
    latents, cameras, target = load_depth_set(paths)
    assert latents.shape == (9, 32, 4, 4) and cameras.shape == (9, 20) and target.shape == (9, 4, 4)
    assert bool((target >= 0).all()) and target.max() > 0.05, "the walks see the ground within 20 m"
    assert prepare_depth_set(vae, tmp_path, clips=3, n_frames=9, size=32) == paths, "cached walks are reused"
    torch.manual_seed(0)
    head = AnchorDepthHead(32, width=16)
    figures = train_depth_head(head, load_depth_set(paths[1:]), load_depth_set(paths[:1]), steps=150, minutes=0,
                               lr=3e-3, batch=6, seed=0, log=lambda _: None)
    assert figures["steps"] == 150
    assert figures["held_out_l1_after"] < min(figures["held_out_l1_before"], 1.5 * figures["held_out_l1_constant"])
    assert np.isfinite(figures["held_out_l1_after"])


def test_an_unsettled_depth_warp_is_not_valid():
    # A wall 1 m away on the left half and the sky on the right: a 0.6 m step sideways moves the wall's pixels by
    # several pixels, so where a ray crosses the wall's edge the fixed point jumps between the two sides and never
    # settles. Those pixels are dropped with converged_px; settled ones (the sky, the wall's middle) stay.
    anchor_camera, camera = _camera(), _camera(translation=(0.6, 0.0, 0.0))
    inverse = torch.zeros(H, W)
    inverse[:, : W // 2] = 1.0
    grid, valid = depth_sample_grid(anchor_camera, camera, inverse, iterations=8)
    settled_grid, settled = depth_sample_grid(anchor_camera, camera, inverse, iterations=8, converged_px=0.5)
    assert torch.equal(settled_grid, grid), "the check drops pixels, it does not move them"
    assert bool((settled <= valid).all()) and int(valid.sum()) > int(settled.sum()), "some pixels never settle"
    assert bool(settled[:, -1].all()), "the sky rotates only and settles at once"
    one_more, _ = depth_sample_grid(anchor_camera, camera, inverse, iterations=9)
    pixels = (one_more - grid) * torch.tensor([(W - 1) / 2, (H - 1) / 2])
    assert bool((pixels[settled].norm(dim=-1) < 0.5).all())


def test_the_start_copy_fades_with_the_distance_from_the_start():
    start = torch.randn(1, 8, 1, H, W)
    start_camera = _camera()[None, None]
    cams = torch.stack([_camera(), _camera(translation=(0.0, 0.0, 2.0)), _camera(translation=(0.0, 0.0, 8.0))])[None]
    sky = torch.zeros(1, 1, H, W)  # all infinitely far: every ray settles and rotates only, all in view
    target = start_copy_target(start, start_camera, cams, sky, fade_m=4.0)
    assert target.shape == (1, 9, 3, H, W)
    for f, metres in enumerate((0.0, 2.0, 8.0)):
        torch.testing.assert_close(target[0, -1, f], torch.full((H, W), math.exp(-metres / 4.0)), atol=1e-6, rtol=0)
        torch.testing.assert_close(target[0, :-1, f], start[0, :, 0], atol=1e-5, rtol=0)


def test_the_start_copy_lands_on_the_start_frame_long_after_the_stream_moved_on():
    # Three chunks of one image frame and two latents each; from the second chunk on the anchors are the
    # stream's own latents, but with only c_start open (at 1) a view that stands at the start lands on frame 0.
    model = _with_copy_gate(2, still=True, depth=True, start_fade_m=3.0)
    with torch.no_grad():
        model.copy_gate.weight.zero_()
        model.copy_gate.bias.zero_()
        model.copy_still.zero_()
        model.copy_depth.zero_()
        model.copy_start.fill_(1.0)
    x, t, text, mask, cam, plucker = inputs(model.config, 1, 5, 4, 6)
    cam = torch.stack([_camera(), _camera(translation=(0.0, 0.0, 0.4)), _camera(translation=(0.0, 0.0, 0.8)),
                       _camera(), _camera(0.2)])[None]
    cam[..., 16:] = torch.tensor([5.0, 5.0, 2.5, 1.5])
    t = torch.tensor([[[0.0, 0.0, 0.0, 500.0, 500.0]]])
    state = model.init_stream_state(1, (4, 6))
    with torch.no_grad():
        state = model.stream_commit(x[:, :, :3], text, mask, cam[:, :3], plucker[:, :, :3], state, timestep=t[:, :, :3])
        assert torch.equal(state.start_latent, x[:, :, :1]) and torch.equal(state.start_camera, cam[:, 0])
        assert torch.equal(state.last_latent, x[:, :, 2:3])
        v = model.stream_forward(x[:, :, 3:], t[:, :, 3:], text, mask, cam[:, 3:], plucker[:, :, 3:], state)
        later = model.stream_commit(x[:, :, 3:], text, mask, cam[:, 3:], plucker[:, :, 3:], state, timestep=t[:, :, 3:])
    landed = x[:, :, 3] - 0.5 * v[:, :, 0]
    torch.testing.assert_close(landed, x[:, :, 0], atol=1e-4, rtol=1e-4)  # standing at the start: frame 0 exactly
    turned = x[:, :, 4] - 0.5 * v[:, :, 1]
    assert (turned - x[:, :, 0]).abs().max() > 1e-2, "a turned view sees the start warped, not as it is"
    assert torch.equal(later.start_latent, state.start_latent), "the start is kept once set"
    with pytest.raises(ValueError, match="no start"):
        model.stream_forward(x[:, :, 3:], t[:, :, 3:], text, mask, cam[:, 3:], plucker[:, :, 3:],
                             dataclasses.replace(state, start_latent=None, start_camera=None))


def test_growing_the_start_copy_changes_nothing_until_c_start_opens():
    model = _with_copy_gate(4, still=True, depth=True)
    with torch.no_grad():
        model.copy_depth.fill_(0.5)
    grown = add_anchor_start_copy(model, 10.0).eval()
    assert grown.config.anchor_start_fade_m == 10.0 and float(grown.copy_start.detach()) == 0.0
    assert_computes_the_same(grown, model)
    x, t, text, mask, cam, plucker = inputs(model.config, 2, 5, 4, 6)
    opened = add_anchor_start_copy(model, 10.0, 1.0).eval()
    with torch.no_grad():
        assert not torch.allclose(opened(x, t, text, mask, cam, plucker), grown(x, t, text, mask, cam, plucker))
    with pytest.raises(ValueError, match="already has the start copy"):
        add_anchor_start_copy(grown, 10.0)
    with pytest.raises(ValueError, match="no depth copy"):
        add_anchor_start_copy(_with_copy_gate(4, still=True), 10.0)
    with pytest.raises(ValueError, match="fade"):
        add_anchor_start_copy(model, 0.0)
    with pytest.raises(ValueError, match=r"c_start must be in \[0, 1\]"):
        add_anchor_start_copy(model, 10.0, 2.0)
    with pytest.raises(ValueError, match="anchor_start_fade_m needs anchor_depth_copy"):
        ModelConfig.preset("tiny", anchor_input=True, anchor_copy=True, anchor_start_fade_m=5.0)
    with pytest.raises(ValueError, match="anchor_start_fade_m must be"):
        ModelConfig.preset("tiny", anchor_input=True, anchor_copy=True, anchor_depth_copy=True,
                           anchor_start_fade_m=float("inf"))


def test_the_velocity_before_the_copies_trains_the_network_while_the_rollout_copies():
    """`stream_forward(before_copy=True)` also returns the network's velocity before the copy blends (what the
    model gives with every copy closed), and `stream_window(loss_before_copy=True)` trains that one while the
    chunks it commits are still the blended sampler's: the same states as the plain window."""
    from train.recipes import stream_window

    model = _with_copy_gate(5, still=True, depth=True, start_fade_m=3.0)
    with torch.no_grad():
        model.copy_still.fill_(0.8)
        model.copy_depth.fill_(0.6)
        model.copy_start.fill_(1.0)
    x, t, text, mask, _, plucker = inputs(model.config, 1, 5, 4, 6)
    cam = torch.stack([_camera(), _camera(translation=(0.0, 0.0, 0.3)), _camera(0.1, translation=(0.1, 0.0, 0.6)),
                       _camera(0.2, translation=(0.1, 0.0, 0.9)), _camera(0.3, translation=(0.2, 0.0, 1.2))])[None]
    cam[..., 16:] = torch.tensor([5.0, 5.0, 2.5, 1.5])
    t = torch.tensor([[[0.0, 500.0, 500.0, 500.0, 500.0]]])
    state = model.init_stream_state(1, (4, 6), kv_window_chunks=2, sink=True)
    closed = copy.deepcopy(model)  # every blend shut
    with torch.no_grad():
        v = model.stream_forward(x[:, :, :3], t[:, :, :3], text, mask, cam[:, :3], plucker[:, :, :3], state)
        blended, raw = model.stream_forward(x[:, :, :3], t[:, :, :3], text, mask, cam[:, :3], plucker[:, :, :3], state,
                                            before_copy=True)
        for name in ("copy_gate.weight", "copy_gate.bias", "copy_still", "copy_depth", "copy_start"):
            closed.get_parameter(name).zero_()
        expected = closed.stream_forward(x[:, :, :3], t[:, :, :3], text, mask, cam[:, :3], plucker[:, :, :3], state)
    assert torch.equal(blended, v) and not torch.allclose(raw, v)
    torch.testing.assert_close(raw, expected, atol=1e-5, rtol=1e-5)

    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    common = dict(starts_clip=True, commit_last=True, warm_start=True)
    with torch.no_grad():
        plain = stream_window(model, x, t, cam, plucker, [3, 2], (0.5, 0.0), noise, state, **common)
        before = stream_window(model, x, t, cam, plucker, [3, 2], (0.5, 0.0), noise, state, loss_before_copy=True,
                               **common)
    torch.testing.assert_close(before.inputs, plain.inputs, atol=1e-6, rtol=0)  # the same warm starts
    text, mask = model.null_text(1)  # what the window streams with
    with torch.no_grad():
        _, first_raw = model.stream_forward(before.inputs[:, :, :3], t[:, :, :3], text, mask, cam[:, :3],
                                            plucker[:, :, :3], state, before_copy=True)
    torch.testing.assert_close(before.velocity[:, :, :3], first_raw, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain.velocity[:, :, :3],
                               model.stream_forward(before.inputs[:, :, :3], t[:, :, :3], text, mask, cam[:, :3],
                                                    plucker[:, :, :3], state).detach(), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(before.velocity, plain.velocity)
    torch.testing.assert_close(before.state.last_latent, plain.state.last_latent, atol=1e-6, rtol=0)
