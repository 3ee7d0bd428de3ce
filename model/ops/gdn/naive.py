"""The frame-wise gated delta rule, written as the plain per-frame fp32 loop: the spec.

Per batch b and head h, frames t = 0..F-1 hold S tokens each; the state M is [K, V] (key_dim,
value_dim) and always fp32. With K_t [S, K], V_t [S, V], Q_t [S, K] the rows of frame t,
β_t [S] and the frame decay γ_t:

    forward (inclusive):  M_t = γ_t M_{t-1} + K_tᵀ diag(β_t) (V_t − γ_t K_t M_{t-1}),   out_t = Q_t M_t
                          M_{-1} = initial_state (0 if None); final_state = M_{F-1}
    reverse (exclusive):  R_t = γ_{t+1} R_{t+1} + K_{t+1}ᵀ diag(β_{t+1}) (V_{t+1} − γ_{t+1} K_{t+1} R_{t+1}),
                          out_t = Q_t R_t;  R_{F-1} = initial_state (0 if None); final_state = R_{-1}

The first line is the same as M_t = (I − Σ_s β k kᵀ) γ_t M_{t−1} + Σ_s β k vᵀ. Every token of a
frame predicts from the same pre-update state γ_t M_{t-1}, so the update is parallel inside a frame.
"""
from __future__ import annotations

import torch

from model.ops.gdn.checks import check_rule_inputs


def naive_frame_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    decay: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    reverse: bool = False,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reference frame-wise gated delta rule: one fp32 state update per frame.

    Args:
        q, k: [B, H, F, S, K] queries and keys.
        v: [B, H, F, S, V] values.
        beta: [B, H, F, S] per-token write strength β.
        decay: [B, H, F] per-frame decay γ.
        initial_state: [B, H, K, V] fp32 or None (zeros).
        reverse: False for the inclusive forward scan, True for the exclusive backward scan.
        output_final_state: also return the state after the last absorbed frame.

    Returns:
        out [B, H, F, S, V] in v's dtype, and final_state [B, H, K, V] fp32 (None unless asked).
    """
    check_rule_inputs(q, k, v, beta, decay, initial_state)
    batch, heads, frames, _, key_dim = q.shape
    value_dim = v.shape[-1]
    out_dtype = v.dtype
    q, k, v, beta, decay = (x.float() for x in (q, k, v, beta, decay))
    if initial_state is None:
        state = q.new_zeros(batch, heads, key_dim, value_dim)  # [B, H, K, V]
    else:
        state = initial_state

    def absorb(state: torch.Tensor, t: int) -> torch.Tensor:
        decayed = decay[:, :, t, None, None] * state  # [B, H, K, V]
        prediction = k[:, :, t] @ decayed  # [B, H, S, V]
        delta = beta[:, :, t, :, None] * (v[:, :, t] - prediction)  # [B, H, S, V]
        return decayed + k[:, :, t].transpose(-1, -2) @ delta  # [B, H, K, V]

    outputs: list[torch.Tensor | None] = [None] * frames
    if not reverse:
        for t in range(frames):
            state = absorb(state, t)
            outputs[t] = q[:, :, t] @ state  # [B, H, S, V]
    else:
        for t in reversed(range(frames)):
            outputs[t] = q[:, :, t] @ state  # [B, H, S, V]
            state = absorb(state, t)
    out = torch.stack(outputs, dim=2).to(out_dtype)  # [B, H, F, S, V]
    return out, (state if output_final_state else None)
