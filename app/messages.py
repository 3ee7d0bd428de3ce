"""Page -> server messages (docs/protocol.md) parsed into dataclasses.

`parse_message(data, max_bytes)` returns one message dataclass or raises `MessageError` whose
`kind` names the drop counter ("binary", "oversized", "malformed", "nan", "unknown_type",
"invalid"). Class names are the protocol's `type` values; nothing is silently corrected.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from typing import Any

# Bits of controls.integrator.Key (FORWARD=1 ... SLOW=512).
KEY_MASK = (1 << 10) - 1
MAX_SEQ = 2**53
# Longest scene or upload id a hello or offer may name.
MAX_START_ID_CHARS = 128
# Longest prompt a hello or offer may carry (model.prompts.MAX_PROMPT_CHARS).
MAX_PROMPT_CHARS = 2000


class MessageError(ValueError):
    """A message that is dropped; `kind` is the counter it lands in."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class Input:
    seq: int
    t: float
    keys: int
    yaw: float | None
    pitch: float | None
    roll: float | None
    dx: float | None = None
    dy: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "input", "seq": self.seq, "t": self.t, "keys": self.keys}
        for name in ("yaw", "pitch", "roll", "dx", "dy"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


@dataclass(frozen=True)
class Reset:
    pass


@dataclass(frozen=True)
class Record:
    on: bool


@dataclass(frozen=True)
class Rewind:
    seconds: float


@dataclass(frozen=True)
class Settings:
    walk_speed: float | None = None
    look_sensitivity: float | None = None
    fly: bool | None = None


@dataclass(frozen=True)
class Ping:
    t: float


@dataclass(frozen=True)
class Hello:
    start: str
    token: str | None = None
    # The walk's prompt (a model with a text encoder); None or "" = the start's default.
    prompt: str | None = None


@dataclass(frozen=True)
class Ack:
    frame_id: int


@dataclass(frozen=True)
class Visibility:
    """The page is shown (`hidden` false) or hidden; the first one also turns on the silence rule
    (docs/protocol.md, "Liveness")."""

    hidden: bool


@dataclass(frozen=True)
class Close:
    """The page is leaving (pagehide): end the session now."""


Message = Input | Reset | Record | Rewind | Settings | Ping | Hello | Ack | Visibility | Close


def event_record(message: Message) -> dict[str, Any]:
    """A parsed message as a line of an episode's events.jsonl: `server_t` (unix seconds now),
    `type` (the protocol's name) and its fields (a hello's token is never stored)."""
    fields = {k: v for k, v in dataclasses.asdict(message).items() if k != "token"}
    return {"server_t": time.time(), "type": type(message).__name__.lower(), **fields}


def brief(value: Any, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters: errors name the bad value without echoing 64 KiB."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 15]}... ({len(text)} chars)"


def _reject_constant(name: str) -> float:
    raise MessageError("nan", f"non-finite number {name}")


def _number(msg: dict, name: str, required: bool = True, lo: float = -math.inf, hi: float = math.inf) -> float | None:
    if name not in msg or msg[name] is None:
        if required:
            raise MessageError("invalid", f"missing field {name!r}")
        return None
    value = msg[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MessageError("invalid", f"field {name!r} must be a number, got {brief(value)}")
    try:
        number = float(value)
    except OverflowError:
        # A JSON integer of hundreds of digits: no float holds it.
        raise MessageError("invalid", f"field {name!r}={brief(value)} outside [{lo}, {hi}]") from None
    if not math.isfinite(number):
        raise MessageError("nan", f"field {name!r} is {number}")
    if not lo <= number <= hi:
        raise MessageError("invalid", f"field {name!r}={number} outside [{lo}, {hi}]")
    return number


def _int(msg: dict, name: str, lo: int, hi: int) -> int:
    value = msg.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MessageError("invalid", f"field {name!r} must be an integer, got {brief(value)}")
    if not lo <= value <= hi:
        raise MessageError("invalid", f"field {name!r}={brief(value)} outside [{lo}, {hi}]")
    return value


def _bool(msg: dict, name: str, required: bool = True) -> bool | None:
    if name not in msg and not required:
        return None
    value = msg.get(name)
    if not isinstance(value, bool):
        raise MessageError("invalid", f"field {name!r} must be true or false, got {brief(value)}")
    return value


def decode_json(data: str | bytes, max_bytes: int) -> dict:
    """The JSON object in a text message, or MessageError (binary, oversized, malformed, nan)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageError("binary", f"{len(data)} bytes of binary data on a JSON channel")
    if len(data) > max_bytes:
        raise MessageError("oversized", f"{len(data)} characters > {max_bytes}")
    try:
        msg = json.loads(data, parse_constant=_reject_constant)
    except MessageError:
        raise
    except (ValueError, RecursionError) as error:
        raise MessageError("malformed", f"not JSON: {error}") from None
    if not isinstance(msg, dict):
        raise MessageError("malformed", f"expected a JSON object, got {type(msg).__name__}")
    return msg


def parse_prompt(value: Any) -> str | None:
    """The optional `prompt` of a hello or offer: None, or a string of at most MAX_PROMPT_CHARS characters."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_PROMPT_CHARS:
        raise MessageError("invalid", f"prompt must be a string of at most {MAX_PROMPT_CHARS} characters, got {brief(value)}")
    return value


def parse_message(data: str | bytes, max_bytes: int) -> Message:
    """One page -> server message as its dataclass (see the module docstring for errors)."""
    msg = decode_json(data, max_bytes)
    kind = msg.get("type")
    if kind == "input":
        return Input(
            seq=_int(msg, "seq", 0, MAX_SEQ),
            t=_number(msg, "t"),
            keys=_int(msg, "keys", 0, KEY_MASK),
            yaw=_number(msg, "yaw", required=False, lo=-1e6, hi=1e6),
            pitch=_number(msg, "pitch", required=False, lo=-90.0, hi=90.0),
            roll=_number(msg, "roll", required=False, lo=-1e6, hi=1e6),
            dx=_number(msg, "dx", required=False, lo=-1e5, hi=1e5),
            dy=_number(msg, "dy", required=False, lo=-1e5, hi=1e5),
        )
    if kind == "reset":
        return Reset()
    if kind == "record":
        return Record(on=_bool(msg, "on"))
    if kind == "rewind":
        return Rewind(seconds=_number(msg, "seconds", lo=0.0, hi=3600.0))
    if kind == "settings":
        return Settings(
            walk_speed=_number(msg, "walk_speed", required=False, lo=0.0, hi=50.0),
            look_sensitivity=_number(msg, "look_sensitivity", required=False, lo=0.001, hi=5.0),
            fly=_bool(msg, "fly", required=False),
        )
    if kind == "ping":
        return Ping(t=_number(msg, "t"))
    if kind == "hello":
        start = msg.get("start")
        if not isinstance(start, str) or not 1 <= len(start) <= MAX_START_ID_CHARS:
            raise MessageError("invalid", f"hello needs a start id string of 1 to {MAX_START_ID_CHARS} characters, got {brief(start)}")
        token = msg.get("token")
        if token is not None and not isinstance(token, str):
            raise MessageError("invalid", "token must be a string")
        return Hello(start=start, token=token, prompt=parse_prompt(msg.get("prompt")))
    if kind == "ack":
        return Ack(frame_id=_int(msg, "frame_id", 0, 2**32 - 1))
    if kind == "visibility":
        return Visibility(hidden=_bool(msg, "hidden"))
    if kind == "close":
        return Close()
    raise MessageError("unknown_type", f"unknown message type {brief(kind)}")
