"""The server with its walks in a generator process (`--generator-process`): sessions stream from
the child, and a child that dies ends its walks with a clean error while new walks start a fresh one."""
from __future__ import annotations

import json
import os
import signal

import aiohttp
import pytest

from app.config import AppConfig, StreamConfig
from app.serve_cmd import config_from_args
from app.server import SESSIONS, WORKER
from streaming.generator_process import RemoteGenerator
from tests.app.helpers import fake_runtime, serve, wait_for
from tests.app.test_bad_input import _still_serves
from tests.app.test_websocket import _frames


def _runtime(setting: str = "on"):
    return fake_runtime(StreamConfig(width=64, height=48, fps=16.0, idle_chunks=0, generator_process=setting))


async def _error_of(ws) -> str:
    """Read (acking frames) until the server's error message; returns it."""
    while True:
        msg = await ws.receive(timeout=20)
        if msg.type == aiohttp.WSMsgType.BINARY:
            await ws.send_str(json.dumps({"type": "ack", "frame_id": int.from_bytes(msg.data[8:12], "little")}))
        elif msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data)["type"] == "error":
            return json.loads(msg.data)["message"]
        elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            raise AssertionError(f"closed without an error message: {msg}")


async def test_sessions_stream_from_the_generator_process_and_outlive_its_death():
    async with serve(_runtime()) as (url, app), aiohttp.ClientSession() as http:
        host = app[WORKER].host
        assert host is not None and host.alive
        async with http.get(f"{url}/healthz") as response:
            assert (await response.json())["generator_process"] == {"alive": True, "children_started": 1}
        async with http.ws_connect(f"{url}/ws") as ws:
            await ws.send_str(json.dumps({"type": "hello", "start": "scene:1"}))
            assert len(await _frames(ws, 12)) == 12
            session = next(iter(app[SESSIONS].values()))
            assert isinstance(session.job.generator, RemoteGenerator)
            os.kill(host._process.pid, signal.SIGKILL)
            message = await _error_of(ws)
        assert message.startswith("generation failed: ") and "generator process" in message
        await wait_for(lambda: not app[SESSIONS] and not app[WORKER].jobs)
        # The next walk starts a fresh child.
        await _still_serves(http, url, "scene:2")
        assert host.generation == 2 and host.alive
        async with http.get(f"{url}/healthz") as response:
            assert (await response.json())["generator_process"] == {"alive": True, "children_started": 2}
    assert not host.alive  # stopped with the server


async def test_a_generator_process_that_cannot_start_stops_the_server_start_with_the_way_out(monkeypatch):
    from streaming.generator_process import GeneratorProcess, GeneratorProcessError

    def fail(self):
        raise GeneratorProcessError("the generator process exited (code 1) during 'start'; its walks are lost")

    monkeypatch.setattr(GeneratorProcess, "start", fail)
    with pytest.raises(RuntimeError, match=r"could not start the generator process \(the generator process exited .*serve with --generator-process off"):
        async with serve(_runtime()):
            pass


async def test_healthz_names_no_generator_process_when_walks_run_in_the_server():
    async with serve(_runtime("off")) as (url, app), aiohttp.ClientSession() as http:
        assert app[WORKER].host is None
        async with http.get(f"{url}/healthz") as response:
            assert (await response.json())["generator_process"] is None


@pytest.mark.parametrize("setting, device, model, cores, expected", [
    ("on", "cpu", False, 1, True), ("off", "cpu", False, 8, False),
    ("auto", "cpu", False, 2, True), ("auto", "cpu", False, 1, False),
    ("auto", "cuda", False, 8, False), ("auto", "cpu", True, 8, False),
])
def test_auto_runs_the_embedded_model_in_a_generator_process_on_a_cpu_with_a_core_per_model_thread(
        monkeypatch, tmp_path, setting, device, model, cores, expected):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    config = AppConfig(stream=StreamConfig(generator_process=setting, torch_threads=1), device=device,
                       model_path=tmp_path if model else None)
    assert config.uses_generator_process() is expected


def test_generator_process_setting_is_checked_and_serve_defaults_to_auto():
    with pytest.raises(ValueError, match="generator_process must be one of auto, on, off, got 'yes'"):
        StreamConfig(generator_process="yes")
    import argparse

    from app.serve_cmd import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args([])).stream.generator_process == "auto"
    assert config_from_args(parser.parse_args(["--generator-process", "off"])).stream.generator_process == "off"
    assert StreamConfig().generator_process == "off"  # the library default: in-process, as before
