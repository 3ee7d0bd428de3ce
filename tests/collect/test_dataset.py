"""The dataset build: LeRobot v3.0 layout, filters, reviews, incremental builds, crashes, bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from collect.dataset import build_dataset
from collect.lerobot_layout import check_layout, read_item
from collect.reviews import ReviewError, read_reviews, write_decision
from tests.recording.helpers import FPS, chunk, write_episode

REPO = Path(__file__).resolve().parents[2]


def record_dir(tmp_path: Path) -> Path:
    rd = tmp_path / "rec"
    rd.mkdir()
    write_episode(rd / "e-001", chunks=4, meta={"participant": "p-aaaa", "task": "tree", "task_instruction": "Walk to the tree.", "scene": "scene:1"})
    write_episode(rd / "e-002", chunks=5, meta={"participant": "p-bbbb", "task": "path", "task_instruction": "Follow the path.", "scene": "scene:2"})
    return rd


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", "dataset", "build", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_build_writes_a_sound_lerobot_v3_dataset(tmp_path):
    rd = record_dir(tmp_path)
    report = build_dataset(rd, tmp_path / "ds")
    assert report.mode == "new" and report.total_episodes == 2 and report.total_frames == 33 + 41
    assert check_layout(tmp_path / "ds") == []
    tasks = pd.read_parquet(tmp_path / "ds" / "meta" / "tasks.parquet")
    assert set(tasks.index) == {"Walk to the tree.", "Follow the path."}
    data = pq.read_table(tmp_path / "ds" / "data" / "chunk-000" / "file-000.parquet").to_pandas()
    assert set(data["participant"]) == {"p-aaaa", "p-bbbb"} and set(data["scene"]) == {"scene:1", "scene:2"}
    item = read_item(tmp_path / "ds", 40)
    assert item["episode_index"] == 1 and item["task"] == "Follow the path." and item["observation.images.cam"].shape == (48, 64, 3)
    # The frame decoded at from_timestamp + timestamp is the recorded one (grey level encodes the index).
    assert abs(int(item["observation.images.cam"].mean()) - (10 + 7 * 7)) <= 4
    stats = json.loads((tmp_path / "ds" / "meta" / "stats.json").read_text())
    assert stats["observation.state"]["count"] == [74]
    cams = sorted((tmp_path / "ds" / "cameras" / "re10k").iterdir())
    assert [c.name for c in cams] == ["episode_000000.txt", "episode_000001.txt"]
    assert len(cams[1].read_text().strip().splitlines()) == 1 + 41


def test_building_again_appends_without_rewriting_old_files(tmp_path):
    rd = record_dir(tmp_path)
    build_dataset(rd, tmp_path / "ds")
    old = tmp_path / "ds" / "data" / "chunk-000" / "file-000.parquet"
    old_video = tmp_path / "ds" / "videos" / "observation.images.cam" / "chunk-000" / "file-000.mp4"
    before = (old.stat().st_mtime_ns, old.read_bytes(), old_video.read_bytes())
    assert build_dataset(rd, tmp_path / "ds").mode == "unchanged"
    write_episode(rd / "e-003", chunks=4, meta={"participant": "p-cccc", "task": "tree"})
    report = build_dataset(rd, tmp_path / "ds")
    assert report.mode == "append" and report.added == ["e-003"] and report.total_episodes == 3
    assert (old.stat().st_mtime_ns, old.read_bytes(), old_video.read_bytes()) == before
    assert (tmp_path / "ds" / "data" / "chunk-000" / "file-001.parquet").is_file()
    assert check_layout(tmp_path / "ds") == []


def test_filters_flag_and_reviews_decide(tmp_path):
    rd = record_dir(tmp_path)
    # Standing still for 4 chunks: same pose, no keys.
    from streaming.recorder import EpisodeWriter, RecordedFrame
    from tests.recording.helpers import H, K, W, frame_image, pose

    writer = EpisodeWriter(rd / "e-004", fps=FPS, intrinsics=K, width=W, height=H, start_image=frame_image(0))
    for c in range(4):
        writer.append_chunk([RecordedFrame(frame_image(i), pose(0), c * 8 + i, c, None) for i in range(8)])
    writer.close()
    write_episode(rd / "e-005", chunks=1)
    from collect.campaign import FilterConfig

    filters = FilterConfig(min_seconds=1.0, max_idle_seconds=1.0, max_stuck_seconds=1.0)
    report = build_dataset(rd, tmp_path / "ds", filters=filters)
    by = {v.name: v for v in report.verdicts}
    assert by["e-004"].status == "filtered" and set(by["e-004"].flags) == {"idle", "stuck"}
    assert by["e-005"].status == "filtered" and set(by["e-005"].flags) == {"too_short"}
    assert by["e-001"].status == "included"
    table = report.table()
    assert "flag idle: 1" in table and "flag stuck: 1" in table and "flag too_short: 1" in table
    # Filtered episodes are listed, never deleted.
    assert (rd / "e-004" / "frames.jsonl").is_file()
    write_decision(rd, "e-004", "accept")
    write_decision(rd, "e-001", "reject", "walked off the map")
    report = build_dataset(rd, tmp_path / "ds", filters=filters)
    by = {v.name: v for v in report.verdicts}
    assert by["e-004"].status == "included" and by["e-001"].status == "rejected"
    assert report.mode == "rebuild" and "e-001" in report.rebuild_reason
    sources = pq.read_table(tmp_path / "ds" / "meta" / "episodes" / "chunk-000" / "file-000.parquet").column("roam/source_episode").to_pylist()
    assert sources == ["e-002", "e-004"]
    assert check_layout(tmp_path / "ds") == []


CRASHER = r'''
import sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from tests.recording.helpers import chunk, write_episode
writer = write_episode(Path({folder!r}), chunks=0, close=False)
start = 0
for c in range(100):
    n = 8
    writer.append_chunk(chunk(start, n, c))
    start += n
    print(start, flush=True)
    time.sleep(0.05)
'''


def test_a_crash_mid_episode_loses_no_flushed_frame(tmp_path):
    rd = record_dir(tmp_path)
    folder = rd / "e-crash"
    proc = subprocess.Popen([sys.executable, "-c", CRASHER.format(repo=str(REPO), folder=str(folder))], stdout=subprocess.PIPE, text=True)
    flushed = 0
    try:
        while flushed < 40:
            flushed = int(proc.stdout.readline())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    report = build_dataset(rd, tmp_path / "ds")
    crash = next(v for v in report.verdicts if v.name == "e-crash")
    # Every frame reported flushed before the kill is in; the process may have flushed one more chunk.
    assert crash.status == "included" and not crash.complete and crash.frames >= flushed and crash.frames % 8 == 0
    assert "incomplete" in report.table().splitlines()[[v.name for v in report.verdicts].index("e-crash") + 1]
    assert check_layout(tmp_path / "ds") == []
    skipped = build_dataset(rd, tmp_path / "ds2", skip_incomplete=True)
    crash = next(v for v in skipped.verdicts if v.name == "e-crash")
    assert crash.status == "skipped" and "incomplete" in crash.reason


def test_foreign_and_corrupt_folders_are_skipped_with_a_reason(tmp_path):
    rd = record_dir(tmp_path)
    (rd / "holiday-photos").mkdir()
    (rd / "holiday-photos" / "a.jpg").write_bytes(b"jpeg")
    bad = rd / "e-bad"
    write_episode(bad, chunks=2)
    (bad / "meta.json").write_text("{not json")
    wrong = rd / "e-wrong"
    write_episode(wrong, chunks=2)
    with open(wrong / "frames.jsonl", "a") as f:
        f.write('{"index": 99}\n')
    result = run_cli(str(rd), "--out", str(tmp_path / "ds"))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "skipped" in lines["holiday-photos"] and "no meta.json" in lines["holiday-photos"]
    assert "skipped" in lines["e-bad"] and "not valid JSON" in lines["e-bad"]
    assert "skipped" in lines["e-wrong"] and "line 18: missing keys" in lines["e-wrong"]
    assert "built" in result.stdout and "2 episodes" in result.stdout


@pytest.mark.parametrize(("content", "message"), [
    ("{oops", "not valid JSON"),
    ('{"format": "something", "version": 1, "decisions": {}}', "not a roam.reviews file"),
    ('{"format": "roam.reviews", "version": 1, "decisions": {"e-001": {"decision": "maybe"}}}', "decision must be accept or reject, got 'maybe'"),
    ('{"format": "roam.reviews", "version": 2, "decisions": {}}', "version 2"),
])
def test_bad_reviews_file_is_one_line(tmp_path, content, message):
    rd = record_dir(tmp_path)
    (rd / "reviews.json").write_text(content)
    with pytest.raises(ReviewError):
        read_reviews(rd)
    result = run_cli(str(rd), "--out", str(tmp_path / "ds"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr and result.stderr.startswith("run.py dataset build: ")


def test_bad_sources_are_one_line(tmp_path):
    for args, message in [((str(tmp_path / "nothing"), "--out", str(tmp_path / "ds")), "neither a campaign file nor a record dir"),
                          ((str(tmp_path),), "--out is required")]:
        result = run_cli(*args)
        assert result.returncode != 0 and "Traceback" not in result.stderr and message in result.stderr
    (tmp_path / "empty").mkdir()
    result = run_cli(str(tmp_path / "empty"), "--out", str(tmp_path / "ds"))
    assert result.returncode != 0 and "no episode of" in result.stderr and "holds no episode folders" in result.stderr
    assert not (tmp_path / "ds").exists()
    rd = record_dir(tmp_path)
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "thesis.txt").write_text("mine")
    result = run_cli(str(rd), "--out", str(tmp_path / "occupied"))
    assert result.returncode != 0 and "not a roam-built LeRobot dataset" in result.stderr
    assert (tmp_path / "occupied" / "thesis.txt").read_text() == "mine"


def test_recorder_stores_raw_events_and_tags(tmp_path):
    from streaming.recorder import SessionRecorder
    from tests.recording.helpers import H, K, W, frame_image

    rec = SessionRecorder(tmp_path / "r", "s1", fps=FPS, intrinsics=K, width=W, height=H, walk_start_image=frame_image(0))
    rec.on_event({"server_t": 1.0, "type": "input", "seq": 1, "t": 10.0, "keys": 1})  # before consent: dropped
    rec.set_tags({"participant": "p-1", "task": "tree"})
    rec.set_consent(True)
    rec.on_event({"server_t": 2.0, "type": "input", "seq": 2, "t": 20.0, "keys": 1, "yaw": 3.0})  # before the first chunk
    rec.on_chunk(chunk(0, 9, 0), 0)
    rec.on_event({"server_t": 3.0, "type": "reset"})
    rec.set_tags({"outcome": "done"})
    rec.set_consent(False)
    rec.on_event({"server_t": 4.0, "type": "input", "seq": 3, "t": 30.0, "keys": 0})  # after: dropped
    rec.close()
    (folder,) = rec.episodes
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    assert [e["server_t"] for e in events] == [2.0, 3.0]
    assert events[0]["seq"] == 2 and events[0]["t"] == 20.0 and events[0]["yaw"] == 3.0
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["participant"] == "p-1" and meta["task"] == "tree" and meta["outcome"] == "done" and meta["events"] == 2
    with pytest.raises(ValueError, match="own fields"):
        rec.set_tags({"frames": 3})
