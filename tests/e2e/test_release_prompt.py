"""Headless Chromium on the streaming release as its authors run it: a tiny random `SANA-WM_streaming` folder
with its Gemma-2 text encoder and its refiner (refiner_diffusers/ + gemma3_12b/) served by the real command,
`python run.py serve --model <folder>`, on the CPU. The page shows the prompt field (the model takes prompts),
a prompt is typed into it, a scene is picked, and frames of the walk arrive conditioned on that prompt.
"""
from __future__ import annotations

import sys

import pytest

from tests.e2e.conftest import _free_port, running_server

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

PROMPT = "the city at night"
FIRST_FRAME_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def release_server(tmp_path_factory):
    from tests.pipeline.tiny_refiner import write_official_streaming

    workdir = tmp_path_factory.mktemp("release-server")
    folder = write_official_streaming(workdir / "SANA-WM_streaming")
    command = [sys.executable, "run.py", "serve", "--port", str(_free_port()), "--model", str(folder), "--threads", "1",
               "--record-dir", str(workdir / "recordings"), "--max-sessions", "1"]
    with running_server(command, workdir) as running:
        yield running


def test_a_prompt_typed_on_the_page_conditions_the_streaming_release(page, release_server):
    server = release_server
    log = server.log
    page.goto(server.url)
    row = page.locator("#prompt-row")
    row.wait_for(state="visible", timeout=30_000)
    cards = page.locator(".scene-card")
    cards.first.wait_for(timeout=60_000)
    # Each scene offers its own default prompt (shown on hover) for when the field is left empty.
    assert cards.first.get_attribute("title").startswith("Prompt: A first-person walk through")
    page.locator("#prompt-input").fill(PROMPT)
    cards.first.click()
    page.wait_for_function(
        "() => { const s = window.__roam.state(); return s.telemetryCount > 0 && s.framesPresented > 3; }",
        timeout=FIRST_FRAME_TIMEOUT_MS,
    )
    session = page.evaluate("window.__roam.state().session")
    assert session["prompt"] == PROMPT and session["model"] == "SANA-WM (SANA-WM_streaming)"
    assert page.locator("#model-name").get_attribute("title") == f"Prompt: {PROMPT}"
    text = log.read_text()
    # The profile is printed at start-up, and the session runs on the typed prompt.
    for line in ("stream profile: official SANA-WM streaming", "KV window: the sink (chunk 0) + 1 recent chunk",
                 "camera key conv: within each chunk", "first decoded frame: dropped", "refiner: re-noise σ"):
        assert line in text, line
    assert f"prompt {PROMPT!r}" in text
