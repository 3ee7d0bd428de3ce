"""Offline video from a start image and a camera trajectory.

    python run.py generate --image photo.jpg --trajectory w-16,jl-8 --out walk.mp4
    python run.py generate --model SANA-WM_bidirectional --device cuda --dtype bf16 --image photo.jpg \\
        --trajectory orbit --mode bidirectional --seconds 5 --out orbit.mp4

--trajectory is a preset name, an action string (e.g. "w-16,jl-8"), a trajectory file, or a recorded
episode folder (its frames.jsonl), so a live walk can be re-rendered with another mode. A file that
does not store its frame size (RealEstate10K) is read at the start image's size, or --trajectory-size. Without
--model the embedded tiny model runs at the procedural world's default camera (sim.DEFAULT_*). With
--model the release folder decides the kind (bidirectional, chunk-causal teacher, distilled
streaming) and the default --mode. The video is written to a temporary file beside --out and renamed
when complete, so a failed run leaves no partial output.
"""
from __future__ import annotations

import argparse
from pathlib import Path

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", required=True, help="start image (any format PIL reads)")
    parser.add_argument("--trajectory", required=True, help="preset, action string, trajectory file or episode folder")
    parser.add_argument("--out", type=Path, required=True, help="output video (.mp4)")
    parser.add_argument("--mode", choices=("bidirectional", "chunk_causal", "distilled"), default=None,
                        help="sampler (default: the release's own: bidirectional, chunk_causal, or distilled for streaming "
                             "and the embedded model)")
    parser.add_argument("--seconds", type=float, default=None, help="clip length (default: the trajectory's)")
    parser.add_argument("--trajectory-size", default=None, metavar="WxH",
                        help="frame size the trajectory file's intrinsics describe, for files that do not store it "
                             "(RealEstate10K .txt, a bare benchmark .npz; default: the start image's size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (bidirectional / chunk_causal; default 60)")
    parser.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default 5.0)")
    parser.add_argument("--prompt", default="", help="text prompt (needs a release with a Gemma-2 text encoder)")
    parser.add_argument("--negative-prompt", default="", help="negative prompt for guidance")
    parser.add_argument("--model", type=Path, default=None, help="SANA-WM release folder (default: the embedded tiny model)")
    parser.add_argument("--vae", type=Path, default=None, help="LTX-2 VAE folder (for a DiT-only release)")
    parser.add_argument("--text-encoder", type=Path, default=None, help="Gemma-2 folder (default: found in the release)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the DiT's blocks")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def size_flag(text: str | None) -> tuple[int, int] | None:
    """'WxH' -> (W, H); ValueError naming the flag otherwise (None stays None)."""
    if text is None:
        return None
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--trajectory-size must be WxH in pixels, e.g. 1280x704, got {text!r}")
    return int(parts[0]), int(parts[1])


def check_device(device: str) -> None:
    """ValueError naming the problem unless `device` is cpu or a CUDA device this machine has."""
    import re

    import torch

    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if device != "cpu" and match is None:
        raise ValueError(f"--device must be cpu or cuda[:N], got {device!r}")
    if match is None:
        return
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")


def load_components(args: argparse.Namespace):
    """The `Release` named by --model (or the embedded tiny model), on --device in --dtype."""
    import torch

    dtype = getattr(torch, DTYPES[args.dtype])
    check_device(args.device)
    if args.model is None:
        if args.vae is not None or args.text_encoder is not None:
            raise ValueError("--vae and --text-encoder need --model (the embedded model has its own VAE and no text encoder)")
        from model.release import load_embedded
        from sim import DEFAULT_FPS, DEFAULT_HEIGHT, DEFAULT_HFOV_DEG, DEFAULT_WIDTH

        release = load_embedded(height=DEFAULT_HEIGHT, width=DEFAULT_WIDTH, fps=DEFAULT_FPS, hfov_deg=DEFAULT_HFOV_DEG,
                                device=args.device, dtype=dtype, seed=args.seed)
    else:
        from model.release import load_release

        release = load_release(args.model, device=args.device, dtype=dtype, vae_folder=args.vae,
                               text_encoder_folder=args.text_encoder)
    if args.compile:
        # Per block, so every mode's path (bidirectional, chunk-causal, streaming) runs compiled.
        for block in release.dit.blocks:
            block.compile()
    return release


def main(args: argparse.Namespace) -> int:
    from streaming.offline import generate_video, load_image, read_episode_trajectory

    if args.out.suffix.lower() != ".mp4":
        raise SystemExit(f"run.py generate: --out must end in .mp4, got {args.out}")
    try:
        # Read the image and the flags before loading any weights, so a mistake fails at once.
        image = load_image(args.image)
        trajectory_size = size_flag(args.trajectory_size)
        release = load_components(args)
        trajectory = args.trajectory
        if Path(trajectory).is_dir():
            trajectory = read_episode_trajectory(trajectory)
        bar = None

        def progress(done: int, total: int) -> None:
            nonlocal bar
            # Made at the first step, so input refused before any work prints no empty bar.
            if bar is None:
                from tqdm import tqdm

                bar = tqdm(desc=f"generate ({args.mode or release.default_mode})", unit="step", total=total)
            bar.total = total
            bar.n = done
            bar.refresh()

        try:
            video = generate_video(
                release, image, trajectory, mode=args.mode, seconds=args.seconds, steps=args.steps, seed=args.seed,
                cfg_scale=args.cfg, prompt=args.prompt, negative_prompt=args.negative_prompt,
                progress=None if args.quiet else progress, trajectory_size=trajectory_size,
            )
        finally:
            if bar is not None:
                bar.close()
    except ValueError as error:
        raise SystemExit(f"run.py generate: {error}") from None
    from common.video import write_mp4

    codec = write_mp4(args.out, video.frames, video.fps)
    frames, height, width = video.frames.shape[:3]
    print(f"wrote {args.out} ({frames} frames, {width}x{height} at {video.fps:g} fps, {codec}, {video.mode}, "
          f"{release.describe()})")
    return 0
