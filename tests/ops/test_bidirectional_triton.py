"""The bidirectional compositions dispatched to the Triton kernel equal the chunked torch path.

Without a GPU the kernel runs under Triton's CPU interpreter, which works only if TRITON_INTERPRET=1
is set before `triton` itself is first imported (its standard-library functions are decorated at
import). In a whole-suite run some earlier test module may already have imported triton (diffusers
does), so when that happened without the variable the checks run in a fresh Python process that sets
it; otherwise they run here. Sizes are tiny because interpreting is slow.
"""
from __future__ import annotations

import os
import subprocess
import sys

import torch

TRITON_PRELOADED = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Imported after TRITON_INTERPRET is set above (see the module docstring).
import pytest  # noqa: E402

from model.ops.gdn import bidirectional_frame_delta_rule, bidirectional_frame_gdn  # noqa: E402
from tests.ops.test_gdn import assert_close, make_gdn_inputs  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
IN_PROCESS = DEVICE == "cuda" or not TRITON_PRELOADED
DTYPES = {"fp32": (torch.float32, 1e-5), "bf16": (torch.bfloat16, 2e-2)}


def check_gdn(dtype_name: str) -> None:
    dtype, ratio = DTYPES[dtype_name]
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


def check_camera_rule() -> None:
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


def check_all() -> None:
    for dtype_name in DTYPES:
        check_gdn(dtype_name)
    check_camera_rule()


def test_triton_bidirectional_compositions_match_chunk():
    if IN_PROCESS:
        check_all()
        return
    code = "import tests.ops.test_bidirectional_triton as t; t.check_all(); print('checked')"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "checked", result.stdout + result.stderr
