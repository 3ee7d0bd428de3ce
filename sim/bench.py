"""Benchmark of the procedural renderer: frames per second on one core.

    python run.py bench sim [--size 128] [--frames 33] [--repeats 5] [--write-docs]

For each theme, one scene renders the poses of a random-walk clip (`sim.clips.sample_trajectory`) in
one call. Figures are medians over repeats of wall-clock time and of the process's CPU time; the
renderer is single-threaded numpy, so CPU time is what one free core would take even when other
processes share the machine (the load average is printed alongside).
"""
from __future__ import annotations

import argparse
import os
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=128, help="square frame side in pixels")
    parser.add_argument("--frames", type=int, default=33, help="frames per render call (8k+1)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7, help="scene seed used for every theme")


def _timed(fn, repeats: int) -> tuple[list[float], list[float]]:
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def main(args: argparse.Namespace) -> int:
    import torch

    from common.bench import machine_description, markdown_table, median, write_docs_section
    from sim import default_intrinsics
    from sim.clips import check_n_frames, sample_trajectory
    from sim.themes import THEMES
    from sim.world import Scene

    torch.set_num_threads(1)
    n = check_n_frames(args.frames)
    size = args.size
    K = default_intrinsics(size, size)
    rows, all_cpu_fps = [], []
    for theme in sorted(THEMES):
        build_wall, build_cpu = _timed(lambda: Scene.from_seed(args.seed, theme), max(1, args.repeats // 2))
        scene = Scene.from_seed(args.seed, theme)
        poses = sample_trajectory(scene, 0, n)
        wall, cpu = _timed(lambda: scene.render(poses, K, size, size), args.repeats)
        fps_wall, fps_cpu = n / median(wall), n / median(cpu)
        all_cpu_fps.append(fps_cpu)
        rows.append([theme, f"{fps_wall:.0f}", f"{fps_cpu:.0f}", f"{median(build_wall):.2f}", f"{median(build_cpu):.2f}"])
        print(f"{theme:>7}: {fps_wall:6.0f} fps wall, {fps_cpu:6.0f} fps CPU; scene build {median(build_wall):.2f} s wall, "
              f"{median(build_cpu):.2f} s CPU")
    load = os.getloadavg()[0]
    worst = min(all_cpu_fps)
    print(f"slowest theme: {worst:.0f} fps of CPU time at {size}x{size} (target >= 200); load average {load:.1f}")
    if args.write_docs:
        body = (
            f"`python run.py bench sim --size {size} --frames {n} --repeats {args.repeats}`: one scene per theme "
            f"(seed {args.seed}) renders a {n}-frame random walk at {size}x{size} in one call, single-threaded numpy. "
            f"Medians of {args.repeats} runs; fps from wall-clock time and from the process's CPU time (the machine was "
            f"shared: load average {load:.1f}). Machine: {machine_description()}.\n\n"
            + markdown_table(["theme", "fps (wall)", "fps (CPU time)", "scene build s (wall)", "scene build s (CPU)"], rows)
        )
        write_docs_section("sim", body)
    return 0
