"""Serve the live exploration app: pick a start scene or upload a photo, then walk with WASD and the
mouse while the world model generates the video chunk by chunk, streamed over WebRTC (or a
websocket when WebRTC cannot connect).

With no --model it serves the embedded tiny model (seeded random weights, with a warning, until the
trained ones are installed at model/weights/roam_tiny.safetensors). Binds 127.0.0.1 by default;
any other --host requires --token, which every connection must then carry. Requests are served only
for loopback Host names, the bound address and the names given with --allow-host (a DNS-rebinding
page names its own host); see docs/protocol.md, "Who may connect".

Examples:
  python run.py                                   # http://127.0.0.1:8080/
  python run.py serve --port 9000 --width 256 --height 176
  python run.py serve --sigmas 1,0.75,0.5,0.25,0          # another sampler than the model's own
  python run.py serve --host 0.0.0.0 --token "$(openssl rand -hex 16)"
  python run.py serve --host 0.0.0.0 --token "$TOKEN" --allow-host roam.example.org   # behind that name
  python run.py serve --model /path/to/SANA-WM_streaming --text-encoder /path/to/gemma-2-2b-it --device cuda
  python run.py serve --model /path/to/SANA-WM_streaming --text-encoder /path/to/gemma-2-2b-it --device cuda \
      --prompt "a sunlit street in an old town" --no-refiner

The streaming release runs as its authors run it (model.profile.OFFICIAL_STREAMING, printed at start-up,
docs/release.md): every chunk is conditioned on a prompt through Gemma-2, which the release does not
ship (--text-encoder), the page shows a prompt field with each scene's default (--prompt replaces the
defaults), and its refiner runs between stage 1 and the decoder unless --no-refiner.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from app.config import GENERATOR_PROCESS_SETTINGS, ServerConfig, StreamConfig

    server, stream = ServerConfig(), StreamConfig()
    parser.add_argument("--host", default=server.host, help="bind address (default %(default)s; others need --token)")
    parser.add_argument("--port", type=int, default=server.port, help="port (default %(default)s; 0 = any free port)")
    parser.add_argument("--token", default=None, help="shared secret every connection must carry (required off loopback)")
    parser.add_argument("--model", type=Path, default=None, help="a SANA-WM release folder (default: the embedded tiny model)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default %(default)s)")
    parser.add_argument("--max-sessions", type=int, default=server.max_sessions,
                        help="most concurrent walks (default %(default)s); fewer are admitted when the measured chunk times say they would not keep their frame rate")
    parser.add_argument("--no-capacity-admission", action="store_true", help="admit up to --max-sessions whatever the measured capacity")
    parser.add_argument("--batch-sessions", type=int, default=stream.batch_sessions,
                        help="most walks denoised in one batched chunk; 1 = one walk per chunk (default %(default)s)")
    parser.add_argument("--buffer-chunks", type=float, default=stream.buffer_chunks, help="frames queued per walk, in chunks (default %(default)s)")
    parser.add_argument("--width", type=int, default=None, help=f"video width in px (default {stream.width}, or the release's with --model)")
    parser.add_argument("--height", type=int, default=None, help=f"video height in px (default {stream.height}, or the release's with --model)")
    parser.add_argument("--fps", type=float, default=None, help=f"video frame rate (default {stream.fps:g}, or the release's with --model)")
    parser.add_argument("--chunk-latents", type=int, default=None, help=f"latents per chunk (default {stream.chunk_latents}, or the release's with --model)")
    parser.add_argument("--kv-window", type=int, default=None,
                        help="recent chunks in the softmax KV window besides the sink (default: the model's profile; "
                             "2 for the embedded model, 1 for SANA-WM_streaming)")
    parser.add_argument("--text-encoder", type=Path, default=None, metavar="PATH",
                        help="the stage-1 Gemma-2 text encoder folder (e.g. gemma-2-2b-it); SANA-WM_streaming needs it")
    parser.add_argument("--prompt", default=None,
                        help="the default prompt of every walk (default: each start scene's own); needs a text encoder")
    parser.add_argument("--no-refiner", action="store_true", help="decode stage-1 latents directly (the release's refiner is on by default)")
    parser.add_argument("--idle-chunks", type=int, default=stream.idle_chunks, help="standing-camera chunks before a walk pauses; 0 = never (default %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the generation worker (default: cores - 1)")
    parser.add_argument("--generator-process", choices=GENERATOR_PROCESS_SETTINGS, default="auto",
                        help="compute the walks in a child process with its own GIL: auto = for the embedded model on a CPU "
                             "with a core per model thread (default %(default)s)")
    parser.add_argument("--seed", type=int, default=stream.seed, help="noise seed of every walk (default %(default)s)")
    parser.add_argument("--sigmas", default=None,
                        help="comma-separated sampler σ list, e.g. 1,0.75,0.5,0.25,0 (default: the one the model was trained for)")
    parser.add_argument("--record-dir", type=Path, default=Path("recordings"), help="where walks are recorded when the user turns Record on (default %(default)s)")
    parser.add_argument("--campaign", type=Path, default=None, metavar="FILE",
                        help="run a data-collection campaign (a TOML file, docs/collection.md): consent, tasks; records into its record_dir")
    parser.add_argument("--rewind-chunks", type=int, default=server.rewind_chunks, help="chunk snapshots kept per walk for Rewind (default %(default)s)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="also serve requests for this public host name (repeatable; loopback names and the bound address are always served)")
    parser.add_argument("--connect-timeout", type=float, default=server.connect_timeout_s,
                        help="seconds a WebRTC peer has to connect after its answer before its slot is freed (default %(default)s)")
    cluster = parser.add_argument_group("past one machine (Ray Serve; pip install -r requirements-cluster.txt; docs/serving.md)")
    cluster.add_argument("--ray", default=None, metavar="ADDRESS",
                         help="serve from generation replicas on Ray: 'local' starts Ray on this machine, 'auto' joins the cluster "
                              "`ray start` runs here, or a Ray address; this process becomes the ingress on --host/--port")
    cluster.add_argument("--replicas", type=int, default=None, help="generation replicas, each with --max-sessions walks (default 2; needs --ray)")
    cluster.add_argument("--replica-gpus", type=float, default=None, help="GPUs per replica (default 1 with --device cuda, else 0; needs --ray)")
    cluster.add_argument("--replica-cpus", type=float, default=None, help="CPUs per replica (default 1; needs --ray)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log level (default %(default)s; aioice and aiortc log at WARNING and above unless DEBUG)")


def config_from_args(args: argparse.Namespace):
    """The AppConfig the arguments describe (ValueError names any bad value)."""
    from app.config import AppConfig, ServerConfig, StreamConfig
    from model.release import sigmas_flag

    record_dir = args.record_dir
    if args.campaign is not None:
        from collect.campaign import load_campaign

        # Validated here so a bad file is one line before anything loads; its record_dir wins.
        record_dir = load_campaign(args.campaign).record_dir
    server = ServerConfig(host=args.host, port=args.port, token=args.token, max_sessions=args.max_sessions, admit_by_capacity=not args.no_capacity_admission,
                          record_dir=record_dir, rewind_chunks=args.rewind_chunks, campaign=args.campaign,
                          allowed_hosts=tuple(name.lower().rstrip(".") for name in args.allow_host), connect_timeout_s=args.connect_timeout)
    explicit = {name: getattr(args, key) for name, key in (("width", "width"), ("height", "height"), ("fps", "fps"), ("chunk_latents", "chunk_latents")) if getattr(args, key) is not None}
    sigmas = None if args.sigmas is None else sigmas_flag(args.sigmas)
    stream = StreamConfig(kv_window_chunks=args.kv_window, idle_chunks=args.idle_chunks, torch_threads=args.threads, seed=args.seed,
                          batch_sessions=args.batch_sessions, buffer_chunks=args.buffer_chunks, generator_process=args.generator_process,
                          sigmas=sigmas, prompt=args.prompt, refiner=not args.no_refiner, **explicit)
    # A release brings its own size and chunking unless the command line sets them.
    from_model = args.model is not None and not explicit
    if args.model is None and (args.text_encoder is not None or args.prompt is not None):
        raise ValueError("--text-encoder and --prompt need a --model with a text encoder: the embedded model takes no prompt")
    return AppConfig(server=server, stream=stream, model_path=args.model, device=args.device, stream_from_model=from_model,
                     text_encoder=args.text_encoder)


# Loggers that narrate every ICE candidate pair and DTLS step at INFO (most of a session's log lines).
CHATTY_LOGGERS = ("aioice", "aiortc")


def configure_logging(level: str) -> None:
    """Log at `level`; aioice and aiortc only from WARNING unless `level` is DEBUG."""
    import logging

    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "DEBUG":
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def main(args: argparse.Namespace) -> int:
    import asyncio

    if args.ray is not None:
        # The cluster room sits above app/ and app/ never imports it: run.py dispatches --ray.
        raise SystemExit("run.py serve: --ray is started by run.py (python run.py serve --ray ...), not through app.cli")
    cluster_flags = [flag for flag, value in (("--replicas", args.replicas), ("--replica-gpus", args.replica_gpus), ("--replica-cpus", args.replica_cpus)) if value is not None]
    if cluster_flags:
        raise SystemExit(f"run.py serve: {', '.join(cluster_flags)} needs --ray")
    configure_logging(args.log_level)
    from app.generate_cmd import check_device

    try:
        config = config_from_args(args)
        check_device(config.device)
        if config.model_path is not None:
            from model.release import preflight

            # What the release needs besides its weights, said before the port is bound and anything loads.
            preflight(config.model_path, text_encoder_folder=config.text_encoder)
    except ValueError as error:
        raise SystemExit(f"run.py serve: {error}") from None
    try:
        asyncio.run(serve(config))
    except KeyboardInterrupt:
        pass
    except ValueError as error:
        # Only start-up raises out of serve (port taken, no weights in --model, ...).
        raise SystemExit(f"run.py serve: {error}") from None
    return 0


def listen_socket(host: str, port: int):
    """A listening TCP socket on host:port; ValueError naming the address if it cannot be had."""
    import os
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise ValueError(f"cannot listen on {host}:{port}: {reason}") from None


async def serve(config, ready=None, app=None, label: str | None = None) -> None:
    """Run the app until SIGINT/SIGTERM (or cancellation); prints the URL once it is listening.

    `ready`, if given, is an asyncio.Future set to the URL once bound. `app`, if given, is served
    instead of `create_app(config)` (another front on the same bind address and signals, e.g. the
    cluster's ingress), and `label` names what it serves in the printed line. Raises ValueError,
    naming the problem, when it cannot start (the port is taken, --model holds no weights).
    """
    import asyncio
    import signal

    from aiohttp import web

    from app.server import RUNTIME, create_app

    # Bind before the model loads, so a port in use fails at once and not after minutes of loading.
    sock = listen_socket(config.server.host, config.server.port)
    try:
        if app is None:
            app = create_app(config)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        # The runtime (the model) is built here, by the app's startup hook.
        await runner.setup()
    except BaseException:
        sock.close()
        raise
    site = web.SockSite(runner, sock)
    await site.start()
    port = sock.getsockname()[1]
    host = config.server.host if ":" not in config.server.host else f"[{config.server.host}]"
    url = f"http://{host}:{port}/"
    print(f"roam is serving {label or app[RUNTIME].model_name} at {url}", flush=True)
    if ready is not None:
        ready.set_result(url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        await stop.wait()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        print("roam: shutting down", flush=True)
        await runner.cleanup()
