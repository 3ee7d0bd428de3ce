"""`python run.py bench gpu720`: the full 720p streaming pipeline on a CUDA GPU, with random weights of the real size.

What one chunk is (the live app's `streaming.generator.ChunkGenerator`, unchanged): camera conditioning of
the chunk's poses, 4 distilled Euler steps of the 2.66 B SANA-WM DiT (`ModelConfig.preset("sana_wm_1600m")`)
against the read-only `StreamState` (KV window 2 chunks + sink), the t = 0 commit pass, and the causal
chunk decode of the LTX-2 VAE (diffusers' default `AutoencoderKLLTX2Video` architecture, 128 latent
channels, strides 8/32/32) to 704×1280 uint8 frames on the host. Chunks are 3 latents = 24 frames = 1.5 s
of 16 fps video. Weights are random (the release cannot be downloaded here): the time is the same.

Reported, over `--chunks` timed chunks after `--warmup` untimed ones: the median / min / max wall time per
chunk, x-real-time = video seconds / wall seconds (from the median), the peak CUDA memory of the whole
run (weights, state, activations; `torch.cuda.max_memory_allocated`) and the stream state's size.
Options: `--dtype bf16|fp32`, `--compile` (`torch.compile` of every transformer block, `--compile-mode
reduce-overhead` to capture CUDA graphs). The official streaming pipeline's figures for comparison
(sana_wm.md §9): 1.09× real time at a 47.3 GB peak on one H100 in bf16, with its refiner.

Without CUDA the command exits with a message. `--tiny-smoke` runs the same code path with a tiny
DiT and VAE at 64×64 on the CPU (tests use it); its figures mean nothing and it refuses to write the
real docs file (`--docs-path` sends its section elsewhere).
"""
from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

SECTION = "gpu720"
# A scaled-down LTX-2 VAE with the release's layer pattern, for --tiny-smoke.
_TINY_VAE = dict(
    latent_channels=8, block_out_channels=(8, 16, 32, 64), decoder_block_out_channels=(8, 16, 32),
    layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chunks", type=int, default=10, help="timed chunks (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed chunks first (default 2; chunk 0 is one of them)")
    parser.add_argument("--chunk-latents", type=int, default=3, help="latents per chunk (default 3 = 24 frames)")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--compile", action="store_true", help="torch.compile every transformer block")
    parser.add_argument("--compile-mode", default="default", choices=("default", "reduce-overhead", "max-autotune"),
                        help="torch.compile mode; reduce-overhead captures CUDA graphs")
    parser.add_argument("--gdn-backend", choices=("triton", "chunk", "naive"), default="triton",
                        help="gated delta rule path of the GDN blocks (default triton; --tiny-smoke always uses chunk)")
    parser.add_argument("--tiny-smoke", action="store_true", help="tiny model at 64x64 on the CPU (tests the code path)")
    parser.add_argument("--docs-path", type=Path, default=None, help="write the section here instead of docs/benchmarks.md")


@contextlib.contextmanager
def _default_dtype(dtype):
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_pipeline(*, tiny: bool, device: str, dtype, gdn_backend: str = "chunk"):
    """(DiT, LTX-2 VAE adapter, (height, width)) with random weights, built directly on `device` in `dtype`."""
    import torch
    from diffusers import AutoencoderKLLTX2Video

    from model import ModelConfig, WorldModel
    from model.vae.ltx2 import LTX2VideoVAE

    if tiny:
        config = ModelConfig.preset("tiny", in_channels=8, out_channels=8, plucker_channels=48, gdn_backend=gdn_backend)
        vae_kwargs, size = _TINY_VAE, (64, 64)
    else:
        config = ModelConfig.preset("sana_wm_1600m", gdn_backend=gdn_backend)
        vae_kwargs, size = {}, (704, 1280)
    torch.manual_seed(0)
    # Built in place in the target dtype: a 2.66 B fp32 copy on the host first would cost 10.6 GB and minutes.
    with torch.device(device), _default_dtype(dtype):
        dit = WorldModel(config).eval()
        vae = AutoencoderKLLTX2Video(**vae_kwargs, decoder_causal=True).eval()
    # Any tensor a constructor made in an explicit dtype follows the rest.
    return dit.to(dtype), LTX2VideoVAE(vae.to(dtype), source="random"), size


def _walk(n: int):
    """n poses walking forward 1.4 m/s with a slow right turn (world_T_cam [n, 4, 4])."""
    import numpy as np

    from controls.camera import make_pose, rotation_yaw

    t = np.arange(n) / 16.0
    return np.stack([make_pose(rotation_yaw(0.2 * ti), [0.0, 0.0, 1.4 * ti]) for ti in t])


def run(args: argparse.Namespace) -> dict:
    """Stream `warmup + chunks` chunks and return the measured figures."""
    import numpy as np
    import torch

    # This benchmark times the whole live pipeline, so it drives the app's own generator.
    from streaming.generator import ChunkGenerator, GeneratorConfig

    for name in ("chunks", "warmup", "chunk_latents"):
        value = getattr(args, name)
        if value < (0 if name == "warmup" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be >= {0 if name == 'warmup' else 1}, got {value}")
    device = "cpu" if args.tiny_smoke else "cuda"
    dtype = torch.float32 if args.tiny_smoke or args.dtype == "fp32" else torch.bfloat16
    cuda = device == "cuda"
    backend = "chunk" if args.tiny_smoke else args.gdn_backend
    dit, vae, (height, width) = build_pipeline(tiny=args.tiny_smoke, device=device, dtype=dtype, gdn_backend=backend)
    if args.compile:
        for block in dit.blocks:
            block.compile(mode=None if args.compile_mode == "default" else args.compile_mode)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    fx = 0.5 * width / np.tan(np.radians(30.0))
    config = GeneratorConfig(chunk_latents=args.chunk_latents, kv_window_chunks=2, sink=True, seed=0)
    generator = ChunkGenerator(dit, vae, config, (fx, fx, width / 2.0, height / 2.0), device=device, dtype=dtype)
    rng = np.random.default_rng(0)
    image = (rng.random((height, width, 3)) * 255).astype(np.uint8)
    total_chunks = args.warmup + args.chunks
    per_chunk = vae.temporal_stride * args.chunk_latents
    poses = _walk(1 + per_chunk * total_chunks)
    generator.start(image, poses[0])
    times, start, frames_timed = [], 0, 0
    for c in range(total_chunks):
        count = generator.frames_for_next_chunk()
        t0 = time.perf_counter()
        frames = generator.step(poses[start:start + count])  # host uint8 frames: the GPU work is done
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        start += count
        if frames.shape != (count, height, width, 3):
            raise RuntimeError(f"chunk {c} gave frames {frames.shape}, expected {(count, height, width, 3)}")
        if c >= args.warmup:
            times.append(elapsed)
            frames_timed += count
    median = float(np.median(times))
    return {
        "device": torch.cuda.get_device_name() if cuda else "CPU (tiny smoke test)",
        "dtype": str(dtype).removeprefix("torch."),
        "compile": args.compile_mode if args.compile else "off",
        "gdn": backend,
        "size": f"{width}x{height}",
        "params_m": sum(p.numel() for p in dit.parameters()) / 1e6,
        "chunk_frames": per_chunk,
        "median_s": median,
        "min_s": float(np.min(times)),
        "max_s": float(np.max(times)),
        "x_real_time": (per_chunk / 16.0) / median,
        "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else float("nan"),
        "state_mb": generator.state.nbytes() / 1e6,
        "chunks": len(times),
    }


def main(args: argparse.Namespace) -> int:
    import torch

    from common.bench import DOCS_BENCHMARKS, machine_description, markdown_table, write_docs_section

    if not args.tiny_smoke and not torch.cuda.is_available():
        raise SystemExit("bench gpu720: needs a CUDA GPU (torch.cuda.is_available() is False on this machine); "
                         "run it on an H100/H200 as is, or use --tiny-smoke to check the code path on the CPU")
    if args.tiny_smoke and args.write_docs and args.docs_path in (None, DOCS_BENCHMARKS):
        raise SystemExit("bench gpu720: --tiny-smoke figures are not benchmarks; give --docs-path to write them elsewhere")
    try:
        r = run(args)
    except ValueError as error:
        raise SystemExit(f"bench gpu720: {error}") from None
    header = ["device", "dtype", "GDN", "compile", "frames", "DiT params", "chunk ms (median)", "min-max ms",
              "x real time", "peak GB", "state MB"]
    peak = "n/a (CPU)" if r["peak_gb"] != r["peak_gb"] else f"{r['peak_gb']:.1f}"
    row = [r["device"], r["dtype"], r["gdn"], r["compile"], f"{r['size']}, {r['chunk_frames']}/chunk",
           f"{r['params_m']:.1f} M", f"{1e3 * r['median_s']:.0f}", f"{1e3 * r['min_s']:.0f}-{1e3 * r['max_s']:.0f}",
           f"{r['x_real_time']:.2f}", peak, f"{r['state_mb']:.1f}"]
    table = markdown_table(header, [row])
    print(table)
    if args.write_docs:
        body = (
            f"`python run.py bench gpu720 --gdn-backend {r['gdn']}" + (f" --compile --compile-mode {args.compile_mode}"
                                                                      if args.compile else "") + "`: the full 720p streaming "
            "pipeline (camera conditioning, 4 distilled steps + commit of the 2.66 B DiT, causal LTX-2 decode to "
            f"host frames) with random weights of the real size; median of {r['chunks']} chunks after warm-up. "
            f"x real time = video seconds / wall seconds. Machine: {machine_description()}, {r['device']}. "
            "The official streaming pipeline reports 1.09x at 47.3 GB on one H100 in bf16 (with its refiner).\n\n"
            + table
        )
        write_docs_section(SECTION, body, args.docs_path or DOCS_BENCHMARKS)
    return 0
