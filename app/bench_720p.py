"""`python run.py bench gpu720`: the full 720p streaming pipeline on a CUDA GPU, with random weights of the real size.

What one chunk is (the live app's `streaming.generator.ChunkGenerator`, unchanged, run with the streaming
release's profile `model.profile.OFFICIAL_STREAMING`): camera conditioning of the chunk's poses, 4 distilled
Euler steps (fp32 timesteps and updates) of the 2.66 B SANA-WM DiT (`ModelConfig.preset("sana_wm_1600m")`,
camera key conv within the chunk) against the read-only `StreamState` (KV window: the sink + 1 recent chunk),
the t = 0 commit pass, with `--refiner on` the chunk-causal LTX-2 refiner (diffusers'
`SanaWMLTX2RefinerTransformer3DModel` at its default, released size: 48 layers of 4096; 3 Euler steps of
one 3-latent block against the sink + 10 recent frames, and its capture pass; random 1024-token prompt
embeddings stand in for Gemma-3, which runs once per prompt, not per chunk), and the causal chunk decode
of the LTX-2 VAE (diffusers' default `AutoencoderKLLTX2Video` architecture, 128 latent channels, strides
8/32/32) to 704×1280 uint8 frames on the host (the first frame of the walk dropped). Chunks are 3 latents =
24 frames = 1.5 s of 16 fps video. Weights are random (the release cannot be downloaded here): the time is
the same. `--refiner both` (the default) times the pipeline without and then with the refiner, one row each.

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
import dataclasses
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
    parser.add_argument("--refiner", choices=("off", "on", "both"), default="both",
                        help="time the pipeline without the refiner, with it, or both (default, one row each)")
    parser.add_argument("--walks", default="1",
                        help="concurrent walks, batched across sessions as the app's worker does (streaming.batched."
                             "step_batched), or a comma list for one row per count (default %(default)s)")
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

    from model.profile import OFFICIAL_STREAMING

    cam_conv = OFFICIAL_STREAMING.cam_conv_cross_chunk
    if tiny:
        config = ModelConfig.preset("tiny", in_channels=8, out_channels=8, plucker_channels=48, gdn_backend=gdn_backend,
                                    cam_conv_cross_chunk=cam_conv)
        vae_kwargs, size = _TINY_VAE, (64, 64)
    else:
        config = ModelConfig.preset("sana_wm_1600m", gdn_backend=gdn_backend, cam_conv_cross_chunk=cam_conv)
        vae_kwargs, size = {}, (704, 1280)
    torch.manual_seed(0)
    # Built in place in the target dtype: a 2.66 B fp32 copy on the host first would cost 10.6 GB and minutes.
    with torch.device(device), _default_dtype(dtype):
        dit = WorldModel(config).eval()
        vae = AutoencoderKLLTX2Video(**vae_kwargs, decoder_causal=True).eval()
    # Any tensor a constructor made in an explicit dtype follows the rest.
    return dit.to(dtype), LTX2VideoVAE(vae.to(dtype), source="random"), size


# A tiny LTX-2 refiner transformer in the tiny VAE's 8-channel space, for --tiny-smoke.
_TINY_REFINER = dict(
    in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
    caption_channels=32, num_layers=2, audio_in_channels=8, audio_out_channels=8, audio_num_attention_heads=2,
    audio_attention_head_dim=8, audio_cross_attention_dim=16,
)


def build_refiner(*, tiny: bool, device: str, dtype, fps: float = 16.0):
    """(StreamRefiner with random weights at the released size (or tiny), random prompt embeddings [1, L, C], mask [1, L]).

    Only the transformer and the scheduler are built: the bench feeds prompt embeddings in place of Gemma-3 and
    the connectors, which run once per prompt."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.models.transformers.transformer_sana_wm_refiner import SanaWMLTX2RefinerTransformer3DModel
    from diffusers.pipelines.sana_wm import SanaWMLTX2Refiner

    from model.profile import OFFICIAL_STREAMING
    from model.refiner import StreamRefiner

    torch.manual_seed(1)
    with torch.device(device), _default_dtype(dtype):
        transformer = SanaWMLTX2RefinerTransformer3DModel(**(_TINY_REFINER if tiny else {})).eval()
    transformer = transformer.to(dtype)
    pipe = SanaWMLTX2Refiner(transformer=transformer, connectors=None, tokenizer=None, text_encoder=None,
                             scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0))
    refiner = StreamRefiner(pipe, OFFICIAL_STREAMING.refiner, fps=fps, device=device)
    tokens = 16 if tiny else OFFICIAL_STREAMING.refiner.text_tokens
    embeds = torch.randn(1, tokens, transformer.config.caption_channels, device=device, dtype=dtype)
    return refiner, embeds, torch.ones(1, tokens, dtype=torch.long, device=device)


def _walk(n: int):
    """n poses walking forward 1.4 m/s with a slow right turn (world_T_cam [n, 4, 4])."""
    import numpy as np

    from controls.camera import make_pose, rotation_yaw

    t = np.arange(n) / 16.0
    return np.stack([make_pose(rotation_yaw(0.2 * ti), [0.0, 0.0, 1.4 * ti]) for ti in t])


def _check_args(args: argparse.Namespace) -> None:
    from common.bench import counts_flag

    counts_flag(getattr(args, "walks", "1"), "--walks")
    for name in ("chunks", "warmup", "chunk_latents"):
        value = getattr(args, name)
        if value < (0 if name == "warmup" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be >= {0 if name == 'warmup' else 1}, got {value}")
    from model.profile import OFFICIAL_STREAMING

    block = OFFICIAL_STREAMING.refiner.block_latents
    if getattr(args, "refiner", "off") != "off" and args.chunk_latents != block:
        raise ValueError(f"--refiner {args.refiner} needs --chunk-latents {block} (one refiner block per chunk), "
                         f"got {args.chunk_latents}")


def run(args: argparse.Namespace, refiner: bool = False, parts: tuple | None = None, walks: int = 1) -> dict:
    """Stream `warmup + chunks` chunks of `walks` concurrent walks (with the refiner when `refiner`) and return the
    measured figures. The walks start from different images and poses and advance together, one batched chunk per
    step (`streaming.batched.step_batched`, the app's worker path; one walk is `ChunkGenerator.step`).
    `parts`: (dit, vae, (height, width)) already built, to time every row on one DiT."""
    import numpy as np
    import torch

    # This benchmark times the whole live pipeline, so it drives the app's own generator.
    from model.profile import OFFICIAL_STREAMING
    from model.prompts import EncodedPrompt
    from streaming.batched import step_batched
    from streaming.generator import ChunkGenerator, GeneratorConfig

    _check_args(args)
    device = "cpu" if args.tiny_smoke else "cuda"
    dtype = torch.float32 if args.tiny_smoke or args.dtype == "fp32" else torch.bfloat16
    cuda = device == "cuda"
    backend = "chunk" if args.tiny_smoke else args.gdn_backend
    if parts is None:
        parts = build_pipeline(tiny=args.tiny_smoke, device=device, dtype=dtype, gdn_backend=backend)
        if args.compile:
            for block in parts[0].blocks:
                block.compile(mode=None if args.compile_mode == "default" else args.compile_mode)
    dit, vae, (height, width) = parts
    stage2 = prompt = None
    if refiner:
        stage2, embeds, embeds_mask = build_refiner(tiny=args.tiny_smoke, device=device, dtype=dtype)
        text, mask = dit.null_text(1)
        encoded = EncodedPrompt(prompt="(random embeddings)", text=text, mask=mask, refiner_text=embeds, refiner_mask=embeds_mask)
        prompt = lambda: encoded  # noqa: E731
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    profile = OFFICIAL_STREAMING
    fx = 0.5 * width / np.tan(np.radians(30.0))
    config = GeneratorConfig(chunk_latents=args.chunk_latents, kv_window_chunks=profile.kv_window_chunks, sink=profile.sink,
                             fp32_sampling=profile.fp32_sampling, drop_first_frame=profile.drop_first_frame,
                             warm_start=profile.warm_start, seed=0)
    generators = [ChunkGenerator(dit, vae, dataclasses.replace(config, seed=w), (fx, fx, width / 2.0, height / 2.0), device=device,
                                 dtype=dtype, prompt=prompt, refiner=stage2) for w in range(walks)]
    rng = np.random.default_rng(0)
    total_chunks = args.warmup + args.chunks
    per_chunk = vae.temporal_stride * args.chunk_latents
    poses = _walk(1 + per_chunk * total_chunks)
    # Each walk its own start image and its own place on the path: rows differ as live walks do.
    walk_poses = [poses.copy() for _ in range(walks)]
    for w, generator in enumerate(generators):
        walk_poses[w][:, 0, 3] += 2.0 * w  # 2 m apart sideways
        generator.start((rng.random((height, width, 3)) * 255).astype(np.uint8), walk_poses[w][0])
    times, refine_times, start = [], [], 0
    for c in range(total_chunks):
        count = generators[0].frames_for_next_chunk()
        shown = generators[0].frames_shown_for_next_chunk()
        chunk_poses = [p[start:start + count] for p in walk_poses]
        t0 = time.perf_counter()
        # host uint8 frames: the GPU work is done
        frames = [generators[0].step(chunk_poses[0])] if walks == 1 else step_batched(generators, chunk_poses)
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        start += count
        for walk_frames in frames:
            if walk_frames.shape != (shown, height, width, 3):
                raise RuntimeError(f"chunk {c} gave frames {walk_frames.shape}, expected {(shown, height, width, 3)}")
        if c >= args.warmup:
            times.append(elapsed)
            refine_times.append(max(g.last_timings.refine_ms for g in generators) / 1e3)
    median = float(np.median(times))
    generator = generators[0]
    refiner_state = generator.refiner_state
    return {
        "refiner": "on" if refiner else "off",
        "refine_s": float(np.median(refine_times)) if refiner else float("nan"),
        "refiner_params_m": sum(p.numel() for p in stage2.transformer.parameters()) / 1e6 if refiner else float("nan"),
        "refiner_window_mb": refiner_state.nbytes() / 1e6 if refiner_state is not None else float("nan"),
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
        "walks": walks,
        "x_real_time": (per_chunk / 16.0) / median,  # per walk: each walk gets a chunk of video per batched step
        "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else float("nan"),
        "state_mb": generator.state.nbytes() / 1e6,  # per walk
        "chunks": len(times),
        "parts": parts,
    }


def main(args: argparse.Namespace) -> int:
    import torch

    from common.bench import DOCS_BENCHMARKS, counts_flag, machine_description, markdown_table, write_docs_section

    if not args.tiny_smoke and not torch.cuda.is_available():
        raise SystemExit("bench gpu720: needs a CUDA GPU (torch.cuda.is_available() is False on this machine); "
                         "run it on an H100/H200 as is, or use --tiny-smoke to check the code path on the CPU")
    if args.tiny_smoke and args.write_docs and args.docs_path in (None, DOCS_BENCHMARKS):
        raise SystemExit("bench gpu720: --tiny-smoke figures are not benchmarks; give --docs-path to write them elsewhere")
    try:
        _check_args(args)
        results, parts = [], None
        for with_refiner in {"off": (False,), "on": (True,), "both": (False, True)}[args.refiner]:
            for walks in counts_flag(args.walks, "--walks"):
                r = run(args, refiner=with_refiner, parts=parts, walks=walks)
                results.append(r)
                parts = r.pop("parts")
    except ValueError as error:
        raise SystemExit(f"bench gpu720: {error}") from None
    header = ["device", "dtype", "GDN", "compile", "frames", "DiT params", "refiner", "walks", "chunk ms (median)", "refine ms",
              "min-max ms", "x real time per walk", "peak GB", "state MB per walk"]
    rows = []
    for r in results:
        peak = "n/a (CPU)" if r["peak_gb"] != r["peak_gb"] else f"{r['peak_gb']:.1f}"
        size = f"{r['refiner_params_m'] / 1e3:.1f} B" if r["refiner_params_m"] >= 1e3 else f"{r['refiner_params_m']:.1f} M"
        refiner = "off" if r["refiner"] == "off" else f"on ({size}, window {r['refiner_window_mb']:.1f} MB)"
        refine = "-" if r["refiner"] == "off" else f"{1e3 * r['refine_s']:.0f}"
        rows.append([r["device"], r["dtype"], r["gdn"], r["compile"], f"{r['size']}, {r['chunk_frames']}/chunk",
                     f"{r['params_m']:.1f} M", refiner, str(r["walks"]), f"{1e3 * r['median_s']:.0f}", refine,
                     f"{1e3 * r['min_s']:.0f}-{1e3 * r['max_s']:.0f}", f"{r['x_real_time']:.2f}", peak, f"{r['state_mb']:.1f}"])
    r = results[0]
    table = markdown_table(header, rows)
    print(table)
    if args.write_docs:
        body = (
            f"`python run.py bench gpu720 --gdn-backend {r['gdn']} --refiner {args.refiner} --walks {args.walks}"
            + (f" --compile --compile-mode {args.compile_mode}"
                                                                      if args.compile else "") + "`: the full 720p streaming "
            "pipeline as the release's profile runs it (camera conditioning, 4 distilled steps + commit of the 2.66 B DiT, "
            "the chunk-causal LTX-2 refiner where the row says on, causal LTX-2 decode to "
            f"host frames) with random weights of the real size; median of {r['chunks']} chunks after warm-up. "
            "Several walks run as the app's worker batches them (one batched chunk per step, `streaming.batched`). "
            f"x real time per walk = one walk's video seconds / wall seconds; a batch keeps up while it is >= 1. Machine: {machine_description()}, {r['device']}. "
            "The official streaming pipeline reports 1.09x at 47.3 GB on one H100 in bf16 (with its refiner).\n\n"
            + table
        )
        write_docs_section(SECTION, body, args.docs_path or DOCS_BENCHMARKS)
    return 0
