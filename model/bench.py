"""`python run.py bench model`: our transformer against diffusers' reference, and streaming per-chunk time.

Measured in one run, on the CPU, with the same config, random weights and inputs for both models:

1. bidirectional forward of a clip: ours vs diffusers' `SanaWMTransformer3DModel` (median of
   --repeats runs, interleaved so machine load falls on both alike). diffusers casts fp32 softmax
   attention to bf16 for FlashAttention; here that cast is disabled so both run fp32 (as in the
   parity test; bf16 SDPA on the CPU would only slow the reference down further).
2. streaming: one denoise call (`stream_forward`) + one commit (`stream_commit`) per chunk, timed
   at chunk 5 and at chunk 300 (median of --repeats runs against the same state; both calls leave
   the state unchanged, so repeats are identical work). Flat means the ratio stays near 1.
"""
from __future__ import annotations

import argparse
import contextlib
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="tiny", help="ModelConfig preset (default: tiny)")
    parser.add_argument("--frames", type=int, default=9, help="latent frames of the bidirectional clip")
    parser.add_argument("--height", type=int, default=16, help="latent height")
    parser.add_argument("--width", type=int, default=16, help="latent width")
    parser.add_argument("--chunk-frames", type=int, default=3, help="latent frames per streamed chunk")
    parser.add_argument("--late-chunk", type=int, default=300, help="the late chunk whose time is compared with chunk 5")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per figure (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")


@contextlib.contextmanager
def _fp32_reference_sdpa():
    import torch

    original = torch.Tensor.bfloat16
    torch.Tensor.bfloat16 = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.bfloat16 = original


def _inputs(config, frames: int, height: int, width: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, config.in_channels, frames, height, width, generator=g)
    t = torch.rand(1, 1, frames, generator=g) * 1000
    text = torch.randn(1, 8, config.caption_channels, generator=g)
    mask = torch.ones(1, 8, dtype=torch.long)
    pose = torch.eye(4).flatten().repeat(1, frames, 1)
    pose[..., 11] = torch.arange(frames, dtype=torch.float32) * 0.1  # walk forward along z
    intrinsics = torch.tensor([width * 0.8, width * 0.8, (width - 1) / 2, (height - 1) / 2]).repeat(1, frames, 1)
    cam = torch.cat((pose, intrinsics), dim=-1)
    plucker = torch.randn(1, config.plucker_channels, frames, height, width, generator=g)
    return x, t, text, mask, cam, plucker


def main(args: argparse.Namespace) -> int:
    import time

    import torch
    from diffusers import SanaWMTransformer3DModel

    from common.bench import machine_description, markdown_table, median, write_docs_section
    from model import ModelConfig, WorldModel

    if args.threads:
        torch.set_num_threads(args.threads)
    config = ModelConfig.preset(args.preset)
    torch.manual_seed(0)
    ours = WorldModel(config).eval()
    reference = SanaWMTransformer3DModel(**config.to_official_dict()).eval()
    state = {k.replace("t_embedder.mlp.0.", "t_embedder.linear_1.").replace("t_embedder.mlp.2.", "t_embedder.linear_2."): v
             for k, v in ours.state_dict().items() if k != "y_embedder.y_embedding"}
    reference.load_state_dict(state, strict=True)
    x, t, text, mask, cam, plucker = _inputs(config, args.frames, args.height, args.width, seed=0)

    def run_ours():
        return ours(x, t, text, mask, cam, plucker)

    def run_reference():
        with _fp32_reference_sdpa():
            return reference(x, t, text, encoder_attention_mask=mask, camera_conditions=cam, chunk_plucker=plucker).sample

    with torch.inference_mode():
        diff = float((run_ours() - run_reference()).abs().max())
        ours_times, ref_times = [], []
        for _ in range(args.repeats):
            for fn, times in ((run_ours, ours_times), (run_reference, ref_times)):
                begin = time.perf_counter()
                fn()
                times.append(time.perf_counter() - begin)

        # streaming: commit chunks up to the late one, timing chunk 5 and the late chunk on the way
        stream = ours.init_stream_state(1, (args.height, args.width), kv_window_chunks=2, sink=True)
        chunk_times: dict[int, float] = {}
        for chunk in range(args.late_chunk + 1):
            frames = args.chunk_frames + (1 if chunk == 0 else 0)
            cx, ct, ctext, cmask, ccam, cpl = _inputs(config, frames, args.height, args.width, seed=chunk)
            ccam[..., 11] += stream.frame_index * 0.1
            if chunk in (5, args.late_chunk):
                times = []
                for _ in range(args.repeats):
                    begin = time.perf_counter()
                    ours.stream_forward(cx, ct, ctext, cmask, ccam, cpl, stream)
                    ours.stream_commit(cx, ctext, cmask, ccam, cpl, stream)
                    times.append(time.perf_counter() - begin)
                chunk_times[chunk] = median(times)
            stream = ours.stream_commit(cx, ctext, cmask, ccam, cpl, stream)

    ours_ms, ref_ms = median(ours_times) * 1e3, median(ref_times) * 1e3
    early, late = chunk_times[5] * 1e3, chunk_times[args.late_chunk] * 1e3
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    shape = f"B=1, T={args.frames}, latent {args.height}×{args.width}"
    table1 = markdown_table(
        ["implementation", f"bidirectional forward, {shape} (ms, median of {args.repeats})"],
        [["diffusers SanaWMTransformer3DModel (fp32)", f"{ref_ms:.1f}"], ["roam WorldModel", f"{ours_ms:.1f}"],
         ["speed-up", f"{ref_ms / ours_ms:.2f}×"]],
    )
    table2 = markdown_table(
        ["streaming chunk", f"stream_forward + stream_commit, {args.chunk_frames} frames (ms, median of {args.repeats})"],
        [["chunk 5", f"{early:.1f}"], [f"chunk {args.late_chunk}", f"{late:.1f}"],
         [f"ratio {args.late_chunk} / 5", f"{late / early:.3f}"]],
    )
    body = "\n\n".join([
        f"`python run.py bench model` — preset `{args.preset}`, random weights, torch threads "
        f"{torch.get_num_threads()}, machine: {machine_description()}, 1-min load average at the end {load:.1f}. "
        f"Max |ours − diffusers| on this input: {diff:.2e}.",
        table1,
        table2,
        "KV window 2 chunks + sink; the state size is constant once the window is full, so the late chunk costs "
        "the same as an early one.",
    ])
    print(body)
    if args.write_docs:
        write_docs_section("model", body)
    return 0
