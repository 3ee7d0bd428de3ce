"""How a session talks to its page: the `Transport` protocol and its WebRTC and websocket forms.

A `Session` is built with its transport (`app.server` admits both kinds through one path) and
only ever calls the protocol: `send_json` for control messages (telemetry, pongs, errors), `ack`
for a page's frame acknowledgement, `close` once when the session ends. Video frames leave by the
transport's own route (the WebRTC track pulls from the session's pacer; the websocket sender in
`app.server` pulls from it too), so the protocol has no frame method.

    WebRTCTransport     control messages on every open "control" data channel of the peer;
                        frames are acknowledged by RTCP, so a JSON ack is unexpected
    WebSocketTransport  control messages through a bounded outbox (a full one drops, never blocks
                        the event loop); acks free one of at most `max_in_flight` frames in flight
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol, runtime_checkable

from app import messages as m

# A page that stops reading gets its control messages dropped past this many queued.
WS_OUTBOX_MESSAGES = 256


@runtime_checkable
class Transport(Protocol):
    """The page connection of one session (see the module docstring)."""

    kind: str  # "webrtc" | "websocket": the name the page and the recordings see

    def send_json(self, message: dict) -> bool:
        """Queue a control message; False if it was dropped (the connection cannot take it now)."""
        ...

    def ack(self, frame_id: int) -> None:
        """The page acknowledged frame `frame_id`; `m.MessageError` if that is not acceptable."""
        ...

    async def close(self) -> None:
        """Close the connection (called once, by `Session.close`)."""
        ...


class WebRTCTransport:
    """A peer connection (`aiortc.RTCPeerConnection`); its "control" data channels join `channels`
    as the page opens them."""

    kind = "webrtc"

    def __init__(self, peer: Any) -> None:
        self.peer = peer
        self.channels: list[Any] = []

    def send_json(self, message: dict) -> bool:
        # Before the page's channel opens (or while it closes) a message has nowhere to go; the
        # page needs none of them (the session message is sent as the channel opens).
        text = json.dumps(message)
        for channel in self.channels:
            if channel.readyState == "open":
                channel.send(text)
        return True

    def ack(self, frame_id: int) -> None:
        raise m.MessageError("unexpected", "ack is not expected on this connection (WebRTC frames need no acks)")

    async def close(self) -> None:
        await self.peer.close()


class WebSocketTransport:
    """The websocket's control outbox and frame flow control; `app.server` runs the socket's tasks
    and registers them in `tasks`, which `close` cancels."""

    kind = "websocket"

    def __init__(self, max_in_flight: int) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.max_in_flight = max_in_flight
        self.outbox: asyncio.Queue[str] = asyncio.Queue(maxsize=WS_OUTBOX_MESSAGES)
        # frame id (mod 2**32) -> send time of frames the page has not acknowledged yet
        self.in_flight: dict[int, float] = {}
        self.acked = asyncio.Event()
        self.tasks: list[asyncio.Future] = []

    def send_json(self, message: dict) -> bool:
        try:
            self.outbox.put_nowait(json.dumps(message))
        except asyncio.QueueFull:
            return False
        return True

    def ack(self, frame_id: int) -> None:
        if self.in_flight.pop(frame_id, None) is None:
            raise m.MessageError("invalid", f"ack of frame {frame_id}, which is not in flight")
        self.acked.set()

    async def close(self) -> None:
        # The frame sender may be waiting for acks that never come: cancel, do not wait.
        for task in self.tasks:
            task.cancel()
