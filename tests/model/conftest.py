"""The model tests run tiny tensors, for which one intra-op thread is fastest on the shared 2-core
machine (two threads spin against each other and against other jobs); restored after each test."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
