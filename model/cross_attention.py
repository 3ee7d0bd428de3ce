"""Cross-attention from the video tokens to the text tokens (`MultiHeadCrossAttention` of the release).

q = RMSNorm(W_q x), k = RMSNorm(W_k y), v = W_v y (k, v from one `kv_linear`), SDPA over the text
tokens whose mask is true, `proj`. No norm or modulation around it in the block. The text K/V do not
depend on the video, so `text_kv` can be computed once per prompt and reused (streaming does).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.layers import RMSNorm


class CrossAttention(nn.Module):
    def __init__(self, hidden_size: int, heads: int, norm_eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.q_linear = nn.Linear(hidden_size, hidden_size)
        self.kv_linear = nn.Linear(hidden_size, 2 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.q_norm = RMSNorm(hidden_size, norm_eps)
        self.k_norm = RMSNorm(hidden_size, norm_eps)

    def text_kv(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y [B, L, C] -> k, v [B, H, L, D]."""
        k, v = self.kv_linear(y).chunk(2, dim=-1)
        k = self.k_norm(k).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        v = v.unflatten(-1, (self.heads, -1)).transpose(1, 2)
        return k, v

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, N, C], kv from `text_kv`, mask [B, 1, 1, L] bool or None -> [B, N, C]."""
        q = self.q_norm(self.q_linear(x)).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [B, H, N, D]
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask)
        return self.proj(out.transpose(1, 2).flatten(2))
