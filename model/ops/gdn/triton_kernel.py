"""Triton kernel of the frame-wise gated delta rule (forward in the computational sense: no gradients).

This module imports Triton at the top; only `triton_fwd.py` imports it, and only when the kernel is
called, so the package loads on machines without Triton or a GPU.

One program owns the state columns `[:, v0:v0+BV]` of one (batch, head). The columns of M evolve
independently (every term of the update is M's column times a matrix, or a column of K^T diag(beta) V),
so splitting V over programs is exact. The state tile stays in registers for the whole frame loop:

    for each frame f (ascending, or descending when REVERSE):
        REVERSE:      out_f = R^T q_f                       (exclusive: the state before frame f)
        M <- gamma_f M
        delta = sum over S-blocks of K_blk^T diag(beta_blk) (V_blk - K_blk M)   (all read the old M)
        M <- M + delta
        not REVERSE:  out_f = M^T q_f                       (inclusive: the state after frame f)

Layouts (contiguous): q, k [B*H, F, S, K]; v, out [B*H, F, S, V]; beta [B*H, F, S]; decay [B*H, F];
states [B*H, K, V] fp32. K and V are padded to the powers of two BK and BV with masks.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _store_frame_outputs(q_ptr, out_ptr, state, token0, S, o_s, o_k, o_v, m_k, m_v,
                         K: tl.constexpr, V: tl.constexpr, BS: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """out[token0 + s, v-block] = q[token0 + s] @ state for every token of one frame."""
    for s0 in range(0, S, BS):
        rows = s0 + o_s  # [BS]
        m_s = rows < S
        q = tl.load(q_ptr + (token0 + rows)[:, None] * K + o_k[None, :],
                    mask=m_s[:, None] & m_k[None, :], other=0.0).to(tl.float32)  # [BS, BK]
        out = tl.dot(q, state, input_precision=DOT_PRECISION)  # [BS, BV]
        tl.store(out_ptr + (token0 + rows)[:, None] * V + o_v[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=m_s[:, None] & m_v[None, :])


@triton.jit
def frame_gated_delta_rule_fwd_kernel(
    q_ptr, k_ptr, v_ptr, beta_ptr, decay_ptr, initial_state_ptr, out_ptr, final_state_ptr,
    F, S,
    K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, BS: tl.constexpr,
    HAS_INITIAL_STATE: tl.constexpr, STORE_FINAL_STATE: tl.constexpr, REVERSE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    i_v = tl.program_id(0)
    # int64 so that offsets stay exact for long clips (B*H*F*S*K can pass 2^31)
    i_bh = tl.program_id(1).to(tl.int64)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    o_s = tl.arange(0, BS)
    m_k = o_k < K
    m_v = o_v < V
    m_state = m_k[:, None] & m_v[None, :]
    state_offsets = i_bh * K * V + o_k[:, None] * V + o_v[None, :]  # [BK, BV]

    # padded rows/columns of the state stay exactly zero: the masked loads below give zero keys there
    state = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_INITIAL_STATE:
        state = tl.load(initial_state_ptr + state_offsets, mask=m_state, other=0.0)

    for t in range(0, F):
        if REVERSE:
            i_f = F - 1 - t
        else:
            i_f = t
        token0 = (i_bh * F + i_f) * S
        if REVERSE:
            _store_frame_outputs(q_ptr, out_ptr, state, token0, S, o_s, o_k, o_v, m_k, m_v,
                                 K, V, BS, DOT_PRECISION)

        gamma = tl.load(decay_ptr + i_bh * F + i_f).to(tl.float32)
        state = state * gamma
        # every token of the frame predicts from the same decayed state, so the update is gathered
        # in `delta` and applied once after the last S-block
        delta = tl.zeros([BK, BV], dtype=tl.float32)
        for s0 in range(0, S, BS):
            rows = s0 + o_s  # [BS]
            m_s = rows < S
            k = tl.load(k_ptr + (token0 + rows)[:, None] * K + o_k[None, :],
                        mask=m_s[:, None] & m_k[None, :], other=0.0).to(tl.float32)  # [BS, BK]
            v = tl.load(v_ptr + (token0 + rows)[:, None] * V + o_v[None, :],
                        mask=m_s[:, None] & m_v[None, :], other=0.0).to(tl.float32)  # [BS, BV]
            beta = tl.load(beta_ptr + token0 + rows, mask=m_s, other=0.0).to(tl.float32)  # [BS]
            target = (v - tl.dot(k, state, input_precision=DOT_PRECISION)) * beta[:, None]  # [BS, BV]
            delta += tl.dot(tl.trans(k), target, input_precision=DOT_PRECISION)  # [BK, BV]
        state = state + delta

        if not REVERSE:
            _store_frame_outputs(q_ptr, out_ptr, state, token0, S, o_s, o_k, o_v, m_k, m_v,
                                 K, V, BS, DOT_PRECISION)

    if STORE_FINAL_STATE:
        tl.store(final_state_ptr + state_offsets, state, mask=m_state)
