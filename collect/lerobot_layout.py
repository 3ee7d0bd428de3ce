"""Check a LeRobot v3.0 dataset's layout, and read items from it the way `lerobot` does.

`check_layout(root)` returns the problems found (empty: the layout holds), checking what
`lerobot.datasets.LeRobotDataset` relies on when it loads a local v3.0 dataset:
- `meta/info.json`: codebase_version "v3.0", fps, features (dtype, shape, names), data_path and
  video_path templates, total_episodes / total_frames / total_tasks matching the files.
- `meta/tasks.parquet`: a `task_index` column 0..T-1 indexed by the task strings.
- `meta/episodes/*/*.parquet`: episode_index 0..E-1 in order, `tasks`, `length`, data and video
  file indices, `dataset_from_index`/`dataset_to_index` contiguous, video time ranges.
- every data file named by the episodes: exactly the features' non-video columns, `index` equal
  to the row's global position, `episode_index`/`frame_index`/`timestamp` consistent with the
  episode rows, `task_index` inside tasks.
- every video file: decodes, and frame `i` of an episode lies at `from_timestamp + i / fps`
  within lerobot's default tolerance (1e-4 s).
- `meta/stats.json`: min/max/mean/std/count for every numeric feature.

`read_item(root, index)` returns one frame as `LeRobotDataset.__getitem__` assembles it: the data
row, the task string looked up by `task_index` in tasks.parquet, and the video frame decoded at
`from_timestamp + timestamp` of its episode's video file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

# lerobot's default `tolerance_s` between a query timestamp and the decoded frame's.
TOLERANCE_S = 1e-4


def _load(root: Path) -> tuple[dict, Any, Any]:
    import pandas as pd

    info = json.loads((root / "meta" / "info.json").read_text())
    tasks = pd.read_parquet(root / "meta" / "tasks.parquet")
    files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
    episodes = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()
    return info, tasks, episodes


def _frame_times(path: Path) -> list[float]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [float(frame.pts * stream.time_base) for frame in container.decode(stream)]


def check_layout(root: str | Path) -> list[str]:
    """The problems of the dataset at `root` (see the module docstring); [] when it is sound."""
    import pyarrow.parquet as pq

    root = Path(root)
    problems: list[str] = []
    try:
        info, tasks, episodes = _load(root)
    except (OSError, ValueError) as error:
        return [f"metadata unreadable: {error}"]
    for key in ("codebase_version", "fps", "features", "data_path", "video_path", "total_episodes", "total_frames", "total_tasks"):
        if key not in info:
            problems.append(f"info.json lacks {key}")
    if problems:
        return problems
    if info["codebase_version"] != "v3.0":
        problems.append(f"codebase_version {info['codebase_version']!r} (want v3.0)")
    fps = float(info["fps"])
    features = info["features"]
    for name, ft in features.items():
        if not {"dtype", "shape", "names"} <= set(ft):
            problems.append(f"feature {name} lacks dtype/shape/names")
    video_keys = [k for k, ft in features.items() if ft.get("dtype") == "video"]
    data_keys = [k for k, ft in features.items() if ft.get("dtype") != "video"]
    if list(tasks.columns) != ["task_index"] or sorted(tasks["task_index"]) != list(range(len(tasks))):
        problems.append(f"tasks.parquet must hold task_index 0..{len(tasks) - 1} indexed by task string, has {list(tasks.columns)}")
    if len(tasks) != info["total_tasks"]:
        problems.append(f"total_tasks {info['total_tasks']} but tasks.parquet has {len(tasks)}")
    if list(episodes.get("episode_index", [])) != list(range(len(episodes))):
        problems.append("meta/episodes episode_index must be 0..E-1 in order")
    if len(episodes) != info["total_episodes"]:
        problems.append(f"total_episodes {info['total_episodes']} but meta/episodes has {len(episodes)}")
    needed = ["episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index", "dataset_to_index"]
    for key in video_keys:
        needed += [f"videos/{key}/chunk_index", f"videos/{key}/file_index", f"videos/{key}/from_timestamp", f"videos/{key}/to_timestamp"]
    missing = [c for c in needed if c not in episodes.columns]
    if missing:
        return problems + [f"meta/episodes lacks columns {missing}"]
    task_names = set(tasks.index)
    expected_from = 0
    data_tables: dict[tuple[int, int], Any] = {}
    video_times: dict[tuple[str, int, int], list[float]] = {}
    for ep in episodes.itertuples(index=False):
        row = ep._asdict() if hasattr(ep, "_asdict") else dict(ep)
        row = dict(zip(episodes.columns, ep))
        e = int(row["episode_index"])
        if int(row["dataset_from_index"]) != expected_from or int(row["dataset_to_index"]) - int(row["dataset_from_index"]) != int(row["length"]):
            problems.append(f"episode {e}: dataset_from/to_index not contiguous with length {row['length']}")
        expected_from = int(row["dataset_to_index"])
        if not set(row["tasks"]) <= task_names:
            problems.append(f"episode {e}: tasks {list(row['tasks'])} not all in tasks.parquet")
        key = (int(row["data/chunk_index"]), int(row["data/file_index"]))
        if key not in data_tables:
            path = root / info["data_path"].format(chunk_index=key[0], file_index=key[1])
            try:
                data_tables[key] = pq.read_table(path).to_pandas()
            except (OSError, ValueError) as error:
                problems.append(f"episode {e}: data file {path} unreadable ({error})")
                continue
            if sorted(data_tables[key].columns) != sorted(data_keys):
                problems.append(f"{path}: columns {sorted(data_tables[key].columns)} differ from the non-video features {sorted(data_keys)}")
        frames = data_tables[key]
        mine = frames[frames["episode_index"] == e]
        n = int(row["length"])
        if len(mine) != n:
            problems.append(f"episode {e}: {len(mine)} data rows, length says {n}")
            continue
        if list(mine["index"]) != list(range(int(row["dataset_from_index"]), int(row["dataset_to_index"]))):
            problems.append(f"episode {e}: index column is not dataset_from_index..dataset_to_index")
        if list(mine["frame_index"]) != list(range(n)) or not np.allclose(mine["timestamp"].to_numpy(), np.arange(n) / fps, atol=1e-5):
            problems.append(f"episode {e}: frame_index/timestamp are not 0..n-1 and frame_index / fps")
        if not set(mine["task_index"]) <= set(tasks["task_index"]):
            problems.append(f"episode {e}: task_index outside tasks.parquet")
        for vk in video_keys:
            vkey = (vk, int(row[f"videos/{vk}/chunk_index"]), int(row[f"videos/{vk}/file_index"]))
            if vkey not in video_times:
                path = root / info["video_path"].format(video_key=vk, chunk_index=vkey[1], file_index=vkey[2])
                try:
                    video_times[vkey] = _frame_times(path)
                except Exception as error:  # any decoder failure means the same: not a usable video
                    problems.append(f"episode {e}: video {path} does not decode ({error})")
                    video_times[vkey] = []
                    continue
            times = np.asarray(video_times[vkey])
            start = float(row[f"videos/{vk}/from_timestamp"])
            queries = start + np.arange(n) / fps
            if len(times) == 0:
                continue
            gaps = np.abs(times[None, :] - queries[:, None]).min(axis=1)
            if gaps.max() > TOLERANCE_S:
                problems.append(f"episode {e}: video frames miss their timestamps by up to {gaps.max():.6f} s (> {TOLERANCE_S})")
            if float(row[f"videos/{vk}/to_timestamp"]) - start - n / fps > TOLERANCE_S:
                problems.append(f"episode {e}: to_timestamp does not match length / fps")
    if expected_from != info["total_frames"]:
        problems.append(f"total_frames {info['total_frames']} but episodes cover {expected_from}")
    try:
        stats = json.loads((root / "meta" / "stats.json").read_text())
    except (OSError, ValueError) as error:
        return problems + [f"meta/stats.json unreadable ({error})"]
    for name, ft in features.items():
        if ft["dtype"] in ("string",):
            continue
        if name not in stats or not {"min", "max", "mean", "std", "count"} <= set(stats[name]):
            problems.append(f"stats.json lacks min/max/mean/std/count for {name}")
    return problems


def read_item(root: str | Path, index: int) -> dict:
    """Frame `index` (global) as LeRobotDataset.__getitem__ builds it: data columns, `task`, and the
    video frame (uint8 [H, W, 3]) decoded at the episode's from_timestamp + timestamp."""
    import av
    import pyarrow.parquet as pq

    root = Path(root)
    info, tasks, episodes = _load(root)
    hits = episodes[(episodes["dataset_from_index"] <= index) & (episodes["dataset_to_index"] > index)]
    if hits.empty:
        raise IndexError(f"index {index} outside the dataset's {info['total_frames']} frames")
    ep = hits.iloc[0]
    data = pq.read_table(root / info["data_path"].format(chunk_index=int(ep["data/chunk_index"]), file_index=int(ep["data/file_index"]))).to_pandas()
    row = data[data["index"] == index].iloc[0].to_dict()
    row["task"] = tasks.iloc[int(row["task_index"])].name
    for vk in [k for k, ft in info["features"].items() if ft["dtype"] == "video"]:
        path = root / info["video_path"].format(video_key=vk, chunk_index=int(ep[f"videos/{vk}/chunk_index"]), file_index=int(ep[f"videos/{vk}/file_index"]))
        query = float(ep[f"videos/{vk}/from_timestamp"]) + float(row["timestamp"])
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            best = None
            for frame in container.decode(stream):
                t = float(frame.pts * stream.time_base)
                if abs(t - query) <= TOLERANCE_S:
                    best = frame.to_ndarray(format="rgb24")
                    break
        if best is None:
            raise ValueError(f"{path}: no frame within {TOLERANCE_S} s of {query:.4f} s")
        row[vk] = best
    return row
