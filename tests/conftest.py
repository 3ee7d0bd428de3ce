"""Shared test helpers.

Heavy tests take their sizes from `ci_size(full, ci)`: the full size on a developer machine, the
smaller one when CI=true, so CI runs every test (never skipped) within its time budget.
"""
from __future__ import annotations

import os

import pytest
import torch

# Triton's CPU interpreter works only when TRITON_INTERPRET is set before triton is first imported,
# and diffusers imports triton while tests are collected; so set it here, first, on machines
# without CUDA.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def ci_size(full, ci):
    """The full-size value locally, the smaller one under CI."""
    return ci if IN_CI else full


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread: tiny ops are dominated by thread synchronisation, which a busy
    second core makes slow. Modules opt in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
