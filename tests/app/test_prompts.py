"""Prompts in the live app: GET /api/model, scene defaults, the hello / offer field, one encode per prompt, and
a model without a text encoder that refuses a prompt instead of ignoring it."""
from __future__ import annotations

import asyncio
import dataclasses

import aiohttp
import pytest
import torch

from app.config import StreamConfig
from app.runtime import UPLOAD_PROMPT, Runtime
from model.profile import OFFICIAL_STREAMING
from tests.app.helpers import FakeScenes, fake_runtime, serve
from tests.streaming.fakes import FakeConditioner, FakeModel, FakeVAE

STREAM = StreamConfig(width=32, height=32, chunk_latents=2, idle_chunks=0, torch_threads=1)


class PromptedScenes(FakeScenes):
    def prompt(self, scene_id: str) -> str:
        return f"a flat world number {self.seed_of(scene_id)}"


class CountingEncoder:
    """A stand-in Gemma-2: a [1, 1, 4] embedding per prompt, counting its calls."""

    def __init__(self):
        self.calls: list[str] = []

    def encode(self, prompt: str):
        self.calls.append(prompt)
        return torch.full((1, 1, 4), float(len(prompt))), torch.ones(1, 1, dtype=torch.long)


def _prompted_runtime(stream: StreamConfig = STREAM) -> Runtime:
    profile = OFFICIAL_STREAMING.replace(refiner=None, chunk_latents=stream.chunk_latents)
    return Runtime(model=FakeModel(), vae=FakeVAE(), model_name="fake prompted", stream=stream,
                   scenes=PromptedScenes(stream.width, stream.height), conditioner_factory=FakeConditioner,
                   profile=profile, text_encoder=CountingEncoder())


async def _hello(url: str, message: str) -> dict:
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{url}/ws") as ws:
        await ws.send_str(message)
        return await ws.receive_json(timeout=30)


async def test_a_model_without_a_text_encoder_takes_no_prompt():
    runtime = fake_runtime(STREAM)
    async with serve(runtime) as (url, _):
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/api/model") as response:
                model = await response.json()
            assert model["prompt"]["enabled"] is False and model["refiner"] is False
            async with http.get(f"{url}/api/scenes") as response:
                assert all("prompt" not in scene for scene in await response.json())
            async with http.post(f"{url}/offer", json={"type": "offer", "sdp": "v=0", "start": "scene:1", "prompt": 5}) as response:
                assert response.status == 400 and "prompt must be a string" in (await response.json())["error"]
        refused = await _hello(url, '{"type": "hello", "start": "scene:1", "prompt": "a city at night"}')
        assert refused["type"] == "error" and "has no text encoder" in refused["message"]
        # No prompt (or an empty one): the null caption, as before.
        session = await _hello(url, '{"type": "hello", "start": "scene:1", "prompt": ""}')
        assert session["type"] == "session" and session["prompt"] is None


async def test_walks_get_their_prompt_encoded_once_and_scenes_their_defaults():
    runtime = _prompted_runtime()
    encoder = runtime.text_encoder
    async with serve(runtime) as (url, app):
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/api/model") as response:
                assert (await response.json())["prompt"] == {"enabled": True, "max_chars": 2000, "default": None}
            async with http.get(f"{url}/api/scenes") as response:
                scenes = await response.json()
        assert [s["prompt"] for s in scenes] == ["a flat world number 1", "a flat world number 2"]
        for _ in range(2):
            async with aiohttp.ClientSession() as http, http.ws_connect(f"{url}/ws") as ws:
                await ws.send_str('{"type": "hello", "start": "scene:2", "prompt": "  a quiet forest path "}')
                session = await ws.receive_json(timeout=30)
                assert session["prompt"] == "a quiet forest path"
                frame = await ws.receive(timeout=30)
                assert frame.type == aiohttp.WSMsgType.BINARY
        default = await _hello(url, '{"type": "hello", "start": "scene:1"}')
        assert default["prompt"] == "a flat world number 1"
        too_long = await _hello(url, '{"type": "hello", "start": "scene:1", "prompt": "%s"}' % ("x" * 2001))
        assert too_long["type"] == "error" and "at most 2000 characters" in too_long["message"]
    # Two walks, one prompt: encoded once (on the worker thread, when the walk started).
    assert encoder.calls.count("a quiet forest path") == 1


async def test_the_generator_is_conditioned_on_the_walk_prompt():
    runtime = _prompted_runtime()
    generator = runtime.make_generator("a quiet forest path")
    await asyncio.to_thread(generator.start, FakeScenes(32, 32).view("scene:1").image, torch.eye(4).numpy())
    assert generator.prompt.prompt == "a quiet forest path"
    assert torch.equal(generator.text, torch.full((1, 1, 4), 19.0))


def test_serve_prompt_replaces_the_scene_defaults_and_uploads_get_a_generic_one():
    runtime = _prompted_runtime(dataclasses.replace(STREAM, prompt="a sunlit street"))
    assert runtime.walk_prompt("scene:1", None) == "a sunlit street"
    assert runtime.walk_prompt("scene:1", "the city at night") == "the city at night"
    bare = _prompted_runtime()
    assert bare.walk_prompt("upload:0123456789ab", "") == UPLOAD_PROMPT
    with pytest.raises(ValueError, match="at most 2000"):
        bare.walk_prompt("scene:1", "x" * 2001)


def test_a_profile_that_requires_a_prompt_needs_a_text_encoder():
    with pytest.raises(ValueError, match="--text-encoder PATH"):
        Runtime(model=FakeModel(), vae=FakeVAE(), model_name="fake", stream=STREAM, scenes=FakeScenes(32, 32),
                profile=OFFICIAL_STREAMING.replace(refiner=None))
