"""Long streams: the state stays the same size, the KV caches stay within capacity, nothing diverges;
and without the key scaling κ the recurrence does diverge."""
from __future__ import annotations

import pytest
import torch

from model import GDNState, ModelConfig, SoftmaxState, WorldModel
from tests.conftest import ci_size
from tests.model.helpers import camera_conditions, randomise


def _chunk_inputs(model: WorldModel, g: torch.Generator, frames: int, height: int, width: int, first_frame: int):
    cfg = model.config
    x = torch.randn(1, cfg.in_channels, frames, height, width, generator=g)
    t = torch.rand(1, 1, frames, generator=g) * 1000
    cam = camera_conditions(1, frames, height, width, seed=first_frame)
    plucker = torch.randn(1, cfg.plucker_channels, frames, height, width, generator=g)
    return x, t, cam, plucker


def _all_finite(state) -> bool:
    for layer in state.layers:
        tensors = [layer.kv, layer.z, layer.cam_kv] if isinstance(layer, GDNState) else [layer.main.k, layer.cam.v]
        if not all(torch.isfinite(x).all() for x in tensors):
            return False
    return True


def _check_capacity(state, window: int, sink: bool) -> None:
    for layer in state.layers:
        if isinstance(layer, SoftmaxState):
            for cache in (layer.main, layer.cam):
                assert cache.num_chunks <= window
                assert cache.k.shape[2] == cache.v.shape[2] == sum(cache.chunk_tokens)
                assert (cache.sink_k is not None) == (sink and state.chunk_index >= 1)


@pytest.mark.heavy
@pytest.mark.parametrize("window, sink", [pytest.param(2, True, id="window2-sink"), pytest.param(1, False, id="window1")])
def test_state_size_is_constant(window, sink):
    model = WorldModel(ModelConfig.preset("tiny")).eval()
    g = torch.Generator().manual_seed(0)
    text, mask = model.null_text(1)
    state = model.init_stream_state(1, (1, 1), kv_window_chunks=window, sink=sink)
    sizes = {}
    chunks = ci_size(500, 60)
    with torch.no_grad():
        for chunk in range(chunks):
            frames = 4 if chunk == 0 else 3
            x, _, cam, plucker = _chunk_inputs(model, g, frames, 1, 1, state.frame_index)
            state = model.stream_commit(x, text, mask, cam, plucker, state)
            _check_capacity(state, window, sink)
            if state.chunk_index in (10, chunks):
                sizes[state.chunk_index] = state.nbytes()
    assert state.frame_index == 4 + 3 * (chunks - 1)
    assert sizes[10] == sizes[chunks] > 0


@pytest.mark.heavy
def test_two_thousand_frames_stay_finite():
    torch.manual_seed(0)
    model = WorldModel(ModelConfig.preset("tiny")).eval()
    randomise(model, seed=1)
    g = torch.Generator().manual_seed(1)
    text, mask = model.null_text(1)
    state = model.init_stream_state(1, (4, 4), kv_window_chunks=2, sink=True)
    total = ci_size(2000, 2000)
    with torch.inference_mode():
        while state.frame_index < total:
            x, t, cam, plucker = _chunk_inputs(model, g, 4, 4, 4, state.frame_index)
            velocity = model.stream_forward(x, t, text, mask, cam, plucker, state)
            assert torch.isfinite(velocity).all(), f"non-finite velocity at frame {state.frame_index}"
            state = model.stream_commit(x - velocity, text, mask, cam, plucker, state)
    assert state.frame_index == total
    assert _all_finite(state)


def test_without_key_scaling_the_recurrence_blows_up():
    """κ = 1/sqrt(D·S) keeps (I − Σ β k kᵀ) contractive; with κ = 1 the GDN states explode within frames."""
    results = {}
    for scaling in ("dim_spatial", "none"):
        torch.manual_seed(0)
        model = WorldModel(ModelConfig.preset("tiny", key_scaling=scaling)).eval()
        randomise(model, seed=1)
        g = torch.Generator().manual_seed(1)
        text, mask = model.null_text(1)
        state = model.init_stream_state(1, (4, 4))
        with torch.no_grad():
            for _ in range(8):
                x, _, cam, plucker = _chunk_inputs(model, g, 3, 4, 4, state.frame_index)
                state = model.stream_commit(x, text, mask, cam, plucker, state)
        kv = state.layers[0].kv
        results[scaling] = float(kv.abs().max()) if torch.isfinite(kv).all() else float("inf")
    assert results["dim_spatial"] < 1e3
    assert results["none"] > 1e12 * results["dim_spatial"]
