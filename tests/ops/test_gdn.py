"""The frame-wise gated delta rule: chunked torch path vs the naive reference, streaming invariants,
the bidirectional compositions, the UCPE β discount, the key scaling κ and input validation."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.ops.gdn import (
    bidirectional_frame_delta_rule,
    bidirectional_frame_gdn,
    frame_gated_delta_rule,
    naive_frame_gated_delta_rule,
    ucpe_beta_discount,
)


def assert_close(name: str, ref: torch.Tensor, got: torch.Tensor, ratio: float) -> None:
    """fla-style check: relative RMS error ≤ ratio and max abs error ≤ ratio × max |ref|."""
    assert ref.shape == got.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    ref, got = ref.detach().double(), got.detach().double()
    diff = got - ref
    rel_rms = diff.square().mean().sqrt() / ref.square().mean().sqrt().clamp_min(1e-30)
    max_abs = diff.abs().max()
    scale = ref.abs().max().clamp_min(1e-30)
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    assert rel_rms <= ratio, f"{name}: relative RMS error {rel_rms:.3e} > {ratio}"
    assert max_abs <= ratio * scale, f"{name}: max abs error {max_abs:.3e} > {ratio} × {scale:.3e}"


def make_inputs(B, H, F, S, K, V, *, dtype=torch.float32, with_state=False, seed=42):
    """Random inputs scaled like the model's: keys ~ κ = 1/sqrt(K·S), β in (0, 1), γ in (0.8, 1)."""
    gen = torch.Generator().manual_seed(seed)
    kappa = (K * S) ** -0.5
    q = torch.randn(B, H, F, S, K, generator=gen)
    k = torch.randn(B, H, F, S, K, generator=gen) * kappa
    v = torch.randn(B, H, F, S, V, generator=gen)
    beta = torch.rand(B, H, F, S, generator=gen)
    decay = 0.8 + 0.2 * torch.rand(B, H, F, generator=gen)
    state = torch.randn(B, H, K, V, generator=gen) if with_state else None
    inputs = dict(q=q.to(dtype), k=k.to(dtype), v=v.to(dtype), beta=beta.to(dtype), decay=decay.to(dtype))
    return inputs, state


def run_with_grads(backend, inputs, state, reverse):
    """Output, final state and the grads of a random linear loss w.r.t. every input."""
    leaves = {name: x.clone().requires_grad_(True) for name, x in inputs.items()}
    init = None if state is None else state.clone().requires_grad_(True)
    out, final = frame_gated_delta_rule(
        **leaves, initial_state=init, reverse=reverse, output_final_state=True, backend=backend
    )
    gen = torch.Generator().manual_seed(7)
    loss = (out.float() * torch.randn(out.shape, generator=gen)).sum()
    loss = loss + (final * torch.randn(final.shape, generator=gen)).sum()
    loss.backward()
    # An input the result does not depend on (γ_0 of a single zero-seeded frame) gets no grad: 0.
    grads = {name: torch.zeros_like(x) if x.grad is None else x.grad for name, x in leaves.items()}
    if init is not None:
        grads["initial_state"] = init.grad
    return out, final, grads


SHAPES = [
    pytest.param(1, 1, 1, 5, 4, 6, id="F1-S5-K4-V6"),
    pytest.param(2, 3, 2, 7, 8, 5, id="F2-S7-K8-V5"),
    pytest.param(1, 2, 5, 9, 16, 12, id="F5-S9-K16-V12"),
    pytest.param(2, 2, 7, 3, 6, 10, id="F7-S3-K6-V10"),
    pytest.param(1, 2, 13, 11, 12, 8, id="F13-S11-K12-V8"),
    pytest.param(2, 1, 5, 6, 7, 1, id="F5-S6-K7-V1"),
]


@pytest.mark.parametrize("B, H, F, S, K, V", SHAPES)
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_chunk_matches_naive(B, H, F, S, K, V, with_state, reverse):
    inputs, state = make_inputs(B, H, F, S, K, V, with_state=with_state)
    ref_out, ref_final, ref_grads = run_with_grads("naive", inputs, state, reverse)
    out, final, grads = run_with_grads("chunk", inputs, state, reverse)
    assert_close("out", ref_out, out, 1e-5)
    assert_close("final_state", ref_final, final, 1e-5)
    assert set(grads) == set(ref_grads)
    for name in ref_grads:
        assert_close(f"d{name}", ref_grads[name], grads[name], 1e-4)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_bf16_inputs_compute_in_fp32(reverse):
    inputs, state = make_inputs(2, 2, 5, 9, 8, 8, dtype=torch.bfloat16, with_state=True)
    ref_out, ref_final = naive_frame_gated_delta_rule(
        **inputs, initial_state=state, reverse=reverse, output_final_state=True
    )
    out, final = frame_gated_delta_rule(
        **inputs, initial_state=state, reverse=reverse, output_final_state=True, backend="chunk"
    )
    assert out.dtype == torch.bfloat16 and final.dtype == torch.float32
    assert_close("out", ref_out.float(), out.float(), 1e-2)
    assert_close("final_state", ref_final, final, 1e-5)
    fp32 = {name: x.float() for name, x in inputs.items()}
    out32, _ = frame_gated_delta_rule(**fp32, initial_state=state, reverse=reverse, backend="chunk")
    assert_close("bf16 vs fp32 out", out32, out.float(), 1e-2)


@pytest.mark.parametrize("backend", ["naive", "chunk"])
@pytest.mark.parametrize("pieces", [[1, 4, 2], [3, 3, 1], [6, 1]], ids=lambda p: "-".join(map(str, p)))
def test_split_equals_whole_forward(backend, pieces):
    inputs, state = make_inputs(2, 2, sum(pieces), 8, 6, 5, with_state=True)
    whole, whole_final = frame_gated_delta_rule(
        **inputs, initial_state=state, output_final_state=True, backend=backend
    )
    outs, carried, start = [], state, 0
    for size in pieces:
        part = {name: x[:, :, start : start + size] for name, x in inputs.items()}
        out, carried = frame_gated_delta_rule(**part, initial_state=carried, output_final_state=True, backend=backend)
        outs.append(out)
        start += size
    assert_close("out", whole, torch.cat(outs, dim=2), 1e-5)
    assert_close("final_state", whole_final, carried, 1e-5)


@pytest.mark.parametrize("backend", ["naive", "chunk"])
def test_split_equals_whole_reverse(backend):
    """The reverse scan's final state (after absorbing its first frame) seeds the frames before it."""
    inputs, state = make_inputs(1, 2, 7, 5, 6, 4, with_state=True)
    whole, whole_final = frame_gated_delta_rule(
        **inputs, initial_state=state, reverse=True, output_final_state=True, backend=backend
    )
    late = {name: x[:, :, 3:] for name, x in inputs.items()}
    early = {name: x[:, :, :3] for name, x in inputs.items()}
    late_out, carried = frame_gated_delta_rule(
        **late, initial_state=state, reverse=True, output_final_state=True, backend=backend
    )
    early_out, final = frame_gated_delta_rule(
        **early, initial_state=carried, reverse=True, output_final_state=True, backend=backend
    )
    assert_close("out", whole, torch.cat([early_out, late_out], dim=2), 1e-5)
    assert_close("final_state", whole_final, final, 1e-5)


def test_single_frame_reverse_reads_only_the_initial_state():
    inputs, state = make_inputs(1, 1, 1, 4, 3, 2, with_state=True)
    for backend in ("naive", "chunk"):
        out, _ = frame_gated_delta_rule(**inputs, initial_state=state, reverse=True, backend=backend)
        assert_close(backend, inputs["q"] @ state[:, :, None], out, 1e-6)
        zero_out, _ = frame_gated_delta_rule(**inputs, reverse=True, backend=backend)
        assert torch.count_nonzero(zero_out) == 0


def manual_gdn(q_num, k_num, q_den, k_den, v, beta, decay, initial_kv, initial_z, chunk_sizes, eps):
    """(num_fwd + num_bwd) / (den_fwd + den_bwd + eps) from naive scans, backward scans per chunk."""
    ones = torch.ones(*v.shape[:4], 1)

    def stream(q, k, values, init):
        fwd, final = naive_frame_gated_delta_rule(q, k, values, beta, decay, initial_state=init, output_final_state=True)
        bwd, start = [], 0
        for size in chunk_sizes:
            frames = slice(start, start + size)
            out, _ = naive_frame_gated_delta_rule(
                q[:, :, frames], k[:, :, frames], values[:, :, frames], beta[:, :, frames], decay[:, :, frames],
                reverse=True,
            )
            bwd.append(out)
            start += size
        return fwd + torch.cat(bwd, dim=2), final

    num, final_kv = stream(q_num, k_num, v, initial_kv)
    den, final_z = stream(q_den, k_den, ones, initial_z)
    return num / (den + eps), final_kv, final_z


def make_gdn_inputs(B, H, F, S, K, V, seed=42):
    """Numerator and denominator streams: non-negative (ReLU) features as in the model."""
    inputs, initial_kv = make_inputs(B, H, F, S, K, V, with_state=True, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    q_den = torch.rand(B, H, F, S, K, generator=gen)
    k_den = torch.rand(B, H, F, S, K, generator=gen) * (K * S) ** -0.5
    initial_z = torch.rand(B, H, K, 1, generator=gen)
    streams = dict(
        q_num=inputs["q"], k_num=inputs["k"], q_den=q_den, k_den=k_den,
        v=inputs["v"], beta=inputs["beta"], decay=inputs["decay"],
    )
    return streams, initial_kv, initial_z


@pytest.mark.parametrize("backend", ["naive", "chunk"])
@pytest.mark.parametrize("chunk_sizes", [[7], [4, 3], [1, 3, 2, 1]], ids=lambda c: "-".join(map(str, c)))
def test_bidirectional_gdn_equals_manual_composition(backend, chunk_sizes):
    streams, initial_kv, initial_z = make_gdn_inputs(2, 2, 7, 5, 6, 4)
    ref = manual_gdn(**streams, initial_kv=initial_kv, initial_z=initial_z, chunk_sizes=chunk_sizes, eps=1e-8)
    got = bidirectional_frame_gdn(
        **streams, initial_kv=initial_kv, initial_z=initial_z, chunk_sizes=chunk_sizes,
        output_final_state=True, backend=backend,
    )
    for name, r, g in zip(["out", "final_kv", "final_z"], ref, got):
        assert_close(name, r, g, 1e-5)


@pytest.mark.parametrize("backend", ["naive", "chunk"])
def test_bidirectional_gdn_streamed_chunks_equal_chunk_causal_whole(backend):
    """The streaming invariant at the op level: chunks [4, 3, 3] in one chunk-causal call equal three
    calls, each seeded with the forward states the previous one returned."""
    sizes = [4, 3, 3]
    streams, initial_kv, initial_z = make_gdn_inputs(1, 2, sum(sizes), 5, 6, 4)
    whole, whole_kv, whole_z = bidirectional_frame_gdn(
        **streams, initial_kv=initial_kv, initial_z=initial_z, chunk_sizes=sizes,
        output_final_state=True, backend=backend,
    )
    outs, kv, z, start = [], initial_kv, initial_z, 0
    for size in sizes:
        part = {name: x[:, :, start : start + size] for name, x in streams.items()}
        out, kv, z = bidirectional_frame_gdn(**part, initial_kv=kv, initial_z=z, output_final_state=True, backend=backend)
        outs.append(out)
        start += size
    assert_close("out", whole, torch.cat(outs, dim=2), 1e-5)
    assert_close("final_kv", whole_kv, kv, 1e-5)
    assert_close("final_z", whole_z, z, 1e-5)


def test_bidirectional_gdn_none_is_one_chunk_and_finals_only_on_request():
    streams, initial_kv, initial_z = make_gdn_inputs(1, 2, 5, 4, 4, 3)
    whole, kv, z = bidirectional_frame_gdn(**streams, initial_kv=initial_kv, initial_z=initial_z)
    assert kv is None and z is None
    one, _, _ = bidirectional_frame_gdn(**streams, initial_kv=initial_kv, initial_z=initial_z, chunk_sizes=[5])
    torch.testing.assert_close(whole, one, rtol=0, atol=0)
    split, _, _ = bidirectional_frame_gdn(**streams, initial_kv=initial_kv, initial_z=initial_z, chunk_sizes=[2, 3])
    assert (split - whole).abs().max() > 1e-4, "chunk boundaries must cut the backward scan"


def test_bidirectional_gdn_chunk_grads_match_naive():
    streams, initial_kv, initial_z = make_gdn_inputs(1, 2, 5, 6, 5, 4)
    results = {}
    for backend in ("naive", "chunk"):
        leaves = {name: x.clone().requires_grad_(True) for name, x in streams.items()}
        kv0, z0 = initial_kv.clone().requires_grad_(True), initial_z.clone().requires_grad_(True)
        out, kv, z = bidirectional_frame_gdn(
            **leaves, initial_kv=kv0, initial_z=z0, chunk_sizes=[3, 2], output_final_state=True, backend=backend
        )
        gen = torch.Generator().manual_seed(3)
        loss = sum((x * torch.randn(x.shape, generator=gen)).sum() for x in (out, kv, z))
        loss.backward()
        results[backend] = {"out": out, **{n: x.grad for n, x in leaves.items()}, "kv0": kv0.grad, "z0": z0.grad}
    for name, ref in results["naive"].items():
        assert_close(name, ref, results["chunk"][name], 1e-4)


@pytest.mark.parametrize("backend", ["naive", "chunk"])
def test_bidirectional_delta_rule_equals_manual_composition(backend):
    inputs, state = make_inputs(2, 2, 6, 5, 6, 7, with_state=True)
    fwd, final_ref = naive_frame_gated_delta_rule(**inputs, initial_state=state, output_final_state=True)
    first = {name: x[:, :, :4] for name, x in inputs.items()}
    second = {name: x[:, :, 4:] for name, x in inputs.items()}
    bwd = torch.cat(
        [naive_frame_gated_delta_rule(**first, reverse=True)[0], naive_frame_gated_delta_rule(**second, reverse=True)[0]],
        dim=2,
    )
    out, final = bidirectional_frame_delta_rule(
        **inputs, initial_state=state, chunk_sizes=[4, 2], output_final_state=True, backend=backend
    )
    assert_close("out", fwd + bwd, out, 1e-5)
    assert_close("final_state", final_ref, final, 1e-5)
    whole, none_final = bidirectional_frame_delta_rule(**inputs, initial_state=state, backend=backend)
    ref_whole = fwd + naive_frame_gated_delta_rule(**inputs, reverse=True)[0]
    assert none_final is None
    assert_close("out chunk_sizes=None", ref_whole, whole, 1e-5)


def test_ucpe_beta_discount():
    gen = torch.Generator().manual_seed(42)
    beta = torch.rand(1, 2, 3, 4, generator=gen)
    k = torch.rand(1, 2, 3, 4, 5, generator=gen) + 0.1
    k_after = k.clone()
    # head 0: frame 0 doubles every key (ρ = 4), frame 1 halves them (ρ = 1/4 → no discount),
    # frame 2 inflates half its tokens by ρ = 9 and zeroes the others' keys entirely (mean ρ = 4.5).
    k_after[0, 0, 0] *= 2
    k_after[0, 0, 1] *= 0.5
    k_after[0, 0, 2, :2] *= 3
    k[0, 0, 2, 2:] = 0
    k_after[0, 0, 2, 2:] = 0
    got = ucpe_beta_discount(beta, k, k_after)
    expected = beta.clone()
    expected[0, 0, 0] /= 4
    expected[0, 0, 2] /= 4.5
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("backend", ["naive", "chunk"])
def test_key_scaling_keeps_the_recurrence_bounded(backend):
    """Unnormalised non-negative keys: κ = 1 makes (I − Σ β k kᵀ) expansive and the state blows
    up over many frames; κ = 1/sqrt(K·S) keeps it bounded."""
    B, H, F, S, K, V = 1, 2, 40, 16, 8, 8
    gen = torch.Generator().manual_seed(42)
    q = torch.rand(B, H, F, S, K, generator=gen)
    k = torch.randn(B, H, F, S, K, generator=gen).relu()
    v = torch.randn(B, H, F, S, V, generator=gen)
    beta = torch.full((B, H, F, S), 0.99)
    decay = torch.full((B, H, F), 0.99)
    _, blown = frame_gated_delta_rule(q, k, v, beta, decay, output_final_state=True, backend=backend)
    scaled_out, bounded = frame_gated_delta_rule(
        q, k * (K * S) ** -0.5, v, beta, decay, output_final_state=True, backend=backend
    )
    assert not torch.isfinite(blown).all() or blown.abs().max() > 1e20
    assert torch.isfinite(scaled_out).all()
    assert bounded.abs().max() < 10.0


def bad_cases():
    base, state = make_inputs(1, 2, 3, 4, 5, 6, with_state=True)
    cases = []

    def case(id_, match, **override):
        cases.append(pytest.param({**base, **override}, match, id=id_))

    case("k-shape", r"k must have the shape of q \(1, 2, 3, 4, 5\), got \(1, 2, 3, 4, 4\)", k=base["k"][..., :4])
    case("q-rank", r"q must be \[B, H, F, S, K\] \(rank 5\), got shape \(2, 3, 4, 5\)", q=base["q"][0])
    case("v-frames", r"v must be .* got \(1, 2, 2, 4, 6\)", v=base["v"][:, :, :2])
    case("beta-rank", r"beta must be \[B, H, F, S\] = \(1, 2, 3, 4\) .* got \(1, 2, 3\)", beta=base["beta"][..., 0])
    case("decay-shape", r"decay must be \[B, H, F\] = \(1, 2, 3\) .* got \(1, 2, 3, 4\)", decay=base["beta"])
    case("int-v", r"v must be floating point, got dtype torch.int64", v=base["v"].long())
    case("state-shape", r"initial_state must be \[B, H, K, V\] = \(1, 2, 5, 6\) .* got \(1, 2, 6, 5\)",
         initial_state=state.transpose(-1, -2))
    case("state-dtype", r"initial_state must be float32 .* got torch.bfloat16", initial_state=state.bfloat16())
    return cases


@pytest.mark.parametrize("backend", ["naive", "chunk"])
@pytest.mark.parametrize("kwargs, match", bad_cases())
def test_bad_input_raises(backend, kwargs, match):
    with pytest.raises(ValueError, match=match):
        frame_gated_delta_rule(**kwargs, backend=backend)


def test_bad_options_raise():
    inputs, _ = make_inputs(1, 1, 3, 2, 4, 4)
    with pytest.raises(ValueError, match=r"backend must be one of .* got 'cuda'"):
        frame_gated_delta_rule(**inputs, backend="cuda")
    with pytest.raises(ValueError, match=r"chunk_sizes \[2, 2\] sum to 4, but there are F = 3 frames"):
        bidirectional_frame_delta_rule(**inputs, chunk_sizes=[2, 2])
    with pytest.raises(ValueError, match=r"positive ints, got \[3, 0\]"):
        bidirectional_frame_delta_rule(**inputs, chunk_sizes=[3, 0], backend="naive")
    q = inputs["q"]
    with pytest.raises(ValueError, match=r"share one shape .* \(1, 1, 3, 2, 3\)"):
        bidirectional_frame_gdn(q, inputs["k"], q, inputs["k"][..., :3], inputs["v"], inputs["beta"], inputs["decay"])
    with pytest.raises(ValueError, match=r"initial_state must be \[B, H, K, V\] = \(1, 1, 4, 1\)"):
        bidirectional_frame_gdn(q, q, q, q, inputs["v"], inputs["beta"], inputs["decay"], initial_z=torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"k_after \(1, 1, 3, 2, 3\)"):
        ucpe_beta_discount(inputs["beta"], inputs["k"], inputs["k"][..., :3])


def test_import_does_not_load_the_triton_kernel():
    code = "import model.ops.gdn, sys; print('model.ops.gdn.triton_fwd' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    dims=st.tuples(*(st.integers(1, n) for n in (2, 2, 9, 7, 9, 9))),
    reverse=st.booleans(),
    with_state=st.booleans(),
    cuts=st.lists(st.integers(1, 8), max_size=3),
)
def test_chunk_matches_naive_property(dims, reverse, with_state, cuts):
    """Any small shape (K or V of 1, one token, one frame), either direction, any chunk layout."""
    inputs, state = make_inputs(*dims, with_state=with_state)
    ref, ref_final = naive_frame_gated_delta_rule(**inputs, initial_state=state, reverse=reverse, output_final_state=True)
    got, final = frame_gated_delta_rule(**inputs, initial_state=state, reverse=reverse, output_final_state=True)
    assert_close("out", ref, got, 1e-5)
    assert_close("final_state", ref_final, final, 1e-5)
    frames = dims[2]
    bounds = sorted({c for c in cuts if c < frames})
    sizes = [b - a for a, b in zip([0, *bounds], [*bounds, frames])]
    ref_bi, _ = bidirectional_frame_delta_rule(**inputs, initial_state=state, chunk_sizes=sizes, backend="naive")
    got_bi, _ = bidirectional_frame_delta_rule(**inputs, initial_state=state, chunk_sizes=sizes)
    assert_close("bidirectional out", ref_bi, got_bi, 1e-5)
