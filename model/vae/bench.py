"""Encode and decode speed of the tiny video autoencoder on the CPU (`python run.py bench ae`).

Streaming decode is timed as the app runs it: one `decode_chunk` of `--chunk-latents` latents after
the first chunk (stride·Tc frames). Encode is timed on a whole clip of `--frames` frames. Each figure
is the median of `--repeats` runs after a warm-up, at 1 and 2 threads. With `--candidates` the
decode speed of the other architectures considered (random weights: speed does not depend on
them) is measured too, which is how the shipped shape was chosen (docs/vae.md).
"""
from __future__ import annotations

import argparse
import os
import time

CANDIDATES: dict[str, tuple[dict, int]] = {
    "s8 t4 c32 w(32,64,128) @128": ({"latent_channels": 32, "spatial_stride": 8, "temporal_stride": 4, "widths": (32, 64, 128)}, 128),
    "s8 t4 c16 w(32,64,128) @128": ({"latent_channels": 16, "spatial_stride": 8, "temporal_stride": 4, "widths": (32, 64, 128)}, 128),
    "s8 t4 c32 w(24,48,96) @128": ({"latent_channels": 32, "spatial_stride": 8, "temporal_stride": 4, "widths": (24, 48, 96)}, 128),
    "s8 t8 c32 w(32,64,128) @128": ({"latent_channels": 32, "spatial_stride": 8, "temporal_stride": 8, "widths": (32, 64, 128)}, 128),
    "s8 t4 c32 w(24,48,96) decoder w(16,32,64) @128": ({"latent_channels": 32, "spatial_stride": 8, "temporal_stride": 4, "widths": (24, 48, 96),
                                                       "decoder_widths": (16, 32, 64)}, 128),
    "s16 t4 c32 w(16,32,64,128) @256": ({"latent_channels": 32, "spatial_stride": 16, "temporal_stride": 4, "widths": (16, 32, 64, 128)}, 256),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default=None, help="TinyVAE safetensors (default: the committed weights)")
    parser.add_argument("--resolution", type=int, default=None, help="frame size (default: the resolution the weights were trained at)")
    parser.add_argument("--chunk-latents", type=int, default=2, help="latents per streamed chunk")
    parser.add_argument("--frames", type=int, default=17, help="frames per encoded clip (stride·k + 1)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--candidates", action="store_true", help="also time the decode of the candidate shapes")


def _time_wall_and_cpu(fn, repeats: int) -> tuple[float, float]:
    """Median wall-clock and process-CPU seconds of `repeats` calls after one warm-up.

    On a machine shared with other jobs the wall time includes waiting for a core; the CPU time of
    a single-threaded call does not, so it is the figure that says what the code costs.
    """
    from common.bench import median

    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return median(wall), median(cpu)


def time_vae(vae, resolution: int, chunk_latents: int, frames: int, repeats: int) -> dict[str, float]:
    """Median decode-chunk and encode times (seconds, wall and CPU) of `vae` at `resolution`²."""
    import torch

    h = resolution // vae.spatial_stride
    c = vae.latent_channels
    chunk = torch.randn(1, c, chunk_latents, h, h)
    video = torch.rand(1, 3, frames, resolution, resolution) * 2 - 1
    with torch.inference_mode():
        dec = vae.stream_decoder(1)
        dec.decode_chunk(torch.randn(1, c, 1, h, h))
        decode_wall, decode_cpu = _time_wall_and_cpu(lambda: dec.decode_chunk(chunk), repeats)
        encode_wall, encode_cpu = _time_wall_and_cpu(lambda: vae.encode(video), max(3, repeats // 2))
    return {
        "decode_wall_s": decode_wall, "decode_cpu_s": decode_cpu, "chunk_frames": chunk_latents * vae.temporal_stride,
        "encode_wall_s": encode_wall, "encode_cpu_s": encode_cpu, "frames": frames,
    }


def main(args: argparse.Namespace) -> int:
    import torch

    from common.bench import machine_description, markdown_table, write_docs_section
    from model.vae import DEFAULT_WEIGHTS, TinyVAE, TinyVAEConfig, load_tiny_vae
    from safetensors import safe_open

    path = args.weights or DEFAULT_WEIGHTS
    vae = load_tiny_vae(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    resolution = args.resolution or int(meta.get("resolution", 128))
    if (args.frames - 1) % vae.temporal_stride:
        raise ValueError(f"--frames={args.frames} must be {vae.temporal_stride}·k + 1")
    threads = [int(t) for t in args.threads.split(",")]
    load = os.getloadavg()[0]
    cfg = vae.cfg
    refine = f" refine{cfg.refine_width}" if cfg.refine_width else ""
    narrow = f" decoder w{cfg.decoder_widths}" if cfg.decoder_widths is not None else ""
    name = f"TinyVAE s{cfg.spatial_stride} t{cfg.temporal_stride} c{cfg.latent_channels} w{cfg.widths}{narrow}{refine} @{resolution}"
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        r = time_vae(vae, resolution, args.chunk_latents, args.frames, args.repeats)
        rows.append(_row(name + " (shipped)", n, r))
        print(rows[-1], flush=True)
        if args.candidates:
            for cand, (kwargs, res) in CANDIDATES.items():
                r = time_vae(TinyVAE(TinyVAEConfig(**kwargs)).eval(), res, args.chunk_latents, args.frames, args.repeats)
                rows.append(_row(cand, n, r))
                print(rows[-1], flush=True)
    header = [
        "autoencoder", "threads", "frames / chunk", "decode ms / chunk (wall)", "decode ms / frame (wall)", "decode ms / frame (CPU)",
        "decode frames/s (wall)", "encode ms / clip (wall)", "encode frames/s (wall)", "encode frames/s (CPU)",
    ]
    table = markdown_table(header, rows)
    print(table)
    if args.write_docs:
        body = (
            f"`python run.py bench ae{' --candidates' if args.candidates else ''}` on {machine_description()} "
            f"(shared: load average {load:.1f} when it started); median of {args.repeats} runs (encode: {max(3, args.repeats // 2)}). "
            f"Decode is one streamed chunk of {args.chunk_latents} latents after the first; encode is a {args.frames}-frame "
            f"clip at {resolution}² for the shipped model. CPU columns are the process's CPU time (with 2 threads, "
            "the sum over both), which other jobs on the machine do not inflate. Candidate rows use random weights "
            "(speed does not depend on them).\n\n" + table
        )
        write_docs_section("ae", body)
    return 0


def _row(name: str, threads: int, r: dict[str, float]) -> list[object]:
    n = r["chunk_frames"]
    return [
        name, threads, n, f"{r['decode_wall_s'] * 1e3:.1f}", f"{r['decode_wall_s'] / n * 1e3:.2f}", f"{r['decode_cpu_s'] / n * 1e3:.2f}",
        f"{n / r['decode_wall_s']:.0f}", f"{r['encode_wall_s'] * 1e3:.0f}", f"{r['frames'] / r['encode_wall_s']:.0f}",
        f"{r['frames'] / r['encode_cpu_s']:.0f}",
    ]
