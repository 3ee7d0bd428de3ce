"""One SANA-WM block: adaLN-single modulation per frame around self-attention (GDN or softmax, each
with its camera branch), the Plücker post-attention injection, cross-attention and the FFN.

    [shift, scale, gate]_msa, [shift, scale, gate]_mlp = scale_shift_table + t0[f]     (per frame f)
    x += gate_msa · Mixer(LN(x)·(1 + scale_msa) + shift_msa)
    x += plucker_proj(plucker_emb)                       zero-initialised, every block
    x += CrossAttn(x, text)
    x += gate_mlp · FFN(LN(x)·(1 + scale_mlp) + shift_mlp)
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import ModelConfig
from model.cross_attention import CrossAttention
from model.ffn import GLUMBConvTemp
from model.gdn_mixer import GDNMixer
from model.layers import RunLayout
from model.rope import Rotary
from model.softmax_mixer import SoftmaxMixer
from model.state import GDNState, SoftmaxState
from model.ucpe import CameraGeometry


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, frames: int) -> torch.Tensor:
    """LN(x)·(1 + scale) + shift with x [B, N, C] and per-frame shift, scale [B, T, C]."""
    h = F.layer_norm(x, x.shape[-1:], eps=1e-6).unflatten(1, (frames, -1))  # [B, T, S, C]
    return (h * (1 + scale[:, :, None]) + shift[:, :, None]).flatten(1, 2)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, index: int) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.is_softmax = config.is_softmax(index)
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden) / hidden**0.5)
        self.attn = SoftmaxMixer(config) if self.is_softmax else GDNMixer(config)
        self.cross_attn = CrossAttention(hidden, config.num_cross_heads, config.cross_norm_eps)
        self.mlp = GLUMBConvTemp(hidden, config.mlp_hidden, config.t_kernel_size)
        self.plucker_proj = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.plucker_proj.weight)
        nn.init.zeros_(self.plucker_proj.bias)

    def forward(
        self,
        x: torch.Tensor,
        t0: torch.Tensor,
        text_kv: tuple[torch.Tensor, torch.Tensor],
        text_mask: torch.Tensor | None,
        layout: RunLayout,
        rope: Rotary,
        camera: CameraGeometry | None,
        plucker: torch.Tensor | None,
        state: GDNState | SoftmaxState | None,
        *,
        want_state: bool = False,
    ) -> tuple[torch.Tensor, GDNState | SoftmaxState | None]:
        """x [B, N, C], t0 [B, T, 6, C], plucker [B, N, C] or None -> (x [B, N, C], new state or None)."""
        frames = layout.frames
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (self.scale_shift_table + t0).unbind(2)

        # 1. self-attention (GDN or softmax) with its camera branch
        attn, new_state = self.attn(
            _modulate(x, shift_msa, scale_msa, frames), layout, rope, camera, state, want_state=want_state
        )
        x = x + (gate_msa[:, :, None] * attn.unflatten(1, (frames, -1))).flatten(1, 2)

        # 2. Plücker rays, 3. text
        if plucker is not None:
            x = x + self.plucker_proj(plucker)
        x = x + self.cross_attn(x, text_kv, text_mask)

        # 4. FFN with the temporal conv
        p = self.mlp.spatial(_modulate(x, shift_mlp, scale_mlp, frames), layout)  # [B, T, S, C]
        ffn = self.mlp.temporal(p, layout, None if state is None else state.ffn_context)
        x = x + (gate_mlp[:, :, None] * ffn).flatten(1, 2)
        if want_state:
            new_state = dataclasses.replace(new_state, ffn_context=self.mlp.next_context(state.ffn_context, p))
        return x, new_state
