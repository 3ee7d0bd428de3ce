"""How the start copy samples the start latent (`ModelConfig.anchor_start_interpolation`, model.anchor "The start"):
bicubic changes nothing where the camera stands (every sample on a latent pixel) and keeps the start's fine
structure where a step lands the samples between latent pixels, where bilinear averages it away. (Streaming
against the chunk-causal forward: tests/model/test_anchor.py; growth: tests/train/test_grow.py.)"""
from __future__ import annotations

import math

import pytest
import torch

from model import ModelConfig, WorldModel
from model.anchor import start_copy_target
from tests.model.test_anchor import FX, H, W, _camera

FAR_FADE_M = 1e6  # no fade: the test is about the samples


def _texture(shift_px: float = 0.0) -> torch.Tensor:
    """A start latent [1, 2, 1, H, W] of stripes across columns at a quarter cycle per latent pixel (fine structure,
    half way to the grid's limit), sampled `shift_px` to the right; channel 1 the same at another phase."""
    u = torch.arange(W, dtype=torch.float32) + shift_px
    rows = torch.stack([torch.sin(2 * math.pi * u / 4), torch.cos(2 * math.pi * u / 4 + 0.3)])  # [2, W]
    return rows[:, None, :].expand(2, H, W)[None, :, None].clone()


def _sampled(interpolation: str, camera: torch.Tensor, inverse_depth_m: float) -> torch.Tensor:
    inverse = torch.full((1, 1, H, W), inverse_depth_m)
    return start_copy_target(_texture(), _camera()[None, None], camera[None, None], inverse, FAR_FADE_M, interpolation)


def test_standing_still_both_interpolations_give_the_start_itself():
    for interpolation in ("bilinear", "bicubic"):
        target = _sampled(interpolation, _camera(), 0.25)
        torch.testing.assert_close(target[:, -1], torch.ones(1, 1, H, W))
        torch.testing.assert_close(target[:, :-1], _texture(), rtol=0, atol=1e-5)


def test_a_half_pixel_step_keeps_the_stripes_with_bicubic_and_blurs_them_with_bilinear():
    # everything 4 m away, the camera 0.25 m to the right: each view pixel sees the start fx·0.25/4 = 0.5 px on
    step_m, inverse_depth = 0.25, 0.25
    assert FX * step_m * inverse_depth == 0.5
    camera = _camera(translation=(step_m, 0.0, 0.0))
    truth = _texture(shift_px=0.5)
    inner = slice(1, W - 2)  # every tap of the cubic kernel inside the start
    error, amplitude = {}, {}
    for interpolation in ("bilinear", "bicubic"):
        target = _sampled(interpolation, camera, inverse_depth)
        assert bool((target[0, -1, 0, :, inner] > 0.999).all()), "the step keeps these columns in view"
        values, true = target[0, :-1, 0, :, inner], truth[0, :, 0, :, inner]
        error[interpolation] = float((values - true).abs().max())
        amplitude[interpolation] = float((values * true).sum() / (true * true).sum())  # the stripes' height kept
    # bilinear lands half way between two pixels on their mean: the stripes shrink to cos(π/4) ≈ 0.71 of their
    # height; the cubic kernel keeps them near whole (0.97 at this frequency)
    assert amplitude["bilinear"] < 0.75 < 0.95 < amplitude["bicubic"] <= 1.0 + 1e-5, amplitude
    assert error["bicubic"] < 0.1 < 0.25 < error["bilinear"], error


def test_the_interpolation_is_checked_and_needs_the_start_copy():
    depth = dict(anchor_input=True, anchor_copy=True, anchor_depth_copy=True)
    assert ModelConfig.preset("tiny", **depth, anchor_start_fade_m=10.0).anchor_start_interpolation == "bilinear"
    with pytest.raises(ValueError, match="anchor_start_interpolation must be one of .*'nearest'"):
        ModelConfig.preset("tiny", **depth, anchor_start_fade_m=10.0, anchor_start_interpolation="nearest")
    with pytest.raises(ValueError, match="anchor_start_interpolation needs anchor_start_fade_m"):
        ModelConfig.preset("tiny", **depth, anchor_start_interpolation="bicubic")


def test_the_model_samples_the_start_as_configured():
    """Two models with the same weights and the start copy full on, one bilinear and one bicubic: the same velocity on
    the image frame and whenever the camera has not moved, another once it has stepped sideways."""
    from tests.model.helpers import inputs, randomise

    config = ModelConfig.preset("tiny", anchor_input=True, anchor_copy=True, anchor_depth_copy=True,
                                anchor_start_fade_m=FAR_FADE_M)
    bilinear = WorldModel(config)
    randomise(bilinear, 3)
    bilinear.copy_start.data.fill_(1.0)
    bicubic = WorldModel(config.replace(anchor_start_interpolation="bicubic"))
    bicubic.load_state_dict(bilinear.state_dict())
    x, t, text, mask, cam, plucker = inputs(config, 1, 3, 4, 6)
    still = cam.clone()
    still[:, :, :16] = cam[:, :1, :16]  # every frame at the first frame's pose
    with torch.no_grad():
        standing = [m.eval()(x, t, text, mask, still, plucker) for m in (bilinear, bicubic)]
        walking = [m(x, t, text, mask, cam, plucker) for m in (bilinear, bicubic)]
    # standing, the fixed-point warp lands within float rounding of the latent pixels
    torch.testing.assert_close(standing[1], standing[0], rtol=0, atol=2e-4)
    assert float((walking[1] - walking[0]).abs().max()) > 1e-2
