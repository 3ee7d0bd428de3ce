"""Our bidirectional ops equal diffusers' reference recurrences (SanaWM's torch chunk scans).

diffusers 0.42.1 computes the GDN core as a forward scan plus a backward scan run on time-flipped,
shifted-by-one inputs (`flip_and_shift`), in layout [B, H, D, N] with N = F·S (frame slowest). Its
scans need K = V = D and have no initial state or chunk boundaries, so this compares the fully
bidirectional case.

diffusers is imported inside the tests, not at collection: importing it imports triton, and the
Triton interpreter tests need TRITON_INTERPRET set before that happens.
"""
from __future__ import annotations

import pytest
import torch

from model.ops.gdn import bidirectional_frame_delta_rule, bidirectional_frame_gdn
from tests.ops.test_gdn import assert_close, make_gdn_inputs


def reference():
    """diffusers' SanaWM scan functions (imported on first use)."""
    from diffusers.models.transformers import transformer_sana_wm

    return transformer_sana_wm


def to_reference(x: torch.Tensor) -> torch.Tensor:
    """[B, H, F, S, D] -> diffusers' [B, H, D, F·S]."""
    B, H, F, S, D = x.shape
    return x.permute(0, 1, 4, 2, 3).reshape(B, H, D, F * S)


def from_reference(x: torch.Tensor, frames: int) -> torch.Tensor:
    """diffusers' [B, H, D, F·S] -> [B, H, F, S, D]."""
    B, H, D, N = x.shape
    return x.reshape(B, H, D, frames, N // frames).permute(0, 1, 3, 4, 2)


def reference_backward_inputs(streams: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reverse scan as diffusers feeds it: queries flipped, keys/values/β flipped and shifted by
    one frame (zeros first), γ flipped and shifted (ones first)."""
    flipped = {}
    for name, x in streams.items():
        if name.startswith("q"):
            flipped[name] = torch.flip(x, dims=[2])
        elif name == "decay":
            flipped[name] = reference().flip_and_shift(x, dim=2, shift_val=1.0)
        else:
            flipped[name] = reference().flip_and_shift(x, dim=2, shift_val=0.0)
    return flipped


@pytest.mark.parametrize("frames, spatial", [(1, 4), (5, 6), (7, 3)], ids=["F1-S4", "F5-S6", "F7-S3"])
def test_bidirectional_gdn_equals_diffusers(frames, spatial):
    streams, _, _ = make_gdn_inputs(2, 2, frames, spatial, 8, 8)

    def scan(s: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        num, den = reference().torch_chunk_sana_gdn(
            to_reference(s["q_den"]), to_reference(s["k_den"]), to_reference(s["v"]),
            to_reference(s["q_num"]), to_reference(s["k_num"]), s["beta"], s["decay"],
            chunk_size=21, return_components=True,
        )
        return from_reference(num, frames), from_reference(den, frames)

    num_fwd, den_fwd = scan(streams)
    num_bwd, den_bwd = scan(reference_backward_inputs(streams))
    ref = (num_fwd + num_bwd.flip(2)) / (den_fwd + den_bwd.flip(2) + 1e-8)
    for backend in ("naive", "chunk"):
        got, _, _ = bidirectional_frame_gdn(**streams, eps=1e-8, backend=backend)
        assert_close(f"out ({backend})", ref, got, 1e-5)


@pytest.mark.parametrize("frames", [2, 5])
def test_bidirectional_camera_rule_equals_diffusers(frames):
    streams, _, _ = make_gdn_inputs(1, 3, frames, 5, 6, 6)
    rule = {name: streams[name] for name in ("q_num", "k_num", "v", "beta", "decay")}

    def scan(s: dict[str, torch.Tensor]) -> torch.Tensor:
        out = reference().torch_chunk_cam_single_path_delta_rule(
            to_reference(s["q_num"]), to_reference(s["k_num"]), to_reference(s["v"]), s["beta"], s["decay"],
            chunk_size=21,
        )
        return from_reference(out, frames)

    ref = scan(rule) + scan(reference_backward_inputs(rule)).flip(2)
    for backend in ("naive", "chunk"):
        got, _ = bidirectional_frame_delta_rule(
            rule["q_num"], rule["k_num"], rule["v"], rule["beta"], rule["decay"], backend=backend
        )
        assert_close(f"out ({backend})", ref, got, 1e-5)
