"""Synthetic episodes for the recording tests: frames whose brightness encodes their index."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from streaming.recorder import EpisodeWriter, RecordedFrame

W, H, FPS = 64, 48, 16.0
K = (60.0, 60.0, 32.0, 24.0)


def frame_image(index: int) -> np.ndarray:
    """A flat frame whose grey level (10 + 7·index mod 230) survives H.264 to within a few levels."""
    return np.full((H, W, 3), 10 + (7 * index) % 230, np.uint8)


def pose(index: int) -> np.ndarray:
    """A walk forward while turning right: yaw 2 deg per frame, 0.1 m per frame along the heading."""
    from controls.camera import make_pose, rotation_from_ypr

    yaw = np.radians(2.0 * index)
    return make_pose(rotation_from_ypr(yaw, 0.05, 0.0), [0.1 * index * np.sin(yaw), 0.0, 0.1 * index * np.cos(yaw)])


def chunk(start: int, n: int, chunk_id: int, keys: int = 1) -> list[RecordedFrame]:
    snapshot = {"seq": chunk_id + 1, "client_t_ms": 1000.0 * chunk_id, "keys": keys, "yaw": 0.0, "pitch": 0.0, "roll": 0.0, "dx": 0.0, "dy": 0.0}
    return [RecordedFrame(frame_image(i), pose(i), i, chunk_id, snapshot, 12.5, 30.0) for i in range(start, start + n)]


def write_episode(folder: Path, chunks: int = 4, close: bool = True, meta: dict | None = None) -> EpisodeWriter:
    writer = EpisodeWriter(folder, fps=FPS, intrinsics=K, width=W, height=H, start_image=frame_image(0), meta={"seed": 0, **(meta or {})})
    start = 0
    for c in range(chunks):
        n = 9 if c == 0 else 8
        writer.append_chunk(chunk(start, n, c))
        start += n
    if close:
        writer.close()
    return writer
