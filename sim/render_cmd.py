"""Render a ground-truth video of the procedural world along a camera trajectory.

    python run.py render --scene 7 --trajectory orbit --out gt.mp4

The trajectory is a preset name, an action string or a trajectory file (anything
`controls.trajectory.load` takes). Presets and action strings are relative to their first frame, so
they start at the scene's spawn pose: the first spawn from which every camera position of the path
is free. A file's poses are used as world poses (a path recorded in the sim replays where it was
recorded); `--placement spawn` re-anchors them at the spawn like a preset. Presets and action
strings are rendered at --width x --height with a --hfov pinhole (by default the shared camera,
`sim.default_intrinsics`); a file brings its own size and intrinsics.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from sim import DEFAULT_FPS, DEFAULT_HEIGHT, DEFAULT_HFOV_DEG, DEFAULT_WIDTH


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from controls.trajectory import trajectory_help

    parser.epilog = trajectory_help()
    parser.add_argument("--scene", type=int, default=0, help="scene seed (>= 0)")
    parser.add_argument("--theme", default=None, help="meadow, desert, snow, dusk, autumn (default: the seed picks)")
    parser.add_argument("--trajectory", default="orbit", help="preset name, action string or trajectory file")
    parser.add_argument("--out", type=Path, required=True, help="output video (.mp4)")
    parser.add_argument("--depth-out", type=Path, default=None, help="also write the z-depth in metres as .npy [F, H, W]")
    parser.add_argument("--png-out", type=Path, default=None, help="also write the first frame as a PNG still")
    parser.add_argument("--width", type=int, default=None, help=f"default: the file's size, else {DEFAULT_WIDTH}")
    parser.add_argument("--height", type=int, default=None, help=f"default: the file's size, else {DEFAULT_HEIGHT}")
    parser.add_argument("--seconds", type=float, default=None, help="length of a preset (default: 5 s, snapped to 8k+1 frames)")
    parser.add_argument("--fps", type=float, default=DEFAULT_FPS)
    parser.add_argument("--hfov", type=float, default=DEFAULT_HFOV_DEG, help="horizontal field of view in degrees")
    parser.add_argument("--supersample", type=int, default=1, choices=(1, 3, 5),
                        help="anti-alias with s x s samples per pixel (s^2 times slower)")
    parser.add_argument("--placement", choices=("auto", "spawn", "world"), default="auto",
                        help="spawn: re-anchor the path's first frame at the scene's spawn pose; world: use the poses "
                             "as they are; auto: spawn for presets and action strings, world for files")


def preset_frames(seconds: float, fps: float) -> int:
    """Frames of a preset lasting `seconds`, snapped to the nearest 8k+1 (at least 9)."""
    raw = seconds * fps
    return max(1, round((raw - 1) / 8)) * 8 + 1


def load_trajectory(source: str, width: int | None, height: int | None, fps: float, hfov_deg: float,
                    seconds: float | None):
    """A trajectory source -> (Trajectory, relative). `relative` paths (presets, action strings) start at
    identity and still need placing in a scene; a file's poses are world poses. width/height None take
    the file's own size, or the default camera's for presets and action strings."""
    from controls.trajectory import PRESETS, load

    is_preset = source in PRESETS
    if seconds is not None and not is_preset:
        raise ValueError(f"--seconds applies to presets only, not to {source!r}")
    if seconds is not None and not (0 < seconds <= 3600):
        raise ValueError(f"--seconds must be in (0, 3600], got {seconds}")
    if Path(source).suffix.lower() in (".txt", ".npz", ".json") or "/" in source:
        return load(source, width=width, height=height, fps=fps), False
    n_frames = preset_frames(5.0 if seconds is None else seconds, fps) if is_preset else None
    trajectory = load(source, width=width or DEFAULT_WIDTH, height=height or DEFAULT_HEIGHT, fps=fps, n_frames=n_frames,
                      hfov_deg=hfov_deg)
    return trajectory, True


def main(args: argparse.Namespace) -> int:
    import numpy as np

    from common.video import write_mp4
    from controls.camera import intrinsics_matrix
    from sim.world import RenderResult, Scene

    if args.out.suffix.lower() != ".mp4":
        raise SystemExit(f"--out must end in .mp4, got {args.out}")
    try:
        trajectory, relative = load_trajectory(args.trajectory, args.width, args.height, args.fps, args.hfov, args.seconds)
        scene = Scene.from_seed(args.scene, args.theme)
    except ValueError as error:
        raise SystemExit(f"run.py render: {error}") from None
    width, height = trajectory.width, trajectory.height
    poses = np.asarray(trajectory.world_T_cams)
    intrinsics = np.asarray(trajectory.intrinsics)
    placed = args.placement == "spawn" or (args.placement == "auto" and relative)
    try:
        if placed:
            poses = scene.place_trajectory(np.linalg.inv(poses[0]) @ poses)
        if (intrinsics == intrinsics[0]).all():
            result = scene.render(poses, intrinsics_matrix(intrinsics[0]), width, height, args.supersample)
        else:
            # A path that zooms: one render call per frame with that frame's intrinsics.
            frames = [scene.render(p, intrinsics_matrix(k), width, height, args.supersample) for p, k in zip(poses, intrinsics)]
            result = RenderResult(rgb=np.concatenate([f.rgb for f in frames]), depth=np.concatenate([f.depth for f in frames]))
    except ValueError as error:
        hint = "" if placed else " (to start the path at the scene's spawn pose instead, pass --placement spawn)"
        raise SystemExit(f"run.py render: {error}{hint}") from None
    codec = write_mp4(args.out, result.rgb, trajectory.fps)
    if args.depth_out is not None:
        args.depth_out.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.depth_out, result.depth)
    if args.png_out is not None:
        from PIL import Image

        args.png_out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(result.rgb[0]).save(args.png_out)
    print(f"wrote {args.out} ({len(poses)} frames, {width}x{height}, {codec}, scene {args.scene} "
          f"'{scene.theme.name}')" + "".join(f", {p}" for p in (args.depth_out, args.png_out) if p is not None))
    return 0
