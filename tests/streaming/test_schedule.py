"""Deadline scheduling and measured capacity: `streaming.schedule` and the worker's batched turns."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from streaming.schedule import MARGIN_S, SAFETY, BatchCost, due_in_s
from streaming.worker import GenerationWorker, InputEnvelope
from tests.streaming.fakes import FakeSnapshot
from tests.streaming.test_worker import _drain, _job


def test_batch_cost_follows_measurements_and_extrapolates_on_the_safe_side():
    cost = BatchCost(smoothing=0.5)
    assert cost.estimate_ms(3) is None and cost.capacity(0.5, 8, limit=8) is None
    cost.observe(2, 200.0)
    # One point: proportional to rows (a batch is never assumed cheaper per row than measured).
    assert cost.estimate_ms(4) == pytest.approx(400.0)
    cost.observe(2, 100.0)
    assert cost.estimate_ms(2) == pytest.approx(150.0)  # moving average
    cost.observe(4, 230.0)
    # The line through (2, 150) and (4, 230): 80 ms per 2 rows.
    assert cost.estimate_ms(6) == pytest.approx(310.0) and cost.estimate_ms(3) == pytest.approx(190.0)
    # 0.9 of a 500 ms period: 6 rows (310 ms) fit, 8 rows (390) fit, 9 rows = a batch of 8 + 1 do not.
    assert cost.capacity(0.5, max_batch=8, limit=16) == 8
    assert cost.capacity(0.5, max_batch=8, limit=5) == 5
    assert cost.capacity(0.1, max_batch=8, limit=16) == 1  # not even one fits: still one session
    with pytest.raises(ValueError):
        cost.observe(0, 10.0)


def test_a_batch_starts_when_waiting_longer_would_make_its_earliest_member_late():
    assert due_in_s(0.5, None) == 0.0
    assert due_in_s(0.5, 200.0) == pytest.approx(0.5 - SAFETY * 0.2 - MARGIN_S)
    assert due_in_s(0.1, 200.0) == 0.0


async def test_batched_worker_serves_every_walk_and_batches_them():
    loop = asyncio.get_running_loop()
    worker = GenerationWorker(max_batch=4)
    jobs = [_job(loop, f"j{i}") for i in range(3)]
    jobs[0].submit_input(InputEnvelope(5, FakeSnapshot(5, 1), 1, (0.0, 0.0, 0.0)))
    for job in jobs:
        worker.add(job)
    worker.start()
    try:
        frames = await asyncio.gather(*(_drain(job, 25) for job in jobs))
    finally:
        await worker.astop()
    for got in frames:
        assert [f.frame_id for f in got] == list(range(25))
    # walk 0 walks +z at 2 m/s, the others stand: batching did not mix up their poses.
    assert np.allclose([f.world_T_cam[2, 3] for f in frames[0]], 2.0 * np.arange(25) / 16)
    assert all(f.world_T_cam[2, 3] == 0 for got in frames[1:] for f in got)
    assert worker.batches_done < worker.chunks_done, "no two walks ever shared a batch"
    assert max(j.chunks_done for j in jobs) - min(j.chunks_done for j in jobs) <= 1
    assert worker.cost.points, "batch times were measured"


async def test_the_walk_with_the_least_frames_queued_goes_first():
    loop = asyncio.get_running_loop()
    worker = GenerationWorker(max_batch=1)
    full, empty = _job(loop, "full"), _job(loop, "empty")
    for job in (full, empty):
        job.run_chunk()  # both walks started, 9 frames queued each
    await _drain(empty, 9)
    worker.add(full)
    worker.add(empty)
    batch, _ = worker._next_batch()
    assert batch == [empty]


async def test_a_batch_is_cut_only_where_the_rest_still_fits_the_same_chunk_of_video():
    loop = asyncio.get_running_loop()
    worker = GenerationWorker(max_batch=4)
    jobs = [_job(loop, f"j{i}") for i in range(4)]
    for job in jobs:
        worker.add(job)
    # A first chunk is 9 frames: 562.5 ms of video at 16 fps. Two batches of two (2 × 250 ms) fit it where
    # one batch of four (700 ms) does not: the lead's two go first.
    for rows, ms in ((1, 150.0), (2, 250.0), (4, 700.0)):
        worker.cost.observe(rows, ms)
    batch, _ = worker._next_batch()
    assert len(batch) == 2
    # 300 ms alone, 500 for two, 900 for four: no split fits one chunk, so one batch of four, the most frames
    # a second (two batches of two would take 1000 ms).
    worker.cost = BatchCost()
    for rows, ms in ((1, 300.0), (2, 500.0), (4, 900.0)):
        worker.cost.observe(rows, ms)
    batch, _ = worker._next_batch()
    assert len(batch) == 4
    worker.cost = BatchCost()
    batch, _ = worker._next_batch()
    assert len(batch) == 4  # nothing measured: all ready walks


async def test_a_slow_spell_does_not_keep_batches_small():
    """After a slow spell only single walks were measured; the estimate for four, extrapolated through the
    origin, says 4 × 200 ms. Cutting to two (400 ms) would leave the other two 400 ms more: past one chunk
    of video, so the worker runs all four and measures them again."""
    loop = asyncio.get_running_loop()
    worker = GenerationWorker(max_batch=4)
    for i in range(4):
        worker.add(_job(loop, f"j{i}"))
    worker.cost.observe(1, 200.0)
    assert worker.cost.estimate_ms(4) == pytest.approx(800.0)
    batch, _ = worker._next_batch()
    assert len(batch) == 4


def test_a_row_count_not_measured_for_a_while_is_forgotten():
    now = [0.0]
    cost = BatchCost(max_age_s=10.0, clock=lambda: now[0])
    cost.observe(4, 2000.0)  # a slow spell
    now[0] = 5.0
    cost.observe(1, 200.0)
    assert [p.rows for p in cost.points] == [1, 4]
    now[0] = 11.0
    cost.observe(1, 200.0)
    # The batch of 4 was last seen 11 s ago: forgotten, and estimated from the fresh point again.
    assert [p.rows for p in cost.points] == [1] and cost.estimate_ms(4) == pytest.approx(800.0)


async def test_the_worker_does_not_wait_while_ready_walks_are_left_over():
    loop = asyncio.get_running_loop()
    worker = GenerationWorker(max_batch=2)
    jobs = [_job(loop, f"j{i}") for i in range(3)]
    for job in jobs:
        job.run_chunk()
        await _drain(job, 5)  # 4 frames left each: 250 ms of slack, room for a chunk
        worker.add(job)
    worker.cost.observe(1, 10.0)
    worker.cost.observe(2, 12.0)
    # A batch of 2 takes ~12 ms: not due for 200 ms, but the third walk is left over.
    batch, wait = worker._next_batch()
    assert len(batch) == 2 and wait == 0.0
    worker.remove(jobs[2])
    worker._running = []
    batch, wait = worker._next_batch()
    assert batch == [] and wait > 0
