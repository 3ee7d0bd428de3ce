"""The official streaming rules, each stated from its source and checked against what roam runs.

Every fact is from NVlabs/Sana @0d2318a (the same at 3f7bc74 "Release SANA-WM Streaming"), as written
down in /work/shared/reference/sana_wm.md, "Streaming as the official code runs it"; each test names
the file it comes from. The release profile is `model.profile.OFFICIAL_STREAMING`.
"""
from __future__ import annotations

import numpy as np
import torch

from model import GDNState, ModelConfig, SoftmaxState, WorldModel
from model.layers import RunLayout, ShortConv
from model.profile import OFFICIAL_STREAMING, attended_chunks, official_kv_window
from model.softmax_mixer import chunk_key_ranges
from model.state import KVCache
from tests.model.helpers import inputs, randomise

# The release's streaming config: `num_cached_blocks: 2`, `sink_token: true`.
NUM_CACHED_BLOCKS = 2
CHUNKS = 7  # chunks 0-6; the official layout [0, 4, 7, 10, ...]: chunk 0 = image latent + 3, then 3 each
CHUNK_SIZES = [4] + [3] * (CHUNKS - 1)


def official_window(k: int, num_cached_blocks: int = NUM_CACHED_BLOCKS) -> set[int]:
    """The official rule, transcribed: `get_kv_cache_window` with a sink token,
    s = max(k − num_cached_blocks + 1, 0), window [0] + range(s, k); the chunk itself is always attended."""
    s = max(k - num_cached_blocks + 1, 0)
    return set([0] + list(range(s, k))) | {k}


def test_the_official_window_rule_as_written_gives_these_chunks():
    """Source: `self_forcing_flow_euler_sampler.py` (`get_kv_cache_window`, around line 709) @0d2318a, with the
    release's `num_cached_blocks: 2` and `sink_token: true`: the sink counts toward the 2, so chunk k sees
    {0, k−1} and itself, never k−2."""
    expected = [{0}, {0, 1}, {0, 1, 2}, {0, 2, 3}, {0, 3, 4}, {0, 4, 5}, {0, 5, 6}]
    assert [official_window(k) for k in range(CHUNKS)] == expected
    assert official_kv_window(NUM_CACHED_BLOCKS, True) == (1, True)
    assert (OFFICIAL_STREAMING.kv_window_chunks, OFFICIAL_STREAMING.sink) == (1, True)
    for k in range(CHUNKS):
        assert set(OFFICIAL_STREAMING.attended_chunks(k)) == official_window(k), k
    # The embedded model keeps the window it was trained with: the sink apart + 2 recent chunks.
    assert set(attended_chunks(3, 2, True)) == {0, 1, 2, 3}


def _tiny(config: ModelConfig, seed: int = 0) -> WorldModel:
    torch.manual_seed(seed)
    model = WorldModel(config).eval()
    randomise(model, seed)
    return model


def test_chunks_0_to_6_attend_to_the_official_chunks_in_the_stream_state():
    """Source: `self_forcing_flow_euler_sampler.py` (`get_kv_cache_window`, around line 709) @0d2318a:
    with `num_cached_blocks: 2` and `sink_token: true` chunk k attends to chunks {0, k−1} and itself.

    Checked on roam's real streaming state: a tiny model streams 7 chunks with the release profile's window;
    before each chunk the keys its softmax blocks attend to (`KVCache.keys_values`, main and camera) are exactly
    the keys committed by the official chunks, and the chunk-causal mask of the same window agrees."""
    config = ModelConfig.preset("tiny", cam_conv_cross_chunk=OFFICIAL_STREAMING.cam_conv_cross_chunk)
    model = _tiny(config)
    x, t, text, mask, cam, plucker = inputs(config, 1, sum(CHUNK_SIZES), 2, 2)
    state = model.init_stream_state(1, (2, 2), kv_window_chunks=OFFICIAL_STREAMING.kv_window_chunks,
                                    sink=OFFICIAL_STREAMING.sink)
    softmax = [i for i, layer in enumerate(state.layers) if isinstance(layer, SoftmaxState)]
    assert softmax, "the tiny model has a softmax block"
    committed: dict[int, dict[tuple[int, str], torch.Tensor]] = {}
    start = 0
    with torch.no_grad():
        for k, size in enumerate(CHUNK_SIZES):
            for i in softmax:
                for branch in ("main", "cam"):
                    cache: KVCache = getattr(state.layers[i], branch)
                    keys, _ = cache.keys_values()
                    # Split what the chunk sees back into committed chunks and name them.
                    seen, offset = set(), 0
                    while offset < keys.shape[2]:
                        match = [j for j, kv in committed.items()
                                 if offset + kv[(i, branch)].shape[2] <= keys.shape[2]
                                 and torch.equal(keys[:, :, offset:offset + kv[(i, branch)].shape[2]], kv[(i, branch)])]
                        assert len(match) == 1, f"chunk {k}: keys at token {offset} are no single committed chunk"
                        seen.add(match[0])
                        offset += committed[match[0]][(i, branch)].shape[2]
                    assert seen | {k} == official_window(k), (k, branch, sorted(seen))
            frames = slice(start, start + size)
            new = model.stream_commit(x[:, :, frames], text, mask, cam[:, frames], plucker[:, :, frames], state,
                                      timestep=t[:, :, frames])
            committed[k] = {}
            for i in softmax:
                for branch in ("main", "cam"):
                    cache = getattr(new.layers[i], branch)
                    fresh = cache.sink_k if k == 0 else cache.k[:, :, -size * 4:]
                    committed[k][(i, branch)] = fresh.clone()
            state = new
            start += size
    # The chunk-causal mask of the same window (what training and `forward_chunk_causal` use) agrees.
    layout = RunLayout(sum(CHUNK_SIZES), 2, 2, tuple(CHUNK_SIZES), "chunk_causal",
                       OFFICIAL_STREAMING.kv_window_chunks, OFFICIAL_STREAMING.sink)
    starts = np.cumsum([0] + CHUNK_SIZES) * 4
    for k, (_, key_ranges) in enumerate(chunk_key_ranges(layout)):
        seen = {c for a, b in key_ranges for c in range(CHUNKS) if a <= starts[c] and starts[c + 1] <= b}
        assert seen == official_window(k), (k, key_ranges)


def test_camera_key_conv_context_is_zero_at_every_chunk_start():
    """Source: `diffusion/model/ops/fused_streaming.py` (~line 586) @0d2318a: "cam K conv has no cross-chunk
    state" — the camera branch's key conv is bidirectional inside each chunk and sees zeros before it.

    Checked on roam's streaming path with the release profile: the camera conv is called with no context and
    within the chunk, its output on each chunk equals the conv of that chunk alone with zero left context (while
    the main key conv does get the previous chunk's frames), and the state never carries camera conv frames."""
    assert OFFICIAL_STREAMING.cam_conv_cross_chunk is False
    config = ModelConfig.preset("tiny", cam_conv_cross_chunk=OFFICIAL_STREAMING.cam_conv_cross_chunk)
    model = _tiny(config)
    gdn = next(i for i, block in enumerate(model.blocks) if not block.is_softmax)
    calls: list[tuple[str, torch.Tensor, object, torch.Tensor | None, bool, torch.Tensor]] = []

    def record(name):
        def hook(module, args, kwargs, output):
            x, layout, context = args
            calls.append((name, x.clone(), layout, None if context is None else context.clone(),
                          kwargs.get("within_chunk", False), output.clone()))
        return hook

    model.blocks[gdn].attn.conv_k_cam.register_forward_hook(record("cam"), with_kwargs=True)
    model.blocks[gdn].attn.conv_k.register_forward_hook(record("main"), with_kwargs=True)
    sizes = [4, 3, 3]
    x, t, text, mask, cam, plucker = inputs(config, 1, sum(sizes), 2, 2)
    state = model.init_stream_state(1, (2, 2), kv_window_chunks=1, sink=True)
    start = 0
    with torch.no_grad():
        for k, size in enumerate(sizes):
            frames = slice(start, start + size)
            calls.clear()
            state = model.stream_commit(x[:, :, frames], text, mask, cam[:, frames], plucker[:, :, frames], state,
                                        timestep=t[:, :, frames])
            (_, xc, layout, context, within, out), = [c for c in calls if c[0] == "cam"]
            assert context is None and within, "the camera conv gets no context from earlier chunks"
            alone = ShortConv.forward(model.blocks[gdn].attn.conv_k_cam, xc, RunLayout(size, 2, 2, (size,), "stream"),
                                      torch.zeros(1, config.conv_kernel_size - 1, 4, config.hidden_size))
            torch.testing.assert_close(out, alone, rtol=0, atol=0)
            (_, _, _, main_context, _, _), = [c for c in calls if c[0] == "main"]
            if k > 0:
                assert main_context.abs().max() > 0, "the main key conv does read the previous chunk"
            for layer in state.layers:
                if isinstance(layer, GDNState):
                    assert not layer.cam_conv_context.any(), "no camera conv frames are carried"
            start += size


def test_the_streaming_release_is_built_with_the_camera_conv_inside_each_chunk(tmp_path):
    """Source: `diffusion/model/ops/fused_streaming.py` (~line 586) @0d2318a ("cam K conv has no cross-chunk
    state"). The streaming release folder loads with `cam_conv_cross_chunk=False`; the embedded model keeps
    the `true` its roam_tiny.json records (model/weights/roam_tiny.json), and streams with the window that json
    records (since step 17 the official one, 1 chunk + the sink), which the embedded profile carries."""
    import json
    from pathlib import Path

    from model.release import load_release
    from tests.pipeline.tiny_release import write_streaming

    release = load_release(write_streaming(tmp_path / "SANA-WM_streaming"))
    assert release.dit.config.cam_conv_cross_chunk is False
    assert release.profile.cam_conv_cross_chunk is False and release.profile.kv_window_chunks == 1
    recorded = json.loads((Path(__file__).resolve().parents[2] / "model/weights/roam_tiny.json").read_text())
    assert recorded["model"]["cam_conv_cross_chunk"] is True
    assert (recorded["generator"]["kv_window_chunks"], recorded["generator"]["sink"]) == (1, True)
    from model.release import load_embedded

    embedded = load_embedded(height=32, width=32, fps=16.0, hfov_deg=60.0)
    assert (embedded.profile.kv_window_chunks, embedded.profile.sink) == (1, True)
    assert embedded.profile.cam_conv_cross_chunk is True


class _RecordingBf16Model:
    """A stand-in for a bf16 DiT: records the timestep and latent of every call; velocity = x·0.1 in bf16."""

    dtype = torch.bfloat16

    def __init__(self):
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def init_stream_state(self, batch, latent_hw, kv_window_chunks, sink):
        return None

    def null_text(self, batch):
        return torch.zeros(batch, 1, 4, dtype=torch.bfloat16), torch.ones(batch, 1, dtype=torch.long)

    def stream_forward(self, x, timestep, text, text_mask, camera_conditions, chunk_plucker, state):
        self.calls.append((timestep.clone(), x.clone()))
        return (0.1 * x).to(torch.bfloat16)

    def stream_commit(self, x, text, text_mask, camera_conditions, chunk_plucker, state):
        return state


def _bf16_generator(fp32: bool):
    from streaming.generator import ChunkGenerator, GeneratorConfig
    from tests.streaming.fakes import FakeConditioner, FakeVAE

    class Bf16InputVAE(FakeVAE):
        def encode(self, video):
            return super().encode(video.float())

    model = _RecordingBf16Model()
    config = GeneratorConfig(chunk_latents=3, sigmas=OFFICIAL_STREAMING.sigmas, fp32_sampling=fp32)
    gen = ChunkGenerator(model, Bf16InputVAE(), config, (32.0, 32.0, 16.0, 16.0), dtype=torch.bfloat16,
                         conditioner_factory=FakeConditioner)
    gen.start(np.zeros((32, 32, 3), np.uint8), np.eye(4))
    gen.step(np.repeat(np.eye(4)[None], gen.frames_for_next_chunk(), 0))
    return model


def test_timesteps_and_euler_updates_are_fp32_for_a_bf16_model():
    """Source: `self_forcing_flow_euler_sampler.py` @0d2318a: σ = 1000, 960, 889, 727, 0 through
    `FlowMatchEulerDiscreteScheduler(shift=1.0)` with explicit sigmas, the timestep tensor and the Euler update
    in fp32. The model truncates the timestep to an integer (`timestep.long()`), so a bf16 timestep would turn
    889 into 888 and 727 into 728.

    roam with the release profile (fp32_sampling) hands a bf16 model fp32 timesteps whose integers are the
    official ones, and fp32 latents; the model-dtype path (the embedded profile) shows the bf16 rounding."""
    assert OFFICIAL_STREAMING.fp32_sampling is True
    official = [1000, 960, 889, 727]
    model = _bf16_generator(fp32=True)
    assert [int(ts[0, 0, 1].long()) for ts, _ in model.calls] == official
    assert all(ts.dtype == torch.float32 and ts[0, 0, 0] == 0 for ts, _ in model.calls), "image latent at t = 0"
    assert all(x.dtype == torch.float32 for _, x in model.calls), "the Euler updates stay in fp32"
    rounded = _bf16_generator(fp32=False)
    assert [int(ts[0, 0, 1].long()) for ts, _ in rounded.calls] == [1000, 960, 888, 728]
    assert all(ts.dtype == torch.bfloat16 for ts, _ in rounded.calls)
