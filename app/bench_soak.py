"""`python run.py bench soak`: the server's memory over many connect/disconnect cycles.

One run starts the server in a child process, as `python run.py serve` runs it (`app.serve_cmd`:
the embedded tiny model unless --model, start scenes pre-rendered, a record dir, on 127.0.0.1), and,
--cycles times in a row, connects one client from this process (an aiortc peer by default, or the
websocket), receives --frames frames, disconnects and waits until the server has closed the session.
After the cycles named in --marks it asks the child for its resident memory (RSS,
/proc/self/status), what glibc's malloc holds (mallinfo2: bytes in use, bytes free but kept from
the system), its live sessions, peer connections and threads. Only the server is measured: the
client's memory is its own process's.

RSS that grows while the live objects do not is the allocator keeping freed memory; malloc's free
bytes say how much of it is fragmentation. `--malloc-arena-max N` runs the child with
MALLOC_ARENA_MAX=N (glibc's default otherwise) to compare. The loop is bounded and talks only
to 127.0.0.1; the child is stopped at the end. The load average is printed with the figures: other
jobs share the machine.

This module drives the app (a higher room) and imports it only inside functions.
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

MEMORY_ROUTE = "/_soak/memory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cycles", type=int, default=300, help="connect/disconnect cycles (default %(default)s)")
    parser.add_argument("--marks", default="10,100,200,300", help="cycles after which memory is recorded (default %(default)s)")
    parser.add_argument("--frames", type=int, default=9, help="frames each session receives before it disconnects (default %(default)s)")
    parser.add_argument("--transport", choices=["webrtc", "websocket"], default="webrtc")
    parser.add_argument("--malloc-arena-max", type=int, default=None,
                        help="run the server with MALLOC_ARENA_MAX=N (default: as this process has it)")
    parser.add_argument("--model", default=None, help="a SANA-WM release folder (default: the embedded tiny model)")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def malloc_figures() -> dict[str, float]:
    """glibc malloc's totals over all arenas in MB (in use, free but kept); empty off glibc."""
    try:
        info_fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return {}
    info_fn.restype = _MallInfo2
    info = info_fn()
    mb = 1 / 2**20
    return {"in_use_mb": (info.uordblks + info.hblkhd) * mb, "free_kept_mb": info.fordblks * mb}


def rss_mb() -> float:
    """Resident set size of this process in MB (nan where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def memory_report(app) -> dict:
    """The server's memory figures (the child's /_soak/memory answer)."""
    from app.server import SESSIONS

    # RSS first, before the collection below can change it.
    rss = rss_mb()
    gc.collect()
    peers = sum(1 for obj in gc.get_objects() if type(obj).__name__ == "RTCPeerConnection")
    return {"rss_mb": rss, **malloc_figures(), "sessions": len(app[SESSIONS]), "peers": peers, "threads": threading.active_count()}


def serve_child(port: int, record_dir: str, model: str | None) -> None:
    """The child: `run.py serve`'s app plus one read-only route with its memory figures."""
    import logging

    from aiohttp import web

    from app.config import AppConfig, ServerConfig, StreamConfig
    from app.server import create_app

    logging.basicConfig(level=logging.WARNING)
    config = AppConfig(server=ServerConfig(port=port, record_dir=Path(record_dir)), stream=StreamConfig(),
                       model_path=None if model is None else Path(model), stream_from_model=model is not None)
    app = create_app(config)

    async def memory(request: web.Request) -> web.Response:
        return web.json_response(memory_report(request.app))

    app.router.add_get(MEMORY_ROUTE, memory)
    web.run_app(app, host="127.0.0.1", port=port, print=lambda *_: print("ready", flush=True), access_log=None)


@dataclass
class Mark:
    cycles: int
    seconds: float
    load: float
    server: dict


async def _cycle_webrtc(url: str, frames: int) -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection

    from app.bench_stream import answer_offer, first_track

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.createDataChannel("control")
    track_future = first_track(pc)

    try:
        await pc.setLocalDescription(await pc.createOffer())
        await answer_offer(url, pc)
        track = await asyncio.wait_for(track_future, 30)
        for _ in range(frames):
            await asyncio.wait_for(track.recv(), 30)
    finally:
        await pc.close()


async def _cycle_websocket(url: str, frames: int) -> None:
    import aiohttp

    from app.server import WS_HEADER

    async with aiohttp.ClientSession() as http, http.ws_connect(f"{url}/ws") as ws:
        await ws.send_str(json.dumps({"type": "hello", "start": "scene:1"}))
        got = 0
        while got < frames:
            msg = await asyncio.wait_for(ws.receive(), 30)
            if msg.type == aiohttp.WSMsgType.BINARY:
                got += 1
                await ws.send_str(json.dumps({"type": "ack", "frame_id": WS_HEADER.unpack(msg.data[: WS_HEADER.size])[3]}))
            elif msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"the websocket ended after {got} frames ({msg.type.name})")


async def soak(url: str, args: argparse.Namespace, marks: list[int], on_mark=None) -> list[Mark]:
    """Run the cycles against the server at `url`; one `Mark` per entry of `marks`."""
    import aiohttp

    from common.bench import load_average

    cycle = _cycle_webrtc if args.transport == "webrtc" else _cycle_websocket
    out: list[Mark] = []
    start = time.monotonic()
    async with aiohttp.ClientSession() as http:

        async def get(route: str) -> dict:
            async with http.get(url + route) as response:
                return await response.json()

        for i in range(1, args.cycles + 1):
            await cycle(url, args.frames)
            # The next client may only come once the server has let this one go. (/healthz, which
            # does no work: the memory route collects garbage, which would change what is measured.)
            deadline = time.monotonic() + 30
            while (sessions := (await get("/healthz"))["sessions"]) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if sessions:
                raise RuntimeError(f"cycle {i}: the server still holds {sessions} session(s) 30 s after the client left")
            if i in marks:
                mark = Mark(i, time.monotonic() - start, load_average(), await get(MEMORY_ROUTE))
                out.append(mark)
                if on_mark is not None:
                    on_mark(mark)
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(args: argparse.Namespace) -> int:
    import tempfile
    import urllib.request

    from common.bench import machine_description, markdown_table, write_docs_section

    try:
        marks = sorted({int(x) for x in args.marks.split(",") if x.strip()})
    except ValueError:
        raise SystemExit(f"run.py bench soak: --marks must list cycle counts, got {args.marks!r}") from None
    if args.cycles < 1 or not marks or marks[0] < 1 or marks[-1] > args.cycles:
        raise SystemExit(f"run.py bench soak: --marks must lie in [1, --cycles={args.cycles}], got {args.marks!r}")
    if args.frames < 1:
        raise SystemExit(f"run.py bench soak: --frames must be >= 1, got {args.frames}")
    env = dict(os.environ)
    if args.malloc_arena_max is not None:
        env["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)
    arenas = env.get("MALLOC_ARENA_MAX", "unset (glibc's default, 8 per core)")
    machine = machine_description()
    port = _free_port()
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="roam-soak-") as record_dir:
        code = f"from app.bench_soak import serve_child; serve_child({port}, {record_dir!r}, {args.model!r})"
        child = subprocess.Popen([sys.executable, "-c", code], cwd=root, env=env, stdout=subprocess.PIPE, text=True)
        try:
            if child.stdout.readline().strip() != "ready":
                raise SystemExit(f"run.py bench soak: the server did not start (exit code {child.wait()})")
            url = f"http://127.0.0.1:{port}"
            with urllib.request.urlopen(url + "/healthz") as response:
                model_name = json.load(response)["model"]
            print(f"bench soak: {model_name}, {args.transport}, {args.cycles} cycles of {args.frames} frames; server MALLOC_ARENA_MAX "
                  f"{arenas}; {machine}", flush=True)

            def show(mark: Mark) -> None:
                s = mark.server
                print(f"  after {mark.cycles} cycles ({mark.seconds:.0f} s): server RSS {s['rss_mb']:.0f} MB; malloc in use "
                      f"{s.get('in_use_mb', float('nan')):.0f} MB, free but kept {s.get('free_kept_mb', float('nan')):.0f} MB; "
                      f"sessions {s['sessions']}, peers {s['peers']}, threads {s['threads']}; load average {mark.load:.1f}", flush=True)

            results = asyncio.run(soak(url, args, marks, show))
        finally:
            child.terminate()
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    first, last = results[0], results[-1]
    growth = (last.server["rss_mb"] / first.server["rss_mb"] - 1) * 100
    print(f"  server RSS growth from {first.cycles} to {last.cycles} cycles: {growth:+.1f} %")
    rows = [[r.cycles, f"{r.server['rss_mb']:.0f}", f"{r.server.get('in_use_mb', float('nan')):.0f}",
             f"{r.server.get('free_kept_mb', float('nan')):.0f}", r.server["peers"], r.server["threads"], f"{r.load:.1f}"] for r in results]
    table = markdown_table(["cycles", "server RSS MB", "malloc in use MB", "malloc free but kept MB", "live peers", "threads",
                            "load average"], rows)
    print(table)
    if args.write_docs:
        body = (
            f"`python run.py bench soak` — {model_name}, transport {args.transport}: {args.cycles} cycles of connect, "
            f"{args.frames} frames, disconnect, one session at a time, against `run.py serve`'s app in a child process on 127.0.0.1 "
            f"(the client is this process; only the server is measured). Server MALLOC_ARENA_MAX {arenas}. Machine: {machine}; "
            f"the 1-minute load average is given per row: other jobs shared the machine.\n\n"
            f"{table}\n\n"
            f"Server RSS growth from {first.cycles} to {last.cycles} cycles: {growth:+.1f} %. A removed walk's memory is let go at "
            f"once and malloc is trimmed after each session (`streaming.worker`), which is why RSS stays below malloc's in-use plus "
            f"free bytes: the trimmed pages are still counted free.\n"
        )
        write_docs_section("soak", body)
        print("wrote the soak section of docs/benchmarks.md")
    return 0
