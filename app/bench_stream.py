"""`python run.py bench stream`: the live app measured end to end, with 1 and with N concurrent sessions.

One run starts the real server (`app.server.create_app`, the embedded tiny model unless --model) on
127.0.0.1 and drives it with in-process clients (aiortc peers by default, or the websocket), each
walking (FORWARD held, yaw swinging, snapshots at 30 Hz). Per session it measures:
- steady fps: frames received per second over whole chunks after the first (`steady_fps`);
- chunk ms: the generator's wall time per chunk (telemetry `chunk_ms`);
- time to first frame: from the offer (or websocket hello) to the first frame received;
- motion-to-photon p50/p95: from sending input seq S to the first frame carrying a seq >= S (on
  WebRTC the frame's telemetry, sent as the frame goes to the encoder; on the websocket the frame);
- drops per minute: frames the server's buffers and pacers dropped.
It also times the generator alone with 1 and 2 torch threads, and one batched chunk of N walks
against their N chunks one at a time, the two facts behind the worker's thread and batching choices.

`--modes` compares worker policies in one run, interleaved per session count so that both see the
same machine load: `per-session` (one walk per chunk, 1.5-chunk buffers: the worker before batching)
and `batched` (up to `--batch-sessions` walks per chunk, deadline-ordered, 2-chunk buffers: today's
default). Admission by measured capacity is off while measuring (every client must get in); the
capacity the worker measured at the end of each run is reported beside it. The summary names, per
mode, the most sessions of which every one held >= `--hold-fps` steady.

This module drives the app (a higher room) and imports it only inside `main`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

FORWARD = 1
INPUT_HZ = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sessions", default="1,4", help="comma-separated concurrent session counts (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=30.0, help="walk duration per session count (default %(default)s)")
    parser.add_argument("--transport", choices=["webrtc", "websocket"], default="webrtc")
    parser.add_argument("--width", type=int, default=None, help="video width (default: the app's)")
    parser.add_argument("--height", type=int, default=None, help="video height (default: the app's)")
    parser.add_argument("--threads", type=int, default=None, help="worker torch threads (default: the app's, cores - 1)")
    parser.add_argument("--thread-counts", default="1,2", help="torch thread counts to time the generator alone with (default %(default)s)")
    parser.add_argument("--drift-chunks", type=int, default=12, help="standing-camera chunks for the drift figure (default %(default)s)")
    parser.add_argument("--model", default=None, help="a SANA-WM release folder (default: the embedded tiny model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", default="per-session,batched", help="worker policies to compare: per-session, batched (default %(default)s)")
    parser.add_argument("--batch-sessions", type=int, default=None, help="most walks per batched chunk in batched mode (default: the app's)")
    parser.add_argument("--hold-fps", type=float, default=15.5, help="steady fps every session must hold to count (default %(default)s)")
    parser.add_argument("--generator-process", default="auto",
                        help="where the server computes the walks, as `serve --generator-process`: auto, on, off, or a comma list "
                             "to compare, interleaved like --modes (default %(default)s)")
    parser.add_argument("--kv-window", default=None,
                        help="recent chunks in the softmax KV window besides the sink, as `serve --kv-window` (default: the model's), "
                             "or a comma list to compare, interleaved like --modes")


@dataclass
class ClientLog:
    """What one client saw, on one clock (time.monotonic)."""

    start_t: float = 0.0
    end_t: float = 0.0
    sent: dict[int, float] = field(default_factory=dict)  # input seq -> send time
    frames: list[float] = field(default_factory=list)  # arrival times
    carried: list[tuple[float, int]] = field(default_factory=list)  # (arrival, input_seq) per frame
    chunk_ms: dict[int, float] = field(default_factory=dict)  # chunk id -> ms
    drops: int = 0
    error: str | None = None


def _input(seq: int, elapsed: float) -> str:
    yaw = 20.0 * np.sin(elapsed * 0.8)
    return json.dumps({"type": "input", "seq": seq, "t": elapsed * 1e3, "keys": FORWARD, "yaw": round(float(yaw), 3), "pitch": 0.0, "roll": 0.0})


def _on_telemetry(log: ClientLog, message: dict, arrival: float, record_frame: bool) -> None:
    if message.get("type") != "telemetry":
        return
    log.chunk_ms[message["chunk_id"]] = message["chunk_ms"]
    log.drops = max(log.drops, message["drops"])
    if record_frame:
        log.carried.append((arrival, message["input_seq"]))


def first_track(pc) -> asyncio.Future:
    """A future that the first media track `pc` receives completes (set up before the offer is made)."""
    future: asyncio.Future = asyncio.get_running_loop().create_future()

    @pc.on("track")
    def on_track(track) -> None:
        if not future.done():
            future.set_result(track)

    return future


async def answer_offer(url: str, pc, start: str = "scene:1") -> None:
    """POST `pc`'s local offer to the server's /offer (starting at `start`) and apply its answer."""
    import aiohttp
    from aiortc import RTCSessionDescription

    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/offer", json={"sdp": pc.localDescription.sdp, "type": "offer", "start": start}) as response:
            answer = await response.json()
            if response.status != 200:
                raise RuntimeError(f"offer refused: {response.status} {answer}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))


async def _run_webrtc(url: str, seconds: float, log: ClientLog) -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    input_channel = pc.createDataChannel("input", ordered=False, maxRetransmits=0)
    control = pc.createDataChannel("control")
    track_future = first_track(pc)

    @control.on("message")
    def on_message(data) -> None:
        _on_telemetry(log, json.loads(data), time.monotonic(), record_frame=True)

    try:
        await pc.setLocalDescription(await pc.createOffer())
        log.start_t = time.monotonic()
        await answer_offer(url, pc)
        track = await asyncio.wait_for(track_future, 30)

        async def receive() -> None:
            while True:
                await track.recv()
                log.frames.append(time.monotonic())

        async def send() -> None:
            seq = 0
            while True:
                if input_channel.readyState == "open":
                    seq += 1
                    input_channel.send(_input(seq, time.monotonic() - log.start_t))
                    log.sent[seq] = time.monotonic()
                await asyncio.sleep(1 / INPUT_HZ)

        tasks = [asyncio.ensure_future(receive()), asyncio.ensure_future(send())]
        try:
            await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
            log.end_t = time.monotonic()
            for task in tasks:
                if task.done() and task.exception() is not None:
                    raise task.exception()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await pc.close()


async def _run_websocket(url: str, seconds: float, log: ClientLog) -> None:
    import aiohttp

    from app.server import WS_HEADER

    async with aiohttp.ClientSession() as http:
        log.start_t = time.monotonic()
        async with http.ws_connect(f"{url}/ws") as ws:
            await ws.send_str(json.dumps({"type": "hello", "start": "scene:1"}))

            async def receive() -> None:
                async for msg in ws:
                    now = time.monotonic()
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        fields = WS_HEADER.unpack(msg.data[: WS_HEADER.size])
                        log.frames.append(now)
                        log.carried.append((now, fields[4]))
                        await ws.send_str(json.dumps({"type": "ack", "frame_id": fields[3]}))
                    elif msg.type == aiohttp.WSMsgType.TEXT:
                        _on_telemetry(log, json.loads(msg.data), now, record_frame=False)

            async def send() -> None:
                seq = 0
                while True:
                    seq += 1
                    await ws.send_str(_input(seq, time.monotonic() - log.start_t))
                    log.sent[seq] = time.monotonic()
                    await asyncio.sleep(1 / INPUT_HZ)

            tasks = [asyncio.ensure_future(receive()), asyncio.ensure_future(send())]
            try:
                await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
                log.end_t = time.monotonic()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)


def motion_to_photon_ms(log: ClientLog) -> list[float]:
    """For each input seq S: first frame arrival with a carried seq >= S, minus S's send time."""
    out = []
    carried = sorted(log.carried)
    best_seq_so_far = []
    running = -1
    for arrival, seq in carried:
        running = max(running, seq)
        best_seq_so_far.append((arrival, running))
    j = 0
    for seq in sorted(log.sent):
        while j < len(best_seq_so_far) and best_seq_so_far[j][1] < seq:
            j += 1
        if j == len(best_seq_so_far):
            break
        out.append((best_seq_so_far[j][0] - log.sent[seq]) * 1e3)
    return out


def steady_fps(arrivals: list[float], chunk_frames: int) -> float | None:
    """Frames per second over whole chunks: from the first frame of chunk 1 to the first frame of the
    last chunk that started (chunk 0 has chunk_frames + 1 frames, the others chunk_frames).

    Measured between chunk starts, the window holds whole chunks whether frames come paced or in
    per-chunk bursts. (Counting the frames after chunk 0 over the time since the very first frame
    undercounts by chunk 0's frames: 16 fps read as 15.7 over a 30 s walk.) None before two chunk starts.
    """
    first = chunk_frames + 1
    whole_chunks = (len(arrivals) - 1 - first) // chunk_frames
    if whole_chunks < 1:
        return None
    last = first + whole_chunks * chunk_frames
    span = arrivals[last] - arrivals[first]
    return whole_chunks * chunk_frames / span if span > 0 else None


def summarize(logs: list[ClientLog], seconds: float, chunk_frames: int, fps: float) -> dict[str, float]:
    """Medians over sessions (latency percentiles over all inputs of all sessions)."""
    steady, ttff, chunk_ms, drops = [], [], [], []
    starved = 0
    latencies: list[float] = []
    for log in logs:
        if not log.frames:
            continue
        ttff.append((log.frames[0] - log.start_t) * 1e3)
        rate = steady_fps(log.frames, chunk_frames)
        if rate is not None:
            steady.append(rate)
        else:
            starved += 1
        chunk_ms.extend(v for k, v in log.chunk_ms.items() if k > 0)
        drops.append(log.drops / (seconds / 60.0))
        latencies.extend(motion_to_photon_ms(log))
    pct = lambda q: float(np.percentile(latencies, q)) if latencies else float("nan")  # noqa: E731
    med = lambda xs: float(statistics.median(xs)) if xs else float("nan")  # noqa: E731
    return {
        "fps": med(steady),
        # The slowest session's steady fps (0 when a session never got two chunks).
        "min_fps": 0.0 if starved or len(steady) < len(logs) else float(min(steady)),
        "total_fps": float(sum(steady)),
        "chunk_ms": med(chunk_ms),
        "ttff_ms": med(ttff),
        "m2p_p50_ms": pct(50),
        "m2p_p95_ms": pct(95),
        "drops_per_min": med(drops),
        "sessions_ok": sum(1 for log in logs if log.frames),
    }


MODES = ("per-session", "batched")


def mode_stream(stream, mode: str, batch_sessions: int | None = None):
    """The StreamConfig of a worker policy (see the module docstring)."""
    import dataclasses

    if mode == "per-session":
        return dataclasses.replace(stream, batch_sessions=1, buffer_chunks=1.5)
    if mode == "batched":
        return dataclasses.replace(stream, batch_sessions=batch_sessions or type(stream)().batch_sessions, buffer_chunks=type(stream)().buffer_chunks)
    raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")


async def _measure_sessions(runtime, n: int, args: argparse.Namespace) -> dict[str, float]:
    from aiohttp.test_utils import TestServer

    from app.config import AppConfig, ServerConfig
    from app.server import WORKER, create_app

    config = AppConfig(server=ServerConfig(port=0, max_sessions=max(n, 1), admit_by_capacity=False), stream=runtime.stream,
                       model_path=args.model, device=args.device)
    app = create_app(config, runtime)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    logs = [ClientLog() for _ in range(n)]
    run = _run_webrtc if args.transport == "webrtc" else _run_websocket
    stream = runtime.stream
    period_s = runtime.temporal_stride * stream.chunk_latents / stream.fps
    try:
        results = await asyncio.gather(*(run(url, args.seconds, log) for log in logs), return_exceptions=True)
        worker = app[WORKER]
        capacity = worker.capacity(period_s, limit=64)
        batch_ms = worker.cost.estimate_ms(min(n, worker.max_batch))
    finally:
        await server.close()
    for log, result in zip(logs, results):
        if isinstance(result, BaseException):
            log.error = repr(result)
            print(f"  a session failed: {log.error}")
    chunk_frames = runtime.temporal_stride * runtime.stream.chunk_latents
    summary = summarize(logs, args.seconds, chunk_frames, runtime.stream.fps)
    summary["capacity"] = float("nan") if capacity is None else float(capacity)
    summary["batch_ms"] = float("nan") if batch_ms is None else batch_ms
    return summary


def _time_generator(runtime, threads: int, chunks: int = 4) -> tuple[float, tuple[float, float, float]]:
    """Median ms per chunk of one generator on its own with `threads` torch threads, and the median
    (denoise, commit, decode) ms."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        view = runtime.scenes.view(runtime.scenes.ids()[0])
        gen = runtime.make_generator()
        gen.start(view.image, view.world_T_cam)
        times, phases = [], []
        for _ in range(chunks + 1):
            n = gen.frames_for_next_chunk()
            start = time.perf_counter()
            gen.step(np.repeat(view.world_T_cam[None], n, 0))
            times.append((time.perf_counter() - start) * 1e3)
            t = gen.last_timings
            phases.append((t.denoise_ms, t.commit_ms, t.decode_ms))
        split = tuple(float(statistics.median(p[i] for p in phases[1:])) for i in range(3))
        return float(statistics.median(times[1:])), split
    finally:
        torch.set_num_threads(previous)


def _standing_drift(runtime, chunks: int) -> dict[int, float]:
    """Mean |frame − start image| (0–255) of each chunk's last frame with the camera standing still:
    how far the picture wanders when nobody moves (the reason idle sessions pause)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        view = runtime.scenes.view(runtime.scenes.ids()[0])
        gen = runtime.make_generator()
        gen.start(view.image, view.world_T_cam)
        start = view.image.astype(np.float32)
        out = {}
        for k in range(1, chunks + 1):
            frames = gen.step(np.repeat(view.world_T_cam[None], gen.frames_for_next_chunk(), 0))
            out[k] = float(np.abs(frames[-1].astype(np.float32) - start).mean())
        return out
    finally:
        torch.set_num_threads(previous)


def _time_batching(runtime, batch: int, repeats: int = 5) -> tuple[float, float]:
    """(median ms of one `step_batched` chunk of `batch` walks, median ms of the same walks' chunks one
    `step` at a time), whole chunks (denoise, commit, decode) at one torch thread, the two timed in
    turn so both see the same load; the walks are past their KV windows (one batch group)."""
    import torch

    from streaming.batched import step_batched

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        view = runtime.scenes.view(runtime.scenes.ids()[0])
        window = runtime.stream.generator_config().kv_window_chunks

        def poses(gen):
            return np.repeat(view.world_T_cam[None], gen.frames_for_next_chunk(), 0)

        def walks():
            gens = []
            for _ in range(batch):
                gen = runtime.make_generator()
                gen.start(view.image, view.world_T_cam)
                for _ in range(window + 2):
                    gen.step(poses(gen))
                gens.append(gen)
            return gens

        alone, together = walks(), walks()
        t_alone, t_together = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            for gen in alone:
                gen.step(poses(gen))
            t_alone.append(time.perf_counter() - start)
            start = time.perf_counter()
            step_batched(together, [poses(gen) for gen in together])
            t_together.append(time.perf_counter() - start)
        return statistics.median(t_together) * 1e3, statistics.median(t_alone) * 1e3
    finally:
        torch.set_num_threads(previous)


def main(args: argparse.Namespace) -> int:
    import logging

    import dataclasses

    from app.config import GENERATOR_PROCESS_SETTINGS, AppConfig, ServerConfig, StreamConfig
    from app.runtime import build_runtime
    from common.bench import counts_flag, machine_description, markdown_table, write_docs_section

    logging.basicConfig(level=logging.WARNING)
    try:
        counts = counts_flag(args.sessions, "--sessions")
        # The windows to stream with, in order; None: the model's own.
        asked_windows = None if args.kv_window is None else counts_flag(args.kv_window, "--kv-window")
    except ValueError as error:
        raise SystemExit(str(error)) from None
    defaults = StreamConfig()
    stream = StreamConfig(width=args.width or defaults.width, height=args.height or defaults.height, torch_threads=args.threads, idle_chunks=0)
    from_model = args.model is not None and args.width is None and args.height is None
    config = AppConfig(server=ServerConfig(), stream=stream, model_path=args.model, device=args.device, stream_from_model=from_model)
    runtime = build_runtime(config)
    stream = runtime.stream  # with the model's sampler filled in
    import os

    machine = machine_description()
    load_start = os.getloadavg()[0]
    print(f"bench stream: {runtime.model_name}, {stream.width}x{stream.height} at {stream.fps:g} fps, {args.transport}, "
          f"{args.seconds:g} s per run, worker threads {stream.worker_threads()}; {machine}")

    gen_ms = {threads: _time_generator(runtime, threads) for threads in (int(x) for x in args.thread_counts.split(","))}
    for threads, (ms, (denoise, commit, decode)) in gen_ms.items():
        print(f"  generator alone, {threads} torch thread(s): {ms:.0f} ms per chunk (denoise {denoise:.0f}, commit {commit:.0f}, decode {decode:.0f}; median of 4)")
    batch = max(counts)
    batched_ms, singles_ms = _time_batching(runtime, batch) if batch > 1 else (float("nan"), float("nan"))
    drift = _standing_drift(runtime, args.drift_chunks)
    marks = sorted({1, *(k for k in (2, 4, 8, 12, 16, 24) if k <= args.drift_chunks), args.drift_chunks})
    drift_text = ", ".join(f"chunk {k}: {drift[k]:.1f}" for k in marks)
    print(f"  standing camera, mean |last frame − start image| (0–255): {drift_text}")
    if batch > 1:
        print(f"  one batched chunk of {batch} walks: {batched_ms:.0f} ms; their {batch} chunks one at a time: {singles_ms:.0f} ms")
    places = [p.strip() for p in args.generator_process.split(",") if p.strip()]
    if not places or any(p not in GENERATOR_PROCESS_SETTINGS for p in places):
        raise SystemExit(f"--generator-process must list {', '.join(GENERATOR_PROCESS_SETTINGS)}, got {args.generator_process!r}")
    windows = asked_windows or [runtime.stream.kv_window_chunks]
    base_stream = runtime.stream
    streams = {}
    for mode in (m.strip() for m in args.modes.split(",") if m.strip()):
        for place in places:
            for window in windows:
                label = ", ".join([mode] + ([f"generator process {place}"] if len(places) > 1 else [])
                                  + ([f"KV window {window}"] if len(windows) > 1 else []))
                streams[label] = dataclasses.replace(mode_stream(base_stream, mode, args.batch_sessions), generator_process=place,
                                                     kv_window_chunks=window)
    modes = list(streams)
    placement = "; ".join(f"{label}: {'a generator process' if AppConfig(stream=s, model_path=args.model, device=args.device).uses_generator_process() else 'the server process'}"
                          for label, s in streams.items())
    print(f"  walks computed in {placement}")
    rows = []
    held: dict[str, int] = {mode: 0 for mode in modes}
    for n in counts:
        # Modes interleaved per count: both see the machine's load of the same minutes.
        for mode in modes:
            runtime.stream = streams[mode]
            result = asyncio.run(_measure_sessions(runtime, n, args))
            if result["min_fps"] >= args.hold_fps and result["sessions_ok"] == n:
                held[mode] = max(held[mode], n)
            rows.append([mode, n, result["sessions_ok"], f"{result['fps']:.1f}", f"{result['min_fps']:.1f}", f"{result['total_fps']:.1f}",
                         f"{result['chunk_ms']:.0f}", f"{result['ttff_ms']:.0f}", f"{result['m2p_p50_ms']:.0f}", f"{result['m2p_p95_ms']:.0f}",
                         f"{result['drops_per_min']:.1f}", f"{result['capacity']:.0f}", f"{os.getloadavg()[0]:.1f}"])
            print(f"  {mode}, {n} session(s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.items()) + f", load {os.getloadavg()[0]:.1f}", flush=True)
    runtime.stream = base_stream
    held_text = "; ".join(f"{mode}: {held[mode]} of the counts tried ({args.sessions})" for mode in modes)
    print(f"  most sessions each holding >= {args.hold_fps:g} fps steady: {held_text}")
    load_end = os.getloadavg()[0]
    load_text = f"1-minute load average {load_start:.1f} at the start and {load_end:.1f} at the end (other work shared the machine)"
    print(f"  {load_text}")
    header = ["worker", "sessions", "streaming", "steady fps per session (median)", "slowest session fps", "fps all sessions", "chunk ms",
              "first frame ms", "motion-to-photon p50 ms", "p95 ms", "drops/min", "measured capacity", "load after"]
    table = markdown_table(header, rows)
    print(table)
    if args.write_docs:
        body = (
            f"`python run.py bench stream` — {runtime.model_name}, {stream.width}x{stream.height} at {stream.fps:g} fps, "
            f"{stream.chunk_latents}-latent chunks, {len(stream.sigmas) - 1} denoising step(s), "
            f"KV window {' or '.join(map(str, windows))}{' + sink' if stream.sink else ''}, transport {args.transport}, "
            f"{args.seconds:g} s walks with in-process clients, worker torch threads {stream.worker_threads()}, walks computed in {placement}. "
            f"Machine: {machine}; {load_text}. Per-session figures are medians over sessions; latency percentiles pool all inputs.\n\n"
            f"{table}\n\n"
            f"Most sessions of which every one held >= {args.hold_fps:g} fps steady: {held_text}.\n\n"
            "Generator alone (median of 4 chunks after the first): "
            + "; ".join(f"{t} torch thread(s) {ms:.0f} ms per chunk (denoise {d:.0f}, commit {c:.0f}, decode {v:.0f})" for t, (ms, (d, c, v)) in gen_ms.items())
            + ".\n"
            + f"Standing camera, mean |last frame of the chunk − start image| on 0–255: {drift_text}.\n"
            + (f"Batching, whole chunks at one torch thread (denoise, commit, decode), timed in turn: one batched chunk of {batch} walks "
               f"took {batched_ms:.0f} ms against {singles_ms:.0f} ms for their {batch} chunks one at a time (median of 5).\n" if batch > 1 else "")
        )
        write_docs_section("stream", body)
        print("wrote the stream section of docs/benchmarks.md")
    return 0
