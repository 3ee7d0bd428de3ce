#!/usr/bin/env python
"""roam: interactive streaming world exploration with SANA-WM.

`python run.py` serves the embedded default model; `python run.py --help` lists the subcommands.
`python run.py serve --ray ...` serves from generation replicas on Ray (docs/serving.md): the only
command that imports the cluster room, which sits above app/ and needs Ray installed.
"""
from __future__ import annotations

import sys

from app.cli import parse_args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if getattr(args, "ray", None) is not None:
        from cluster.serve_cmd import main as serve_cluster

        return serve_cluster(args)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
