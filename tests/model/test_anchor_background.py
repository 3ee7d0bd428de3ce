"""The background copy (`ModelConfig.anchor_background_eye_m`, model.anchor "The background"): the target is
the start frame's sky and far ground at each ray's elevation, never a near thing of the start; the blend acts
only where no latent the stream holds is in view, and lands the Euler step there on the target; growing trained
weights by it changes nothing until c_background opens. (Streaming against the chunk-causal forward:
tests/model/test_anchor.py; batched rows: tests/streaming/test_batched.py.)"""
from __future__ import annotations

import math

import pytest
import torch

from model import ModelConfig
from model.anchor import background_copy_target, depth_copy_target, ray_elevation, start_copy_target
from tests.model.test_anchor import H, W, _camera, _with_copy_gate, full_copy_and_none
from tests.train.test_grow import assert_computes_the_same
from tests.model.helpers import inputs
from train.grow import add_anchor_background_copy, add_background_gate

EYE_M = 1.6


def _level_start(object_columns=(), object_value: float = 100.0):
    """A level start frame [1, 2, 1, H, W]: sky (+1, +2) above the horizon, ground (−1, −2) below it, and a
    near object (value `object_value`, 1 m away) filling `object_columns`; with its inverse depth [1, 1, H, W]
    (the sky 0, the ground exactly the plane's) and its camera [1, 1, 20]."""
    camera = _camera()[None, None]
    elevation = ray_elevation(camera, H, W)[0, 0]  # [H, W]
    sky = elevation > 0
    start = torch.where(sky, 1.0, -1.0)[None, None, None] * torch.tensor([1.0, 2.0]).view(1, 2, 1, 1, 1)
    inverse = torch.clamp(-torch.sin(elevation), min=0.0) / EYE_M
    for column in object_columns:
        start[..., column] = object_value
        inverse[:, column] = 1.0
    return start, inverse[None, None], camera


def test_the_background_is_the_starts_sky_and_far_ground_at_each_elevation():
    start, inverse, start_camera = _level_start(object_columns=(3, 4))
    # turned right round, walked 5 m, and looking up: none of these views sees anything of the start's
    views = torch.stack([_camera(math.pi / 2), _camera(math.pi, translation=(0.0, 0.0, 5.0)), _camera(0.7, pitch=0.6)])
    target = background_copy_target(start, start_camera, views[None], inverse, EYE_M)
    assert target.shape == (1, 3, 3, H, W)
    values = target[0, :-1]
    assert float(values.abs().max()) <= 2.0 + 1e-5, "the near object (100) leaks into the background"
    torch.testing.assert_close(target[0, -1], torch.ones(3, H, W))
    torch.testing.assert_close(values[1], 2.0 * values[0])  # each channel its own mean
    for f in (0, 1):  # level views: sky on top, ground below, as in the start whatever the heading
        column = values[0, f, :, W // 2]
        assert float(column[0]) > 0.95 and float(column[-1]) < -0.95
        assert bool((column[1:] <= column[:-1] + 1e-6).all()), column
    # pitched up past the start's top row: every token is sky, the nearest background the start has
    assert float(values[0, 2].min()) > 0.5


def test_a_start_without_background_gives_no_target():
    start, inverse, start_camera = _level_start(object_columns=range(W))  # a wall fills the start
    target = background_copy_target(start, start_camera, _camera(1.0)[None, None], inverse, EYE_M)
    assert torch.equal(target, torch.zeros_like(target)), "no background pixel: nothing to copy, and no NaN"


def test_a_full_background_copy_lands_only_what_no_latent_covers():
    model = _with_copy_gate(3, still=True, depth=True, start_fade_m=10.0, background_eye_m=EYE_M)
    with torch.no_grad():
        model.copy_depth.zero_()
        model.copy_start.zero_()
        # the head says "far" everywhere (softplus(−20) ≈ 0): all of the start is background, all warps rotations
        model.anchor_depth.out.weight.zero_()
        model.anchor_depth.out.bias.fill_(-20.0)
    # frame 1 steps forward (the anchor covers it), frame 2 turns far enough to see past it
    cam = torch.stack([_camera(), _camera(translation=(0.0, 0.0, 0.3)), _camera(0.9, translation=(0.1, 0.0, 0.6))])[None]
    x, cam, landed, v, own = full_copy_and_none(model, "copy_background", cam)
    anchor, anchor_camera = x[:, :, :1].expand(-1, -1, 3, -1, -1), cam[:, :1].expand(-1, 3, -1)
    with torch.no_grad():
        start_depth = model.anchor_depth(x[:, :, :1], cam[:, :1])
        covered = depth_copy_target(anchor, anchor_camera, cam, model.anchor_depth(anchor, anchor_camera))[:, -1]
        start = start_copy_target(x[:, :, :1], cam[:, :1], cam, start_depth, 10.0)[:, -1]
        target = background_copy_target(x[:, :, :1], cam[:, :1], cam, start_depth, EYE_M)
    uncovered = (1.0 - covered) * (1.0 - start)  # [1, T, h, w]
    new = uncovered[:, 2] == 1.0
    assert 0.2 < float(new.float().mean()) < 1.0, "frame 2 sees some of the start's view and some beyond it"
    for f in (1, 2):
        weight = uncovered[:, f][:, None]  # the blend by c_background = 1 times what no latent covers
        expected = own[:, :, f] + weight * ((x[:, :, f] - target[:, :-1, f]) / 0.5 - own[:, :, f])
        torch.testing.assert_close(v[:, :, f], expected, atol=1e-5, rtol=1e-5)
    full = new[:, None].expand_as(x[:, :, 2])
    torch.testing.assert_close(landed[:, :, 2][full], target[:, :-1, 2][full], atol=1e-4, rtol=1e-4)
    seen = (uncovered[:, 1] == 0.0)[:, None].expand_as(x[:, :, 1])
    assert bool(seen.any()) and torch.equal(v[:, :, 1][seen], own[:, :, 1][seen]), "what a latent covers is left alone"
    assert torch.equal(v[:, :, 0], own[:, :, 0]), "the image frame (σ = 0) is never copied"


def test_growing_the_background_copy_changes_nothing_until_c_background_opens():
    model = _with_copy_gate(4, still=True, depth=True, start_fade_m=10.0)
    with torch.no_grad():
        model.copy_depth.fill_(0.5)
        model.copy_start.fill_(1.0)
    grown = add_anchor_background_copy(model, EYE_M).eval()
    assert grown.config.anchor_background_eye_m == EYE_M and float(grown.copy_background.detach()) == 0.0
    assert_computes_the_same(grown, model)
    with pytest.raises(ValueError, match="already has the background copy"):
        add_anchor_background_copy(grown, EYE_M)
    with pytest.raises(ValueError, match="no start copy"):
        add_anchor_background_copy(_with_copy_gate(4, still=True, depth=True), EYE_M)
    with pytest.raises(ValueError, match="eye height"):
        add_anchor_background_copy(model, 0.0)
    with pytest.raises(ValueError, match=r"c_background must be in \[0, 1\]"):
        add_anchor_background_copy(model, EYE_M, 1.5)
    with pytest.raises(ValueError, match="anchor_background_eye_m needs anchor_start_fade_m"):
        ModelConfig.preset("tiny", anchor_input=True, anchor_copy=True, anchor_depth_copy=True, anchor_background_eye_m=1.6)
    with pytest.raises(ValueError, match="anchor_background_eye_m must be"):
        ModelConfig.preset("tiny", anchor_input=True, anchor_copy=True, anchor_depth_copy=True, anchor_start_fade_m=5.0,
                           anchor_background_eye_m=-1.0)


def test_the_background_gate_is_open_when_grown_and_scales_the_blend_per_token():
    """`add_background_gate`: zero, so the output is bit for bit the ungated model's; a gate set to 1 + g gives the
    output of c_background·clamp(1 + g, 0, 1): closed (g = −1) that of c_background 0, half (g = −0.5) that of 0.5."""
    model = _with_copy_gate(5, still=True, depth=True, start_fade_m=10.0, background_eye_m=EYE_M)
    with torch.no_grad():
        model.copy_depth.fill_(0.5)
        model.copy_start.fill_(1.0)
        model.copy_background.fill_(1.0)
    gated = add_background_gate(model).eval()
    assert gated.config.anchor_background_gate and float(gated.background_gate.weight.detach().abs().max()) == 0.0
    assert_computes_the_same(gated, model)

    def with_c(c: float):
        other = add_background_gate(model).eval()  # the same weights; only c_background differs
        other.copy_background.data.fill_(c)
        return other

    x, t, text, mask, cam, plucker = inputs(model.config, 2, 5, 4, 6)
    for bias, c in ((-1.0, 0.0), (-0.5, 0.5), (3.0, 1.0)):  # clamp(1 + g, 0, 1): closed, half, open past 1
        gated.background_gate.bias.data.fill_(bias)
        with torch.no_grad():
            torch.testing.assert_close(gated(x, t, text, mask, cam, plucker), with_c(c)(x, t, text, mask, cam, plucker),
                                       rtol=1e-5, atol=1e-5)
    # the gate reads each token's hidden state: a non-zero weight makes it differ from token to token
    gated.background_gate.bias.data.fill_(-0.5)
    gated.background_gate.weight.data.normal_(0.0, 0.3)
    with torch.no_grad():
        varied = gated(x, t, text, mask, cam, plucker)
        half = with_c(0.5)(x, t, text, mask, cam, plucker)
    assert float((varied - half).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="already has the background gate"):
        add_background_gate(gated)
    with pytest.raises(ValueError, match="no background copy"):
        add_background_gate(_with_copy_gate(5, still=True, depth=True, start_fade_m=10.0))
    with pytest.raises(ValueError, match="anchor_background_gate needs anchor_background_eye_m"):
        ModelConfig.preset("tiny", anchor_input=True, anchor_copy=True, anchor_depth_copy=True, anchor_start_fade_m=5.0,
                           anchor_background_gate=True)


def test_streaming_equals_chunk_causal_with_a_trained_like_background_gate():
    from tests.model.test_streaming import stream

    model = add_background_gate(_with_copy_gate(6, still=True, depth=True, start_fade_m=5.0, background_eye_m=EYE_M)).eval()
    with torch.no_grad():
        model.copy_depth.fill_(0.7)
        model.copy_start.fill_(0.9)
        model.copy_background.fill_(0.8)
        model.background_gate.weight.normal_(0.0, 0.3)
        model.background_gate.bias.fill_(-0.3)
    x, t, text, mask, cam, plucker = inputs(model.config, 2, 7, 4, 6)
    t[:, :, 0] = 0.0
    sizes = (3, 2, 2)
    with torch.no_grad():
        whole = model.forward_chunk_causal(x, t, text, mask, cam, plucker, chunk_sizes=sizes, kv_window_chunks=1, sink=True)
        streamed, _ = stream(model, x, t, text, mask, cam, plucker, sizes, kv_window_chunks=1, sink=True)
    torch.testing.assert_close(streamed, whole, rtol=1e-4, atol=1e-4)
