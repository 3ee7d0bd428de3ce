"""The model tests run tiny tensors, for which one intra-op thread is fastest on the shared 2-core
machine (two threads spin against each other and against other jobs); restored after each test."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test of this folder runs on one torch thread."""
    yield
