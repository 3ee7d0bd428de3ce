from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train.helpers import tiny_model, write_latent_clips

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.heavy
@pytest.mark.timeout(240)
def test_torchrun_two_gloo_ranks_end_with_identical_weights(tmp_path):
    latents = write_latent_clips(tmp_path / "latents", 4)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "tests" / "train" / "ddp_worker.py"), str(latents), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=220)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert all(r["world"] == 2 and r["backend"] == "gloo" for r in ranks)
    # The ranks drew different batches (their losses differ) yet hold the same weights: DDP averaged the grads.
    assert ranks[0]["losses"] != ranks[1]["losses"]
    for key, value in ranks[0]["model"].items():
        assert torch.equal(value, ranks[1]["model"][key]), key
    for key, value in ranks[0]["ema"].items():
        assert torch.equal(value, ranks[1]["ema"][key]), key
    start = tiny_model().state_dict()
    assert any(not torch.equal(start[k], v) for k, v in ranks[0]["model"].items()), "the weights must have trained"
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    # Self-forcing streams the chunks inside the DDP module's forward: the grads are still averaged.
    streamed = [torch.load(tmp_path / f"selfforce{r}.pt", weights_only=False) for r in (0, 1)]
    assert streamed[0]["losses"] != streamed[1]["losses"]
    for key, value in streamed[0]["model"].items():
        assert torch.equal(value, streamed[1]["model"][key]), key
    assert any(not torch.equal(ranks[0]["model"][k], v) for k, v in streamed[0]["model"].items())
