"""Build one LeRobot v3.0 dataset from the recorded episodes of a campaign or a record dir.

    python run.py dataset build campaigns/trees.toml                  # --out defaults to its `dataset`
    python run.py dataset build recordings --out datasets/all
    python run.py dataset build campaigns/trees.toml --skip-incomplete

Every episode is listed in a table with its status: included, filtered (a quality filter flagged
it: too_short, idle, stuck, dropped_frames), rejected (by a reviewer at /review) or skipped (not a
readable roam episode, another campaign's, too few frames), with the reason. Nothing is deleted.
Building again adds new episodes in new files and leaves the old ones alone; it rebuilds only when
an episode already in the dataset has to leave it (docs/collection.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = actions.add_parser("build", help="build or extend the dataset", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    build.add_argument("source", type=Path, help="a campaign .toml file or a record dir")
    build.add_argument("--out", type=Path, default=None, help="dataset folder (default: the campaign's `dataset`)")
    build.add_argument("--skip-incomplete", action="store_true", help="leave out episodes whose recording was cut short (default: include their durable frames)")


def main(args: argparse.Namespace) -> int:
    from collect.dataset import build_dataset

    try:
        report = build_dataset(args.source, args.out, skip_incomplete=args.skip_incomplete)
    except ValueError as error:
        raise SystemExit(f"run.py dataset build: {error}") from None
    print(report.table())
    what = {"new": "built", "append": f"added {len(report.added)} episodes to", "rebuild": "rebuilt", "unchanged": "nothing new for"}[report.mode]
    print(f"\n{what} {report.out}: {report.total_episodes} episodes, {report.total_frames} frames")
    if report.rebuild_reason:
        print(f"rebuilt from scratch because {report.rebuild_reason}")
    return 0
