"""Our bidirectional forward equals diffusers' SanaWMTransformer3DModel with the same random weights."""
from __future__ import annotations

import pytest
import torch

from model.bench import fp32_reference_sdpa
from tests.model.helpers import SMALL_OFFICIAL, inputs, reference_and_ours


def _max_rel(reference: torch.Tensor, ours: torch.Tensor) -> float:
    return float((reference - ours).abs().max() / reference.abs().max())


@pytest.mark.parametrize(
    "official, batch, frames, height, width",
    [
        pytest.param(SMALL_OFFICIAL, 2, 5, 3, 4, id="gdn+softmax-T5-3x4-B2"),
        pytest.param({**SMALL_OFFICIAL, "num_layers": 4, "softmax_every_n": 3}, 2, 3, 4, 2, id="4blocks-T3-4x2-B2"),
        pytest.param({**SMALL_OFFICIAL, "hidden_size": 64, "linear_head_dim": 32, "num_attention_heads": 4},
                     1, 7, 2, 3, id="head32-T7-2x3-B1"),
    ],
)
def test_bidirectional_matches_diffusers(official, batch, frames, height, width):
    reference, ours = reference_and_ours(official, ucpe_rms_clip=True)
    assert any(b.is_softmax for b in ours.blocks) and not all(b.is_softmax for b in ours.blocks)
    x, t, text, mask, cam, plucker = inputs(ours.config, batch, frames, height, width)
    with torch.no_grad(), fp32_reference_sdpa():
        expected = reference(x, t, text, encoder_attention_mask=mask, camera_conditions=cam, chunk_plucker=plucker).sample
        got = ours(x, t, text, mask, cam, plucker)
    assert got.shape == expected.shape == (batch, ours.config.out_channels, frames, height, width)
    assert torch.isfinite(got).all()
    assert _max_rel(expected, got) <= 1e-4


def test_without_camera_and_plucker_matches_diffusers():
    reference, ours = reference_and_ours(SMALL_OFFICIAL, ucpe_rms_clip=True)
    x, t, text, mask, _, _ = inputs(ours.config, 2, 4, 3, 3)
    with torch.no_grad(), fp32_reference_sdpa():
        expected = reference(x, t, text, encoder_attention_mask=mask).sample
        got = ours(x, t, text, mask)
    assert _max_rel(expected, got) <= 1e-4


def test_ucpe_rms_clip_changes_the_output():
    _, clipped = reference_and_ours(SMALL_OFFICIAL, ucpe_rms_clip=True)
    _, released = reference_and_ours(SMALL_OFFICIAL, ucpe_rms_clip=False)
    assert torch.equal(clipped.blocks[0].attn.qkv.weight, released.blocks[0].attn.qkv.weight)
    x, t, text, mask, cam, plucker = inputs(clipped.config, 2, 5, 3, 4)
    with torch.no_grad():
        a = clipped(x, t, text, mask, cam, plucker)
        b = released(x, t, text, mask, cam, plucker)
    assert torch.isfinite(b).all()
    assert _max_rel(a, b) > 1e-3
