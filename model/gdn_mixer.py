"""The Gated-DeltaNet self-attention of the 15 linear blocks, with its UCPE camera branch.

Main branch (per block, x [B, N, C] the modulated block input):

    q, k, v = W_qkv x;  k ← ShortConv(k)
    q̂ = ReLU(RMSNorm_C(q)),  k̂ = κ · ReLU(RMSNorm_C(k)),  κ = 1/sqrt(D·S) ("dim_spatial") or 1 ("none")
    β = σ(W_β x) per token;  γ = exp(−e^{A_log} · softplus(W_g mean_s(x) + b_g + dt_bias)) per frame
    out = (num_fwd + num_bwd) / (den_fwd + den_bwd + eps): numerator on (RoPE q̂, RoPE k̂, v),
          denominator on (q̂, k̂, 1)  (model.ops.gdn.bidirectional_frame_gdn)

Camera branch: own projections (with bias), ShortConv on k, own RMSNorms, ReLU, κ, then UCPE
(q ← Pᵀ q, k, v ← P⁻¹ ·, camera RoPE on the second half), β discounted by the UCPE key inflation,
a numerator-only bidirectional delta rule seeded with the camera state, decoded with P, and
`out_proj_cam`. With `ucpe_rms_clip` the UCPE outputs are first shrunk to their pre-UCPE RMS
(diffusers' PostUCPERenorm, which makes the β discount a no-op); the released Triton path does not.

Both raw outputs are summed, gated by SiLU(W_og x + b_og) and projected.

Across chunks (chunk_causal / stream) the forward scans and the forward half of the main short conv
run over all frames (seeded / prefixed by the state), the backward halves stay inside the chunk.
The camera K conv follows `ModelConfig.cam_conv_cross_chunk`:
- False: inside each chunk only, its left context zero at every chunk start. This is what the official
  streaming code runs ("cam K conv has no cross-chunk state", diffusion/model/ops/fused_streaming.py
  @0d2318a; sana_wm.md §3), so the streaming release is built with it (model.profile.OFFICIAL_STREAMING).
- True: the same left context as the main conv, from earlier chunks (`GDNState.cam_conv_context`). The
  embedded tiny model was trained this way and keeps it (its roam_tiny.json records it).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import ModelConfig
from model.layers import (
    RunLayout,
    ShortConv,
    add_attention_parameters,
    camera_qkv,
    frames_to_tokens,
    gate_and_project,
    heads_to_frames,
    to_heads,
)
from model.ops.gdn import bidirectional_frame_delta_rule, bidirectional_frame_gdn, ucpe_beta_discount
from model.rope import Rotary
from model.state import GDNState
from model.ucpe import CameraGeometry, apply_ucpe, encode_camera_qkv


class GDNMixer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.heads = config.num_heads
        self.head_dim = config.head_dim
        add_attention_parameters(self, config.hidden_size, self.heads, config.qk_norm_eps)
        self.conv_k = ShortConv(config.hidden_size, config.conv_kernel_size)
        self.conv_k_cam = ShortConv(config.hidden_size, config.conv_kernel_size)

    def _key_scale(self, spatial: int) -> float:
        if self.config.key_scaling == "dim_spatial":
            return (self.head_dim * spatial) ** -0.5
        return 1.0

    def gates(self, x: torch.Tensor, layout: RunLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """β [B, H, T, S] per token and γ [B, H, T] per frame (fp32), shared by both branches."""
        beta = torch.sigmoid(self.beta_proj(x)).unflatten(1, (layout.frames, layout.spatial)).permute(0, 3, 1, 2)
        frame_mean = x.unflatten(1, (layout.frames, layout.spatial)).mean(2)  # [B, T, C]
        gate = self.gate_proj(frame_mean).float()  # [B, T, H]
        rate = self.A_log.float().exp()
        decay = torch.exp(-rate * F.softplus(gate + self.dt_bias.float())).transpose(1, 2)  # [B, H, T]
        return beta.float(), decay

    def forward(
        self,
        x: torch.Tensor,
        layout: RunLayout,
        rope: Rotary,
        camera: CameraGeometry | None,
        state: GDNState | None,
        *,
        want_state: bool = False,
    ) -> tuple[torch.Tensor, GDNState | None]:
        """x [B, N, C] -> ([B, N, C], the new state (None unless want_state)); state is read, never changed."""
        if state is not None and not isinstance(state, GDNState):
            raise TypeError(f"GDNMixer expects a GDNState, got {type(state).__name__}")
        if want_state and state is None:
            raise ValueError("want_state needs an incoming GDNState to extend")
        batch, tokens, channels = x.shape
        frames, spatial = layout.frames, layout.spatial
        kappa = self._key_scale(spatial)
        chunk_sizes = list(layout.chunk_sizes)
        backend = self.config.gdn_backend
        beta, decay = self.gates(x, layout)

        # 1. main branch
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # [B, N, C] each
        k_pre = k.unflatten(1, (frames, spatial))  # [B, T, S, C]
        k = self.conv_k(k_pre, layout, None if state is None else state.conv_context).flatten(1, 2)
        q = to_heads(F.relu(self.q_norm(q)), self.heads)  # [B, N, H, D]
        k = to_heads(F.relu(self.k_norm(k)), self.heads) * kappa
        v = to_heads(v, self.heads)
        q_rot, k_rot = rope.apply(torch.cat((q, k), dim=2)).split(self.heads, dim=2)
        out, final_kv, final_z = bidirectional_frame_gdn(
            heads_to_frames(q_rot, frames), heads_to_frames(k_rot, frames),
            heads_to_frames(q, frames), heads_to_frames(k, frames), heads_to_frames(v, frames),
            beta, decay,
            initial_kv=None if state is None else state.kv,
            initial_z=None if state is None else state.z,
            chunk_sizes=chunk_sizes, eps=self.config.gdn_eps, output_final_state=want_state, backend=backend,
        )
        raw = frames_to_tokens(out)  # [B, N, C]

        # 2. camera branch
        final_cam = None if state is None else state.cam_kv
        kc_pre = None
        if camera is not None:
            qc, kc_pre, vc = camera_qkv(self, x)
            kc_pre = kc_pre.unflatten(1, (frames, spatial))  # [B, T, S, C]
            cross = self.config.cam_conv_cross_chunk
            kc = self.conv_k_cam(kc_pre, layout, None if state is None or not cross else state.cam_conv_context,
                                 within_chunk=not cross).flatten(1, 2)
            qc = to_heads(F.relu(self.q_norm_cam(qc)), self.heads)
            kc = to_heads(F.relu(self.k_norm_cam(kc)), self.heads) * kappa
            qc_u, kc_u, vc_u = encode_camera_qkv(qc, kc, to_heads(vc, self.heads), camera,
                                                 rms_clip=self.config.ucpe_rms_clip)
            kc_u_frames = heads_to_frames(kc_u, frames)
            beta_cam = ucpe_beta_discount(beta, heads_to_frames(kc, frames), kc_u_frames)
            cam_out, final_cam_new = bidirectional_frame_delta_rule(
                heads_to_frames(qc_u, frames).float(), kc_u_frames.float(), heads_to_frames(vc_u, frames).float(),
                beta_cam, decay,
                initial_state=final_cam, chunk_sizes=chunk_sizes, output_final_state=want_state, backend=backend,
            )
            cam_out = cam_out.permute(0, 2, 3, 1, 4).flatten(1, 2).to(x.dtype)  # [B, N, H, D]
            cam_out = apply_ucpe(cam_out, camera.p, camera.rotary, inverse_rope=True).flatten(2)
            raw = raw + self.out_proj_cam(cam_out)
            if want_state:
                final_cam = final_cam_new

        out = gate_and_project(self, raw, x)
        if not want_state:
            return out, None
        return out, dataclasses.replace(
            state,
            kv=final_kv,
            z=final_z,
            cam_kv=final_cam,
            conv_context=ShortConv.next_context(state.conv_context, k_pre),
            cam_conv_context=state.cam_conv_context if kc_pre is None or not self.config.cam_conv_cross_chunk
            else ShortConv.next_context(state.cam_conv_context, kc_pre),
        )
