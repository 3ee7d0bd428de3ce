"""Wrong shapes and dtypes raise ValueError naming the offending values."""
from __future__ import annotations

import pytest
import torch

from model import ModelConfig, WorldModel
from tests.model.helpers import inputs


@pytest.fixture(scope="module")
def model():
    return WorldModel(ModelConfig.preset("tiny")).eval()


def _good(model):
    return list(inputs(model.config, 2, 3, 2, 3))


@pytest.mark.parametrize(
    "index, bad, message",
    [
        pytest.param(0, torch.zeros(2, 16, 3, 2), r"hidden_states must be a float tensor \[B, C, T, H, W\], got \(2, 16, 3, 2\)", id="x-rank"),
        pytest.param(0, torch.zeros(2, 8, 3, 2, 3), r"hidden_states must be \[B, 16, T, H, W\].*got \(2, 8, 3, 2, 3\)", id="x-channels"),
        pytest.param(0, torch.zeros(2, 16, 3, 2, 3, dtype=torch.long), "of dtype torch.int64", id="x-dtype"),
        pytest.param(1, torch.zeros(2, 3), r"timestep must be \[B, 1, T\] = \(2, 1, 3\).*got \(2, 3\)", id="t-shape"),
        pytest.param(1, torch.zeros(2, 1, 3, dtype=torch.bool), "timestep must be a real number tensor, got dtype torch.bool", id="t-dtype"),
        pytest.param(2, torch.zeros(2, 5, 7), r"encoder_hidden_states must be a float tensor \[B=2, L, 32\], got \(2, 5, 7\)", id="text-channels"),
        pytest.param(2, torch.zeros(2, 5, 32, dtype=torch.int32), "of dtype torch.int32", id="text-dtype"),
        pytest.param(3, torch.ones(2, 4), r"encoder_attention_mask must be \[B, L\] = \(2, 5\) or None, got \(2, 4\)", id="mask-shape"),
        pytest.param(3, torch.zeros(2, 5), "a row with no valid text token", id="mask-empty"),
        pytest.param(4, torch.zeros(2, 3, 16), r"camera_conditions must be a float tensor \[B, T, 20\] = \(2, 3, 20\) or None, got \(2, 3, 16\)", id="cam-shape"),
        pytest.param(4, torch.full((2, 3, 20), float("nan")), "camera_conditions holds NaN or inf", id="cam-nan"),
        pytest.param(5, torch.zeros(2, 12, 3, 2, 3), r"chunk_plucker must be .* = \(2, 24, 3, 2, 3\) or None, got \(2, 12, 3, 2, 3\)", id="plucker"),
    ],
)
def test_forward_rejects(model, index, bad, message):
    args = _good(model)
    args[index] = bad
    with pytest.raises(ValueError, match=message):
        model(*args)


def test_chunk_causal_and_stream_arguments(model):
    args = _good(model)
    with pytest.raises(ValueError, match=r"chunk_sizes \[2, 2\] sum to 4, but hidden_states has T = 3 frames"):
        model.forward_chunk_causal(*args, chunk_sizes=[2, 2])
    with pytest.raises(ValueError, match="chunk_sizes must be a non-empty list of positive ints, got \\[3, 0\\]"):
        model.forward_chunk_causal(*args, chunk_sizes=[3, 0])
    with pytest.raises(ValueError, match="kv_window_chunks must be an int >= 0 or None, got -1"):
        model.forward_chunk_causal(*args, chunk_sizes=[3], kv_window_chunks=-1)
    with pytest.raises(ValueError, match=r"latent_hw must be two positive ints \(h, w\), got \(2,\)"):
        model.init_stream_state(2, (2,))
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        model.null_text(0)
