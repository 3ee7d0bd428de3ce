"""Timings of the frame-wise gated delta rule paths (`python run.py bench gdn`).

On the CPU, at tiny-model shapes, for each (B, H, F, S, K, V) it times the naive per-frame loop and
the chunked torch path on three workloads:
    scan      one forward scan (`frame_gated_delta_rule`), inference;
    gdn       the GDN block core (`bidirectional_frame_gdn`: numerator and denominator streams,
              forward + backward scans), inference;
    gdn+grad  the same with a backward pass through every input, as in training.
Each figure is the median of --repeats timed calls after one warm-up, measured by this run, with
the paths' calls interleaved so that load from other processes falls on all of them alike; the
relative RMS error of chunk against naive is printed beside it. For the `gdn` workload the same
computation through diffusers' reference scans (`torch_chunk_sana_gdn`, forward plus its
flip-and-shift backward, as `SanaWMTransformer3DModel` runs it) is timed as well. When CUDA is
present the Triton kernel is timed too, via `model.ops.gpu_bench.cuda_rows` (imported only then).
"""
from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch

from common.bench import machine_description, markdown_table, median, write_docs_section

# (B, H, F, S, K, V): a streaming chunk and a bidirectional clip of tiny-model sizes
CPU_SHAPES: list[tuple[int, int, int, int, int, int]] = [
    (1, 2, 3, 64, 16, 16),
    (2, 4, 7, 128, 32, 32),
    (1, 8, 21, 128, 32, 32),
    (2, 4, 21, 256, 64, 64),
]
QUICK_SHAPES = CPU_SHAPES[:2]
HEADER = ["shape B,H,F,S,K,V", "workload", "naive ms", "chunk ms", "chunk vs naive", "diffusers ms",
          "chunk vs diffusers", "rel err chunk/naive"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per figure (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--quick", action="store_true", help="only the two smallest shapes")


def _inputs(shape: tuple[int, ...], seed: int = 0) -> dict[str, torch.Tensor]:
    """Model-like inputs: ReLU features, keys scaled by κ = 1/sqrt(K·S), β near 1, γ near 1."""
    B, H, F, S, K, V = shape
    gen = torch.Generator().manual_seed(seed)
    kappa = (K * S) ** -0.5
    return dict(
        q_num=torch.randn(B, H, F, S, K, generator=gen).relu(),
        k_num=torch.randn(B, H, F, S, K, generator=gen).relu() * kappa,
        q_den=torch.randn(B, H, F, S, K, generator=gen).relu(),
        k_den=torch.randn(B, H, F, S, K, generator=gen).relu() * kappa,
        v=torch.randn(B, H, F, S, V, generator=gen),
        beta=0.9 + 0.1 * torch.rand(B, H, F, S, generator=gen),
        decay=0.95 + 0.05 * torch.rand(B, H, F, generator=gen),
    )


def _workloads(inputs: dict[str, torch.Tensor]):
    """name -> fn(backend) returning the tensor whose agreement is reported."""
    from model.ops.gdn import bidirectional_frame_gdn, frame_gated_delta_rule

    def scan(backend: str) -> torch.Tensor:
        return frame_gated_delta_rule(
            inputs["q_num"], inputs["k_num"], inputs["v"], inputs["beta"], inputs["decay"], backend=backend
        )[0]

    def gdn(backend: str) -> torch.Tensor:
        return bidirectional_frame_gdn(**inputs, backend=backend)[0]

    def gdn_grad(backend: str) -> torch.Tensor:
        leaves = {name: x.clone().requires_grad_(True) for name, x in inputs.items()}
        out = bidirectional_frame_gdn(**leaves, backend=backend)[0]
        out.square().mean().backward()
        return leaves["k_num"].grad

    return {"scan": scan, "gdn": gdn, "gdn+grad": gdn_grad}


def _diffusers_gdn(inputs: dict[str, torch.Tensor]):
    """The `gdn` workload through diffusers' reference scans, or None where they do not apply."""
    try:
        from diffusers.models.transformers.transformer_sana_wm import flip_and_shift, torch_chunk_sana_gdn
    except ImportError:
        return None
    B, H, F, S, K = inputs["q_num"].shape
    if inputs["v"].shape[-1] != K:
        return None

    def layout(x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 1, 4, 2, 3).reshape(B, H, K, F * S)  # [B, H, D, N]

    def unflip(x: torch.Tensor) -> torch.Tensor:
        return x.view(B, H, x.shape[2], F, S).flip(3).reshape(B, H, x.shape[2], F * S)

    def scan(q_den, k_den, v, q_num, k_num, beta, decay):
        return torch_chunk_sana_gdn(q_den, k_den, v, q_num, k_num, beta, decay, chunk_size=21, return_components=True)

    def run() -> torch.Tensor:
        names = ("q_den", "k_den", "v", "q_num", "k_num")
        frames = {name: inputs[name].permute(0, 1, 4, 2, 3) for name in names}  # [B, H, D, F, S]
        num_f, den_f = scan(*(layout(inputs[name]) for name in names), inputs["beta"], inputs["decay"])
        flipped = [
            (frames[name].flip(3) if name.startswith("q") else flip_and_shift(frames[name], dim=3)).reshape(B, H, K, F * S)
            for name in names
        ]
        num_b, den_b = scan(
            *flipped, flip_and_shift(inputs["beta"], dim=2), flip_and_shift(inputs["decay"], dim=2, shift_val=1.0)
        )
        return (num_f + unflip(num_b)) / (den_f + unflip(den_b) + 1e-8)

    return run


def _interleaved_ms(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median wall-clock ms of each fn, timing one call of each in turn per round (after a warm-up)."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times):
            start = time.perf_counter()
            fn()
            record.append(time.perf_counter() - start)
    return [1e3 * median(record) for record in times]


def cpu_rows(shapes: list[tuple[int, ...]], repeats: int) -> list[list]:
    rows = []
    for shape in shapes:
        inputs = _inputs(shape)
        reference = _diffusers_gdn(inputs)
        for name, fn in _workloads(inputs).items():
            with torch.inference_mode(mode=name != "gdn+grad"):
                ref, got = fn("naive"), fn("chunk")
                err = ((got - ref).square().mean().sqrt() / ref.square().mean().sqrt()).item()
                paths = [lambda: fn("naive"), lambda: fn("chunk")]
                if name == "gdn" and reference is not None:
                    paths.append(reference)
                naive_ms, chunk_ms, *ref_ms = _interleaved_ms(paths, repeats)
                diffusers = (f"{ref_ms[0]:.2f}", f"{ref_ms[0] / chunk_ms:.2f}x") if ref_ms else ("-", "-")
            rows.append([
                ",".join(map(str, shape)), name, f"{naive_ms:.2f}", f"{chunk_ms:.2f}",
                f"{naive_ms / chunk_ms:.2f}x", *diffusers, f"{err:.1e}",
            ])
    return rows


def main(args: argparse.Namespace) -> int:
    if args.repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {args.repeats}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    shapes = QUICK_SHAPES if args.quick else CPU_SHAPES
    load_before = os.getloadavg()[0]
    table = markdown_table(HEADER, cpu_rows(shapes, args.repeats))
    sections = [
        f"CPU: {machine_description()}; torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
        f"fp32; median of {args.repeats} interleaved runs; 1-minute load average {load_before:.1f} before "
        f"and {os.getloadavg()[0]:.1f} after (other processes share these cores). "
        "Written by `python run.py bench gdn`.",
        table,
    ]
    if torch.cuda.is_available():
        from model.ops.gpu_bench import CUDA_HEADER, cuda_rows

        sections.append(f"CUDA: {torch.cuda.get_device_name()} (bf16 inputs, fp32 state).")
        sections.append(markdown_table(CUDA_HEADER, cuda_rows()))
    else:
        sections.append("CUDA: no GPU on this machine, so the Triton kernel was not timed.")
    body = "\n\n".join(sections)
    print(body)
    if args.write_docs:
        write_docs_section("gdn", body)
    return 0
