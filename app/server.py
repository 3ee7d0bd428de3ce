"""The aiohttp application: page, start scenes, uploads, WebRTC signalling and the websocket fallback.

`create_app(config, runtime=None)` keeps all state on `app[...]` keys (no module globals): the
runtime (model, VAE, scenes), the generation worker, the live sessions. With `runtime=None` the
model is loaded at startup (`app.runtime.build_runtime`). Routes and messages: docs/protocol.md.

Limits: `max_sessions` live sessions per server (one more gets 503 with a message); uploads of at
most `max_upload_bytes`, images only, decoded within a bounded memory (`app.runtime.Uploads`); JSON
messages of at most `max_message_bytes`. A non-loopback bind needs a token, checked on /offer, /ws
and /api/upload. Foreign Hosts and cross-site requests are refused before any handler runs
(`app.guards`). A WebRTC peer that has not connected `connect_timeout_s` after its answer is closed.
A page that goes away frees its slot within seconds (docs/protocol.md, "Liveness"): its pagehide
posts the session's close token to /api/sessions/<id>/close and sends a `close` note; without them,
a closed data channel or websocket, or `silence_timeout_s` without a message from a page that pings,
ends the session.
Every bad request gets a 4xx with `{"error": ...}` naming what is wrong, never a 500.
"""
from __future__ import annotations

import asyncio
import hmac
import io
import json
import logging
import secrets
import struct
import threading
import time
from collections.abc import Callable

from aiohttp import WSMsgType, web

from app import messages as m
from app.config import AppConfig, ServerConfig
from app.guards import add_security_headers, check_offer_sdp, guard_middleware
from app.runtime import Runtime, UploadRefused, build_runtime
from app.session import Session
from app.transports import Transport, WebRTCTransport, WebSocketTransport
from app.tracks import GeneratedVideoTrack, patch_encoder_bitrates
from streaming.buffer import BufferClosed
from streaming.worker import GenerationWorker

log = logging.getLogger("roam.server")

CONFIG = web.AppKey("config", AppConfig)
RUNTIME = web.AppKey("runtime", Runtime)
WORKER = web.AppKey("worker", GenerationWorker)
SESSIONS = web.AppKey("sessions", dict)
STATS = web.AppKey("stats", dict)
PREWARM = web.AppKey("prewarm", asyncio.Future)
PREWARM_STOP = web.AppKey("prewarm_stop", threading.Event)

# Websocket frame header (docs/protocol.md): magic, version, header_len, frame_id, input_seq,
# server_t, width, height, reserved; little-endian, 32 bytes.
WS_HEADER = struct.Struct("<4sHHIIdHHI")
WS_MAGIC = b"ROAM"
WS_VERSION = 1
WS_MAX_IN_FLIGHT = 2
# How often each session's silence is checked (docs/protocol.md, "Liveness").
LIVENESS_CHECK_S = 0.25
# A close token is 32 characters (Session.close_token); a beacon body longer than this is not one.
MAX_CLOSE_BODY_BYTES = 256


def create_app(config: AppConfig, runtime: Runtime | None = None) -> web.Application:
    """The roam web application (see the module docstring)."""
    stats = {"rejected_full": 0, "rejected_capacity": 0, "rejected_bad_request": 0, "rejected_auth": 0, "rejected_host": 0, "rejected_cross_site": 0}
    app = web.Application(client_max_size=config.server.max_upload_bytes + 1024, middlewares=[guard_middleware(config.server, stats)])
    app.on_response_prepare.append(add_security_headers)
    app[CONFIG] = config
    app[SESSIONS] = {}
    app[STATS] = stats
    if runtime is not None:
        app[RUNTIME] = runtime
    app[WORKER] = GenerationWorker(num_threads=config.stream.worker_threads(), max_batch=config.stream.batch_sessions)
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    app.router.add_get("/", _index)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/api/scenes", _scenes)
    app.router.add_get("/api/model", _model)
    app.router.add_get("/api/scenes/{scene_id}/thumbnail.jpg", _thumbnail)
    app.router.add_post("/api/upload", _upload)
    app.router.add_post("/offer", _offer)
    app.router.add_post("/api/sessions/{session_id}/close", _close_session)
    app.router.add_get("/ws", _websocket)
    if config.server.web_dir.is_dir():
        app.router.add_static("/web/", config.server.web_dir)
    _add_collect_routes(app, config)
    return app


def _add_collect_routes(app: web.Application, config: AppConfig) -> None:
    """Data collection: /review always; /api/campaign/* with a campaign file (docs/collection.md)."""
    from app.campaign_routes import add_campaign_routes
    from app.review_routes import add_review_routes
    from collect.campaign import load_campaign

    if config.server.campaign is not None:
        add_campaign_routes(app, load_campaign(config.server.campaign))
    add_review_routes(app)


async def _on_startup(app: web.Application) -> None:
    config = app[CONFIG]
    patch_encoder_bitrates(config.stream.video_bitrate, config.stream.video_bitrate_max)
    if RUNTIME not in app:
        app[RUNTIME] = await asyncio.to_thread(build_runtime, config)
    if config.uses_generator_process():
        await _start_generator_process(app)
    app[WORKER].start()
    prewarm = getattr(app[RUNTIME].scenes, "prewarm", None)
    if prewarm is not None:
        # Start scenes render in the background; the page's thumbnails wait for them if needed.
        app[PREWARM_STOP] = threading.Event()
        app[PREWARM] = asyncio.ensure_future(asyncio.to_thread(prewarm, app[PREWARM_STOP]))
    stream = app[RUNTIME].stream
    log.info("serving model %s at %dx%d, %g fps", app[RUNTIME].model_name, stream.width, stream.height, stream.fps)


async def _start_generator_process(app: web.Application) -> None:
    """Walks in a child process with its own GIL (`streaming.generator_process`), started before the
    first walk so that no walk waits for it."""
    from streaming.generator_process import GeneratorProcess

    runtime, worker = app[RUNTIME], app[WORKER]
    if runtime.takes_prompts:
        raise ValueError(f"{runtime.model_name} conditions walks on prompts, which a generator process does not take: "
                         "use --generator-process off")
    host = GeneratorProcess(runtime.generator_spec(), torch_threads=app[CONFIG].stream.worker_threads())
    try:
        await asyncio.to_thread(host.start)
    except Exception as error:
        raise RuntimeError(f"could not start the generator process ({error}); serve with --generator-process off "
                           "to compute the walks in this process") from error
    worker.host = host
    log.info("walks run in generator process %d", host.generation)


async def _on_shutdown(app: web.Application) -> None:
    sessions = list(app[SESSIONS].values())
    await asyncio.gather(*(s.close("server shutdown") for s in sessions), return_exceptions=True)
    await app[WORKER].astop()
    if app[WORKER].host is not None:
        await asyncio.to_thread(app[WORKER].host.close)
    if PREWARM in app:
        app[PREWARM_STOP].set()
        await asyncio.gather(app[PREWARM], return_exceptions=True)
    log.info("shut down (%d sessions closed)", len(sessions))


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _token_ok(request: web.Request, supplied: str | None = None) -> bool:
    expected = request.app[CONFIG].server.token
    if not expected:
        return True
    candidates = [supplied, request.query.get("token")]
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        candidates.append(auth[len("Bearer ") :])
    return any(c is not None and hmac.compare_digest(c.encode(), expected.encode()) for c in candidates)


def _reserve_slot(app: web.Application) -> str | None:
    """A new session id if the server has room (the slot is held until the session closes)."""
    config = app[CONFIG].server
    sessions = app[SESSIONS]
    if len(sessions) >= config.max_sessions:
        app[STATS]["rejected_full"] += 1
        return None
    session_id = secrets.token_hex(4)
    sessions[session_id] = None
    return session_id


def _measured_capacity(app: web.Application) -> int | None:
    runtime = app.get(RUNTIME)
    if runtime is None:
        return None
    period_s = runtime.temporal_stride * runtime.stream.chunk_latents / runtime.stream.fps
    return app[WORKER].capacity(period_s, limit=app[CONFIG].server.max_sessions)


def _capacity_refusal(app: web.Application) -> str | None:
    """Why one more session would not keep its frame rate (the worker's measured batched chunk
    times, `GenerationWorker.capacity`), or None while it would or nothing was measured yet."""
    config = app[CONFIG]
    if not config.server.admit_by_capacity:
        return None
    stream = app[RUNTIME].stream
    period_s = app[RUNTIME].temporal_stride * stream.chunk_latents / stream.fps
    live = len(app[SESSIONS])
    capacity = _measured_capacity(app)
    if capacity is None or live < capacity:
        return None
    cycle = app[WORKER].cost.cycle_ms(live + 1, app[WORKER].max_batch)
    return (f"server at its measured capacity: {live} sessions in use; chunks for {live + 1} would take about "
            f"{cycle:.0f} ms of every {period_s * 1e3:.0f} ms of video at {stream.fps:g} fps")


def _full_message(app: web.Application) -> str:
    n = app[CONFIG].server.max_sessions
    return f"server full: {n} of {n} sessions in use"


async def _forget(app: web.Application, session_id: str) -> None:
    app[SESSIONS].pop(session_id, None)


class _Refused(Exception):
    """An admission refused with an HTTP status and a message for the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def _admit(request: web.Request, token: str | None, start_id: str, prompt: str | None,
                 make_transport: Callable[[], Transport]) -> Session:
    """The one admission path of /offer and /ws: token, capacity, start view, prompt, slot, then the
    session with its transport (made only once everything else passed), registered in SESSIONS.
    Raises `_Refused` (counted in STATS) with the status and reason for the page."""
    app = request.app
    config = app[CONFIG]
    runtime = app[RUNTIME]
    stats = app[STATS]
    if not _token_ok(request, token):
        stats["rejected_auth"] += 1
        raise _Refused(401, "bad or missing token")
    if len(app[SESSIONS]) >= config.server.max_sessions:
        stats["rejected_full"] += 1
        raise _Refused(503, _full_message(app))
    at_capacity = _capacity_refusal(app)
    if at_capacity is not None:
        stats["rejected_capacity"] += 1
        raise _Refused(503, at_capacity)
    start = await asyncio.to_thread(runtime.start_view, start_id)
    if start is None:
        stats["rejected_bad_request"] += 1
        raise _Refused(400, f"unknown start {m.brief(start_id)}")
    try:
        walk_prompt = await asyncio.to_thread(runtime.walk_prompt, start_id, prompt)
    except ValueError as error:
        stats["rejected_bad_request"] += 1
        raise _Refused(400, str(error)) from None
    session_id = _reserve_slot(app)
    if session_id is None:
        raise _Refused(503, _full_message(app))
    transport = make_transport()
    try:
        session = Session(session_id, transport, runtime, app[WORKER], start, config.server.max_message_bytes,
                          on_closed=lambda s: _forget(app, s.id), record_dir=config.server.record_dir,
                          rewind_chunks=config.server.rewind_chunks, prompt=walk_prompt)
    except Exception:
        await transport.close()
        await _forget(app, session_id)
        raise
    session.record_messages = config.server.campaign is None
    app[SESSIONS][session_id] = session
    return session


def _run_while_open(session: Session, coro) -> None:
    """Run `coro` beside the session; closing the session cancels it (unless it is what closes it)."""
    task = asyncio.ensure_future(coro)

    async def cancel() -> None:
        if task is not asyncio.current_task():
            task.cancel()

    session.closers.insert(0, cancel)


async def _watch_liveness(session: Session, config: ServerConfig) -> None:
    """Close the session once its page counts as gone (`Session.gone_reason`)."""
    while not session.closed:
        await asyncio.sleep(LIVENESS_CHECK_S)
        reason = session.gone_reason(time.monotonic(), config.silence_timeout_s, config.hidden_silence_timeout_s)
        if reason is not None:
            await session.close(reason)


async def _close_session(request: web.Request) -> web.Response:
    """The page's goodbye by `navigator.sendBeacon`: a text/plain body holding the session's close
    token (from the offer's answer). Only that token closes the session, so another page that could
    post here (the guards refuse cross-site requests anyway) cannot end someone else's walk."""
    app = request.app
    if request.content_type != "text/plain":
        app[STATS]["rejected_bad_request"] += 1
        return _json_error(415, f"Content-Type must be text/plain, got {m.brief(request.content_type)}")
    try:
        body = await _read_body(request, MAX_CLOSE_BODY_BYTES, "close token")
    except _TooLarge as error:
        app[STATS]["rejected_bad_request"] += 1
        return _json_error(413, str(error))
    session = app[SESSIONS].get(request.match_info["session_id"])
    token = body.decode("utf-8", errors="replace").strip()
    # An unknown id and a wrong token get the same answer: live session ids are not told apart.
    if session is None or not hmac.compare_digest(token.encode(), session.close_token.encode()):
        app[STATS]["rejected_auth"] += 1
        return _json_error(403, "no such session, or not its close token")
    await session.close("the page left (beacon)")
    return web.Response(status=204)


async def _index(request: web.Request) -> web.StreamResponse:
    index = request.app[CONFIG].server.web_dir / "index.html"
    if not index.is_file():
        return web.Response(status=404, text="the page (web/index.html) is not installed")
    return web.FileResponse(index)


async def _healthz(request: web.Request) -> web.Response:
    app = request.app
    runtime = app.get(RUNTIME)
    host = app[WORKER].host
    return web.json_response(
        {
            "ok": True,
            "sessions": sum(1 for s in app[SESSIONS].values() if s is not None),
            "max_sessions": app[CONFIG].server.max_sessions,
            # Sessions the measured batched chunk times fit (None before the first chunk).
            "capacity": _measured_capacity(app),
            "model": runtime.model_name if runtime else None,
            "rejected": {name.removeprefix("rejected_"): count for name, count in app[STATS].items()},
            # The child the walks run in (`--generator-process`); None when they run in this process.
            "generator_process": None if host is None else {"alive": host.alive, "children_started": host.generation},
        }
    )


async def _scenes(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    scenes = runtime.scenes
    listing = [{"id": i, "name": scenes.name(i), "thumbnail": f"/api/scenes/{i}/thumbnail.jpg"} for i in scenes.ids()]
    if runtime.takes_prompts:
        # Each scene's default prompt (the page's prompt field); may build a scene, so off the event loop.
        prompts = await asyncio.to_thread(lambda: [runtime.default_prompt(item["id"]) for item in listing])
        for item, prompt in zip(listing, prompts):
            item["prompt"] = prompt
    return web.json_response(listing)


async def _model(request: web.Request) -> web.Response:
    """What the page needs to know of the model: its name and whether walks take a prompt (the prompt field)."""
    runtime = request.app[RUNTIME]
    profile = runtime.profile
    return web.json_response({
        "name": runtime.model_name,
        "prompt": {"enabled": runtime.takes_prompts, "max_chars": m.MAX_PROMPT_CHARS,
                   "default": runtime.stream.prompt if runtime.takes_prompts else None},
        "refiner": runtime.refiner is not None,
        "profile": None if profile is None else profile.name,
    })


def encode_jpeg(image, quality: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=quality)
    return out.getvalue()


async def _thumbnail(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    scene_id = request.match_info["scene_id"]
    if runtime.scenes.seed_of(scene_id) is None:
        return _json_error(404, f"unknown scene {m.brief(scene_id)}")
    view = await asyncio.to_thread(runtime.scenes.view, scene_id)
    data = await asyncio.to_thread(encode_jpeg, view.image, 85)
    return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


async def _upload(request: web.Request) -> web.Response:
    app = request.app
    if not _token_ok(request):
        app[STATS]["rejected_auth"] += 1
        return _json_error(401, "bad or missing token")
    if not request.content_type.startswith("image/"):
        return _json_error(400, f"Content-Type must be image/*, got {m.brief(request.content_type)}")
    try:
        data = await _read_body(request, app[CONFIG].server.max_upload_bytes, "upload")
    except _TooLarge as error:
        return _json_error(413, str(error))
    try:
        upload_id = await asyncio.to_thread(app[RUNTIME].uploads.add, data)
    except UploadRefused as error:
        return _json_error(error.status, str(error))
    return web.json_response({"id": upload_id})


class _TooLarge(ValueError):
    pass


async def _read_body(request: web.Request, limit: int, what: str) -> bytes:
    """The request body, read up to `limit` bytes; _TooLarge past that (declared or sent)."""
    if request.content_length is not None and request.content_length > limit:
        raise _TooLarge(f"{what} of {request.content_length} bytes exceeds the {limit}-byte limit")
    data = bytearray()
    async for block in request.content.iter_chunked(1 << 16):
        data += block
        if len(data) > limit:
            raise _TooLarge(f"{what} exceeds the {limit}-byte limit")
    return bytes(data)


def _parse_offer(body: bytes, max_bytes: int) -> dict:
    try:
        offer = m.decode_json(body.decode("utf-8", errors="strict"), max_bytes)
    except (UnicodeDecodeError, m.MessageError) as error:
        raise ValueError(f"offer must be a JSON object: {error}") from None
    sdp, kind, start = offer.get("sdp"), offer.get("type"), offer.get("start")
    if kind != "offer":
        raise ValueError(f"type must be 'offer', got {m.brief(kind)}")
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise ValueError("sdp must be an SDP string starting with 'v=0'")
    if not isinstance(start, str) or not 1 <= len(start) <= m.MAX_START_ID_CHARS:
        raise ValueError(f"start must be a scene or upload id string of 1 to {m.MAX_START_ID_CHARS} characters, got {m.brief(start)}")
    token = offer.get("token")
    if token is not None and not isinstance(token, str):
        raise ValueError("token must be a string")
    try:
        m.parse_prompt(offer.get("prompt"))
    except m.MessageError as error:
        raise ValueError(error.detail) from None
    check_offer_sdp(sdp)
    return offer


async def _offer(request: web.Request) -> web.Response:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    app = request.app
    config = app[CONFIG]
    # Only JSON: a page on another site can POST text/plain or a form without a preflight.
    if request.content_type != "application/json":
        app[STATS]["rejected_bad_request"] += 1
        return _json_error(415, f"Content-Type must be application/json, got {m.brief(request.content_type)}")
    max_bytes = config.server.max_message_bytes * 4
    try:
        body = await _read_body(request, max_bytes, "offer")
    except _TooLarge as error:
        app[STATS]["rejected_bad_request"] += 1
        return _json_error(413, str(error))
    try:
        offer = _parse_offer(body, max_bytes)
    except ValueError as error:
        app[STATS]["rejected_bad_request"] += 1
        return _json_error(400, str(error))
    try:
        session = await _admit(request, offer.get("token"), offer["start"], offer.get("prompt"),
                               lambda: WebRTCTransport(RTCPeerConnection(RTCConfiguration(iceServers=[]))))
    except _Refused as refusal:
        return _json_error(refusal.status, refusal.message)
    session_id = session.id
    transport = session.transport
    pc = transport.peer
    # Until the page's control channel opens, the connect deadline and ICE watch the peer.
    session.last_heard_t = time.monotonic()

    @pc.on("datachannel")
    def on_datachannel(channel) -> None:
        if channel.label == "control":
            transport.channels.append(channel)
            session.last_heard_t = time.monotonic()
            channel.send(json.dumps(session.session_message()))

            # The page closed it, or the SCTP association ended (the page's peer connection closed).
            @channel.on("close")
            def on_close() -> None:
                asyncio.ensure_future(session.close("control channel closed"))

        @channel.on("message")
        def on_message(data) -> None:
            if isinstance(data, (bytes, bytearray)):
                session.handle_binary(data)
            else:
                session.handle_text(data)

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        log.info("[%s] connection %s", session_id, pc.connectionState)
        if pc.connectionState in ("failed", "closed"):
            await session.close(f"connection {pc.connectionState}")

    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        video = [t for t in pc.getTransceivers() if t.kind == "video"]
        if not video:
            raise ValueError("the offer has no video transceiver")
        pc.addTrack(GeneratedVideoTrack(session.pacer, session.frame_sent))
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as error:
        await session.close(f"bad offer: {error}")
        app[STATS]["rejected_bad_request"] += 1
        return _json_error(400, f"could not negotiate the offer: {error}")
    session.begin()

    # A peer that never connects (the page went away mid-handshake, or a client that only ever
    # wanted the slot) would hold it until ICE gives up, ~30 s; free it sooner.
    timeout = config.server.connect_timeout_s

    async def connect_deadline() -> None:
        await asyncio.sleep(timeout)
        if pc.connectionState != "connected":
            await session.close(f"not connected within {timeout:g} s")

    _run_while_open(session, connect_deadline())
    _run_while_open(session, _watch_liveness(session, config.server))
    answer = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "session_id": session_id, "close_token": session.close_token}
    return web.json_response(answer)


async def _websocket(request: web.Request) -> web.StreamResponse:
    app = request.app
    config = app[CONFIG]
    # (Origin and Host were checked by app.guards.)
    # Messages above max_message_bytes are dropped and counted by the session; only far larger
    # ones make aiohttp close the socket.
    ws = web.WebSocketResponse(max_msg_size=max(1 << 22, 16 * config.server.max_message_bytes), compress=False, heartbeat=20.0)
    await ws.prepare(request)
    session: Session | None = None
    try:
        hello = await _websocket_hello(ws, request)
        if hello is None:
            return ws
        session = hello
        await _websocket_session(ws, session, config.server)
    finally:
        if session is not None:
            await session.close("websocket closed")
        if not ws.closed:
            await ws.close()
    return ws


async def _websocket_hello(ws: web.WebSocketResponse, request: web.Request) -> Session | None:
    """Wait for the page's hello; returns the new session, or None after sending an error and closing."""
    app = request.app
    config = app[CONFIG]

    async def refuse(message: str) -> None:
        # The page may be gone already: then there is nobody to tell.
        if ws.closed:
            return
        try:
            await ws.send_str(json.dumps({"type": "error", "message": message}))
        except ConnectionError:
            pass
        await ws.close()

    try:
        msg = await ws.receive(timeout=10.0)
    except asyncio.TimeoutError:
        await refuse("no hello within 10 s")
        return None
    if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
        # A first message over max_msg_size (aiohttp closed the socket with 1009, message too big),
        # or the page left before saying hello.
        log.info("websocket closed before its hello: %s", m.brief(msg.data))
        return None
    if msg.type != WSMsgType.TEXT:
        await refuse("the first message must be a JSON hello")
        return None
    try:
        hello = m.parse_message(msg.data, config.server.max_message_bytes)
    except m.MessageError as error:
        await refuse(f"bad hello: {error}")
        return None
    if not isinstance(hello, m.Hello):
        await refuse(f"the first message must be hello, got {type(hello).__name__.lower()}")
        return None
    try:
        return await _admit(request, hello.token, hello.start, hello.prompt, lambda: WebSocketTransport(WS_MAX_IN_FLIGHT))
    except _Refused as refusal:
        await refuse(refusal.message)
        return None


async def _websocket_session(ws: web.WebSocketResponse, session: Session, config: ServerConfig) -> None:
    """Run one websocket session: a receiver (messages, acks) and a sender (frames, at most 2 in flight)."""
    quality = session.runtime.stream.jpeg_quality
    transport = session.transport
    assert isinstance(transport, WebSocketTransport)
    outbox, in_flight, acked = transport.outbox, transport.in_flight, transport.acked
    session.send_json(session.session_message())
    session.begin()
    _run_while_open(session, _watch_liveness(session, config))

    async def receiver() -> None:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                session.handle_text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                session.handle_binary(msg.data)
            elif msg.type == WSMsgType.ERROR:
                return

    async def text_sender() -> None:
        while True:
            await ws.send_str(await outbox.get())

    async def frame_sender() -> None:
        while True:
            behind = False
            while len(in_flight) >= transport.max_in_flight:
                acked.clear()
                behind = True
                await acked.wait()
            if behind:
                # The page fell behind: show the newest frame, not the backlog.
                await session.buffer.wait()
                frame = session.buffer.newest_nowait()
                if frame is None:
                    continue
            else:
                frame, _ = await session.pacer.next_frame()
            jpeg = await asyncio.to_thread(encode_jpeg, frame.image, quality)
            height, width = frame.image.shape[:2]
            header = WS_HEADER.pack(WS_MAGIC, WS_VERSION, WS_HEADER.size, frame.frame_id % 2**32, max(frame.input_seq, 0) % 2**32, time.time() * 1e3, width, height, 0)
            in_flight[frame.frame_id % 2**32] = time.monotonic()
            await ws.send_bytes(header + jpeg)
            session.frame_sent(frame)

    tasks = [asyncio.ensure_future(t()) for t in (receiver, text_sender, frame_sender)]
    # A session closed from elsewhere (silence, a close note) ends the tasks here (WebSocketTransport.close).
    transport.tasks.extend(tasks)
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.cancelled():
                continue
            error = task.exception()
            if error is not None and not isinstance(error, (BufferClosed, ConnectionResetError)):
                log.warning("[%s] websocket task ended: %r", session.id, error)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Last words (an error message telling the page why) still go out if the socket is open.
        while not outbox.empty() and not ws.closed:
            try:
                await ws.send_str(outbox.get_nowait())
            except (ConnectionError, RuntimeError):
                break
