"""A throwaway stand-in for the roam server, used only by the browser tests while `app/serve_cmd.py`
has not landed. It speaks docs/protocol.md with synthetic frames (a striped panorama that scrolls
with yaw and a floor grid that scrolls with z), so the page can be developed and tested end to end.

Run: `python -m tests.e2e.stub_server --port 8123`.
"""
from __future__ import annotations

import argparse
import asyncio
import fractions
import io
import json
import math
import struct
import time
from pathlib import Path

import av
import numpy as np
from aiohttp import WSMsgType, web
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from PIL import Image

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
WIDTH, HEIGHT, FPS = 256, 160, 16
WALK_MPS = 1.4
SCENES = [("scene:1", "Meadow #1", (70, 140, 90)), ("scene:2", "Dunes #2", (190, 150, 90)), ("scene:3", "Coast #3", (60, 110, 170))]


class StubSession:
    """Pose integrated from the newest input snapshot at each frame (FORWARD/BACK along the yaw heading)."""

    def __init__(self, tint: tuple[int, int, int]) -> None:
        self.tint = np.array(tint, dtype=np.float32)
        self.position = np.zeros(3)
        self.yaw = self.pitch = self.roll = 0.0
        self.keys = 0
        self.input_seq = 0
        self.frame_id = 0
        self.speed = WALK_MPS

    def on_message(self, obj: dict) -> None:
        if obj.get("type") == "input" and obj.get("seq", 0) > self.input_seq:
            self.input_seq = int(obj["seq"])
            self.keys = int(obj.get("keys", 0))
            self.yaw = float(obj.get("yaw", self.yaw + 0.1 * obj.get("dx", 0.0)))
            self.pitch = float(obj.get("pitch", self.pitch - 0.1 * obj.get("dy", 0.0)))
            self.roll = float(obj.get("roll", self.roll))
        elif obj.get("type") == "reset":
            self.position[:] = 0
        elif obj.get("type") == "settings":
            self.speed = float(obj.get("walk_speed", WALK_MPS))

    def next_frame(self) -> tuple[np.ndarray, dict]:
        forward = (self.keys & 1 != 0) - (self.keys & 2 != 0)
        heading = np.array([math.sin(math.radians(self.yaw)), 0.0, math.cos(math.radians(self.yaw))])
        self.position += forward * self.speed / FPS * heading
        self.frame_id += 1
        x = np.arange(WIDTH)[None, :]
        y = np.arange(HEIGHT)[:, None]
        sky = 0.5 + 0.5 * np.sin((x + self.yaw * 4) / 18.0)
        depth = np.maximum(y - HEIGHT / 2, 1.0)
        floor = (np.floor((x - WIDTH / 2) / depth * 3) + np.floor(400 / depth + self.position[2] * 4)) % 2
        horizon = HEIGHT / 2 + self.pitch * 2
        shade = np.where(y < horizon, 0.6 + 0.4 * sky, 0.35 + 0.3 * floor)
        image = (shade[..., None] * self.tint).clip(0, 255).astype(np.uint8)
        telemetry = {
            "type": "telemetry", "frame_id": self.frame_id, "chunk_id": self.frame_id // 8, "input_seq": self.input_seq,
            "position": self.position.tolist(), "yaw": self.yaw, "pitch": self.pitch, "roll": self.roll,
            "chunk_ms": 12.0, "fps": FPS, "queue": 0, "drops": 0, "server_t": time.time(),
        }
        return image, telemetry


class StubTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, session: StubSession, send_telemetry) -> None:
        super().__init__()
        self.session = session
        self.send_telemetry = send_telemetry
        self.t0: float | None = None
        self.count = 0

    async def recv(self) -> av.VideoFrame:
        if self.t0 is None:
            self.t0 = time.monotonic()
        target = self.t0 + self.count / FPS
        await asyncio.sleep(max(0.0, target - time.monotonic()))
        self.count += 1
        image, telemetry = self.session.next_frame()
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = round((time.monotonic() - self.t0) * 90000)
        frame.time_base = fractions.Fraction(1, 90000)
        self.send_telemetry(telemetry)
        return frame


def _session_message(transport: str) -> dict:
    return {"type": "session", "session_id": "stub", "transport": transport, "fps": FPS, "width": WIDTH, "height": HEIGHT, "model": "stub"}


def _tint(start: str) -> tuple[int, int, int]:
    return next((tint for sid, _, tint in SCENES if sid == start), (150, 150, 150))


def create_stub_app() -> web.Application:
    app = web.Application()
    pcs: set[RTCPeerConnection] = set()

    async def index(request):
        return web.FileResponse(WEB_DIR / "index.html")

    async def scenes(request):
        return web.json_response([{"id": sid, "name": name, "thumbnail": f"/api/scenes/{sid}/thumbnail.jpg"} for sid, name, _ in SCENES])

    async def thumbnail(request):
        image, _ = StubSession(_tint(request.match_info["id"])).next_frame()
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG")
        return web.Response(body=buf.getvalue(), content_type="image/jpeg")

    async def upload(request):
        body = await request.read()
        try:
            Image.open(io.BytesIO(body)).verify()
        except Exception:
            return web.json_response({"error": "not an image"}, status=400)
        return web.json_response({"id": "upload:stub"})

    async def offer(request):
        params = await request.json()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pcs.add(pc)
        session = StubSession(_tint(params.get("start", "")))
        channels: dict = {}

        def send_control(obj):
            channel = channels.get("control")
            if channel is not None and channel.readyState == "open":
                channel.send(json.dumps(obj))

        @pc.on("datachannel")
        def on_datachannel(channel):
            channels[channel.label] = channel
            if channel.label == "control":
                channel.send(json.dumps(_session_message("webrtc")))

            @channel.on("message")
            def on_message(message):
                obj = json.loads(message)
                if obj.get("type") == "ping":
                    send_control({"type": "pong", "t": obj["t"], "server_t": time.time()})
                session.on_message(obj)

        @pc.on("connectionstatechange")
        async def on_state():
            if pc.connectionState in ("failed", "closed"):
                await pc.close()
                pcs.discard(pc)

        pc.addTrack(StubTrack(session, send_control))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=params["sdp"], type=params["type"]))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "session_id": "stub"})

    async def websocket(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        hello = json.loads((await ws.receive()).data)
        session = StubSession(_tint(hello.get("start", "")))
        await ws.send_str(json.dumps(_session_message("websocket")))
        in_flight: set[int] = set()

        async def produce():
            t0 = time.monotonic()
            count = 0
            while not ws.closed:
                count += 1
                await asyncio.sleep(max(0.0, t0 + count / FPS - time.monotonic()))
                image, telemetry = session.next_frame()
                if len(in_flight) >= 2:
                    continue
                buf = io.BytesIO()
                Image.fromarray(image).save(buf, format="JPEG", quality=80)
                header = struct.pack("<4sHHIIdHHI", b"ROAM", 1, 32, telemetry["frame_id"], session.input_seq, time.time(), WIDTH, HEIGHT, 0)
                in_flight.add(telemetry["frame_id"])
                await ws.send_bytes(header + buf.getvalue())
                await ws.send_str(json.dumps(telemetry))

        producer = asyncio.create_task(produce())
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            obj = json.loads(message.data)
            if obj.get("type") == "ack":
                in_flight.discard(obj.get("frame_id"))
            elif obj.get("type") == "ping":
                await ws.send_str(json.dumps({"type": "pong", "t": obj["t"], "server_t": time.time()}))
            else:
                session.on_message(obj)
        producer.cancel()
        return ws

    async def on_shutdown(app):
        await asyncio.gather(*(pc.close() for pc in pcs))

    app.router.add_get("/", index)
    app.router.add_static("/web/", WEB_DIR)
    app.router.add_get("/api/scenes", scenes)
    app.router.add_get("/api/scenes/{id}/thumbnail.jpg", thumbnail)
    app.router.add_post("/api/upload", upload)
    app.router.add_post("/offer", offer)
    app.router.add_get("/ws", websocket)
    app.on_shutdown.append(on_shutdown)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8123)
    args = parser.parse_args()
    print(f"http://127.0.0.1:{args.port}/", flush=True)
    web.run_app(create_stub_app(), host="127.0.0.1", port=args.port, print=None)
