"""Timings of the frame-wise gated delta rule paths (`python run.py bench gdn`).

On the CPU, at tiny-model shapes, for each (B, H, F, S, K, V) it times the naive per-frame loop and
the chunked torch path on three workloads:
    scan      one forward scan (`frame_gated_delta_rule`), inference;
    gdn       the GDN block core (`bidirectional_frame_gdn`: numerator and denominator streams,
              forward + backward scans), inference;
    gdn+grad  the same with a backward pass through every input, as in training.
Each figure is the median of --repeats timed calls after one warm-up, measured by this run; the
relative RMS error of chunk against naive is printed beside it. When CUDA is present the Triton
kernel is timed too, via `model.ops.gpu_bench.cuda_rows` (imported only then).
"""
from __future__ import annotations

import argparse

import torch

from common.bench import machine_description, markdown_table, median, time_call, write_docs_section

# (B, H, F, S, K, V): a streaming chunk and a bidirectional clip of tiny-model sizes
CPU_SHAPES: list[tuple[int, int, int, int, int, int]] = [
    (1, 2, 3, 64, 16, 16),
    (2, 4, 7, 128, 32, 32),
    (1, 8, 21, 128, 32, 32),
    (2, 4, 21, 256, 64, 64),
]
QUICK_SHAPES = CPU_SHAPES[:2]
HEADER = ["shape B,H,F,S,K,V", "workload", "naive ms", "chunk ms", "speed-up", "rel err"]


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


def cpu_rows(shapes: list[tuple[int, ...]], repeats: int) -> list[list]:
    rows = []
    for shape in shapes:
        for name, fn in _workloads(_inputs(shape)).items():
            with torch.inference_mode(mode=name != "gdn+grad"):
                ref, got = fn("naive"), fn("chunk")
                err = ((got - ref).square().mean().sqrt() / ref.square().mean().sqrt()).item()
                naive_ms = 1e3 * median(time_call(lambda: fn("naive"), repeats=repeats))
                chunk_ms = 1e3 * median(time_call(lambda: fn("chunk"), repeats=repeats))
            rows.append([
                ",".join(map(str, shape)), name, f"{naive_ms:.2f}", f"{chunk_ms:.2f}",
                f"{naive_ms / chunk_ms:.2f}x", f"{err:.1e}",
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
    sections = [
        f"CPU: {machine_description()}; torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
        f"fp32; median of {args.repeats} runs. Written by `python run.py bench gdn`.",
        markdown_table(HEADER, cpu_rows(shapes, args.repeats)),
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
