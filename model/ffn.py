"""`GLUMBConvTemp`, the feed-forward of every block: a gated inverted-bottleneck conv over each frame's
grid, then a residual temporal conv across frames.

    h = SiLU(W_inv x + b)               1×1 conv C → 2·hidden
    h = DWConv3×3(h)                    depthwise, with bias
    h = value · SiLU(gate)              split of h into two halves
    p = W_point h                       1×1 conv hidden → C, no bias
    y = p + TConv(p)                    full C → C conv with kernel (k_t, 1) over frames, zero-initialised

The 1×1 convs run as matmuls on channels-last tokens. Across chunks the temporal conv's left taps
see the previous frames (in a stream: the cached last (k_t−1)/2 frames of p from the commit pass),
its right taps are zero past the end of the current chunk.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.layers import RunLayout


class ConvLayer(nn.Module):
    """Holds a Conv2d under `.conv` (the checkpoint's `mlp.inverted_conv.conv.weight` names)."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, *, groups: int = 1, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, padding=kernel_size // 2, groups=groups, bias=bias)


class GLUMBConvTemp(nn.Module):
    def __init__(self, hidden_size: int, mlp_hidden: int, t_kernel_size: int) -> None:
        super().__init__()
        self.inverted_conv = ConvLayer(hidden_size, 2 * mlp_hidden, 1, bias=True)
        self.depth_conv = ConvLayer(2 * mlp_hidden, 2 * mlp_hidden, 3, groups=2 * mlp_hidden, bias=True)
        self.point_conv = ConvLayer(mlp_hidden, hidden_size, 1, bias=False)
        self.t_conv = nn.Conv2d(hidden_size, hidden_size, (t_kernel_size, 1), padding=(t_kernel_size // 2, 0), bias=False)
        nn.init.zeros_(self.t_conv.weight)
        self.context_frames = t_kernel_size // 2

    def spatial(self, x: torch.Tensor, layout: RunLayout) -> torch.Tensor:
        """x [B, N, C] -> p [B, T, S, C], the per-frame part (everything before the temporal conv)."""
        batch, _, channels = x.shape
        w_inv = self.inverted_conv.conv.weight.flatten(1)  # [2h, C]
        h = F.silu(F.linear(x, w_inv, self.inverted_conv.conv.bias))  # [B, N, 2h]
        # channels-last view for the depthwise conv: [B·T, 2h, H, W] with NHWC strides
        h = h.reshape(batch * layout.frames, layout.height, layout.width, -1).permute(0, 3, 1, 2)
        h = self.depth_conv.conv(h)
        value, gate = h.chunk(2, dim=1)
        h = (value * F.silu(gate)).permute(0, 2, 3, 1)  # [B·T, H, W, h]
        p = F.linear(h, self.point_conv.conv.weight.flatten(1))  # [B·T, H, W, C]
        return p.reshape(batch, layout.frames, layout.spatial, channels)

    def temporal(self, p: torch.Tensor, layout: RunLayout, context: torch.Tensor | None) -> torch.Tensor:
        """p [B, T, S, C] -> p + TConv(p) [B, T, S, C]; context [B, (k_t−1)/2, S, C] precedes p (None = zeros)."""
        half = self.context_frames
        frames = p.shape[1]
        if half == 0:
            return p + F.linear(p, self.t_conv.weight[:, :, 0, 0])
        if context is None:
            context = p.new_zeros(p.shape[0], half, *p.shape[2:])
        padded = torch.cat((context, p, p.new_zeros(p.shape[0], half, *p.shape[2:])), dim=1)  # [B, T+2·half, S, C]
        if len(layout.chunk_sizes) == 1:
            # one chunk: the zero right padding is the chunk end, so this is the plain (k_t, 1) conv
            conv = F.conv2d(padded.permute(0, 3, 1, 2), self.t_conv.weight)  # [B, C, T, S]
            return p + conv.permute(0, 2, 3, 1)
        remaining = layout.frames_to_chunk_end(p.device)  # [T]
        out = p
        for tap in range(2 * half + 1):
            offset = tap - half  # input frame t + offset
            term = F.linear(padded[:, tap:tap + frames], self.t_conv.weight[:, :, tap, 0])
            if offset > 0:
                term = term * (remaining >= offset).to(p.dtype)[None, :, None, None]
            out = out + term
        return out

    def next_context(self, context: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """The last (k_t−1)/2 frames of p after appending p [B, T, S, C] to context."""
        if self.context_frames == 0:
            return context
        return torch.cat((context, p), dim=1)[:, -self.context_frames:]
