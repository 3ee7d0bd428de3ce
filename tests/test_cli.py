import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_help_lists_every_subcommand():
    from app.cli import SUBCOMMANDS

    out = subprocess.run([sys.executable, "run.py", "--help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in SUBCOMMANDS:
        assert name in out


def test_docs_section_is_replaced_not_duplicated(tmp_path):
    from common.bench import write_docs_section

    path = tmp_path / "b.md"
    write_docs_section("model", "first", path)
    write_docs_section("other", "x", path)
    write_docs_section("model", "second", path)
    text = path.read_text()
    assert text.count("## model") == 1 and "second" in text and "first" not in text and "## other" in text


def test_render_help_lists_the_presets_and_the_action_keys():
    from controls.trajectory import ACTION_KEY_HELP, ACTION_KEYS, PRESETS

    out = subprocess.run([sys.executable, "run.py", "render", "--help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert set(ACTION_KEY_HELP) == ACTION_KEYS
    for name in PRESETS:
        assert f"  {name}  " in out
    for key, what in ACTION_KEY_HELP.items():
        assert f"{key} {what}" in out
    assert "w-16,jl-8" in out and "'none'" in out
