"""Input and output layers: patch embedders, timestep embedder, caption embedder, final layer.

Token order is (t, h, w) with t slowest; the patch is (1, 1, 1), so a Conv3d "patch embed" is a
per-token linear map (run here as a matmul on channels-last tokens).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class PatchEmbed(nn.Module):
    """`proj`: Conv3d(in, C, kernel 1) with bias; [B, Cin, T, H, W] -> [B, T·H·W, C]."""

    def __init__(self, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.permute(0, 2, 3, 4, 1).flatten(1, 3)  # [B, N, Cin]
        return F.linear(tokens, self.proj.weight.flatten(1), self.proj.bias)


def timestep_frequencies(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [..., dim] in [cos, sin] order of timesteps t [...]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[..., None] * freqs
    return torch.cat((torch.cos(args), torch.sin(args)), dim=-1)


class TimestepEmbedder(nn.Module):
    """`mlp`: 256 → C → SiLU → C on the sinusoidal embedding of the integer-truncated timestep."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(256, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # the official model casts the timestep to an integer first (`timestep.long()`)
        emb = timestep_frequencies(t.long().float())
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class CaptionProjection(nn.Module):
    def __init__(self, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels, hidden_size)
        self.fc2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(y), approximate="tanh"))


class CaptionEmbedder(nn.Module):
    """`y_proj` (fc1 → GELU-tanh → fc2) and the `y_embedding` null-caption buffer [L, C_text]."""

    def __init__(self, caption_channels: int, hidden_size: int, max_length: int) -> None:
        super().__init__()
        self.y_proj = CaptionProjection(caption_channels, hidden_size)
        self.register_buffer("y_embedding", torch.randn(max_length, caption_channels) / caption_channels**0.5)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.y_proj(y)


class FinalLayer(nn.Module):
    """LayerNorm (no affine) → ·(1 + scale) + shift per frame (from t, not t0) → Linear(C, out)."""

    def __init__(self, hidden_size: int, out_channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor, frames: int) -> torch.Tensor:
        """x [B, N, C], t [B, T, C] -> [B, N, out]."""
        shift, scale = (self.scale_shift_table[None, None] + t[:, :, None, :]).unbind(2)  # [B, T, C] each
        h = F.layer_norm(x, x.shape[-1:], eps=1e-6).unflatten(1, (frames, -1))  # [B, T, S, C]
        h = h * (1 + scale[:, :, None]) + shift[:, :, None]
        return self.linear(h.flatten(1, 2))
