"""Episode recorder: what a consenting user saw and did, written so that a crash loses at most a chunk.

Episode folder layout (read back by `streaming.episode.Episode`):
- `meta.json`: conventions and units, fps, resolution, intrinsics, model and checkpoint id, seed,
  start-image sha256, app version, session id, branch links, and `complete`. Written (atomically,
  temp file + rename) when the episode opens with `complete: false`, rewritten with
  `complete: true`, `frames` and `chunks` by `close()`.
- `start.png`: the image the episode's frame 0 continues from (the walk's start image when the
  episode begins at the walk's first frame, else the episode's first frame; `meta.start_png` says which).
- `segments/NNNNNN.mp4`: one H.264 (libx264, yuv420p) file per chunk, written to a temp name and
  renamed when complete, so a segment on disk is always whole.
- `frames.jsonl`: one JSON line per frame, appended after the chunk's segment is renamed, then
  flushed and fsynced. Fields: `index` (in the episode), `t` (seconds = index / fps), `wall_time`
  (unix seconds), `frame_id`, `chunk_id` (session-wide ids), `segment`, `c2w` (4x4, camera-to-world,
  OpenCV axes, metres), `fx fy cx cy` (pixels), `W H`, `input` (the snapshot applied for the chunk:
  `seq`, `client_t_ms`, `keys`, `yaw pitch roll` degrees, `dx dy` pixels; null before any input)
  and `latency` (`chunk_ms`: generation time of the frame's chunk; `input_to_frame_ms`: from the
  input's arrival at the server to the frame being produced, null without input).
- `events.jsonl`: every message the page sent while recording (raw input as the human timed it,
  before chunk sampling), one JSON line each: `server_t` (unix seconds at arrival), `type` (the
  protocol's message type) and the message's fields (`input`: `seq`, `t` client ms, `keys`, `yaw
  pitch roll` degrees, `dx dy` pixels; control messages: theirs). Lines are flushed as they come and
  fsynced with each chunk's lines, so a crash loses at most the events since the last chunk.
  Events that arrive after consent and before the episode's first chunk open the episode with it.
  `meta.events` counts the lines written; `meta.events_dropped` the ones a full backlog refused.
- `video.mp4`: written by `close()` by remuxing the segments (no re-encode, same packets). A
  killed process leaves no `video.mp4`; the reader then plays the segments.

Why segments and not one fragmented mp4: libx264 holds frames back (lookahead, B-frames) and a
fragment is only written at the next keyframe, so flushing a single file per chunk needs encoder
restarts anyway; a closed file per chunk renamed into place survives `kill -9` with no partial
state to repair. A chunk is durable once its lines are fsynced: the lines are written after the
segment, so the reader trusts lines, and segments without lines (killed in between) are ignored.

Branches (rewind): rewinding closes the current episode and opens a new one whose meta has
`parent_episode` (the parent's folder name) and `branch_from_frame`: the number of the parent's
frames that precede the branch (the branch's frame 0 follows the parent's frame
`branch_from_frame - 1`). The parent stays as recorded; the branch's walk is the parent's frames
`[0, branch_from_frame)` followed by its own (`Episode.lineage`).
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.video import write_mp4

log = logging.getLogger("roam.recorder")

EPISODE_FORMAT = "roam.episode"
EPISODE_VERSION = 1


def app_version() -> str:
    """roam's version from pyproject.toml ("unknown" where the source tree is not at hand)."""
    import tomllib

    try:
        with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


CONVENTIONS = {
    "camera_axes": "opencv (x right, y down, z forward)",
    "pose": "c2w: camera-to-world 4x4",
    "world": "gravity-aligned, +y down",
    "units": "metres, seconds; angles in degrees; intrinsics in pixels",
    "scene_scale": 1.0,
}
SEGMENT_DIR = "segments"
EVENTS_FILE = "events.jsonl"
# meta.json fields the recorder owns; `meta` arguments and tags may not set them.
OWN_META_FIELDS = frozenset({"format", "version", "complete", "frames", "chunks", "fps", "width", "height", "intrinsics", "conventions", "created", "closed", "events", "events_dropped"})
# Page messages queued for the writer before new ones are refused (counted in meta.events_dropped).
MAX_PENDING_EVENTS = 20_000
_EPISODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class RecordedFrame:
    """One frame as the recorder stores it."""

    image: np.ndarray  # [H, W, 3] uint8
    world_T_cam: np.ndarray  # [4, 4]
    frame_id: int
    chunk_id: int
    input: dict | None = None
    chunk_ms: float = 0.0
    input_to_frame_ms: float | None = None


def image_sha256(image: np.ndarray) -> str:
    """sha256 of an image's raw uint8 RGB bytes, prefixed with its shape (H x W)."""
    h = hashlib.sha256(f"{image.shape[0]}x{image.shape[1]}:".encode())
    h.update(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
    return h.hexdigest()


def input_record(snapshot: Any) -> dict | None:
    """A `controls.integrator.InputSnapshot` as the jsonl `input` object (None stays None)."""
    if snapshot is None:
        return None
    return {
        "seq": int(snapshot.seq),
        "client_t_ms": float(snapshot.client_time_ms),
        "keys": int(snapshot.keys),
        "yaw": snapshot.yaw_deg,
        "pitch": snapshot.pitch_deg,
        "roll": snapshot.roll_deg,
        "dx": float(snapshot.look_dx_px),
        "dy": float(snapshot.look_dy_px),
    }


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temp file, fsync it, rename it over `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def concat_segments(segments: Sequence[Path], out: Path) -> int:
    """Remux H.264 mp4 segments, in order, into one mp4 (same packets, timestamps shifted so the
    segments play back to back). Returns the number of packets; temp file renamed when complete."""
    import av

    if not segments:
        raise ValueError(f"no segments to join into {out}")
    tmp = out.with_name(f".{out.name}.tmp")
    packets = 0
    try:
        with av.open(str(tmp), mode="w", format="mp4") as dst:
            out_stream = None
            offset = 0
            for seg in segments:
                with av.open(str(seg)) as src:
                    in_stream = src.streams.video[0]
                    if out_stream is None:
                        out_stream = dst.add_stream_from_template(in_stream)
                    last = offset
                    frame_ticks = round(1 / (in_stream.time_base * in_stream.average_rate)) if in_stream.average_rate else 1
                    for packet in src.demux(in_stream):
                        if packet.dts is None:
                            continue
                        packet.pts = (packet.pts if packet.pts is not None else packet.dts) + offset
                        packet.dts += offset
                        last = max(last, packet.pts + (packet.duration or frame_ticks))
                        packet.stream = out_stream
                        dst.mux(packet)
                        packets += 1
                    offset = last
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return packets


class EpisodeWriter:
    """Writes one episode folder chunk by chunk (one thread at a time).

    Args:
        folder: the episode folder; must not exist yet.
        fps: frame rate of the walk.
        intrinsics: (fx, fy, cx, cy) in pixels at the frame size.
        width, height: frame size in pixels (even: yuv420p).
        start_image: uint8 [H, W, 3] saved as start.png.
        meta: extra meta.json fields (model, checkpoint, seed, session_id, start_image_sha256,
            parent_episode, branch_from_frame, ...); they may not override the recorder's own.
    """

    def __init__(self, folder: str | Path, *, fps: float, intrinsics: Sequence[float], width: int, height: int, start_image: np.ndarray, meta: dict | None = None):
        folder = Path(folder)
        if not _EPISODE_NAME.match(folder.name):
            raise ValueError(f"episode folder name {folder.name!r} must be 1-128 of [A-Za-z0-9_.-], not starting with . _ or -")
        if folder.exists():
            raise ValueError(f"episode folder {folder} already exists")
        if not (np.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be positive and finite, got {fps!r}")
        if width % 2 or height % 2 or width < 2 or height < 2:
            raise ValueError(f"frame size {width}x{height} must be even (H.264 yuv420p)")
        intrinsics = tuple(float(v) for v in intrinsics)
        if len(intrinsics) != 4 or not all(np.isfinite(intrinsics)) or min(intrinsics[:2]) <= 0:
            raise ValueError(f"intrinsics must be (fx, fy, cx, cy) with fx, fy > 0, got {intrinsics}")
        if start_image.dtype != np.uint8 or start_image.shape != (height, width, 3):
            raise ValueError(f"start_image must be uint8 [{height}, {width}, 3], got {start_image.dtype} {start_image.shape}")
        own = OWN_META_FIELDS
        clash = sorted(own & set(meta or {}))
        if clash:
            raise ValueError(f"meta may not set the recorder's own fields {clash}")
        self.folder = folder
        self.fps = float(fps)
        self.width, self.height = int(width), int(height)
        self.intrinsics = intrinsics
        self.frames_written = 0
        self.chunks_written = 0
        self.closed = False
        self.meta: dict[str, Any] = {
            "format": EPISODE_FORMAT,
            "version": EPISODE_VERSION,
            "complete": False,
            "conventions": CONVENTIONS,
            "fps": self.fps,
            "width": self.width,
            "height": self.height,
            "intrinsics": {"fx": intrinsics[0], "fy": intrinsics[1], "cx": intrinsics[2], "cy": intrinsics[3]},
            "app_version": app_version(),
            "created": time.time(),
            "frames": 0,
            "chunks": 0,
            **(meta or {}),
        }
        from PIL import Image

        (folder / SEGMENT_DIR).mkdir(parents=True)
        Image.fromarray(start_image).save(folder / "start.png")
        write_json_atomic(folder / "meta.json", self.meta)
        self._lines = open(folder / "frames.jsonl", "a")
        self._events = None
        self.events_written = 0

    def append_events(self, records: Sequence[dict]) -> None:
        """Append page messages to events.jsonl (flushed now, fsynced with the next chunk)."""
        if self.closed or not records:
            return
        if self._events is None:
            self._events = open(self.folder / EVENTS_FILE, "a")
        self._events.write("".join(json.dumps(r, allow_nan=False) + "\n" for r in records))
        self._events.flush()
        self.events_written += len(records)

    def update_meta(self, fields: dict) -> None:
        """Merge `fields` into meta.json now (atomically) and at close; the recorder's own fields are refused."""
        clash = sorted(OWN_META_FIELDS & set(fields))
        if clash:
            raise ValueError(f"meta may not set the recorder's own fields {clash}")
        self.meta.update(fields)
        if not self.closed:
            write_json_atomic(self.folder / "meta.json", self.meta)

    @property
    def name(self) -> str:
        return self.folder.name

    def append_chunk(self, frames: Sequence[RecordedFrame]) -> None:
        """Write one chunk: its segment first, then its lines (flushed and fsynced)."""
        if self.closed:
            raise RuntimeError(f"episode {self.folder} is closed")
        if not frames:
            return
        images = np.stack([f.image for f in frames])  # [n, H, W, 3]
        if images.shape[1:] != (self.height, self.width, 3):
            raise ValueError(f"frames are {images.shape[1:]}, the episode records [{self.height}, {self.width}, 3]")
        segment = self.chunks_written
        # Recording runs live beside generation: a faster preset than the offline videos use.
        write_mp4(self.folder / SEGMENT_DIR / f"{segment:06d}.mp4", images, self.fps, crf=18, preset="veryfast")
        now = time.time()
        fx, fy, cx, cy = self.intrinsics
        lines = []
        for i, frame in enumerate(frames):
            index = self.frames_written + i
            row = {
                "index": index,
                "t": index / self.fps,
                "wall_time": now,
                "frame_id": int(frame.frame_id),
                "chunk_id": int(frame.chunk_id),
                "segment": segment,
                "c2w": np.asarray(frame.world_T_cam, dtype=np.float64).tolist(),
                "fx": fx, "fy": fy, "cx": cx, "cy": cy,
                "W": self.width, "H": self.height,
                "input": frame.input,
                "latency": {"chunk_ms": round(float(frame.chunk_ms), 3), "input_to_frame_ms": None if frame.input_to_frame_ms is None else round(float(frame.input_to_frame_ms), 3)},
            }
            lines.append(json.dumps(row, allow_nan=False))
        self._lines.write("\n".join(lines) + "\n")
        self._lines.flush()
        os.fsync(self._lines.fileno())
        if self._events is not None:
            os.fsync(self._events.fileno())
        self.frames_written += len(frames)
        self.chunks_written += 1

    def close(self) -> Path:
        """Join the segments into video.mp4 and mark the episode complete (idempotent)."""
        if self.closed:
            return self.folder
        self.closed = True
        self._lines.close()
        if self._events is not None:
            self._events.flush()
            os.fsync(self._events.fileno())
            self._events.close()
        segments = sorted((self.folder / SEGMENT_DIR).glob("*.mp4"))
        if segments:
            concat_segments(segments, self.folder / "video.mp4")
        self.meta.update(complete=True, frames=self.frames_written, chunks=self.chunks_written, events=self.events_written, closed=time.time())
        write_json_atomic(self.folder / "meta.json", self.meta)
        log.info("episode %s closed: %d frames in %d chunks", self.folder, self.frames_written, self.chunks_written)
        return self.folder


class SessionRecorder:
    """The episodes of one live session: consent-gated, split at resets and rewinds. Thread-safe.

    The generation worker hands each chunk to `on_chunk`; a writer thread of the recorder encodes
    and writes it (a 720p chunk takes a few hundred ms of libx264 on a small CPU, which must not hold
    up generation). Chunks, resets, rewinds and consent withdrawals go through one command list, so
    the writer sees them in the order they happened. Chunks are bounded: when the writer falls
    `max_pending` chunks behind, the worker waits (no frame is dropped from a recording). Control
    commands never wait, so `set_consent` can be called on the event loop and toggles apply in the
    order they are made; repeated withdrawals with no chunk between them are one command, which
    keeps the list bounded. A chunk is recorded when consent is on at the moment it is handed over.
    Consent on opens an episode at the next chunk; consent off, `close()` and resets close it.
    `on_rewind` closes it and makes the next chunk open a branch episode linked to it
    (`parent_episode`, `branch_from_frame`). A write error (full disk) stops recording, logged;
    the walk goes on.

    Args:
        root: the record dir; episodes are `<root>/<UTC time>-<session id>-<n>`.
        session_id: in the folder name and meta.
        fps, intrinsics, width, height: the stream's.
        walk_start_image: the session's start image (start.png of episodes that begin at the walk's frame 0).
        meta: extra meta.json fields (model, checkpoint, seed, ...).
        max_pending: chunks queued for the writer before `on_chunk` waits.
    """

    def __init__(self, root: str | Path, session_id: str, *, fps: float, intrinsics: Sequence[float], width: int, height: int, walk_start_image: np.ndarray, meta: dict | None = None, max_pending: int = 2):
        import threading

        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.root = Path(root)
        self.session_id = session_id
        self.fps, self.intrinsics, self.width, self.height = fps, tuple(intrinsics), width, height
        self.walk_start_image = walk_start_image
        self.base_meta = {"session_id": session_id, "start_image_sha256": image_sha256(walk_start_image), **(meta or {})}
        self.max_pending = max_pending
        # Guards the consent flag, the command list and the counters below.
        self._cond = threading.Condition()
        self._consent = False
        self._closed = False
        self._commands: collections.deque[tuple] = collections.deque()
        self._pending_chunks = 0
        # Commands taken by the writer and not yet finished (flush waits for 0 and an empty list).
        self._busy = 0
        self._thread: threading.Thread | None = None
        # Writer-thread state.
        self._writer: EpisodeWriter | None = None
        # Walk frame index (frames since the walk's last reset) of each frame in the open episode.
        self._walk_frames: list[int] = []
        self._branch: tuple[str, int] | None = None
        # Page messages that came before the episode's first chunk (writer thread), and the tags
        # (`set_tags`) every episode opened from now on carries in its meta.
        self._early_events: collections.deque[dict] = collections.deque(maxlen=MAX_PENDING_EVENTS)
        self._tags: dict[str, Any] = {}
        self._pending_events = 0
        self.events_dropped = 0
        self.episodes: list[Path] = []
        self.failed: BaseException | None = None
        self._count = 0
        self._stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())

    @property
    def consent(self) -> bool:
        return self._consent

    def _start_writer(self) -> None:
        # Called with self._cond held.
        import threading

        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"roam-recorder-{self.session_id}", daemon=True)
            self._thread.start()

    def _post(self, *command: Any) -> None:
        """Queue a control command; never waits. Called with self._cond held."""
        if command == ("stop",) and self._commands and self._commands[-1] == ("stop",):
            return
        self._start_writer()
        self._commands.append(command)
        self._cond.notify_all()

    def set_consent(self, on: bool) -> None:
        """Start (at the next chunk) or stop recording; stopping closes the open episode. Never waits."""
        with self._cond:
            if self._closed:
                return
            self._consent = bool(on)
            # Without a writer thread no episode was ever opened: nothing to stop.
            if not on and self._thread is not None:
                self._post("stop")

    def on_chunk(self, frames: Sequence[RecordedFrame], walk_frame0: int) -> None:
        """Record a chunk whose first frame is frame `walk_frame0` of the walk (worker thread)."""
        if not frames:
            return
        with self._cond:
            # Consent is read again after any wait: a withdrawal made meanwhile counts.
            while self._consent and not self._closed and self._pending_chunks >= self.max_pending and self._thread is not None and self._thread.is_alive():
                self._cond.wait(0.2)
            if not self._consent or self._closed:
                return
            self._pending_chunks += 1
            self._post("chunk", list(frames), walk_frame0)

    def on_event(self, record: dict) -> None:
        """A page message (see `events.jsonl`), recorded only while consent is on. Never waits:
        past MAX_PENDING_EVENTS queued ones it is counted in `events_dropped` instead."""
        with self._cond:
            if not self._consent or self._closed:
                return
            if self._pending_events >= MAX_PENDING_EVENTS:
                self.events_dropped += 1
                return
            self._pending_events += 1
            self._post("event", record)

    def set_tags(self, tags: dict) -> None:
        """Merge `tags` into the meta of the open episode (if any) and of every episode opened later
        (campaign, participant, task, outcome...). Applied in order with chunks and consent. Never waits."""
        clash = sorted(OWN_META_FIELDS & set(tags))
        if clash:
            raise ValueError(f"tags may not set the recorder's own fields {clash}")
        with self._cond:
            if not self._closed:
                self._post("tags", dict(tags))

    def on_reset(self) -> None:
        """The walk restarted: the open episode ends; the next chunk opens an unlinked one."""
        with self._cond:
            if not self._closed:
                self._post("reset")

    def on_rewind(self, walk_frame: int) -> None:
        """The walk went back to walk frame `walk_frame`: the open episode ends, the next one branches off it."""
        with self._cond:
            if not self._closed:
                self._post("rewind", walk_frame)

    def flush(self) -> None:
        """Wait until everything handed over so far is written."""
        with self._cond:
            while self._thread is not None and self._thread.is_alive() and (self._commands or self._busy):
                self._cond.wait(0.2)

    def close(self, timeout: float = 60.0) -> None:
        """End recording for good (session closed): the writer finishes the queue and closes the episode."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._consent = False
            started = self._thread is not None
            if started:
                self._post("close")
        if started:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("[%s] recorder did not finish within %.0f s", self.session_id, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._commands:
                    self._cond.wait()
                command = self._commands.popleft()
                self._busy += 1
            try:
                self._handle(command)
            except Exception as error:
                log.exception("[%s] recording failed; recording stopped", self.session_id)
                self.failed = error
                with self._cond:
                    self._consent = False
                try:
                    self._close_writer()
                except Exception:
                    self._writer = None
            finally:
                with self._cond:
                    self._busy -= 1
                    if command[0] == "chunk":
                        self._pending_chunks -= 1
                    elif command[0] == "event":
                        self._pending_events -= 1
                    self._cond.notify_all()
            if command[0] == "close":
                return

    def _handle(self, command: tuple) -> None:
        kind = command[0]
        if kind == "chunk":
            _, frames, walk_frame0 = command
            if self.failed is not None:
                return
            if self._writer is None:
                self._open(frames[0], walk_frame0)
            self._writer.append_chunk(frames)
            self._walk_frames.extend(range(walk_frame0, walk_frame0 + len(frames)))
        elif kind == "event":
            if self._writer is None:
                self._early_events.append(command[1])
            else:
                self._writer.append_events([command[1]])
        elif kind == "tags":
            self._tags.update(command[1])
            if self._writer is not None:
                self._writer.update_meta(command[1])
        elif kind == "rewind":
            if self._writer is not None:
                kept = sum(1 for f in self._walk_frames if f < command[1])
                self._branch = (self._writer.name, kept)
                self._close_writer()
        elif kind in ("reset", "stop", "close"):
            self._close_writer()
            self._branch = None
            if kind != "reset":
                # Consent withdrawn: what came before belongs to no episode.
                self._early_events.clear()

    def _open(self, first: RecordedFrame, walk_frame0: int) -> None:
        self._count += 1
        folder = self.root / f"{self._stamp}-{self.session_id}-{self._count:03d}"
        meta = {**self.base_meta, **self._tags}
        at_walk_start = walk_frame0 == 0
        meta["start_png"] = "walk_start_image" if at_walk_start else "first_frame"
        meta["walk_frame0"] = walk_frame0
        if self._branch is not None:
            meta["parent_episode"], meta["branch_from_frame"] = self._branch
            self._branch = None
        start = self.walk_start_image if at_walk_start else first.image
        self._writer = EpisodeWriter(folder, fps=self.fps, intrinsics=self.intrinsics, width=self.width, height=self.height, start_image=start, meta=meta)
        self._walk_frames = []
        self._writer.append_events(list(self._early_events))
        self._early_events.clear()
        self.episodes.append(folder)
        log.info("[%s] recording episode %s", self.session_id, folder)

    def _close_writer(self) -> None:
        if self._writer is not None:
            try:
                if self.events_dropped:
                    self._writer.meta["events_dropped"] = self.events_dropped
                self._writer.close()
            finally:
                self._writer = None
                self._walk_frames = []
