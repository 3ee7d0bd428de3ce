"""The attention probe measures the softmax blocks without changing what the model computes."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from model import ModelConfig, WorldModel
from model.softmax_mixer import SoftmaxMixer
from tests.model.helpers import inputs, randomise
from train.attention_probe import BRANCHES, AttentionStats, _call_stats, mean_stats, record_attention


def _stream(model, x, t, text, mask, cam, plucker, chunk_sizes):
    state = model.init_stream_state(x.shape[0], tuple(x.shape[-2:]), kv_window_chunks=1, sink=True)
    outs, start = [], 0
    for size in chunk_sizes:
        frames = slice(start, start + size)
        chunk = (x[:, :, frames], text, mask, cam[:, frames], plucker[:, :, frames])
        outs.append(model.stream_forward(chunk[0], t[:, :, frames], *chunk[1:], state))
        state = model.stream_commit(*chunk, state, timestep=t[:, :, frames])
        start += size
    return torch.cat(outs, dim=2)


def test_probe_measures_every_softmax_branch_and_leaves_outputs_unchanged():
    config = ModelConfig.preset("tiny", depth=5, softmax_layers=(3, 4))
    torch.manual_seed(0)
    model = WorldModel(config).eval()
    randomise(model, 0)
    x, t, text, mask, cam, plucker = inputs(config, 1, 7, 3, 4)
    chunk_sizes = [1, 2, 2, 2]
    with torch.no_grad():
        plain = _stream(model, x, t, text, mask, cam, plucker, chunk_sizes)
        with record_attention(model) as stats:
            probed = _stream(model, x, t, text, mask, cam, plucker, chunk_sizes)
    assert torch.equal(plain, probed)
    # the wrappers are gone: the class's methods are back
    assert all("forward" not in m.__dict__ and "_attend" not in m.__dict__
               for m in model.modules() if isinstance(m, SoftmaxMixer))
    assert [(s.block, s.branch) for s in stats] == [(b, br) for b in (3, 4) for br in sorted(BRANCHES)]
    keys_seen = 1 * 12 + 2 * 12 + 2 * 12  # start chunk (sink) + one window chunk + the current chunk
    for s in stats:
        # chunks 1-3 attend with chunk 0 as the sink, each in a denoise and a commit pass
        assert s.calls == 6
        assert 0 < s.same_pixel_weight <= s.start_weight <= 1
        assert s.same_pixel_weight <= s.top_weight <= 1
        assert 1 <= s.effective_keys <= keys_seen
        assert s.logit_max <= s.logit_cap + 1e-4


def test_call_stats_of_a_query_that_copies_its_own_pixel():
    torch.manual_seed(0)
    frame_tokens, dim = 6, 8
    start = torch.nn.functional.normalize(torch.randn(1, 1, frame_tokens, dim), dim=-1) * 4
    later = torch.randn(1, 1, 2 * frame_tokens, dim) * 0.1
    keys = torch.cat((start, later), dim=2)
    sharp = _call_stats(start * 4, keys, scale=1.0, frame_tokens=frame_tokens)
    assert sharp["same_pixel_weight"] > 0.95 and sharp["top_weight"] == pytest.approx(sharp["same_pixel_weight"])
    assert sharp["effective_keys"] < 1.2
    assert sharp["logit_max"] == pytest.approx(sharp["logit_cap"], rel=1e-5)  # q is parallel to its key
    blunt = _call_stats(torch.zeros_like(start), keys, scale=1.0, frame_tokens=frame_tokens)
    assert blunt["effective_keys"] == pytest.approx(3 * frame_tokens, rel=1e-5)
    assert blunt["start_weight"] == pytest.approx(1 / 3, rel=1e-5)


def test_mean_stats_weights_each_probe_by_its_calls():
    def stats(calls, value):
        return AttentionStats(block=3, branch="camera", calls=calls, top_weight=value, same_pixel_weight=value,
                              start_weight=value, effective_keys=value, logit_max=value, logit_cap=value)

    merged = mean_stats([[stats(1, 0.0)], [stats(3, 1.0), dataclasses.replace(stats(2, 0.5), branch="main")]])
    assert [(s.block, s.branch, s.calls) for s in merged] == [(3, "camera", 4), (3, "main", 2)]
    assert merged[0].top_weight == pytest.approx(0.75) and merged[1].logit_cap == pytest.approx(0.5)
