"""`python run.py bench gdn` runs end to end (at a tiny shape) and writes its docs section."""
from __future__ import annotations

import argparse

import pytest

from model.ops import bench


def test_bench_prints_a_row_per_workload_and_writes_docs(monkeypatch, capsys):
    written = {}
    monkeypatch.setattr(bench, "QUICK_SHAPES", [(1, 2, 3, 4, 6, 6)])
    monkeypatch.setattr(bench, "write_docs_section", lambda section, body: written.update({section: body}))
    args = argparse.Namespace(repeats=1, threads=None, quick=True, write_docs=True)
    assert bench.main(args) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| 1,2,3,4,6,6 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["scan", "gdn", "gdn+grad"]
    diffusers_ms = rows[1].split("|")[6].strip()
    assert float(diffusers_ms) > 0
    assert written == {"gdn": printed.strip()}


def test_bench_rejects_bad_arguments():
    with pytest.raises(ValueError, match="--repeats must be at least 1, got 0"):
        bench.main(argparse.Namespace(repeats=0, threads=None, quick=True, write_docs=False))
