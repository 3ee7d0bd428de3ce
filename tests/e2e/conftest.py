"""Browser-test fixtures: the roam server in a subprocess and headless Debian chromium.

The server is the real app, `python run.py serve --port <free port>`, serving the embedded default
model (seeded random weights until trained ones are installed). Chromium is driven through Playwright's sync API with
`executable_path`, because Playwright's own browser download is not available offline.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",
]
SERVER_START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class RunningServer:
    url: str
    process: subprocess.Popen
    # Its stdout and stderr together.
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_command(port: int, record_dir: Path) -> list[str]:
    # Walks the tests record (the Record toggle) go to a temporary folder, never into the repository.
    return [sys.executable, "run.py", "serve", "--port", str(port), "--record-dir", str(record_dir)]


def _wait_until_serving(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url + "api/scenes", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the server did not answer within {SERVER_START_TIMEOUT_S:.0f} s:\n{log.read_text()[-4000:]}")


@contextlib.contextmanager
def running_server(command: list[str], workdir: Path, stop_timeout_s: float = 10.0):
    """`command` (a `run.py serve --port <port> ...` line) started in the repository, its output in
    workdir/server.log; yields the RunningServer once it answers, and stops it on exit (SIGTERM, then
    SIGKILL after `stop_timeout_s`)."""
    port = command[command.index("--port") + 1]
    log = workdir / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_serving(url, process, log)
        yield RunningServer(url=url, process=process, log=log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=stop_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.returncode not in (0, -15, None):
            print(f"server log:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("server")
    with running_server(_server_command(_free_port(), workdir / "recordings"), workdir) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    """One headless chromium per module (Playwright gives it a fresh temporary user-data-dir)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture()
def page(browser):
    """A page in a fresh browser context (no cookies, storage or cache shared between tests).

    The context bypasses the page's Content-Security-Policy: Playwright's `wait_for_function` runs
    its string as script in the page, which the CSP (no 'unsafe-eval') forbids. tests/e2e/test_guards.py
    drives the page under its CSP."""
    with page_with_console(browser.new_context(viewport={"width": 1280, "height": 860}, bypass_csp=True)) as page:
        yield page


@contextlib.contextmanager
def page_with_console(context):
    """A page of `context` whose console messages and errors are kept (`page.console_log`) and printed at the
    end; the context is closed on exit."""
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    page.console_log = console
    try:
        yield page
    finally:
        if console:
            print("browser console:\n" + "\n".join(console[-40:]))
        context.close()
