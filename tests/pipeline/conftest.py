"""Pipeline test fixtures: one torch thread per test (the cores are shared and tiny models gain nothing
from more) and the tiny random releases, written once per session."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.pipeline.tiny_release import write_bidirectional, write_chunk_causal, write_streaming


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test of this folder runs on one torch thread."""
    yield


@pytest.fixture(scope="session")
def releases(tmp_path_factory):
    """A folder holding SANA-WM_bidirectional, SANA-WM_chunk_causal and SANA-WM_streaming side by side."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("releases")
    write_bidirectional(root / "SANA-WM_bidirectional")
    write_chunk_causal(root / "SANA-WM_chunk_causal")
    write_streaming(root / "SANA-WM_streaming")
    torch.set_num_threads(threads)
    return root


@pytest.fixture(scope="session")
def image():
    """A random 80x48 RGB start image (another aspect than the releases' 64x64)."""
    return (np.random.default_rng(0).random((48, 80, 3)) * 255).astype(np.uint8)
