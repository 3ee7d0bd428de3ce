"""The live server records a consenting websocket walk to --record-dir and rewinds it into a linked branch."""
from __future__ import annotations

import asyncio
import json

import aiohttp

from app.config import StreamConfig
from streaming.episode import Episode
from tests.app.helpers import fake_runtime, serve, wait_for


async def _frames(ws, n: int) -> list[dict]:
    telemetry = []
    got = 0
    while got < n:
        msg = await asyncio.wait_for(ws.receive(), 10.0)
        if msg.type == aiohttp.WSMsgType.BINARY:
            got += 1
            await ws.send_str(json.dumps({"type": "ack", "frame_id": int.from_bytes(msg.data[8:12], "little")}))
        elif msg.type == aiohttp.WSMsgType.TEXT:
            message = json.loads(msg.data)
            assert message["type"] != "error", message
            telemetry.append(message)
    return telemetry


async def test_record_and_rewind_over_the_server(tmp_path):
    runtime = fake_runtime(StreamConfig(width=64, height=48, fps=16.0, idle_chunks=0))
    async with serve(runtime, record_dir=tmp_path) as (url, app), aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{url}/ws") as ws:
            await ws.send_str(json.dumps({"type": "hello", "start": "scene:1"}))
            await ws.receive(timeout=10)
            await ws.send_str(json.dumps({"type": "record", "on": True}))
            await ws.send_str(json.dumps({"type": "input", "seq": 1, "t": 0.0, "keys": 1, "yaw": 0.0, "pitch": 0.0, "roll": 0.0}))
            await _frames(ws, 40)
            await ws.send_str(json.dumps({"type": "rewind", "seconds": 1}))
            # Frames keep flowing (and being acked) until the branch's episode opens.
            for _ in range(40):
                await _frames(ws, 5)
                if len(list(tmp_path.iterdir())) == 2:
                    break
            await _frames(ws, 20)
            await ws.send_str(json.dumps({"type": "record", "on": False}))
            await wait_for(lambda: all(Episode.open(p).complete for p in tmp_path.iterdir()), timeout=20)
    first, second = sorted((Episode.open(p) for p in tmp_path.iterdir()), key=lambda e: e.name)
    # Every frame generated before the rewind is recorded from consent on: at least the 40 the page got
    # (the worker generates just in time, so little more than that).
    assert first.meta["model"] == "fake" and first.meta["walk_frame0"] + first.n_frames >= 40
    # Consent may arrive after the first chunk: start.png is then the episode's first frame.
    assert (first.meta["walk_frame0"] == 0) == (first.meta["start_png"] == "walk_start_image")
    assert second.meta["parent_episode"] == first.name and 0 < second.meta["branch_from_frame"] < first.n_frames
    assert len(first.read_video()) == first.n_frames and len(second.read_video()) == second.n_frames
