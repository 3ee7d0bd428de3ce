"""A scripted 5 s walk through the app's Session object (no browser): the recording holds every
generated frame once, in the video and in frames.jsonl, with the poses the integrator produced."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from app.config import StreamConfig
from app.session import Session
from controls.integrator import ControlSettings, InputSnapshot, PoseIntegrator
from streaming.episode import Episode
from streaming.worker import GenerationWorker
from tests.app.helpers import RecordingTransport, fake_runtime

SECONDS = 5.0


async def test_scripted_walk_is_recorded(tmp_path):
    stream = StreamConfig(width=64, height=48, fps=16.0, idle_chunks=0)
    runtime = fake_runtime(stream)
    worker = GenerationWorker(num_threads=1)
    start = runtime.start_view("scene:1")
    session = Session("s1", RecordingTransport(), runtime, worker, start, 64 * 1024, record_dir=tmp_path)
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


LIVE_CRASH_SCRIPT = """
import asyncio, json, sys
sys.path.insert(0, {root!r})
from app.config import StreamConfig
from app.session import Session
from streaming.worker import GenerationWorker
from tests.app.helpers import RecordingTransport, fake_runtime

async def main():
    stream = StreamConfig(width=64, height=48, fps=16.0, idle_chunks=0)
    runtime = fake_runtime(stream)
    worker = GenerationWorker(num_threads=1)
    session = Session("crash", RecordingTransport(), runtime, worker, runtime.start_view("scene:1"), 65536, record_dir={root_dir!r})
    session.handle_text(json.dumps({{"type": "record", "on": True}}))
    session.handle_text(json.dumps({{"type": "input", "seq": 1, "t": 0.0, "keys": 1, "yaw": 0.0, "pitch": 0.0, "roll": 0.0}}))
    worker.start()
    session.begin()
    while True:
        await session.buffer.get()

asyncio.run(main())
"""


def test_kill_9_during_a_live_recorded_walk(tmp_path):
    """The app's own session, recording, killed with -9: the flushed chunks load and say incomplete."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", LIVE_CRASH_SCRIPT.format(root=str(root), root_dir=str(tmp_path))],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        lines = 0
        while lines < 9 + 8 * 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            files = list(tmp_path.glob("*/frames.jsonl"))
            lines = files[0].read_text().count("\n") if files else 0
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert lines >= 9 + 8 * 3, "the walk did not record 4 chunks in time"
    (folder,) = tmp_path.iterdir()
    ep = Episode.open(folder)
    assert not ep.complete and not (folder / "video.mp4").exists()
    assert ep.n_frames >= lines - 8 and (ep.n_frames - 1) % 8 == 0
    assert len(ep.read_video()) == ep.n_frames
