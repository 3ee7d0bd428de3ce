"""The bidirectional compositions dispatched to the Triton kernel equal the chunked torch path.

Without a GPU the kernel runs under Triton's CPU interpreter, which must be switched on before the
kernel module is first imported (as in test_triton.py); sizes are tiny because interpreting is slow.
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from model.ops.gdn import bidirectional_frame_delta_rule, bidirectional_frame_gdn
from tests.ops.test_gdn import assert_close, make_gdn_inputs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype, ratio", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
def test_triton_bidirectional_gdn_matches_chunk(dtype, ratio):
    streams, initial_kv, initial_z = make_gdn_inputs(1, 2, 4, 5, 8, 8)
    streams = {
        name: x.to(DEVICE, dtype if name not in ("beta", "decay") else torch.float32) for name, x in streams.items()
    }
    states = dict(initial_kv=initial_kv.to(DEVICE), initial_z=initial_z.to(DEVICE))
    with torch.no_grad():
        ref = bidirectional_frame_gdn(**streams, **states, chunk_sizes=[3, 1], output_final_state=True)
        got = bidirectional_frame_gdn(
            **streams, **states, chunk_sizes=[3, 1], output_final_state=True, backend="triton"
        )
    assert got[0].dtype == dtype
    for name, r, g in zip(["out", "final_kv", "final_z"], ref, got):
        assert_close(name, r.float(), g.float(), ratio)


def test_triton_camera_rule_matches_chunk_and_refuses_grads():
    streams, initial_kv, _ = make_gdn_inputs(1, 1, 3, 4, 6, 5)
    q, k, v = (streams[name].to(DEVICE) for name in ("q_num", "k_num", "v"))
    beta, decay = streams["beta"].to(DEVICE), streams["decay"].to(DEVICE)
    with torch.no_grad():
        ref = bidirectional_frame_delta_rule(q, k, v, beta, decay, initial_state=initial_kv.to(DEVICE),
                                             output_final_state=True)
        got = bidirectional_frame_delta_rule(q, k, v, beta, decay, initial_state=initial_kv.to(DEVICE),
                                             output_final_state=True, backend="triton")
    assert_close("out", ref[0], got[0], 1e-5)
    assert_close("final_state", ref[1], got[1], 1e-5)
    with pytest.raises(NotImplementedError, match="forward-only"):
        bidirectional_frame_delta_rule(q.requires_grad_(True), k, v, beta, decay, backend="triton")
