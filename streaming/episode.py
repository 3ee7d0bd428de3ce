"""Reading a recorded episode folder (layout: `streaming.recorder`).

    ep = Episode.open("recordings/ab12cd-000")
    ep.world_T_cams [F, 4, 4], ep.intrinsics [F, 4], ep.rows (the frames.jsonl dicts), ep.complete
    ep.read_video() -> uint8 [F, H, W, 3]

An incomplete episode (the recording process died) is read up to its last durable chunk: a
half-written last line and the lines of a chunk whose segment holds more frames than it has lines
are left out, and the video comes from the segments. Anything else that is missing or malformed
raises `EpisodeError` (a ValueError) naming the file, line and value.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streaming.recorder import EPISODE_FORMAT, SEGMENT_DIR

log = logging.getLogger("roam.episode")

_ROW_KEYS = ("index", "frame_id", "chunk_id", "segment", "c2w", "fx", "fy", "cx", "cy", "W", "H")


class EpisodeError(ValueError):
    """A missing, corrupt or inconsistent episode."""


def _video_frames(path: Path) -> np.ndarray:
    import av

    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.error.FFmpegError, IndexError) as error:
        raise EpisodeError(f"{path}: not a readable video ({error})") from None
    if not frames:
        raise EpisodeError(f"{path}: holds no frames")
    return np.stack(frames)  # [F, H, W, 3]


def _segment_length(path: Path) -> int:
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return stream.frames or sum(1 for _ in container.decode(stream))
    except (av.error.FFmpegError, IndexError) as error:
        raise EpisodeError(f"{path}: not a readable video ({error})") from None


@dataclass(frozen=True, eq=False)
class Episode:
    """One episode's metadata and frame records (video decoded on demand)."""

    folder: Path
    meta: dict
    rows: list[dict]

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    @property
    def n_frames(self) -> int:
        return len(self.rows)

    @property
    def fps(self) -> float:
        return float(self.meta["fps"])

    @property
    def width(self) -> int:
        return int(self.meta["width"])

    @property
    def height(self) -> int:
        return int(self.meta["height"])

    @property
    def world_T_cams(self) -> np.ndarray:
        """[F, 4, 4] camera-to-world, OpenCV axes, metres."""
        return np.array([row["c2w"] for row in self.rows], dtype=np.float64)

    @property
    def intrinsics(self) -> np.ndarray:
        """[F, 4] fx, fy, cx, cy in pixels."""
        return np.array([[row["fx"], row["fy"], row["cx"], row["cy"]] for row in self.rows], dtype=np.float64)

    @property
    def timestamps(self) -> np.ndarray:
        """[F] seconds from the episode's first frame."""
        return np.arange(self.n_frames, dtype=np.float64) / self.fps

    @property
    def keys(self) -> np.ndarray:
        """[F] held-key bitmask (controls.integrator.Key) applied for each frame (0 before any input)."""
        return np.array([(row.get("input") or {}).get("keys", 0) for row in self.rows], dtype=np.int64)

    @classmethod
    def open(cls, folder: str | Path) -> Episode:
        """Read and validate an episode folder (EpisodeError if it is missing or corrupt)."""
        root = Path(folder)
        if not root.is_dir():
            raise EpisodeError(f"episode {str(root)!r} does not exist (or is not a folder)")
        meta = _read_meta(root)
        rows = _read_rows(root, meta)
        return cls(root, meta, rows)

    def segment_paths(self) -> list[Path]:
        """The chunk segments holding this episode's frames, in order."""
        used = sorted({row["segment"] for row in self.rows})
        paths = [self.folder / SEGMENT_DIR / f"{s:06d}.mp4" for s in used]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise EpisodeError(f"{self.folder}: frames.jsonl refers to missing segments {missing}")
        return paths

    def read_video(self) -> np.ndarray:
        """uint8 [F, H, W, 3]: video.mp4 of a complete episode, else the durable segments."""
        video = self.folder / "video.mp4"
        if self.complete and video.is_file():
            frames = _video_frames(video)
        else:
            parts = [_video_frames(p) for p in self.segment_paths()]
            frames = np.concatenate(parts) if parts else np.zeros((0, self.height, self.width, 3), np.uint8)
        if len(frames) != self.n_frames:
            raise EpisodeError(f"{self.folder}: the video has {len(frames)} frames but frames.jsonl has {self.n_frames}")
        if frames.shape[1:] != (self.height, self.width, 3):
            raise EpisodeError(f"{self.folder}: video frames are {frames.shape[1:]}, meta says {self.height}x{self.width}")
        return frames

    def start_image(self) -> np.ndarray:
        """start.png as uint8 [H, W, 3]."""
        from PIL import Image, UnidentifiedImageError

        path = self.folder / "start.png"
        try:
            with Image.open(path) as img:
                return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
        except (OSError, UnidentifiedImageError) as error:
            raise EpisodeError(f"{path}: not a readable image ({error})") from None

    def trajectory_data(self):
        """The camera path as `controls.formats.TrajectoryData` (for the trajectory writers)."""
        from controls.formats import TrajectoryData

        if not self.rows:
            raise EpisodeError(f"{self.folder}: no frames to export")
        return TrajectoryData(self.world_T_cams, self.intrinsics, self.width, self.height, self.fps)

    def trajectory(self):
        """The camera path as `controls.trajectory.Trajectory` (for offline generation)."""
        from controls.trajectory import Trajectory

        if not self.rows:
            raise EpisodeError(f"{self.folder}: no frames")
        return Trajectory(self.world_T_cams, self.intrinsics, self.width, self.height, self.fps)

    def lineage(self) -> list[tuple[Episode, int]]:
        """The walk this episode ends: [(episode, frames used)] from the root, following
        `parent_episode` / `branch_from_frame` links through sibling folders."""
        chain: list[tuple[Episode, int]] = [(self, self.n_frames)]
        seen = {self.folder.resolve()}
        current = self
        while current.meta.get("parent_episode"):
            parent_dir = current.folder.parent / str(current.meta["parent_episode"])
            if parent_dir.resolve() in seen:
                raise EpisodeError(f"{current.folder}: parent_episode links form a cycle")
            seen.add(parent_dir.resolve())
            parent = Episode.open(parent_dir)
            cut = int(current.meta.get("branch_from_frame", -1))
            if not 0 <= cut <= parent.n_frames:
                raise EpisodeError(f"{current.folder}: branch_from_frame {cut} is outside the parent's {parent.n_frames} frames")
            chain.append((parent, cut))
            current = parent
        return chain[::-1]


def _read_meta(root: Path) -> dict:
    path = root / "meta.json"
    if not path.is_file():
        raise EpisodeError(f"{root} is not a recorded episode: it has no meta.json")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EpisodeError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != EPISODE_FORMAT:
        raise EpisodeError(f"{path}: not a {EPISODE_FORMAT} meta file (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    for key, kind in (("fps", (int, float)), ("width", int), ("height", int), ("complete", bool)):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool) and kind is not bool:
            raise EpisodeError(f"{path}: {key!r} must be a {kind}, got {meta.get(key)!r}")
    if meta["fps"] <= 0 or meta["width"] <= 0 or meta["height"] <= 0:
        raise EpisodeError(f"{path}: fps, width and height must be positive, got {meta['fps']}, {meta['width']}, {meta['height']}")
    return meta


def _check_row(row: Any, meta: dict, expected_index: int) -> dict:
    if not isinstance(row, dict):
        raise ValueError(f"a frame record must be a JSON object, got {type(row).__name__}")
    missing = [k for k in _ROW_KEYS if k not in row]
    if missing:
        raise ValueError(f"missing keys {missing}")
    c2w = np.asarray(row["c2w"], dtype=np.float64)
    if c2w.shape != (4, 4) or not np.isfinite(c2w).all():
        raise ValueError(f"c2w must be a finite 4x4 matrix, got shape {c2w.shape}")
    if (row["W"], row["H"]) != (meta["width"], meta["height"]):
        raise ValueError(f"frame size {row['W']}x{row['H']} differs from meta's {meta['width']}x{meta['height']}")
    if row["index"] != expected_index:
        raise ValueError(f"index {row['index']} where {expected_index} was expected")
    if not all(isinstance(row[k], (int, float)) and np.isfinite(row[k]) for k in ("fx", "fy", "cx", "cy")):
        raise ValueError("fx fy cx cy must be finite numbers")
    return row


def _read_rows(root: Path, meta: dict) -> list[dict]:
    path = root / "frames.jsonl"
    if not path.is_file():
        raise EpisodeError(f"{root} is not a recorded episode: it has no frames.jsonl")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise EpisodeError(f"{path}: not readable text ({error})") from None
    lines = text.split("\n")
    # A file ending without a newline was cut mid-line by a crash.
    cut_tail = lines[-1] != ""
    if not cut_tail:
        lines.pop()
    rows: list[dict] = []
    for number, line in enumerate(lines, 1):
        last = number == len(lines)
        try:
            row = _check_row(json.loads(line), meta, len(rows))
        except (json.JSONDecodeError, ValueError, TypeError) as error:
            if last and cut_tail and not meta["complete"]:
                log.warning("%s: line %d was cut by a crash; ignored", path, number)
                break
            raise EpisodeError(f"{path}: line {number}: {error}") from None
        if last and cut_tail and not meta["complete"]:
            # A whole JSON object without its newline is still a cut write: the chunk is not durable.
            break
        rows.append(row)
    if meta["complete"]:
        if cut_tail:
            raise EpisodeError(f"{path}: the last line has no newline in an episode marked complete")
        if meta.get("frames") != len(rows):
            raise EpisodeError(f"{path}: {len(rows)} frame lines but meta.json says {meta.get('frames')}")
        return rows
    # Incomplete: keep whole chunks only (the last chunk's lines may be cut short).
    if rows:
        last_segment = rows[-1]["segment"]
        seg_path = root / SEGMENT_DIR / f"{last_segment:06d}.mp4"
        have = sum(1 for row in rows if row["segment"] == last_segment)
        if not seg_path.is_file() or _segment_length(seg_path) != have:
            rows = [row for row in rows if row["segment"] != last_segment]
    return rows
