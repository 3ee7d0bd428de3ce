"""Block-wise chunk-causal attention equals SDPA under the dense chunk-causal mask (outputs and gradients)."""
import pytest
import torch
import torch.nn.functional as F

from model.layers import RunLayout
from model.softmax_mixer import chunk_causal_attention, chunk_causal_mask, chunk_key_ranges


@pytest.mark.parametrize("sizes, window, sink", [
    ((4, 3, 3, 3, 3), 2, True),     # the official streaming layout with the live window
    ((3, 2, 2, 2, 2, 2), 2, True),  # the embedded model's training layout
    ((1, 2, 3, 1), 1, False),       # uneven chunks, no sink
    ((2, 2, 2), None, False),       # plain chunk-causal, no window
    ((2, 1), 5, True),              # a window longer than the clip
    ((3,), 2, True),                # one chunk: every token sees every token
])
def test_blockwise_equals_masked_sdpa(sizes, window, sink):
    height, width = 2, 3
    layout = RunLayout(sum(sizes), height, width, sizes, "chunk_causal", window, sink)
    tokens = layout.tokens
    g = torch.Generator().manual_seed(len(sizes))
    q, k, v = (torch.randn(2, 3, tokens, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    grad_out = torch.randn(2, 3, tokens, 8, generator=g, dtype=torch.float64)

    mask = chunk_causal_mask(layout, torch.device("cpu"))
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad_out)
    got = chunk_causal_attention(q, k, v, layout, 0.3)
    got_grads = torch.autograd.grad(got, (q, k, v), grad_out)

    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    for a, b in zip(got_grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_key_ranges_follow_the_window_and_the_sink():
    layout = RunLayout(9, 1, 2, (3, 2, 2, 2), "chunk_causal", 1, True)  # 2 tokens per frame
    assert chunk_key_ranges(layout) == [
        ((0, 6), [(0, 6)]),
        ((6, 10), [(0, 10)]),
        ((10, 14), [(0, 14)]),           # window = chunks 1, 2; the sink chunk 0 is adjacent: one range
        ((14, 18), [(0, 6), (10, 18)]),  # the sink chunk 0, then chunks 2, 3
    ]
    no_sink = RunLayout(9, 1, 2, (3, 2, 2, 2), "chunk_causal", 1, False)
    assert [keys for _, keys in chunk_key_ranges(no_sink)] == [[(0, 6)], [(0, 10)], [(6, 14)], [(10, 18)]]
