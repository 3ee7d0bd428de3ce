"""Gradio UI for offline generation: a start image and a camera trajectory in, an mp4 out.

    python run.py ui                                   # http://127.0.0.1:7860/, embedded tiny model
    python run.py ui --model SANA-WM_bidirectional --device cuda --dtype bf16

The trajectory is a preset, an action string (e.g. "w-16,jl-8"), an uploaded trajectory file
(RealEstate10K .txt, SANA-WM-Bench .npz, nerfstudio transforms.json, roam .json), or a recorded
episode from --record-dir (the gallery lists them; picking one and pressing Re-render replays the
walk with the chosen mode, from the episode's start.png unless another image is given). Mode,
steps and seed as in `run.py generate`, which does the same work (`streaming.offline.generate_video`).
Progress is shown per denoising step (per chunk in distilled mode). Bad input (not an image, a
trajectory longer than the model can take, a corrupt episode) is reported in the page; videos are
written to a temporary name and renamed when complete, so nothing half-written is ever served.
"""
from __future__ import annotations

import argparse
import logging
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger("roam.ui")

SOURCES = ("preset", "action string", "upload", "episode")
MODES = ("bidirectional", "chunk_causal", "distilled")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from app.generate_cmd import DTYPES

    parser.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="port (default %(default)s; 0 = any free port)")
    parser.add_argument("--model", type=Path, default=None, help="SANA-WM release folder (default: the embedded tiny model)")
    parser.add_argument("--vae", type=Path, default=None, help="LTX-2 VAE folder (for a DiT-only release)")
    parser.add_argument("--text-encoder", type=Path, default=None, help="Gemma-2 folder (default: found in the release)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--seed", type=int, default=0, help="seed of the embedded model's random weights when untrained")
    parser.add_argument("--record-dir", type=Path, default=Path("recordings"), help="recorded episodes to list (default %(default)s)")
    parser.add_argument("--out-dir", type=Path, default=Path("out/ui"), help="where generated videos are written (default %(default)s)")


def list_episodes(record_dir: Path) -> list[str]:
    """Episode folder names under `record_dir` (newest first); unreadable ones are skipped with a log line."""
    from streaming.episode import Episode

    if not record_dir.is_dir():
        return []
    names = []
    for folder in sorted(record_dir.iterdir(), reverse=True):
        if not (folder / "meta.json").is_file():
            continue
        try:
            Episode.open(folder)
        except ValueError as error:
            log.warning("skipping episode %s: %s", folder, error)
            continue
        names.append(folder.name)
    return names


def _episode_folder(record_dir: Path, name: str | None) -> Path:
    if not name:
        raise ValueError("pick a recorded episode first")
    folder = record_dir / name
    # Only folders directly under the record dir: a name cannot walk elsewhere.
    if folder.parent.resolve() != record_dir.resolve() or not folder.is_dir():
        raise ValueError(f"no recorded episode named {name!r} in {record_dir}")
    return folder


def render(
    release: Any,
    out_dir: Path,
    record_dir: Path,
    *,
    image: Any,
    source: str,
    preset: str | None = None,
    action: str | None = None,
    upload: str | None = None,
    episode: str | None = None,
    mode: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    seconds: float | None = None,
    progress=None,
) -> tuple[str, str]:
    """Generate one video; returns (mp4 path, one-line summary). ValueError for bad input (before any output)."""
    from common.video import write_mp4
    from streaming.episode import Episode
    from streaming.offline import generate_video, load_image

    if source not in SOURCES:
        raise ValueError(f"trajectory source must be one of {SOURCES}, got {source!r}")
    if source == "preset":
        if not preset:
            raise ValueError("pick a preset")
        trajectory: Any = preset
    elif source == "action string":
        if not action or not action.strip():
            raise ValueError("type an action string, e.g. w-16,jl-8")
        trajectory = action.strip()
    elif source == "upload":
        if not upload:
            raise ValueError("upload a trajectory file (.txt, .npz, .json)")
        trajectory = str(upload)
    else:
        ep = Episode.open(_episode_folder(record_dir, episode))
        trajectory = ep.trajectory()
        if image is None:
            image = ep.start_image()
    if image is None:
        raise ValueError("give a start image")
    start = load_image(image)
    video = generate_video(release, start, trajectory, mode=mode, seconds=seconds, steps=steps, seed=int(seed), progress=progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{video.mode}-{uuid.uuid4().hex[:10]}.mp4"
    write_mp4(path, video.frames, video.fps)
    frames, height, width = video.frames.shape[:3]
    return str(path), f"{frames} frames, {width}x{height} at {video.fps:g} fps, {video.mode}, seed {seed}"


def build_ui(release: Any, record_dir: Path, out_dir: Path):
    """The Gradio Blocks app. API endpoints: /generate and /episodes (for gradio_client)."""
    import gradio as gr

    from controls.trajectory import PRESETS

    def generate(image, source, preset, action, upload, episode, mode, steps, seed, seconds, progress=gr.Progress()):
        def report(done: int, total: int) -> None:
            progress((done, total), desc="denoising", unit="steps")

        try:
            steps_arg = int(steps) if steps else None
            seconds_arg = float(seconds) if seconds else None
            upload_path = upload if isinstance(upload, (str, type(None))) else getattr(upload, "name", None)
            return render(release, out_dir, record_dir, image=image, source=source, preset=preset, action=action, upload=upload_path,
                          episode=episode, mode=mode, steps=steps_arg, seed=int(seed or 0), seconds=seconds_arg, progress=report)
        except ValueError as error:
            # The user's mistake, shown in the page: one log line, no traceback.
            log.info("refused: %s", error)
            raise gr.Error(str(error), print_exception=False) from None

    def episodes():
        names = list_episodes(record_dir)
        thumbs = [(str(record_dir / n / "start.png"), n) for n in names]
        return gr.update(choices=names, value=names[0] if names else None), thumbs

    with gr.Blocks(title="roam: offline generation") as demo:
        gr.Markdown(f"### roam: offline generation\nModel: {release.describe() if hasattr(release, 'describe') else release}")
        with gr.Row():
            with gr.Column():
                # A file, not gr.Image: a non-image then reaches our loader, which says what is wrong.
                image = gr.File(label="start image", file_types=["image"], type="filepath")
                source = gr.Radio(list(SOURCES), value="preset", label="trajectory")
                preset = gr.Dropdown(sorted(PRESETS), value="walk_forward", label="preset")
                action = gr.Textbox(label="action string", placeholder="w-16,jl-8")
                upload = gr.File(label="trajectory file (.txt, .npz, .json)", type="filepath")
                episode = gr.Dropdown([], label="recorded episode", allow_custom_value=True)
                mode = gr.Radio(list(MODES), value=release.default_mode, label="mode")
                with gr.Row():
                    steps = gr.Number(0, precision=0, label="steps (0 = the mode's default)")
                    seed = gr.Number(0, precision=0, label="seed")
                    seconds = gr.Number(0, label="seconds (0 = the trajectory's length)")
                run = gr.Button("Generate", variant="primary")
            with gr.Column():
                video = gr.Video(label="video")
                summary = gr.Textbox(label="result", interactive=False)
                gallery = gr.Gallery(label="recorded episodes (pick one, then Re-render)", columns=4, height=240)
                with gr.Row():
                    refresh = gr.Button("Refresh episodes")
                    rerender = gr.Button("Re-render episode")
        inputs = [image, source, preset, action, upload, episode, mode, steps, seed, seconds]
        run.click(generate, inputs, [video, summary], api_name="generate")
        refresh.click(episodes, None, [episode, gallery], api_name="episodes")
        demo.load(episodes, None, [episode, gallery])

        def pick(evt):
            return evt.value["caption"] if isinstance(evt.value, dict) else evt.value

        # Gradio injects the selection by the parameter's type; postponed annotations hide it.
        pick.__annotations__["evt"] = gr.SelectData

        gallery.select(pick, None, episode)
        rerender.click(lambda: "episode", None, source).then(generate, inputs, [video, summary])
    return demo


def main(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from app.generate_cmd import load_components
    from app.serve_cmd import listen_socket

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not 0 <= args.port <= 65535:
        raise SystemExit(f"run.py ui: --port must be in [0, 65535], got {args.port}")
    try:
        if args.port:
            # A taken port fails now, not after the model has loaded (Gradio binds it again below).
            listen_socket(args.host, args.port).close()
        release = load_components(argparse.Namespace(**vars(args), compile=False))
    except ValueError as error:
        raise SystemExit(f"run.py ui: {error}") from None
    demo = build_ui(release, args.record_dir, args.out_dir)
    try:
        demo.queue().launch(server_name=args.host, server_port=args.port or None, show_error=True, allowed_paths=[str(args.record_dir), str(args.out_dir)])
    except OSError as error:
        # Gradio's message names the port range it tried (taken port, address not on this machine).
        raise SystemExit(f"run.py ui: cannot listen on {args.host}:{args.port}: {error}") from None
    return 0
