"""The generation worker: one thread per device that runs every session's chunks, fairly.

Sessions register a `StreamJob` (generator, pose integrator, frame buffer, input mailbox). The
worker takes the ready jobs in deadline order (the one whose queued frames run out first) and runs
their next chunks together: per job, newest input snapshot -> integrator poses for the chunk's raw
frames; for all of them one `streaming.batched.step_batched` (one batched denoise, commit and decode;
on a CPU with a core to spare it takes a helper thread for part of that work, `streaming.overlap`);
per job, frames (each with its pose, chunk id, input seq and frame id) into its `FrameBuffer`.
Scheduling and the measured capacity the server admits by: `streaming.schedule`.
The event loop never runs model work; it only posts inputs into mailboxes (thread-safe).

A job is ready when it is started, not paused and its buffer has room for one more chunk
without overflowing (so a fast model cannot run ahead of playout; latency stays ~one chunk).

Idle policy: when the camera has stood still (pose unchanged) for `idle_chunks` chunks in a row
and no new movement input arrived, the job pauses: the last frame stays on screen and nothing is
generated, so a standing camera cannot drift into noise over time and the device is free for
other sessions. Any snapshot that moves the camera (keys held or look angles changed), a reset or
new settings resume it.

Memory: a removed job lets go of its generator, integrator and queued frames at once (after its
running chunk, if any), instead of when the cycle collector frees the session around it; the worker
thread then returns malloc's free memory to the system (`common.memory.trim_allocator`). Without
them the server's RSS grew by half from session 10 to 300 (548 to 822 MB, all of it memory malloc
held free), with them by 2 to 3 % (`python run.py bench soak`, docs/benchmarks.md).

A batch runs every member's chunk, so members' chunk boundaries are coupled only in time: each
keeps its own state, position, camera and requests (reset, rewind, settings, recording), applied
in its own `begin_chunk` / `end_chunk`. If the batched call itself fails, every member of it is
failed (which row broke it cannot be told apart); a failure in one member's own phases fails it alone.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from streaming.buffer import FrameBuffer, StreamFrame
from streaming.schedule import BatchCost, due_in_s

if TYPE_CHECKING:
    from streaming.generator import ChunkGenerator
    from streaming.generator_process import GeneratorProcess

log = logging.getLogger("roam.worker")


@dataclass(frozen=True)
class InputEnvelope:
    """One accepted input snapshot with the fields the worker compares for idleness."""

    seq: int
    snapshot: Any  # controls.integrator.InputSnapshot
    keys: int
    look: tuple[float, float, float]  # yaw, pitch, roll in degrees


@dataclass(frozen=True)
class PendingRequests:
    """What other threads asked of a job since its last chunk, taken by the worker as one value.

    `reset` wins over `rewind_s` (a reset restarts the walk, so there is nothing to rewind); rewinds
    add up; the newest `settings` replace older ones.
    """

    reset: bool = False
    rewind_s: float | None = None
    settings: Any = None  # controls.integrator.ControlSettings


@dataclass(frozen=True)
class ChunkPlan:
    """One chunk as `StreamJob.begin_chunk` laid it out: what the generator is given and what the
    frames it returns are stamped with.

    `poses` [n, 4, 4] are the chunk's raw-frame poses, n = the generator's `frames_for_next_chunk()`
    (the first pose of a walk is the start pose). `chunk_id` and `frame0` count across resets.
    """

    poses: np.ndarray
    envelope: InputEnvelope
    chunk_id: int
    frame0: int
    first: bool
    requests: PendingRequests
    walk_frame0: int


class StreamJob:
    """One session's stream as the worker sees it.

    Lifecycle (the worker's view; any thread may post requests, only the worker runs chunks):

        new ─(the reset pending from construction)─► ready ◄──────────────────────────┐
         ready: not paused, not closed, not failed, and the buffer has room for a chunk │
        ready ─begin_chunk─► planned ─generator.step─► end_chunk ─► ready ─────────────┘
        end_chunk ─(idle_chunks standing chunks, no moving input)─► paused
        paused ─(moving input, reset, settings or rewind)─► ready
        running chunk raises ─► failed ─► removed
        any ─GenerationWorker.remove─► closed (released after a chunk in flight)

    Requests (`request_reset`, `submit_settings`, and a subclass's rewind) are gathered in one
    `PendingRequests` under the job's lock; `begin_chunk` swaps it for an empty one in the same lock
    grab that reads the newest input, so a request is applied whole, before exactly one chunk.
    `run_chunk` = `begin_chunk` → `generator.step` → `end_chunk`; the worker's batched path calls
    the three itself with one batched step in the middle.

    Args:
        session_id: for logs.
        generator: a `ChunkGenerator`.
        make_integrator: builds a fresh pose integrator at the start pose (called at start and reset).
        buffer: where frames go.
        start_image: uint8 [H, W, 3].
        world_T_cam0: [4, 4] start pose.
        standing_input: the envelope used before the first input arrives (no keys, start angles).
        idle_chunks: standing chunks before the job pauses (0 = never pause).
        on_failure: called (from the worker thread) with the exception if a chunk fails.
        fps: playout rate of the walk (its deadlines: `slack_s`).
    """

    def __init__(
        self,
        session_id: str,
        generator: ChunkGenerator,
        make_integrator: Callable[[], Any],
        buffer: FrameBuffer,
        start_image: np.ndarray,
        world_T_cam0: np.ndarray,
        standing_input: InputEnvelope,
        idle_chunks: int = 4,
        on_failure: Callable[[BaseException], None] | None = None,
        fps: float = 16.0,
    ):
        if not (np.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        self.session_id = session_id
        self.fps = float(fps)
        self.generator = generator
        self.make_integrator = make_integrator
        self.buffer = buffer
        self.start_image = start_image
        self.world_T_cam0 = np.asarray(world_T_cam0, dtype=np.float64)
        self.idle_chunks = idle_chunks
        self.on_failure = on_failure
        self._lock = threading.Lock()
        self._input = standing_input
        self._applied_input: InputEnvelope | None = None
        # A new job starts its walk with its first chunk.
        self._pending = PendingRequests(reset=True)
        self.settings: Any = None
        self.integrator: Any = None
        self.paused = False
        self.failed: BaseException | None = None
        self.closed = False
        self.standing_chunks = 0
        self.chunks_done = 0
        self.frames_done = 0
        self.last_pose = self.world_T_cam0.copy()
        self.last_chunk_ms = 0.0
        self.chunk_ms_history: list[float] = []
        self.first_frame_t: float | None = None
        # When the worker last finished a chunk of this job (ties between equal deadlines).
        self.served_t = 0.0
        # Whether the last chunk `run_chunk` ran was a walk's first.
        self.last_plan_first = False

    def submit_input(self, envelope: InputEnvelope) -> bool:
        """Offer a snapshot (any thread). Returns False if its seq is not newer than the last one."""
        with self._lock:
            if envelope.seq <= self._input.seq:
                return False
            if self.paused and self._moves(envelope, self._input):
                self.paused = False
            self._input = envelope
            return True

    @staticmethod
    def _moves(new: InputEnvelope, old: InputEnvelope) -> bool:
        return new.keys != 0 or new.look != old.look

    def _post(self, **changes: Any) -> None:
        """Merge a request into the pending one and wake a paused job (caller holds no lock)."""
        with self._lock:
            self._pending = dataclasses.replace(self._pending, **changes)
            self.paused = False

    def request_reset(self) -> None:
        """Go back to the start image and pose before the next chunk (any thread).

        The last snapshot's keys and angles are forgotten (its seq still counts, so stale ones stay
        stale): the walk restarts at rest until a newer snapshot arrives.
        """
        with self._lock:
            self._pending = dataclasses.replace(self._pending, reset=True)
            self._input = dataclasses.replace(self._input, snapshot=None, keys=0)
            self.paused = False

    def submit_settings(self, settings: Any) -> None:
        """New control settings, applied to the integrator before the next chunk (any thread)."""
        self._post(settings=settings)

    def release(self) -> None:
        """Let go of the walk's memory once the job is removed (worker thread or, when no chunk is
        running, the remover; idempotent): the generator (model state, decoder cache), the integrator
        and the queued frames. A session's other objects (peer connection, callbacks) hold each other
        in reference cycles, which only Python's cycle collector frees, whenever it next runs; this
        job's megabytes must not wait for it."""
        self.generator = None
        self.integrator = None
        self.buffer.clear()

    @property
    def latest_input(self) -> InputEnvelope:
        with self._lock:
            return self._input

    @property
    def applied_input(self) -> InputEnvelope | None:
        return self._applied_input

    def next_chunk_frames(self) -> int:
        with self._lock:
            resetting = self._pending.reset
        if resetting or not self.generator.started:
            return self.generator.temporal_stride * self.generator.config.chunk_latents + 1
        return self.generator.frames_for_next_chunk()

    def slack_s(self) -> float:
        """Seconds of frames queued for playout: the job's next chunk is due when they run out."""
        return len(self.buffer) / self.fps

    def ready(self) -> bool:
        if self.closed or self.failed is not None or self.paused:
            return False
        return len(self.buffer) + self.next_chunk_frames() <= self.buffer.capacity

    def run_chunk(self) -> list[StreamFrame]:
        """Generate one chunk (worker thread only) and put its frames into the buffer."""
        plan = self.begin_chunk()
        self.last_plan_first = plan.first
        start = time.perf_counter()
        images = self.generator.step(plan.poses)
        return self.end_chunk(plan, images, (time.perf_counter() - start) * 1e3)

    def begin_chunk(self) -> ChunkPlan:
        """Apply the pending requests and lay out the next chunk (worker thread only)."""
        with self._lock:
            requests, self._pending = self._pending, PendingRequests()
            envelope = self._input
        self._apply(requests)
        n = self.generator.frames_for_next_chunk()
        first = self.generator.chunk_index == 0
        if first:
            poses = np.concatenate([self.world_T_cam0[None], np.asarray(self.integrator.advance(envelope.snapshot, n - 1))])
        else:
            poses = np.asarray(self.integrator.advance(envelope.snapshot, n))  # [n, 4, 4]
        return ChunkPlan(poses=poses, envelope=envelope, chunk_id=self.chunks_done, frame0=self.frames_done, first=first,
                         requests=requests, walk_frame0=int(self.generator.frame_index))

    def _apply(self, requests: PendingRequests) -> None:
        """Carry out the requests taken for this chunk: a reset restarts the walk; settings outlive resets."""
        if requests.reset:
            self._restart()
        if requests.settings is not None:
            self.settings = requests.settings
        if self.settings is not None:
            # Settings outlive resets (a reset builds a fresh integrator).
            self.integrator.settings = self.settings

    def _restart(self) -> None:
        """Back to the start image and pose: a fresh walk, generator state and integrator."""
        self.generator.start(self.start_image, self.world_T_cam0)
        self.integrator = self.make_integrator()
        self.buffer.clear()
        self.last_pose = self.world_T_cam0.copy()
        self.standing_chunks = 0

    def end_chunk(self, plan: ChunkPlan, images: np.ndarray, chunk_ms: float) -> list[StreamFrame]:
        """Stamp the generated images [n', H, W, 3] with their poses and ids, queue them, and decide
        whether the job pauses (worker thread only)."""
        poses, envelope = plan.poses, plan.envelope
        # A generator that drops a walk's first decoded frame returns fewer frames than poses: each
        # frame shown keeps the pose it was generated at (the last len(images) poses).
        shown = poses[len(poses) - len(images):]
        frames = [
            StreamFrame(image=images[i], frame_id=plan.frame0 + i, chunk_id=plan.chunk_id, input_seq=envelope.seq, world_T_cam=shown[i], chunk_ms=chunk_ms)
            for i in range(len(images))
        ]
        standing = np.allclose(poses, self.last_pose[None], atol=1e-6) and not plan.first
        self.standing_chunks = self.standing_chunks + 1 if standing else 0
        self.last_pose = poses[-1]
        self._applied_input = envelope
        self.last_chunk_ms = chunk_ms
        self.chunk_ms_history.append(chunk_ms)
        del self.chunk_ms_history[:-64]
        self.chunks_done += 1
        self.frames_done += len(images)
        timings = self.generator.last_timings
        if timings is not None:
            log.debug("[%s] chunk %d: %d frames in %.0f ms (denoise %.0f, commit %.0f, refine %.0f, decode %.0f)", self.session_id, plan.chunk_id, len(images), chunk_ms, timings.denoise_ms, timings.commit_ms, timings.refine_ms, timings.decode_ms)
        if self.first_frame_t is None:
            self.first_frame_t = time.monotonic()
        with self._lock:
            # Snapshots that arrived meanwhile only block the pause if they move the camera (a page
            # may repeat an unchanged snapshot as a heartbeat).
            if self.idle_chunks and self.standing_chunks >= self.idle_chunks and not self._moves(self._input, envelope):
                self.paused = True
                log.info("[%s] idle: camera stood still for %d chunks, pausing until input", self.session_id, self.standing_chunks)
        self.buffer.put_chunk(frames)
        return frames


class GenerationWorker:
    """One thread that runs the chunks of every registered job: deadline-ordered batches.

    Each turn it takes the ready jobs, earliest deadline first (`StreamJob.slack_s`, then the one
    served longest ago), at most `max_batch` of them and no more than a batch expected to finish
    within one chunk's worth of video (`BatchCost`), waits while none of them is due yet
    (`streaming.schedule`), then runs their chunks: one job through `StreamJob.run_chunk`, several
    through `begin_chunk` each → one `streaming.batched.step_batched` → `end_chunk` each. Every
    batch's wall time feeds `cost`, from which `capacity` tells the server how many sessions fit.

    Args:
        num_threads: torch intra-op threads for the worker (None leaves torch's setting alone).
        poll_s: how often an idle worker re-checks readiness (buffers drain on the event loop).
        max_batch: most sessions in one batched chunk (1: each chunk alone, as before batching).
        host: the `GeneratorProcess` that new walks' generators live in (`new_generator`), or None
            for generators in this process. The worker schedules either kind the same way.
    """

    def __init__(self, name: str = "roam-generation", num_threads: int | None = None, poll_s: float = 0.01, max_batch: int = 1,
                 host: GeneratorProcess | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.name = name
        self.num_threads = num_threads
        self.poll_s = poll_s
        self.max_batch = max_batch
        self.host = host
        self.cost = BatchCost()
        self._jobs: list[StreamJob] = []
        # The jobs whose chunks are being generated (released by the worker when removed meanwhile).
        self._running: list[StreamJob] = []
        # A job was released: the worker returns malloc's free memory to the system (common.memory).
        self._trim_pending = False
        self.trims = 0
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.chunks_done = 0
        self.batches_done = 0

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("GenerationWorker already started")
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the chunk in progress; joins the thread."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("generation worker did not stop within %.1f s", timeout)
            self._thread = None

    async def astop(self, timeout: float = 10.0) -> None:
        await asyncio.to_thread(self.stop, timeout)

    def add(self, job: StreamJob) -> None:
        with self._cond:
            self._jobs.append(job)
            self._cond.notify_all()

    def remove(self, job: StreamJob) -> None:
        """Unregister a job and release its memory; a chunk already running for it finishes into its
        (closed) buffer first, and the worker releases the job after it."""
        with self._cond:
            job.closed = True
            if job in self._jobs:
                self._jobs.remove(job)
            running = job in self._running
        if not running:
            job.release()
        with self._cond:
            self._trim_pending = True
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    @property
    def jobs(self) -> list[StreamJob]:
        with self._cond:
            return list(self._jobs)

    def capacity(self, period_s: float, limit: int) -> int | None:
        """Sessions whose chunks the measured batches fit into one chunk period `period_s` (at most
        `limit`); None before the first batch (`streaming.schedule.BatchCost.capacity`)."""
        return self.cost.capacity(period_s, self.max_batch, limit)

    def _next_batch(self) -> tuple[list[StreamJob], float]:
        """The jobs to run now, and how long to wait when there are none (see the class docstring)."""
        with self._cond:
            ready = sorted((job for job in self._jobs if job.ready()), key=lambda job: (job.slack_s(), job.served_t))
            batch = ready[: self.max_batch]
            if not batch:
                return [], self.poll_s
            batch = batch[: self._rows_within_a_chunk(batch[0], len(batch))]
            wait = due_in_s(batch[0].slack_s(), self.cost.estimate_ms(len(batch)))
            # Wait only when this batch is all there is to do: with ready walks left over the worker
            # is behind, and idling would lose their time.
            if wait > 0 and len(batch) == len(ready):
                return [], min(wait, 5 * self.poll_s)
            self._running = list(batch)
            return batch, 0.0

    def _rows_within_a_chunk(self, lead: StreamJob, rows: int) -> int:
        """How many of the `rows` ready walks (lead first) to run now.

        All of them when their batch is expected to fit the video one chunk of `lead` holds. Otherwise
        the most rows that fit, but only when a second batch of the rest fits in the same period after
        them: then the lead's chunk lands sooner and no one is later. Without such a split the worker is
        behind whatever it does, and one batch of all the rows makes the most frames a second: each extra
        batch pays its fixed cost again, and a cut kept up by an estimate extrapolated from small batches
        (`BatchCost.estimate_ms` errs high) would never measure the big batch again.
        """
        period_ms = lead.next_chunk_frames() / lead.fps * 1e3
        whole = self.cost.estimate_ms(rows)
        if whole is None or whole <= period_ms:
            return rows
        for first in range(rows - 1, 0, -1):
            lead_ms, rest_ms = self.cost.estimate_ms(first), self.cost.estimate_ms(rows - first)
            if lead_ms <= period_ms and lead_ms + rest_ms <= period_ms:
                return first
        return rows

    def _run(self) -> None:
        import torch

        # torch's thread count is process-wide: set it for the worker's life, then put it back.
        previous = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        try:
            self._loop()
        finally:
            torch.set_num_threads(previous)

    def _loop(self) -> None:
        from common.memory import trim_allocator

        while True:
            with self._cond:
                if self._stop:
                    return
                trim, self._trim_pending = self._trim_pending, False
            if trim:
                # Here, not on the event loop: the call releases the GIL and may take milliseconds.
                trim_allocator()
                self.trims += 1
            batch, wait = self._next_batch()
            if not batch:
                with self._cond:
                    if not self._stop:
                        self._cond.wait(wait)
                continue
            try:
                if len(batch) == 1:
                    self._run_one(batch[0])
                else:
                    self._run_batch(batch)
            finally:
                with self._cond:
                    self._running = []
                    removed = [job for job in batch if job.closed]
                for job in removed:
                    job.release()

    def _fail(self, job: StreamJob, error: BaseException) -> None:
        log.error("[%s] chunk failed (%r); the session is closed", job.session_id, error, exc_info=error)
        job.failed = error
        self.remove(job)
        if job.on_failure is not None:
            job.on_failure(error)

    def _run_one(self, job: StreamJob) -> None:
        start = time.perf_counter()
        try:
            job.run_chunk()
        except Exception as error:
            self._fail(job, error)
            return
        # A walk's first chunk (start image encoded, one latent more) is no measure of its steady chunks.
        if not job.last_plan_first:
            self.cost.observe(1, (time.perf_counter() - start) * 1e3)
        job.served_t = time.monotonic()
        self.chunks_done += 1
        self.batches_done += 1

    def _run_batch(self, batch: list[StreamJob]) -> None:
        from streaming.batched import step_batched

        start = time.perf_counter()
        planned: list[tuple[StreamJob, ChunkPlan]] = []
        for job in batch:
            try:
                planned.append((job, job.begin_chunk()))
            except Exception as error:
                self._fail(job, error)
        if not planned:
            return
        try:
            images = step_batched([job.generator for job, _ in planned], [plan.poses for _, plan in planned])
        except Exception as error:
            # One batched call: which row broke it cannot be told apart, so every walk in it ends.
            for job, _ in planned:
                self._fail(job, error)
            return
        chunk_ms = (time.perf_counter() - start) * 1e3
        # A batch with a walk's first chunk (start image encoded, rows in separate calls) is no measure of steady batches.
        if not any(plan.first for _, plan in planned):
            self.cost.observe(len(planned), chunk_ms)
        now = time.monotonic()
        for (job, plan), frames in zip(planned, images):
            try:
                job.end_chunk(plan, frames, chunk_ms)
            except Exception as error:
                self._fail(job, error)
                continue
            job.served_t = now
            self.chunks_done += 1
        self.batches_done += 1
