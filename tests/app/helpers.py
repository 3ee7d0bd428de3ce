"""Test helpers: a runtime on fakes or the real tiny model, a live test server, and an aiortc client."""
from __future__ import annotations

import asyncio
import contextlib
import json
import time

import aiohttp
import numpy as np
from aiohttp.test_utils import TestServer

from app.config import AppConfig, ServerConfig, StreamConfig
from app.runtime import Runtime, StartView
from app.server import create_app


class FakeScenes:
    """Two flat-coloured start scenes seen from the identity pose."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height

    def ids(self) -> list[str]:
        return ["scene:1", "scene:2"]

    def seed_of(self, scene_id: str) -> int | None:
        return {"scene:1": 1, "scene:2": 2}.get(scene_id)

    def name(self, scene_id: str) -> str:
        return f"Flat #{self.seed_of(scene_id)}"

    def view(self, scene_id: str) -> StartView | None:
        seed = self.seed_of(scene_id)
        if seed is None:
            return None
        image = np.full((self.height, self.width, 3), 60 * seed, np.uint8)
        return StartView(image=image, world_T_cam=np.eye(4), name=self.name(scene_id))


def fake_runtime(stream: StreamConfig) -> Runtime:
    from tests.streaming.fakes import FakeConditioner, FakeModel, FakeVAE

    return Runtime(model=FakeModel(), vae=FakeVAE(), model_name="fake", stream=stream, scenes=FakeScenes(stream.width, stream.height), conditioner_factory=FakeConditioner)


def tiny_runtime(stream: StreamConfig) -> Runtime:
    """The real tiny model (seeded random weights) and a random TinyVAE matching its channels."""
    import torch

    from model import ModelConfig, WorldModel
    from model.vae import TinyVAE, TinyVAEConfig

    torch.manual_seed(0)
    model = WorldModel(ModelConfig.preset("tiny")).eval()
    vae = TinyVAE(TinyVAEConfig(latent_channels=model.config.in_channels)).eval()
    return Runtime(model=model, vae=vae, model_name="tiny (random)", stream=stream, scenes=FakeScenes(stream.width, stream.height))


@contextlib.asynccontextmanager
async def serve(runtime: Runtime, **server):
    """A live server on 127.0.0.1:<free port>; yields (base_url, app)."""
    config = AppConfig(server=ServerConfig(port=0, **server), stream=runtime.stream)
    app = create_app(config, runtime)
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    try:
        yield str(test_server.make_url("")).rstrip("/"), app
    finally:
        await test_server.close()


class WebRTCClient:
    """An aiortc peer that talks to /offer like the page does."""

    def __init__(self, codec: str | None = None):
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver

        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        transceiver = self.pc.addTransceiver("video", direction="recvonly")
        if codec is not None:
            # Like the page: put the wanted codec first in the offer.
            codecs = RTCRtpReceiver.getCapabilities("video").codecs
            wanted = [c for c in codecs if c.mimeType.lower() == f"video/{codec}"]
            transceiver.setCodecPreferences(wanted + [c for c in codecs if c not in wanted])
        self.input = self.pc.createDataChannel("input", ordered=False, maxRetransmits=0)
        self.control = self.pc.createDataChannel("control")
        self.messages: list[dict] = []
        self.telemetry: dict[int, dict] = {}
        self.track_ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.seq = 0
        self.session_id: str | None = None

        @self.control.on("message")
        def on_message(data):
            message = json.loads(data)
            message["_arrival"] = time.monotonic()
            self.messages.append(message)
            if message["type"] == "telemetry":
                self.telemetry[message["frame_id"]] = message

        @self.pc.on("track")
        def on_track(track):
            if not self.track_ready.done():
                self.track_ready.set_result(track)

    async def connect(self, base_url: str, start: str = "scene:1", **extra) -> aiohttp.ClientResponse:
        from aiortc import RTCSessionDescription

        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer", "start": start, **extra}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base_url}/offer", json=body) as response:
                answer = await response.json()
                if response.status != 200:
                    return response, answer
        self.session_id = answer["session_id"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        return response, answer

    async def wait_open(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.control.readyState != "open" or self.input.readyState != "open":
            if time.monotonic() > deadline:
                raise TimeoutError(f"data channels not open: {self.control.readyState}, {self.input.readyState}")
            await asyncio.sleep(0.02)

    def send_input(self, keys: int, yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> int:
        self.seq += 1
        self.input.send(json.dumps({"type": "input", "seq": self.seq, "t": time.monotonic() * 1e3, "keys": keys, "yaw": yaw, "pitch": pitch, "roll": roll}))
        return self.seq

    async def frames(self, n: int, timeout: float = 60.0) -> list:
        track = await asyncio.wait_for(self.track_ready, timeout)
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            out.append(await asyncio.wait_for(track.recv(), max(0.1, deadline - time.monotonic())))
        return out

    async def close(self) -> None:
        await self.pc.close()


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


class RecordingTransport:
    """An `app.transports.Transport` that keeps every control message and accepts every ack."""

    kind = "websocket"

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.acks: list[int] = []
        self.closed = 0

    def send_json(self, message: dict) -> bool:
        self.sent.append(message)
        return True

    def ack(self, frame_id: int) -> None:
        self.acks.append(frame_id)

    async def close(self) -> None:
        self.closed += 1
