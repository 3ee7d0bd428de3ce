"""Frame handoff from the generation thread to the event loop, and the pacer that plays frames out.

The worker thread appends whole chunks (each frame with its pose, chunk id and input seq) with
`FrameBuffer.put_chunk`; the event loop reads them with `await buffer.get()`. The buffer is bounded
and the newest frames win: beyond `capacity` the oldest frames are dropped and counted. The only
thing the producer thread does to the event loop is `loop.call_soon_threadsafe(event.set)`.

`Pacer.next_frame()` is the playout clock of one viewer: it releases at most one frame per
1/fps seconds, waits when the buffer is empty (after a wait the clock restarts, so a late chunk is
not replayed as a burst), and drops queued frames that are stale (more than `max_queue` frames
waiting), counting each drop. It stamps presentation times on a 90 kHz clock.
"""
from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field

import numpy as np

VIDEO_CLOCK_HZ = 90_000


@dataclass(frozen=True)
class StreamFrame:
    """One generated frame and everything the page and the recorder need to know about it."""

    image: np.ndarray  # [H, W, 3] uint8
    frame_id: int
    chunk_id: int
    input_seq: int
    world_T_cam: np.ndarray  # [4, 4] camera-to-world, OpenCV axes, metres
    chunk_ms: float = 0.0
    produced_t: float = field(default_factory=time.monotonic)


class BufferClosed(Exception):
    """Raised by `FrameBuffer.get` once the buffer is closed and empty."""


class FrameBuffer:
    """Bounded latest-wins frame queue, written by one thread and read on one asyncio loop.

    Args:
        loop: the event loop that awaits `get()`.
        capacity: frames kept at most; older frames beyond it are dropped (counted in `drops`).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int):
        if capacity < 1:
            raise ValueError(f"FrameBuffer capacity must be >= 1, got {capacity}")
        self._loop = loop
        self.capacity = capacity
        self._frames: collections.deque[StreamFrame] = collections.deque()
        self._lock = threading.Lock()
        self._event = asyncio.Event()
        self._closed = False
        self.drops = 0
        self.frames_in = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)

    @property
    def closed(self) -> bool:
        return self._closed

    def put_chunk(self, frames: list[StreamFrame]) -> int:
        """Append frames (any thread). Returns how many old frames this call dropped."""
        with self._lock:
            if self._closed:
                return 0
            self._frames.extend(frames)
            self.frames_in += len(frames)
            dropped = 0
            while len(self._frames) > self.capacity:
                self._frames.popleft()
                dropped += 1
            self.drops += dropped
        self._wake()
        return dropped

    def clear(self) -> int:
        """Discard every queued frame (reset and rewind); they are not counted as drops."""
        with self._lock:
            n = len(self._frames)
            self._frames.clear()
        return n

    def close(self) -> None:
        """Wake every waiter; `get()` raises BufferClosed once the queue is empty."""
        with self._lock:
            self._closed = True
        self._wake()

    def _wake(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._event.set)
        except RuntimeError:
            # The loop has shut down; nobody is left to wake.
            pass

    def pop_nowait(self) -> StreamFrame | None:
        """The oldest queued frame, or None."""
        with self._lock:
            return self._frames.popleft() if self._frames else None

    def drop_oldest(self, keep: int) -> int:
        """Drop the oldest frames until at most `keep` remain; returns how many went (counted)."""
        with self._lock:
            dropped = 0
            while len(self._frames) > keep:
                self._frames.popleft()
                dropped += 1
            self.drops += dropped
        return dropped

    def newest_nowait(self) -> StreamFrame | None:
        """Skip to the newest frame: drop (and count) everything older, return the newest or None."""
        with self._lock:
            if not self._frames:
                return None
            dropped = len(self._frames) - 1
            frame = self._frames[-1]
            self._frames.clear()
            self.drops += dropped
        return frame

    async def wait(self) -> None:
        """Wait (event loop only) until at least one frame is queued; raises BufferClosed if closed."""
        while True:
            with self._lock:
                if self._frames:
                    return
                if self._closed:
                    raise BufferClosed()
                self._event.clear()
            await self._event.wait()

    async def get(self) -> StreamFrame:
        """The oldest queued frame, waiting for one (event loop only)."""
        while True:
            await self.wait()
            frame = self.pop_nowait()
            if frame is not None:
                return frame


class Pacer:
    """Plays frames from a `FrameBuffer` at `fps`, dropping stale ones.

    `max_queue` frames may wait in the buffer at a playout slot; older ones are stale and are
    dropped. The buffer counts every drop (`buffer.drops`, overflow and stale); `stale_drops` is the
    pacer's share of them.
    """

    def __init__(self, buffer: FrameBuffer, fps: float, max_queue: int):
        if fps <= 0:
            raise ValueError(f"Pacer fps must be > 0, got {fps}")
        if max_queue < 1:
            raise ValueError(f"Pacer max_queue must be >= 1, got {max_queue}")
        self.buffer = buffer
        self.period = 1.0 / fps
        self.max_queue = max_queue
        self.stale_drops = 0
        self.frames_out = 0
        self._t0: float | None = None
        self._next_t = 0.0
        self._last_pts = -1

    @property
    def drops(self) -> int:
        return self.buffer.drops

    async def next_frame(self) -> tuple[StreamFrame, int]:
        """The next frame to show and its pts on the 90 kHz clock (strictly increasing)."""
        now = time.monotonic()
        if now < self._next_t:
            await asyncio.sleep(self._next_t - now)
        if len(self.buffer) == 0:
            await self.buffer.wait()
            # The buffer ran dry: restart the clock at arrival instead of bursting to catch up.
            self._next_t = time.monotonic()
        self.stale_drops += self.buffer.drop_oldest(self.max_queue)
        frame = self.buffer.pop_nowait()
        if frame is None:
            return await self.next_frame()
        shown = time.monotonic()
        if self._t0 is None:
            self._t0 = shown
        # Keep the slot grid while on time (sleep jitter is absorbed); restart it when late by a period.
        base = self._next_t if shown - self._next_t < self.period else shown
        self._next_t = base + self.period
        pts = max(round((shown - self._t0) * VIDEO_CLOCK_HZ), self._last_pts + 1)
        self._last_pts = pts
        self.frames_out += 1
        return frame, pts
