"""Fixtures shared by the app tests."""
from __future__ import annotations

import logging

import aioice.stun
import pytest


@pytest.fixture
def fast_stun(monkeypatch):
    """One quick STUN retry instead of aioice's default back-off, so loopback peers connect (or give up) fast."""
    monkeypatch.setattr(aioice.stun, "RETRY_MAX", 1)
    monkeypatch.setattr(aioice.stun, "RETRY_RTO", 0.1)


@pytest.fixture
def errors(caplog):
    """Log records at ERROR or above (aiohttp's 'Error handling request', asyncio's 'Task exception
    was never retrieved', ...): a test that expects none asserts on it."""
    caplog.set_level(logging.WARNING)
    return lambda: [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
