"""Export a recorded episode (a folder under --record-dir of `run.py serve`) to a training format.

    python run.py export recordings/ab12cd-000 --format re10k --out exports/re10k
    python run.py export recordings/ab12cd-000 --format lerobot --out exports/lerobot

Formats: re10k (RealEstate10K / CameraCtrl camera txt), sana-bench (SANA-WM-Bench npz), nerfstudio
(transforms.json + frames), lerobot (LeRobot v3.0 dataset). An episode whose recording was cut
short (marked incomplete) exports its durable frames, with a warning. The output folder is written
beside --out and renamed into place when complete; it must not exist yet (or be empty).
"""
from __future__ import annotations

import argparse
from pathlib import Path

FORMATS = ("re10k", "sana-bench", "nerfstudio", "lerobot")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("episode", type=Path, help="episode folder (meta.json, frames.jsonl, video)")
    # Validated in main, so an unknown format gets our message listing the choices.
    parser.add_argument("--format", required=True, help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")


def main(args: argparse.Namespace) -> int:
    from streaming.episode import Episode
    from streaming.exporters import export_episode

    try:
        if args.format not in FORMATS:
            raise ValueError(f"unknown format {args.format!r}; choose one of {', '.join(FORMATS)}")
        episode = Episode.open(args.episode)
        if not episode.complete:
            print(f"warning: {args.episode} is incomplete (recording cut short); exporting its {episode.n_frames} durable frames")
        out = export_episode(episode, args.format, args.out)
    except ValueError as error:
        raise SystemExit(f"run.py export: {error}") from None
    print(f"wrote {out} ({args.format}, {episode.n_frames} frames from {episode.name})")
    return 0
