"""A scripted 5 s walk through the app's Session object (no browser): the recording holds every
generated frame once, in the video and in frames.jsonl, with the poses the integrator produced."""
from __future__ import annotations

import asyncio
import json

import numpy as np

from app.config import StreamConfig
from app.session import Session
from controls.integrator import ControlSettings, InputSnapshot, PoseIntegrator
from streaming.episode import Episode
from streaming.worker import GenerationWorker
from tests.app.helpers import fake_runtime

SECONDS = 5.0


async def test_scripted_walk_is_recorded(tmp_path):
    stream = StreamConfig(width=64, height=48, fps=16.0, idle_chunks=0)
    runtime = fake_runtime(stream)
    worker = GenerationWorker(num_threads=1)
    start = runtime.start_view("scene:1")
    session = Session("s1", "websocket", runtime, worker, start, 64 * 1024, record_dir=tmp_path)
    assert session.handle_text(json.dumps({"type": "record", "on": True})) is not None
    worker.start()
    session.begin()
    # Script: walk forward, then forward while turning right, then strafe left looking down.
    script = [(0, 1, 0.0, 0.0), (24, 1, 30.0, 0.0), (48, 4, 30.0, -10.0), (64, 0, 45.0, -10.0)]
    wanted = round(SECONDS * stream.fps) + 1
    seen = []
    try:
        sent = 0
        while len(seen) < wanted:
            if sent < len(script) and len(seen) >= script[sent][0]:
                _, keys, yaw, pitch = script[sent]
                sent += 1
                session.handle_text(json.dumps({"type": "input", "seq": sent, "t": 1000.0 + sent, "keys": keys, "yaw": yaw, "pitch": pitch, "roll": 0.0}))
            seen.append(await asyncio.wait_for(session.buffer.get(), 30))
    finally:
        await worker.astop()
        await session.close("test over")
    generated = session.job.frames_done

    (folder,) = session.recorder.episodes
    ep = Episode.open(folder)
    assert ep.complete and ep.meta["session_id"] == "s1" and ep.meta["model"] == "fake"
    assert ep.meta["start_png"] == "walk_start_image" and np.array_equal(ep.start_image(), start.image)
    # frame count = video frames = jsonl lines = frames generated, at least the 5 s asked for
    assert ep.n_frames == generated >= wanted
    video = ep.read_video()
    assert len(video) == ep.n_frames == sum(1 for _ in (folder / "frames.jsonl").open())
    # What the viewer got is what was recorded, frame for frame.
    for frame, row in zip(seen, ep.rows):
        assert row["frame_id"] == frame.frame_id and row["chunk_id"] == frame.chunk_id
        np.testing.assert_array_equal(np.asarray(row["c2w"]), frame.world_T_cam)
    assert np.abs(video[: len(seen)].astype(int) - np.stack([f.image for f in seen]).astype(int)).mean() < 4

    # Replaying the recorded inputs chunk by chunk through a fresh integrator gives the recorded poses.
    integrator = PoseIntegrator(ControlSettings(), start.world_T_cam, stream.fps)
    poses = [start.world_T_cam]
    chunks = sorted({row["chunk_id"] for row in ep.rows})
    for c in chunks:
        rows = [row for row in ep.rows if row["chunk_id"] == c]
        n = len(rows) - (1 if c == 0 else 0)
        i = rows[0]["input"]
        snap = None if i is None else InputSnapshot(seq=i["seq"], client_time_ms=i["client_t_ms"], keys=i["keys"], yaw_deg=i["yaw"], pitch_deg=i["pitch"], roll_deg=i["roll"], look_dx_px=i["dx"], look_dy_px=i["dy"])
        poses.extend(integrator.advance(snap, n))
    np.testing.assert_allclose(ep.world_T_cams, np.stack(poses), atol=1e-12)
    assert {row["input"]["keys"] for row in ep.rows if row["input"]} >= {1, 4}
    assert all(row["latency"]["chunk_ms"] > 0 for row in ep.rows)
    assert all(row["latency"]["input_to_frame_ms"] >= 0 for row in ep.rows if row["input"])
