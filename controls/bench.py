"""Benchmark of the per-chunk control path: pose integration and camera conditioning at 720p.

`python run.py bench controls` (once registered in app/bench_cmd.py) prints medians of several runs.
"""
from __future__ import annotations

import argparse

import numpy as np

from common.bench import machine_description, markdown_table, median, time_call, write_docs_section
from controls.camera import ChunkCameraConditioner, intrinsics_from_fov, intrinsics_vec4, prepare_camera
from controls.integrator import InputSnapshot, Key, PoseIntegrator
from controls.trajectory import preset

SECTION = "controls: pose integration and camera conditioning"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per figure (median reported)")
    parser.add_argument("--height", type=int, default=704)
    parser.add_argument("--width", type=int, default=1280)


def _stream_chunks(poses: np.ndarray, K: np.ndarray, size: tuple[int, int], n_latents: int) -> None:
    cond = ChunkCameraConditioner(poses[0], K, size, (8, 32, 32))
    cond.add_frames(poses[:25])
    cond.latent_chunk(0, 4)
    for start in range(4, n_latents, 3):
        cond.add_frames(poses[8 * (start - 1) + 1 : 8 * (start + 2) + 1])
        cond.latent_chunk(start, start + 3)


def main(args: argparse.Namespace) -> int:
    size = (args.height, args.width)
    K = intrinsics_vec4(intrinsics_from_fov(args.width, args.height, 60.0))
    rows = []

    def integrate():
        integ = PoseIntegrator()
        integ.advance(InputSnapshot(seq=1, client_time_ms=0.0, keys=Key.FORWARD | Key.RIGHT, yaw_deg=20.0), 24)

    t = time_call(integrate, repeats=args.repeats)
    rows.append(["PoseIntegrator.advance, 24 frames (one 3-latent chunk)", f"{median(t) * 1e3:.2f} ms"])

    for n_frames in (161, 961):
        traj = preset("figure_eight", n_frames=n_frames, width=args.width, height=args.height)
        t = time_call(lambda: prepare_camera(traj.world_T_cams, traj.intrinsics, size), repeats=args.repeats)
        rows.append([f"prepare_camera, {n_frames} frames -> {(n_frames - 1) // 8 + 1} latents", f"{median(t) * 1e3:.1f} ms"])

    traj = preset("figure_eight", n_frames=961, width=args.width, height=args.height)
    t = time_call(lambda: _stream_chunks(traj.world_T_cams, K, size, 121), repeats=args.repeats)
    per_chunk = median(t) / (1 + (121 - 4) // 3)
    rows.append(["ChunkCameraConditioner, per 3-latent chunk (121 latents streamed)", f"{per_chunk * 1e3:.2f} ms"])

    body = (
        f"Machine: {machine_description()}. {args.width}x{args.height}, VAE stride (8, 32, 32); "
        f"median of {args.repeats} runs.\n\n" + markdown_table(["what", "time"], rows)
    )
    print(body)
    if getattr(args, "write_docs", False):
        write_docs_section(SECTION, body)
    return 0
