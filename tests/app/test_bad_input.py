"""Bad input gets a clean error or a counted drop, and the server keeps serving other sessions."""
from __future__ import annotations

import io
import json

import aiohttp
import numpy as np
import pytest
from PIL import Image

from app.config import StreamConfig
from app.server import SESSIONS, STATS, WORKER
from streaming.schedule import BatchCost
from tests.app.helpers import WebRTCClient, fake_runtime, serve, wait_for
from tests.app.test_websocket import _frames


pytestmark = pytest.mark.usefixtures("fast_stun")


def _runtime():
    return fake_runtime(StreamConfig(width=64, height=48, fps=16.0, idle_chunks=0))


async def _still_serves(http: aiohttp.ClientSession, url: str, start: str = "scene:1") -> None:
    """A fresh websocket session gets frames."""
    async with http.ws_connect(f"{url}/ws") as ws:
        await ws.send_str(json.dumps({"type": "hello", "start": start}))
        assert len(await _frames(ws, 3)) == 3


async def _session(app):
    await wait_for(lambda: any(s is not None for s in app[SESSIONS].values()))
    return next(s for s in app[SESSIONS].values() if s is not None)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{not json", id="malformed-json"),
        pytest.param(b"\xff\xfe\x00", id="binary"),
        pytest.param(b"[1, 2]", id="not-an-object"),
        pytest.param(json.dumps({"sdp": "garbage", "type": "offer", "start": "scene:1"}).encode(), id="sdp-not-sdp"),
        pytest.param(json.dumps({"sdp": "v=0\r\nthis is not sdp\r\n", "type": "offer", "start": "scene:1"}).encode(), id="malformed-sdp"),
        pytest.param(json.dumps({"sdp": "v=0\r\n", "type": "answer", "start": "scene:1"}).encode(), id="wrong-type"),
        pytest.param(json.dumps({"sdp": "v=0\r\n", "type": "offer", "start": "scene:999"}).encode(), id="unknown-start"),
    ],
)
async def test_bad_offer_is_400_and_the_server_carries_on(body):
    async with serve(_runtime()) as (url, app), aiohttp.ClientSession() as http:
        async with http.post(f"{url}/offer", data=body, headers={"Content-Type": "application/json"}) as response:
            assert response.status == 400
            assert (await response.json())["error"]
        assert not app[SESSIONS]
        await _still_serves(http, url)


async def test_garbage_on_the_data_channels_is_dropped_and_counted():
    async with serve(_runtime()) as (url, app), aiohttp.ClientSession() as http:
        client = WebRTCClient()
        try:
            response, _ = await client.connect(url)
            assert response.status == 200
            await client.wait_open()
            session = await _session(app)
            client.input.send(b"\x00\x01binary garbage")
            client.control.send(b"\xff" * 1000)
            client.control.send("x" * (70 * 1024))
            client.control.send("{oops")
            client.control.send('{"type": "teleport", "to": [1, 2, 3]}')
            client.control.send('{"type": "input", "seq": 5, "t": 0, "keys": 1, "yaw": NaN}')
            client.control.send('{"type": "input", "seq": 6, "t": 0, "keys": 1, "yaw": 1e999}')
            client.control.send('{"type": "input", "seq": 7, "t": 0, "keys": 4096}')
            client.control.send('{"type": "settings", "walk_speed": -3}')
            await wait_for(lambda: sum(session.dropped.values()) >= 9)
            assert session.dropped["binary"] == 2 and session.dropped["oversized"] == 1 and session.dropped["malformed"] == 1
            assert session.dropped["unknown_type"] == 1 and session.dropped["nan"] == 2 and session.dropped["invalid"] == 2
            # The session survives and its input still works.
            client.send_input(1)
            frames = await client.frames(12)
            assert len(frames) == 12 and not session.closed
            await wait_for(lambda: session.job.latest_input.seq == 1)
        finally:
            await client.close()
        await _still_serves(http, url)


async def test_garbage_on_the_websocket_is_dropped_and_counted():
    async with serve(_runtime()) as (url, app), aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{url}/ws") as ws:
            await ws.send_str(json.dumps({"type": "hello", "start": "scene:1"}))
            await _frames(ws, 2)
            session = await _session(app)
            await ws.send_bytes(b"\x00" * 5000)
            await ws.send_str("y" * (100 * 1024))
            await ws.send_str("[]")
            await ws.send_str('{"type": "input", "seq": 1, "t": NaN, "keys": 0}')
            await ws.send_str('{"type": "nope"}')
            await ws.send_str('{"type": "ack", "frame_id": 123456}')
            await ws.send_str('{"type": "input", "seq": 2, "t": 0, "keys": 1}')
            await ws.send_str('{"type": "input", "seq": 2, "t": 0, "keys": 1}')
            frames = await _frames(ws, 10)
            assert len(frames) == 10
            d = session.dropped
            assert (d["binary"], d["oversized"], d["malformed"], d["nan"], d["unknown_type"], d["invalid"], d["stale"]) == (1, 1, 1, 1, 1, 1, 1)
        await wait_for(lambda: not app[SESSIONS])
        await _still_serves(http, url)


async def test_websocket_hello_is_required_and_checked():
    async with serve(_runtime()) as (url, app), aiohttp.ClientSession() as http:
        for first in ['{"type": "input", "seq": 1, "t": 0, "keys": 0}', '{"type": "hello", "start": "scene:42"}', "nonsense"]:
            async with http.ws_connect(f"{url}/ws") as ws:
                await ws.send_str(first)
                reply = await ws.receive(timeout=5)
                assert reply.type == aiohttp.WSMsgType.TEXT and json.loads(reply.data)["type"] == "error"
        assert not app[SESSIONS]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{url}/ws", headers={"Origin": "http://evil.example"})
        assert refused.value.status == 403
        await _still_serves(http, url)


def _png(width: int = 40, height: int = 30) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


async def test_uploads_accept_images_only():
    async with serve(_runtime(), max_upload_bytes=200_000) as (url, app), aiohttp.ClientSession() as http:
        for data, ctype, status in [(b"definitely not an image", "image/png", 400), (_png(), "text/plain", 400), (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "image/png", 400), (b"\x00" * 300_000, "image/jpeg", 413)]:
            async with http.post(f"{url}/api/upload", data=data, headers={"Content-Type": ctype}) as response:
                assert response.status == status, (ctype, len(data))
                assert "error" in await response.json()
        async with http.post(f"{url}/api/upload", data=_png(), headers={"Content-Type": "image/png"}) as response:
            assert response.status == 200
            upload_id = (await response.json())["id"]
        assert upload_id.startswith("upload:") and len(upload_id) == len("upload:") + 12
        await _still_serves(http, url, start=upload_id)


async def test_one_session_too_many_is_503_with_a_message():
    async with serve(_runtime(), max_sessions=2) as (url, app), aiohttp.ClientSession() as http:
        sockets = []
        for _ in range(2):
            ws = await http.ws_connect(f"{url}/ws")
            await ws.send_str(json.dumps({"type": "hello", "start": "scene:1"}))
            await _frames(ws, 1)
            sockets.append(ws)
        client = WebRTCClient()
        response, answer = await client.connect(url)
        await client.close()
        assert response.status == 503 and answer["error"] == "server full: 2 of 2 sessions in use"
        async with http.ws_connect(f"{url}/ws") as ws:
            await ws.send_str(json.dumps({"type": "hello", "start": "scene:1"}))
            reply = json.loads((await ws.receive(timeout=5)).data)
            assert reply == {"type": "error", "message": "server full: 2 of 2 sessions in use"}
        async with http.get(f"{url}/healthz") as response:
            health = await response.json()
        assert health["sessions"] == 2 and health["max_sessions"] == 2 and app[STATS]["rejected_full"] == 2
        # The sessions in use keep streaming; when one leaves, a new one gets in.
        assert len(await _frames(sockets[0], 3)) == 3
        await sockets.pop().close()
        await wait_for(lambda: len(app[SESSIONS]) == 1)
        await _still_serves(http, url)
        for ws in sockets:
            await ws.close()


async def test_token_is_required_when_set_and_for_non_loopback_binds():
    from app.config import ServerConfig

    with pytest.raises(ValueError, match="requires a token"):
        ServerConfig(host="0.0.0.0")
    token = "s3cret-token"
    async with serve(_runtime(), token=token) as (url, app), aiohttp.ClientSession() as http:
        client = WebRTCClient()
        response, answer = await client.connect(url)
        await client.close()
        assert response.status == 401 and "token" in answer["error"]
        async with http.post(f"{url}/api/upload", data=_png(), headers={"Content-Type": "image/png"}) as response:
            assert response.status == 401
        async with http.post(f"{url}/api/upload", data=_png(), headers={"Content-Type": "image/png", "Authorization": f"Bearer {token}"}) as response:
            assert response.status == 200
        async with http.ws_connect(f"{url}/ws") as ws:
            await ws.send_str(json.dumps({"type": "hello", "start": "scene:1", "token": "wrong-token"}))
            assert json.loads((await ws.receive(timeout=5)).data)["type"] == "error"
        async with http.ws_connect(f"{url}/ws?token={token}") as ws:
            await ws.send_str(json.dumps({"type": "hello", "start": "scene:1"}))
            assert len(await _frames(ws, 2)) == 2
        assert app[STATS]["rejected_auth"] == 3


async def test_a_failing_generator_closes_only_its_session():
    runtime = _runtime()
    make = runtime.make_generator
    calls = {"n": 0}

    def make_generator():
        gen = make()
        calls["n"] += 1
        if calls["n"] == 1:
            step = gen.step

            def failing_step(poses):
                if gen.chunk_index >= 1:
                    raise RuntimeError("out of memory (simulated)")
                return step(poses)

            gen.step = failing_step
        return gen

    runtime.make_generator = make_generator
    async with serve(runtime) as (url, app), aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{url}/ws") as ws:
            await ws.send_str(json.dumps({"type": "hello", "start": "scene:1"}))
            errors = []
            while not errors:
                msg = await ws.receive(timeout=10)
                if msg.type == aiohttp.WSMsgType.BINARY:
                    await ws.send_str(json.dumps({"type": "ack", "frame_id": int.from_bytes(msg.data[8:12], "little")}))
                elif msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data)["type"] == "error":
                    errors.append(json.loads(msg.data)["message"])
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    break
            assert errors and "out of memory (simulated)" in errors[0]
        await wait_for(lambda: not app[SESSIONS] and not app[WORKER].jobs)
        await _still_serves(http, url)


class _MeasuredCost(BatchCost):
    """Batch times as if measured on a slow machine (300 ms per walk's chunk), fixed for the test."""

    def __init__(self) -> None:
        super().__init__()
        super().observe(1, 300.0)
        super().observe(2, 560.0)

    def observe(self, rows: int, ms: float) -> None:
        pass


@pytest.mark.parametrize("admit_by_capacity", [True, False], ids=["by-capacity", "fixed-limit"])
async def test_admission_follows_the_measured_capacity(admit_by_capacity):
    async with serve(_runtime(), max_sessions=4, admit_by_capacity=admit_by_capacity) as (url, app), aiohttp.ClientSession() as http:
        app[WORKER].cost = _MeasuredCost()
        first = await http.ws_connect(f"{url}/ws")
        await first.send_str(json.dumps({"type": "hello", "start": "scene:1"}))
        await _frames(first, 1)
        async with http.get(f"{url}/healthz") as response:
            assert (await response.json())["capacity"] == 1
        # 8-frame chunks at 16 fps: 500 ms of video per chunk; two walks would need 560 ms of it.
        second = await http.ws_connect(f"{url}/ws")
        await second.send_str(json.dumps({"type": "hello", "start": "scene:1"}))
        if admit_by_capacity:
            reply = json.loads((await second.receive(timeout=5)).data)
            assert reply == {"type": "error", "message": "server at its measured capacity: 1 sessions in use; chunks for 2 "
                                                         "would take about 560 ms of every 500 ms of video at 16 fps"}
            assert app[STATS]["rejected_capacity"] == 1 and len(app[SESSIONS]) == 1
            client = WebRTCClient()
            response, answer = await client.connect(url)
            await client.close()
            assert response.status == 503 and answer["error"].startswith("server at its measured capacity")
        else:
            assert len(await _frames(second, 2)) == 2 and app[STATS]["rejected_capacity"] == 0
        await second.close()
        await first.close()
