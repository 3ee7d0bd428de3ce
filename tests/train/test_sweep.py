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
    # 8 raw frames per 2-latent chunk; the table rounds ms to whole milliseconds and fps to 0.1
    assert ms > 0 and fps == pytest.approx(8 / (ms / 1e3), rel=0.5 / ms + 0.005)
    assert "1-minute load average" in text
    assert text.endswith("## Choice\n\nHand-written reasons.\n")
    # by default the loop runs the shipped model's sampler, as the app does
    from model.release import embedded_sampler_sigmas
    from train.embedded import EMBEDDED_WEIGHTS

    shipped = embedded_sampler_sigmas(EMBEDDED_WEIGHTS.with_suffix(".json"))
    assert f"{len(shipped) - 1} Euler step(s) over σ = {', '.join(f'{x:g}' for x in shipped)}," in text


def test_sweep_sigmas_picks_the_timed_sampler_and_bad_lists_are_named(tmp_path, monkeypatch):
    docs = tmp_path / "tiny_sweep.md"
    monkeypatch.setattr(sweep, "DOCS_SWEEP", docs)
    parser = argparse.ArgumentParser()
    sweep.add_arguments(parser)
    base = ["--vae", "random", "--sizes", "32", "--candidates", "h64-d4", "--write-docs"]
    assert sweep.main(parser.parse_args(base + ["--sigmas", "1,0.5,0"])) == 0
    assert "2 Euler step(s) over σ = 1, 0.5, 0," in docs.read_text()
    with pytest.raises(ValueError, match="--sigmas"):
        sweep.main(parser.parse_args(base + ["--sigmas", "0.5,1,0"]))


def test_unknown_candidate_is_refused():
    with pytest.raises(ValueError, match="unknown sweep candidate 'h7'"):
        sweep.candidate_config("h7", None)
