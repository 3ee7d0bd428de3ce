"""Giving freed memory back to the system.

A walk's tensors and frames are freed when its session ends, but glibc's malloc keeps freed heap
memory for reuse, split across its arenas; after many sessions the process's RSS is mostly memory
that malloc holds free (`python run.py bench soak` measures it). `trim_allocator` asks malloc to
return what it can (`malloc_trim(0)`). ctypes releases the GIL for the call, so the thread that makes
it does not hold up the event loop.
"""
from __future__ import annotations

import ctypes
import functools


@functools.cache
def _malloc_trim():
    # The symbols already loaded into the process: glibc's malloc_trim on Linux, absent elsewhere.
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def trim_allocator() -> bool:
    """Return malloc's free memory to the system; False where the C library has no malloc_trim (not glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
