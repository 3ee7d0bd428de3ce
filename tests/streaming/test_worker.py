from __future__ import annotations

import asyncio
import time

import numpy as np

from streaming.buffer import FrameBuffer
from streaming.generator import ChunkGenerator, GeneratorConfig
from streaming.worker import GenerationWorker, InputEnvelope, StreamJob
from tests.streaming.fakes import FakeConditioner, FakeIntegrator, FakeModel, FakeSnapshot, FakeVAE


def _job(loop, name: str, idle_chunks: int = 0) -> StreamJob:
    gen = ChunkGenerator(FakeModel(), FakeVAE(), GeneratorConfig(), (32.0, 32.0, 16.0, 16.0), conditioner_factory=FakeConditioner)
    return StreamJob(
        session_id=name,
        generator=gen,
        make_integrator=lambda: FakeIntegrator(np.eye(4), fps=16.0, speed=2.0),
        buffer=FrameBuffer(loop, capacity=12),
        start_image=np.zeros((32, 32, 3), np.uint8),
        world_T_cam0=np.eye(4),
        standing_input=InputEnvelope(0, FakeSnapshot(0, 0), 0, (0.0, 0.0, 0.0)),
        idle_chunks=idle_chunks,
    )


async def _drain(job: StreamJob, n: int, timeout: float = 10.0) -> list:
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out.append(await asyncio.wait_for(job.buffer.get(), timeout))
    return out


async def test_frames_carry_pose_seq_and_ids_and_sessions_share_fairly():
    loop = asyncio.get_running_loop()
    worker = GenerationWorker(num_threads=None)
    a, b = _job(loop, "a"), _job(loop, "b")
    worker.add(a)
    worker.add(b)
    a.submit_input(InputEnvelope(5, FakeSnapshot(5, 1), 1, (0.0, 0.0, 0.0)))
    assert not a.submit_input(InputEnvelope(4, FakeSnapshot(4, 0), 0, (0.0, 0.0, 0.0)))
    worker.start()
    try:
        fa, fb = await asyncio.gather(_drain(a, 25), _drain(b, 25))
    finally:
        await worker.astop()
    assert [f.frame_id for f in fa] == list(range(25)) and [f.frame_id for f in fb] == list(range(25))
    assert [f.chunk_id for f in fa[:10]] == [0] * 9 + [1]
    assert {f.input_seq for f in fa} == {5} and {f.input_seq for f in fb} == {0}
    # Session a walks +z at 2 m/s: frame k sits at 2 k / 16 m; b stands at the origin.
    assert np.allclose([f.world_T_cam[2, 3] for f in fa], 2.0 * np.arange(25) / 16)
    assert all(f.world_T_cam[2, 3] == 0 for f in fb)
    assert abs(a.chunks_done - b.chunks_done) <= 1


async def test_idle_job_pauses_and_resumes_on_input():
    loop = asyncio.get_running_loop()
    worker = GenerationWorker()
    job = _job(loop, "idle", idle_chunks=2)
    # Unchanged snapshots (heartbeats, sent all along) do not keep a standing camera generating.
    # The wrapper goes in before the worker starts, or the first chunk could run without it.
    original_step = job.generator.step

    def step_with_heartbeat(poses):
        frames = original_step(poses)
        job.submit_input(InputEnvelope(job.latest_input.seq + 1, FakeSnapshot(0, 0), 0, (0.0, 0.0, 0.0)))
        return frames

    job.generator.step = step_with_heartbeat
    worker.add(job)
    worker.start()
    try:
        await _drain(job, 9 + 8 + 8)
        # The worker marks the job paused on its own thread after the last idle chunk: wait for it
        # (bounded) rather than for a fixed time, which a loaded machine can overrun.
        for _ in range(100):
            if job.paused:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # and give a wrongly resumed job time to make another chunk
        assert job.paused and job.chunks_done == 3 and len(job.buffer) == 0 and job.latest_input.seq == 3
        job.submit_input(InputEnvelope(5, FakeSnapshot(5, 0), 0, (0.0, 0.0, 0.0)))
        assert job.paused, "a snapshot that does not move the camera keeps it paused"
        job.submit_input(InputEnvelope(6, FakeSnapshot(6, 1), 1, (0.0, 0.0, 0.0)))
        frames = await _drain(job, 8)
        assert frames[-1].input_seq == 6 and frames[-1].world_T_cam[2, 3] > 0
    finally:
        await worker.astop()


async def test_failing_job_is_removed_and_others_continue():
    loop = asyncio.get_running_loop()
    worker = GenerationWorker()
    bad, good = _job(loop, "bad"), _job(loop, "good")
    failures = []
    bad.on_failure = failures.append

    def boom(poses):
        raise RuntimeError("model exploded")

    bad.generator.step = boom
    worker.add(bad)
    worker.add(good)
    worker.start()
    try:
        frames = await _drain(good, 20)
    finally:
        await worker.astop()
    assert len(frames) == 20 and len(failures) == 1 and bad not in worker.jobs


async def test_reset_restarts_at_rest_and_keeps_settings():
    loop = asyncio.get_running_loop()
    worker = GenerationWorker()
    job = _job(loop, "reset")
    job.submit_settings("fast")
    job.submit_input(InputEnvelope(1, FakeSnapshot(1, 1), 1, (0.0, 0.0, 0.0)))
    worker.add(job)
    worker.start()
    try:
        walked = await _drain(job, 17)
        assert walked[-1].world_T_cam[2, 3] > 0
        job.request_reset()
        assert not job.submit_input(InputEnvelope(1, FakeSnapshot(1, 1), 1, (0.0, 0.0, 0.0))), "seqs stay stale across a reset"
        # The reset happens before the next chunk; frames from before it may still be queued.
        frames = await _drain(job, 9 + 8 + 9)
        restart = next(i for i, f in enumerate(frames) if f.world_T_cam[2, 3] == 0.0)
        after = frames[restart:]
        assert len(after) >= 9 and after[0].frame_id > walked[-1].frame_id
        # After the reset the held key is forgotten: the walk stands at the start until new input.
        assert all(f.world_T_cam[2, 3] == 0.0 for f in after) and job.integrator.settings == "fast"
    finally:
        await worker.astop()


async def test_a_removed_job_lets_go_of_its_memory_after_its_running_chunk():
    import threading
    import weakref

    loop = asyncio.get_running_loop()
    worker = GenerationWorker()
    idle, busy = _job(loop, "idle"), _job(loop, "busy")
    worker.add(idle)
    worker.add(busy)
    worker.start()
    try:
        await asyncio.gather(_drain(idle, 9), _drain(busy, 9))
        # Removed between chunks (its buffer too full for another): released at once, the generator
        # (model state) freed by refcount.
        deadline = time.monotonic() + 10
        while (len(idle.buffer) + 8 <= idle.buffer.capacity or worker._running is idle) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        generator = weakref.ref(idle.generator)
        worker.remove(idle)
        assert idle.generator is None and idle.integrator is None and len(idle.buffer) == 0 and generator() is None
        # Removed while its chunk runs: the chunk finishes, then the worker releases the job.
        entered, go_on = threading.Event(), threading.Event()
        step = busy.generator.step

        def slow_step(poses):
            entered.set()
            go_on.wait(10)
            return step(poses)

        busy.generator.step = slow_step
        # Make room for the next chunk until the worker is inside it.
        deadline = time.monotonic() + 10
        while not entered.is_set() and time.monotonic() < deadline:
            busy.buffer.pop_nowait()
            await asyncio.sleep(0.01)
        assert entered.is_set()
        worker.remove(busy)
        assert busy.generator is not None
        go_on.set()
        deadline = time.monotonic() + 10
        while (busy.generator is not None or worker.trims < 2) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert busy.generator is None and busy.failed is None and worker.trims >= 1
    finally:
        await worker.astop()
