"""Streaming chunk by chunk through StreamState equals the chunk-causal forward of the whole clip."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from model import GDNState, ModelConfig, SoftmaxState, StreamState, WorldModel
from model.rope import rotary
from model.ucpe import CameraGeometry
from tests.model.helpers import SMALL_OFFICIAL, inputs, randomise


def _model(config: ModelConfig, seed: int = 0) -> WorldModel:
    torch.manual_seed(seed)
    model = WorldModel(config).eval()
    randomise(model, seed)
    return model


def stream(model, x, t, text, mask, cam, plucker, chunk_sizes, *, kv_window_chunks, sink):
    """Velocities of every chunk (denoise call against the state, then commit with the same timesteps)."""
    state = model.init_stream_state(x.shape[0], tuple(x.shape[-2:]), kv_window_chunks=kv_window_chunks, sink=sink)
    outs, start = [], 0
    for size in chunk_sizes:
        frames = slice(start, start + size)
        chunk = (x[:, :, frames], text, mask, None if cam is None else cam[:, frames],
                 None if plucker is None else plucker[:, :, frames])
        before = state.clone()
        outs.append(model.stream_forward(chunk[0], t[:, :, frames], *chunk[1:], state))
        assert _states_equal(state, before), "stream_forward changed the state"
        state = model.stream_commit(*chunk, state, timestep=t[:, :, frames])
        assert _states_equal(state, state) and state.frame_index == start + size
        start += size
    return torch.cat(outs, dim=2), state


def _states_equal(a: StreamState, b: StreamState) -> bool:
    def tensors(state):
        out = []
        for layer in state.layers:
            if isinstance(layer, GDNState):
                out += [layer.kv, layer.z, layer.cam_kv, layer.conv_context, layer.cam_conv_context, layer.ffn_context]
            else:
                out += [layer.main.k, layer.main.v, layer.cam.k, layer.cam.v, layer.ffn_context]
                out += [c for c in (layer.main.sink_k, layer.cam.sink_v) if c is not None]
        return out
    return all(torch.equal(p, q) for p, q in zip(tensors(a), tensors(b), strict=True))


CASES = [
    pytest.param("tiny", [4, 3, 3, 3], None, False, id="official-layout-4-3-3-3-full"),
    pytest.param("tiny", [4, 3, 3, 3, 3], 1, True, id="window1-sink"),
    pytest.param("tiny", [4, 3, 3, 3, 3], 2, False, id="window2-nosink"),
    pytest.param("small", [4, 3, 3, 3], 2, True, id="head24-window2-sink"),
    pytest.param("small", [1, 2, 1, 3], 0, True, id="head24-window0-sink-odd-chunks"),
    pytest.param("tiny-cam-conv-in-chunk", [4, 3, 3], 2, True, id="camera-conv-within-chunk"),
]


@pytest.mark.parametrize("which, chunk_sizes, window, sink", CASES)
def test_stream_equals_chunk_causal(which, chunk_sizes, window, sink):
    if which == "small":
        config = ModelConfig.from_official_dict(SMALL_OFFICIAL)
    else:
        config = ModelConfig.preset("tiny", cam_conv_cross_chunk=which == "tiny")
    model = _model(config)
    frames = sum(chunk_sizes)
    x, t, text, mask, cam, plucker = inputs(config, 2, frames, 3, 2)
    with torch.no_grad():
        whole = model.forward_chunk_causal(x, t, text, mask, cam, plucker, chunk_sizes=chunk_sizes,
                                           kv_window_chunks=window, sink=sink)
        streamed, state = stream(model, x, t, text, mask, cam, plucker, chunk_sizes, kv_window_chunks=window, sink=sink)
        # a window that hides something must change the result, or the test would not see the mask
        if window is not None and len(chunk_sizes) > window + 1 + sink:
            unwindowed = model.forward_chunk_causal(x, t, text, mask, cam, plucker, chunk_sizes=chunk_sizes)
            assert (unwindowed - whole).abs().max() > 1e-4
    assert state.chunk_index == len(chunk_sizes) and state.frame_index == frames
    scale = whole.abs().max()
    assert torch.isfinite(whole).all()
    assert (streamed - whole).abs().max() <= 1e-4 * scale


def test_stream_without_camera_equals_chunk_causal():
    model = _model(ModelConfig.preset("tiny"))
    x, t, text, mask, _, _ = inputs(model.config, 1, 7, 2, 2)
    with torch.no_grad():
        whole = model.forward_chunk_causal(x, t, text, mask, chunk_sizes=[4, 3], kv_window_chunks=2, sink=True)
        streamed, _ = stream(model, x, t, text, mask, None, None, [4, 3], kv_window_chunks=2, sink=True)
    assert (streamed - whole).abs().max() <= 1e-4 * whole.abs().max()


def test_chunk_causal_is_causal_across_chunks():
    model = _model(ModelConfig.preset("tiny"))
    x, t, text, mask, cam, plucker = inputs(model.config, 1, 7, 2, 3)
    x2 = x.clone()
    x2[:, :, 4:] += 1.0
    with torch.no_grad():
        a = model.forward_chunk_causal(x, t, text, mask, cam, plucker, chunk_sizes=[4, 3])
        b = model.forward_chunk_causal(x2, t, text, mask, cam, plucker, chunk_sizes=[4, 3])
        c = model(x, t, text, mask, cam, plucker)
        d = model(x2, t, text, mask, cam, plucker)
    assert torch.equal(a[:, :, :4], b[:, :, :4])
    assert (a[:, :, 4:] - b[:, :, 4:]).abs().max() > 1e-3
    assert (c[:, :, :4] - d[:, :, :4]).abs().max() > 1e-3  # bidirectional: the future matters


def test_single_chunk_equals_bidirectional():
    model = _model(ModelConfig.preset("tiny"))
    x, t, text, mask, cam, plucker = inputs(model.config, 2, 5, 3, 2)
    with torch.no_grad():
        bidirectional = model(x, t, text, mask, cam, plucker)
        single = model.forward_chunk_causal(x, t, text, mask, cam, plucker, chunk_sizes=[5])
        streamed, _ = stream(model, x, t, text, mask, cam, plucker, [5], kv_window_chunks=2, sink=True)
    assert (single - bidirectional).abs().max() <= 1e-5 * bidirectional.abs().max()
    assert (streamed - bidirectional).abs().max() <= 1e-4 * bidirectional.abs().max()


def test_state_clone_and_rewind():
    model = _model(ModelConfig.preset("tiny"))
    x, t, text, mask, cam, plucker = inputs(model.config, 1, 6, 2, 2)
    state = model.init_stream_state(1, (2, 2))
    with torch.no_grad():
        state = model.stream_commit(x[:, :, :3], text, mask, cam[:, :3], plucker[:, :, :3], state)
        snapshot = state.clone()
        first = model.stream_forward(x[:, :, 3:], t[:, :, 3:], text, mask, cam[:, 3:], plucker[:, :, 3:], state)
        later = model.stream_commit(x[:, :, 3:], text, mask, cam[:, 3:], plucker[:, :, 3:], state)
        again = model.stream_forward(x[:, :, 3:], t[:, :, 3:], text, mask, cam[:, 3:], plucker[:, :, 3:], snapshot)
    assert later.frame_index == 6 and snapshot.frame_index == 3
    assert torch.equal(first, again)
    assert isinstance(state.to("cpu"), StreamState) and state.to("cpu").nbytes() == state.nbytes()


def test_wrong_state_type_raises():
    model = WorldModel(ModelConfig.preset("tiny"))
    x, t, text, mask, cam, plucker = inputs(model.config, 1, 3, 2, 2)
    state = model.init_stream_state(1, (2, 2))
    swapped = StreamState(layers=(state.layers[3],) + state.layers[1:3] + (state.layers[0],), frame_index=0,
                          chunk_index=0, latent_hw=(2, 2), batch_size=1)
    with pytest.raises(TypeError, match="state must be a StreamState"):
        model.stream_forward(x, t, text, mask, cam, plucker, {"layers": []})
    with pytest.raises(TypeError, match=r"state.layers\[0\] is a SoftmaxState, block 0 needs a GDNState"):
        model.stream_forward(x, t, text, mask, cam, plucker, swapped)
    with pytest.raises(TypeError, match="GDNState or SoftmaxState"):
        StreamState(layers=(1,), frame_index=0, chunk_index=0, latent_hw=(2, 2), batch_size=1)
    with pytest.raises(TypeError, match="GDNMixer expects a GDNState"):
        model.blocks[0].attn(torch.zeros(1, 12, 64), None, None, None, state.layers[3])
    assert isinstance(state.layers[3], SoftmaxState)
    with pytest.raises(ValueError, match=r"latent size \(2, 2\) does not match the state's batch 1 and latent_hw \(3, 3\)"):
        model.stream_forward(x, t, text, mask, cam, plucker, model.init_stream_state(1, (3, 3)))


def test_bf16_model_keeps_fp32_recurrent_state():
    model = _model(ModelConfig.preset("tiny"))
    x, t, text, mask, cam, plucker = inputs(model.config, 1, 7, 2, 3)
    with torch.no_grad():
        reference = model.forward_chunk_causal(x, t, text, mask, cam, plucker, chunk_sizes=[4, 3])
        model = model.to(torch.bfloat16)
        state = model.init_stream_state(1, (2, 3))
        state = model.stream_commit(x[:, :, :4], text, mask, cam[:, :4], plucker[:, :, :4], state, timestep=t[:, :, :4])
        late = model.stream_forward(x[:, :, 4:], t[:, :, 4:], text, mask, cam[:, 4:], plucker[:, :, 4:], state)
    assert late.dtype == torch.bfloat16
    assert state.layers[0].kv.dtype == state.layers[0].z.dtype == torch.float32
    assert state.layers[3].main.k.dtype == torch.bfloat16
    assert (late.float() - reference[:, :, 4:]).abs().max() <= 5e-2 * reference.abs().max()


def test_autocast_keeps_camera_geometry_fp32():
    """Under bf16 autocast the per-ray transforms are still built in fp32 (they used to fail there:
    the einsum came back bf16 and the cross product refused mixed dtypes); outputs stay near fp32's."""
    model = _model(ModelConfig.preset("tiny"))
    x, t, text, mask, cam, plucker = inputs(model.config, 1, 5, 2, 3)
    with torch.no_grad():
        reference = model(x, t, text, mask, cam, plucker)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            geometry = CameraGeometry.build(cam, 2, 3, rotary(torch.zeros(5 * 6, 8), device="cpu", dtype=torch.float32),
                                           torch.float32)
            out = model(x, t, text, mask, cam, plucker)
    assert geometry.p.dtype == torch.float32
    assert torch.allclose(geometry.p_inv @ geometry.p, torch.eye(4).expand_as(geometry.p), atol=1e-5)
    assert torch.isfinite(out).all()
    assert (out.float() - reference).abs().max() <= 5e-2 * reference.abs().max()


def test_causal_scale_switch_only_changes_causal_paths():
    """head_dim 24 pads to 128: the switch picks 1/sqrt(128) or 1/sqrt(24) for the causal main branch."""
    padded = _model(ModelConfig.from_official_dict(SMALL_OFFICIAL))
    plain = _model(ModelConfig.from_official_dict(SMALL_OFFICIAL, causal_scale_padded=False))
    x, t, text, mask, cam, plucker = inputs(padded.config, 1, 5, 2, 2)
    with torch.no_grad():
        assert torch.equal(padded(x, t, text, mask, cam, plucker), plain(x, t, text, mask, cam, plucker))
        a = padded.forward_chunk_causal(x, t, text, mask, cam, plucker, chunk_sizes=[2, 3])
        b = plain.forward_chunk_causal(x, t, text, mask, cam, plucker, chunk_sizes=[2, 3])
        single = plain.forward_chunk_causal(x, t, text, mask, cam, plucker, chunk_sizes=[5])
        bidirectional = plain(x, t, text, mask, cam, plucker)
    assert (a - b).abs().max() > 1e-4 * a.abs().max()
    assert (single - bidirectional).abs().max() <= 1e-5 * bidirectional.abs().max()


def test_camera_conv_switch_changes_only_later_chunks():
    across = _model(ModelConfig.preset("tiny"))
    within = _model(ModelConfig.preset("tiny", cam_conv_cross_chunk=False))
    x, t, text, mask, cam, plucker = inputs(across.config, 1, 7, 2, 2)
    with torch.no_grad():
        a = across.forward_chunk_causal(x, t, text, mask, cam, plucker, chunk_sizes=[4, 3])
        b = within.forward_chunk_causal(x, t, text, mask, cam, plucker, chunk_sizes=[4, 3])
    assert torch.allclose(a[:, :, :4], b[:, :, :4], atol=1e-6)
    assert (a[:, :, 4:] - b[:, :, 4:]).abs().max() > 1e-4 * a.abs().max()


def _walk(model, chunk_sizes, seed):
    """A single stream (batch 1) committed through `chunk_sizes`, and the inputs of its next chunk of 2 frames."""
    frames = sum(chunk_sizes) + 2
    x, t, text, mask, cam, plucker = inputs(model.config, 1, frames, 3, 2, seed=seed)
    state = model.init_stream_state(1, (3, 2), kv_window_chunks=2, sink=True)
    start = 0
    for size in chunk_sizes:
        sl = slice(start, start + size)
        state = model.stream_commit(x[:, :, sl], text, mask, cam[:, sl], plucker[:, :, sl], state, timestep=t[:, :, sl])
        start += size
    sl = slice(start, start + 2)
    return state, (x[:, :, sl], t[:, :, sl], text, mask, cam[:, sl], plucker[:, :, sl])


def test_stacked_streams_at_different_positions_equal_their_single_runs():
    """Rows with their own states, RoPE positions (frame_index 9, 13, 9) and cameras, stacked into
    one call, give each row's single-stream velocity and next state."""
    model = _model(ModelConfig.preset("tiny"))
    walks = [_walk(model, sizes, seed) for seed, sizes in enumerate(([3, 2, 2, 2], [3, 2, 2, 2, 2, 2], [3, 2, 2, 2]))]
    states = [w[0] for w in walks]
    assert len({s.layout_key() for s in states}) == 1 and [s.frame_index for s in states] == [9, 13, 9]
    stacked = StreamState.stack(states)
    assert stacked.frame_index == (9, 13, 9) and stacked.batch_size == 3
    chunk = [torch.cat(parts) for parts in zip(*(w[1] for w in walks))]
    x, t, text, mask, cam, plucker = chunk
    with torch.no_grad():
        batched_v = model.stream_forward(x, t, text, mask, cam, plucker, stacked)
        batched_next = model.stream_commit(x, text, mask, cam, plucker, stacked, timestep=t).unstack()
        for row, (state, one) in enumerate(walks):
            v = model.stream_forward(*one[:2], *one[2:], state)
            torch.testing.assert_close(batched_v[row:row + 1], v, rtol=1e-4, atol=1e-5)
            single_next = model.stream_commit(one[0], *one[2:], state, timestep=one[1])
            assert batched_next[row].frame_index == state.frame_index + 2
            for a, b in zip(batched_next[row].layers, single_next.layers, strict=True):
                pairs = ([(a.kv, b.kv), (a.conv_context, b.conv_context)] if isinstance(a, GDNState)
                         else [(a.main.k, b.main.k), (a.cam.v, b.cam.v), (a.main.sink_k, b.main.sink_k)])
                for p, q in pairs:
                    torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    # the stacked rows were really at different positions: row 1 differs from row 0's inputs at 13
    assert not torch.allclose(batched_v[0], batched_v[1])


def test_streams_of_different_cache_layouts_do_not_stack():
    model = _model(ModelConfig.preset("tiny"))
    a, _ = _walk(model, [3, 2], 0)
    b, _ = _walk(model, [3, 2, 2], 1)
    with pytest.raises(ValueError, match="different layouts"):
        StreamState.stack([a, b])
    with pytest.raises(ValueError, match="rows"):
        dataclasses.replace(a, frame_index=(1, 2))


def test_commit_keeps_the_newest_latent_and_states_carry_it():
    """`StreamState.last_latent` (the warm-start anchor): each commit stores its chunk's newest latent, and the
    first commit its first latent as the start (`start_latent`), which later commits keep; stack, unstack, clone
    and detach carry both; a fresh stream has neither and never stacks with a committed one."""
    import pytest

    from model import ModelConfig, StreamState, WorldModel
    from model.schedulers import warm_start

    torch.manual_seed(0)
    model = WorldModel(ModelConfig.preset("tiny")).eval()
    c = model.config.in_channels
    text, mask = model.null_text(1)
    fresh = model.init_stream_state(1, latent_hw=(4, 4))
    assert fresh.last_latent is None
    states = []
    for seed in (1, 2):
        chunk = torch.randn(1, c, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            state = model.stream_commit(chunk, text, mask, None, None, fresh)
        assert torch.equal(state.last_latent, chunk[:, :, -1:]) and torch.equal(state.start_latent, chunk[:, :, :1])
        with torch.no_grad():
            later = model.stream_commit(chunk.flip(2), text, mask, None, None, state)
        assert torch.equal(later.last_latent, chunk[:, :, :1]) and torch.equal(later.start_latent, chunk[:, :, :1])
        states.append(state)
    both = StreamState.stack(states)
    assert both.last_latent.shape == both.start_latent.shape == (2, c, 1, 4, 4)
    for row, state in zip(both.unstack(), states):
        assert torch.equal(row.last_latent, state.last_latent) and torch.equal(row.start_latent, state.start_latent)
    clone = both.clone()
    assert torch.equal(clone.last_latent, both.last_latent) and clone.last_latent.data_ptr() != both.last_latent.data_ptr()
    assert clone.start_latent.data_ptr() != both.start_latent.data_ptr()
    assert both.detach().start_latent is not None and both.nbytes() > sum(layer.nbytes() for layer in both.layers)
    assert fresh.layout_key() != states[0].layout_key()
    with pytest.raises(ValueError, match="different layouts"):
        StreamState.stack([fresh, states[0]])

    noise = torch.randn(1, c, 2, 4, 4)
    start = warm_start(states[0].last_latent, noise, 0.25)
    torch.testing.assert_close(start, 0.75 * states[0].last_latent + 0.25 * noise)
    assert torch.equal(warm_start(states[0].last_latent, noise, 1.0), noise)
    with pytest.raises(ValueError, match="anchor"):
        warm_start(noise, noise, 0.5)
    with pytest.raises(ValueError, match="σ"):
        warm_start(states[0].last_latent, noise, 0.0)
