"""A closed or crashed tab frees its session slot within FREED_WITHIN_S (docs/protocol.md, "Liveness").

Each test starts a walk, makes the tab go, and polls /healthz until the server holds no session:
- the page sends its beacon (tab still open), to check the route takes what a browser sends,
- the tab closes (its pagehide sends the close note and the beacon),
- the tab closes with its pagehide handler blocked and `sendBeacon` stubbed (the page says nothing;
  the browser tearing down the peer connection closes its data channels),
- the renderer crashes (nothing at all is sent: the server's silence rule frees it),
and the websocket page closes with its pagehide blocked. The times are printed.
"""
from __future__ import annotations

import json
import time
import urllib.request

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]

FREED_WITHIN_S = 5.0
SESSION_TIMEOUT_MS = 60_000
# Blocks the page's own pagehide listener (a capture listener on the target runs first) and its beacon.
SILENCE_THE_PAGE = """() => {
  window.addEventListener("pagehide", (event) => event.stopImmediatePropagation(), { capture: true });
  navigator.sendBeacon = () => true;
}"""


def _sessions(url: str) -> int:
    with urllib.request.urlopen(url + "healthz", timeout=2) as response:
        return json.load(response)["sessions"]


def _wait_sessions(url: str, n: int, timeout_s: float) -> float:
    """Seconds until the server holds `n` sessions; fails past `timeout_s`."""
    t0 = time.monotonic()
    while _sessions(url) != n:
        assert time.monotonic() - t0 < timeout_s, f"the server still holds {_sessions(url)} sessions after {timeout_s:g} s"
        time.sleep(0.05)
    return time.monotonic() - t0


def _start(page, url: str, transport: str) -> None:
    # A slot freed by the previous test is free here too.
    _wait_sessions(url, 0, FREED_WITHIN_S)
    page.goto(url + ("?transport=ws" if transport == "websocket" else ""))
    page.locator(".scene-card").first.click(timeout=30_000)
    page.wait_for_function(
        "t => { const s = window.__roam.state(); return s.transport === t && s.sessionId !== null; }", arg=transport, timeout=SESSION_TIMEOUT_MS
    )
    # The visibility note (sent on the session message) and a ping or two are on their way.
    page.wait_for_timeout(500)
    assert _sessions(url) == 1
    assert page.evaluate("document.visibilityState") == "visible"


def _freed_after_close(page, server, what: str) -> float:
    t0 = time.monotonic()
    page.close(run_before_unload=False)
    _wait_sessions(server.url, 0, FREED_WITHIN_S)
    freed = time.monotonic() - t0
    print(f"\n{what}: slot free {freed:.2f} s after the tab closed")
    return freed


def test_closed_tab_frees_its_slot(page, server):
    _start(page, server.url, "webrtc")
    _freed_after_close(page, server, "webrtc, pagehide says goodbye")


def test_beacon_from_the_page_frees_its_slot(page, server):
    # The beacon alone, from a real browser (text/plain, its own Origin and Sec-Fetch-Site), tab still open.
    _start(page, server.url, "webrtc")
    t0 = time.monotonic()
    assert page.evaluate("() => { const b = window.__roam.state().closeBeacon; return navigator.sendBeacon(b.url, b.token); }")
    _wait_sessions(server.url, 0, FREED_WITHIN_S)
    print(f"\nwebrtc, beacon alone: slot free {time.monotonic() - t0:.2f} s after it was sent")
    page.wait_for_function("() => window.__roam.state().transport === 'none'", timeout=10_000)


def test_closed_tab_that_says_nothing_frees_its_slot(page, server):
    _start(page, server.url, "webrtc")
    page.evaluate(SILENCE_THE_PAGE)
    _freed_after_close(page, server, "webrtc, pagehide blocked")


def test_crashed_tab_frees_its_slot(page, server):
    from playwright.sync_api import Error as PlaywrightError

    _start(page, server.url, "webrtc")
    cdp = page.context.new_cdp_session(page)
    t0 = time.monotonic()
    try:
        # Page.crash never answers: the renderer it would answer from is gone.
        cdp.send("Page.crash", timeout=1000)
    except PlaywrightError:
        pass
    _wait_sessions(server.url, 0, FREED_WITHIN_S)
    print(f"\nwebrtc, renderer crashed: slot free {time.monotonic() - t0:.2f} s after the crash")


def test_closed_websocket_tab_that_says_nothing_frees_its_slot(page, server):
    _start(page, server.url, "websocket")
    page.evaluate(SILENCE_THE_PAGE)
    _freed_after_close(page, server, "websocket, pagehide blocked")
