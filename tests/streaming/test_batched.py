"""Cross-session batching: `step_batched` over walks at different chunk indices (one on its first
chunk, with its image latent) equals each walk's own `ChunkGenerator.step`, frame for frame."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model import GDNState, ModelConfig, SoftmaxState, WorldModel
from model.vae import TinyVAE, TinyVAEConfig
from streaming.batched import step_batched
from streaming.generator import ChunkGenerator, GeneratorConfig
from tests.model.helpers import randomise
from tests.streaming.fakes import FakeConditioner, FakeModel, FakeVAE

# Chunks each walk has run before the batched rounds: 0 = its next chunk is its first (image latent
# beside later chunks); 1 and 2 = KV windows still filling (their own groups); 3, 5, 3 = steady
# state, one group at different RoPE positions.
HISTORY = (0, 1, 3, 5, 2, 3)


def _model_and_vae(**config) -> tuple[WorldModel, TinyVAE]:
    torch.manual_seed(0)
    model = WorldModel(ModelConfig.preset("tiny", **config)).eval()
    randomise(model, seed=1)
    vae = TinyVAE(TinyVAEConfig(latent_channels=model.config.in_channels)).eval()
    randomise(vae, seed=2, scale=0.05)
    return model, vae


@pytest.fixture(scope="module")
def model_and_vae():
    return _model_and_vae()


@pytest.fixture(scope="module")
def anchored_model_and_vae():
    """The tiny model with the clean-anchor input, the copy gate, its still term, the ground-plane copy, the
    depth copy, the start copy (sampled bicubically, as shipped) and the background copy with its gate (model.anchor,
    model.anchor_depth), random like the rest; every term partly open, so each row's own parallax, ground, predicted
    depth, start frame and hidden state shape its copy."""
    model, vae = _model_and_vae(anchor_input=True, anchor_copy=True, anchor_copy_still=True, anchor_ground_m=1.6,
                                anchor_depth_copy=True, anchor_start_fade_m=2.0, anchor_start_interpolation="bicubic",
                                anchor_background_eye_m=1.6, anchor_background_gate=True)
    with torch.no_grad():
        model.copy_still.fill_(0.7)
        model.copy_ground.fill_(0.8)
        model.copy_depth.fill_(0.6)
        model.copy_start.fill_(0.9)
        model.copy_background.fill_(0.7)
        model.copy_still_log_metres.fill_(math.log(0.3))
    return model, vae


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)


def _poses(gen: ChunkGenerator, walk: int) -> np.ndarray:
    """A different walk per session: forward at its own speed, turning at its own rate."""
    n = gen.frames_for_next_chunk()
    poses = np.repeat(np.eye(4)[None], n, 0)
    t = np.arange(gen.frame_index, gen.frame_index + n)
    poses[:, 2, 3] = t * 0.05 * (walk + 1)
    angle = t * 0.02 * (walk - 2)
    poses[:, 0, 0] = poses[:, 2, 2] = np.cos(angle)
    poses[:, 0, 2], poses[:, 2, 0] = np.sin(angle), -np.sin(angle)
    return poses


def _walks(model, vae, sampler: dict) -> list[ChunkGenerator]:
    walks = []
    for walk, chunks in enumerate(HISTORY):
        gen = ChunkGenerator(model, vae, GeneratorConfig(chunk_latents=2, seed=10 + walk, **sampler), (28.0, 28.0, 16.0, 12.0))
        gen.start(_image(walk), np.eye(4))
        for _ in range(chunks):
            gen.step(_poses(gen, walk))
        walks.append(gen)
    return walks


def _state_tensors(state) -> list[torch.Tensor]:
    out = []
    for layer in state.layers:
        if isinstance(layer, GDNState):
            out += [layer.kv, layer.z, layer.cam_kv, layer.conv_context, layer.ffn_context]
        else:
            assert isinstance(layer, SoftmaxState)
            out += [layer.main.k, layer.main.v, layer.cam.k, layer.ffn_context]
    return out


# The official 4-step sampler from noise, the embedded one-step warm start (each row's own anchor), and
# that with the anchor input, copy gate and still term (each row's own anchor latent and camera, warped by
# its own rotation, its gate opened by its own parallax).
SAMPLERS = {"noise": ({}, False), "warm": ({"sigmas": (0.6, 0.0), "warm_start": True}, False),
            "warm-anchor-input": ({"sigmas": (0.6, 0.0), "warm_start": True}, True)}


@pytest.mark.parametrize("split", [False, True], ids=["one-thread", "halves-side-by-side"])
@pytest.mark.parametrize("sampler, anchored", SAMPLERS.values(), ids=SAMPLERS.keys())
def test_batched_generation_equals_per_session_generation(request, monkeypatch, one_torch_thread, sampler, anchored,
                                                          split):
    """Batched equals per-session with the rows in one thread, and split in two halves side by side
    (`streaming.overlap`: walks 0–2 and 3–5, each half grouped on its own)."""
    monkeypatch.setattr("streaming.batched.overlaps_phases", lambda device: split)
    model, vae = request.getfixturevalue("anchored_model_and_vae" if anchored else "model_and_vae")
    single, batched = _walks(model, vae, sampler), _walks(model, vae, sampler)
    batch_sizes = []
    forward = model.stream_forward

    def recording_forward(x, *args):
        batch_sizes.append(x.shape[0])
        return forward(x, *args)

    for _ in range(2):
        expected = [gen.step(_poses(gen, walk)) for walk, gen in enumerate(single)]
        model.stream_forward = recording_forward
        try:
            got = step_batched(batched, [_poses(gen, walk) for walk, gen in enumerate(batched)])
        finally:
            del model.stream_forward
        for walk, (a, b) in enumerate(zip(expected, got)):
            assert a.shape == b.shape, f"walk {walk}"
            # uint8 frames: float rounding may move a value by one step, never more.
            diff = np.abs(a.astype(int) - b.astype(int))
            assert diff.max() <= 1 and diff.mean() < 0.01, f"walk {walk}: max {diff.max()}, mean {diff.mean()}"
    # Per Euler step, round 1 runs 4 groups: the first chunk, the two filling windows (1 and 2 chunks
    # committed) and the three steady walks (batch 3); round 2 runs 3: the new second chunk, the new
    # third, and the four steady walks (batch 4), the one that was at 2 chunks having joined them.
    steps = len(GeneratorConfig(**sampler).sigmas) - 1
    if split:
        # Round 1: walks 0–2 (chunks 0, 1, 3: three groups) and 3–5 (5, 2, 3: the two steady ones
        # together); round 2: 1, 2, 4 (three groups) and 6, 3, 4 (the filling window full now: one group).
        expected = [1] * 3 * steps + [1, 2] * steps + [1] * 3 * steps + [3] * steps
    else:
        expected = [1] * 3 * steps + [3] * steps + [1] * 2 * steps + [4] * steps
    assert sorted(batch_sizes) == sorted(expected), batch_sizes
    for walk, (a, b) in enumerate(zip(single, batched)):
        assert (a.chunk_index, a.frame_index, a.latent_index) == (b.chunk_index, b.frame_index, b.latent_index)
        assert a.state.frame_index == b.state.frame_index and b.state.batch_size == 1
        for p, q in zip(_state_tensors(a.state), _state_tensors(b.state), strict=True):
            torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-4, msg=f"walk {walk}")
        torch.testing.assert_close(b.state.last_latent, a.state.last_latent, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(b.state.last_camera, a.state.last_camera)
        assert torch.equal(a.rng.get_state(), b.rng.get_state())
        assert a.decoder.latents_seen == b.decoder.latents_seen
        for p, q in zip(a.decoder.contexts, b.decoder.contexts, strict=True):
            torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-4)


def test_unstackable_states_run_alone_and_bad_calls_are_refused():
    gens = []
    for seed in range(2):
        gen = ChunkGenerator(FakeModel(), FakeVAE(), GeneratorConfig(seed=seed), (32.0, 32.0, 16.0, 16.0), conditioner_factory=FakeConditioner)
        gen.start(np.zeros((32, 32, 3), np.uint8), np.eye(4))
        gens.append(gen)
    twins = []
    for seed in range(2):
        gen = ChunkGenerator(FakeModel(), FakeVAE(), GeneratorConfig(seed=seed), (32.0, 32.0, 16.0, 16.0), conditioner_factory=FakeConditioner)
        gen.start(np.zeros((32, 32, 3), np.uint8), np.eye(4))
        twins.append(gen)
    poses = [np.repeat(np.eye(4)[None], g.frames_for_next_chunk(), 0) for g in gens]
    got = step_batched(gens, poses)
    assert all(np.array_equal(a, t.step(p)) for a, t, p in zip(got, twins, poses))
    with pytest.raises(ValueError, match="one pose array per generator"):
        step_batched(gens, poses[:1])
    with pytest.raises(ValueError, match="same generator twice"):
        step_batched([gens[0], gens[0]], [poses[0], poses[0]])
