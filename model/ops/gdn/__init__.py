"""The frame-wise gated delta rule (SANA-WM's GDN recurrence) with interchangeable backends.

    frame_gated_delta_rule(q, k, v, beta, decay, *, initial_state=None, reverse=False,
                           output_final_state=False, backend="chunk") -> (out, final_state)

Backends share one keyword signature and return `(out, final_state)`:
    "naive"   the per-frame fp32 loop (`naive.py`): the spec every other path is tested against;
    "chunk"   the vectorised torch path (`chunk.py`): the CPU production path, autograd-friendly;
    "triton"  the CUDA kernel (`triton_fwd.py`), imported only when asked so CPU-only imports work.
"""
from __future__ import annotations

import torch

from model.ops.gdn.checks import check_backend
from model.ops.gdn.naive import naive_frame_gated_delta_rule

__all__ = ["frame_gated_delta_rule", "naive_frame_gated_delta_rule"]


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
        from model.ops.gdn.chunk import chunk_frame_gated_delta_rule as fn
    else:
        from model.ops.gdn.triton_fwd import frame_gated_delta_rule_triton as fn
    return fn(q, k, v, beta, decay, initial_state=initial_state, reverse=reverse, output_final_state=output_final_state)
