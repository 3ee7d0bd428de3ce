"""Two cores for one chunk (`streaming.overlap`): the phases really run side by side, failures
reach the caller only once both are done, and a walk's frames and states are bit for bit those of
one thread's phases in turn: per session (commit beside decode) bit for bit, batched (two halves of
the rows) within float tolerance."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import streaming.batched
import streaming.generator
from streaming.batched import step_batched
from streaming.overlap import overlaps_phases, run_beside
from tests.streaming.test_batched import _poses, _state_tensors, _walks, anchored_model_and_vae  # noqa: F401 (fixture)


def test_phases_run_side_by_side_or_in_turn():
    # side by side: the helper waits for a signal that only the caller's phase gives
    signal = threading.Event()
    helper_thread = []

    def helper():
        helper_thread.append(threading.current_thread())
        assert signal.wait(timeout=10), "the helper never saw the caller's phase run"
        return "committed"

    def here():
        signal.set()
        return "decoded"

    assert run_beside(helper, here, overlap=True) == ("committed", "decoded")
    assert helper_thread[0] is not threading.current_thread()
    # in turn: the helper first, on this thread
    order = []
    assert run_beside(lambda: order.append("helper") or 1, lambda: order.append("here") or 2, overlap=False) == (1, 2)
    assert order == ["helper", "here"]


def test_a_failed_phase_is_raised_after_both_have_finished():
    finished = []

    def slow(name):
        def phase():
            threading.Event().wait(0.2)
            finished.append(name)
            return 0
        return phase

    def failing(error):
        def phase():
            raise error
        return phase

    with pytest.raises(RuntimeError, match="commit broke"):
        run_beside(failing(RuntimeError("commit broke")), slow("here"), overlap=True)
    assert finished == ["here"]
    with pytest.raises(ValueError, match="decode broke"):
        run_beside(slow("helper"), failing(ValueError("decode broke")), overlap=True)
    assert finished == ["here", "helper"]


def test_the_helper_takes_over_inference_and_grad_mode():
    seen = []

    def helper():
        seen.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))

    with torch.inference_mode():
        run_beside(helper, lambda: None, overlap=True)
    with torch.no_grad():
        run_beside(helper, lambda: None, overlap=True)
    run_beside(helper, lambda: None, overlap=True)
    assert seen == [(True, False), (False, False), (False, True)]


def test_phases_overlap_on_a_cpu_with_a_core_to_spare(monkeypatch, one_torch_thread):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert overlaps_phases("cpu")
    assert not overlaps_phases("cuda")  # one stream: nothing to gain
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert not overlaps_phases("cpu")
    torch.set_num_threads(2)
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    assert not overlaps_phases("cpu")  # 2 + 2 threads on 3 cores would oversubscribe them


@pytest.mark.parametrize("batched", [False, True], ids=["per-session", "batched"])
def test_overlapped_chunks_equal_chunks_in_turn(request, monkeypatch, one_torch_thread, batched):
    """Walks at different chunk indices (one on its first chunk), with every copy of the anchored model
    open: the overlapped commit and decode (per session) give exactly the frames, states and decoder
    caches of one thread's phases in turn, and the rows' two halves side by side (batched) the same
    within float tolerance."""
    model, vae = request.getfixturevalue("anchored_model_and_vae")
    sampler = {"sigmas": (0.6, 0.0), "warm_start": True}
    results = {}
    forward = model.stream_forward
    for overlap in (False, True):
        for module in (streaming.generator, streaming.batched):
            monkeypatch.setattr(module, "overlaps_phases", lambda device, on=overlap: on)
        walks = _walks(model, vae, sampler)
        frames, threads = [], []  # per round, the threads that ran the denoising

        def recording_forward(*args):
            threads[-1].add(threading.get_ident())
            return forward(*args)

        model.stream_forward = recording_forward
        try:
            for _ in range(2):
                threads.append(set())
                poses = [_poses(gen, walk) for walk, gen in enumerate(walks)]
                frames.append(step_batched(walks, poses) if batched else [g.step(p) for g, p in zip(walks, poses)])
        finally:
            del model.stream_forward
        # Per session, the commit runs beside the decode; batched, the two halves of the rows run side
        # by side (their denoising on two threads), each half's phases in turn.
        assert [len(t) for t in threads] == [2 if batched and overlap else 1] * 2
        assert all(g.last_timings.overlapped == (overlap and not batched) for g in walks)
        results[overlap] = (frames, walks)
    (frames_a, walks_a), (frames_b, walks_b) = results[False], results[True]
    # Per session the same ops run on the same tensors: bit for bit. Batched, a half groups its rows
    # into other batches than the whole does, and a batched matmul may round differently: within
    # float tolerance, as in tests/streaming/test_batched.py.
    def same(p: torch.Tensor, q: torch.Tensor) -> None:
        if batched:
            torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-4)
        else:
            assert torch.equal(p, q)

    for round_a, round_b in zip(frames_a, frames_b):
        for a, b in zip(round_a, round_b, strict=True):
            assert np.abs(a.astype(int) - b.astype(int)).max() <= (1 if batched else 0)
    for a, b in zip(walks_a, walks_b, strict=True):
        for p, q in zip(_state_tensors(a.state), _state_tensors(b.state), strict=True):
            same(p, q)
        same(a.state.last_latent, b.state.last_latent)
        for p, q in zip(a.decoder.contexts, b.decoder.contexts, strict=True):
            same(p, q)
