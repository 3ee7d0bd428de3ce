"""Record toggles apply in the order the page sends them: after a burst the recorder's consent is
the burst's last state, and what is recorded is exactly the chunks handed over while it was on."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from app.config import StreamConfig
from app.session import Session
from streaming.episode import Episode
from streaming.worker import GenerationWorker
from tests.app.helpers import RecordingTransport, fake_runtime

BURSTS = [
    pytest.param([True, False, True], id="on-off-on"),
    pytest.param([False, True] * 100 + [True], id="201-ending-on"),
    pytest.param([True, False, True, False], id="on-off-on-off"),
    pytest.param([True, False] * 100 + [False], id="201-ending-off"),
]


def _record(session: Session, on: bool) -> None:
    assert session.handle_text(json.dumps({"type": "record", "on": on})) is not None


@pytest.mark.parametrize("burst", BURSTS)
async def test_record_burst_ends_in_its_last_state(tmp_path, burst):
    stream = StreamConfig(width=64, height=48, fps=16.0, idle_chunks=0)
    runtime = fake_runtime(stream)
    worker = GenerationWorker(num_threads=1)
    session = Session("t1", RecordingTransport(), runtime, worker, runtime.start_view("scene:1"), 64 * 1024, record_dir=tmp_path)
    session.handle_text(json.dumps({"type": "input", "seq": 1, "t": 0.0, "keys": 1, "yaw": 0.0, "pitch": 0.0, "roll": 0.0}))
    worker.start()
    session.begin()
    seen = []
    try:
        # A few chunks recorded first, so the burst toggles an open episode.
        _record(session, True)
        while len(seen) < 20:
            seen.append(await asyncio.wait_for(session.buffer.get(), 30))
        for on in burst:
            _record(session, on)
        # Every frame counted after this line belongs to a chunk handed over after the burst.
        after = session.job.frames_done
        final = burst[-1]
        assert session.recorder.consent is final and session.record_consent is final
        while len(seen) < after + 30:
            seen.append(await asyncio.wait_for(session.buffer.get(), 30))
        generated = session.job.frames_done
    finally:
        await worker.astop()
        await session.close("test over")
    recorded = {}
    for folder in session.recorder.episodes:
        ep = Episode.open(folder)
        assert ep.complete and len(ep.read_video()) == ep.n_frames
        video = ep.read_video()
        for row, image in zip(ep.rows, video):
            assert row["frame_id"] not in recorded, "a frame was recorded twice"
            recorded[row["frame_id"]] = image
    late = set(range(after, generated))
    if final:
        assert late <= set(recorded), f"{len(late - set(recorded))} frames generated after the burst were not recorded"
    else:
        assert not late & set(recorded), "frames generated after recording was turned off were recorded"
    # What was recorded is what the viewer saw.
    shown = {f.frame_id: f.image for f in seen}
    common = sorted(set(recorded) & set(shown))
    assert common
    errors = [np.abs(recorded[i].astype(int) - shown[i].astype(int)).mean() for i in common]
    assert max(errors) < 4
