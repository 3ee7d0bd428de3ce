"""The command line: one argparse tree, one module per subcommand.

Each subcommand lives in the room that owns it, as a module exposing
`add_arguments(parser)` and `main(args) -> int`. Those modules keep heavy imports (torch, aiortc)
inside `main`, so `python run.py --help` stays fast. Only this module reads the command line.
"""
from __future__ import annotations

import argparse
import importlib

# name -> (module, one-line help). The module's docstring is the subcommand's long help.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("app.serve_cmd", "serve the live exploration app (the default subcommand)"),
    "generate": ("app.generate_cmd", "offline video from an image and a camera trajectory"),
    "render": ("sim.render_cmd", "render a ground-truth video of the procedural world"),
    "train": ("train.train_cmd", "train, distil or fine-tune a model"),
    "eval": ("train.eval_cmd", "evaluate a streaming model against the procedural world's ground truth"),
    "bench": ("app.bench_cmd", "run a benchmark (model, gdn, stream, ae, ...)"),
    "ui": ("app.ui_cmd", "Gradio UI for offline generation"),
    "export": ("app.export_cmd", "export a recorded episode to a training format"),
    "dataset": ("collect.dataset_cmd", "build one LeRobot dataset from a campaign's or record dir's episodes"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py",
        description="roam: walk through a world generated live by SANA-WM. With no subcommand, serves the embedded model.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            # A subcommand whose room has not landed yet is listed but reports why it cannot run.
            if error.name is None or not module_name.startswith(error.name):
                raise
            sub = subparsers.add_parser(name, help=f"{help_text} (not available: {error})")
            sub.set_defaults(handler=_unavailable(name, str(error)))
            continue
        sub = subparsers.add_parser(
            name,
            help=help_text,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(handler=module.main)
    return parser


def _unavailable(name: str, reason: str):
    def handler(args: argparse.Namespace) -> int:
        raise SystemExit(f"run.py {name}: not available in this build ({reason})")

    return handler


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The parsed command line; no subcommand (or only flags) means `serve`. `args.handler(args)` runs it."""
    parser = build_parser()
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["serve", *argv]
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    return int(args.handler(args) or 0)
