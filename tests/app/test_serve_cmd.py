"""`python run.py serve`: arguments -> AppConfig, and the server it runs (embedded tiny model)."""
from __future__ import annotations

import argparse
import asyncio
import threading

import aiohttp
import pytest

from app import serve_cmd


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cmd.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_arguments_build_a_validated_config():
    config = serve_cmd.config_from_args(_args("--port", "9001", "--width", "128", "--height", "96", "--max-sessions", "3"))
    assert (config.server.host, config.server.port, config.server.max_sessions) == ("127.0.0.1", 9001, 3)
    assert (config.stream.width, config.stream.height) == (128, 96) and config.model_path is None
    with pytest.raises(ValueError, match="requires a token"):
        serve_cmd.config_from_args(_args("--host", "0.0.0.0"))
    assert serve_cmd.config_from_args(_args("--host", "0.0.0.0", "--token", "long-enough-token")).server.token == "long-enough-token"
    with pytest.raises(ValueError, match="does not exist"):
        serve_cmd.config_from_args(_args("--model", "/no/such/folder"))
    with pytest.raises(SystemExit):
        serve_cmd.main(_args("--fps", "0"))


def test_sigmas_flag_picks_another_sampler_and_bad_lists_are_named():
    assert serve_cmd.config_from_args(_args()).stream.sigmas is None  # the model's own sampler
    config = serve_cmd.config_from_args(_args("--sigmas", "1,0.5,0"))
    assert config.stream.sigmas == (1.0, 0.5, 0.0)
    assert config.stream.generator_config().sigmas == (1.0, 0.5, 0.0)
    for bad in ("1,0.5", "0.5,1,0", "1,x,0", "2,0"):
        with pytest.raises(ValueError, match="--sigmas"):
            serve_cmd.config_from_args(_args("--sigmas", bad))


async def test_serve_prints_the_url_and_serves_the_embedded_model(capsys):
    config = serve_cmd.config_from_args(_args("--port", "0", "--width", "64", "--height", "48", "--threads", "1"))
    ready = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(serve_cmd.serve(config, ready))
    try:
        url = await asyncio.wait_for(ready, 60)
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        assert url in capsys.readouterr().out
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "healthz") as response:
                health = await response.json()
            assert health["ok"] and health["sessions"] == 0 and health["model"].startswith("roam-tiny")
            async with http.ws_connect(url + "ws") as ws:
                await ws.send_str('{"type": "hello", "start": "scene:1"}')
                session = await ws.receive_json(timeout=30)
                assert session["type"] == "session" and session["width"] == 64
                frame = await ws.receive(timeout=60)
                assert frame.type == aiohttp.WSMsgType.BINARY and frame.data[:4] == b"ROAM"
        from aiortc.codecs import vpx

        assert vpx.DEFAULT_BITRATE == config.stream.video_bitrate, "encoder bitrates patched for localhost"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # Graceful shutdown: the generation worker has stopped.
    assert not [t for t in threading.enumerate() if t.name == "roam-generation"]


@pytest.mark.heavy
async def test_serve_a_release_folder_at_its_own_size(tmp_path):
    from tests.pipeline.tiny_release import ROAM_SETTINGS, write_streaming
    from tests.pipeline.tiny_text import write_tiny_gemma2

    folder = write_streaming(tmp_path / "SANA-WM_streaming")
    # The streaming release conditions every chunk on a prompt: it is served with its Gemma-2 text encoder.
    gemma = write_tiny_gemma2(tmp_path / "gemma-2-2b-it")
    config = serve_cmd.config_from_args(_args("--port", "0", "--model", str(folder), "--threads", "1",
                                              "--text-encoder", str(gemma)))
    assert config.stream_from_model
    ready = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(serve_cmd.serve(config, ready))
    try:
        url = await asyncio.wait_for(ready, 120)
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "healthz") as response:
                assert (await response.json())["model"] == "SANA-WM (SANA-WM_streaming)"
            async with http.ws_connect(url + "ws") as ws:
                await ws.send_str('{"type": "hello", "start": "scene:1"}')
                session = await ws.receive_json(timeout=60)
                assert (session["width"], session["height"]) == (ROAM_SETTINGS["width"], ROAM_SETTINGS["height"])
                frames = 0
                while frames < 6:
                    msg = await ws.receive(timeout=60)
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        frames += 1
                        await ws.send_str('{"type": "ack", "frame_id": %d}' % int.from_bytes(msg.data[8:12], "little"))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_prompt_flags_reach_the_config_and_need_a_model(tmp_path):
    config = serve_cmd.config_from_args(_args("--model", str(tmp_path), "--prompt", "a quiet forest path",
                                              "--text-encoder", str(tmp_path), "--no-refiner", "--kv-window", "3"))
    assert config.stream.prompt == "a quiet forest path" and config.text_encoder == tmp_path
    assert config.stream.refiner is False and config.stream.kv_window_chunks == 3
    assert serve_cmd.config_from_args(_args()).stream.kv_window_chunks is None  # the model's profile
    with pytest.raises(ValueError, match="--text-encoder and --prompt need a --model"):
        serve_cmd.config_from_args(_args("--prompt", "a city at night"))


def test_serving_the_streaming_release_without_its_text_encoder_is_one_line(tmp_path, capsys):
    """`run.py serve --model SANA-WM_streaming` without Gemma-2: a one-line exit naming --text-encoder, before the
    port is bound and before any weights load; not a traceback and not a silent null caption."""
    import subprocess
    import sys

    from tests.pipeline.tiny_release import write_streaming

    folder = write_streaming(tmp_path / "SANA-WM_streaming")
    with pytest.raises(SystemExit) as exit_info:
        serve_cmd.main(_args("--port", "0", "--model", str(folder)))
    message = str(exit_info.value)
    assert message.startswith("run.py serve: SANA-WM_streaming conditions every chunk on a prompt")
    assert "--text-encoder PATH" in message and "\n" not in message
    # The real command line: exit status 1, the one line on stderr, no traceback.
    done = subprocess.run([sys.executable, "run.py", "serve", "--port", "0", "--model", str(folder)],
                          capture_output=True, text=True, timeout=120, cwd=serve_cmd.__file__.rsplit("/app/", 1)[0])
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1] == message and "Traceback" not in done.stderr, done.stderr
