"""Benchmark helpers: timing by median of repeats, and writing result tables into docs/benchmarks.md.

Figures are always measured by the command that prints them; nothing here stores a number.
"""
from __future__ import annotations

import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

DOCS_BENCHMARKS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def time_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of `repeats` calls of `fn` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def counts_flag(value: str, flag: str) -> list[int]:
    """A comma-listed flag of counts (`--sessions 1,4`, `--walks 1,2`) -> [int, ...], in order; ValueError naming
    `flag` unless every item is an integer >= 1 and there is at least one."""
    try:
        counts = [int(x) for x in str(value).split(",") if x.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise ValueError(f"{flag} must list integers >= 1, got {value!r}")
    return counts


def median(values: list[float]) -> float:
    return statistics.median(values)


def load_average() -> float:
    """The 1-minute load average (nan where the OS has none): above the core count, other jobs shared the CPU."""
    import os

    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def machine_description() -> str:
    """One line naming the machine a figure was measured on."""
    import os

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_docs_section(section: str, body: str, path: Path = DOCS_BENCHMARKS) -> None:
    """Replace (or append) the `## {section}` section of docs/benchmarks.md with `body`."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEvery figure here was written by the `python run.py bench ...` command named in its section.\n"
    heading = f"## {section}"
    block = f"{heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: block + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text.rstrip("\n") + "\n")
