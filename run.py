#!/usr/bin/env python
"""roam: interactive streaming world exploration with SANA-WM.

`python run.py` serves the embedded default model; `python run.py --help` lists the subcommands.
"""
from __future__ import annotations

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
