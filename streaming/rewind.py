"""Rewind and branch: a bounded ring of chunk-boundary snapshots per session, and the worker job that
keeps it and feeds the recorder.

Before every chunk (after the first of a walk) the job stores a `Boundary`: the generator's
`snapshot()` (StreamState, decoder cache, camera conditioner, RNG, counters; constant-size, so a
snapshot costs the same at minute 10 as at second 2), the pose integrator's state and the pose.
`request_rewind(seconds)` (any thread) is carried out by the worker before its next chunk: the
newest boundary at least `seconds` of generated video back is restored, newer boundaries are
dropped, queued frames are discarded, and the walk carries on from there with the newest input.
A boundary older than the ring can hold is unreachable: the oldest kept one is used. Rewinding to
before the first boundary restarts the walk (a reset). The recorder is told, so the recording keeps
both branches (`streaming.recorder`).

Rewinding is measured in generated frames (the generator's position), not in frames already shown;
the difference is the frames queued for playout (at most `buffer_chunks` chunks).
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from streaming.recorder import RecordedFrame, SessionRecorder, input_record
from streaming.worker import ChunkPlan, InputEnvelope, PendingRequests, StreamJob

log = logging.getLogger("roam.rewind")

# 16 chunks of 8 frames at 16 fps = 8 s of history. Snapshots stay on the model's device; one of the
# tiny model at 160x112 holds about 4 MB (a little less at the default 128x128) (StreamState 3.6 MB + decoder cache + RNG).
DEFAULT_RING_CHUNKS = 16


@runtime_checkable
class SavableIntegrator(Protocol):
    """A pose integrator whose state can be saved at a boundary and restored on rewind."""

    def state(self) -> Any: ...

    def restore(self, state: Any) -> None: ...


@dataclass(frozen=True)
class Boundary:
    """The walk just before one chunk: enough to continue exactly from there."""

    walk_frame: int  # frames generated in this walk before the chunk
    generator: Any  # streaming.generator.GeneratorSnapshot
    integrator: Any  # controls.integrator.IntegratorState (None if the integrator cannot save)
    pose: np.ndarray  # [4, 4] the last pose before the chunk


def snapshot_nbytes(snapshot: Any) -> int:
    """Bytes of tensors held by a generator snapshot (StreamState + decoder cache + RNG)."""
    import torch

    seen: set[int] = set()

    def walk(obj: Any, depth: int = 0) -> int:
        if depth > 8 or id(obj) in seen:
            return 0
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            return obj.numel() * obj.element_size()
        if isinstance(obj, np.ndarray):
            return obj.nbytes
        if isinstance(obj, (list, tuple)):
            return sum(walk(x, depth + 1) for x in obj)
        if isinstance(obj, dict):
            return sum(walk(x, depth + 1) for x in obj.values())
        if isinstance(obj, torch.nn.Module):
            return 0
        if hasattr(obj, "__dict__"):
            return sum(walk(x, depth + 1) for x in vars(obj).values())
        if hasattr(obj, "__dataclass_fields__"):
            return sum(walk(getattr(obj, f), depth + 1) for f in obj.__dataclass_fields__)
        return 0

    state = getattr(snapshot, "state", None)
    total = state.nbytes() if hasattr(state, "nbytes") else walk(state)
    seen.add(id(state))
    return total + walk(getattr(snapshot, "decoder", None)) + walk(getattr(snapshot, "conditioner", None)) + walk(getattr(snapshot, "rng_state", None))


class RewindableJob(StreamJob):
    """A `StreamJob` with a snapshot ring (rewind) and an optional `SessionRecorder`.

    Args (besides StreamJob's):
        ring_chunks: boundaries kept (the rewind horizon is about ring_chunks chunks).
        recorder: records each chunk when the user consents; told about resets and rewinds.
        on_rewound: called (worker thread) with (seconds_back, walk_frame) after a rewind.
    """

    def __init__(self, *args: Any, ring_chunks: int = DEFAULT_RING_CHUNKS, recorder: SessionRecorder | None = None, on_rewound: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if ring_chunks < 1:
            raise ValueError(f"ring_chunks must be >= 1, got {ring_chunks}")
        self.ring: collections.deque[Boundary] = collections.deque(maxlen=ring_chunks)
        self.recorder = recorder
        self.on_rewound = on_rewound
        self._rewind_pending: float | None = None
        self._arrivals: collections.OrderedDict[int, float] = collections.OrderedDict()
        self.rewinds = 0

    def submit_input(self, envelope: InputEnvelope) -> bool:
        accepted = super().submit_input(envelope)
        if accepted:
            with self._lock:
                self._arrivals[envelope.seq] = time.monotonic()
                while len(self._arrivals) > 256:
                    self._arrivals.popitem(last=False)
        return accepted

    def release(self) -> None:
        super().release()
        self.ring.clear()

    def request_rewind(self, seconds: float) -> None:
        """Go back `seconds` of generated video before the next chunk (any thread)."""
        if not (isinstance(seconds, (int, float)) and np.isfinite(seconds) and seconds > 0):
            raise ValueError(f"rewind seconds must be a positive number, got {seconds!r}")
        with self._lock:
            pending = self._pending
            self._pending = dataclasses.replace(pending, rewind_s=float(seconds) + (pending.rewind_s or 0.0))
            self.paused = False

    def _walk_frame(self) -> int:
        return int(self.generator.frame_index) if self.generator.started else 0

    def _apply(self, requests: PendingRequests) -> None:
        """A reset opens a new episode; a rewind restores a boundary (or restarts the walk); then the
        boundary before this chunk joins the ring. Requests arrive whole (`PendingRequests`), so a
        reset and a rewind posted together are one reset."""
        restart = requests.reset
        if requests.reset:
            self.ring.clear()
            if self.recorder is not None:
                self.recorder.on_reset()
        elif requests.rewind_s is not None and self.generator.started:
            restart = self._rewind(requests.rewind_s)
        super()._apply(dataclasses.replace(requests, reset=restart))
        if restart:
            # The chunk about to run starts a walk: older boundaries are another walk's.
            self.ring.clear()
        elif self.generator.chunk_index > 0:
            state = self.integrator.state() if isinstance(self.integrator, SavableIntegrator) else None
            self.ring.append(Boundary(self._walk_frame(), self.generator.snapshot(), state, self.last_pose.copy()))

    def end_chunk(self, plan: ChunkPlan, images: np.ndarray, chunk_ms: float) -> list:
        frames = super().end_chunk(plan, images, chunk_ms)
        if self.recorder is not None:
            self._record(frames, plan.walk_frame0)
        return frames

    def _record(self, frames: list, walk_frame0: int) -> None:
        envelope = self.applied_input
        snapshot = envelope.snapshot if envelope is not None else None
        with self._lock:
            arrival = self._arrivals.get(envelope.seq) if snapshot is not None else None
        records = [
            RecordedFrame(
                image=f.image,
                world_T_cam=f.world_T_cam,
                frame_id=f.frame_id,
                chunk_id=f.chunk_id,
                input=input_record(snapshot),
                chunk_ms=f.chunk_ms,
                input_to_frame_ms=None if arrival is None else (f.produced_t - arrival) * 1e3,
            )
            for f in frames
        ]
        try:
            self.recorder.on_chunk(records, walk_frame0)
        except Exception:
            # A full disk must not end the walk: stop recording and say so in the log.
            log.exception("[%s] recording failed; recording stopped", self.session_id)
            self.recorder.set_consent(False)

    def _rewind(self, seconds: float) -> bool:
        """Restore the newest boundary at least `seconds` back; True when that is the walk's start
        (the caller restarts the walk)."""
        now = self._walk_frame()
        target = now - round(seconds * self.fps)
        restart = not self.ring or target <= 0 and self.ring[0].walk_frame > target
        if restart:
            # Nothing to go back to but the walk's start: start it again.
            self.ring.clear()
            walk_frame = 0
        else:
            chosen = None
            while self.ring and self.ring[-1].walk_frame > target:
                chosen = self.ring.pop()
            if self.ring:
                chosen = self.ring.pop()
            self.generator.restore(chosen.generator)
            if chosen.integrator is not None:
                self.integrator.restore(chosen.integrator)
            self.last_pose = chosen.pose.copy()
            walk_frame = chosen.walk_frame
        self.buffer.clear()
        self.standing_chunks = 0
        self.rewinds += 1
        if self.recorder is not None:
            self.recorder.on_rewind(walk_frame)
        log.info("[%s] rewound %.2f s: walk frame %d -> %d", self.session_id, seconds, now, walk_frame)
        if self.on_rewound is not None:
            self.on_rewound((now - walk_frame) / self.fps, walk_frame)
        return restart
