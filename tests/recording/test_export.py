"""Exporters: every format read back by our readers; the RealEstate10K file in CameraCtrl's layout;
bad input leaves nothing behind."""
from __future__ import annotations

import json

import numpy as np
import pytest

from controls import formats
from streaming.episode import Episode
from streaming.exporters import ACTION_NAMES, export_episode, read_lerobot, state_and_action
from tests.recording.helpers import FPS, H, K, W, write_episode



@pytest.fixture(scope="module")
def episode(tmp_path_factory) -> Episode:
    folder = tmp_path_factory.mktemp("rec") / "ep"
    write_episode(folder, chunks=3)
    return Episode.open(folder)


def test_re10k_round_trip_and_cameractrl_layout(episode, tmp_path):
    out = export_episode(episode, "re10k", tmp_path / "re10k")
    path = out / f"{episode.name}.txt"
    data = formats.read_re10k(path, width=W, height=H)
    np.testing.assert_allclose(data.world_T_cams, episode.world_T_cams, atol=1e-9)
    np.testing.assert_allclose(data.intrinsics, episode.intrinsics, atol=1e-9)
    # CameraCtrl (cameractrl/data/dataset.py): skip the URL line, entry[1:5] normalised fx fy cx cy,
    # entry[7:] a row-major 3x4 world-to-camera matrix; c2w = inverse.
    lines = path.read_text().splitlines()
    assert len(lines[0].split()) == 1
    entries = [[float(x) for x in line.split()] for line in lines[1:]]
    assert len(entries) == episode.n_frames and all(len(e) == 19 for e in entries)
    for i, entry in enumerate(entries):
        assert entry[0] == pytest.approx(i * 1e6 / FPS)
        np.testing.assert_allclose(entry[1:5], np.array(K) / [W, H, W, H])
        assert entry[5:7] == [0.0, 0.0]
        w2c = np.vstack([np.array(entry[7:]).reshape(3, 4), [0, 0, 0, 1]])
        np.testing.assert_allclose(np.linalg.inv(w2c), episode.world_T_cams[i], atol=1e-9)


def test_sana_bench_round_trip(episode, tmp_path):
    out = export_episode(episode, "sana-bench", tmp_path / "sana")
    data = formats.read_sana_bench(out / f"{episode.name}.npz")
    np.testing.assert_allclose(data.world_T_cams, episode.world_T_cams, atol=1e-12)
    np.testing.assert_allclose(data.intrinsics, episode.intrinsics, atol=1e-9)
    assert (data.width, data.height, data.fps) == (W, H, FPS)
    assert (out / f"{episode.name}.png").is_file()
    # The official benchmark files carry num_frames; a file whose count disagrees with its poses is refused.
    with np.load(out / f"{episode.name}.npz") as z:
        assert z["num_frames"].item() == episode.n_frames
        arrays = {k: z[k] for k in z.files}
    np.savez(tmp_path / "wrong.npz", **{**arrays, "num_frames": np.int64(episode.n_frames + 1)})
    with pytest.raises(ValueError, match="num_frames is"):
        formats.read_sana_bench(tmp_path / "wrong.npz")


def test_nerfstudio_round_trip(episode, tmp_path):
    out = export_episode(episode, "nerfstudio", tmp_path / "ns")
    data = formats.read_nerfstudio(out / "transforms.json")
    np.testing.assert_allclose(data.world_T_cams, episode.world_T_cams, atol=1e-12)
    np.testing.assert_allclose(data.intrinsics, episode.intrinsics)
    names = json.loads((out / "transforms.json").read_text())["frames"]
    assert all((out / f["file_path"]).is_file() for f in names) and len(names) == episode.n_frames


def test_lerobot_layout_and_round_trip(episode, tmp_path):
    import av
    import pyarrow.parquet as pq

    out = export_episode(episode, "lerobot", tmp_path / "lr")
    for rel in ("meta/info.json", "meta/stats.json", "meta/tasks.parquet", "meta/episodes/chunk-000/file-000.parquet",
                "data/chunk-000/file-000.parquet", "videos/observation.images.cam/chunk-000/file-000.mp4"):
        assert (out / rel).is_file(), rel
    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_frames"] == episode.n_frames and info["fps"] == FPS
    back = read_lerobot(out)
    # State is float32: positions and rotations come back to float32 precision.
    np.testing.assert_allclose(back["world_T_cams"], episode.world_T_cams, atol=1e-5)
    np.testing.assert_allclose(back["intrinsics"], K)
    assert back["action"].shape == (episode.n_frames, len(ACTION_NAMES))
    with av.open(str(back["video"])) as container:
        assert sum(1 for _ in container.decode(video=0)) == episode.n_frames
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert episodes[0]["length"] == episode.n_frames and episodes[0]["dataset_to_index"] == episode.n_frames
    stats = json.loads((out / "meta/stats.json").read_text())
    assert stats["observation.state"]["count"] == [episode.n_frames]
    # Each item's task as LeRobotDataset names it: meta.tasks.iloc[task_index].name, tasks read by pandas.
    import pandas as pd

    from streaming.exporters import TASK

    tasks = pd.read_parquet(out / "meta/tasks.parquet")
    assert list(tasks.columns) == ["task_index"] and list(tasks.index) == [TASK]
    rows = pq.read_table(out / "data/chunk-000/file-000.parquet").column("task_index").to_pylist()
    assert [tasks.iloc[t].name for t in rows] == [TASK] * episode.n_frames == back["tasks"]


def test_actions_are_body_velocity_turn_rates_and_keys():
    from controls.camera import make_pose, rotation_from_ypr

    fps = 10.0
    # Facing +x (yaw 90 deg) and walking +x at 2 m/s while turning right at 20 deg/s: body forward (z) = 2 m/s.
    poses = np.stack([make_pose(rotation_from_ypr(np.radians(90 + 2 * i), 0.0, 0.0), [0.2 * i, 0, 0]) for i in range(5)])
    state, action = state_and_action(poses, np.array([1, 1, 9, 0, 0]), fps)
    np.testing.assert_allclose(state[:, :3], poses[:, :3, 3], atol=1e-6)
    assert action[0, 2] == pytest.approx(2.0, abs=1e-4) and abs(action[0, 0]) < 1e-4  # forward speed in camera axes
    np.testing.assert_allclose(action[:, 3], 20.0, atol=1e-3)  # yaw rate deg/s
    np.testing.assert_allclose(action[:, 5:9][2], [1, 0, 0, 1])  # FORWARD | RIGHT


def test_bad_input_leaves_no_output(episode, tmp_path):
    with pytest.raises(ValueError, match="unknown export format"):
        export_episode(episode, "mp3", tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="already exists"):
        export_episode(episode, "re10k", tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def run_export(*args: str) -> tuple[int, str]:
    """`python run.py export ...` in this process (a subprocess would pay the CLI's imports 4 times)."""
    from app.cli import main

    try:
        return main(["export", *args]), ""
    except SystemExit as exit_:
        return 1, str(exit_.code)


def test_export_command(episode, tmp_path):
    code, message = run_export(str(episode.folder), "--format", "sana-bench", "--out", str(tmp_path / "ok"))
    assert code == 0, message
    assert (tmp_path / "ok" / f"{episode.name}.npz").is_file()
    code, message = run_export(str(episode.folder), "--format", "webm", "--out", str(tmp_path / "a"))
    assert code != 0 and "unknown format 'webm'" in message
    code, message = run_export(str(tmp_path / "missing"), "--format", "re10k", "--out", str(tmp_path / "b"))
    assert code != 0 and "does not exist" in message
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "meta.json").write_text("{")
    code, message = run_export(str(corrupt), "--format", "lerobot", "--out", str(tmp_path / "c"))
    assert code != 0 and "not valid JSON" in message
    assert not any((tmp_path / name).exists() for name in ("a", "b", "c"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("fmt, name", [("re10k", "{}.txt"), ("sana-bench", "{}.npz")])
def test_an_export_replays_with_generate(episode, tmp_path, fmt, name):
    """`generate --trajectory` takes the exported file: RealEstate10K at the start image's size (its
    intrinsics are normalised) or at --trajectory-size, the benchmark npz at its own."""
    import argparse

    import av

    from app import generate_cmd

    out = export_episode(episode, fmt, tmp_path / fmt)
    trajectory = out / name.format(episode.name)
    start = episode.folder / "start.png"
    parser = argparse.ArgumentParser()
    generate_cmd.add_arguments(parser)
    video = tmp_path / "replay.mp4"
    extra = ["--trajectory-size", f"{W}x{H}"] if fmt == "re10k" else []
    args = parser.parse_args(["--image", str(start), "--trajectory", str(trajectory), "--out", str(video), "--quiet", *extra])
    assert generate_cmd.main(args) == 0
    with av.open(str(video)) as container:
        # 25 recorded poses: 8k + 1 frames, all of them.
        assert sum(1 for _ in container.decode(video=0)) == episode.n_frames
    if fmt == "re10k":
        # Without the flag the start image (the episode's own frame size) gives the size.
        video.unlink()
        args = parser.parse_args(["--image", str(start), "--trajectory", str(trajectory), "--out", str(video), "--quiet"])
        assert generate_cmd.main(args) == 0 and video.is_file()
