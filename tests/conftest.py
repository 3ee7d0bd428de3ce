"""Shared test helpers.

Heavy tests take their sizes from `ci_size(full, ci)`: the full size on a developer machine, the
smaller one when CI=true, so CI runs every test (never skipped) within its time budget.
"""
from __future__ import annotations

import os

import pytest
import torch

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def ci_size(full, ci):
    """The full-size value locally, the smaller one under CI."""
    return ci if IN_CI else full


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
