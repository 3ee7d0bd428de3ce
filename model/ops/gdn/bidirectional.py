"""The GDN block's attention core: forward + backward gated delta rule scans, and the UCPE β discount.

    bidirectional_frame_gdn         out = (num_fwd + num_bwd) / (den_fwd + den_bwd + eps)
    bidirectional_frame_delta_rule  out = num_fwd + num_bwd (the UCPE camera branch: no denominator)
    ucpe_beta_discount              β_cam = β / max(1, mean_s ‖k_after‖² / ‖k_before‖²)

The numerator uses (q_num, k_num, v) (RoPE-rotated in the model); the denominator is the same rule
with v = 1 on the unrotated (q_den, k_den). Forward scans are inclusive and run over all F frames,
seeded with the streaming state; backward scans are exclusive, start from zero at the last frame
of each chunk of `chunk_sizes` and never carry state across a chunk boundary. chunk_sizes=None is
one chunk (fully bidirectional); a chunk-causal stream passes its chunk layout (e.g. [4, 3, 3]).

With backend="chunk" the forward and backward scans of a stream share their per-frame transition
matrices and one output matmul (`chunk.chunk_bidirectional_rule`); the other backends are
composed from one forward call and one reverse call per chunk.
"""
from __future__ import annotations

import torch

from model.ops.gdn.checks import check_backend, check_chunk_sizes, check_rule_inputs
from model.ops.gdn.chunk import chunk_bidirectional_rule


def _bidirectional_stream(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    decay: torch.Tensor,
    initial_state: torch.Tensor | None,
    chunk_sizes: list[int] | None,
    output_final_state: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fwd(all frames, seeded) + bwd(per chunk, from zero) for one stream; out fp32 [B, H, F, S, V]."""
    if backend == "chunk":
        return chunk_bidirectional_rule(
            q, k, v, beta, decay,
            initial_state=initial_state, chunk_sizes=chunk_sizes, output_final_state=output_final_state,
        )
    from model.ops.gdn import frame_gated_delta_rule

    check_rule_inputs(q, k, v, beta, decay, initial_state)
    sizes = check_chunk_sizes(chunk_sizes, q.shape[2])
    # Outputs come back in the values' dtype: fp32 keeps the naive sums exact, while the Triton
    # kernel takes q, k, v in one dtype (its outputs are then widened before they are summed).
    values = v.to(q.dtype) if backend == "triton" else v.float()
    forward, final = frame_gated_delta_rule(
        q, k, values, beta, decay,
        initial_state=initial_state, output_final_state=output_final_state, backend=backend,
    )
    backward = []
    start = 0
    for size in sizes:
        frames = slice(start, start + size)
        out, _ = frame_gated_delta_rule(
            q[:, :, frames], k[:, :, frames], values[:, :, frames], beta[:, :, frames], decay[:, :, frames],
            reverse=True, backend=backend,
        )
        backward.append(out)
        start += size
    return forward.float() + torch.cat(backward, dim=2).float(), final


def bidirectional_frame_gdn(
    q_num: torch.Tensor,
    k_num: torch.Tensor,
    q_den: torch.Tensor,
    k_den: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    decay: torch.Tensor,
    *,
    initial_kv: torch.Tensor | None = None,
    initial_z: torch.Tensor | None = None,
    chunk_sizes: list[int] | None = None,
    eps: float = 1e-8,
    output_final_state: bool = False,
    backend: str = "chunk",
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Normalised bidirectional gated delta rule: (num_fwd + num_bwd) / (den_fwd + den_bwd + eps).

    Args:
        q_num, k_num: [B, H, F, S, K] numerator queries/keys (RoPE-rotated in the model).
        q_den, k_den: [B, H, F, S, K] denominator queries/keys (unrotated).
        v: [B, H, F, S, V]; beta: [B, H, F, S]; decay: [B, H, F].
        initial_kv: [B, H, K, V] fp32 or None; initial_z: [B, H, K, 1] fp32 or None. They seed
            the forward scans only.
        chunk_sizes: frame counts (summing to F) inside which the backward scans run; None = [F].
        eps: added to the denominator.
        output_final_state: return the forward states after the last frame.
        backend: "naive", "chunk" or "triton".

    Returns:
        out [B, H, F, S, V] in v's dtype, final_kv [B, H, K, V] and final_z [B, H, K, 1] fp32
        (both None unless output_final_state).
    """
    check_backend(backend)
    if q_den.shape != q_num.shape or k_den.shape != q_num.shape or k_num.shape != q_num.shape:
        raise ValueError(
            f"q_num, k_num, q_den, k_den must share one shape [B, H, F, S, K], got {tuple(q_num.shape)}, "
            f"{tuple(k_num.shape)}, {tuple(q_den.shape)}, {tuple(k_den.shape)}"
        )
    ones = torch.ones(*v.shape[:4], 1, dtype=torch.float32, device=v.device)  # [B, H, F, S, 1]
    num, final_kv = _bidirectional_stream(
        q_num, k_num, v, beta, decay, initial_kv, chunk_sizes, output_final_state, backend
    )
    den, final_z = _bidirectional_stream(
        q_den, k_den, ones, beta, decay, initial_z, chunk_sizes, output_final_state, backend
    )
    out = (num / (den + eps)).to(v.dtype)  # [B, H, F, S, V]
    return out, final_kv, final_z


def bidirectional_frame_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    decay: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    chunk_sizes: list[int] | None = None,
    output_final_state: bool = False,
    backend: str = "chunk",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Numerator-only bidirectional gated delta rule (the UCPE camera branch): fwd + per-chunk bwd.

    Args:
        q, k: [B, H, F, S, K]; v: [B, H, F, S, V]; beta: [B, H, F, S] (already discounted by
            `ucpe_beta_discount` in the model); decay: [B, H, F].
        initial_state: [B, H, K, V] fp32 or None; seeds the forward scan only.
        chunk_sizes: frame counts (summing to F) inside which the backward scan runs; None = [F].
        output_final_state: return the forward state after the last frame.
        backend: "naive", "chunk" or "triton".

    Returns:
        out [B, H, F, S, V] in v's dtype, final_state [B, H, K, V] fp32 or None.
    """
    check_backend(backend)
    out, final = _bidirectional_stream(q, k, v, beta, decay, initial_state, chunk_sizes, output_final_state, backend)
    return out.to(v.dtype), final


def ucpe_beta_discount(beta: torch.Tensor, k_before: torch.Tensor, k_after: torch.Tensor) -> torch.Tensor:
    """β for the camera branch: β / max(1, mean over the frame's tokens of ‖k_after‖² / ‖k_before‖²).

    UCPE's per-ray transform can inflate key norms, which would make the delta rule's transition
    (I − Σ β k kᵀ) expansive; dividing β by the mean inflation ρ keeps it as contractive as the
    main branch. A token whose key is exactly zero before UCPE is zero after it too (the transform
    is linear) and contributes ρ = 0.

    Args:
        beta: [B, H, F, S].
        k_before, k_after: [B, H, F, S, K] camera-branch keys before and after UCPE.

    Returns:
        [B, H, F, S] in beta's dtype: one discount per (b, h, f), broadcast over the tokens.
    """
    if k_before.ndim != 5 or k_after.shape != k_before.shape or beta.shape != k_before.shape[:4]:
        raise ValueError(
            f"expected beta [B, H, F, S] and k_before, k_after [B, H, F, S, K] of one shape, got beta "
            f"{tuple(beta.shape)}, k_before {tuple(k_before.shape)}, k_after {tuple(k_after.shape)}"
        )
    before = k_before.float().square().sum(-1)  # [B, H, F, S]
    after = k_after.float().square().sum(-1)  # [B, H, F, S]
    ratio = torch.where(before > 0, after / before.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    inflation = ratio.mean(-1, keepdim=True).clamp_min(1.0)  # [B, H, F, 1]
    return (beta.float() / inflation).to(beta.dtype)
