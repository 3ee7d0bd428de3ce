"""Benchmarks. Each target prints its figures (medians of several runs, measured in one run, the
machine named) and, with --write-docs, replaces its section of docs/benchmarks.md.

Targets:
  model   our bidirectional forward vs diffusers' reference; streaming per-chunk time at chunk 5 and 300
  gdn     the gated delta rule paths (naive, chunked torch, Triton)
  stream  the live app: fps, chunk ms, time to first frame, motion-to-photon, drops (1 and 4 sessions)
  soak    the server's memory (RSS, malloc) over hundreds of connect/disconnect cycles
  ae      the tiny video autoencoder's encode and decode speed
  sim     the procedural renderer's frames per second
  controls  the per-chunk control path (integrator, camera conditioning)
  gpu720  the full 720p streaming pipeline with random weights of the real size (needs CUDA)
"""
from __future__ import annotations

import argparse
import importlib

# target -> module exposing add_arguments(parser) and main(args) -> int
TARGETS: dict[str, str] = {
    "model": "model.bench",
    "gdn": "model.ops.bench",
    "stream": "app.bench_stream",
    "soak": "app.bench_soak",
    "ae": "model.vae.bench",
    "sim": "sim.bench",
    "controls": "controls.bench",
    "gpu720": "app.bench_720p",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    targets = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name, module_name in TARGETS.items():
        sub = targets.add_parser(name, help=f"benchmark {name}")
        sub.add_argument("--write-docs", action="store_true", help="write the results into docs/benchmarks.md")
        sub.set_defaults(bench_module=module_name)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is None or not module_name.startswith(error.name):
                raise
            continue
        module.add_arguments(sub)


def main(args: argparse.Namespace) -> int:
    module = importlib.import_module(args.bench_module)
    return int(module.main(args) or 0)
