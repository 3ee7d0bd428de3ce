from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from streaming.buffer import BufferClosed, FrameBuffer, Pacer, StreamFrame, VIDEO_CLOCK_HZ


def _frames(start: int, n: int) -> list[StreamFrame]:
    img = np.zeros((4, 4, 3), np.uint8)
    return [StreamFrame(image=img, frame_id=start + i, chunk_id=0, input_seq=0, world_T_cam=np.eye(4)) for i in range(n)]


async def test_latest_wins_and_counts_drops():
    buf = FrameBuffer(asyncio.get_running_loop(), capacity=5)
    assert buf.put_chunk(_frames(0, 4)) == 0
    assert buf.put_chunk(_frames(4, 4)) == 3
    assert buf.drops == 3 and len(buf) == 5
    assert (await buf.get()).frame_id == 3
    assert buf.newest_nowait().frame_id == 7
    assert buf.drops == 6 and len(buf) == 0


async def test_handoff_from_another_thread_wakes_the_loop():
    buf = FrameBuffer(asyncio.get_running_loop(), capacity=16)

    def producer():
        for c in range(3):
            time.sleep(0.02)
            buf.put_chunk(_frames(4 * c, 4))
        buf.close()

    threading.Thread(target=producer).start()
    got = []
    with pytest.raises(BufferClosed):
        while True:
            got.append((await asyncio.wait_for(buf.get(), 2.0)).frame_id)
    assert got == list(range(12))


async def test_pacer_plays_at_fps_with_increasing_pts_and_drops_stale():
    buf = FrameBuffer(asyncio.get_running_loop(), capacity=40)
    pacer = Pacer(buf, fps=50.0, max_queue=6)
    buf.put_chunk(_frames(0, 10))
    t0 = time.monotonic()
    out = [await pacer.next_frame() for _ in range(6)]
    elapsed = time.monotonic() - t0
    ids = [f.frame_id for f, _ in out]
    pts = [p for _, p in out]
    # 10 queued, at most 6 may be queued at a slot: the 4 oldest are stale at the first one.
    assert ids == [4, 5, 6, 7, 8, 9] and pacer.stale_drops == 4 and pacer.drops == 4
    assert all(b > a for a, b in zip(pts, pts[1:]))
    assert 5 / 50 * 0.8 <= elapsed <= 1.0
    assert abs(pts[-1] - pts[0] - 5 / 50 * VIDEO_CLOCK_HZ) < 0.05 * VIDEO_CLOCK_HZ


async def test_pacer_does_not_burst_after_waiting():
    loop = asyncio.get_running_loop()
    buf = FrameBuffer(loop, capacity=40)
    pacer = Pacer(buf, fps=20.0, max_queue=10)
    loop.call_later(0.3, buf.put_chunk, _frames(0, 4))
    first, _ = await pacer.next_frame()
    t = time.monotonic()
    for _ in range(3):
        await pacer.next_frame()
    assert first.frame_id == 0
    assert time.monotonic() - t >= 3 / 20 * 0.8


def test_bad_settings_raise():
    loop = asyncio.new_event_loop()
    with pytest.raises(ValueError, match="capacity"):
        FrameBuffer(loop, 0)
    with pytest.raises(ValueError, match="fps"):
        Pacer(FrameBuffer(loop, 2), fps=0, max_queue=1)
    loop.close()
