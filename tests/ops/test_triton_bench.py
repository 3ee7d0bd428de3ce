"""The GPU benchmark's code path, run on CPU under Triton's interpreter at a tiny size.

No figure is checked here (interpreted timings mean nothing); this runs every row's code so the
benchmark is ready to run on a CUDA machine.
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from model.ops import gpu_bench

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
HOST = "cpu" if INTERPRETING else "cuda"


def test_rows_cover_every_path_and_agree_with_naive():
    rows = gpu_bench._rows([(1, 1, 2, 5, 20, 24)], HOST, torch.bfloat16, repeats=1, sweep=[(16, 16, 4)])
    paths = [row[2] for row in rows]
    assert paths[:4] == ["naive (per-frame torch loop)", "chunk (torch transition form)", "triton (default blocks)",
                         "triton BV=16 BS=16 warps=4"]
    assert paths[4].startswith("fla chunk_gated_delta_rule")
    assert [path.split(",")[1].split()[0] for path in paths[5:]] == ["naive", "chunk", "triton"]
    assert all(len(row) == len(gpu_bench.CUDA_HEADER) and row[0] == "1,1,2,5,20,24" for row in rows)
    for row in rows[:4] + rows[5:]:
        assert float(row[3]) > 0
        # bf16 outputs: within a couple of bf16 ulps of the naive reference
        assert float(row[5]) < 1e-2, row


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_rows_refuses_without_cuda():
    with pytest.raises(RuntimeError, match="CUDA"):
        gpu_bench.cuda_rows()
    assert gpu_bench.main([]) == 1
