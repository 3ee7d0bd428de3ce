"""Rewind and branch with the real tiny model on CPU (fixed seed): rewinding to chunk k and carrying
on gives exactly the frames of a fresh run restored from that chunk's snapshot; the recording keeps
both branches, linked; snapshots do not grow with the walk."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.config import StreamConfig
from controls.integrator import InputSnapshot
from streaming.buffer import FrameBuffer
from streaming.episode import Episode
from streaming.recorder import SessionRecorder
from streaming.rewind import RewindableJob, snapshot_nbytes
from streaming.worker import InputEnvelope
from tests.app.helpers import fake_runtime, tiny_runtime

FPS = 16.0


def envelope(seq: int, keys: int, yaw: float) -> InputEnvelope:
    snap = InputSnapshot(seq=seq, client_time_ms=float(seq), keys=keys, yaw_deg=yaw, pitch_deg=0.0, roll_deg=0.0)
    return InputEnvelope(seq=seq, snapshot=snap, keys=keys, look=(yaw, 0.0, 0.0))



def test_rewind_equals_a_fresh_run_restored_from_the_snapshot(tmp_path, one_torch_thread):
    runtime = tiny_runtime(StreamConfig(width=32, height=24, fps=FPS, idle_chunks=0))
    start = runtime.start_view("scene:1")
    loop = asyncio.new_event_loop()
    K = runtime.K
    recorder = SessionRecorder(tmp_path, "s1", fps=FPS, intrinsics=(K[0, 0], K[1, 1], K[0, 2], K[1, 2]), width=32, height=24, walk_start_image=start.image)
    recorder.set_consent(True)
    job = RewindableJob(
        "s1", runtime.make_generator(), lambda: runtime.make_integrator(start.world_T_cam), FrameBuffer(loop, 64),
        start.image, start.world_T_cam, InputEnvelope(-1, None, 0, (0.0, 0.0, 0.0)), idle_chunks=0, recorder=recorder, fps=FPS,
    )
    try:
        job.submit_input(envelope(1, 1, 0.0))
        original = [job.run_chunk() for _ in range(5)]  # walk frames 0-8, 9-16, ..., 33-40
        # Once the KV window (sink + 2 chunks) is full, every snapshot has the same size.
        sizes = {snapshot_nbytes(b.generator) for b in list(job.ring)[2:]}
        assert len(sizes) == 1, f"snapshots grow with the walk: {sizes}"
        k = 3
        boundary = next(b for b in job.ring if b.walk_frame == 9 + 8 * (k - 1))
        # 41 frames generated; 1 s back = frame 25 = the boundary before chunk 3.
        job.request_rewind(1.0)
        replay = job.run_chunk()
        job.submit_input(envelope(2, 9, 20.0))
        branch = [replay, job.run_chunk()]
        recorder.close()
    finally:
        loop.close()
    assert job.rewinds == 1
    # Same input after the rewind: chunk 3 again, bit for bit.
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.world_T_cam, b.world_T_cam) for a, b in zip(original[k], replay))

    # A fresh generator and integrator restored from the boundary, given the same inputs.
    gen = runtime.make_generator()
    gen.start(start.image, start.world_T_cam)
    gen.restore(boundary.generator)
    integrator = runtime.make_integrator(start.world_T_cam)
    integrator.restore(boundary.integrator)
    fresh = []
    for env in (envelope(1, 1, 0.0), envelope(2, 9, 20.0)):
        poses = integrator.advance(env.snapshot, gen.frames_for_next_chunk())
        fresh.append((gen.step(poses), poses))
    for frames, (images, poses) in zip(branch, fresh):
        assert np.array_equal(np.stack([f.image for f in frames]), images)
        assert np.array_equal(np.stack([f.world_T_cam for f in frames]), poses)
    assert not np.array_equal(branch[1][-1].world_T_cam, original[k + 1][-1].world_T_cam), "the branch walked elsewhere"

    # The recording keeps both branches, linked.
    first, second = (Episode.open(p) for p in recorder.episodes)
    assert first.n_frames == 41 and "parent_episode" not in first.meta
    assert second.meta["parent_episode"] == first.name and second.meta["branch_from_frame"] == 25
    assert second.n_frames == 16 and second.meta["start_png"] == "first_frame"
    np.testing.assert_array_equal(second.world_T_cams[:8], first.world_T_cams[25:33])
    (a, used_a), (b, used_b) = second.lineage()
    assert (a.name, used_a, b.name, used_b) == (first.name, 25, second.name, 16)
    print(f"snapshot bytes (tiny model, 32x24): {sizes.pop()}")


def test_rewind_past_the_start_restarts_and_bad_seconds_are_refused():
    runtime = fake_runtime(StreamConfig(width=64, height=48, fps=FPS, idle_chunks=0))
    start = runtime.start_view("scene:1")
    loop = asyncio.new_event_loop()
    job = RewindableJob("s2", runtime.make_generator(), lambda: runtime.make_integrator(start.world_T_cam), FrameBuffer(loop, 64),
                        start.image, start.world_T_cam, InputEnvelope(-1, None, 0, (0.0, 0.0, 0.0)), idle_chunks=0, fps=FPS, ring_chunks=2)
    try:
        first = [job.run_chunk() for _ in range(4)]
        assert [b.walk_frame for b in job.ring] == [17, 25]
        job.request_rewind(1.5)  # frame 33 - 24 = 9: older than the ring holds -> its oldest boundary
        again = job.run_chunk()
        assert again[0].world_T_cam is not None and job.generator.frame_index == 25
        assert np.array_equal(np.stack([f.image for f in again]), np.stack([f.image for f in first[2]]))
        job.request_rewind(60.0)  # before the walk: it starts again
        restarted = job.run_chunk()
        assert len(restarted) == 9 and np.array_equal(np.stack([f.image for f in restarted]), np.stack([f.image for f in first[0]]))
        for bad in (0, -1, float("nan"), "3"):
            with pytest.raises(ValueError, match="rewind seconds"):
                job.request_rewind(bad)
    finally:
        loop.close()
