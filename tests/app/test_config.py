from __future__ import annotations

import pytest

from app import messages as m
from app.config import AppConfig, ServerConfig, StreamConfig


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ServerConfig(port=70000), "port"),
        (lambda: ServerConfig(max_sessions=0), "max_sessions"),
        (lambda: ServerConfig(host="192.0.2.2"), "requires a token"),
        (lambda: ServerConfig(token="short"), "at least 8"),
        (lambda: StreamConfig(fps=0.0), "fps"),
        (lambda: StreamConfig(fps=float("nan")), "fps"),
        (lambda: StreamConfig(width=8), "width"),
        (lambda: StreamConfig(sigmas=(1.0, 0.5, 0.7, 0.0)), "sigmas"),
        (lambda: StreamConfig(buffer_chunks=0.5), "buffer_chunks"),
        (lambda: StreamConfig(torch_threads=0), "torch_threads"),
        (lambda: AppConfig(device="tpu"), "device"),
    ],
)
def test_bad_settings_name_the_offending_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_defaults_bind_loopback_and_size_the_buffer():
    config = AppConfig()
    assert config.server.host == "127.0.0.1" and config.server.token is None
    # the sampler is the model's unless named (build_runtime fills it in); the official list otherwise
    assert config.stream.fps == 16.0 and config.stream.sigmas is None
    assert config.stream.generator_config().sigmas == (1.0, 0.96, 0.889, 0.727, 0.0)
    assert StreamConfig(sigmas=(1.0, 0.5, 0.0)).generator_config().sigmas == (1.0, 0.5, 0.0)
    # 2 chunks of 8 frames (room to start a batched chunk in time), and never less than the first chunk (9 frames).
    assert config.stream.buffer_capacity(temporal_stride=4) == 16
    assert StreamConfig(buffer_chunks=1.5).buffer_capacity(temporal_stride=4) == 12
    assert StreamConfig(buffer_chunks=1.0).buffer_capacity(temporal_stride=4) == 9
    assert ServerConfig(host="0.0.0.0", token="long-enough").token == "long-enough"


@pytest.mark.parametrize(
    "text, kind",
    [
        ('{"type": "input", "seq": 1, "t": 0, "keys": 1, "pitch": 95}', "invalid"),
        ('{"type": "input", "seq": -1, "t": 0, "keys": 1}', "invalid"),
        ('{"type": "input", "seq": 1.5, "t": 0, "keys": 1}', "invalid"),
        ('{"type": "input", "seq": 1, "t": Infinity, "keys": 1}', "nan"),
        ('{"type": "record", "on": "yes"}', "invalid"),
        ('{"type": "rewind", "seconds": -1}', "invalid"),
        ('{"no_type": 1}', "unknown_type"),
        ('"just a string"', "malformed"),
    ],
)
def test_messages_are_parsed_strictly(text, kind):
    with pytest.raises(m.MessageError) as error:
        m.parse_message(text, 1024)
    assert error.value.kind == kind


def test_messages_parse_into_their_dataclasses():
    msg = m.parse_message('{"type": "input", "seq": 3, "t": 1.5, "keys": 257, "yaw": 10, "pitch": -2.5, "roll": 0}', 1024)
    assert msg == m.Input(seq=3, t=1.5, keys=257, yaw=10.0, pitch=-2.5, roll=0.0)
    assert m.parse_message('{"type": "settings", "walk_speed": 2, "fly": true}', 1024) == m.Settings(walk_speed=2.0, fly=True)
    assert m.parse_message('{"type": "hello", "start": "scene:1"}', 1024) == m.Hello(start="scene:1")
