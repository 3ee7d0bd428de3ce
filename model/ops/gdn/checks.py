"""Input validation shared by every backend of the frame-wise gated delta rule.

Each public op checks its inputs here once and raises ValueError naming the offending shapes or
dtypes; nothing is broadcast, cast or trimmed silently.
"""
from __future__ import annotations

from numbers import Integral

import torch

BACKENDS = ("naive", "chunk", "triton")


def _shape(x: torch.Tensor | None) -> str:
    return "None" if x is None else str(tuple(x.shape))


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def check_rule_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    decay: torch.Tensor,
    initial_state: torch.Tensor | None,
) -> None:
    """Validate the inputs of one gated-delta-rule scan.

    Expects q, k [B, H, F, S, K], v [B, H, F, S, V], beta [B, H, F, S], decay [B, H, F] (floating
    point, one device) and initial_state None or fp32 [B, H, K, V].
    """
    tensors = {"q": q, "k": k, "v": v, "beta": beta, "decay": decay}
    for name, x in tensors.items():
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be floating point, got dtype {x.dtype}")
    if q.ndim != 5:
        raise ValueError(f"q must be [B, H, F, S, K] (rank 5), got shape {_shape(q)}")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {_shape(q)}, got {_shape(k)}")
    if v.ndim != 5 or v.shape[:4] != q.shape[:4]:
        raise ValueError(f"v must be [B, H, F, S, V] with B, H, F, S of q {_shape(q)}, got {_shape(v)}")
    if beta.shape != q.shape[:4]:
        raise ValueError(f"beta must be [B, H, F, S] = {tuple(q.shape[:4])} for q {_shape(q)}, got {_shape(beta)}")
    if decay.shape != q.shape[:3]:
        raise ValueError(f"decay must be [B, H, F] = {tuple(q.shape[:3])} for q {_shape(q)}, got {_shape(decay)}")
    batch, heads, frames, tokens, key_dim = q.shape
    value_dim = v.shape[-1]
    if min(batch, heads, frames, tokens, key_dim, value_dim) == 0:
        raise ValueError(f"every dimension must be non-empty, got q {_shape(q)} and v {_shape(v)}")
    if initial_state is not None:
        if not isinstance(initial_state, torch.Tensor):
            raise ValueError(f"initial_state must be a torch.Tensor or None, got {type(initial_state).__name__}")
        expected = (batch, heads, key_dim, value_dim)
        if tuple(initial_state.shape) != expected:
            raise ValueError(
                f"initial_state must be [B, H, K, V] = {expected} for q {_shape(q)} and v {_shape(v)}, "
                f"got {_shape(initial_state)}"
            )
        if initial_state.dtype != torch.float32:
            raise ValueError(f"initial_state must be float32 (the state is kept in fp32), got {initial_state.dtype}")
        tensors["initial_state"] = initial_state
    devices = {name: x.device for name, x in tensors.items()}
    if len(set(devices.values())) != 1:
        raise ValueError(f"all inputs must be on one device, got {devices}")


def check_chunk_sizes(chunk_sizes: list[int] | tuple[int, ...] | None, frames: int) -> list[int]:
    """The backward-scan segments: `chunk_sizes` (positive ints summing to `frames`), or one segment."""
    if chunk_sizes is None:
        return [frames]
    sizes = list(chunk_sizes)
    if not sizes or any(not isinstance(n, Integral) or isinstance(n, bool) or n <= 0 for n in sizes):
        raise ValueError(f"chunk_sizes must be a non-empty list of positive ints, got {chunk_sizes!r}")
    if sum(sizes) != frames:
        raise ValueError(f"chunk_sizes {sizes} sum to {sum(sizes)}, but there are F = {frames} frames")
    return [int(n) for n in sizes]
