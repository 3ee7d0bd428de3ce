"""`serve --ray` on a local Ray cluster (this machine, 2 CPU replicas of the embedded tiny model):
two walks land on different replicas and both stream over WebRTC straight from their replica;
SIGKILL of one replica's process ends its walk with the page's `error` message on the ingress's
event stream while the other walk keeps streaming; new walks skip the dead replica, and the one Serve
starts in its place takes walks again. Prints the figures docs/serving.md quotes (run with -s).
"""
from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from aiohttp.test_utils import TestServer

from app.config import AppConfig, ServerConfig, StreamConfig
from cluster.config import ClusterConfig
from tests.app.helpers import WebRTCClient
from tests.cluster.helpers import EventStream, health, live_replicas, remote_media_port, udp_ports_of, wait_health
from tests.conftest import ci_size

pytest.importorskip("ray", reason="requirements-cluster.txt installs Ray; CI installs it with requirements-dev.txt")

pytestmark = pytest.mark.heavy

# Frames each walk must receive at each step (CI: fewer, on a busy 2-core machine).
FRAMES = ci_size(8, 3)
SIZE = ci_size(96, 64)


async def _walk(url: str, placements: list[float] | None = None) -> tuple[WebRTCClient, dict, EventStream]:
    client = WebRTCClient()
    t0 = time.perf_counter()
    response, answer = await client.connect(url)
    assert response.status == 200, answer
    if placements is not None:
        placements.append((time.perf_counter() - t0) * 1e3)
    events = await EventStream(url, answer["events"]).open()
    assert events.status == 200
    return client, answer, events


async def _until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.1)


async def _telemetry_after(client: WebRTCClient, t: float, n: int, timeout: float) -> list[dict]:
    """`n` telemetry messages that arrived after monotonic time `t` (the walk kept streaming)."""
    deadline = time.monotonic() + timeout
    while True:
        later = [m for m in client.messages if m["type"] == "telemetry" and m["_arrival"] > t]
        if len(later) >= n:
            return later
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(later)} of {n} telemetry messages after the kill")
        await asyncio.sleep(0.05)


async def test_two_replicas_place_stream_survive_a_kill_and_recover(tmp_path):
    from cluster.ingress import create_ingress_app
    from cluster.registry import RayDirectory
    from cluster.serve_cmd import start_replicas, stop_replicas

    stream = StreamConfig(width=SIZE, height=SIZE, torch_threads=1, idle_chunks=0)
    # Admission by measured capacity off: on a busy 2-core box a replica may measure room for one walk,
    # and this test places a second on the survivor (tests/cluster/test_ingress.py covers capacity).
    server_config = ServerConfig(port=0, max_sessions=2, admit_by_capacity=False, record_dir=tmp_path / "recordings")
    config = AppConfig(server=server_config, stream=stream)
    cluster = ClusterConfig(address="local", replicas=2, replica_cpus=1, probe_interval_s=0.25, health_check_period_s=1.0, local_object_store_mb=100)
    t0 = time.monotonic()
    replicas = await asyncio.to_thread(start_replicas, config, cluster)
    figures = {"replicas_up_s": time.monotonic() - t0}
    server = None
    clients: list[WebRTCClient] = []
    streams: list[EventStream] = []
    try:
        server = TestServer(create_ingress_app(config, cluster, RayDirectory(replicas.registry), replicas.token), host="127.0.0.1")
        await server.start_server()
        url = str(server.make_url("")).rstrip("/")
        state = await wait_health(url, lambda h: len(live_replicas(h)) == 2, 30)
        assert state["max_sessions"] == 4 and state["sessions"] == 0

        # 1. Two walks, two replicas; each streams from its own.
        placements: list[float] = []
        (a, answer_a, events_a), (b, answer_b, events_b) = await _walk(url, placements), await _walk(url, placements)
        clients += [a, b]
        streams += [events_a, events_b]
        assert answer_a["replica"] != answer_b["replica"]
        state = await wait_health(url, lambda h: h["sessions"] == 2, 10)
        assert {r["id"]: r["sessions"] for r in state["replicas"]} == {answer_a["replica"]: 1, answer_b["replica"]: 1}
        await asyncio.gather(a.frames(FRAMES, 90), b.frames(FRAMES, 90))
        # The media comes straight from each walk's replica: the UDP port its ICE pair receives from is the replica process's own.
        replicas_now = live_replicas(state)
        for client, answer in ((a, answer_a), (b, answer_b)):
            assert remote_media_port(client) in udp_ports_of(replicas_now[answer["replica"]]["pid"])
        figures["signalling_overhead_ms_p50"] = state["signalling"]["ingress_overhead_ms_p50"]
        # Both record into the one record dir the replicas share (an episode folder is <stamp>-<session id>-<n>).
        for client in (a, b):
            client.control.send('{"type": "record", "on": true}')
        record_dir = tmp_path / "recordings"
        await _until(lambda: all(list(record_dir.glob(f"*-{answer['session_id']}-*/meta.json")) for answer in (answer_a, answer_b)), 60)

        # 2. Kill the process of a's replica.
        victim = live_replicas(state)[answer_a["replica"]]
        t_kill = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        error = await events_a.first_message(15)
        figures["walk_error_after_kill_s"] = events_a.arrival[0] - t_kill
        assert error["type"] == "error" and "replica serving this walk stopped" in error["message"]
        state = await wait_health(url, lambda h: answer_a["replica"] not in live_replicas(h), 5)
        figures["dead_in_healthz_s"] = time.monotonic() - t_kill
        # b streams on, and its event stream stays quiet.
        later = await _telemetry_after(b, t_kill + 0.5, 2 * FRAMES, 60)
        assert later[-1]["frame_id"] > later[0]["frame_id"]
        assert events_b.messages == []

        # 3. New walks skip the dead replica.
        c, answer_c, events_c = await _walk(url)
        clients.append(c)
        streams.append(events_c)
        assert answer_c["replica"] == answer_b["replica"]

        # 4. Serve replaces the dead replica; the new one takes the next walk (it is the least loaded).
        state = await wait_health(url, lambda h: len(set(live_replicas(h)) - {answer_a["replica"], answer_b["replica"]}) == 1, 90)
        figures["replacement_up_s"] = time.monotonic() - t_kill
        (new_id,) = set(live_replicas(state)) - {answer_a["replica"], answer_b["replica"]}
        d, answer_d, events_d = await _walk(url, placements)
        clients.append(d)
        streams.append(events_d)
        assert answer_d["replica"] == new_id
        await asyncio.gather(d.frames(FRAMES, 90), c.frames(FRAMES, 90))
        state = await health(url)
        assert state["sessions"] == 3 and state["max_sessions"] == 4
        figures["placement_ms"] = placements
        print("\nserve --ray figures:", {k: [round(x) for x in v] if isinstance(v, list) else round(v, 2) for k, v in figures.items()})
    finally:
        for client in clients:
            await client.close()
        for events in streams:
            await events.close()
        if server is not None:
            await server.close()
        await asyncio.to_thread(stop_replicas, replicas)
