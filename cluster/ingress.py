"""The ingress: one public aiohttp server that serves the page and hands each new walk to a
generation replica with room. It carries signalling only (docs/serving.md).

Routes (the page's, docs/protocol.md, unchanged) and what the ingress does with each:
- `GET /`, `/web/*`: the page, from its own copy of web/.
- `GET /api/scenes`, `/api/model`, thumbnails: asked of any live replica (they all run one model).
- `POST /api/upload`: stored by a live replica, and the bytes kept here (a bounded LRU) so that a
  walk from that upload can start on whichever replica gets it (uploads are content-addressed, so
  posting them again gives the same id).
- `POST /offer`: forwarded to the placed replica, whose aiortc peer answers; the answer's ICE
  candidates are the replica's own, so the media flows replica -> browser and never passes here.
  The answer gains `events`, the URL of this walk's event stream on the ingress.
- `GET /api/sessions/{id}/events?key=<close_token>`: a server-sent event stream that stays quiet
  while the walk's replica lives and sends `{"type": "error", "message"}` (the page's own error
  message) when the replica dies, since the page's WebRTC peer would only notice after ~30 s.
- `POST /api/sessions/{id}/close`: forwarded to the replica that owns the walk.
- `GET /ws`: the websocket fallback is proxied to the placed replica. It is the transport for
  browsers that cannot reach a replica over UDP, so it must pass the one public address anyway.
  A replica that dies mid-walk closes the proxied socket with an `error` message first.
- `GET /review`, `/api/review/*`: forwarded to the first live replica (the record dir is shared).
- `GET /healthz`: sums over the replicas, and lists each.

Placement: the live replica with the fewest sessions (its probed count, plus the walks on their way
to it or placed after that probe was sent) that has room (its slots, or fewer when its measured
chunk times say so: /healthz `capacity`); a replica that answers 503 (full) or cannot be reached is
skipped for the next. Invariants: a walk is placed on one replica and stays there (its worker,
state and peer live in that process); a replica that failed a probe takes no new walks until a
probe succeeds again; every response is a 4xx/5xx with `{"error"}` naming the problem or the
replica's own answer.
"""
from __future__ import annotations

import asyncio
import collections
import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
from aiohttp import WSMsgType, web

from app.config import AppConfig
from app.guards import add_security_headers, guard_middleware
from cluster.config import ClusterConfig

log = logging.getLogger("roam.ingress")

INGRESS = web.AppKey("ingress", object)
# The ingress's own refusal counters, named as the single-process server names its own.
REJECTED = ("full", "capacity", "bad_request", "auth", "host", "cross_site")
# How a replica's refusal for want of room begins (docs/protocol.md): its slots, or its measured capacity.
NO_ROOM = ("server full", "server at its measured capacity")
# Walks whose replica the ingress remembers (for the close beacon and the event stream); the oldest goes first.
MAX_ROUTES = 4096
# Uploads kept for placing their walks on another replica than the one that took them.
MAX_UPLOADS = 16
MAX_UPLOAD_BYTES_KEPT = 96 * 1024 * 1024
# The replica's /offer renders the start view and negotiates: seconds on a busy CPU box.
FORWARD_TIMEOUT_S = 60.0
# An event stream writes a comment this often, so a gone page is noticed and idle proxies keep it open.
EVENTS_KEEPALIVE_S = 15.0
# What the page shows when its walk's replica dies (the why goes to the ingress's log).
REPLICA_GONE = "the replica serving this walk stopped; pick a start to walk again"
# The largest /offer body the single-process server takes (max_message_bytes * 4).
OFFER_BYTES_FACTOR = 4


@dataclass(frozen=True)
class ReplicaInfo:
    """A generation replica as it registered: its id, the base URL of its app and its process."""

    id: str
    url: str
    pid: int | None = None
    node: str = ""


class Directory(Protocol):
    """Where the ingress learns which replicas exist (Ray: `cluster.registry`)."""

    async def replicas(self) -> list[ReplicaInfo]: ...

    async def forget(self, replica_id: str) -> None: ...


class StaticDirectory:
    """A fixed list of replicas (replicas started by hand, and the ingress's tests)."""

    def __init__(self, replicas: list[ReplicaInfo]):
        self._replicas = {r.id: r for r in replicas}

    async def replicas(self) -> list[ReplicaInfo]:
        return list(self._replicas.values())

    async def forget(self, replica_id: str) -> None:
        self._replicas.pop(replica_id, None)


@dataclass
class Replica:
    """What the ingress knows of one replica. `alive` turns True on a good probe and False on a
    refused connection or `probe_failures` failed probes in a row."""

    info: ReplicaInfo
    alive: bool = False
    sessions: int = 0
    max_sessions: int = 0
    # Walks its measured chunk times fit (app/server.py `capacity`); None until it has measured.
    capacity: int | None = None
    # Whether the replica admits by that capacity (ServerConfig.admit_by_capacity, the same on every replica).
    by_capacity: bool = True
    model: str | None = None
    rejected: dict[str, int] = field(default_factory=dict)
    failures: int = 0
    # monotonic times: registered here, first good probe, declared dead.
    seen_t: float = field(default_factory=time.monotonic)
    alive_t: float | None = None
    dead_t: float | None = None
    # Walks being placed here now (their offer or hello is on its way to the replica).
    placing: int = 0
    # When walks placed here were answered (monotonic): a probe sent later counts them itself, one
    # sent earlier (its answer may arrive after the placement) does not.
    placed_t: list[float] = field(default_factory=list)

    def load(self) -> int:
        return self.sessions + self.placing + len(self.placed_t)

    def room(self) -> int:
        """Walks it takes at most now: its slots, or fewer once its measured capacity says so."""
        return self.max_sessions if self.capacity is None or not self.by_capacity else min(self.max_sessions, self.capacity)

    def has_room(self) -> bool:
        return self.alive and self.load() < self.room()

    def public(self) -> dict:
        return {"id": self.info.id, "url": self.info.url, "node": self.info.node, "pid": self.info.pid, "alive": self.alive,
                "sessions": self.sessions, "max_sessions": self.max_sessions, "capacity": self.capacity}


@dataclass
class Route:
    """A walk placed by this ingress: its replica, its close token, and the end of its replica."""

    replica_id: str
    close_token: str
    replica_gone: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""


class Ingress:
    """The ingress's state: replicas, routes of placed walks, kept uploads, and the probe loop.

    Lives on the event loop (app[INGRESS]); every method runs there."""

    def __init__(self, config: AppConfig, cluster: ClusterConfig, directory: Directory, replica_token: str):
        self.config = config
        self.cluster = cluster
        self.directory = directory
        self.replica_token = replica_token
        self.replicas: dict[str, Replica] = {}
        self.routes: collections.OrderedDict[str, Route] = collections.OrderedDict()
        # upload id -> (bytes, Content-Type, ids of the replicas that hold it)
        self.uploads: collections.OrderedDict[str, tuple[bytes, str, set[str]]] = collections.OrderedDict()
        self.stats = {f"rejected_{name}": 0 for name in REJECTED}
        # Signalling round trips of placed offers: the whole /offer at the ingress, and the part the replica took.
        self.offer_ms: collections.deque[tuple[float, float]] = collections.deque(maxlen=256)
        self.http: aiohttp.ClientSession | None = None
        self._probe_task: asyncio.Task | None = None

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {self.replica_token}"})
        await self.probe_all()
        self._probe_task = asyncio.ensure_future(self._probe_loop())

    async def stop(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            await asyncio.gather(self._probe_task, return_exceptions=True)
        for route in self.routes.values():
            route.reason = "the ingress shut down"
            route.replica_gone.set()
        if self.http is not None:
            await self.http.close()

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cluster.probe_interval_s)
            try:
                await self.probe_all()
            except Exception:
                # The directory (Ray) may be briefly unreachable; the next round tries again.
                log.exception("probe round failed")

    async def probe_all(self) -> None:
        """One round: learn the directory's replicas, ask each /healthz, forget the long dead."""
        listed = {info.id: info for info in await self.directory.replicas()}
        for replica_id, info in listed.items():
            if replica_id not in self.replicas:
                self.replicas[replica_id] = Replica(info, by_capacity=self.config.server.admit_by_capacity)
                log.info("replica %s registered at %s (node %s, pid %s)", replica_id, info.url, info.node, info.pid)
        now = time.monotonic()
        for replica_id, replica in list(self.replicas.items()):
            if replica_id not in listed and not replica.alive:
                del self.replicas[replica_id]
            elif not replica.alive and replica.dead_t is not None and now - replica.dead_t > self.cluster.forget_dead_after_s:
                del self.replicas[replica_id]
                await self.directory.forget(replica_id)
                log.info("replica %s forgotten (dead %.0f s)", replica_id, now - replica.dead_t)
        await asyncio.gather(*(self._probe(r) for r in list(self.replicas.values())))

    async def _probe(self, replica: Replica) -> None:
        timeout = aiohttp.ClientTimeout(total=self.cluster.probe_timeout_s)
        sent_t = time.monotonic()
        try:
            async with self.http.get(f"{replica.info.url}/healthz", timeout=timeout) as response:
                health = await response.json()
                if response.status != 200 or not health.get("ok"):
                    raise ValueError(f"/healthz answered {response.status}")
        except aiohttp.ClientConnectorError as error:
            # Nothing listens there: the process is gone.
            self._failed(replica, f"connection refused ({error.os_error})", definite=True)
            return
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
            self._failed(replica, f"probe failed: {error!r}", definite=False)
            return
        replica.failures = 0
        replica.sessions = int(health.get("sessions", 0))
        replica.max_sessions = int(health.get("max_sessions", 0))
        capacity = health.get("capacity")
        replica.capacity = int(capacity) if isinstance(capacity, int) else None
        replica.model = health.get("model")
        replica.rejected = dict(health.get("rejected", {}))
        replica.placed_t = [t for t in replica.placed_t if t >= sent_t]
        if not replica.alive:
            replica.alive, replica.alive_t, replica.dead_t = True, time.monotonic(), None
            log.info("replica %s is up at %s (%d sessions max)", replica.info.id, replica.info.url, replica.max_sessions)

    def _failed(self, replica: Replica, reason: str, definite: bool) -> None:
        replica.failures += 1
        if definite or replica.failures >= self.cluster.probe_failures:
            self.mark_dead(replica, reason)

    def mark_dead(self, replica: Replica, reason: str) -> None:
        """Take `replica` out of placement and end its walks' event streams with REPLICA_GONE (`reason`,
        the why, goes to the log)."""
        if replica.alive or replica.dead_t is None:
            log.warning("replica %s is dead: %s", replica.info.id, reason)
            replica.dead_t = time.monotonic()
        replica.alive = False
        replica.sessions = 0
        replica.placed_t = []
        for session_id, route in list(self.routes.items()):
            if route.replica_id == replica.info.id:
                route.reason = REPLICA_GONE
                route.replica_gone.set()
                del self.routes[session_id]

    def placement(self) -> list[Replica]:
        """Live replicas with room, least loaded first (ties: the longest up, so placement is stable)."""
        ready = [r for r in self.replicas.values() if r.has_room()]
        return sorted(ready, key=lambda r: (r.load(), r.alive_t or 0.0, r.info.id))

    def full_message(self) -> str:
        live = [r for r in self.replicas.values() if r.alive]
        if not live:
            return "no generation replica is up yet; try again in a moment"
        used = sum(r.load() for r in live)
        total = sum(r.room() for r in live)
        return f"server full: {min(used, total)} of {total} sessions in use on {len(live)} replicas"

    def remember_route(self, session_id: str, route: Route) -> None:
        self.routes[session_id] = route
        while len(self.routes) > MAX_ROUTES:
            self.routes.popitem(last=False)

    def keep_upload(self, upload_id: str, data: bytes, content_type: str, replica_id: str) -> None:
        if upload_id in self.uploads:
            self.uploads[upload_id][2].add(replica_id)
            self.uploads.move_to_end(upload_id)
            return
        self.uploads[upload_id] = (data, content_type, {replica_id})
        while len(self.uploads) > MAX_UPLOADS or sum(len(d) for d, _, _ in self.uploads.values()) > MAX_UPLOAD_BYTES_KEPT:
            self.uploads.popitem(last=False)

    async def ensure_start(self, start: object, replica: Replica) -> None:
        """Post an upload the walk starts from to `replica` if it has not had it (an unknown id is left
        to the replica, which answers that it does not know it)."""
        if not isinstance(start, str) or start not in self.uploads:
            return
        data, content_type, holders = self.uploads[start]
        if replica.info.id in holders:
            return
        async with self.http.post(f"{replica.info.url}/api/upload", data=data, headers={"Content-Type": content_type},
                                  timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S)) as response:
            if response.status == 200:
                holders.add(replica.info.id)

    def health(self) -> dict:
        live = [r for r in self.replicas.values() if r.alive]
        rejected = {name: self.stats[f"rejected_{name}"] + sum(r.rejected.get(name, 0) for r in live) for name in REJECTED}
        overhead = sorted(total - upstream for total, upstream in self.offer_ms)
        measured = [r.capacity for r in live if r.capacity is not None]
        return {
            "ok": bool(live),
            "sessions": sum(r.sessions for r in live),
            "max_sessions": sum(r.max_sessions for r in live),
            # The live replicas' measured capacities summed (a replica not yet measured counts its slots); None when none has measured.
            "capacity": sum(r.room() for r in live) if measured else None,
            "model": next((r.model for r in live if r.model), None),
            "rejected": rejected,
            "replicas": [r.public() for r in sorted(self.replicas.values(), key=lambda r: r.info.id)],
            "signalling": {"offers": len(self.offer_ms), "ingress_overhead_ms_p50": overhead[len(overhead) // 2] if overhead else None},
        }


def create_ingress_app(config: AppConfig, cluster: ClusterConfig, directory: Directory, replica_token: str) -> web.Application:
    """The ingress web application (see the module docstring). `config.server` is the public side
    (bind address, token, allowed hosts, limits); `replica_token` is what the replicas demand."""
    ingress = Ingress(config, cluster, directory, replica_token)
    app = web.Application(client_max_size=config.server.max_upload_bytes + 1024, middlewares=[guard_middleware(config.server, ingress.stats)])
    app.on_response_prepare.append(add_security_headers)
    app[INGRESS] = ingress

    async def on_startup(app: web.Application) -> None:
        await ingress.start()

    async def on_shutdown(app: web.Application) -> None:
        await ingress.stop()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/", _index)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/api/scenes", _ask_any)
    app.router.add_get("/api/model", _ask_any)
    app.router.add_get("/api/scenes/{scene_id}/thumbnail.jpg", _ask_any)
    app.router.add_post("/api/upload", _upload)
    app.router.add_post("/offer", _offer)
    app.router.add_post("/api/sessions/{session_id}/close", _close_session)
    app.router.add_get("/api/sessions/{session_id}/events", _events)
    app.router.add_get("/ws", _websocket)
    app.router.add_get("/review", _review)
    app.router.add_get("/api/review/{tail:.+}", _review)
    app.router.add_post("/api/review/{tail:.+}", _review)
    if config.server.web_dir.is_dir():
        app.router.add_static("/web/", config.server.web_dir)
    return app


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _token_ok(request: web.Request, supplied: object = None) -> bool:
    """The public token (as the single-process server takes it: a field, `?token=` or a Bearer header)."""
    expected = request.app[INGRESS].config.server.token
    if not expected:
        return True
    auth = request.headers.get("Authorization", "")
    candidates = [supplied, request.query.get("token"), auth[len("Bearer "):] if auth.startswith("Bearer ") else None]
    return any(isinstance(c, str) and hmac.compare_digest(c.encode(), expected.encode()) for c in candidates)


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    """The body, or None past `limit` bytes (declared or sent)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    data = bytearray()
    async for block in request.content.iter_chunked(1 << 16):
        data += block
        if len(data) > limit:
            return None
    return bytes(data)


async def _relay(response: aiohttp.ClientResponse) -> web.Response:
    body = await response.read()
    headers = {name: response.headers[name] for name in ("Cache-Control",) if name in response.headers}
    return web.Response(status=response.status, body=body, content_type=response.content_type, headers=headers)


async def _index(request: web.Request) -> web.StreamResponse:
    index = request.app[INGRESS].config.server.web_dir / "index.html"
    if not index.is_file():
        return web.Response(status=404, text="the page (web/index.html) is not installed")
    return web.FileResponse(index)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response(request.app[INGRESS].health())


async def _ask_any(request: web.Request) -> web.Response:
    """A request every replica answers alike (one model, one shared record dir), forwarded to the
    first live replica in id order that answers: so review decisions are written by one process."""
    ingress = request.app[INGRESS]
    body, headers = None, {}
    if request.method == "POST":
        body = await _read_limited(request, ingress.config.server.max_message_bytes)
        if body is None:
            return _error(413, f"body exceeds the {ingress.config.server.max_message_bytes}-byte limit")
        headers = {"Content-Type": request.content_type}
    for replica in sorted((r for r in ingress.replicas.values() if r.alive), key=lambda r: r.info.id):
        try:
            async with ingress.http.request(request.method, f"{replica.info.url}{request.path_qs}", data=body, headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S)) as response:
                return await _relay(response)
        except aiohttp.ClientConnectorError as error:
            ingress.mark_dead(replica, f"connection refused ({error.os_error})")
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            log.warning("replica %s did not answer %s: %r", replica.info.id, request.path, error)
    return _error(503, ingress.full_message() if not any(r.alive for r in ingress.replicas.values()) else "no replica answered")


async def _review(request: web.Request) -> web.Response:
    """The review page and its API (app/review_routes.py), which read the replicas' shared record dir;
    on a non-loopback bind they need the public token, as on a single server."""
    if not _token_ok(request):
        request.app[INGRESS].stats["rejected_auth"] += 1
        return _error(401, "bad or missing token")
    return await _ask_any(request)


async def _upload(request: web.Request) -> web.Response:
    ingress = request.app[INGRESS]
    if not _token_ok(request):
        ingress.stats["rejected_auth"] += 1
        return _error(401, "bad or missing token")
    if not request.content_type.startswith("image/"):
        return _error(400, f"Content-Type must be image/*, got {request.content_type[:40]!r}")
    limit = ingress.config.server.max_upload_bytes
    data = await _read_limited(request, limit)
    if data is None:
        return _error(413, f"upload exceeds the {limit}-byte limit")
    for replica in ingress.placement() or [r for r in ingress.replicas.values() if r.alive]:
        try:
            async with ingress.http.post(f"{replica.info.url}/api/upload", data=data, headers={"Content-Type": request.content_type},
                                         timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S)) as response:
                if response.status == 200:
                    answer = await response.json()
                    ingress.keep_upload(answer["id"], data, request.content_type, replica.info.id)
                    return web.json_response(answer)
                return await _relay(response)
        except aiohttp.ClientConnectorError as error:
            ingress.mark_dead(replica, f"connection refused ({error.os_error})")
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            log.warning("replica %s did not take an upload: %r", replica.info.id, error)
    return _error(503, ingress.full_message())


async def _offer(request: web.Request) -> web.Response:
    """Place the walk and forward its offer; the replica validates the offer in full, as it would alone."""
    t0 = time.perf_counter()
    ingress = request.app[INGRESS]
    if request.content_type != "application/json":
        ingress.stats["rejected_bad_request"] += 1
        return _error(415, f"Content-Type must be application/json, got {request.content_type[:40]!r}")
    limit = ingress.config.server.max_message_bytes * OFFER_BYTES_FACTOR
    body = await _read_limited(request, limit)
    if body is None:
        ingress.stats["rejected_bad_request"] += 1
        return _error(413, f"offer exceeds the {limit}-byte limit")
    try:
        offer = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        offer = None
    if not isinstance(offer, dict):
        ingress.stats["rejected_bad_request"] += 1
        return _error(400, "offer must be a JSON object")
    if not _token_ok(request, offer.get("token")):
        ingress.stats["rejected_auth"] += 1
        return _error(401, "bad or missing token")
    async def forward(replica: Replica) -> tuple[dict, float]:
        t_up = time.perf_counter()
        async with ingress.http.post(f"{replica.info.url}/offer", data=body, headers={"Content-Type": "application/json"},
                                     timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S)) as response:
            upstream_ms = (time.perf_counter() - t_up) * 1e3
            if response.status == 503:
                raise _ReplicaFull
            if response.status != 200:
                raise _Answered(await _relay(response))
            return await response.json(), upstream_ms

    try:
        placed = await _place(ingress, offer.get("start"), "an offer", forward)
    except _Answered as answered:
        return answered.response
    if placed is not None:
        replica, (answer, upstream_ms) = placed
        session_id = answer["session_id"]
        ingress.remember_route(session_id, Route(replica.info.id, answer["close_token"]))
        answer["events"] = f"/api/sessions/{session_id}/events?key={answer['close_token']}"
        answer["replica"] = replica.info.id
        ingress.offer_ms.append(((time.perf_counter() - t0) * 1e3, upstream_ms))
        log.info("[%s] placed on replica %s (%.0f ms, replica %.0f ms)", session_id, replica.info.id, (time.perf_counter() - t0) * 1e3, upstream_ms)
        return web.json_response(answer)
    ingress.stats["rejected_full"] += 1
    return _error(503, ingress.full_message())


async def _close_session(request: web.Request) -> web.Response:
    """The page's goodbye beacon, forwarded to the walk's replica (which checks the close token)."""
    ingress = request.app[INGRESS]
    route = ingress.routes.get(request.match_info["session_id"])
    replica = ingress.replicas.get(route.replica_id) if route is not None else None
    if replica is None or not replica.alive:
        ingress.stats["rejected_auth"] += 1
        return _error(403, "no such session, or not its close token")
    body = await _read_limited(request, 256)
    if body is None:
        return _error(413, "close token exceeds the 256-byte limit")
    try:
        async with ingress.http.post(f"{replica.info.url}{request.path}", data=body, headers={"Content-Type": request.content_type},
                                     timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S)) as response:
            return await _relay(response)
    except (aiohttp.ClientError, asyncio.TimeoutError) as error:
        return _error(502, f"the walk's replica did not answer: {error!r}")


async def _events(request: web.Request) -> web.StreamResponse:
    """The walk's event stream: quiet while its replica lives; one `error` message when it dies."""
    ingress = request.app[INGRESS]
    route = ingress.routes.get(request.match_info["session_id"])
    key = request.query.get("key", "")
    if route is None or not hmac.compare_digest(key.encode(), route.close_token.encode()):
        return _error(403, "no such session, or not its key")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
    await response.prepare(request)
    # The page closes the stream when its walk ends; a reconnect after the error would only get 403.
    await response.write(b"retry: 3600000\n\n")
    try:
        while True:
            try:
                await asyncio.wait_for(route.replica_gone.wait(), EVENTS_KEEPALIVE_S)
                break
            except asyncio.TimeoutError:
                await response.write(b": keepalive\n\n")
        message = json.dumps({"type": "error", "message": route.reason})
        await response.write(f"data: {message}\n\n".encode())
        await response.write_eof()
    except ConnectionResetError:
        # The page closed the stream (its walk ended, or it left).
        pass
    return response


async def _websocket(request: web.Request) -> web.StreamResponse:
    """Proxy the websocket fallback to a placed replica (see the module docstring)."""
    ingress = request.app[INGRESS]
    server = ingress.config.server
    ws = web.WebSocketResponse(max_msg_size=max(1 << 22, 16 * server.max_message_bytes), compress=False, heartbeat=20.0)
    await ws.prepare(request)

    async def refuse(message: str) -> web.WebSocketResponse:
        if not ws.closed:
            await ws.send_str(json.dumps({"type": "error", "message": message}))
            await ws.close()
        return ws

    try:
        first = await ws.receive(timeout=10.0)
    except asyncio.TimeoutError:
        return await refuse("no hello within 10 s")
    if first.type != WSMsgType.TEXT:
        return await refuse("the first message must be a JSON hello") if first.type == WSMsgType.BINARY else ws
    try:
        hello = json.loads(first.data)
    except ValueError:
        hello = None
    if not isinstance(hello, dict):
        return await refuse("bad hello: not a JSON object")
    if not _token_ok(request, hello.get("token")):
        ingress.stats["rejected_auth"] += 1
        return await refuse("bad or missing token")
    async def connect(replica: Replica) -> tuple[aiohttp.ClientWebSocketResponse, object]:
        upstream = await ingress.http.ws_connect(f"{replica.info.url}/ws", max_msg_size=0, compress=0, heartbeat=20.0,
                                                 timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0))
        try:
            await upstream.send_str(first.data)
            # The replica's first answer (its session message, or an error) says whether it took the walk.
            reply = await upstream.receive(timeout=FORWARD_TIMEOUT_S)
        except BaseException:
            await upstream.close()
            raise
        if reply.type == WSMsgType.TEXT and _is_full(reply.data):
            await upstream.close()
            raise _ReplicaFull
        return upstream, reply

    placed = await _place(ingress, hello.get("start"), "a websocket", connect)
    if placed is not None:
        replica, (upstream, reply) = placed
        log.info("websocket walk placed on replica %s", replica.info.id)
        if reply.type == WSMsgType.TEXT:
            await ws.send_str(reply.data)
        await _pipe(ws, upstream, replica)
        return ws
    ingress.stats["rejected_full"] += 1
    return await refuse(ingress.full_message())


class _ReplicaFull(Exception):
    """A replica refused a walk for want of room (walks came in directly or between probes, or its capacity fell)."""


class _Answered(Exception):
    """A replica answered a forwarded request with something to hand back to the page as it is."""

    def __init__(self, response: web.Response):
        super().__init__(response.status)
        self.response = response


async def _place(ingress: Ingress, start: object, what: str, attempt):
    """Hand a walk to the replicas of `ingress.placement()` in turn: the first whose `await attempt(replica)`
    returns takes it -> (replica, what attempt returned); None when none had room.

    A replica is counted in its load while a walk is on its way there (so walks arriving together spread
    out). `attempt` raises `_ReplicaFull` when the replica refuses for want of room (it is then counted
    full until its next probe); a refused connection marks the replica dead; other network errors and
    timeouts pass on to the next replica; anything else (`_Answered`) reaches the caller.
    """
    for replica in ingress.placement():
        replica.placing += 1
        try:
            await ingress.ensure_start(start, replica)
            result = await attempt(replica)
        except _ReplicaFull:
            replica.sessions = max(replica.sessions, replica.room())
            continue
        except aiohttp.ClientConnectorError as error:
            ingress.mark_dead(replica, f"connection refused ({error.os_error})")
            continue
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            log.warning("replica %s failed %s: %r", replica.info.id, what, error)
            continue
        finally:
            replica.placing -= 1
        replica.placed_t.append(time.monotonic())
        return replica, result
    return None


def _is_full(text: str) -> bool:
    """Whether a replica's text message is its refusal for want of room (docs/protocol.md: "server full: ...")."""
    try:
        message = json.loads(text)
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("type") == "error" and str(message.get("message", "")).startswith(NO_ROOM)


async def _pipe(page: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse, replica: Replica) -> None:
    """Copy messages both ways until one side closes. A replica that closes properly has said why
    itself; one whose connection just drops (its process died) gets an `error` message here."""
    closed_by_replica = asyncio.Event()

    async def down() -> None:
        async for msg in upstream:
            if msg.type == WSMsgType.TEXT:
                await page.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await page.send_bytes(msg.data)
        if upstream.close_code is not None and upstream.close_code != aiohttp.WSCloseCode.ABNORMAL_CLOSURE:
            closed_by_replica.set()

    async def up() -> None:
        async for msg in page:
            if msg.type == WSMsgType.TEXT:
                await upstream.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await upstream.send_bytes(msg.data)

    tasks = [asyncio.ensure_future(down()), asyncio.ensure_future(up())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if tasks[0] in done and not page.closed and not closed_by_replica.is_set():
            log.warning("websocket walk on replica %s: connection lost (close code %s)", replica.info.id, upstream.close_code)
            try:
                await page.send_str(json.dumps({"type": "error", "message": REPLICA_GONE}))
            except ConnectionError:
                pass
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await upstream.close()
        if not page.closed:
            await page.close(code=upstream.close_code if closed_by_replica.is_set() and upstream.close_code else aiohttp.WSCloseCode.GOING_AWAY)
