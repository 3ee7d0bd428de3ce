"""`python run.py bench soak`: the server in a child process, measured over connect/disconnect cycles."""
from __future__ import annotations

import argparse

import pytest

from app import bench_soak as bench


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write-docs", action="store_true")
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_bad_marks_are_named_in_one_line():
    with pytest.raises(SystemExit, match=r"--marks must lie in \[1, --cycles=5\]"):
        bench.main(_args("--cycles", "5", "--marks", "1,10"))
    with pytest.raises(SystemExit, match="--marks must list cycle counts"):
        bench.main(_args("--marks", "ten"))


@pytest.mark.heavy
def test_soak_measures_the_server_process_and_writes_its_docs_section(monkeypatch, capsys):
    import common.bench

    written = {}
    monkeypatch.setattr(common.bench, "write_docs_section", lambda section, body: written.setdefault(section, body))
    assert bench.main(_args("--cycles", "3", "--marks", "1,3", "--frames", "2", "--transport", "websocket", "--write-docs")) == 0
    out = capsys.readouterr().out
    assert "after 3 cycles" in out and "sessions 0" in out
    rows = [line.split("|") for line in written["soak"].splitlines() if line.startswith("| 1 |") or line.startswith("| 3 |")]
    assert len(rows) == 2 and all(float(row[2]) > 50 for row in rows), "the server's RSS, not a client's"
    assert all(row[5].strip() == "0" for row in rows), "no peer connection outlives its session"
