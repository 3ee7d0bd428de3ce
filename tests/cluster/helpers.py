"""Helpers of the cluster tests: reading a walk's event stream from the ingress, and polling /healthz."""
from __future__ import annotations

import asyncio
import json
import time

import aiohttp


class EventStream:
    """A walk's server-sent event stream on the ingress (`answer["events"]`), read as the page's
    EventSource would: each `data:` line is one JSON message, appended to `messages`."""

    def __init__(self, base_url: str, path: str):
        self.url = f"{base_url}{path}"
        self.messages: list[dict] = []
        self.arrival: list[float] = []
        self.status: int | None = None
        self._task: asyncio.Task | None = None
        self._opened = asyncio.Event()

    async def open(self) -> EventStream:
        self._task = asyncio.ensure_future(self._read())
        await asyncio.wait_for(self._opened.wait(), 10)
        return self

    async def _read(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
            async with http.get(self.url) as response:
                self.status = response.status
                self._opened.set()
                if response.status != 200:
                    return
                async for line in response.content:
                    if line.startswith(b"data: "):
                        self.messages.append(json.loads(line[len(b"data: "):]))
                        self.arrival.append(time.monotonic())

    async def first_message(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while not self.messages:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no event from {self.url} in {timeout:g} s")
            await asyncio.sleep(0.02)
        return self.messages[0]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def health(base_url: str) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url}/healthz") as response:
            return await response.json()


async def wait_health(base_url: str, predicate, timeout: float) -> dict:
    """Poll /healthz until `predicate(health)`; the health that satisfied it."""
    deadline = time.monotonic() + timeout
    while True:
        state = await health(base_url)
        if predicate(state):
            return state
        if time.monotonic() > deadline:
            raise TimeoutError(f"/healthz never satisfied the condition; last: {state}")
        await asyncio.sleep(0.05)


def live_replicas(state: dict) -> dict[str, dict]:
    return {r["id"]: r for r in state["replicas"] if r["alive"]}


def udp_ports_of(pid: int) -> set[int]:
    """The local UDP ports the process `pid` holds open (Linux: its socket fds matched to /proc/net/udp*)."""
    import os

    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        if not os.path.exists(table):
            continue
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def remote_media_port(client) -> int:
    """The UDP port of the peer an aiortc client's nominated ICE pair sends to (where its media comes from)."""
    transceiver = client.pc.getTransceivers()[0]
    connection = transceiver.receiver.transport.transport._connection
    pair = connection._nominated[1]
    return pair.remote_addr[1]
