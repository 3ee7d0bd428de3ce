"""Walks in a generator process (`streaming.generator_process`): the same frames as walks in this
process, rewind snapshots kept and freed in the child, and errors that end only what they must."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

from model import ModelConfig, WorldModel
from model.vae import TinyVAE, TinyVAEConfig
from streaming.batched import step_batched
from streaming.generator import ChunkGenerator, GeneratorConfig
from streaming.generator_process import GeneratorProcess, GeneratorProcessError, GeneratorSpec
from tests.model.helpers import randomise

# Chunks each walk has run before the compared rounds: a walk on its first chunk beside a walk whose
# KV window is filling and a steady one (three model groups in one batch).
HISTORY = (0, 1, 3)
INTRINSICS = (28.0, 28.0, 16.0, 12.0)


def _spec(sampler: dict | None = None) -> GeneratorSpec:
    torch.manual_seed(0)
    model = WorldModel(ModelConfig.preset("tiny", anchor_input=True, anchor_copy=True, anchor_copy_still=True)).eval()
    randomise(model, seed=1)
    with torch.no_grad():
        model.copy_still.fill_(0.7)
    vae = TinyVAE(TinyVAEConfig(latent_channels=model.config.in_channels)).eval()
    randomise(vae, seed=2, scale=0.05)
    config = GeneratorConfig(chunk_latents=2, seed=7, **(sampler or {"sigmas": (0.6, 0.0), "warm_start": True}))
    return GeneratorSpec(model, vae, config, INTRINSICS)


@pytest.fixture(scope="module")
def host():
    host = GeneratorProcess(_spec(), torch_threads=1)
    host.start()
    yield host
    host.close()


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)


def _poses(gen, walk: int) -> np.ndarray:
    """Walk `walk`: forward at its own speed, turning at its own rate, from the identity start pose."""
    n = gen.frames_for_next_chunk()
    t = np.arange(gen.frame_index, gen.frame_index + n)
    poses = np.repeat(np.eye(4)[None], n, 0)
    poses[:, 2, 3] = t * 0.05 * (walk + 1)
    angle = t * 0.02 * (walk - 1)
    poses[:, 0, 0] = poses[:, 2, 2] = np.cos(angle)
    poses[:, 0, 2], poses[:, 2, 0] = np.sin(angle), -np.sin(angle)
    return poses


def _walks(make) -> list:
    walks = []
    for walk, chunks in enumerate(HISTORY):
        gen = make()
        gen.start(_image(walk), np.eye(4))
        for _ in range(chunks):
            gen.step(_poses(gen, walk))
        walks.append(gen)
    return walks


def _same_frames(a: np.ndarray, b: np.ndarray, what: str) -> None:
    assert a.shape == b.shape, what
    # uint8 frames: float rounding (the child batches rows into other groups) may move a value by one step.
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01, f"{what}: max {diff.max()}, mean {diff.mean()}"


def test_walks_in_a_generator_process_equal_walks_in_this_process(host, one_torch_thread):
    spec = host.spec
    here, there = _walks(spec.build), _walks(host.new_generator)
    for round_ in range(2):
        expected = step_batched(here, [_poses(g, w) for w, g in enumerate(here)])
        got = step_batched(there, [_poses(g, w) for w, g in enumerate(there)])
        for walk, (a, b) in enumerate(zip(expected, got)):
            _same_frames(a, b, f"round {round_}, walk {walk}")
    for a, b in zip(here, there):
        assert (a.chunk_index, a.latent_index, a.frame_index) == (b.chunk_index, b.latent_index, b.frame_index)
        assert a.frames_for_next_chunk() == b.frames_for_next_chunk()
        assert b.last_timings is not None and b.last_timings.denoise_ms > 0
    # One walk alone goes through the same request (`RemoteGenerator.step`).
    _same_frames(here[0].step(_poses(here[0], 0)), there[0].step(_poses(there[0], 0)), "step")


def test_rewind_snapshots_live_in_the_child_and_are_freed_with_their_walks(host, one_torch_thread):
    here, there = host.spec.build(), host.new_generator()
    for gen in (here, there):
        gen.start(_image(5), np.eye(4))
        gen.step(_poses(gen, 1))
    marks = here.snapshot(), there.snapshot()
    for gen in (here, there):
        gen.step(_poses(gen, 1))
        gen.step(_poses(gen, 1))
    here.restore(marks[0])
    there.restore(marks[1])
    assert (there.chunk_index, there.frame_index) == (here.chunk_index, here.frame_index) == (1, 9)
    _same_frames(here.step(_poses(here, 2)), there.step(_poses(there, 2)), "after the restore")

    generators, snapshots = host.held()
    assert snapshots >= 1
    del marks, there, gen  # the loop variable held the last walk too
    # Freed in the child with the next request.
    assert host.held() == (generators - 1, snapshots - 1)


def test_an_error_in_the_child_fails_that_request_and_the_child_serves_on(host):
    gen, other = host.new_generator(), host.new_generator()
    for g in (gen, other):
        g.start(_image(1), np.eye(4))
    with pytest.raises(GeneratorProcessError, match=r"step failed in the generator process: ValueError: step needs finite poses"):
        gen.step(np.zeros((3, 4, 4)))
    assert other.step(_poses(other, 0)).shape == (9, 24, 32, 3)
    assert gen.step(_poses(gen, 0)).shape == (9, 24, 32, 3)


def test_step_batched_refuses_walks_of_both_kinds(host):
    here, there = host.spec.build(), host.new_generator()
    for gen in (here, there):
        gen.start(_image(1), np.eye(4))
    with pytest.raises(ValueError, match="beside walks of this process"):
        step_batched([there, here], [_poses(there, 0), _poses(here, 0)])
    with pytest.raises(ValueError, match="restore needs a snapshot this generator process took"):
        there.restore(here.snapshot())


def test_a_dead_child_ends_its_walks_and_a_new_walk_starts_a_fresh_child():
    host = GeneratorProcess(_spec(), torch_threads=1)
    try:
        host.start()
        old = host.new_generator()
        old.start(_image(1), np.eye(4))
        os.kill(host._process.pid, signal.SIGKILL)
        host._process.join(10)
        with pytest.raises(GeneratorProcessError, match="exited|gone"):
            old.step(_poses(old, 0))
        # A walk made now starts the next child at its first request; the old walk stays lost.
        new = host.new_generator()
        new.start(_image(2), np.eye(4))
        assert host.generation == 2 and host.alive
        assert new.step(_poses(new, 0)).shape == (9, 24, 32, 3)
        with pytest.raises(GeneratorProcessError, match="has exited; its walk is lost"):
            old.step(_poses(old, 0))
    finally:
        host.close()


def test_a_child_that_stops_answering_is_stopped_after_the_timeout():
    host = GeneratorProcess(_spec(), torch_threads=1, timeout_s=1.0)
    try:
        host.start()
        gen = host.new_generator()
        gen.start(_image(1), np.eye(4))
        os.kill(host._process.pid, signal.SIGSTOP)
        with pytest.raises(GeneratorProcessError, match=r"did not answer 'step' within 1 s and was stopped"):
            gen.step(_poses(gen, 0))
        assert not host.alive
    finally:
        host.close()


def test_generator_spec_builds_the_generator_it_names():
    spec = _spec({"sigmas": (1.0, 0.5, 0.0)})
    gen = spec.build()
    assert isinstance(gen, ChunkGenerator) and gen.config.sigmas == (1.0, 0.5, 0.0)
    assert tuple(gen.intrinsics) == INTRINSICS and gen.dtype == torch.float32
