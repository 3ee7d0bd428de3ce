"""Episode writer and reader: files, round trip, crash safety (kill -9) and bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from streaming.episode import Episode, EpisodeError
from streaming.recorder import EpisodeWriter, app_version
from tests.recording.helpers import FPS, H, K, W, frame_image, pose, write_episode

ROOT = Path(__file__).resolve().parents[2]


def grey_levels(frames: np.ndarray) -> np.ndarray:
    return frames.reshape(len(frames), -1).mean(1)


def test_episode_round_trip(tmp_path):
    write_episode(tmp_path / "ep", chunks=4)
    ep = Episode.open(tmp_path / "ep")
    assert ep.complete and ep.n_frames == 33
    assert sorted(p.name for p in ep.folder.iterdir()) == ["frames.jsonl", "meta.json", "segments", "start.png", "video.mp4"]
    video = ep.read_video()
    assert video.shape == (33, H, W, 3)
    # Each decoded frame is the one recorded at that index (grey level survives H.264).
    np.testing.assert_allclose(grey_levels(video), [frame_image(i).mean() for i in range(33)], atol=3)
    np.testing.assert_allclose(ep.world_T_cams, np.stack([pose(i) for i in range(33)]), atol=1e-12)
    np.testing.assert_allclose(ep.intrinsics, np.tile(K, (33, 1)))
    assert ep.timestamps[8] == pytest.approx(8 / FPS)
    meta = ep.meta
    assert meta["fps"] == FPS and (meta["width"], meta["height"]) == (W, H) and meta["seed"] == 0
    assert meta["conventions"]["camera_axes"].startswith("opencv") and meta["frames"] == 33 and meta["chunks"] == 4
    assert meta["app_version"] == app_version() != "unknown"
    row = ep.rows[10]
    assert row["chunk_id"] == 1 and row["segment"] == 1 and row["input"]["keys"] == 1 and row["latency"]["chunk_ms"] == 12.5
    assert np.array_equal(ep.start_image(), frame_image(0))
    assert ep.trajectory().n_frames == 33


def test_generate_reads_recorded_episodes(tmp_path):
    """`run.py generate --trajectory EPISODE` (streaming.offline) reads what the recorder writes."""
    from streaming.offline import read_episode_trajectory

    write_episode(tmp_path / "ep", chunks=2)
    theirs, ours = read_episode_trajectory(tmp_path / "ep"), Episode.open(tmp_path / "ep").trajectory()
    np.testing.assert_array_equal(theirs.world_T_cams, ours.world_T_cams)
    np.testing.assert_array_equal(theirs.intrinsics, ours.intrinsics)
    assert (theirs.width, theirs.height, theirs.fps) == (W, H, FPS)


CRASH_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from tests.recording.helpers import chunk, EpisodeWriter, FPS, K, W, H, frame_image
w = EpisodeWriter(Path({folder!r}), fps=FPS, intrinsics=K, width=W, height=H, start_image=frame_image(0))
start = 0
for c in range(10_000):
    n = 9 if c == 0 else 8
    w.append_chunk(chunk(start, n, c))
    start += n
    print(c, flush=True)
    time.sleep(0.01)
"""


def test_kill_9_leaves_a_readable_incomplete_episode(tmp_path):
    folder = tmp_path / "ep"
    proc = subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT.format(root=str(ROOT), folder=str(folder))], stdout=subprocess.PIPE, text=True)
    try:
        flushed = -1
        deadline = time.monotonic() + 60
        while flushed < 3 and time.monotonic() < deadline:
            flushed = int(proc.stdout.readline())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and flushed >= 3
    ep = Episode.open(folder)
    assert not ep.complete and not (folder / "video.mp4").exists()
    # Every chunk reported flushed is there (maybe one more), whole.
    assert ep.n_frames >= 9 + 8 * flushed and (ep.n_frames - 1) % 8 == 0
    video = ep.read_video()
    assert len(video) == ep.n_frames
    np.testing.assert_allclose(grey_levels(video), [frame_image(i).mean() for i in range(ep.n_frames)], atol=3)


def test_cut_last_line_and_orphan_segment_are_left_out(tmp_path):
    folder = tmp_path / "ep"
    write_episode(folder, chunks=3, close=False)
    # A crash in the middle of writing chunk 2's lines: the chunk is dropped as a whole.
    text = (folder / "frames.jsonl").read_text()
    (folder / "frames.jsonl").write_text(text[: len(text) - 300])
    ep = Episode.open(folder)
    assert not ep.complete and ep.n_frames == 17
    assert len(ep.read_video()) == 17


@pytest.mark.parametrize("damage", ["missing_folder", "no_meta", "meta_not_json", "not_an_episode", "bad_line", "missing_segment", "frames_mismatch"])
def test_corrupt_episodes_are_refused(tmp_path, damage):
    folder = tmp_path / "ep"
    write_episode(folder, chunks=2)
    if damage == "missing_folder":
        folder = tmp_path / "nope"
    elif damage == "no_meta":
        (folder / "meta.json").unlink()
    elif damage == "meta_not_json":
        (folder / "meta.json").write_text("{not json")
    elif damage == "not_an_episode":
        (folder / "meta.json").write_text(json.dumps({"format": "something"}))
    elif damage == "bad_line":
        lines = (folder / "frames.jsonl").read_text().splitlines()
        lines[3] = lines[3].replace('"c2w"', '"c2x"')
        (folder / "frames.jsonl").write_text("\n".join(lines) + "\n")
    elif damage == "missing_segment":
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps({**meta, "complete": False}))
        (folder / "segments" / "000000.mp4").unlink()
    elif damage == "frames_mismatch":
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps({**meta, "frames": 99}))
    with pytest.raises(EpisodeError) as info:
        Episode.open(folder).read_video()
    assert str(folder.name) in str(info.value) or "nope" in str(info.value)


def test_writer_refuses_bad_arguments(tmp_path):
    ok = dict(fps=FPS, intrinsics=K, width=W, height=H, start_image=frame_image(0))
    with pytest.raises(ValueError, match="even"):
        EpisodeWriter(tmp_path / "a", **{**ok, "width": 63})
    with pytest.raises(ValueError, match="start_image"):
        EpisodeWriter(tmp_path / "b", **{**ok, "start_image": np.zeros((5, 5, 3), np.uint8)})
    with pytest.raises(ValueError, match="own fields"):
        EpisodeWriter(tmp_path / "c", **ok, meta={"complete": True})
    with pytest.raises(ValueError, match="folder name"):
        EpisodeWriter(tmp_path / ".hidden", **ok)
    write_episode(tmp_path / "d", chunks=1)
    with pytest.raises(ValueError, match="already exists"):
        EpisodeWriter(tmp_path / "d", **ok)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_session_recorder_consent_branches_and_write_errors(tmp_path):
    from streaming.recorder import SessionRecorder
    from tests.recording.helpers import chunk

    def recorder(root):
        return SessionRecorder(root, "s9", fps=FPS, intrinsics=K, width=W, height=H, walk_start_image=frame_image(0), max_pending=1)

    rec = recorder(tmp_path / "rec")
    rec.on_chunk(chunk(0, 9, 0), 0)  # no consent yet: not recorded
    rec.set_consent(True)
    rec.on_chunk(chunk(9, 8, 1), 9)
    rec.on_chunk(chunk(17, 8, 2), 17)
    rec.on_rewind(12)
    rec.on_chunk(chunk(12, 8, 3), 12)
    rec.set_consent(False)
    rec.on_chunk(chunk(20, 8, 4), 20)  # consent withdrawn: not recorded
    rec.close()
    rec.close()
    rec.on_chunk(chunk(28, 8, 5), 28)  # after close: ignored, does not block
    first, second = (Episode.open(p) for p in rec.episodes)
    assert first.complete and second.complete and [r["frame_id"] for r in first.rows] == list(range(9, 25))
    assert first.meta["start_png"] == "first_frame" and first.meta["walk_frame0"] == 9
    assert second.meta["parent_episode"] == first.name and second.meta["branch_from_frame"] == 3 and second.n_frames == 8

    # A record dir that cannot be created: recording stops, the caller never sees an exception.
    (tmp_path / "file").write_text("not a folder")
    broken = recorder(tmp_path / "file" / "rec")
    broken.set_consent(True)
    for c in range(4):
        broken.on_chunk(chunk(8 * c, 8, c), 8 * c)
    broken.close()
    assert isinstance(broken.failed, OSError) and not broken.consent and broken.episodes == []
