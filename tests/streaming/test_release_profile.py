"""The live generator run as the streaming release's profile says: the dropped first frame, the prompt, the refiner
stage and its place in the rewind snapshot (fakes for the layout, the tiny random streaming release end to end)."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from model.profile import OFFICIAL_STREAMING
from streaming.buffer import FrameBuffer
from streaming.generator import ChunkGenerator, GeneratorConfig
from streaming.worker import InputEnvelope, StreamJob
from tests.streaming.fakes import FakeConditioner, FakeIntegrator, FakeModel, FakeSnapshot, FakeVAE

IMAGE = (np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3)


def _fake_generator(drop: bool) -> ChunkGenerator:
    config = GeneratorConfig(chunk_latents=2, seed=3, drop_first_frame=drop)
    return ChunkGenerator(FakeModel(), FakeVAE(), config, (32.0, 32.0, 16.0, 16.0), conditioner_factory=FakeConditioner)


def test_the_first_decoded_frame_is_dropped():
    """Source: the official streaming decode drops the first decoded frame (`drop_first_pixel=True`; sana_wm.md,
    "Streaming as the official code runs it", NVlabs/Sana @0d2318a; the bidirectional script
    `inference_video_scripts/inference_sana_wm.py` @1a52678 does the same). With the release profile chunk 0
    returns its frames without the start image's reconstruction; nothing else changes."""
    assert OFFICIAL_STREAMING.drop_first_frame is True
    kept, dropped = _fake_generator(False), _fake_generator(True)
    for gen in (kept, dropped):
        gen.start(IMAGE, np.eye(4))
    for chunk in range(3):
        n = kept.frames_for_next_chunk()
        assert dropped.frames_for_next_chunk() == n, "poses are still needed for every raw frame"
        assert dropped.frames_shown_for_next_chunk() == (n - 1 if chunk == 0 else n)
        poses = np.repeat(np.eye(4)[None], n, 0)
        a, b = kept.step(poses), dropped.step(poses)
        if chunk == 0:
            assert b.shape[0] == n - 1 and np.array_equal(b, a[1:])
        else:
            assert np.array_equal(a, b)
    assert dropped.frame_index == kept.frame_index - 1


async def test_each_frame_shown_keeps_its_own_pose_when_the_first_is_dropped():
    """Every frame shown has exactly one pose: with the first frame dropped, chunk 0's frames carry poses 1..n-1."""
    loop = asyncio.get_running_loop()
    job = StreamJob(session_id="t", generator=_fake_generator(True),
                    make_integrator=lambda: FakeIntegrator(np.eye(4), fps=16.0, speed=2.0),
                    buffer=FrameBuffer(loop, capacity=40), start_image=IMAGE, world_T_cam0=np.eye(4),
                    standing_input=InputEnvelope(1, FakeSnapshot(1, 1), 1, (0.0, 0.0, 0.0)), idle_chunks=0)
    first = job.run_chunk()
    n = job.generator.temporal_stride * 2 + 1
    assert len(first) == n - 1 and [f.frame_id for f in first] == list(range(n - 1))
    # The integrator walks forward 2 m/s from the start pose: frame i of the walk sits at z = 2·i/16.
    assert [round(float(f.world_T_cam[2, 3]) * 8) for f in first] == list(range(1, n))
    second = job.run_chunk()
    assert second[0].frame_id == n - 1 and round(float(second[0].world_T_cam[2, 3]) * 8) == n


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    from model.release import load_release
    from tests.pipeline.tiny_refiner import write_official_streaming

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield load_release(write_official_streaming(tmp_path_factory.mktemp("release") / "SANA-WM_streaming"))
    finally:
        torch.set_num_threads(threads)


def _release_generator(release, prompts, prompt: str = "a quiet forest path", refiner=True) -> ChunkGenerator:
    profile = release.profile
    config = GeneratorConfig(chunk_latents=profile.chunk_latents, sigmas=profile.sigmas, kv_window_chunks=profile.kv_window_chunks,
                             sink=profile.sink, fp32_sampling=profile.fp32_sampling, drop_first_frame=profile.drop_first_frame, seed=5)
    return ChunkGenerator(release.dit, release.vae, config, (40.0, 40.0, 32.0, 32.0), prompt=lambda: prompts.encode(prompt),
                          refiner=release.refiner if refiner else None)


def _poses(n: int, start: int) -> np.ndarray:
    poses = np.repeat(np.eye(4)[None], n, 0)
    poses[:, 2, 3] = 0.05 * (start + np.arange(n))
    return poses


def test_the_release_streams_with_its_prompt_refiner_and_rewinds_exactly(release, one_torch_thread):
    """The tiny streaming release with its profile: the prompt is encoded once for both walks, the refiner changes
    the frames, and a snapshot (stage-1 state, decoder cache, refiner state, RNG) replays a chunk exactly; a
    snapshot without the refiner's state would not (the refiner's window and noise are part of the walk)."""
    from model.prompts import PromptCache

    assert release.profile.refiner is not None and release.refiner is not None
    image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    prompts = PromptCache(release.text_encoder, refiner=release.refiner)
    gen = _release_generator(release, prompts)
    gen.start(image, np.eye(4))
    start = 0
    for _ in range(2):
        n = gen.frames_for_next_chunk()
        frames = gen.step(_poses(n, start))
        start += n
    assert frames.shape == (24, 64, 64, 3)
    snap = gen.snapshot()
    assert snap.refiner is gen.refiner_state, "the refiner state is in the snapshot (a value, kept by reference)"
    a = gen.step(_poses(24, start))
    gen.restore(snap)
    b = gen.step(_poses(24, start))
    assert np.array_equal(a, b)
    # Restoring stage 1 but not the refiner's window gives other frames.
    gen.restore(snap)
    gen.refiner_state = release.refiner.refine(torch.zeros(1, 8, 3, 2, 2), snap.refiner)[1]
    c = gen.step(_poses(24, start))
    assert not np.array_equal(a, c)
    # A second walk with the same prompt reuses its encoding; without the refiner the frames differ.
    plain = _release_generator(release, prompts, refiner=False)
    plain.start(image, np.eye(4))
    assert prompts.encodes == 1 and plain.prompt is gen.prompt
    first = plain.step(_poses(plain.frames_for_next_chunk(), 0))
    gen.start(image, np.eye(4))
    refined = gen.step(_poses(gen.frames_for_next_chunk(), 0))
    assert first.shape == refined.shape == (24, 64, 64, 3) and not np.array_equal(first, refined)
    assert gen.last_timings.refine_ms > 0 and plain.last_timings.refine_ms == 0


def test_a_refiner_block_must_be_a_chunk(release):
    profile = release.profile
    config = GeneratorConfig(chunk_latents=2, sigmas=profile.sigmas)
    with pytest.raises(ValueError, match="blocks of 3 latents, but chunks have 2"):
        ChunkGenerator(release.dit, release.vae, config, (40.0, 40.0, 32.0, 32.0), refiner=release.refiner)


def test_generate_runs_the_release_profile_with_its_prompt_and_refiner(release, one_torch_thread):
    """`generate` in distilled mode streams the release as its profile says (window, fp32, refiner) and keeps
    frame 0, so every frame has its pose; the prompt reaches both text encoders."""
    from streaming.offline import generate_video

    image = (np.random.default_rng(1).random((48, 80, 3)) * 255).astype(np.uint8)
    video = generate_video(release, image, "w-48", mode="distilled", n_frames=49, prompt="a quiet forest path", seed=2)
    assert video.frames.shape == (49, 64, 64, 3) and video.world_T_cams.shape == (49, 4, 4)
    other = generate_video(release, image, "w-48", mode="distilled", n_frames=49, prompt="the city at night", seed=2)
    assert not np.array_equal(video.frames[1:], other.frames[1:]), "the prompt conditions the walk"
