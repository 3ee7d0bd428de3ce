"""The Triton gated-delta-rule kernel equals the naive reference.

Without a GPU the kernel runs under Triton's CPU interpreter: TRITON_INTERPRET must be set before the
kernel module is first imported, which is why it is set here, above the imports of our modules. The
"cuda" ids run the compiled kernel when a GPU is present.
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch.nn.functional as F

from model.ops.gdn import bidirectional_frame_gdn, frame_gated_delta_rule
from model.ops.gdn.naive import naive_frame_gated_delta_rule
from model.ops.gdn.triton_fwd import _default_block_v, _launch, frame_gated_delta_rule_triton

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
ROOT = Path(__file__).resolve().parents[2]
# where the device-independent tests run the kernel
HOST = "cpu" if INTERPRETING else "cuda"

DEVICES = [
    pytest.param("cpu", id="cpu", marks=pytest.mark.skipif(
        not INTERPRETING, reason="CPU tensors need TRITON_INTERPRET=1, which is off when a GPU is present")),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]

# (B, H, F, S, K, V): odd frame and token counts, K != V, non-power-of-two dims, one frame
SHAPES = [
    pytest.param((1, 2, 3, 5, 16, 16), id="F3-S5-K16-V16"),
    pytest.param((2, 1, 5, 37, 20, 12), id="F5-S37-K20-V12"),
    pytest.param((1, 1, 1, 9, 24, 40), id="F1-S9-K24-V40"),
]


def make_inputs(shape, dtype=torch.float32, device="cpu", initial_state=False, seed=42):
    """Unit keys scaled by 0.7 min(1, sqrt(K/S)): sum_s k k^T then stays near or below the identity,
    so the delta term is a large share (10-35%) of the output while the frame transition stays stable."""
    B, H, nF, S, K, V = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, nF, S, K, generator=g)
    k = F.normalize(torch.randn(B, H, nF, S, K, generator=g), dim=-1) * 0.7 * min(1.0, (K / S) ** 0.5)
    v = torch.randn(B, H, nF, S, V, generator=g)
    beta = torch.rand(B, H, nF, S, generator=g)
    decay = 0.5 + 0.5 * torch.rand(B, H, nF, generator=g)
    h0 = torch.randn(B, H, K, V, generator=g) if initial_state else None
    q, k, v = (x.to(device=device, dtype=dtype) for x in (q, k, v))
    beta, decay = beta.to(device), decay.to(device)
    return q, k, v, beta, decay, (h0.to(device) if h0 is not None else None)


def assert_close(name, ref, got, ratio):
    """fla-style check: relative RMS error within `ratio`, and max abs error within 10x that scale."""
    ref, got = ref.detach().float().cpu(), got.detach().float().cpu()
    assert ref.shape == got.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    scale = ref.pow(2).mean().sqrt().clamp_min(1e-8)
    rms_err = (ref - got).pow(2).mean().sqrt()
    max_err = (ref - got).abs().max()
    assert rms_err <= ratio * scale, f"{name}: rms err {rms_err:.3e} > {ratio} * {scale:.3e}"
    assert max_err <= 10 * ratio * scale, f"{name}: max err {max_err:.3e} > 10 * {ratio} * {scale:.3e}"


# the output ratio covers bf16 rounding of the output (2^-8; Triton 3.9's interpreter rounds fp32 -> bf16
# toward zero where the GPU rounds to nearest, so there the error is a full ulp) and TF32 dots on CUDA
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1e-2, 5e-3)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_matches_naive(device, shape, reverse, with_state, dtype):
    q, k, v, beta, decay, h0 = make_inputs(shape, dtype=dtype, device=device, initial_state=with_state)
    kwargs = dict(initial_state=h0, reverse=reverse, output_final_state=True)
    ref_out, ref_state = naive_frame_gated_delta_rule(q, k, v, beta, decay, **kwargs)
    out, state = frame_gated_delta_rule_triton(q, k, v, beta, decay, **kwargs)
    assert out.dtype == v.dtype and state.dtype == torch.float32
    out_ratio, state_ratio = TOLERANCES[dtype]
    assert_close("out", ref_out, out, out_ratio)
    assert_close("final_state", ref_state, state, state_ratio)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_many_value_and_token_blocks(device, reverse):
    """Blocks of 16 over V = 40 and S = 37: three value programs and three token blocks per frame,
    the last of each masked, so the cross-block update and the masks are exercised."""
    q, k, v, beta, decay, h0 = make_inputs((1, 2, 4, 37, 20, 40), device=device, initial_state=True)
    kwargs = dict(initial_state=h0, reverse=reverse, output_final_state=True)
    ref_out, ref_state = naive_frame_gated_delta_rule(q, k, v, beta, decay, **kwargs)
    with torch.no_grad():
        out, state = _launch(q, k, v, beta, decay, **kwargs, block_v=16, block_s=16)
    assert_close("out", ref_out, out, 1e-5)
    assert_close("final_state", ref_state, state, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_split_equals_whole(device, reverse):
    """Frames scanned in chunks with the state carried over equal one scan of all frames (the
    streaming invariant); the reverse scan carries from the later chunk into the earlier one."""
    q, k, v, beta, decay, h0 = make_inputs((1, 2, 7, 6, 16, 24), device=device, initial_state=True)
    whole_out, whole_state = frame_gated_delta_rule_triton(
        q, k, v, beta, decay, initial_state=h0, reverse=reverse, output_final_state=True)
    bounds = [(0, 3), (3, 4), (4, 7)]
    if reverse:
        bounds = bounds[::-1]
    state, outs = h0, {}
    for lo, hi in bounds:
        outs[lo], state = frame_gated_delta_rule_triton(
            q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi], beta[:, :, lo:hi], decay[:, :, lo:hi],
            initial_state=state, reverse=reverse, output_final_state=True)
    split_out = torch.cat([outs[lo] for lo in sorted(outs)], dim=2)
    assert_close("out", whole_out, split_out, 1e-5)
    assert_close("final_state", whole_state, state, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_dispatcher_backend_and_no_final_state(device):
    q, k, v, beta, decay, _ = make_inputs((1, 1, 2, 5, 16, 16), device=device)
    ref, _ = naive_frame_gated_delta_rule(q, k, v, beta, decay)
    out, state = frame_gated_delta_rule(q, k, v, beta, decay, backend="triton")
    assert state is None
    assert_close("out", ref, out, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_fp32_values_beside_bf16_keys(device):
    """Values may be wider than queries and keys: fp32 values give fp32 outputs (no bf16 rounding)."""
    q, k, v, beta, decay, h0 = make_inputs((1, 2, 3, 11, 16, 1), dtype=torch.bfloat16, device=device,
                                           initial_state=True)
    v = torch.ones(*v.shape, device=device)
    kwargs = dict(initial_state=h0, output_final_state=True)
    ref_out, ref_state = naive_frame_gated_delta_rule(q, k, v, beta, decay, **kwargs)
    out, state = frame_gated_delta_rule_triton(q, k, v, beta, decay, **kwargs)
    assert out.dtype == torch.float32
    assert_close("out", ref_out, out, 1e-5 if device == "cpu" else 5e-3)
    assert_close("final_state", ref_state, state, 1e-5 if device == "cpu" else 5e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_bidirectional_gdn_with_triton_backend(device):
    """The GDN block core (numerator and denominator streams, forward scan seeded with a state,
    backward scans inside each chunk) gives the naive result when its scans run on this kernel."""
    q, k, v, beta, decay, h0 = make_inputs((1, 2, 5, 7, 16, 12), device=device, initial_state=True)
    q_den, k_den = q.relu(), k.relu()
    q, k = q.relu(), k.relu()
    initial_z = torch.rand(1, 2, 16, 1, device=device)
    kwargs = dict(initial_kv=h0.abs(), initial_z=initial_z, chunk_sizes=[2, 3], output_final_state=True)
    ref = bidirectional_frame_gdn(q, k, q_den, k_den, v, beta, decay, **kwargs, backend="naive")
    with torch.no_grad():
        got = bidirectional_frame_gdn(q, k, q_den, k_den, v, beta, decay, **kwargs, backend="triton")
    for name, r, g in zip(("out", "final_kv", "final_z"), ref, got):
        assert_close(name, r, g, 1e-4)


def test_delta_term_matters():
    """Guard on the test inputs: dropping the delta (prediction) term changes the result a lot, so the
    comparisons above do check it."""
    q, k, v, beta, decay, _ = make_inputs((1, 1, 4, 8, 16, 16), device=HOST)
    out, _ = frame_gated_delta_rule_triton(q, k, v, beta, decay)
    state, plain = torch.zeros(1, 1, 16, 16, device=HOST), []
    for t in range(4):
        state = decay[:, :, t, None, None] * state + k[:, :, t].mT @ (beta[:, :, t, :, None] * v[:, :, t])
        plain.append(q[:, :, t] @ state)
    plain = torch.stack(plain, dim=2)
    assert (out - plain).pow(2).mean().sqrt() > 0.05 * out.pow(2).mean().sqrt()


def test_autograd_is_refused():
    q, k, v, beta, decay, _ = make_inputs((1, 1, 2, 4, 16, 16), device=HOST)
    q.requires_grad_(True)
    with pytest.raises(NotImplementedError, match="forward-only"):
        frame_gated_delta_rule_triton(q, k, v, beta, decay)
    with torch.no_grad():
        out, _ = frame_gated_delta_rule_triton(q, k, v, beta, decay)
    assert out.shape == v.shape and not out.requires_grad


def test_bad_inputs_raise():
    q, k, v, beta, decay, _ = make_inputs((1, 1, 2, 4, 16, 16), device=HOST)
    with pytest.raises(ValueError, match="float64"):
        frame_gated_delta_rule_triton(q.double(), k.double(), v.double(), beta, decay)
    with pytest.raises(ValueError, match="bfloat16"):
        frame_gated_delta_rule_triton(q, k.bfloat16(), v, beta, decay)
    with pytest.raises(ValueError, match="decay"):
        frame_gated_delta_rule_triton(q, k, v, beta, decay[..., :1])
    with pytest.raises(ValueError, match="float32"):
        frame_gated_delta_rule_triton(q, k, v, beta, decay, initial_state=torch.zeros(1, 1, 16, 16, device=HOST).double())
    wide = torch.zeros(1, 1, 1, 1, 300)
    with pytest.raises(ValueError, match="K=300"):
        frame_gated_delta_rule_triton(wide, wide, torch.zeros(1, 1, 1, 1, 4), torch.ones(1, 1, 1, 1), torch.ones(1, 1, 1))
    with pytest.raises(ValueError, match="block_v"):
        _launch(q, k, v, beta, decay, initial_state=None, reverse=False, output_final_state=False, block_v=24)


def test_default_value_block_fills_the_gpu(monkeypatch):
    """On an H100 (132 SMs) the real model's 20 heads of V = 112 get blocks of 16 (140 programs),
    twice the heads get 32; wide keys cap the block at 32, narrow ones allow 64."""
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(multi_processor_count=132))
    cuda = torch.device("cuda")
    assert _default_block_v(20, 112, 112, cuda) == 16
    assert _default_block_v(40, 112, 112, cuda) == 32
    assert _default_block_v(1000, 112, 112, cuda) == 32
    assert _default_block_v(1000, 32, 64, cuda) == 64
    assert _default_block_v(1, 16, 16, cuda) == 16
    assert _default_block_v(20, 112, 112, torch.device("cpu")) == 32


# Run in a fresh process with the interpreter off, as on a GPU machine: the wrapper imports while
# Triton is hidden; CPU tensors are then refused; the kernel is compiled ahead of time for real GPUs.
COMPILED_PROCESS_SCRIPT = """
import sys
import torch

sys.modules["triton"] = None
import model.ops.gdn.triton_fwd
del sys.modules["triton"]
print("imported without triton")

from model.ops.gdn.triton_fwd import frame_gated_delta_rule_triton
x = torch.zeros(1, 1, 1, 1, 16)
try:
    frame_gated_delta_rule_triton(x, x, x, torch.ones(1, 1, 1, 1), torch.ones(1, 1, 1))
except ValueError as error:
    print("refused:", error)

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from model.ops.gdn.triton_kernel import frame_gated_delta_rule_fwd_kernel as kernel

def compile_for(arch, dtype, precision, reverse, K, V, BK, BV, BS, warps):
    signature = {name: "constexpr" for name in ("K", "V", "BK", "BV", "BS", "HAS_INITIAL_STATE",
                                                 "STORE_FINAL_STATE", "REVERSE", "DOT_PRECISION")}
    signature.update(q_ptr=f"*{dtype}", k_ptr=f"*{dtype}", v_ptr=f"*{dtype}", beta_ptr="*fp32", decay_ptr="*fp32",
                     initial_state_ptr="*fp32", out_ptr=f"*{dtype}", final_state_ptr="*fp32", F="i32", S="i32")
    constants = dict(K=K, V=V, BK=BK, BV=BV, BS=BS, HAS_INITIAL_STATE=True, STORE_FINAL_STATE=True, REVERSE=reverse,
                     DOT_PRECISION=precision)
    compiled = triton.compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": warps})
    assert len(compiled.asm["cubin"]) > 0
    print("compiled", arch, dtype)

compile_for(90, "bf16", "tf32", False, 112, 112, 128, 16, 32, 4)
compile_for(90, "fp32", "ieee", True, 112, 112, 128, 32, 32, 8)
compile_for(80, "fp16", "tf32", False, 20, 40, 32, 64, 16, 4)
"""


@pytest.fixture(scope="module")
def compiled_process():
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-c", COMPILED_PROCESS_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_imports_without_triton_and_refuses_cpu_without_interpreter(compiled_process):
    """The module imports with Triton unavailable; with Triton but no interpreter, CPU tensors are
    refused with a message that says what to do."""
    assert "imported without triton" in compiled_process
    assert "refused:" in compiled_process and "TRITON_INTERPRET=1" in compiled_process, compiled_process


def test_kernel_compiles_for_hopper_and_ampere(compiled_process):
    """Triton's ahead-of-time compiler (with its bundled ptxas) builds cubins for sm_90 and sm_80 without a
    GPU: this catches what the interpreter accepts but the GPU compiler rejects (dot shapes, layouts)."""
    assert compiled_process.count("compiled") == 3, compiled_process
