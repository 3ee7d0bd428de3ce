"""Two cores for one chunk's work: the commit beside the decode, or two halves of a batch side by side.

    overlap = overlaps_phases(device)                      # CPU and a free core for a second thread
    state, video = run_beside(lambda: commit(x), lambda: decode(x), overlap)

Why: on the 2-core CPU the worker runs the model with one torch thread
(`app.config.StreamConfig.worker_threads`: the other core serves the event loop), and the event loop
needs only part of it (about 20 % of a core at 4 walks, docs/benchmarks.md).
- One walk (`ChunkGenerator.step`, and a batch of one): once the Euler steps have given the chunk's
  clean latents x, the commit (the model at t = 0 on x, giving the next stream state) and the decode
  (the VAE's stream decoder on x, giving the frames) read x and nothing of each other's. They are
  30 % and 40 % of a chunk; side by side, a chunk takes the denoise plus the longer of the two, and
  its frames are ready that much sooner.
- Several walks (`streaming.batched.step_batched`): the rows are split in two halves that run whole
  chunks side by side, each on one core with its phases in turn. Every walk's state, decoder, RNG
  and conditioner are its own, so the halves share only the model's weights, which they read.
On a GPU everything would queue on one stream, so nothing is gained and one thread runs it all; on a
CPU whose cores the worker's threads already fill, a second thread would oversubscribe them.

The outputs are those of one thread's phases in turn: bit for bit for the commit beside the decode
(each runs its own ops on its own tensors), within float tolerance for the halves (a half batches
its rows into other groups than the whole; tests/streaming/test_overlap.py, test_batched.py). The
helper thread takes over the caller's inference-mode and grad-mode (both are thread-local in torch),
and an exception on either side reaches the caller only after both have finished, so a failed chunk
never leaves work running.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

import torch

A = TypeVar("A")
B = TypeVar("B")


def overlaps_phases(device: torch.device | str) -> bool:
    """Whether `run_beside` should run its two sides at once: on the CPU, when the two sides' torch
    threads fit the machine's cores (the 2-core default: one each)."""
    return torch.device(device).type == "cpu" and leaves_a_core_per_thread(torch.get_num_threads())


def leaves_a_core_per_thread(threads: int) -> bool:
    """Whether the machine's cores fit two sides of `threads` torch threads each."""
    return 2 * threads <= (os.cpu_count() or 1)


def run_beside(helper: Callable[[], A], here: Callable[[], B], overlap: bool) -> tuple[A, B]:
    """(helper(), here()): with `overlap`, helper() on a new thread while here() runs on this one;
    without, helper() then here(). An exception of either phase is raised once both have finished
    (here()'s if both failed)."""
    if not overlap:
        return helper(), here()
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()
    result: list = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                result.append(helper())
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)

    thread = threading.Thread(target=run, name="roam-beside", daemon=True)
    thread.start()
    try:
        mine = here()
    finally:
        thread.join()
    if failure:
        raise failure[0]
    return result[0], mine
