"""The frame-wise gated delta rule (SANA-WM's GDN recurrence) with interchangeable backends.

    frame_gated_delta_rule(q, k, v, beta, decay, *, initial_state=None, reverse=False,
                           output_final_state=False, backend="chunk") -> (out, final_state)

Backends share one keyword signature and return `(out, final_state)`:
    "naive"   the per-frame fp32 loop (`naive.py`): the spec every other path is tested against;
    "chunk"   the vectorised torch path (`chunk.py`): the CPU production path, autograd-friendly;
    "triton"  the CUDA kernel (`triton_fwd.py`), imported only when asked so CPU-only imports work.

The GDN block's attention core and the camera branch are built on it (`bidirectional.py`):

    bidirectional_frame_gdn(q_num, k_num, q_den, k_den, v, beta, decay, *, initial_kv=None, initial_z=None,
                            chunk_sizes=None, eps=1e-8, output_final_state=False, backend="chunk")
        -> (out, final_kv, final_z)
    bidirectional_frame_delta_rule(q, k, v, beta, decay, *, initial_state=None, chunk_sizes=None,
                                   output_final_state=False, backend="chunk") -> (out, final_state)
    ucpe_beta_discount(beta, k_before, k_after) -> beta_cam

Shapes: q, k [B, H, F, S, K]; v [B, H, F, S, V]; beta [B, H, F, S]; decay [B, H, F]; states fp32
[B, H, K, V] (the z state is [B, H, K, 1]). Bad shapes, ranks or dtypes raise ValueError.
"""
from __future__ import annotations

import torch

from model.ops.gdn.bidirectional import bidirectional_frame_delta_rule, bidirectional_frame_gdn, ucpe_beta_discount
from model.ops.gdn.checks import check_backend
from model.ops.gdn.chunk import chunk_frame_gated_delta_rule
from model.ops.gdn.naive import naive_frame_gated_delta_rule

__all__ = [
    "bidirectional_frame_delta_rule",
    "bidirectional_frame_gdn",
    "chunk_frame_gated_delta_rule",
    "frame_gated_delta_rule",
    "naive_frame_gated_delta_rule",
    "ucpe_beta_discount",
]


def frame_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    decay: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    reverse: bool = False,
    output_final_state: bool = False,
    backend: str = "chunk",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One scan of the frame-wise gated delta rule (see `naive.py` for the exact math).

    Args:
        q, k: [B, H, F, S, K]; v: [B, H, F, S, V]; beta: [B, H, F, S]; decay: [B, H, F].
        initial_state: [B, H, K, V] fp32 or None.
        reverse: False = forward inclusive scan, True = backward exclusive scan.
        output_final_state: return the fp32 state after the last absorbed frame.
        backend: "naive", "chunk" or "triton".

    Returns:
        out [B, H, F, S, V] in v's dtype, final_state [B, H, K, V] fp32 or None.
    """
    check_backend(backend)
    if backend == "naive":
        fn = naive_frame_gated_delta_rule
    elif backend == "chunk":
        fn = chunk_frame_gated_delta_rule
    else:
        from model.ops.gdn.triton_fwd import frame_gated_delta_rule_triton as fn
    return fn(q, k, v, beta, decay, initial_state=initial_state, reverse=reverse, output_final_state=output_final_state)
