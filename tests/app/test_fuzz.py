"""Property-based fuzzing of everything a stranger can send: the HTTP routes, websocket messages (first
and later ones) and the data channels' messages (through the parser and a session's handlers, and
over a real WebRTC peer).

The property, for every input: a 4xx answer (or a 503 "server full"), a protocol error, or a counted
drop; never a 500, a traceback in the log or an exception out of a handler; and a session that was
streaming before the fuzzing still streams after it. Example counts are modest (smaller when
CI=true) so the suite stays fast on 2 cores.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
import zlib

import aiohttp
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from yarl import URL

from app import messages as m
from app.config import StreamConfig
from app.server import SESSIONS
from tests.app.helpers import RecordingTransport, WebRTCClient, fake_runtime, serve, wait_for
from tests.app.test_hardening import offer_sdp, png_declaring
from tests.app.test_websocket import _frames
from tests.conftest import IN_CI, ci_size

STREAM = StreamConfig(width=64, height=48, fps=16.0, idle_chunks=0)
FUZZ = dict(
    deadline=None,
    derandomize=IN_CI,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# JSON values, including the awkward ones: huge integers, non-finite floats (sent as NaN/Infinity
# tokens), deep nesting, boundary numbers of the protocol's ranges.
BOUNDARY_NUMBERS = st.sampled_from([0, -1, 1, 0.5, 89.9, 90, 90.001, -90.5, 1e5, 1e6 + 1, 3600, 3600.5, 2**32, 2**53, 2**53 + 1, 2**64, 1e308, -1e308, 5e-324, 10**400])
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | BOUNDARY_NUMBERS | st.text(max_size=30)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
TYPES = ["input", "reset", "record", "rewind", "settings", "ping", "hello", "ack"]
FIELDS = ["seq", "t", "keys", "yaw", "pitch", "roll", "dx", "dy", "on", "seconds", "walk_speed", "look_sensitivity", "fly", "start", "token", "frame_id"]
START_IDS = st.sampled_from(["scene:1", "scene:2", "scene:\u00b2", "scene:" + "9" * 5000, "scene:01", "upload:000000000000", ""]) | st.text(max_size=140)


@st.composite
def message_dicts(draw) -> dict:
    """A message shaped like the protocol's: a known (or odd) type and a few of its fields."""
    kind = draw(st.sampled_from(TYPES) | VALUES)
    fields = draw(st.dictionaries(st.sampled_from(FIELDS), VALUES | BOUNDARY_NUMBERS | START_IDS, max_size=6))
    return {"type": kind, **fields}


def _encode(message: dict) -> str:
    return json.dumps(message, allow_nan=True)


TEXT_MESSAGES = st.one_of(
    message_dicts().map(_encode),
    message_dicts().map(_encode).flatmap(lambda text: st.integers(0, len(text)).map(lambda n: text[:n])),
    VALUES.map(lambda v: json.dumps(v, allow_nan=True)),
    st.text(max_size=200),
    st.just("[" * 100_000),
    st.just("x" * (70 * 1024)),
)
# What a page can put on a JSON channel: text or bytes.
CHANNEL_MESSAGES = TEXT_MESSAGES | st.binary(max_size=300)


pytestmark = pytest.mark.usefixtures("fast_stun")



class Bystander:
    """A websocket session that streams (and acks) in the background for the whole test: other
    sessions must keep working whatever the fuzzed input does."""

    def __init__(self, http: aiohttp.ClientSession, url: str):
        self.http, self.url = http, url
        self.frames = 0
        self.error: BaseException | None = None

    async def __aenter__(self) -> Bystander:
        self.ws = await self.http.ws_connect(f"{self.url}/ws")
        await self.ws.send_str(json.dumps({"type": "hello", "start": "scene:2"}))
        self.task = asyncio.ensure_future(self._run())
        return self

    async def _run(self) -> None:
        try:
            while True:
                await _frames(self.ws, 1)
                self.frames += 1
        except BaseException as error:
            self.error = error
            raise

    async def still_streams(self) -> None:
        start = self.frames
        await wait_for(lambda: self.frames >= start + 3 or self.error is not None, timeout=20.0)
        assert self.error is None, f"the bystander's session ended: {self.error!r}"

    async def __aexit__(self, *exc) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task
        await self.ws.close()


@pytest.fixture
async def live(errors):
    """A server with a streaming bystander session; after the test the bystander still streams, a
    new session still gets in and nothing was logged at ERROR."""
    async with serve(fake_runtime(STREAM), max_sessions=3) as (url, app), aiohttp.ClientSession() as http:
        async with Bystander(http, url) as bystander:
            yield url, app, http, bystander
            await bystander.still_streams()
            async with http.ws_connect(f"{url}/ws") as ws:
                await ws.send_str(json.dumps({"type": "hello", "start": "scene:1"}))
                assert len(await _frames(ws, 2)) == 2
    assert errors() == []


@pytest.mark.heavy
@settings(max_examples=ci_size(400, 150), **FUZZ)
@given(data=CHANNEL_MESSAGES)
def test_the_parser_returns_a_message_or_a_drop_reason(data):
    try:
        message = m.parse_message(data, 64 * 1024)
    except m.MessageError as error:
        assert error.kind in ("binary", "oversized", "malformed", "nan", "unknown_type", "invalid")
        assert len(str(error)) < 400
    else:
        assert type(message).__name__.lower() in TYPES


@pytest.fixture
async def session():
    """A bare websocket-kind session on fakes (a recording transport), its frames and messages collected."""
    from app.session import Session
    from streaming.worker import GenerationWorker

    runtime = fake_runtime(STREAM)
    worker = GenerationWorker(num_threads=1)
    worker.start()
    transport = RecordingTransport()
    sent = transport.sent
    session = Session("fuzz", transport, runtime, worker, runtime.start_view("scene:1"), 64 * 1024)
    session.begin()
    try:
        yield session, sent
        # Generation went on under the fuzzing: frames still come.
        for _ in range(3):
            await asyncio.wait_for(session.pacer.next_frame(), 10.0)
        assert not session.closed
    finally:
        await session.close("test over")
        await worker.astop()


@pytest.mark.heavy
@settings(max_examples=ci_size(300, 120), **FUZZ)
@given(batch=st.lists(CHANNEL_MESSAGES, min_size=1, max_size=8))
async def test_session_handlers_drop_or_apply_every_message(session, batch):
    session, sent = session
    for data in batch:
        if isinstance(data, bytes):
            session.handle_binary(data)
        else:
            session.handle_text(data)
    assert not session.closed
    # The session still takes the next valid input and still answers.
    seq = session.job.latest_input.seq + 1
    assert session.handle_text(json.dumps({"type": "input", "seq": seq, "t": 0, "keys": 1, "yaw": 0, "pitch": 0, "roll": 0})) is not None
    session.handle_text(json.dumps({"type": "ping", "t": seq}))
    assert sent[-1]["type"] == "pong" and sent[-1]["t"] == seq


@pytest.mark.heavy
@settings(max_examples=ci_size(60, 25), **FUZZ)
@given(batch=st.lists(CHANNEL_MESSAGES, min_size=1, max_size=6), channel=st.sampled_from(["input", "control"]))
async def test_fuzzed_data_channel_messages_are_dropped_and_the_peer_streams_on(webrtc, batch, channel, errors):
    client, app = webrtc
    for data in batch:
        getattr(client, channel).send(data)
    # The control channel is ordered: the pong comes after every fuzzed message was handled.
    marker = time.monotonic()
    client.control.send(json.dumps({"type": "ping", "t": marker}))
    await wait_for(lambda: any(msg["type"] == "pong" and msg["t"] == marker for msg in client.messages), timeout=10.0)
    session = next(s for s in app[SESSIONS].values() if s is not None and s.transport.kind == "webrtc")
    assert not session.closed and client.pc.connectionState == "connected"
    assert errors() == []


@pytest.fixture
async def webrtc(live):
    url, app, _, _ = live
    client = WebRTCClient()
    response, _ = await client.connect(url)
    assert response.status == 200
    await client.wait_open()
    await client.frames(2)
    try:
        yield client, app
    finally:
        await client.close()


@pytest.mark.heavy
@settings(max_examples=ci_size(60, 25), **FUZZ)
@given(first=CHANNEL_MESSAGES | START_IDS.map(lambda s: json.dumps({"type": "hello", "start": s})), later=st.lists(CHANNEL_MESSAGES, max_size=5))
async def test_fuzzed_websocket_messages_get_a_protocol_error_or_a_session(live, first, later, errors):
    url, app, http, _ = live
    async with http.ws_connect(f"{url}/ws") as ws:
        await (ws.send_bytes(first) if isinstance(first, bytes) else ws.send_str(first))
        reply = await ws.receive(timeout=10)
        event(f"first message: {json.loads(reply.data)['type'] if reply.type == aiohttp.WSMsgType.TEXT else reply.type.name}")
        if reply.type == aiohttp.WSMsgType.TEXT and json.loads(reply.data)["type"] == "session":
            for data in later:
                await (ws.send_bytes(data) if isinstance(data, bytes) else ws.send_str(data))
            await ws.send_str(json.dumps({"type": "ping", "t": 1.5}))
            pongs: list[dict] = []
            await _frames(ws, 2, on_text=lambda msg: msg["type"] == "pong" and pongs.append(msg))
            while not pongs:
                await _frames(ws, 1, on_text=lambda msg: msg["type"] == "pong" and pongs.append(msg))
        else:
            assert reply.type == aiohttp.WSMsgType.TEXT, reply
            message = json.loads(reply.data)
            assert message["type"] == "error" and message["message"]
            assert (await ws.receive(timeout=10)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert errors() == []



def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds no pixel data (decoders see the size first)."""
    png = png_declaring(1, 1)
    # Signature (8 bytes), then the IHDR chunk: length, type, 13 bytes of data, CRC over type and data.
    ihdr = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


# Upload bodies: a sane image, a thin strip, headers that declare a bomb or too many pixels, a truncation.
IMAGES = [png_declaring(40, 30), png_declaring(1, 4000), _png_header(20000, 20000), _png_header(6000, 5000), b"\x89PNG\r\n\x1a\n" + b"\x00" * 64]
ROUTES = ["/", "/healthz", "/api/scenes", "/api/scenes/{}/thumbnail.jpg", "/api/upload", "/offer", "/ws", "/web/{}", "/{}", "/api/scenes/{}"]
HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
CONTENT_TYPES = st.sampled_from(["application/json", "text/plain", "image/png", "image/jpeg", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded"]) | HEADER_TEXT


@st.composite
def mutated_sdp(draw, sdp: str) -> str:
    """The page-like offer with lines dropped, repeated or given random values."""
    lines = sdp.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["drop", "repeat", "value"]))
        if action == "drop":
            del lines[i]
        elif action == "repeat":
            lines.insert(i, lines[i])
        else:
            key = lines[i].split(":", 1)[0].split("=", 1)[0]
            lines[i] = f"{key}={draw(HEADER_TEXT)}"
        if not lines:
            break
    return "\r\n".join(lines) + "\r\n"


@st.composite
def offer_bodies(draw, sdp: str) -> bytes:
    body = draw(st.fixed_dictionaries(
        {},
        optional={"sdp": mutated_sdp(sdp) | st.just(sdp) | VALUES, "type": st.just("offer") | VALUES, "start": START_IDS | VALUES, "token": VALUES},
    ))
    return json.dumps(body, allow_nan=True).encode()


HEADER_VALUES = {
    "Content-Type": CONTENT_TYPES,
    "Origin": st.sampled_from(["null", "http://evil.example"]) | HEADER_TEXT,
    "Sec-Fetch-Site": st.sampled_from(["same-site", "cross-site", "none"]) | HEADER_TEXT,
    "Sec-Fetch-Mode": st.sampled_from(["navigate", "cors", "no-cors", "websocket"]),
    "Host": st.sampled_from(["localhost", "evil.example", "[::1]:1", "[::1", ""]) | HEADER_TEXT,
    "Authorization": HEADER_TEXT,
}


@st.composite
def requests(draw, sdp: str, host: str) -> dict:
    """Mostly what the page itself would send to a route, with a few headers, the method or the body
    changed; so most requests get past the Host and cross-site guards into the handlers."""
    route = draw(st.sampled_from(ROUTES))
    path = route.format(draw(START_IDS.filter(lambda s: len(s) < 300) | st.text(max_size=40)).replace("/", "%"))
    proper = {"/api/upload": "POST", "/offer": "POST"}.get(route, "GET")
    method = draw(st.sampled_from([proper] * 6 + ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"]))
    headers = {"Host": host, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin", "Content-Type": {"/api/upload": "image/png"}.get(route, "application/json")}
    for name in draw(st.lists(st.sampled_from(sorted(HEADER_VALUES)), max_size=2, unique=True)):
        value = draw(st.none() | HEADER_VALUES[name])
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    images = st.sampled_from(IMAGES) | st.binary(min_size=1, max_size=64).map(lambda junk: IMAGES[0][:40] + junk)
    body = draw({"/offer": offer_bodies(sdp), "/api/upload": images}.get(route, st.nothing()) | st.just(b"") | st.binary(max_size=2000))
    return {"method": method, "path": path, "headers": headers, "body": body}


@pytest.fixture
async def page_offer() -> str:
    return await offer_sdp()


@pytest.mark.heavy
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@settings(max_examples=ci_size(150, 60), **FUZZ)
@given(data=st.data())
async def test_fuzzed_http_requests_get_4xx_never_500(live, page_offer, data, errors):
    url, app, http, _ = live
    host = URL(url).raw_authority
    request = data.draw(requests(page_offer, host))
    target = URL(url).with_path(request["path"])
    async with http.request(request["method"], target, data=request["body"], headers=request["headers"]) as response:
        body = await response.read()
        event(f"{request['method']} {request['path'].split('/')[1] or '/'}: {response.status}")
        assert response.status < 500 or (response.status == 503 and b"server full" in body), (response.status, body[:300])
        assert response.headers["X-Content-Type-Options"] == "nosniff" and response.headers["Server"] == "roam"
    assert errors() == []
