"""The ingress without Ray: replicas are in-process app servers (fake model) behind a StaticDirectory.

Placement and the sum in /healthz, the 503 when every replica is full, a dead replica's walks told
through their event stream, the websocket proxy (and its `error` when the replica's connection
drops), uploads following a walk to another replica, the close beacon, and the public token.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
from dataclasses import dataclass

import aiohttp
import numpy as np
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

from app.config import AppConfig, ServerConfig, StreamConfig
from app.server import SESSIONS, WS_HEADER, create_app
from cluster.config import ClusterConfig
from cluster.ingress import Replica, ReplicaInfo, StaticDirectory, _is_full, create_ingress_app
from tests.app.helpers import WebRTCClient, fake_runtime, wait_for
from tests.cluster.helpers import EventStream, health, live_replicas, wait_health

REPLICA_TOKEN = "replica-secret-0123"
STREAM = StreamConfig(width=64, height=48, fps=16.0, idle_chunks=0)


@dataclass
class FakeReplica:
    url: str
    app: web.Application
    server: TestServer

    def drop_connections(self) -> None:
        """Abort every TCP connection the replica holds, as the kernel does for a killed process."""
        for handler in list(self.server.runner.server.connections):
            handler.transport.abort()


async def _replica(max_sessions: int, record_dir=None) -> FakeReplica:
    config = AppConfig(server=ServerConfig(port=0, token=REPLICA_TOKEN, max_sessions=max_sessions, record_dir=record_dir), stream=STREAM)
    app = create_app(config, fake_runtime(STREAM))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return FakeReplica(str(server.make_url("")).rstrip("/"), app, server)


@contextlib.asynccontextmanager
async def cluster_of(n: int, max_sessions: int = 1, token: str | None = None, record_dir=None):
    """`n` replicas (sharing `record_dir`) and an ingress on 127.0.0.1; yields (ingress url, [FakeReplica])."""
    async with contextlib.AsyncExitStack() as stack:
        replicas = []
        for _ in range(n):
            replicas.append(await _replica(max_sessions, record_dir))
            stack.push_async_callback(replicas[-1].server.close)
        directory = StaticDirectory([ReplicaInfo(id=f"r{i}", url=r.url, pid=None, node="127.0.0.1") for i, r in enumerate(replicas)])
        config = AppConfig(server=ServerConfig(port=0, token=token), stream=STREAM)
        ingress = TestServer(create_ingress_app(config, ClusterConfig(probe_interval_s=0.1, probe_timeout_s=1.0), directory, REPLICA_TOKEN), host="127.0.0.1")
        await ingress.start_server()
        stack.push_async_callback(ingress.close)
        url = str(ingress.make_url("")).rstrip("/")
        await wait_health(url, lambda h: len(live_replicas(h)) == n, 5)
        yield url, replicas


async def _offer(url: str, **extra) -> tuple[WebRTCClient, aiohttp.ClientResponse, dict]:
    client = WebRTCClient()
    response, answer = await client.connect(url, **extra)
    return client, response, answer


def _png(seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


async def test_walks_spread_over_replicas_and_a_full_cluster_is_503():
    async with cluster_of(2, max_sessions=1) as (url, replicas):
        (a, response_a, answer_a), (b, response_b, answer_b) = await _offer(url), await _offer(url)
        try:
            assert response_a.status == response_b.status == 200
            assert {answer_a["replica"], answer_b["replica"]} == {"r0", "r1"}
            assert [len(r.app[SESSIONS]) for r in replicas] == [1, 1]
            await asyncio.gather(a.frames(3, 20), b.frames(3, 20))
            c, response_c, answer_c = await _offer(url)
            await c.close()
            assert response_c.status == 503
            assert answer_c == {"error": "server full: 2 of 2 sessions in use on 2 replicas"}
            # Once both replicas have measured their chunk times, /healthz sums their capacity too.
            state = await wait_health(url, lambda h: h["sessions"] == 2 and all(r["capacity"] is not None for r in h["replicas"]), 10)
            assert state["ok"] and state["max_sessions"] == 2 and state["capacity"] == 2 and state["rejected"]["full"] >= 1
            assert [(r["id"], r["sessions"], r["max_sessions"], r["capacity"]) for r in state["replicas"]] == [("r0", 1, 1, 1), ("r1", 1, 1, 1)]
            assert state["signalling"]["offers"] == 2 and state["signalling"]["ingress_overhead_ms_p50"] > 0
            # Only the ingress places walks: a replica refuses an offer without its token.
            direct, response_direct, _ = await _offer(replicas[0].url)
            await direct.close()
            assert response_direct.status == 401
        finally:
            await a.close()
            await b.close()


async def test_a_dead_replica_ends_its_walks_events_and_takes_no_new_walks():
    async with cluster_of(2, max_sessions=2) as (url, replicas):
        a, _, answer_a = await _offer(url)
        events_a = await EventStream(url, answer_a["events"]).open()
        b, _, answer_b = await _offer(url)
        events_b = await EventStream(url, answer_b["events"]).open()
        try:
            assert answer_a["replica"] != answer_b["replica"]
            # The stream is the walk's alone: a wrong key gets 403.
            wrong = await EventStream(url, answer_a["events"].replace(answer_a["close_token"], "x" * 32)).open()
            assert wrong.status == 403
            # The replica's server goes away (its listening socket closes, so probes are refused).
            await replicas[int(answer_a["replica"][1:])].server.close()
            error = await events_a.first_message(5)
            assert error["type"] == "error" and "the replica serving this walk stopped" in error["message"]
            assert events_b.messages == []
            state = await health(url)
            assert answer_a["replica"] not in live_replicas(state) and state["max_sessions"] == 2
            c, response_c, answer_c = await _offer(url)
            await c.close()
            assert response_c.status == 200 and answer_c["replica"] == answer_b["replica"]
        finally:
            for closing in (events_a.close(), events_b.close(), a.close(), b.close()):
                await closing


async def _ws_frames(ws, n: int) -> list:
    frames = []
    while len(frames) < n:
        msg = await asyncio.wait_for(ws.receive(), 10.0)
        if msg.type == aiohttp.WSMsgType.BINARY:
            fields = WS_HEADER.unpack(msg.data[: WS_HEADER.size])
            frames.append(fields)
            await ws.send_str(json.dumps({"type": "ack", "frame_id": fields[3]}))
        elif msg.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"socket closed: {msg}")
    return frames


async def test_websocket_walks_are_proxied_and_a_dropped_replica_says_error():
    async with cluster_of(1) as (url, replicas), aiohttp.ClientSession() as http:
        replica = replicas[0]
        async with http.ws_connect(f"{url}/ws") as ws:
            await ws.send_str(json.dumps({"type": "hello", "start": "scene:2"}))
            session = json.loads((await ws.receive(timeout=10)).data)
            assert session["type"] == "session" and session["transport"] == "websocket"
            frames = await _ws_frames(ws, 5)
            assert frames[0][:3] == (b"ROAM", 1, 32) and frames[0][6:8] == (64, 48)
            assert len(replica.app[SESSIONS]) == 1
            # The replica's process dies: its TCP connections drop without a websocket close.
            replica.drop_connections()
            texts = []
            while True:
                msg = await asyncio.wait_for(ws.receive(), 10.0)
                if msg.type == aiohttp.WSMsgType.TEXT:
                    texts.append(json.loads(msg.data))
                elif msg.type != aiohttp.WSMsgType.BINARY:
                    break
            errors = [t for t in texts if t["type"] == "error"]
            assert errors and errors[-1]["message"] == "the replica serving this walk stopped; pick a start to walk again"
            assert ws.closed


async def test_an_upload_follows_its_walk_to_another_replica():
    async with cluster_of(2, max_sessions=1) as (url, replicas), aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/upload", data=_png(1), headers={"Content-Type": "image/png"}) as response:
            assert response.status == 200
            upload_id = (await response.json())["id"]
        a, response_a, answer_a = await _offer(url, start=upload_id)
        b, response_b, answer_b = await _offer(url, start=upload_id)
        try:
            # Each replica had to know the upload: the ingress posted it to the second one itself.
            assert (response_a.status, response_b.status) == (200, 200), (answer_a, answer_b)
            assert answer_a["replica"] != answer_b["replica"]
            await asyncio.gather(a.frames(2, 20), b.frames(2, 20))
            # The close beacon reaches the walk's replica through the ingress.
            async with http.post(f"{url}/api/sessions/{answer_a['session_id']}/close", data=answer_a["close_token"], headers={"Content-Type": "text/plain"}) as response:
                assert response.status == 204
            owner = replicas[int(answer_a["replica"][1:])].app
            await wait_for(lambda: len(owner[SESSIONS]) == 0, 5)
        finally:
            await a.close()
            await b.close()


async def test_the_public_token_is_the_ingress_s():
    async with cluster_of(1, token="public-secret-42") as (url, _), aiohttp.ClientSession() as http:
        client, response, answer = await _offer(url)
        await client.close()
        assert response.status == 401 and answer == {"error": "bad or missing token"}
        client, response, answer = await _offer(url, token="public-secret-42")
        await client.close()
        assert response.status == 200
        async with http.ws_connect(f"{url}/ws") as ws:
            await ws.send_str(json.dumps({"type": "hello", "start": "scene:1"}))
            assert json.loads((await ws.receive(timeout=10)).data) == {"type": "error", "message": "bad or missing token"}
        async with http.get(f"{url}/api/scenes") as response:
            assert response.status == 200 and [s["id"] for s in await response.json()] == ["scene:1", "scene:2"]


async def test_offers_arriving_together_spread_over_replicas():
    # Walks on their way to a replica count in its load, so two offers at once do not both pick the emptiest one.
    async with cluster_of(2, max_sessions=2) as (url, replicas):
        (a, response_a, answer_a), (b, response_b, answer_b) = await asyncio.gather(_offer(url), _offer(url))
        try:
            assert (response_a.status, response_b.status) == (200, 200), (answer_a, answer_b)
            assert {answer_a["replica"], answer_b["replica"]} == {"r0", "r1"}
        finally:
            await a.close()
            await b.close()


async def test_review_reads_the_shared_record_dir_through_the_ingress(tmp_path):
    async with cluster_of(2, max_sessions=1, record_dir=tmp_path, token="public-secret-42") as (url, _), aiohttp.ClientSession() as http:
        walks = [await _offer(url, token="public-secret-42") for _ in range(2)]
        try:
            assert {answer["replica"] for _, _, answer in walks} == {"r0", "r1"}
            for client, _, _ in walks:
                await client.wait_open()
                client.control.send(json.dumps({"type": "record", "on": True}))
            await asyncio.gather(*(client.frames(24, 20) for client, _, _ in walks))
        finally:
            for client, _, _ in walks:
                await client.close()
        await wait_for(lambda: len(list(tmp_path.glob("*/meta.json"))) == 2, 10)
        async with http.get(f"{url}/api/review/episodes") as response:
            assert response.status == 401
        auth = {"Authorization": "Bearer public-secret-42"}
        async with http.get(f"{url}/api/review/episodes", headers=auth) as response:
            assert response.status == 200
            listing = await response.json()
        names = sorted(e["name"] for e in listing["episodes"])
        assert [n.split("-")[2] for n in names] == sorted(answer["session_id"] for _, _, answer in walks)
        async with http.post(f"{url}/api/review/episodes/{names[0]}", json={"decision": "accept", "note": "ok"}, headers=auth) as response:
            assert response.status == 200, await response.text()
        async with http.get(f"{url}/review?token=public-secret-42") as response:
            assert response.status == 200 and response.content_type == "text/html"


def test_a_replica_s_measured_capacity_caps_its_room():
    replica = Replica(ReplicaInfo(id="r0", url="http://127.0.0.1:1"), alive=True, sessions=1, max_sessions=4)
    assert replica.room() == 4 and replica.has_room()
    # Its chunk times say one walk is all it keeps at frame rate: no room for a second.
    replica.capacity = 1
    assert replica.room() == 1 and not replica.has_room()
    # Walks on their way count too.
    replica.capacity, replica.placing = 3, 2
    assert not replica.has_room()
    replica.placing = 1
    assert replica.has_room()
    # Replicas that do not admit by capacity (serve --no-capacity-admission) are placed by their slots.
    replica.by_capacity, replica.placing = False, 2
    assert replica.room() == 4 and replica.has_room()
    # Its refusals for want of room, as the replica words them, send a websocket walk to the next replica.
    assert _is_full(json.dumps({"type": "error", "message": "server full: 4 of 4 sessions in use"}))
    assert _is_full(json.dumps({"type": "error", "message": "server at its measured capacity: 3 sessions in use; ..."}))
    assert not _is_full(json.dumps({"type": "error", "message": "unknown start 'scene:99'"}))
    assert not _is_full(json.dumps({"type": "session", "session_id": "x"}))
