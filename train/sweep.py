"""The tiny-size sweep: streaming fps of candidate model sizes on this machine, VAE decode included.

    python run.py train sweep --write-docs        # -> docs/tiny_sweep.md

Each candidate runs the live loop (`streaming.generator.ChunkGenerator`: the sampler's Euler steps (by
default the shipped model's, `--sigmas` to compare), a commit, the VAE's stream decode) for a few chunks
from a sim start frame and reports the median chunk time and fps = raw frames per chunk / chunk time.
The quality proxy is the flow-matching validation loss after `--train-steps` teacher steps on the latent
cache `--latents` (lower is better; the same draws of clips, σ and noise for every candidate), when a
cache is given.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch

from model import ModelConfig, WorldModel

DOCS_SWEEP = Path(__file__).resolve().parent.parent / "docs" / "tiny_sweep.md"

# name -> changes to ModelConfig.preset("tiny") (in/plucker channels are set from the VAE)
CANDIDATES: dict[str, dict] = {
    "h64-d4": dict(hidden_size=64, depth=4, head_dim=32, num_cross_heads=2),
    "h96-d4": dict(hidden_size=96, depth=4, head_dim=32, num_cross_heads=3),
    "h128-d4": dict(hidden_size=128, depth=4, head_dim=32, num_cross_heads=4),
    "h128-d6": dict(hidden_size=128, depth=6, head_dim=32, num_cross_heads=4, softmax_every_n=3),
    "h192-d6": dict(hidden_size=192, depth=6, head_dim=32, num_cross_heads=6, softmax_every_n=3),
}


def candidate_config(name: str, vae) -> ModelConfig:
    if name not in CANDIDATES:
        raise ValueError(f"unknown sweep candidate {name!r}; known: {sorted(CANDIDATES)}")
    return ModelConfig.preset("tiny").replace(
        in_channels=vae.latent_channels, out_channels=vae.latent_channels,
        plucker_channels=6 * vae.temporal_stride, **CANDIDATES[name])


def stream_fps(model: WorldModel, vae, size: int, sigmas: tuple[float, ...], chunks: int = 6,
               chunk_latents: int = 2) -> tuple[float, float]:
    """(median ms per chunk after the first, fps) of the live loop at size×size with the sampler `sigmas`."""
    from sim import default_intrinsics
    from sim.clips import sample_trajectory
    from sim.world import Scene
    from streaming.generator import ChunkGenerator, GeneratorConfig

    scene = Scene.from_seed(1_000_003)
    K = default_intrinsics(size, size)
    gen = ChunkGenerator(model, vae, GeneratorConfig(chunk_latents=chunk_latents, sigmas=sigmas), (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    n_frames = 1 + vae.temporal_stride * chunk_latents * chunks
    poses = sample_trajectory(scene, 0, 8 * ((n_frames + 7) // 8) + 1)[:n_frames]
    gen.start(scene.render(poses[:1], K, size, size).rgb[0], poses[0])
    times, start = [], 0
    for _ in range(chunks):
        n = gen.frames_for_next_chunk()
        t0 = time.perf_counter()
        gen.step(poses[start:start + n])
        times.append(time.perf_counter() - t0)
        start += n
    ms = statistics.median(times[1:]) * 1e3
    return ms, vae.temporal_stride * chunk_latents / (ms / 1e3)


def quality_proxy(config: ModelConfig, latents: str, steps: int) -> float:
    """Teacher validation loss after `steps` steps (batch 4, lr 1e-3, 8×8 latent windows of 9 latents) on
    `latents`, mean of 4 fixed draws."""
    import tempfile

    from train.data import LatentClips
    from train.recipes import TeacherLoss
    from train.trainer import ChunkCausalNet, LoopConfig, train_loop

    clips = LatentClips(latents)
    loss_fn = TeacherLoss(clips, batch_size=4, chunk_latents=2, shift=3.0, p_clean_context=0.3, refresh_every=10**9,
                          crops=(8,), frames=9)
    torch.manual_seed(0)
    model = WorldModel(config)
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = LoopConfig(run_dir=run_dir, steps=steps, lr=1e-3, warmup_steps=min(20, steps // 4), progress=False,
                         log_every=steps)
        model, _, _ = train_loop(model, loss_fn, cfg, kv_window_chunks=2, sink=True)
    net = ChunkCausalNet(model.eval(), kv_window_chunks=2, sink=True)
    with torch.no_grad():
        return float(np.mean([float(loss_fn(net, torch.Generator().manual_seed(1000 + i), 1)[0]) for i in range(4)]))


def add_arguments(parser) -> None:
    parser.add_argument("--vae", default=None,
                        help="TinyVAE weights (default: the installed ones; 'random' = untrained, same speed)")
    parser.add_argument("--sizes", default="128,256", help="square frame sizes to time")
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the server's worker uses cores - 1)")
    parser.add_argument("--latents", default=None, help="encoded clips (data/latents/<vae>/train) for the quality proxy")
    parser.add_argument("--train-steps", type=int, default=60, help="teacher steps per candidate for the quality proxy")
    parser.add_argument("--sigmas", default=None,
                        help="sampler σ list, comma-separated (default: the shipped model's, its json's generator.sigmas)")
    parser.add_argument("--write-docs", action="store_true", help=f"write {DOCS_SWEEP.name}")


def main(args) -> int:
    from common.bench import load_average
    from model.release import model_sampler_sigmas
    from model.vae import TinyVAE, load_tiny_vae
    from train.embedded import EMBEDDED_WEIGHTS

    torch.set_num_threads(args.threads)
    args.sigmas = model_sampler_sigmas(args.sigmas, EMBEDDED_WEIGHTS)
    load_at_start = load_average()
    vae = TinyVAE().eval() if args.vae == "random" else load_tiny_vae(args.vae)
    sizes = [int(s) for s in args.sizes.split(",")]
    vae_ms = [f"{size}×{size}: {decode_ms(vae, size):.0f} ms" for size in sizes]
    rows = []
    for name in args.candidates.split(","):
        torch.manual_seed(0)
        config = candidate_config(name, vae)
        model = WorldModel(config).eval()
        params = sum(p.numel() for p in model.parameters())
        quality = f"{quality_proxy(config, args.latents, args.train_steps):.4f}" if args.latents else "–"
        for size in sizes:
            ms, fps = stream_fps(model, vae, size, args.sigmas)
            rows.append([name, f"{params / 1e6:.2f} M", f"{size}×{size}", f"{ms:.0f}", f"{fps:.1f}",
                         "yes" if fps >= 16 else "no", quality])
            print(f"{name} {params / 1e6:.2f}M {size}: {ms:.0f} ms/chunk, {fps:.1f} fps, val loss {quality}", flush=True)
        # Written after every candidate, so an interrupted sweep still leaves what it measured.
        if args.write_docs:
            write_docs(rows, vae_ms, args, load_at_start)
    return 0


def decode_ms(vae, size: int) -> float:
    """Median ms of the TinyVAE stream decode of one 2-latent chunk at size×size."""
    hw = (size // vae.spatial_stride, size // vae.spatial_stride)
    dec = vae.stream_decoder(1)
    with torch.inference_mode():
        dec.decode_chunk(torch.randn(1, vae.latent_channels, 1, *hw))
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            dec.decode_chunk(torch.randn(1, vae.latent_channels, 2, *hw))
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def write_docs(rows: list[list[str]], vae_ms: list[str], args, load_at_start: float) -> None:
    """docs/tiny_sweep.md: the table, how it was measured, and the hand-written `## Choice` section kept."""
    from common.bench import load_average, machine_description, markdown_table

    table = markdown_table(["candidate", "params", "frames", "ms / chunk (median)", "fps", "≥ 16 fps",
                            f"val loss after {args.train_steps} steps"], rows)
    body = (
        "# Tiny model size sweep\n\n"
        "Written by `python run.py train sweep --write-docs` (train/sweep.py). The live loop of "
        "`streaming.generator.ChunkGenerator`: chunks of 2 latents = 8 frames = 0.5 s at 16 fps, "
        f"{len(args.sigmas) - 1} Euler step(s) over σ = {', '.join(f'{s:g}' for s in args.sigmas)}, one commit pass and the TinyVAE stream decode, random weights (speed does not depend on them), "
        f"torch threads = {args.threads}, median over chunks 2–6 of one walk.\n\n"
        f"Machine: {machine_description()}; 1-minute load average {load_at_start:.1f} at the start and "
        f"{load_average():.1f} when this was written (above 1, other jobs shared the two cores and the fps figures "
        "are pessimistic).\n\n"
        f"{table}\n\nThe quality proxy (last column) is the chunk-causal flow-matching loss on 4 fixed draws after "
        f"{args.train_steps} teacher steps on `{args.latents}` (same data, σ and noise for every candidate; lower is better).\n\n"
        f"TinyVAE stream decode of one 8-frame chunk alone: {', '.join(vae_ms)}.\n"
    )
    previous = DOCS_SWEEP.read_text() if DOCS_SWEEP.exists() else ""
    marker = "\n## Choice\n"
    choice = previous[previous.index(marker):] if marker in previous else ""
    DOCS_SWEEP.write_text(body + choice)
