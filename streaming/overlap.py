"""A chunk's commit beside its decode: the two phases after the Euler steps, on two cores at once.

    overlap = overlaps_phases(device)                      # CPU and a free core for the second phase
    state, video = run_beside(lambda: commit(x), lambda: decode(x), overlap)

Why: once the Euler steps have given a chunk's clean latents x, the commit (the model at t = 0 on x,
giving the next stream state) and the decode (the VAE's stream decoder on x, giving the frames) read x
and nothing of each other's. On the 2-core CPU the worker runs the model with one torch thread
(`app.config.StreamConfig.worker_threads`: the other core serves the event loop), and the two phases
are 30 % and 40 % of a chunk (docs/benchmarks.md, "Where one chunk's time goes"): side by side, a
chunk takes the denoise plus the longer of the two instead of the sum of all three, and its frames
are ready that much sooner. On a GPU both would queue on one stream, so nothing is gained there and
the phases run in turn; on a CPU whose cores the worker's threads already fill, two phases' threads
would oversubscribe them.

The outputs are bit for bit those of running the phases in turn (each phase runs its own ops on its
own tensors; tests/streaming/test_overlap.py). The helper thread takes over the caller's
inference-mode and grad-mode (both are thread-local in torch), and an exception in either phase
reaches the caller only after both have finished, so a failed chunk never leaves a phase running.
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
    """Whether `run_beside` should run its phases side by side: on the CPU, when the two phases'
    torch threads fit the machine's cores (the 2-core default: one each)."""
    return torch.device(device).type == "cpu" and 2 * torch.get_num_threads() <= (os.cpu_count() or 1)


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

    thread = threading.Thread(target=run, name="roam-commit", daemon=True)
    thread.start()
    try:
        mine = here()
    finally:
        thread.join()
    if failure:
        raise failure[0]
    return result[0], mine
