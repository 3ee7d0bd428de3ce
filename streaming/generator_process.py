"""`GeneratorProcess`: the walks' chunks computed in a child process, beside the server's event loop.

    host = GeneratorProcess(GeneratorSpec(model, vae, config, intrinsics), torch_threads=1)
    host.start()                                    # spawns the child (seconds: run it off the event loop)
    gen = host.new_generator()                      # a RemoteGenerator, what StreamJob drives
    gen.start(image, world_T_cam0); frames = gen.step(poses)
    frames_list = host.step_batched([gen_a, gen_b], [poses_a, poses_b])   # = streaming.batched.step_batched
    snap = gen.snapshot(); gen.restore(snap)        # rewind; the snapshot lives in the child
    host.close()

Why: on a 2-core CPU the server's event loop (aiortc's RTP, SRTP, SCTP and DTLS in Python, the
pacers, the websocket) and the worker's two model threads (`streaming.overlap`) share one GIL. Each of
a chunk's ~5,000 torch calls gives the GIL up and must take it back, and while the event loop holds it
both model threads wait with a core idle. Measured at 6 walks (docs/benchmarks.md, "The generator in
its own process"): the process used 1.71 of its 2 cores, and a half-batch thread ran 375 ms of CPU in
526 ms of wall time. In a child process the model threads share their GIL only with each other.

What crosses the pipe: poses in, uint8 frames out (2.4 MB for a 6-walk chunk at 128², pickled), and a
`GeneratorView` per walk (its counters and phase timings). Model weights go over once, at `start`.
Each walk's state, decoder cache, RNG and rewind snapshots stay in the child; a `RemoteGenerator`
or `RemoteSnapshot` that the parent lets go of is freed in the child with the next request.

One request at a time (a lock): the generation worker is its only steady caller. Errors:
- an exception in the child fails that request only: `GeneratorProcessError` names it, the child
  carries on serving the other walks;
- a child that exits or does not answer within `timeout_s` fails every walk it held: their next
  call raises `GeneratorProcessError`, and `new_generator` starts a fresh child for new walks.

The child runs `streaming.batched.step_batched`, so its frames equal the in-process path's
(`tests/streaming/test_generator_process.py`).
"""
from __future__ import annotations

import logging
import threading
import traceback
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("roam.generator_process")

STARTUP_TIMEOUT_S = 300.0


class GeneratorProcessError(RuntimeError):
    """A request to the generator process failed (an error in the child, or the child is gone)."""


@dataclass
class GeneratorSpec:
    """What a child process builds its walks' `ChunkGenerator`s from (pickled to it once).

    The arguments are `ChunkGenerator`'s; all must pickle (a walk's prompt callable does not, so walks
    with prompts stay in-process).
    """

    model: Any
    vae: Any
    config: Any  # streaming.generator.GeneratorConfig
    intrinsics: tuple[float, float, float, float]
    device: str = "cpu"
    dtype: Any = None  # torch.dtype; None: float32
    conditioner_factory: Callable[..., Any] | None = None
    refiner: Any = None

    def build(self, prompt: Callable[[], Any] | None = None) -> Any:
        """A `ChunkGenerator` of these parts (`prompt` as `ChunkGenerator` takes it)."""
        import torch

        from streaming.generator import ChunkGenerator

        return ChunkGenerator(self.model, self.vae, self.config, self.intrinsics, device=self.device, dtype=self.dtype or torch.float32,
                              conditioner_factory=self.conditioner_factory, prompt=prompt, refiner=self.refiner)


@dataclass(frozen=True)
class GeneratorView:
    """A child-side generator's counters after a request, mirrored by its `RemoteGenerator`."""

    started: bool
    chunk_index: int
    latent_index: int
    frame_index: int
    frames_next: int | None  # frames_for_next_chunk() (None before start)
    frames_shown_next: int | None
    last_timings: Any  # streaming.generator.ChunkTimings | None

    @classmethod
    def of(cls, generator: Any) -> GeneratorView:
        if not generator.started:
            return cls(False, 0, 0, 0, None, None, generator.last_timings)
        return cls(started=True, chunk_index=generator.chunk_index, latent_index=generator.latent_index, frame_index=generator.frame_index,
                   frames_next=generator.frames_for_next_chunk(), frames_shown_next=generator.frames_shown_for_next_chunk(),
                   last_timings=generator.last_timings)


def _child_main(conn: Any, spec: GeneratorSpec, torch_threads: int) -> None:
    """The child's loop: one request, one reply, until the parent says stop or goes away."""
    import signal

    import torch

    # Ctrl-C in a terminal reaches the whole process group; the server stops the child itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    from common.memory import trim_allocator
    from streaming.batched import step_batched

    torch.set_num_threads(torch_threads)
    # Keys are the parent's (`GeneratorProcess._next_key`).
    generators: dict[int, Any] = {}
    snapshots: dict[int, Any] = {}

    def snapshot(gid: int, sid: int) -> None:
        snapshots[sid] = generators[gid].snapshot()

    def step(gids: list[int], poses: list[np.ndarray]) -> tuple[list[np.ndarray], list[GeneratorView]]:
        rows = [generators[g] for g in gids]
        with torch.inference_mode():
            frames = step_batched(rows, poses)
        return frames, [GeneratorView.of(g) for g in rows]

    def start(gid: int, image: np.ndarray, world_T_cam0: np.ndarray) -> GeneratorView:
        if gid not in generators:
            generators[gid] = spec.build()  # a walk's generator is made at its first start
        with torch.inference_mode():
            generators[gid].start(image, world_T_cam0)
        return GeneratorView.of(generators[gid])

    def restore(gid: int, sid: int) -> GeneratorView:
        generators[gid].restore(snapshots[sid])
        return GeneratorView.of(generators[gid])

    ops: dict[str, Callable[..., Any]] = {"start": start, "step": step, "snapshot": snapshot, "restore": restore,
                                          "count": lambda: (len(generators), len(snapshots))}
    conn.send(("ready", None))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if message is None:
            return
        forget_generators, forget_snapshots, op, args = message
        for gid in forget_generators:
            generators.pop(gid, None)
        for sid in forget_snapshots:
            snapshots.pop(sid, None)
        if forget_generators:
            trim_allocator()  # a walk's megabytes back to the system, as the worker does in the server
        try:
            reply = ("ok", ops[op](*args))
        except Exception as error:
            reply = ("error", f"{type(error).__name__}: {error}", traceback.format_exc())
        conn.send(reply)


class GeneratorProcess:
    """A child process that owns walks' generators and runs their chunks (see the module docstring).

    Args:
        spec: what the child builds generators from.
        torch_threads: the child's torch intra-op threads (the worker's; with 1 on 2 cores the child
            runs a batch as two halves side by side, `streaming.overlap`).
        timeout_s: longest wait for one reply before the child is taken for hung and stopped.
    """

    def __init__(self, spec: GeneratorSpec, torch_threads: int = 1, timeout_s: float = 120.0):
        self.spec = spec
        self.torch_threads = torch_threads
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._process: Any = None
        self._conn: Any = None
        # Children started so far; a RemoteGenerator of an older one is dead.
        self.generation = 0
        # Bookkeeping that must not wait for a chunk in flight (`_lock` is held through each request).
        # Reentrant: a finalizer (`_forget`) may run on a thread that holds it, when an allocation
        # inside the lock sets off the garbage collector.
        self._books = threading.RLock()
        self._forget_generators: list[int] = []
        self._forget_snapshots: list[int] = []
        self._last_key = 0

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def start(self) -> None:
        """Start the child (a fresh one if the last has exited) and wait until it is ready."""
        with self._lock:
            if not self.alive:
                self._spawn()

    def _spawn(self) -> None:
        import multiprocessing

        self._stop_child()
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(target=_child_main, args=(child, self.spec, self.torch_threads), name="roam-generator", daemon=True)
        process.start()
        child.close()
        self._process, self._conn = process, parent
        self.generation += 1
        with self._books:
            # What the last child held went with it.
            self._forget_generators.clear()
            self._forget_snapshots.clear()
        status, _ = self._receive(STARTUP_TIMEOUT_S, "start")
        if status != "ready":
            raise GeneratorProcessError(f"the generator process said {status!r} instead of 'ready'")
        log.info("generator process %d started (pid %d)", self.generation, process.pid)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the child (every walk it holds ends)."""
        with self._lock:
            self._stop_child(timeout)

    def _stop_child(self, timeout: float = 5.0) -> None:
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
            conn.close()
        if process is not None:
            process.join(timeout)
            if process.is_alive():
                process.kill()
                process.join(timeout)

    def _receive(self, timeout: float, op: str) -> tuple:
        conn, process = self._conn, self._process
        try:
            ready = conn.poll(timeout)
            reply = conn.recv() if ready else None
        except (EOFError, OSError):
            reply = None
        if reply is None:
            code = process.exitcode if process is not None else None
            if process is not None and process.is_alive():
                process.kill()  # hung: it holds walks no one can reach any more
                process.join(5.0)
                why = f"did not answer {op!r} within {timeout:g} s and was stopped"
            else:
                why = f"exited (code {code}) during {op!r}"
            self._conn = self._process = None
            raise GeneratorProcessError(f"the generator process {why}; its walks are lost")
        return reply

    def _call(self, generation: int, op: str, *args: Any) -> Any:
        with self._lock:
            if not self.alive and generation == self.generation + 1:
                self._spawn()  # the first request of a walk made while no child ran
            if generation != self.generation or not self.alive:
                raise GeneratorProcessError("the generator process this walk ran in has exited; its walk is lost")
            with self._books:
                forget = (self._forget_generators[:], self._forget_snapshots[:])
                self._forget_generators.clear()
                self._forget_snapshots.clear()
            try:
                self._conn.send((*forget, op, args))
            except (OSError, ValueError) as error:
                self._conn = self._process = None
                raise GeneratorProcessError(f"the generator process is gone ({error!r}); its walks are lost") from error
            reply = self._receive(self.timeout_s, op)
        if reply[0] == "error":
            log.error("generator process: %r failed:\n%s", op, reply[2])
            raise GeneratorProcessError(f"{op} failed in the generator process: {reply[1]}")
        return reply[1]

    def _forget(self, generation: int, kind: str, key: int) -> None:
        """Free a child-side object with the next request (called by finalizers, on any thread)."""
        if generation != self.generation:
            return
        with self._books:
            (self._forget_generators if kind == "generator" else self._forget_snapshots).append(key)

    def _next_key(self) -> int:
        with self._books:
            self._last_key += 1
            return self._last_key

    def new_generator(self) -> RemoteGenerator:
        """A new walk's generator. No request: the child builds it at the walk's first `start`, in the
        running child, or in a fresh one started then when none runs (never started, or exited), so
        this never waits for a chunk in flight."""
        generation = self.generation if self.alive else self.generation + 1
        return RemoteGenerator(self, generation, self._next_key())

    def held(self) -> tuple[int, int]:
        """(generators, snapshots) the child holds (after freeing what the parent let go of)."""
        return self._call(self.generation, "count")

    def step_batched(self, generators: Sequence[RemoteGenerator], poses: Sequence[np.ndarray]) -> list[np.ndarray]:
        """`streaming.batched.step_batched` for walks of this process: one request for all rows."""
        if len(generators) != len(poses):
            raise ValueError(f"step_batched needs one pose array per generator, got {len(generators)} generators and {len(poses)} pose arrays")
        if not generators:
            return []
        if any(not isinstance(g, RemoteGenerator) or g.host is not self for g in generators):
            raise ValueError("step_batched: every generator must be a RemoteGenerator of this process")
        generation = generators[0].generation
        if any(g.generation != generation for g in generators):
            raise GeneratorProcessError("the generator process this walk ran in has exited; its walk is lost")
        frames, views = self._call(generation, "step", [g.key for g in generators], [np.asarray(p, dtype=np.float64) for p in poses])
        for generator, view in zip(generators, views):
            generator._view = view
        return frames


@dataclass(frozen=True)
class RemoteSnapshot:
    """A rewind snapshot that lives in the generator process (freed there when this is collected)."""

    key: int
    generation: int


class RemoteGenerator:
    """One walk's `ChunkGenerator` in a `GeneratorProcess`, with the interface `StreamJob` drives:
    `start`, `step`, `frames_for_next_chunk`, `snapshot`/`restore` and the counters."""

    def __init__(self, host: GeneratorProcess, generation: int, key: int):
        self.host = host
        self.generation = generation
        self.key = key
        self.config = host.spec.config
        self.temporal_stride = int(host.spec.vae.temporal_stride)
        self._view = GeneratorView(False, 0, 0, 0, None, None, None)
        weakref.finalize(self, host._forget, generation, "generator", key)

    @property
    def started(self) -> bool:
        return self._view.started

    @property
    def chunk_index(self) -> int:
        return self._view.chunk_index

    @property
    def latent_index(self) -> int:
        return self._view.latent_index

    @property
    def frame_index(self) -> int:
        return self._view.frame_index

    @property
    def last_timings(self) -> Any:
        return self._view.last_timings

    def _require_started(self) -> None:
        if not self.started:
            raise RuntimeError("ChunkGenerator.start() must be called first")

    def frames_for_next_chunk(self) -> int:
        self._require_started()
        return self._view.frames_next

    def frames_shown_for_next_chunk(self) -> int:
        self._require_started()
        return self._view.frames_shown_next

    def start(self, start_image: np.ndarray, world_T_cam0: np.ndarray) -> None:
        self._view = self.host._call(self.generation, "start", self.key, np.asarray(start_image), np.asarray(world_T_cam0, dtype=np.float64))

    def step(self, world_T_cams: np.ndarray) -> np.ndarray:
        return self.host.step_batched([self], [world_T_cams])[0]

    def snapshot(self) -> RemoteSnapshot:
        self._require_started()
        snap = RemoteSnapshot(self.host._next_key(), self.generation)
        self.host._call(self.generation, "snapshot", self.key, snap.key)
        weakref.finalize(snap, self.host._forget, self.generation, "snapshot", snap.key)
        return snap

    def restore(self, snap: RemoteSnapshot) -> None:
        if not isinstance(snap, RemoteSnapshot) or snap.generation != self.generation:
            raise ValueError("restore needs a snapshot this generator process took")
        self._view = self.host._call(self.generation, "restore", self.key, snap.key)
