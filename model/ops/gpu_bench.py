"""CUDA timings of the frame-wise gated delta rule at the real model's shapes.

`cuda_rows(shapes)` times, per shape, each path on the GPU and returns table rows under `CUDA_HEADER`:
the naive per-frame loop, the chunked torch path, our Triton kernel (its default blocks and a small
sweep of block sizes) and, when the `fla-core` package is importable, flash-linear-attention's
`chunk_gated_delta_rule`. fla's rule is token-wise (every token reads the state its predecessor wrote),
not frame-wise, so its row is a timing at the same sizes (T = F*S tokens, the frame decay on each
frame's first token), not the same maths; its error column says so. A second group of rows times
the GDN block's whole core (`bidirectional_frame_gdn`: numerator and denominator, forward and
backward scans) on each backend, its speed-up against the chunk backend.

`python run.py bench gdn` calls `cuda_rows` when CUDA is present; `python -m model.ops.gpu_bench` runs
it alone. Every figure is measured by this code: median of `repeats` timed calls after a warm-up.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from common.bench import machine_description, markdown_table, median

# (B, H, F, S, K, V): the official 720p model (20 heads of 112, 22x40 latent tokens per frame) for
# a 3-frame streaming chunk and a 21-frame (81-video-frame) bidirectional clip
REAL_SHAPES: list[tuple[int, int, int, int, int, int]] = [
    (1, 20, 3, 880, 112, 112),
    (1, 20, 21, 880, 112, 112),
]
CUDA_HEADER = ["shape B,H,F,S,K,V", "dtype", "path", "median ms", "x vs chunk", "rel err vs naive"]
# (block_v, block_s, num_warps) tried besides the kernel's default choice
TRITON_SWEEP: list[tuple[int, int, int]] = [(16, 16, 4), (16, 64, 4), (32, 32, 4), (32, 64, 8), (64, 32, 8)]


def _inputs(shape, dtype: torch.dtype, device: str, seed: int = 0):
    """Random inputs in the model's regime: unit keys scaled so sum_s k k^T stays near the identity."""
    B, H, nF, S, K, V = shape
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(B, H, nF, S, K, generator=g, device=device)
    k = F.normalize(torch.randn(B, H, nF, S, K, generator=g, device=device), dim=-1) * min(1.0, (K / S) ** 0.5)
    v = torch.randn(B, H, nF, S, V, generator=g, device=device)
    beta = torch.sigmoid(torch.randn(B, H, nF, S, generator=g, device=device))
    decay = 0.9 + 0.1 * torch.rand(B, H, nF, generator=g, device=device)
    return q.to(dtype), k.to(dtype), v.to(dtype), beta, decay


def _time_ms(fn: Callable[[], object], device: str, repeats: int, warmup: int = 2) -> float:
    """Median wall-clock milliseconds of one call, synchronising the device around each call."""

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return 1e3 * median(times)


def _rel_err(ref: torch.Tensor, got: torch.Tensor) -> float:
    ref, got = ref.float(), got.float()
    return float((ref - got).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-12))


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, H, F, S, *] -> fla's layout [B, T = F*S, H, *]."""
    return x.flatten(2, 3).transpose(1, 2).contiguous()


def _fla_call(q, k, v, beta, decay) -> Callable[[], object] | str:
    """A timed call of fla's chunk_gated_delta_rule at the same sizes, or why there is none."""
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except ImportError:
        return "fla-core not installed"
    # the frame decay goes on each frame's first token, in log space
    g = torch.zeros_like(beta)  # [B, H, F, S] fp32
    g[..., 0] = decay.log()
    fq, fk, fv, fbeta, fg = (_tokens(x) for x in (q, k, v, beta.to(q.dtype), g))
    return lambda: chunk_gated_delta_rule(q=fq, k=fk, v=fv, g=fg, beta=fbeta, scale=1.0, output_final_state=True)


def _rows(shapes, device: str, dtype: torch.dtype, repeats: int, sweep: list[tuple[int, int, int]]) -> list[list]:
    from model.ops.gdn.chunk import chunk_frame_gated_delta_rule
    from model.ops.gdn.naive import naive_frame_gated_delta_rule
    from model.ops.gdn.triton_fwd import _launch, frame_gated_delta_rule_triton

    rows = []
    for shape in shapes:
        q, k, v, beta, decay = _inputs(shape, dtype, device)
        label = ",".join(str(n) for n in shape)
        dtype_name = str(dtype).removeprefix("torch.")
        paths: list[tuple[str, Callable[[], object]]] = [
            ("naive (per-frame torch loop)", lambda: naive_frame_gated_delta_rule(q, k, v, beta, decay, output_final_state=True)),
            ("chunk (torch transition form)", lambda: chunk_frame_gated_delta_rule(q, k, v, beta, decay, output_final_state=True)),
            ("triton (default blocks)", lambda: frame_gated_delta_rule_triton(q, k, v, beta, decay, output_final_state=True)),
        ]
        for block_v, block_s, warps in sweep:
            paths.append((
                f"triton BV={block_v} BS={block_s} warps={warps}",
                lambda bv=block_v, bs=block_s, w=warps: _launch(
                    q, k, v, beta, decay, initial_state=None, reverse=False, output_final_state=True,
                    block_v=bv, block_s=bs, num_warps=w),
            ))
        # (path, median ms or why not timed, error column)
        results: list[tuple[str, float | str, str]] = []
        with torch.no_grad():
            reference, _ = paths[0][1]()
            for name, fn in paths:
                out, _ = fn()
                results.append((name, _time_ms(fn, device, repeats), f"{_rel_err(reference, out):.2e}"))
            fla = _fla_call(q, k, v, beta, decay)
            if isinstance(fla, str):
                results.append(("fla chunk_gated_delta_rule", fla, "-"))
            else:
                try:
                    results.append(("fla chunk_gated_delta_rule (token-wise rule)", _time_ms(fla, device, repeats),
                                    "different maths"))
                except Exception as error:  # an optional third-party kernel: its failure is reported in the table
                    results.append(("fla chunk_gated_delta_rule", f"failed: {type(error).__name__}: {error}", "-"))
        core = _core_results(q, k, v, beta, decay, device, repeats)
        for group in (results, core):
            chunk_ms = group[1][1]
            for name, ms, err in group:
                if isinstance(ms, str):
                    rows.append([label, dtype_name, name, ms, "-", err])
                else:
                    rows.append([label, dtype_name, name, f"{ms:.3f}", f"{chunk_ms / ms:.2f}", err])
    return rows


def _core_results(q, k, v, beta, decay, device: str, repeats: int) -> list[tuple[str, float, str]]:
    """The GDN block's whole core as the model runs it (`bidirectional_frame_gdn`: numerator and
    denominator streams, forward and backward scans) on each backend; its speed-up is against chunk."""
    from model.ops.gdn import bidirectional_frame_gdn

    q, k = q.relu(), k.relu()
    inputs = dict(q_num=q, k_num=k, q_den=q, k_den=k, v=v, beta=beta, decay=decay, output_final_state=True)
    results = []
    with torch.no_grad():
        reference = bidirectional_frame_gdn(**inputs, backend="naive")[0]
        for backend in ("naive", "chunk", "triton"):
            fn = lambda backend=backend: bidirectional_frame_gdn(**inputs, backend=backend)  # noqa: E731
            out = fn()[0]
            results.append((f"gdn core, {backend} (num+den, fwd+bwd)", _time_ms(fn, device, repeats),
                            f"{_rel_err(reference, out):.2e}"))
    return results


def cuda_rows(
    shapes: list[tuple[int, int, int, int, int, int]] = REAL_SHAPES,
    dtype: torch.dtype = torch.bfloat16,
    repeats: int = 20,
    sweep: list[tuple[int, int, int]] = TRITON_SWEEP,
) -> list[list]:
    """Rows under `CUDA_HEADER` timing every path at each (B, H, F, S, K, V) on the current GPU."""
    if not torch.cuda.is_available():
        raise RuntimeError("model.ops.gpu_bench.cuda_rows needs a CUDA device; none is available")
    return _rows(shapes, "cuda", dtype, repeats, sweep)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing measured (run this on a GPU machine)")
        return 1
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    rows = cuda_rows(dtype=dtype, repeats=args.repeats)
    print(f"{torch.cuda.get_device_name()}; {machine_description()}; median of {args.repeats}")
    print(markdown_table(CUDA_HEADER, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
