"""One walk: a transport (WebRTC peer or websocket), the parsed page messages, the worker job, the
frame buffer and the telemetry sent back.

Every message from the page goes through `handle_text`/`handle_binary`: a message that is binary,
oversized, malformed, non-finite, of an unknown type or invalid is dropped and counted in
`dropped[kind]`; the session carries on. `close()` frees everything the session holds (worker job,
buffer, peer connection or socket) and is idempotent.

Liveness (docs/protocol.md): every message, even a dropped one, counts as the page being there
(`last_heard_t`). A page that has sent a `visibility` note promises a ping at least every second
while shown, so `gone_reason` can tell a vanished page from a quiet one; a `close` note ends the
session at once, and so does a `close_token` posted to the server's close route.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from app import messages as m
from app.runtime import Runtime, StartView
from app.transports import Transport
from streaming.buffer import FrameBuffer, Pacer, StreamFrame
from streaming.recorder import SessionRecorder
from streaming.rewind import DEFAULT_RING_CHUNKS, RewindableJob
from streaming.worker import GenerationWorker, InputEnvelope

log = logging.getLogger("roam.session")


def ypr_degrees(world_T_cam: np.ndarray) -> tuple[float, float, float]:
    """Yaw, pitch, roll in degrees of a pose (controls.camera conventions)."""
    from controls.camera import ypr_from_rotation

    return tuple(math.degrees(a) for a in ypr_from_rotation(world_T_cam[:3, :3]))


class Session:
    """One connected page.

    Args:
        session_id: short random id (logs, telemetry).
        transport: the page connection (`app.transports`; its `kind` names it to the page and recordings).
        runtime: shared model pieces.
        worker: the device's generation worker.
        start: the start image and pose.
        max_message_bytes: larger text messages are dropped.
        on_closed: awaited once when the session closes (the server forgets it).
        record_dir: where consented walks are recorded (None: recording unavailable).
        rewind_chunks: chunk-boundary snapshots kept for rewind.
        prompt: the walk's prompt (`Runtime.walk_prompt`; None: the null caption).
    """

    def __init__(
        self,
        session_id: str,
        transport: Transport,
        runtime: Runtime,
        worker: GenerationWorker,
        start: StartView,
        max_message_bytes: int,
        on_closed: Callable[[Session], Awaitable[None]] | None = None,
        record_dir: str | Path | None = None,
        rewind_chunks: int = DEFAULT_RING_CHUNKS,
        prompt: str | None = None,
    ):
        self.id = session_id
        self.transport = transport
        self.runtime = runtime
        self.worker = worker
        self.start = start
        self.max_message_bytes = max_message_bytes
        self.prompt = prompt
        self.on_closed = on_closed
        self.loop = asyncio.get_running_loop()
        stream = runtime.stream
        capacity = stream.buffer_capacity(runtime.temporal_stride)
        self.buffer = FrameBuffer(self.loop, capacity)
        # The worker only starts a chunk when it fits the buffer, so frames are stale only when the
        # buffer is full (after a burst); the pacer drops those down to the capacity.
        self.pacer = Pacer(self.buffer, stream.fps, max_queue=capacity)
        self.dropped: collections.Counter[str] = collections.Counter()
        self.settings: Any = None
        self.record_consent = False
        # Whether the page's `record` message turns recording on. Off under a campaign
        # (app.campaign_routes), where only binding a consenting participant does.
        self.record_messages = True
        self.closed = False
        self.created_t = time.monotonic()
        self.frames_sent = 0
        self.first_frame_sent_t: float | None = None
        self._sent_times: collections.deque[float] = collections.deque(maxlen=32)
        # Tasks run beside the session (liveness, connect deadline), cancelled first on close.
        self.closers: list[Callable[[], Awaitable[None]]] = []
        # Liveness: when the page was last heard, whether it is hidden, and whether it has promised
        # pings (its first visibility note). The close token lets only this page end the session by
        # beacon (POST /api/sessions/<id>/close).
        self.last_heard_t = self.created_t
        self.hidden = False
        self.heartbeats = False
        self.close_token = secrets.token_urlsafe(24)
        yaw, pitch, roll = ypr_degrees(start.world_T_cam)
        standing = InputEnvelope(seq=-1, snapshot=None, keys=0, look=(yaw, pitch, roll))
        self.recorder: SessionRecorder | None = None
        if record_dir is not None:
            K = runtime.K
            self.recorder = SessionRecorder(
                record_dir, session_id, fps=stream.fps, intrinsics=(K[0, 0], K[1, 1], K[0, 2], K[1, 2]), width=stream.width, height=stream.height, walk_start_image=start.image,
                meta={"model": runtime.model_name, "checkpoint": getattr(runtime, "checkpoint", None) or runtime.model_name, "seed": stream.seed, "chunk_latents": stream.chunk_latents, "start": start.name, "transport": transport.kind, "prompt": prompt},
            )
        self.job = RewindableJob(
            session_id=session_id,
            generator=self._new_generator(runtime, worker, prompt),
            make_integrator=lambda: runtime.make_integrator(start.world_T_cam),
            buffer=self.buffer,
            start_image=start.image,
            world_T_cam0=start.world_T_cam,
            standing_input=standing,
            idle_chunks=stream.idle_chunks,
            on_failure=self._on_worker_failure,
            ring_chunks=rewind_chunks,
            recorder=self.recorder,
            fps=stream.fps,
        )

    @staticmethod
    def _new_generator(runtime: Runtime, worker: GenerationWorker, prompt: str | None) -> Any:
        """The walk's generator: in the worker's generator process when it has one, else here."""
        if worker.host is not None:
            if prompt is not None:
                raise ValueError("walks with a prompt run in the server's own process: start it with --generator-process off")
            return worker.host.new_generator()
        return runtime.make_generator() if prompt is None else runtime.make_generator(prompt)

    def begin(self) -> None:
        """Hand the job to the worker: generation starts now."""
        self.worker.add(self.job)
        log.info("[%s] session started (%s, start %s%s)", self.id, self.transport.kind, self.start.name,
                 "" if self.prompt is None else f", prompt {self.prompt[:80]!r}")

    def session_message(self) -> dict:
        stream = self.runtime.stream
        return {"type": "session", "session_id": self.id, "transport": self.transport.kind, "fps": stream.fps, "width": stream.width, "height": stream.height, "model": self.runtime.model_name, "prompt": self.prompt}

    def send_json(self, message: dict) -> None:
        """A control message to the page; one the transport cannot take now is counted as dropped."""
        if not self.transport.send_json(message):
            self.dropped["outbox_full"] += 1

    def _drop(self, error: m.MessageError) -> None:
        self.dropped[error.kind] += 1
        log.debug("[%s] dropped message (%s)", self.id, error)

    def handle_binary(self, data: bytes) -> None:
        self.last_heard_t = time.monotonic()
        self._drop(m.MessageError("binary", f"{len(data)} bytes of binary data on a JSON channel"))

    def handle_text(self, data: str | bytes) -> m.Message | None:
        """Parse and apply one page message; returns it, or None if it was dropped."""
        if self.closed:
            return None
        self.last_heard_t = time.monotonic()
        try:
            message = m.parse_message(data, self.max_message_bytes)
            if self.recorder is not None and not isinstance(message, m.Ack):
                # Raw input is data: every message as the page sent it, before chunk sampling.
                self.recorder.on_event(m.event_record(message))
            self.apply(message)
        except m.MessageError as error:
            self._drop(error)
            return None
        return message

    def apply(self, message: m.Message) -> None:
        """Act on a parsed message; raises MessageError for ones that are not acceptable here."""
        if isinstance(message, m.Input):
            self._apply_input(message)
        elif isinstance(message, m.Reset):
            self.job.request_reset()
            self.worker.wake()
        elif isinstance(message, m.Settings):
            self._apply_settings(message)
        elif isinstance(message, m.Ping):
            self.send_json({"type": "pong", "t": message.t, "server_t": time.time() * 1e3})
        elif isinstance(message, m.Record):
            self._apply_record(message.on)
        elif isinstance(message, m.Rewind):
            try:
                self.job.request_rewind(message.seconds)
            except ValueError as error:
                raise m.MessageError("invalid", str(error)) from None
            self.worker.wake()
        elif isinstance(message, m.Ack):
            self.transport.ack(message.frame_id)
        elif isinstance(message, m.Visibility):
            self.hidden = message.hidden
            self.heartbeats = True
        elif isinstance(message, m.Close):
            asyncio.ensure_future(self.close("the page left"))
        else:
            raise m.MessageError("unexpected", f"{type(message).__name__.lower()} is not expected on this connection")

    def gone_reason(self, now: float, silence_s: float, hidden_silence_s: float) -> str | None:
        """Why the page counts as gone at monotonic time `now`, or None: only a page that promised
        pings (a visibility note) is judged, by its silence against `silence_s` while shown and
        `hidden_silence_s` while hidden (a hidden tab's timers are throttled)."""
        if not self.heartbeats:
            return None
        limit = hidden_silence_s if self.hidden else silence_s
        silent = now - self.last_heard_t
        if silent <= limit:
            return None
        return f"page silent for {silent:.1f} s while {'hidden' if self.hidden else 'shown'}"

    def _apply_record(self, on: bool) -> None:
        if not self.record_messages:
            raise m.MessageError("unexpected", "recording follows the campaign's consent on this server, not the record toggle")
        self.record_consent = on
        if self.recorder is None:
            self.send_json({"type": "error", "message": "recording is not available on this server (no record dir); consent noted"})
        else:
            # Never waits for the writer, so toggles apply here, in the order they arrive.
            self.recorder.set_consent(on)

    def _apply_input(self, message: m.Input) -> None:
        from controls.integrator import InputSnapshot

        try:
            snapshot = InputSnapshot.from_message(message.as_dict())
        except ValueError as error:
            raise m.MessageError("invalid", str(error)) from None
        look = (message.yaw, message.pitch, message.roll)
        if message.dx or message.dy:
            look = (*look, message.dx, message.dy)
        envelope = InputEnvelope(seq=message.seq, snapshot=snapshot, keys=message.keys, look=look)
        if not self.job.submit_input(envelope):
            raise m.MessageError("stale", f"seq {message.seq} is not newer than {self.job.latest_input.seq}")
        self.worker.wake()

    def _apply_settings(self, message: m.Settings) -> None:
        from controls.integrator import ControlSettings

        base = self.settings or ControlSettings()
        changes: dict[str, Any] = {}
        if message.walk_speed is not None:
            changes["walk_speed_mps"] = message.walk_speed
        if message.look_sensitivity is not None:
            changes["look_sensitivity_deg_per_px"] = message.look_sensitivity
        if message.fly is not None:
            changes["fly"] = message.fly
        try:
            self.settings = dataclasses.replace(base, **changes)
        except ValueError as error:
            raise m.MessageError("invalid", str(error)) from None
        self.job.submit_settings(self.settings)
        self.worker.wake()

    def frame_sent(self, frame: StreamFrame) -> dict:
        """Telemetry for a frame handed to the transport; also sent to the page."""
        now = time.monotonic()
        if self.first_frame_sent_t is None:
            self.first_frame_sent_t = now
            log.info("[%s] first frame after %.0f ms", self.id, (now - self.created_t) * 1e3)
        self.frames_sent += 1
        self._sent_times.append(now)
        fps = (len(self._sent_times) - 1) / (self._sent_times[-1] - self._sent_times[0]) if len(self._sent_times) > 2 else 0.0
        yaw, pitch, roll = ypr_degrees(frame.world_T_cam)
        telemetry = {
            "type": "telemetry",
            "frame_id": frame.frame_id,
            "chunk_id": frame.chunk_id,
            "input_seq": max(frame.input_seq, 0),
            "position": [round(float(x), 4) for x in frame.world_T_cam[:3, 3]],
            "yaw": round(yaw, 3),
            "pitch": round(pitch, 3),
            "roll": round(roll, 3),
            "chunk_ms": round(frame.chunk_ms, 1),
            "fps": round(fps, 2),
            "queue": len(self.buffer),
            "drops": self.buffer.drops,
            "dropped_messages": sum(self.dropped.values()),
            "server_t": time.time() * 1e3,
        }
        self.send_json(telemetry)
        return telemetry

    def _on_worker_failure(self, error: BaseException) -> None:
        # Worker thread: hand the close to the event loop.
        def fail() -> None:
            self.send_json({"type": "error", "message": f"generation failed: {error}"})
            # A moment for the error to leave on the data channel before the peer closes.
            self.loop.call_later(0.3, lambda: asyncio.ensure_future(self.close(f"generation failed: {error}")))

        try:
            self.loop.call_soon_threadsafe(fail)
        except RuntimeError:
            pass

    async def close(self, reason: str = "closed") -> None:
        """Free everything the session holds (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.worker.remove(self.job)
        self.buffer.close()
        if self.recorder is not None:
            await asyncio.to_thread(self.recorder.close)
        for closer in [*self.closers, self.transport.close]:
            try:
                await closer()
            except Exception:
                log.exception("[%s] error while closing", self.id)
        log.info("[%s] session closed (%s); %d frames sent, dropped messages %s, frame drops %d", self.id, reason, self.frames_sent, dict(self.dropped), self.buffer.drops)
        if self.on_closed is not None:
            await self.on_closed(self)
