"""Campaign files: every bad key is one line naming it; assignment is seeded and covers every task."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from collect.campaign import CampaignError, load_campaign

REPO = Path(__file__).resolve().parents[2]

GOOD = '''
name = "trees"
consent = "We record what you see and press."
assignment = "round-robin"
record_dir = "rec"
dataset = "ds"
[[tasks]]
id = "tree"
instruction = "Walk to the tallest tree, then look back."
starts = ["scene:1", "scene:2"]
time_limit_s = 30
[[tasks]]
id = "path"
instruction = "Follow the path."
starts = ["scene:3"]
goal = "the end of the path"
'''


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "campaign.toml"
    path.write_text(text)
    return path


def test_good_campaign_loads(tmp_path):
    campaign = load_campaign(write(tmp_path, GOOD))
    assert campaign.name == "trees"
    assert [t.id for t in campaign.tasks] == ["tree", "path"]
    assert campaign.record_dir == (tmp_path / "rec").resolve()
    assert campaign.tasks[0].time_limit_s == 30.0 and campaign.tasks[1].goal == "the end of the path"


def test_round_robin_rotates_and_starts_spread(tmp_path):
    campaign = load_campaign(write(tmp_path, GOOD))
    assert [t.id for t in campaign.task_order(0)] == ["tree", "path"]
    assert [t.id for t in campaign.task_order(1)] == ["path", "tree"]
    tree = campaign.tasks[0]
    assert [campaign.start_for(tree, 0, a) for a in range(3)] == ["scene:1", "scene:2", "scene:1"]


def test_random_assignment_is_seeded_and_a_permutation(tmp_path):
    text = GOOD.replace('assignment = "round-robin"', 'assignment = "random"\nseed = 7')
    a, b = load_campaign(write(tmp_path, text)), load_campaign(write(tmp_path, text))
    orders = [[t.id for t in a.task_order(k)] for k in range(12)]
    assert orders == [[t.id for t in b.task_order(k)] for k in range(12)]
    assert all(sorted(o) == ["path", "tree"] for o in orders)
    assert len({tuple(o) for o in orders}) == 2


@pytest.mark.parametrize(("change", "message"), [
    (('name = "trees"', 'name = "trees"\ncolour = "red"'), "unknown key colour"),
    (('name = "trees"', 'name = "no spaces allowed"'), "name must be"),
    (('consent = "We record what you see and press."', ""), "missing key consent"),
    (('assignment = "round-robin"', 'assignment = "alphabetical"'), "assignment must be one of round-robin, random"),
    (("time_limit_s = 30", "time_limit_s = -5"), "tasks[0].time_limit_s must be a positive number"),
    (("time_limit_s = 30", "timelimit = 30"), "unknown key tasks[0].timelimit"),
    (('starts = ["scene:3"]', "starts = []"), "tasks[1].starts must be a non-empty list"),
    (('starts = ["scene:3"]', 'starts = ["pictures/nope.jpg"]'), "does not exist"),
    (('starts = ["scene:3"]', 'starts = ["hello"]'), "neither a scene id"),
    (('goal = "the end of the path"', ""), "tasks[1] needs a time_limit_s or a goal"),
    (('id = "path"', 'id = "tree"'), "task ids must be unique; repeated: tree"),
    (('dataset = "ds"', 'dataset = "rec/ds"'), "must be separate folders"),
    (('goal = "the end of the path"', 'goal = "the end of the path"\n[filters]\nmin_second = 3'), "unknown key filters.min_second"),
    (('goal = "the end of the path"', 'goal = "the end of the path"\n[filters]\nmin_seconds = -1'), "filters.min_seconds must be a number >= 0"),
    (("[[tasks]]", "[[tasks]\n"), "not valid TOML"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_campaign_is_one_line_naming_the_key(tmp_path, change, message):
    old, new = change
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(CampaignError) as info:
        load_campaign(path)
    text = str(info.value)
    assert message in text and "\n" not in text and text.startswith(str(path))


def test_serve_with_a_bad_campaign_exits_with_one_line(tmp_path):
    path = write(tmp_path, GOOD.replace("time_limit_s = 30", "time_limit_s = 'soon'"))
    result = subprocess.run([sys.executable, "run.py", "serve", "--campaign", str(path), "--port", "0"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("run.py serve: ") and "tasks[0].time_limit_s" in result.stderr
