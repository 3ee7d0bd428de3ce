"""A whole collection run through the real page: a campaign file, two participants in headless
Chromium (consent, a task, walking, done / skip / retry / end), a dataset built from their episodes,
a reviewer's accept and reject at /review, and a second build that honours them.

`ROAM_SCREENSHOT=1` also saves the task view and the review page as docs/collection_task.png and
docs/collection_review.png (not on ordinary CI runs).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from collect.lerobot_layout import check_layout
from tests.e2e.conftest import REPO, _free_port, page_with_console, running_server

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

SCREENSHOT = os.environ.get("ROAM_SCREENSHOT", "") == "1"
BOUND_TIMEOUT_MS = 90_000
# Frames to see after recording is bound before the participant moves on: at least two chunks
# of the embedded model, so each episode has durable frames.
FRAMES_PER_ATTEMPT = 24
CONSENT = "We record the frames you see and the keys you press, under a random id.\nNo names, no addresses."

CAMPAIGN = f'''
name = "e2e-trees"
consent = """{CONSENT}"""
assignment = "round-robin"
record_dir = "rec"
dataset = "ds"

[[tasks]]
id = "tree"
instruction = "Walk to the tallest tree, then look back."
starts = ["scene:1"]
time_limit_s = 120

[[tasks]]
id = "path"
instruction = "Follow the path as far as you can."
starts = ["scene:2"]
goal = "the end of the path"

[filters]
min_seconds = 0.5
max_idle_seconds = 0
max_stuck_seconds = 0
'''


def _screenshot(page, path: Path) -> None:
    """The page as a small PNG (960 px wide, 96 colours): docs images stay tens of kB."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    image = image.resize((960, round(image.height * 960 / image.width)), Image.Resampling.LANCZOS)
    image.quantize(colors=96, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def _wait_bound(page, attempt: int, index: int) -> None:
    page.wait_for_function(
        "([a, i]) => { const c = window.__roam.campaign(); const s = window.__roam.state();"
        " return c.bound && c.task && c.task.attempt === a && c.task.index === i && s.framesPresented > 0; }",
        arg=[attempt, index], timeout=BOUND_TIMEOUT_MS,
    )


def _walk(page, hold_key: str | None = "w") -> None:
    """Hold a key (the real keyboard path) until FRAMES_PER_ATTEMPT frames generated with it arrived."""
    page.locator("#viewport").focus()
    if hold_key:
        page.keyboard.down(hold_key)
        page.wait_for_timeout(100)
    seq = page.evaluate("window.__roam.state().seq")
    count = page.evaluate("window.__roam.state().telemetryCount")
    page.wait_for_function(
        "([seq, n]) => { const s = window.__roam.state(); return (s.lastTelemetry?.input_seq ?? -1) >= seq && s.telemetryCount >= n; }",
        arg=[seq, count + FRAMES_PER_ATTEMPT], timeout=BOUND_TIMEOUT_MS,
    )
    if hold_key:
        page.keyboard.up(hold_key)


def _participant_one(page, url: str, shots: Path) -> str:
    page.goto(url)
    page.locator("#consent").wait_for(state="visible", timeout=30_000)
    assert page.locator("#consent-text").inner_text().strip() == CONSENT.strip()
    assert page.locator("#picker").is_hidden()
    assert page.locator("#stage").is_hidden()
    page.click("#consent-agree")
    _wait_bound(page, attempt=0, index=0)
    assert page.locator("#task-instruction").inner_text() == "Walk to the tallest tree, then look back."
    assert page.locator("#rec-badge").is_visible()
    # The free-walk Record toggle is not offered: recording follows consent only.
    assert page.locator(".switch").is_hidden()
    _walk(page)
    _screenshot(page, shots / "collection_task.png")
    page.click("#task-done")
    _wait_bound(page, attempt=0, index=1)
    assert page.locator("#task-instruction").inner_text() == "Follow the path as far as you can."
    _walk(page, hold_key="d")
    page.click("#task-skip")
    page.locator("#campaign-done").wait_for(state="visible", timeout=30_000)
    return page.evaluate("window.__roam.campaign().participant")


def _participant_two(page, url: str) -> str:
    page.goto(url)
    page.locator("#consent").wait_for(state="visible", timeout=30_000)
    page.click("#consent-agree")
    # Round-robin: the second participant starts at the second task.
    _wait_bound(page, attempt=0, index=0)
    assert page.evaluate("window.__roam.campaign().task.id") == "path"
    _walk(page)
    page.click("#task-retry")
    _wait_bound(page, attempt=1, index=0)
    assert page.evaluate("window.__roam.campaign().task.id") == "path"
    _walk(page, hold_key="a")
    page.click("#task-end")
    page.locator("#campaign-done").wait_for(state="visible", timeout=30_000)
    return page.evaluate("window.__roam.campaign().participant")


def _episodes_closed(rec: Path, n: int, timeout_s: float = 60.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        metas = [json.loads((d / "meta.json").read_text()) for d in sorted(rec.iterdir()) if (d / "meta.json").is_file()]
        if len(metas) >= n and all(m["complete"] for m in metas):
            return metas
        time.sleep(0.5)
    raise AssertionError(f"episodes in {rec} did not all close within {timeout_s} s")


def _build(campaign: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "run.py", "dataset", "build", str(campaign)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return result


def _dataset_sources(ds: Path) -> list[str]:
    return pq.read_table(ds / "meta" / "episodes" / "chunk-000" / "file-000.parquet").column("roam/source_episode").to_pylist()


def test_campaign_two_participants_to_a_reviewed_dataset(browser, tmp_path):
    campaign = tmp_path / "campaign.toml"
    campaign.write_text(CAMPAIGN)
    rec, ds = tmp_path / "rec", tmp_path / "ds"
    shots = REPO / "docs" if SCREENSHOT else tmp_path
    command = [sys.executable, "run.py", "serve", "--port", str(_free_port()), "--campaign", str(campaign)]
    with running_server(command, tmp_path) as server:
        context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        with page_with_console(context) as page:
            p1 = _participant_one(page, server.url, shots)
        context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        with page_with_console(context) as page:
            p2 = _participant_two(page, server.url)
        assert p1 != p2 and p1.startswith("p-") and p2.startswith("p-")

        # What is stored about a participant: a pseudonym, a number, a time, which consent text.
        people = [json.loads(line) for line in (rec / "participants.jsonl").read_text().splitlines()]
        assert [p["participant"] for p in people] == [p1, p2]
        assert all(set(p) == {"participant", "number", "joined", "consent_sha256"} for p in people)
        assert "127.0.0.1" not in (rec / "participants.jsonl").read_text()

        metas = _episodes_closed(rec, 4)
        ours = [m for m in metas if m.get("campaign") == "e2e-trees"]
        assert sorted((m["participant"], m["task"], m["attempt"], m["outcome"]) for m in ours) == sorted([
            (p1, "tree", 0, "done"), (p1, "path", 0, "skip"), (p2, "path", 0, "retry"), (p2, "path", 1, "end"),
        ])
        # Raw input is data: the page's own snapshots with their client time, keys and seq.
        walk = next(d for d in sorted(rec.iterdir()) if (d / "meta.json").is_file() and json.loads((d / "meta.json").read_text()).get("outcome") == "done")
        events = [json.loads(line) for line in (walk / "events.jsonl").read_text().splitlines()]
        inputs = [e for e in events if e["type"] == "input"]
        assert inputs and all({"seq", "t", "keys", "server_t"} <= set(e) for e in inputs)
        assert any(e["keys"] & 1 for e in inputs), "W (forward, bit 1) was held"
        assert [e["seq"] for e in inputs] == sorted(e["seq"] for e in inputs)
        # Control messages too (the page pings every second while it walks).
        assert any(e["type"] != "input" for e in events)

        first = _build(campaign)
        sources = _dataset_sources(ds)
        assert len(sources) >= 2, first.stdout
        assert check_layout(ds) == []
        data = pd.concat([pq.read_table(f).to_pandas() for f in sorted((ds / "data" / "chunk-000").glob("*.parquet"))])
        assert set(data["participant"]) == {p1, p2}
        tasks = pd.read_parquet(ds / "meta" / "tasks.parquet")
        assert {"Walk to the tallest tree, then look back.", "Follow the path as far as you can."} <= set(tasks.index)

        # The reviewer: reject one episode, accept another, at /review.
        with page_with_console(browser.new_context(viewport={"width": 1360, "height": 900}, bypass_csp=True)) as review:
            review.goto(server.url + "review")
            review.wait_for_function("n => window.__review.episodes().length >= n", arg=4, timeout=30_000)
            rows = review.locator("#episode-rows tr.episode")
            assert rows.count() == 4
            assert review.locator("#review-progress").inner_text().split()[:2] == ["2", "participants"]
            rejected, accepted = sources[0], sources[1]
            review.click(f"#episode-rows tr[data-name='{rejected}']")
            review.wait_for_function("name => window.__review.detail()?.name === name", arg=rejected, timeout=30_000)
            review.wait_for_function("() => document.querySelector('#episode-video').readyState >= 2", timeout=30_000)
            review.fill("#review-note", "walked into a wall")
            review.click("#review-reject")
            review.wait_for_function("name => window.__review.episodes().find(e => e.name === name)?.decision === 'reject'", arg=rejected, timeout=10_000)
            review.click(f"#episode-rows tr[data-name='{accepted}']")
            review.wait_for_function("name => window.__review.detail()?.name === name", arg=accepted, timeout=30_000)
            review.wait_for_function("() => document.querySelector('#episode-video').readyState >= 2", timeout=30_000)
            review.evaluate("document.querySelector('#episode-video').currentTime = 0.8")
            review.wait_for_timeout(500)
            review.click("#review-accept")
            review.wait_for_function("name => window.__review.episodes().find(e => e.name === name)?.decision === 'accept'", arg=accepted, timeout=10_000)
            _screenshot(review, shots / "collection_review.png")
        reviews = json.loads((rec / "reviews.json").read_text())["decisions"]
        assert reviews[rejected]["decision"] == "reject" and reviews[rejected]["note"] == "walked into a wall"
        assert reviews[accepted]["decision"] == "accept"
        with urllib.request.urlopen(server.url + "api/campaign/progress", timeout=10) as response:
            progress = json.loads(response.read())
        assert progress["participants"] == 2 and progress["episodes"] == 4 and progress["accepted"] == 1 and progress["rejected"] == 1
        # The operator's console: a progress line after each participant's step.
        assert "campaign e2e-trees: 2 participants," in server.log.read_text()

    second = _build(campaign)
    after = _dataset_sources(ds)
    assert rejected not in after and accepted in after
    assert set(after) == set(sources) - {rejected}
    assert "rejected by reviewer" in second.stdout and "rebuilt" in second.stdout
    assert check_layout(ds) == []
