"""Small layers shared by the blocks: RMSNorm, the GDN short convolution over time, and `RunLayout`.

`RunLayout` describes one call of the model: the token grid, the chunk layout along time, and the
mode. The three modes differ only in what a layer may see:

    bidirectional  one chunk = the whole clip, no state
    chunk_causal   full inside a chunk, causal across chunks (optionally a KV window for softmax)
    stream         one chunk, the past comes from a `StreamState`

The short convolution (kernel K, taps w_0..w_{K−1}, FLA's causal `ShortConvolution` run both ways):

    y[t] = Σ_j w_j x[t−K+1+j]  +  Σ_j w_j x[t+K−1−j]  −  w_{K−1} x[t]

The forward (causal) half runs over the whole sequence (in a stream, over the cached last K−1
pre-conv frames followed by the chunk); the backward half only sees frames of the same chunk.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn as nn


class RMSNorm(nn.Module):
    """RMS norm over the last dim with a learned weight, computed in fp32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = torch.nn.functional.rms_norm(x.float(), x.shape[-1:], eps=self.eps)
        return (normed.to(self.weight.dtype) * self.weight).to(x.dtype)


@dataclass(frozen=True)
class RunLayout:
    """Token grid and time layout of one model call.

    `chunk_sizes` splits the `frames` latent frames of this call into chunks (one chunk when
    bidirectional or streaming). `kv_window_chunks` / `sink` restrict softmax attention across
    chunks in chunk_causal mode the way a streaming KV cache does. `main_scale_padded` selects the
    softmax main-branch scale of this code path (see `model.softmax_mixer`).
    """

    frames: int
    height: int
    width: int
    chunk_sizes: tuple[int, ...]
    mode: str  # "bidirectional" | "chunk_causal" | "stream"
    kv_window_chunks: int | None = None
    sink: bool = False

    @property
    def spatial(self) -> int:
        return self.height * self.width

    @property
    def tokens(self) -> int:
        return self.frames * self.height * self.width

    @property
    def main_scale_padded(self) -> bool:
        return self.mode != "bidirectional"

    def chunk_of_frame(self, device: torch.device) -> torch.Tensor:
        """[T] chunk index of each frame."""
        return _chunk_of_frame(self.chunk_sizes, torch.device(device))

    def frames_to_chunk_end(self, device: torch.device) -> torch.Tensor:
        """[T] number of frames after each frame inside its own chunk."""
        return _frames_to_chunk_end(self.chunk_sizes, torch.device(device))


@functools.lru_cache(maxsize=64)
def _chunk_of_frame(chunk_sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
    sizes = torch.tensor(chunk_sizes, device=device)
    return torch.repeat_interleave(torch.arange(len(chunk_sizes), device=device), sizes)


@functools.lru_cache(maxsize=64)
def _frames_to_chunk_end(chunk_sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
    ends = torch.cumsum(torch.tensor(chunk_sizes, device=device), 0)
    return ends[_chunk_of_frame(chunk_sizes, device)] - 1 - torch.arange(sum(chunk_sizes), device=device)


class ShortConv(nn.Module):
    """Depthwise temporal conv on K; parameter `weight` [C, 1, K] as in the official checkpoint."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        weight = torch.zeros(channels, 1, kernel_size)
        weight[:, 0, -1] = 1.0  # identity at init, so step 0 equals the model without the conv
        self.weight = nn.Parameter(weight)

    def forward(
        self, x: torch.Tensor, layout: RunLayout, context: torch.Tensor | None, *, within_chunk: bool = False
    ) -> torch.Tensor:
        """x [B, T, S, C]; context [B, K−1, S, C] pre-conv frames before x (None = zeros). Returns [B, T, S, C].

        within_chunk: the forward half too stays inside each chunk (no left context across chunks).
        """
        taps = self.weight[:, 0, :].to(x.dtype)  # [C, K]
        kernel = taps.shape[1]
        batch, frames, spatial, channels = x.shape
        if kernel == 1:
            return x * taps[:, 0]
        if within_chunk or context is None:
            context = x.new_zeros(batch, kernel - 1, spatial, channels)
        padded = torch.cat((context, x), dim=1)  # [B, K−1+T, S, C]
        # Both halves and every chunk boundary as one banded [T, K−1+T] matrix per channel, applied by one
        # batched matmul: a single pass over x instead of 2K−1 shifted multiply-adds (and their masks).
        band = _short_conv_band(layout.chunk_sizes, kernel, within_chunk, x.device)  # [T, K−1+T], K = no tap
        weights = torch.cat((taps, taps.new_zeros(channels, 1)), dim=1)[:, band]  # [C, T, K−1+T]
        return torch.einsum("ctu,busc->btsc", weights, padded)  # [B, T, S, C]

    @staticmethod
    def next_context(context: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The last K−1 pre-conv frames after appending x [B, T, S, C] to context [B, K−1, S, C]."""
        keep = context.shape[1]
        if keep == 0:
            return context
        return torch.cat((context, x), dim=1)[:, -keep:]


def sdpa_padded_width(head_dim: int) -> int:
    """Head width the official code pads to before SDPA (FlashAttention sizes), without passing a scale.

    Widths 32, 64, 128, 256 and anything >= 256 are used as is; others pad to 128 (<= 128) or 256.
    The effective softmax scale of a padded path is therefore 1/sqrt(sdpa_padded_width(D)).
    """
    if head_dim in (32, 64, 128, 256) or head_dim >= 256:
        return head_dim
    return 128 if head_dim <= 128 else 256


def add_attention_parameters(module: nn.Module, hidden: int, heads: int, norm_eps: float) -> None:
    """Register the parameters both self-attention mixers carry, under the official checkpoint names.

    The softmax blocks of the release carry the GDN gate parameters (`beta_proj`, `gate_proj`,
    `A_log`, `dt_bias`, `recall_gate`) too; they are unused there but part of the checkpoint.
    Initial values follow the official `_init_gdn_gates_for_linear_equiv`: β ≈ 0.993, γ ≈ 0.9933,
    output gate SiLU(1.27846) ≈ 1, camera output projection zero (step 0 = the model without camera).
    """
    module.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
    module.proj = nn.Linear(hidden, hidden)
    module.q_norm = RMSNorm(hidden, norm_eps)
    module.k_norm = RMSNorm(hidden, norm_eps)
    module.beta_proj = nn.Linear(hidden, heads)
    module.gate_proj = nn.Linear(hidden, heads)
    module.A_log = nn.Parameter(torch.zeros(heads))
    module.dt_bias = nn.Parameter(torch.full((heads,), -5.0))
    module.register_buffer("recall_gate", torch.zeros(1))
    module.output_gate = nn.Linear(hidden, hidden)
    module.q_proj_cam = nn.Linear(hidden, hidden)
    module.k_proj_cam = nn.Linear(hidden, hidden)
    module.v_proj_cam = nn.Linear(hidden, hidden)
    module.out_proj_cam = nn.Linear(hidden, hidden)
    module.q_norm_cam = RMSNorm(hidden, norm_eps)
    module.k_norm_cam = RMSNorm(hidden, norm_eps)
    with torch.no_grad():
        module.beta_proj.bias.fill_(5.0)
        module.gate_proj.weight.zero_()
        module.gate_proj.bias.zero_()
        module.output_gate.weight.zero_()
        module.output_gate.bias.fill_(1.27846)
        module.out_proj_cam.weight.zero_()
        module.out_proj_cam.bias.zero_()


def camera_qkv(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The camera branch's q, k, v [B, N, C] from its three projections, run as one matmul."""
    weight = torch.cat((module.q_proj_cam.weight, module.k_proj_cam.weight, module.v_proj_cam.weight))
    bias = torch.cat((module.q_proj_cam.bias, module.k_proj_cam.bias, module.v_proj_cam.bias))
    return torch.nn.functional.linear(x, weight, bias).chunk(3, dim=-1)


def gate_and_project(module: nn.Module, raw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The shared output gate (fp32, on the mixer input x) and projection: proj(raw ⊙ SiLU(W_og x + b_og))."""
    gate = torch.nn.functional.silu(module.output_gate(x).float())
    return module.proj((raw.float() * gate).to(x.dtype))


def to_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, C] -> [B, N, H, D]."""
    return x.unflatten(-1, (heads, -1))


def heads_to_frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    """[B, N, H, D] -> [B, H, T, S, D] (the gated-delta-rule layout)."""
    return x.unflatten(1, (frames, -1)).permute(0, 3, 1, 2, 4)


def frames_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, H, T, S, D] -> [B, N, H·D]."""
    return x.permute(0, 2, 3, 1, 4).flatten(1, 2).flatten(2)


@functools.lru_cache(maxsize=64)
def _short_conv_band(chunk_sizes: tuple[int, ...], kernel: int, within_chunk: bool, device: torch.device) -> torch.Tensor:
    """[T, K−1+T] tap index of the short conv: output frame t reads padded frame u (= x[u − K + 1]) with tap
    band[t, u]; K marks "no tap". Forward half: u = t + j with tap j (inside the chunk only when
    `within_chunk`); backward half: x[t + d] with tap K−1−d while t + d stays in t's chunk."""
    frames = sum(chunk_sizes)
    band = [[kernel] * (kernel - 1 + frames) for _ in range(frames)]
    position = 0
    for size in chunk_sizes:
        for offset in range(size):
            t = position + offset
            for j in range(kernel):
                if not within_chunk or offset >= kernel - 1 - j:
                    band[t][t + j] = j
            for d in range(1, min(kernel, size - offset)):
                band[t][t + kernel - 1 + d] = kernel - 1 - d
        position += size
    # A normal tensor even when first built under inference_mode, so later training forwards can index with it.
    with torch.inference_mode(False):
        return torch.tensor(band, dtype=torch.long, device=device)
