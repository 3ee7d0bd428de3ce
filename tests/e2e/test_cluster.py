"""The page through `python run.py serve --ray local --replicas 2` (headless Chromium, a local Ray
with 2 CPU replicas): a WebRTC walk and a websocket walk land on different replicas and stream; the
WebRTC walk's replica is killed (SIGKILL) and its page shows the ingress's error at once, while the
websocket walk on the other replica streams on. Then the command shuts down with its Ray."""
from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.request

import pytest

from tests.e2e.conftest import _free_port, running_server

pytest.importorskip("ray", reason="requirements-cluster.txt installs Ray; CI installs it with requirements-dev.txt")

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

FIRST_FRAME_TIMEOUT_MS = 90_000
# Ray's start-up and each replica's model on a busy 2-core box; shutdown stops the replicas and Ray.
STOP_TIMEOUT_S = 60.0


def _health(url: str) -> dict:
    with urllib.request.urlopen(url + "healthz", timeout=5) as response:
        return json.loads(response.read())


def _start(page, url: str, transport: str) -> None:
    page.goto(url + ("?transport=ws" if transport == "websocket" else ""))
    page.locator(".scene-card").first.click(timeout=60_000)
    page.wait_for_function(
        "t => { const s = window.__roam.state(); return s.transport === t && s.telemetryCount > 0 && s.framesPresented > 0; }",
        arg=transport, timeout=FIRST_FRAME_TIMEOUT_MS,
    )


def _replica_with_sessions(url: str, n: int) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        busy = [r for r in _health(url)["replicas"] if r["alive"] and r["sessions"] == n]
        if len(busy) == 1:
            return busy[0]
        time.sleep(0.1)
    raise AssertionError(f"no single replica with {n} sessions: {_health(url)}")


def test_page_walks_through_the_ingress_and_survives_a_replica_kill(browser, tmp_path):
    port = _free_port()
    command = [sys.executable, "run.py", "serve", "--ray", "local", "--replicas", "2", "--port", str(port), "--max-sessions", "2",
               "--width", "64", "--height", "64", "--threads", "1", "--idle-chunks", "0", "--record-dir", str(tmp_path / "recordings")]
    with running_server(command, tmp_path, stop_timeout_s=STOP_TIMEOUT_S) as server:
        assert len([r for r in _health(server.url)["replicas"] if r["alive"]]) == 2
        webrtc = browser.new_context(bypass_csp=True).new_page()
        websocket = browser.new_context(bypass_csp=True).new_page()
        _start(webrtc, server.url, "webrtc")
        victim = _replica_with_sessions(server.url, 1)
        _start(websocket, server.url, "websocket")
        # The ingress's /healthz counts what its last probe of each replica saw (every 0.5 s), so the
        # second walk may show up a probe after its first frame.
        deadline = time.monotonic() + 10
        while sorted(r["sessions"] for r in _health(server.url)["replicas"]) != [1, 1] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sorted(r["sessions"] for r in _health(server.url)["replicas"]) == [1, 1], _health(server.url)

        t_kill = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        webrtc.wait_for_function("window.__roam.state().error !== null", timeout=10_000)
        shown = time.monotonic() - t_kill
        error = webrtc.evaluate("window.__roam.state().error")
        assert "the replica serving this walk stopped" in error
        assert "the replica serving this walk stopped" in webrtc.locator("#stage-error").inner_text()
        # The websocket walk, on the other replica, streams on.
        drawn = websocket.evaluate("window.__roam.state().framesDecoded")
        websocket.wait_for_function(f"window.__roam.state().framesDecoded >= {drawn + 10}", timeout=30_000)
        assert websocket.evaluate("window.__roam.state().error") is None
        print(f"\npage error {shown:.2f} s after the kill: {error!r}")
        webrtc.context.close()
        websocket.context.close()
    log = server.log.read_text()
    assert "roam: shutting down" in log
    assert server.process.returncode == 0, log[-3000:]
