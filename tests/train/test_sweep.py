"""`python run.py train sweep`: times the live loop per candidate and rewrites its docs, keeping the hand-written choice."""
import argparse

import pytest

from train import sweep


def test_sweep_times_a_candidate_and_keeps_the_choice_section(tmp_path, monkeypatch, capsys):
    docs = tmp_path / "tiny_sweep.md"
    docs.write_text("# old table\n\n## Choice\n\nHand-written reasons.\n")
    monkeypatch.setattr(sweep, "DOCS_SWEEP", docs)
    parser = argparse.ArgumentParser()
    sweep.add_arguments(parser)
    args = parser.parse_args(["--vae", "random", "--sizes", "32", "--candidates", "h64-d4", "--write-docs"])
    assert sweep.main(args) == 0

    out = capsys.readouterr().out
    assert "h64-d4" in out and "fps" in out
    text = docs.read_text()
    assert "# old table" not in text
    row = next(line for line in text.splitlines() if line.startswith("| h64-d4 |"))
    ms, fps = (float(cell) for cell in [c.strip() for c in row.strip("|").split("|")][3:5])
    assert ms > 0 and fps == pytest.approx(8 / (ms / 1e3), rel=0.01)  # 8 raw frames per 2-latent chunk
    assert "1-minute load average" in text
    assert text.endswith("## Choice\n\nHand-written reasons.\n")


def test_unknown_candidate_is_refused():
    with pytest.raises(ValueError, match="unknown sweep candidate 'h7'"):
        sweep.candidate_config("h7", None)
