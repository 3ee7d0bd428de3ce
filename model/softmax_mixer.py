"""Softmax self-attention of blocks 3, 7, 11, 15, 19, with its UCPE camera branch and KV caches.

Main branch: q, k, v = W_qkv x → RMSNorm_C on q, k → 3D RoPE → SDPA. Camera branch: own
projections and RMSNorms (no ReLU, no κ, no short conv) → UCPE → SDPA → decode with P →
`out_proj_cam`. Sum → shared output gate → `proj`.

Which tokens a query sees:
    bidirectional  all tokens
    chunk_causal   its own chunk and earlier chunks; with kv_window_chunks = N only the last N
                   earlier chunks (+ chunk 0 when sink): exactly what the streaming cache holds.
                   Run one SDPA per query chunk over its visible key ranges (`chunk_key_ranges`),
                   not one masked SDPA over all N×N pairs: with a window that skips the masked
                   work (about half of it for a 13-latent clip), and no [N, N] mask is built.
                   `chunk_causal_mask` is the same rule as a dense mask (the tests' reference).
    stream         the current chunk plus the cached sink and window (keys cached after RoPE at
                   absolute positions; camera keys/values after UCPE)

Softmax scale, per code path of the official code (sana_wm.md §4): its camera branch pads the head
dim to a FlashAttention width (112 → 128) before SDPA without passing a scale, and so do its
chunk-causal and cached streaming main branches; the bidirectional main branch does not pad. We
never pad; we pass the scale the padding implies: 1/sqrt(sdpa_padded_width(D)) for the camera
branch everywhere and for the main branch outside bidirectional mode, 1/sqrt(D) for the
bidirectional main branch. For D = 32, 64, 128 the two coincide. The official chunk-causal training
path through flex_attention passes no padding and so uses 1/sqrt(D) for its main branch; set
`ModelConfig.causal_scale_padded = False` for that (the default follows the cached streaming path,
which is what the distilled streaming release runs).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import ModelConfig
from model.layers import (
    RunLayout,
    add_attention_parameters,
    camera_qkv,
    gate_and_project,
    sdpa_padded_width,
    to_heads,
)
from model.rope import Rotary
from model.state import KVCache, SoftmaxState
from model.ucpe import CameraGeometry, apply_ucpe, encode_camera_qkv


def chunk_causal_mask(layout: RunLayout, device: torch.device) -> torch.Tensor | None:
    """Boolean [N, N] (query, key) mask of chunk_causal mode, or None when every token sees every token."""
    if layout.mode != "chunk_causal":
        return None
    chunk = layout.chunk_of_frame(device)  # [T]
    cq, ck = chunk[:, None], chunk[None, :]
    allowed = ck <= cq
    if layout.kv_window_chunks is not None:
        near = (cq - ck) <= layout.kv_window_chunks
        if layout.sink:
            near = near | (ck == 0)
        allowed = allowed & near
    if bool(allowed.all()):
        return None
    spatial = layout.spatial
    return allowed.repeat_interleave(spatial, 0).repeat_interleave(spatial, 1)  # [N, N]


def chunk_key_ranges(layout: RunLayout) -> list[tuple[tuple[int, int], list[tuple[int, int]]]]:
    """chunk_causal mode: for each chunk, its query token range and the key token ranges it sees.

    Chunk c sees chunks max(0, c − N) … c for kv_window_chunks = N (all of 0 … c when None), and
    chunk 0 as well when `sink`. Ranges are [start, end) token offsets, in order, neither overlapping nor adjacent.
    """
    spatial = layout.spatial
    starts = [0]
    for size in layout.chunk_sizes:
        starts.append(starts[-1] + size * spatial)
    ranges = []
    for chunk in range(len(layout.chunk_sizes)):
        first = 0 if layout.kv_window_chunks is None else max(0, chunk - layout.kv_window_chunks)
        if layout.sink and first == 1:
            first = 0  # the sink chunk joins the window's range: one range, no concatenation
        keys = [(starts[first], starts[chunk + 1])]
        if layout.sink and first > 0:
            keys.insert(0, (starts[0], starts[1]))
        ranges.append(((starts[chunk], starts[chunk + 1]), keys))
    return ranges


def chunk_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: RunLayout,
                           scale: float) -> torch.Tensor:
    """q, k, v [B, H, N, D] of a chunk_causal call -> [B, H, N, D]: one SDPA per query chunk over the
    key ranges of `chunk_key_ranges`. Equals SDPA with `chunk_causal_mask` (same key set per query)."""
    outs = []
    for (q_start, q_end), key_ranges in chunk_key_ranges(layout):
        if len(key_ranges) == 1:
            (k_start, k_end), = key_ranges
            keys, values = k[:, :, k_start:k_end], v[:, :, k_start:k_end]
        else:
            keys = torch.cat([k[:, :, a:b] for a, b in key_ranges], dim=2)
            values = torch.cat([v[:, :, a:b] for a, b in key_ranges], dim=2)
        outs.append(F.scaled_dot_product_attention(q[:, :, q_start:q_end], keys, values, scale=scale))
    return torch.cat(outs, dim=2)


class SoftmaxMixer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.heads = config.num_heads
        self.head_dim = config.head_dim
        add_attention_parameters(self, config.hidden_size, self.heads, config.qk_norm_eps)
        self.padded_scale = sdpa_padded_width(config.head_dim) ** -0.5
        self.plain_scale = config.head_dim ** -0.5

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: RunLayout,
        cache: KVCache | None, scale: float,
    ) -> torch.Tensor:
        """q, k, v [B, N, H, D] (current tokens) -> [B, N, H, D], over cache ∪ current keys."""
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, N, D]
        if cache is not None:
            past_k, past_v = cache.keys_values()
            k = torch.cat((past_k.to(k.dtype), k), dim=2)
            v = torch.cat((past_v.to(v.dtype), v), dim=2)
        if layout.mode == "chunk_causal" and len(layout.chunk_sizes) > 1:
            return chunk_causal_attention(q, k, v, layout, scale).transpose(1, 2)
        return F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        layout: RunLayout,
        rope: Rotary,
        camera: CameraGeometry | None,
        state: SoftmaxState | None,
        *,
        want_state: bool = False,
    ) -> tuple[torch.Tensor, SoftmaxState | None]:
        """x [B, N, C] -> ([B, N, C], the new state (None unless want_state)); state is read, never changed."""
        if state is not None and not isinstance(state, SoftmaxState):
            raise TypeError(f"SoftmaxMixer expects a SoftmaxState, got {type(state).__name__}")
        if want_state and state is None:
            raise ValueError("want_state needs an incoming SoftmaxState to extend")
        if layout.mode == "chunk_causal" and state is not None:
            raise ValueError("chunk_causal mode runs without a state (the past is inside the call)")
        padded_main = layout.main_scale_padded and self.config.causal_scale_padded
        main_scale = self.padded_scale if padded_main else self.plain_scale

        q, k, v = self.qkv(x).chunk(3, dim=-1)
        qk = torch.cat((to_heads(self.q_norm(q), self.heads), to_heads(self.k_norm(k), self.heads)), dim=2)
        q, k = rope.apply(qk).split(self.heads, dim=2)  # [B, N, H, D] each
        v = to_heads(v, self.heads)
        raw = self._attend(q, k, v, layout, None if state is None else state.main, main_scale).flatten(2)
        new_main = None if not want_state else state.main.append(k.transpose(1, 2), v.transpose(1, 2))

        new_cam = None if state is None else state.cam
        if camera is not None:
            qc, kc, vc = camera_qkv(self, x)
            qc_u, kc_u, vc_u = encode_camera_qkv(
                to_heads(self.q_norm_cam(qc), self.heads), to_heads(self.k_norm_cam(kc), self.heads),
                to_heads(vc, self.heads), camera, rms_clip=self.config.ucpe_rms_clip,
            )
            cam = self._attend(qc_u, kc_u, vc_u, layout, None if state is None else state.cam, self.padded_scale)
            cam = apply_ucpe(cam, camera.p, camera.rotary, inverse_rope=True).flatten(2)
            raw = raw + self.out_proj_cam(cam)
            if want_state:
                new_cam = state.cam.append(kc_u.transpose(1, 2), vc_u.transpose(1, 2))

        out = gate_and_project(self, raw, x)
        if not want_state:
            return out, None
        return out, SoftmaxState(main=new_main, cam=new_cam, ffn_context=state.ffn_context)
