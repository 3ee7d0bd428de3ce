"""The `Transport` protocol: both transports implement it, the websocket's outbox is bounded and
its acks must name a frame in flight, and a WebRTC page sending an ack is told it is unexpected."""
from __future__ import annotations

import pytest

from app import messages as m
from app.transports import WS_OUTBOX_MESSAGES, Transport, WebRTCTransport, WebSocketTransport
from tests.app.helpers import RecordingTransport


class _Peer:
    closed = False

    async def close(self) -> None:
        self.closed = True


class _Channel:
    def __init__(self, state: str) -> None:
        self.readyState, self.sent = state, []

    def send(self, text: str) -> None:
        self.sent.append(text)


async def test_both_transports_and_the_test_double_implement_the_protocol():
    for transport in (WebRTCTransport(_Peer()), WebSocketTransport(2), RecordingTransport()):
        assert isinstance(transport, Transport)


async def test_websocket_outbox_is_bounded_and_acks_must_be_in_flight():
    transport = WebSocketTransport(max_in_flight=2)
    assert all(transport.send_json({"type": "pong", "t": i}) for i in range(WS_OUTBOX_MESSAGES))
    assert transport.send_json({"type": "pong", "t": -1}) is False
    transport.in_flight[7] = 0.0
    transport.ack(7)
    assert transport.acked.is_set() and transport.in_flight == {}
    with pytest.raises(m.MessageError, match="not in flight"):
        transport.ack(7)
    with pytest.raises(ValueError, match="max_in_flight"):
        WebSocketTransport(0)


async def test_webrtc_sends_on_open_channels_only_and_refuses_acks():
    peer = _Peer()
    transport = WebRTCTransport(peer)
    open_channel, closing = _Channel("open"), _Channel("closing")
    transport.channels += [open_channel, closing]
    transport.send_json({"type": "pong", "t": 1})
    assert open_channel.sent == ['{"type": "pong", "t": 1}'] and closing.sent == []
    with pytest.raises(m.MessageError, match="ack is not expected"):
        transport.ack(3)
    await transport.close()
    assert peer.closed
