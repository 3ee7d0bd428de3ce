"""Headless Chromium against the guards (app/guards.py), with the page under its own CSP:

- a page on another site fires a burst of offers (text/plain, no preflight, a real browser SDP) and
  uploads at the server; none takes a slot, and the user's own page then gets in over WebRTC;
- a page reached by DNS rebinding (a foreign name resolved to 127.0.0.1, simulated with Chromium's
  --host-resolver-rules) gets 403 for the page and its API;
- the walk hint says to click the view, stays until the pointer is locked, and sits beside the
  minimap, not under it;
- the server's log holds no traceback and no aioice/aiortc INFO chatter.

The page fixture of conftest.py bypasses the CSP (Playwright's `wait_for_function` evaluates strings,
which the CSP forbids), so this module polls with `page.evaluate` instead, in contexts that keep it.
"""
from __future__ import annotations

import http.server
import json
import socketserver
import threading
import time
import urllib.request

import pytest

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, page_with_console

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

FIRST_FRAME_TIMEOUT_S = 60.0
# Names Chromium resolves to 127.0.0.1 in this module's browser: another site, and a rebinding one.
ATTACKER = "attacker.example"
REBOUND = "rebound.example"
BURST = 12

ATTACK_PAGE = """<!doctype html><meta charset="utf-8"><title>some other site</title>
<script>
// What any web page can do without a CORS preflight: POST text/plain or a form, no-cors.
async function burst(target, n) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.createDataChannel("input");
  await pc.setLocalDescription(await pc.createOffer());
  const body = JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", start: "scene:1" });
  const sent = [];
  for (let i = 0; i < n; i++) {
    sent.push(fetch(target + "/offer", { method: "POST", mode: "no-cors", headers: { "Content-Type": "text/plain" }, body })
      .then((r) => r.type, (e) => "network error"));
  }
  // A JSON offer needs a preflight, which the server never answers.
  sent.push(fetch(target + "/offer", { method: "POST", headers: { "Content-Type": "application/json" }, body })
    .then((r) => r.status, (e) => "refused by the browser"));
  sent.push(fetch(target + "/api/upload", { method: "POST", mode: "no-cors", headers: { "Content-Type": "text/plain" }, body: "x" })
    .then((r) => r.type, (e) => "network error"));
  const results = await Promise.all(sent);
  pc.close();
  return results;
}
</script>"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def attacker_site():
    """Another origin on this machine serving ATTACK_PAGE; yields its port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = ATTACK_PAGE.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    site = socketserver.TCPServer(("127.0.0.1", _free_port()), Handler)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield site.server_address[1]
    finally:
        site.shutdown()
        site.server_close()


@pytest.fixture(scope="module")
def guarded_browser():
    """Chromium resolving ATTACKER and REBOUND to 127.0.0.1."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    rules = f"--host-resolver-rules=MAP {ATTACKER} 127.0.0.1, MAP {REBOUND} 127.0.0.1"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[*CHROMIUM_ARGS, rules])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture()
def csp_page(guarded_browser):
    """A page in a fresh context that keeps the server's CSP."""
    with page_with_console(guarded_browser.new_context(viewport={"width": 1280, "height": 720})) as page:
        yield page


def _until(page, script: str, timeout_s: float, what: str):
    """Poll `script` (an expression) in the page until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = page.evaluate(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s:.0f} s; state: {page.evaluate('window.__roam && window.__roam.state()')}")
        page.wait_for_timeout(100)


def _health(server) -> dict:
    with urllib.request.urlopen(server.url + "healthz", timeout=5) as response:
        return json.loads(response.read())


def _start_walk(page, server) -> None:
    page.goto(server.url)
    page.locator(".scene-card").first.wait_for(timeout=30_000)
    page.locator(".scene-card").first.click()
    _until(page, "window.__roam.state().framesPresented > 0 && window.__roam.state().telemetryCount > 0", FIRST_FRAME_TIMEOUT_S, "the first frame")


def test_a_cross_site_burst_takes_no_slot_and_the_page_still_gets_in(server, attacker_site, csp_page):
    before = _health(server)["rejected"]["cross_site"]
    attacker = csp_page.context.new_page()
    attacker.goto(f"http://{ATTACKER}:{attacker_site}/")
    target = server.url.rstrip("/")
    results = attacker.evaluate("([target, n]) => burst(target, n)", [target, BURST])
    attacker.close()
    print(f"\nthe other site's fetches ended: {sorted(set(map(str, results)))}")
    # The answers never reach the other page (no CORS; Cross-Origin-Resource-Policy: same-origin).
    assert "network error" in results and "refused by the browser" in results and 200 not in results
    # Every offer and the upload reached the server and was refused there (the JSON one's preflight
    # too); none took a slot.
    health = _health(server)
    assert health["rejected"]["cross_site"] - before >= BURST + 2, health
    assert health["sessions"] == 0
    refused = server.log.read_text()
    assert "Traceback" not in refused and " ERROR " not in refused

    started = time.monotonic()
    _start_walk(csp_page, server)
    state = csp_page.evaluate("window.__roam.state()")
    print(f"\nafter a burst of {BURST} cross-site offers the page streamed over {state['transport']} "
          f"{time.monotonic() - started:.1f} s after clicking a scene")
    assert state["transport"] == "webrtc", state
    assert _health(server)["sessions"] == 1
    assert not [line for line in csp_page.console_log if "Content Security Policy" in line], csp_page.console_log


def test_a_dns_rebinding_page_gets_403(server, csp_page):
    port = server.url.rstrip("/").rsplit(":", 1)[1]
    response = csp_page.goto(f"http://{REBOUND}:{port}/")
    assert response.status == 403
    assert "--allow-host" in json.loads(response.text())["error"]
    # The rebound page's own requests to the API (same origin for the browser) are refused as well.
    status = csp_page.evaluate("fetch('/api/scenes').then((r) => r.status)")
    assert status == 403


def test_the_hint_says_to_click_the_view_until_the_pointer_is_locked(server, csp_page):
    _start_walk(csp_page, server)
    shown = time.monotonic()
    hint = csp_page.locator("#hint")
    assert "Click the view to look around with the mouse" in hint.inner_text()
    opacity = "Number(getComputedStyle(document.getElementById('hint')).opacity)"
    assert csp_page.evaluate(opacity) == 1
    # Beside the minimap, never under it (viewport 1280x720 made them overlap before).
    h, m = hint.bounding_box(), csp_page.locator(".minimap-wrap").bounding_box()
    assert h["x"] + h["width"] <= m["x"] or h["y"] + h["height"] <= m["y"], (h, m)
    # It does not fade by itself before the pointer is locked (it faded after 8 s before).
    csp_page.wait_for_timeout(max(0.0, 8.6 - (time.monotonic() - shown)) * 1000)
    assert csp_page.evaluate(opacity) == 1
    csp_page.locator("#viewport").click()
    _until(csp_page, "document.pointerLockElement === document.getElementById('viewport')", 5.0, "the pointer lock")
    _until(csp_page, f"{opacity} === 0", 3.0, "the hint to hide once the pointer is locked")
    # (Esc is handled by the browser itself, out of reach of synthetic key presses.)
    csp_page.evaluate("document.exitPointerLock()")
    _until(csp_page, "document.pointerLockElement === null", 5.0, "the pointer lock's release")
    _until(csp_page, f"{opacity} === 1", 3.0, "the hint to show again after Esc")


def test_the_server_log_has_no_ice_chatter_and_no_traceback(server):
    """Runs after the walks above (module order): the server logged them without aioice/aiortc INFO
    lines (52 of 89 lines before) and without a traceback."""
    lines = server.log.read_text().splitlines()
    chatter = [line for line in lines if " INFO aioice" in line or " INFO aiortc" in line]
    print(f"\nserver log: {len(lines)} lines, {len(chatter)} from aioice/aiortc at INFO")
    assert lines and not chatter, chatter[:5]
    assert not [line for line in lines if "Traceback" in line or " ERROR " in line]
