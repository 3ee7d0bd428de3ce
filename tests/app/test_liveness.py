"""A page that goes away frees its slot within seconds (docs/protocol.md, "Liveness"): its goodbye
(a beacon with the close token, a `close` note), a closed transport, or silence after it promised pings.
Each test measures the time from the page going to the slot being free and keeps it under FREED_WITHIN_S.
"""
from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from app.config import ServerConfig, StreamConfig
from app.server import SESSIONS
from tests.app.helpers import WebRTCClient, fake_runtime, serve, wait_for

FREED_WITHIN_S = 5.0


def _runtime():
    return fake_runtime(StreamConfig(width=64, height=48, fps=16.0, idle_chunks=0))


async def _freed_after(app, t0: float) -> float:
    """Seconds from `t0` until the server holds no session (TimeoutError past FREED_WITHIN_S)."""
    await wait_for(lambda: not app[SESSIONS], timeout=FREED_WITHIN_S)
    return time.monotonic() - t0


async def _webrtc_session(url: str) -> tuple[WebRTCClient, dict]:
    client = WebRTCClient()
    response, answer = await client.connect(url)
    assert response.status == 200, answer
    await client.wait_open()
    await wait_for(lambda: any(m["type"] == "session" for m in client.messages))
    return client, answer


async def test_beacon_with_the_close_token_frees_the_slot_and_nothing_else_does():
    async with serve(_runtime()) as (url, app), aiohttp.ClientSession() as http:
        client, answer = await _webrtc_session(url)
        close_url = f"{url}/api/sessions/{answer['session_id']}/close"
        plain = {"Content-Type": "text/plain;charset=UTF-8"}
        try:
            refusals = [
                # Its last character changed (a token that ends in "x" already gets "y").
                (close_url, answer["close_token"][:-1] + ("y" if answer["close_token"].endswith("x") else "x"), plain, 403),
                (f"{url}/api/sessions/nosuchid/close", answer["close_token"], plain, 403),
                (close_url, answer["close_token"], {"Content-Type": "application/json"}, 415),
                (close_url, answer["close_token"] * 10, plain, 413),
                # Another site's page: refused by the guards before the token is looked at.
                (close_url, answer["close_token"], {**plain, "Origin": "http://evil.example"}, 403),
                (close_url, answer["close_token"], {**plain, "Sec-Fetch-Site": "cross-site"}, 403),
            ]
            for target, body, headers, status in refusals:
                async with http.post(target, data=body, headers=headers) as response:
                    assert response.status == status, (body, headers, await response.text())
                    assert "error" in await response.json()
            assert len(app[SESSIONS]) == 1
            t0 = time.monotonic()
            async with http.post(close_url, data=answer["close_token"], headers={**plain, "Origin": url, "Sec-Fetch-Site": "same-origin"}) as response:
                assert response.status == 204
            assert not app[SESSIONS], "the beacon's answer came before the slot was free"
            print(f"\nbeacon: slot free after {time.monotonic() - t0:.3f} s")
        finally:
            await client.close()


async def test_close_note_on_the_control_channel_frees_the_slot():
    async with serve(_runtime()) as (url, app):
        client, _ = await _webrtc_session(url)
        try:
            t0 = time.monotonic()
            client.control.send(json.dumps({"type": "close"}))
            print(f"\nclose note: slot free after {await _freed_after(app, t0):.3f} s")
        finally:
            await client.close()


async def test_peer_connection_closed_without_a_word_frees_the_slot():
    async with serve(_runtime()) as (url, app):
        client, _ = await _webrtc_session(url)
        t0 = time.monotonic()
        await client.close()
        print(f"\npeer closed: slot free after {await _freed_after(app, t0):.3f} s")


async def test_silent_webrtc_page_is_gone_after_the_silence_timeout_unless_it_never_promised_pings():
    async with serve(_runtime(), silence_timeout_s=1.0) as (url, app):
        quiet, _ = await _webrtc_session(url)
        pinging, _ = await _webrtc_session(url)
        try:
            pinging.control.send(json.dumps({"type": "visibility", "hidden": False}))
            t0 = time.monotonic()
            await wait_for(lambda: len(app[SESSIONS]) == 1, timeout=FREED_WITHIN_S)
            print(f"\nsilent page (1 s silence timeout): slot free after {time.monotonic() - t0:.3f} s")
            # A client that never sent a visibility note (a script, not the page) is left to ICE.
            (session,) = app[SESSIONS].values()
            assert session.heartbeats is False
        finally:
            await asyncio.gather(quiet.close(), pinging.close())


async def test_hidden_page_may_be_silent_longer():
    async with serve(_runtime(), silence_timeout_s=0.5, hidden_silence_timeout_s=60.0) as (url, app):
        client, _ = await _webrtc_session(url)
        try:
            client.control.send(json.dumps({"type": "visibility", "hidden": True}))
            await asyncio.sleep(1.5)
            assert len(app[SESSIONS]) == 1
            t0 = time.monotonic()
            client.control.send(json.dumps({"type": "visibility", "hidden": False}))
            print(f"\nshown again, then silent (0.5 s): slot free after {await _freed_after(app, t0):.3f} s")
        finally:
            await client.close()


async def _websocket_session(http: aiohttp.ClientSession, url: str, visibility: bool):
    ws = await http.ws_connect(f"{url}/ws")
    await ws.send_str(json.dumps({"type": "hello", "start": "scene:1"}))
    assert json.loads((await ws.receive(timeout=10)).data)["type"] == "session"
    if visibility:
        await ws.send_str(json.dumps({"type": "visibility", "hidden": False}))
    return ws


async def test_websocket_closed_or_dropped_frees_the_slot():
    async with serve(_runtime()) as (url, app), aiohttp.ClientSession() as http:
        ws = await _websocket_session(http, url, visibility=False)
        t0 = time.monotonic()
        await ws.close()
        print(f"\nwebsocket closed: slot free after {await _freed_after(app, t0):.3f} s")
        # The TCP connection dropped without a close frame (a killed tab, a lost network).
        ws = await _websocket_session(http, url, visibility=False)
        t0 = time.monotonic()
        ws._conn.transport.abort()
        print(f"websocket dropped: slot free after {await _freed_after(app, t0):.3f} s")


async def test_silent_websocket_page_is_gone_after_the_silence_timeout():
    # The socket stays open but the page says nothing (a hung tab, a half-open TCP connection).
    async with serve(_runtime()) as (url, app), aiohttp.ClientSession() as http:
        ws = await _websocket_session(http, url, visibility=True)
        t0 = time.monotonic()
        freed = await _freed_after(app, t0)
        print(f"\nsilent websocket page (3 s silence timeout): slot free after {freed:.3f} s")
        assert freed > 2.5
        await ws.close()


def test_silence_timeouts_are_validated():
    for bad in ({"silence_timeout_s": 0.1}, {"silence_timeout_s": float("nan")}, {"silence_timeout_s": 10.0, "hidden_silence_timeout_s": 5.0}):
        with pytest.raises(ValueError, match="silence_timeout_s"):
            ServerConfig(**bad)
    assert ServerConfig().silence_timeout_s + 2 * 0.25 < FREED_WITHIN_S
