"""The websocket fallback: hello, session message, JPEG frames with the 32-byte header, acks."""
from __future__ import annotations

import asyncio
import io
import json

import aiohttp
import numpy as np
from PIL import Image

from app.config import StreamConfig
from app.server import SESSIONS, WS_HEADER
from tests.app.helpers import fake_runtime, serve, wait_for


def _runtime():
    return fake_runtime(StreamConfig(width=64, height=48, fps=16.0, idle_chunks=0))


async def _frames(ws, n: int, ack: bool = True, on_text=None):
    frames = []
    while len(frames) < n:
        msg = await asyncio.wait_for(ws.receive(), 10.0)
        if msg.type == aiohttp.WSMsgType.BINARY:
            fields = WS_HEADER.unpack(msg.data[: WS_HEADER.size])
            image = np.asarray(Image.open(io.BytesIO(msg.data[WS_HEADER.size :])))
            frames.append((fields, image))
            if ack:
                await ws.send_str(json.dumps({"type": "ack", "frame_id": fields[3]}))
        elif msg.type == aiohttp.WSMsgType.TEXT and on_text is not None:
            on_text(json.loads(msg.data))
        elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            raise AssertionError(f"socket closed: {msg}")
    return frames


async def test_websocket_session_streams_acked_jpeg_frames_and_walks():
    async with serve(_runtime()) as (url, app), aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{url}/ws") as ws:
            await ws.send_str(json.dumps({"type": "hello", "start": "scene:2"}))
            session = json.loads((await ws.receive(timeout=10)).data)
            assert session["type"] == "session" and session["transport"] == "websocket"
            texts = []
            for seq in range(1, 4):
                await ws.send_str(json.dumps({"type": "input", "seq": seq, "t": 0.0, "keys": 1, "yaw": 0.0, "pitch": 0.0, "roll": 0.0}))
            frames = await _frames(ws, 30, on_text=texts.append)
            magic, version, header_len, frame_id, _, _, width, height, _ = frames[0][0]
            assert (magic, version, header_len, width, height) == (b"ROAM", 1, 32, 64, 48)
            assert frames[0][1].shape == (48, 64, 3)
            ids = [f[0][3] for f in frames]
            assert all(b > a for a, b in zip(ids, ids[1:]))
            tele = [t for t in texts if t["type"] == "telemetry"]
            assert tele and tele[-1]["position"][2] > 0.5 and tele[-1]["input_seq"] == 3
            await ws.send_str(json.dumps({"type": "ping", "t": 12.5}))
            pongs = []
            await _frames(ws, 3, on_text=lambda m: m["type"] == "pong" and pongs.append(m))
            assert pongs and pongs[0]["t"] == 12.5
            # Reset: back to the start pose (keys released first), frame ids keep counting.
            await ws.send_str(json.dumps({"type": "input", "seq": 10, "t": 0.0, "keys": 0, "yaw": 0.0, "pitch": 0.0, "roll": 0.0}))
            await ws.send_str(json.dumps({"type": "reset"}))
            texts.clear()
            after = await _frames(ws, 12, on_text=texts.append)
            tele = [t for t in texts if t["type"] == "telemetry"]
            assert min(t["position"][2] for t in tele) == 0.0 and tele[-1]["position"][2] < 0.2
            assert after[0][0][3] > ids[-1]
        await wait_for(lambda: not app[SESSIONS])


async def test_websocket_keeps_at_most_two_frames_in_flight():
    async with serve(_runtime()) as (url, app), aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{url}/ws") as ws:
            await ws.send_str(json.dumps({"type": "hello", "start": "scene:1"}))
            first = await _frames(ws, 2, ack=False)
            # Without acks nothing more arrives; the page is behind.
            try:
                msg = await asyncio.wait_for(_frames(ws, 1, ack=False), 1.0)
                raise AssertionError(f"a third frame arrived without acks: {msg[0][0]}")
            except asyncio.TimeoutError:
                pass
            await asyncio.sleep(0.5)
            await ws.send_str(json.dumps({"type": "ack", "frame_id": first[0][0][3]}))
            await ws.send_str(json.dumps({"type": "ack", "frame_id": first[1][0][3]}))
            (fields, _), = await _frames(ws, 1, ack=False)
            # After the stall the server skips to the newest frame instead of replaying the backlog.
            assert fields[3] > first[1][0][3] + 1
