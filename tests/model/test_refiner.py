"""The streaming refiner (model.refiner.StreamRefiner) against the official refiner rules and diffusers' pipeline.

Facts from NVlabs/Sana @0d2318a, `diffusion/refiner/diffusers_ltx2_refiner.py` (sana_wm.md, "Streaming as the
official code runs it"): re-noise σ = (0.909375, 0.725, 0.421875, 0), blocks of 3 latents, a KV window of
11 frames = 1 sink + 10 recent, the image latent a sink that is never refined. diffusers 0.42.1 ships the
same recipe as `SanaWMLTX2Refiner`; a tiny random one runs here on the CPU.
"""
from __future__ import annotations

import inspect

import pytest
import torch

from model.profile import OFFICIAL_STREAMING, RefinerSettings
from model.refiner import RefinerState, StreamRefiner, pack_latents
from tests.pipeline.tiny_refiner import tiny_refiner_parts

PROMPT = "a quiet forest path"
HW = (2, 3)
BLOCKS = 5  # 15 refined frames: more than the 10 recent frames the window keeps


@pytest.fixture(scope="module")
def pipe():
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.sana_wm import SanaWMLTX2Refiner

    transformer, connectors, tokenizer, encoder = tiny_refiner_parts(seed=0)
    return SanaWMLTX2Refiner(transformer=transformer, connectors=connectors, tokenizer=tokenizer, text_encoder=encoder,
                             scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0))


@pytest.fixture(scope="module")
def refiner(pipe):
    return StreamRefiner(pipe, OFFICIAL_STREAMING.refiner, fps=16.0)


def _latents(seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 8, 1 + 3 * BLOCKS, *HW, generator=generator)  # image latent + 5 blocks


def _stream(refiner: StreamRefiner, z: torch.Tensor) -> tuple[torch.Tensor, list[RefinerState]]:
    embeds, mask = refiner.encode_prompt(PROMPT)
    state = refiner.start(z[:, :, :1], embeds, mask)
    outs, states = [z[:, :, :1]], [state]
    for k in range(BLOCKS):
        out, state = refiner.refine(z[:, :, 1 + 3 * k:4 + 3 * k], state)
        outs.append(out)
        states.append(state)
    return torch.cat(outs, dim=2), states


def test_refiner_settings_are_the_official_ones():
    """Source: `diffusion/refiner/diffusers_ltx2_refiner.py` @0d2318a: `STAGE_2_DISTILLED_SIGMA_VALUES =
    (0.909375, 0.725, 0.421875, 0.0)`; the chunk-causal recipe `block_size` 3, `kv_max_frames` 11 ("1 sink + 10
    recent"), `sink_size` 1, seed 42; always on in streaming. diffusers' SanaWMLTX2Refiner has the same defaults."""
    from diffusers.pipelines.sana_wm import SanaWMLTX2Refiner
    from diffusers.pipelines.sana_wm.refiner import STAGE_2_DISTILLED_SIGMA_VALUES

    settings = OFFICIAL_STREAMING.refiner
    assert settings is not None, "the refiner is on in the release profile"
    assert settings.sigmas == (0.909375, 0.725, 0.421875, 0.0) == STAGE_2_DISTILLED_SIGMA_VALUES
    assert (settings.block_latents, settings.kv_max_frames, settings.sink_frames, settings.recent_frames) == (3, 11, 1, 10)
    assert settings.seed == 42 and settings.text_tokens == 1024
    defaults = inspect.signature(SanaWMLTX2Refiner.__call__).parameters
    assert (defaults["block_size"].default, defaults["kv_max_frames"].default, defaults["sink_size"].default) == (3, 11, 1)
    assert settings.block_latents == OFFICIAL_STREAMING.chunk_latents, "one refiner block per stage-1 chunk"
    with pytest.raises(ValueError, match="kv_max_frames"):
        RefinerSettings(kv_max_frames=1, sink_frames=1)


def test_streamed_blocks_equal_diffusers_refiner_on_the_whole_clip(pipe, refiner):
    """The stream (one block at a time, as stage 1 commits them) equals `SanaWMLTX2Refiner.__call__` on the whole
    stage-1 latent, exactly: same window, sink RoPE, noise, Euler steps and captures. The image latent (the sink)
    comes out unrefined."""
    z = _latents()
    whole = pipe(z, PROMPT, fps=16.0, output_type="latent")
    streamed, _ = _stream(refiner, z)
    torch.testing.assert_close(streamed, whole, rtol=0, atol=0)
    assert torch.equal(whole[:, :, :1], z[:, :, :1]), "the sink is never refined"
    assert (streamed[:, :, 1:] - z[:, :, 1:]).abs().max() > 1e-3


def test_each_block_is_renoised_at_sigma0_and_sees_the_sink_and_ten_recent_frames(refiner):
    """Source: `diffusion/refiner/diffusers_ltx2_refiner.py` @0d2318a: x = (1 − σ₀)·z + σ₀·ε with σ₀ = 0.909375 and
    one ε per block, Euler over σ = 0.909375, 0.725, 0.421875 (then 0), a σ = 0 capture pass; the window holds the
    1-frame sink and at most 10 recent refined frames (kv_max_frames 11)."""
    from diffusers.utils.torch_utils import randn_tensor

    calls = []
    tokens_per_frame = HW[0] * HW[1]

    def hook(module, args, kwargs):
        cache = kwargs["kv_cache"]
        layer = cache.get(0)
        history = layer.get_history()
        sink = layer.get_sink()
        calls.append({
            "mode": kwargs["kv_cache_mode"], "t": float(kwargs["timestep"][0, 0]),
            "x": kwargs["hidden_states"].clone(),
            "history": 0 if history is None else history[0].shape[1] // tokens_per_frame,
            "sink": 0 if sink is None else sink[0].shape[1] // tokens_per_frame,
        })

    handle = refiner.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        z = _latents(seed=2)
        _stream(refiner, z)
    finally:
        handle.remove()
    assert calls[0]["mode"] == "capture_pre_rope" and calls[0]["t"] == 0.0, "the sink: the image latent at σ = 0"
    blocks = [calls[1 + 4 * k:5 + 4 * k] for k in range(BLOCKS)]
    generator = torch.Generator().manual_seed(42)
    for k, block in enumerate(blocks):
        assert [c["mode"] for c in block] == ["inject"] * 3 + ["inject_and_capture_post_rope"]
        assert [c["t"] for c in block] == pytest.approx([909.375, 725.0, 421.875, 0.0], abs=1e-3)
        assert all(c["sink"] == 1 for c in block), "one sink frame in every window"
        assert all(c["history"] == min(3 * k, 10) for c in block), f"block {k}: window of min(3k, 10) recent frames"
        clean = z[:, :, 1 + 3 * k:4 + 3 * k]
        noise = randn_tensor(tuple(clean.shape), generator=generator, device=torch.device("cpu"), dtype=torch.float32)
        sigma0 = float(torch.tensor(0.909375, dtype=torch.float32))
        torch.testing.assert_close(block[0]["x"], pack_latents((1 - sigma0) * clean + sigma0 * noise))


def test_refiner_state_is_not_changed_by_refine_and_replays(refiner):
    """A `RefinerState` is a value: refining from the same state twice gives the same block (a rewind snapshot
    is a reference to it), and the state refined from is left as it was."""
    z = _latents(seed=3)
    _, states = _stream(refiner, z)
    before = states[2]
    keys = [k.clone() for block in before.blocks for k in block.keys]
    rng = before.rng_state.clone()
    a, after_a = refiner.refine(z[:, :, 7:10], before)
    b, after_b = refiner.refine(z[:, :, 7:10], before)
    assert torch.equal(a, b) and torch.equal(after_a.rng_state, after_b.rng_state)
    assert all(torch.equal(k, k2) for k, k2 in zip(keys, (k for block in before.blocks for k in block.keys)))
    assert torch.equal(rng, before.rng_state) and before.next_frame == 7
    # The window keeps whole blocks covering the last 10 frames, and no more.
    assert [block.frames for block in states[-1].blocks] == [3, 3, 3, 3] and states[-1].next_frame == 16


def test_bad_inputs_are_named(refiner):
    z = _latents()
    embeds, mask = refiner.encode_prompt(PROMPT)
    with pytest.raises(ValueError, match="image_latent must be"):
        refiner.start(z[:, :, :2], embeds, mask)
    state = refiner.start(z[:, :, :1], embeds, mask)
    with pytest.raises(ValueError, match="block must be"):
        refiner.refine(z[:, :, 1:5], state)
    with pytest.raises(TypeError, match="RefinerState"):
        refiner.refine(z[:, :, 1:4], None)
