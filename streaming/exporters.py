"""Export a recorded episode to the formats trainers read, and read the LeRobot export back.

    export_episode(Episode.open("recordings/ab12cd-000"), "re10k", "out/")

Formats (files written under the output folder):
- `re10k`: `<episode>.txt`, RealEstate10K / CameraCtrl layout (line 1 a URL, then per frame
  `timestamp_us fx/W fy/H cx/W cy/H 0 0` and the row-major 3x4 world-to-camera matrix), via
  `controls.formats.write_re10k` (scene_scale 1: file units are metres).
- `sana-bench`: `<episode>.npz` (`c2w` [F, 4, 4], `intrinsics` [F, 3, 3], `width`, `height`, `fps`)
  via `controls.formats.write_sana_bench`, plus `<episode>.png`, the start image.
- `nerfstudio`: `transforms.json` (OpenGL camera axes) via `controls.formats.write_nerfstudio` and
  the frames it names, `images/frame_NNNNN.png`.
- `lerobot`: a LeRobot v3.0 dataset of one episode written with pyarrow and PyAV:
  `meta/info.json`, `meta/stats.json`, `meta/tasks.parquet`, `meta/episodes/chunk-000/file-000.parquet`,
  `data/chunk-000/file-000.parquet`, `videos/observation.images.cam/chunk-000/file-000.mp4`.
  `meta/tasks.parquet` is written by pandas as lerobot writes it: a `task_index` column indexed by the
  task string (lerobot names each item's task by that index).
  `observation.state` = [x, y, z, qx, qy, qz, qw] (c2w position in metres and rotation quaternion);
  `action` = [vx, vy, vz] body velocity (m/s, camera axes, forward difference of positions),
  [yaw_rate, pitch_rate] (deg/s, forward difference), then the 10 key bits of
  `controls.integrator.Key` as 0/1. The last frame repeats the previous frame's rates.
  `info.json["roam"]` keeps the intrinsics and conventions (`read_lerobot` returns them).

Everything is written into a temporary folder beside the output and renamed into place when
complete, so a failed export leaves nothing behind; an existing non-empty output folder is refused.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from streaming.episode import Episode, EpisodeError

FORMATS = ("re10k", "sana-bench", "nerfstudio", "lerobot")
LEROBOT_VIDEO_KEY = "observation.images.cam"
KEY_NAMES = ("forward", "back", "left", "right", "up", "down", "roll_left", "roll_right", "sprint", "slow")
STATE_NAMES = ["x", "y", "z", "qx", "qy", "qz", "qw"]
ACTION_NAMES = ["vx", "vy", "vz", "yaw_rate", "pitch_rate", *(f"key_{k}" for k in KEY_NAMES)]
TASK = "explore the generated world"


def export_episode(episode: Episode, fmt: str, out: str | Path) -> Path:
    """Write `episode` in format `fmt` into the folder `out` (created; must be absent or empty)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"output {out} already exists and is not an empty folder")
    if episode.n_frames < 2:
        raise EpisodeError(f"{episode.folder}: {episode.n_frames} frames; an export needs at least 2")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.export-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        WRITERS[fmt](episode, tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _re10k(episode: Episode, out: Path) -> None:
    from controls.formats import write_re10k

    write_re10k(episode.trajectory_data(), out / f"{episode.name}.txt")


def _sana_bench(episode: Episode, out: Path) -> None:
    from PIL import Image

    from controls.formats import write_sana_bench

    write_sana_bench(episode.trajectory_data(), out / f"{episode.name}.npz")
    Image.fromarray(episode.start_image()).save(out / f"{episode.name}.png")


def _nerfstudio(episode: Episode, out: Path) -> None:
    from PIL import Image

    from controls.formats import write_nerfstudio

    frames = episode.read_video()
    (out / "images").mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(out / "images" / f"frame_{i:05d}.png")
    write_nerfstudio(episode.trajectory_data(), out / "transforms.json")


def state_and_action(world_T_cams: np.ndarray, keys: np.ndarray, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame LeRobot state [F, 7] and action [F, 15] (see the module docstring)."""
    from scipy.spatial.transform import Rotation

    from controls.camera import ypr_from_rotation

    n = len(world_T_cams)
    position = world_T_cams[:, :3, 3]  # [F, 3]
    quat = Rotation.from_matrix(world_T_cams[:, :3, :3]).as_quat()  # [F, 4] x y z w
    state = np.concatenate([position, quat], axis=1)
    v_world = np.diff(position, axis=0) * fps  # [F-1, 3]
    ypr = np.array([ypr_from_rotation(p[:3, :3]) for p in world_T_cams])  # [F, 3] radians
    # Angle differences wrapped to (-pi, pi] so a turn through +-180 deg is not a jump.
    d_angles = (np.diff(ypr[:, :2], axis=0) + np.pi) % (2 * np.pi) - np.pi  # [F-1, 2]
    rates = np.degrees(d_angles) * fps
    v_body = np.einsum("fji,fj->fi", world_T_cams[:-1, :3, :3], v_world)  # R^T v, [F-1, 3]
    motion = np.concatenate([v_body, rates], axis=1)  # [F-1, 5]
    motion = np.concatenate([motion, motion[-1:]], axis=0) if n > 1 else np.zeros((1, 5))
    bits = (keys[:, None] >> np.arange(len(KEY_NAMES))[None]) & 1  # [F, 10]
    action = np.concatenate([motion, bits], axis=1)
    return state.astype(np.float32), action.astype(np.float32)


def _stats(values: np.ndarray) -> dict:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    return {
        "min": values.min(0).tolist(),
        "max": values.max(0).tolist(),
        "mean": values.mean(0).tolist(),
        "std": values.std(0).tolist(),
        "count": [len(values)],
    }


def lerobot_features(height: int, width: int, fps: float, string_columns: tuple[str, ...] = ()) -> dict[str, dict]:
    """LeRobot v3 `info.json` features of a roam episode's frames: the H.264 video, the camera state and
    the applied action, LeRobot's index columns, then `string_columns` (one string per frame)."""
    scalar = {"shape": [1], "names": None}
    return {
        LEROBOT_VIDEO_KEY: {
            "dtype": "video", "shape": [height, width, 3], "names": ["height", "width", "channels"],
            "info": {"video.height": height, "video.width": width, "video.codec": "h264", "video.pix_fmt": "yuv420p",
                     "video.is_depth_map": False, "video.fps": fps, "video.channels": 3, "has_audio": False},
        },
        "observation.state": {"dtype": "float32", "shape": [len(STATE_NAMES)], "names": STATE_NAMES},
        "action": {"dtype": "float32", "shape": [len(ACTION_NAMES)], "names": ACTION_NAMES},
        "timestamp": {"dtype": "float32", **scalar},
        "frame_index": {"dtype": "int64", **scalar},
        "episode_index": {"dtype": "int64", **scalar},
        "index": {"dtype": "int64", **scalar},
        "task_index": {"dtype": "int64", **scalar},
        **{name: {"dtype": "string", **scalar} for name in string_columns},
    }


def _lerobot(episode: Episode, out: Path) -> None:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from streaming.recorder import concat_segments

    n, fps = episode.n_frames, episode.fps
    state, action = state_and_action(episode.world_T_cams, episode.keys, fps)
    timestamps = episode.timestamps.astype(np.float32)
    frames = episode.read_video()

    data_dir = out / "data" / "chunk-000"
    video_dir = out / "videos" / LEROBOT_VIDEO_KEY / "chunk-000"
    episodes_dir = out / "meta" / "episodes" / "chunk-000"
    for d in (data_dir, video_dir, episodes_dir):
        d.mkdir(parents=True)
    # The recorded H.264 packets, unchanged (complete episodes have video.mp4, others their segments).
    video = episode.folder / "video.mp4"
    if episode.complete and video.is_file():
        shutil.copyfile(video, video_dir / "file-000.mp4")
    else:
        concat_segments(episode.segment_paths(), video_dir / "file-000.mp4")

    index = np.arange(n, dtype=np.int64)
    table = pa.table({
        "observation.state": pa.array(list(state), type=pa.list_(pa.float32(), 7)),
        "action": pa.array(list(action), type=pa.list_(pa.float32(), len(ACTION_NAMES))),
        "timestamp": pa.array(timestamps, type=pa.float32()),
        "frame_index": pa.array(index),
        "episode_index": pa.array(np.zeros(n, np.int64)),
        "index": pa.array(index),
        "task_index": pa.array(np.zeros(n, np.int64)),
    })
    pq.write_table(table, data_dir / "file-000.parquet")
    # As lerobot writes and reads it: a pandas frame of task_index whose index is the task string
    # (LeRobotDataset gives each item `tasks.iloc[task_index].name`).
    pd.DataFrame({"task_index": [0]}, index=pd.Index([TASK], name="task")).to_parquet(out / "meta" / "tasks.parquet")
    duration = float(n / fps)
    pq.write_table(pa.table({
        "episode_index": pa.array([0], pa.int64()),
        "tasks": pa.array([[TASK]]),
        "length": pa.array([n], pa.int64()),
        "data/chunk_index": pa.array([0], pa.int64()),
        "data/file_index": pa.array([0], pa.int64()),
        "dataset_from_index": pa.array([0], pa.int64()),
        "dataset_to_index": pa.array([n], pa.int64()),
        f"videos/{LEROBOT_VIDEO_KEY}/chunk_index": pa.array([0], pa.int64()),
        f"videos/{LEROBOT_VIDEO_KEY}/file_index": pa.array([0], pa.int64()),
        f"videos/{LEROBOT_VIDEO_KEY}/from_timestamp": pa.array([0.0]),
        f"videos/{LEROBOT_VIDEO_KEY}/to_timestamp": pa.array([duration]),
        "meta/episodes/chunk_index": pa.array([0], pa.int64()),
        "meta/episodes/file_index": pa.array([0], pa.int64()),
        "roam/source_episode": pa.array([episode.name]),
    }), episodes_dir / "file-000.parquet")

    h, w = episode.height, episode.width
    info = {
        "codebase_version": "v3.0",
        "robot_type": "roam_camera",
        "total_episodes": 1,
        "total_frames": n,
        "total_tasks": 1,
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 500,
        "fps": fps,
        "splits": {"train": "0:1"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": lerobot_features(h, w, fps),
        "roam": {
            "source_episode": episode.name,
            "intrinsics": episode.intrinsics[0].tolist(),
            "width": w,
            "height": h,
            "conventions": episode.meta.get("conventions"),
        },
    }
    (out / "meta" / "info.json").write_text(json.dumps(info, indent=1))
    pixels = frames.reshape(-1, 3).astype(np.float64) / 255.0  # [F*H*W, 3]
    image_stats = {k: [[[v]] for v in vals] for k, vals in _stats(pixels).items() if k != "count"}
    image_stats["count"] = [n]
    stats = {
        "observation.state": _stats(state),
        "action": _stats(action),
        "timestamp": _stats(timestamps),
        "frame_index": _stats(index),
        "episode_index": _stats(np.zeros(n)),
        "index": _stats(index),
        "task_index": _stats(np.zeros(n)),
        LEROBOT_VIDEO_KEY: image_stats,
    }
    (out / "meta" / "stats.json").write_text(json.dumps(stats, indent=1))


def read_lerobot(root: str | Path) -> dict:
    """Read a LeRobot v3.0 export back: {"world_T_cams" [F, 4, 4], "intrinsics" [4], "width", "height",
    "fps", "state" [F, 7], "action" [F, 15], "timestamps" [F], "tasks" [F] (each frame's task string,
    looked up as lerobot does), "video" path}. ValueError if malformed."""
    import pandas as pd
    import pyarrow.parquet as pq
    from scipy.spatial.transform import Rotation

    root = Path(root)
    info_path = root / "meta" / "info.json"
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{info_path}: not a readable LeRobot info.json ({error})") from None
    if info.get("codebase_version") != "v3.0":
        raise ValueError(f"{info_path}: codebase_version {info.get('codebase_version')!r}, this reader knows v3.0")
    data_path = root / info["data_path"].format(chunk_index=0, file_index=0)
    table = pq.read_table(data_path)
    state = np.asarray(table.column("observation.state").to_pylist(), dtype=np.float64)  # [F, 7]
    action = np.asarray(table.column("action").to_pylist(), dtype=np.float64)
    if state.ndim != 2 or state.shape[1] != 7:
        raise ValueError(f"{data_path}: observation.state must be [F, 7], got {state.shape}")
    poses = np.tile(np.eye(4), (len(state), 1, 1))
    poses[:, :3, :3] = Rotation.from_quat(state[:, 3:]).as_matrix()
    poses[:, :3, 3] = state[:, :3]
    tasks = pd.read_parquet(root / "meta" / "tasks.parquet")
    task_index = table.column("task_index").to_pylist()
    if not all(isinstance(t, int) and 0 <= t < len(tasks) for t in task_index):
        raise ValueError(f"{data_path}: task_index values must be in [0, {len(tasks)}), the rows of meta/tasks.parquet")
    extra = info.get("roam", {})
    video = root / info["video_path"].format(video_key=LEROBOT_VIDEO_KEY, chunk_index=0, file_index=0)
    return {
        "world_T_cams": poses,
        "intrinsics": np.asarray(extra.get("intrinsics"), dtype=np.float64),
        "width": extra.get("width"),
        "height": extra.get("height"),
        "fps": float(info["fps"]),
        "state": state,
        "action": action,
        "timestamps": np.asarray(table.column("timestamp").to_pylist()),
        "tasks": [tasks.iloc[t].name for t in task_index],
        "video": video,
    }


WRITERS = {"re10k": _re10k, "sana-bench": _sana_bench, "nerfstudio": _nerfstudio, "lerobot": _lerobot}
