"""Triton path of the frame-wise gated delta rule: inference only, CUDA (or Triton's CPU interpreter).

Per batch b and head h, with frames t = 0..F-1 of S tokens each and an fp32 state M [K, V]:

    forward, inclusive:  M_t = (I - sum_s beta_ts k_ts k_ts^T) gamma_t M_{t-1} + sum_s beta_ts k_ts v_ts^T
                         out_ts = M_t^T q_ts,            M_{-1} = initial_state or 0
    reverse, exclusive:  R_t = (I - sum_s beta_{t+1,s} k k^T) gamma_{t+1} R_{t+1} + sum_s beta_{t+1,s} k v^T
                         out_ts = R_t^T q_ts,            R_{F-1} = initial_state or 0,
                         final_state = R_{-1} (frame 0 absorbed too)

All S tokens of a frame read the same decayed state gamma_t M_{t-1}, so the frame's update is one
matrix step: M_t = gamma_t M_{t-1} + K^T diag(beta) (V - gamma_t K M_{t-1}).

Triton is imported only when the kernel runs, so this module imports on machines with neither
Triton nor a GPU. CPU tensors run under Triton's interpreter: TRITON_INTERPRET=1 must be set before
the first call in the process (the kernel is decorated then); without it the inputs must be CUDA
tensors. Non-contiguous inputs are copied to contiguous ones first.

Numerics: the state and every accumulation are fp32. fp32 q and k use exact fp32 dot products; bf16 and
fp16 ones use TF32 dot products (the inputs themselves are exact in TF32, the fp32 state operand is
truncated to TF32's 10-bit mantissa: as fine as fp16's, finer than bf16's 7 bits).
"""
from __future__ import annotations

import torch

from model.ops.gdn.checks import check_rule_inputs

_INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# the state tile [BK, BV] lives in registers; keys wider than this would spill
_MAX_KEY_DIM = 256


def frame_gated_delta_rule_triton(
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
    """Frame-wise gated delta rule with one Triton program per (batch, head, value block).

    Forward (inference) only: inputs that require grad while autograd is enabled raise
    NotImplementedError; use the chunked torch path for training.

    Args:
        q: queries [B, H, F, S, K], fp32, bf16 or fp16.
        k: keys [B, H, F, S, K], same dtype as q.
        v: values [B, H, F, S, V], fp32, bf16 or fp16 (it may differ from q's: fp32 values give fp32
            outputs, e.g. for the denominator stream v = 1 next to bf16 queries and keys).
        beta: per-token write strength [B, H, F, S], any float dtype (read as fp32).
        decay: per-frame decay gamma [B, H, F], any float dtype (read as fp32).
        initial_state: fp32 [B, H, K, V]: M_{-1} forward, R_{F-1} when `reverse`; zero when None.
        reverse: the backward-in-time exclusive scan instead of the forward inclusive one.
        output_final_state: also return the state after the last processed frame.

    Returns:
        out [B, H, F, S, V] in v's dtype, and the final state fp32 [B, H, K, V] (None unless asked).
    """
    check_rule_inputs(q, k, v, beta, decay, initial_state)
    _check_kernel_inputs(q, k, v)
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, beta, decay, initial_state)
    ):
        raise NotImplementedError(
            "frame_gated_delta_rule_triton is forward-only (no backward kernel); run it under "
            "torch.no_grad() or use the chunked torch path (backend='chunk') for gradients"
        )
    return _launch(q, k, v, beta, decay, initial_state=initial_state, reverse=reverse,
                   output_final_state=output_final_state)


def _launch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    decay: torch.Tensor,
    *,
    initial_state: torch.Tensor | None,
    reverse: bool,
    output_final_state: bool,
    block_v: int | None = None,
    block_s: int | None = None,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the kernel on validated inputs; the block sizes are exposed for tests and benchmarks."""
    import triton

    from model.ops.gdn.triton_kernel import frame_gated_delta_rule_fwd_kernel as kernel

    interpreting = not isinstance(kernel, triton.runtime.JITFunction)
    if not interpreting and q.device.type != "cuda":
        raise ValueError(
            f"frame_gated_delta_rule_triton needs CUDA tensors, got device {q.device}; on CPU set "
            "TRITON_INTERPRET=1 before this op's first call in the process, or use the chunked torch path"
        )

    B, H, F, S, K = q.shape
    V = v.shape[-1]
    block_k = max(16, triton.next_power_of_2(K))
    if block_v is None:
        block_v = _default_block_v(B * H, K, V, q.device)
    if block_s is None:
        block_s = min(32, max(16, triton.next_power_of_2(S)))
    if num_warps is None:
        # exact fp32 dots run on FMA units and need more registers: with 4 warps ptxas spills at K=128
        num_warps = 8 if q.dtype == torch.float32 else 4
    for name, size in (("block_v", block_v), ("block_s", block_s)):
        if size < 16 or size & (size - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {size}")

    q, k, v, beta, decay = (t.contiguous() for t in (q, k, v, beta, decay))
    out = torch.empty_like(v)
    final_state = q.new_empty(B, H, K, V, dtype=torch.float32) if output_final_state else None
    if initial_state is not None:
        initial_state = initial_state.contiguous()

    grid = (triton.cdiv(V, block_v), B * H)
    kernel[grid](
        q, k, v, beta, decay,
        initial_state if initial_state is not None else out,
        out,
        final_state if final_state is not None else out,
        F, S,
        K=K, V=V, BK=block_k, BV=block_v, BS=block_s,
        HAS_INITIAL_STATE=initial_state is not None,
        STORE_FINAL_STATE=final_state is not None,
        REVERSE=bool(reverse),
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps,
    )
    return out, final_state


def _default_block_v(programs_per_block: int, K: int, V: int, device: torch.device) -> int:
    """The widest V block that still gives every streaming multiprocessor a program.

    The frame loop is sequential inside a program, so the only parallelism is B*H*ceil(V/BV)
    programs; at the real model's B*H = 20 that means narrow blocks (V = 112 in 7 blocks of 16 fills an
    H100's 132 SMs, 4 blocks of 32 would not). Two [BK, BV] fp32 tiles (state and update) live in
    registers, so BV is capped at 32 for keys of 128 and wider. The interpreter takes the widest block:
    fewer programs run faster there.
    """
    import triton

    widest = min(max(16, triton.next_power_of_2(V)), 32 if K > 64 else 64)
    candidates = [b for b in (64, 32, 16) if b <= widest]
    if device.type != "cuda":
        return candidates[0]
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    for block_v in candidates:
        if programs_per_block * triton.cdiv(V, block_v) >= sms:
            return block_v
    return candidates[-1]


def _check_kernel_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """What this kernel needs beyond the shared checks: one supported dtype and a key dim that fits."""
    if q.dtype not in _INPUT_DTYPES or k.dtype != q.dtype or v.dtype not in _INPUT_DTYPES:
        raise ValueError(
            f"q and k must share one dtype of {_INPUT_DTYPES} and v must have one of them, "
            f"got q {q.dtype}, k {k.dtype}, v {v.dtype}"
        )
    if q.shape[-1] > _MAX_KEY_DIM:
        raise ValueError(f"key dim K={q.shape[-1]} exceeds the Triton kernel's limit of {_MAX_KEY_DIM}")
