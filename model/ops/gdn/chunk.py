"""The frame-wise gated delta rule in vectorised torch: the CPU production path.

Formulation: the per-frame affine ("transition matrix") form. One frame's update is

    M_t = A_t M_{t-1} + U_t,   A_t = γ_t (I − K_tᵀ diag(β_t) K_t)  [K, K],   U_t = K_tᵀ diag(β_t) V_t  [K, V]

1. A_t and U_t for all frames come from two batched matmuls (parallel over B, H and F).
2. The scan itself is one fused `baddbmm` per frame on [B·H, K, K] @ [B·H, K, V]: the only
   sequential work, K²V flops per frame instead of the naive loop's two S·K·V products and five
   separate ops.
3. The outputs of all frames come from one batched matmul Q_t M_t.

Why this form: inside a frame the update is already a parallel rank-S correction, so fla's
WY/UT chunking (which parallelises *tokens* of a sequential recurrence) has nothing left to
gather; what remains sequential is the frame-to-frame state, and F is small (3..21). Two
alternatives were timed on CPU and lost: a log-depth (Hillis-Steele) scan over the A_t (F·log F·K³
flops against F·K²V, and no fewer ops at these F), and for the V = 1 denominator stream a
matrix-vector scan that skips forming A_t (torch's batched matrix-vector products are far slower
per flop than its matrix-matrix ones). Per-token work (S·K² for A_t, S·K·V for U_t and the outputs)
is done in large batched matmuls, where CPU BLAS is efficient.

`chunk_bidirectional_rule` shares A_t and U_t between the forward scan and the (segmented)
backward scan and reads both with one output matmul Q_t (M_t + R_t).

All maths is fp32 (inputs may be bf16); everything is differentiable by autograd.
"""
from __future__ import annotations

import torch

from model.ops.gdn.checks import check_chunk_sizes, check_rule_inputs


def _transitions(
    k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, decay: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-frame affine maps A_t [B·H, K, K] and U_t [B·H, K, V] as lists over frames, fp32."""
    key_dim = k.shape[-1]
    k = k.float().flatten(0, 1)  # [BH, F, S, K]
    v = v.float().flatten(0, 1)  # [BH, F, S, V]
    beta = beta.float().flatten(0, 1)  # [BH, F, S]
    decay = decay.float().flatten(0, 1)  # [BH, F]
    k_beta_t = (k * beta[..., None]).transpose(-1, -2)  # [BH, F, K, S]
    eye = torch.eye(key_dim, dtype=torch.float32, device=k.device)
    transition = decay[..., None, None] * (eye - k_beta_t @ k)  # [BH, F, K, K]
    if v.shape[-1] == 1:
        # the denominator stream: a weighted sum avoids torch's slow batched matrix-vector path
        update = (k_beta_t * v.transpose(-1, -2)).sum(-1, keepdim=True)  # [BH, F, K, 1]
    else:
        update = k_beta_t @ v  # [BH, F, K, V]
    return list(transition.unbind(1)), list(update.unbind(1))


def _read(q: torch.Tensor, states: list[torch.Tensor]) -> torch.Tensor:
    """Outputs Q_t X_t for every frame: q [B, H, F, S, K], states F × [B·H, K, V] -> [B·H, F, S, V] fp32."""
    q = q.float().flatten(0, 1)  # [BH, F, S, K]
    stacked = torch.stack(states, dim=1)  # [BH, F, K, V]
    if stacked.shape[-1] == 1:
        return (q * stacked.transpose(-1, -2)).sum(-1, keepdim=True)  # [BH, F, S, 1]
    return q @ stacked  # [BH, F, S, V]


def _forward_states(
    transition: list[torch.Tensor], update: list[torch.Tensor], initial_state: torch.Tensor | None
) -> list[torch.Tensor]:
    """Inclusive forward scan: M_t for every frame, each [B·H, K, V]."""
    states = []
    state = initial_state
    for a, u in zip(transition, update):
        state = u if state is None else torch.baddbmm(u, a, state)
        states.append(state)
    return states


def _reverse_states(
    transition: list[torch.Tensor],
    update: list[torch.Tensor],
    end_state: torch.Tensor,
    start: int,
    stop: int,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Exclusive backward scan over frames [start, stop): R_t for those frames, and R_start again.

    R_{stop-1} = end_state; R_t = A_{t+1} R_{t+1} + U_{t+1}. Absorbing frame `start` as well
    (A_start R_start + U_start) is left to the caller, which needs it only for a final state.
    """
    states = [end_state]
    state = end_state
    for t in range(stop - 1, start, -1):
        state = torch.baddbmm(update[t], transition[t], state)
        states.append(state)
    states.reverse()
    return states, state


def chunk_frame_gated_delta_rule(
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
    """Frame-wise gated delta rule in the affine form; same math and signature as the naive one.

    Args:
        q, k: [B, H, F, S, K]; v: [B, H, F, S, V]; beta: [B, H, F, S]; decay: [B, H, F].
        initial_state: [B, H, K, V] fp32 or None (zeros).
        reverse: False = forward inclusive scan, True = backward exclusive scan.
        output_final_state: also return the fp32 state after the last absorbed frame.

    Returns:
        out [B, H, F, S, V] in v's dtype, final_state [B, H, K, V] fp32 or None.
    """
    check_rule_inputs(q, k, v, beta, decay, initial_state)
    batch, heads, frames, _, key_dim = q.shape
    value_dim = v.shape[-1]
    transition, update = _transitions(k, v, beta, decay)
    init = None if initial_state is None else initial_state.flatten(0, 1)  # [BH, K, V]
    if not reverse:
        states = _forward_states(transition, update, init)
        final = states[-1]
    else:
        if init is None:
            init = q.new_zeros(batch * heads, key_dim, value_dim, dtype=torch.float32)
        states, first = _reverse_states(transition, update, init, 0, frames)
        final = torch.baddbmm(update[0], transition[0], first) if output_final_state else None
    out = _read(q, states).unflatten(0, (batch, heads)).to(v.dtype)  # [B, H, F, S, V]
    if not output_final_state:
        return out, None
    return out, final.unflatten(0, (batch, heads))


def chunk_bidirectional_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    decay: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    chunk_sizes: list[int] | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Forward inclusive scan over all frames plus backward exclusive scans restarted per chunk.

    out_t = Q_t (M_t + R_t): M is seeded by initial_state and runs over all F frames; R starts
    from zero at the last frame of each chunk of `chunk_sizes` (None = one chunk) and never
    crosses a chunk boundary.

    Args:
        q, k: [B, H, F, S, K]; v: [B, H, F, S, V]; beta: [B, H, F, S]; decay: [B, H, F].
        initial_state: [B, H, K, V] fp32 or None.
        chunk_sizes: frame counts of the chunks, summing to F, or None.
        output_final_state: also return the forward state after the last frame.

    Returns:
        out [B, H, F, S, V] fp32 (the caller combines streams before casting), final_state
        [B, H, K, V] fp32 or None.
    """
    check_rule_inputs(q, k, v, beta, decay, initial_state)
    batch, heads, frames, _, key_dim = q.shape
    value_dim = v.shape[-1]
    sizes = check_chunk_sizes(chunk_sizes, frames)
    transition, update = _transitions(k, v, beta, decay)
    init = None if initial_state is None else initial_state.flatten(0, 1)  # [BH, K, V]
    forward = _forward_states(transition, update, init)
    zero = q.new_zeros(batch * heads, key_dim, value_dim, dtype=torch.float32)
    backward: list[torch.Tensor] = []
    start = 0
    for size in sizes:
        states, _ = _reverse_states(transition, update, zero, start, start + size)
        backward.extend(states)
        start += size
    total = [fwd + bwd for fwd, bwd in zip(forward, backward)]  # F × [BH, K, V]
    out = _read(q, total).unflatten(0, (batch, heads))  # [B, H, F, S, V]
    if not output_final_state:
        return out, None
    return out, forward[-1].unflatten(0, (batch, heads))
