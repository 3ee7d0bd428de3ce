"""The GDN short convolution against a per-frame loop of its formula (model/layers.py docstring)."""
from __future__ import annotations

import pytest
import torch

from model.layers import RunLayout, ShortConv


def naive_short_conv(x, taps, chunk_sizes, context, within_chunk):
    """y[t] = Σ_j w_j x[t−K+1+j] + Σ_{d≥1} w_{K−1−d} x[t+d], one frame at a time.

    The forward half reads earlier frames of the sequence (then the context, then zeros), or only frames of
    t's chunk when `within_chunk`; the backward half reads only frames of t's chunk."""
    batch, frames, spatial, channels = x.shape
    kernel = taps.shape[1]
    out = []
    start = 0
    for size in chunk_sizes:
        for t in range(start, start + size):
            y = torch.zeros(batch, spatial, channels, dtype=x.dtype)
            for j in range(kernel):
                i = t - kernel + 1 + j
                if within_chunk and i < start:
                    continue
                if i >= 0:
                    y = y + taps[:, j] * x[:, i]
                elif context is not None:
                    y = y + taps[:, j] * context[:, kernel - 1 + i]
            for d in range(1, kernel):
                if t + d < start + size:
                    y = y + taps[:, kernel - 1 - d] * x[:, t + d]
            out.append(y)
        start += size
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("chunk_sizes", [(1,), (5,), (9,), (1, 2, 2), (4, 3, 3), (3, 1, 4, 2)])
@pytest.mark.parametrize("kernel", [2, 4])
@pytest.mark.parametrize("with_context", [False, True])
@pytest.mark.parametrize("within_chunk", [False, True])
def test_short_conv_equals_the_per_frame_formula_with_gradients(chunk_sizes, kernel, with_context, within_chunk):
    g = torch.Generator().manual_seed(sum(chunk_sizes) * 10 + kernel)
    frames, channels = sum(chunk_sizes), 6
    conv = ShortConv(channels, kernel)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
    x = torch.randn(2, frames, 5, channels, generator=g, requires_grad=True)
    context = torch.randn(2, kernel - 1, 5, channels, generator=g) if with_context else None
    layout = RunLayout(frames, 1, 5, chunk_sizes, "chunk_causal" if len(chunk_sizes) > 1 else "bidirectional")
    got = conv(x, layout, context, within_chunk=within_chunk)
    want = naive_short_conv(x, conv.weight[:, 0, :], chunk_sizes, context, within_chunk)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    upstream = torch.randn(got.shape, generator=g)
    grads = torch.autograd.grad((got * upstream).sum(), (x, conv.weight))
    want_grads = torch.autograd.grad((want * upstream).sum(), (x, conv.weight))
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_a_kernel_of_one_is_a_per_channel_scale():
    conv = ShortConv(3, 1)
    x = torch.randn(1, 4, 2, 3)
    layout = RunLayout(4, 1, 2, (2, 2), "chunk_causal")
    torch.testing.assert_close(conv(x, layout, None), x)


def test_a_band_first_built_under_inference_mode_still_serves_training():
    conv = ShortConv(4, 3)
    layout = RunLayout(7, 1, 2, (3, 2, 2), "chunk_causal")  # a layout no other test builds first
    with torch.inference_mode():
        conv(torch.randn(1, 7, 2, 4), layout, None)
    x = torch.randn(1, 7, 2, 4, requires_grad=True)
    conv(x, layout, None).sum().backward()
    assert x.grad is not None and conv.weight.grad is not None
