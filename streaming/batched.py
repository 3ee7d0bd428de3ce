"""Cross-session batching: the next chunk of many walks in one batched denoise, commit and decode.

`step_batched(generators, poses)` returns what `[g.step(p) for g, p in zip(generators, poses)]`
returns (frame for frame within float tolerance, `tests/streaming/test_batched.py`), with the
model and the VAE decoder run once per group of rows instead of once per walk. `ChunkGenerator.step`
is its naive twin: the same phases (`begin_chunk`, Euler steps, commit, `refine_chunk`, decode,
`end_chunk`) for one row. On a CPU with a core to spare (`streaming.overlap`) the rows are split in two
halves that run side by side, one core each; a single row runs its commit beside its decode instead.

Rows of one batched model call may differ in
- their stream state (GDN states, conv contexts, KV caches): `model.state.StreamState.stack`;
- their RoPE position (`frame_index`): the model takes one position per row;
- their camera and Plücker rays, noise (each walk's own RNG) and text.
Rows are grouped (`_model_key`) by what must be equal to share one call: the model and σ list, the
sampling dtype, the chunk's shape (a walk's first chunk carries its image latent, so it has one latent
more than later chunks), the KV caches' layout (`StreamState.layout_key`: a walk's first chunks fill
its window, so caches differ in length until the window is full) and the text's shape. Different KV
fill lengths are thus never padded or masked: rows that cannot share a call run in separate calls, and
in steady state (every walk past its first `kv_window_chunks` + 1 chunks) all rows share one.

Decoding groups rows by the decoder's own key (`StackableDecoder.stack_key`); a decoder that cannot
stack (the LTX-2 adapter) decodes its row alone. A refiner refines row by row.

Every row of a group gets the group's phase timings (the batched call's wall time).

Walks in a generator process (`streaming.generator_process.RemoteGenerator`) go there in one request,
and the child runs this function on its own generators.
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from model.schedulers import euler_chunk
from model.state import StreamState
from streaming.generator import ChunkGenerator, ChunkInputs, ChunkTimings
from streaming.generator_process import RemoteGenerator
from streaming.overlap import overlaps_phases, run_beside
from streaming.protocols import StackableDecoder


def _model_key(generator: ChunkGenerator, chunk: ChunkInputs) -> tuple:
    """Rows with equal keys share one model call (see the module docstring)."""
    state = generator.state
    # A state that cannot stack (a test fake) gets a group of its own.
    layout = state.layout_key() if isinstance(state, StreamState) else ("alone", id(generator))
    mask = generator.text_mask
    return (id(generator.model), generator.config.sigmas, generator.sampling_dtype, tuple(chunk.x.shape), chunk.first,
            layout, tuple(generator.text.shape), None if mask is None else (tuple(mask.shape), mask.dtype))


def _decoder_key(generator: ChunkGenerator, index: int) -> tuple:
    decoder = generator.decoder
    if isinstance(decoder, StackableDecoder):
        return ("stack", type(decoder), decoder.stack_key())
    return ("alone", index)


@torch.inference_mode()
def step_batched(generators: Sequence[ChunkGenerator], poses: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The next chunk of every generator: poses[i] [n_i, 4, 4] with n_i = generators[i].frames_for_next_chunk().

    Returns frames [n_i', H, W, 3] per generator, as `ChunkGenerator.step` would; each generator's
    state, decoder cache, RNG, counters and `last_timings` move on exactly as after its own `step`.
    The generators must be distinct and started.
    """
    if len(generators) != len(poses):
        raise ValueError(f"step_batched needs one pose array per generator, got {len(generators)} generators and {len(poses)} pose arrays")
    if len({id(g) for g in generators}) != len(generators):
        raise ValueError("step_batched got the same generator twice (one chunk per walk per call)")
    remote = [isinstance(g, RemoteGenerator) for g in generators]
    if any(remote):
        if not all(remote):
            raise ValueError("step_batched got walks of a generator process beside walks of this process")
        # Walks in a generator process: the child runs this function on its own generators.
        return generators[0].host.step_batched(generators, poses)
    overlap = bool(generators) and overlaps_phases(generators[0].device)
    if overlap and len(generators) >= 2:
        # Two halves side by side, one core each, each half's phases in turn (`streaming.overlap`).
        half = (len(generators) + 1) // 2
        first, second = run_beside(lambda: _step_rows(generators[:half], poses[:half], overlap=False),
                                   lambda: _step_rows(generators[half:], poses[half:], overlap=False), overlap=True)
        return first + second
    return _step_rows(generators, poses, overlap)


def _step_rows(generators: Sequence[ChunkGenerator], poses: Sequence[np.ndarray], overlap: bool) -> list[np.ndarray]:
    """`step_batched`'s body for these rows on this thread; with `overlap`, the commits run beside the
    refines and decodes."""
    # 1. Each walk's camera conditioning and noise (its own conditioner and RNG).
    chunks = [g.begin_chunk(p) for g, p in zip(generators, poses)]

    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, (g, chunk) in enumerate(zip(generators, chunks)):
        groups[_model_key(g, chunk)].append(i)

    clean: list[torch.Tensor | None] = [None] * len(generators)
    phase_ms: list[list[float]] = [[0.0, 0.0, 0.0, 0.0] for _ in generators]  # denoise, commit, decode, refine
    commits: list[_GroupCommit] = []
    for rows in groups.values():
        # 2. One batched Euler integration per group.
        x, commit, denoise_ms = _denoise([generators[i] for i in rows], [chunks[i] for i in rows])
        commits.append(_GroupCommit(rows, commit))
        for j, i in enumerate(rows):
            clean[i] = x[j:j + 1]
            phase_ms[i][0] = denoise_ms

    def commit_groups() -> list[Any]:
        # 3. One batched commit per group.
        states: list[Any] = [None] * len(generators)
        for group in commits:
            t = time.perf_counter()
            committed = group.commit()
            next_states = [committed] if len(group.rows) == 1 else committed.unstack()
            ms = (time.perf_counter() - t) * 1e3
            for j, i in enumerate(group.rows):
                states[i] = next_states[j]
                phase_ms[i][1] = ms
        return states

    def refine_and_decode() -> list[torch.Tensor | None]:
        # 4. Refiners, row by row (each keeps its own refiner state).
        latents: list[torch.Tensor] = []
        for i, g in enumerate(generators):
            t = time.perf_counter()
            latents.append(g.refine_chunk(clean[i], chunks[i].first))
            if g.refiner is not None:
                phase_ms[i][3] = (time.perf_counter() - t) * 1e3
        # 5. One batched decode per group of stackable decoders.
        decode_groups: dict[tuple, list[int]] = defaultdict(list)
        for i, g in enumerate(generators):
            decode_groups[_decoder_key(g, i)].append(i)
        videos: list[torch.Tensor | None] = [None] * len(generators)
        for rows in decode_groups.values():
            t = time.perf_counter()
            if len(rows) == 1:
                (i,) = rows
                videos[i] = generators[i].decoder.decode_chunk(latents[i])
            else:
                decoders = [generators[i].decoder for i in rows]
                stacked = type(decoders[0]).stack(decoders)
                video = stacked.decode_chunk(torch.cat([latents[i] for i in rows]))  # [B, 3, n, H, W]
                for i, decoder in zip(rows, stacked.unstack()):
                    generators[i].decoder = decoder
                for j, i in enumerate(rows):
                    videos[i] = video[j:j + 1]
            ms = (time.perf_counter() - t) * 1e3
            for i in rows:
                phase_ms[i][2] = ms
        return videos

    # The commits beside the refiners and decoders (`streaming.overlap`): each side reads the clean
    # latents and nothing of the other's.
    states, videos = run_beside(commit_groups, refine_and_decode, overlap)
    return [g.end_chunk(chunks[i], states[i], videos[i], ChunkTimings(*phase_ms[i], overlapped=overlap))
            for i, g in enumerate(generators)]


@dataclass(frozen=True)
class _GroupCommit:
    """One model group's rows (indices into the call's generators) and its pending batched commit."""

    rows: list[int]
    commit: Callable[[], Any]  # () -> the committed (stacked) StreamState


def _denoise(generators: list[ChunkGenerator], chunks: list[ChunkInputs]) -> tuple[torch.Tensor, Callable[[], Any], float]:
    """One group's rows through the Euler steps: (clean x [B, C, Tc', h, w], the group's commit, which
    returns the committed state of all its rows (stacked when there are several), denoise ms)."""
    lead = generators[0]
    model = lead.model
    if len(generators) == 1:
        state, text, mask = lead.state, lead.text, lead.text_mask
    else:
        state = StreamState.stack([g.state for g in generators])
        text = torch.cat([g.text for g in generators])  # [B, L, C_text]
        mask = None if lead.text_mask is None else torch.cat([g.text_mask for g in generators])  # [B, L]
    x = torch.cat([c.x for c in chunks])  # [B, C, Tc', h, w]
    camera = torch.cat([c.camera for c in chunks])  # [B, Tc', 20]
    plucker = torch.cat([c.plucker for c in chunks])  # [B, 6s, Tc', h, w]
    image_latent = None if chunks[0].image_latent is None else torch.cat([c.image_latent for c in chunks])  # [B, C, 1, h, w]
    t0 = time.perf_counter()
    x = euler_chunk(lambda x_t, timestep: model.stream_forward(x_t, timestep, text, mask, camera, plucker, state),
                    x, lead.config.sigmas, image_latent=image_latent)
    denoise_ms = (time.perf_counter() - t0) * 1e3
    return x, (lambda: model.stream_commit(x, text, mask, camera, plucker, state)), denoise_ms
