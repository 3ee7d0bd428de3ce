"""Render a ground-truth video of the procedural world along a camera trajectory.

    python run.py render --scene 7 --trajectory orbit --out gt.mp4

The trajectory is a preset name, an action string or a trajectory file (anything
`controls.trajectory.load` takes). Presets and action strings are relative to their first frame, so
they start at the scene's spawn pose: the first spawn from which every camera position of the path
is free. A file's poses are used as world poses. Frames are rendered at --width x --height with the
default camera (`sim.default_intrinsics`) unless the file brings its own intrinsics.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from sim import DEFAULT_FPS, DEFAULT_HEIGHT, DEFAULT_HFOV_DEG, DEFAULT_WIDTH


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scene", type=int, default=0, help="scene seed (>= 0)")
    parser.add_argument("--theme", default=None, help="meadow, desert, snow, dusk, autumn (default: the seed picks)")
    parser.add_argument("--trajectory", default="orbit", help="preset name, action string or trajectory file")
    parser.add_argument("--out", type=Path, required=True, help="output video (.mp4)")
    parser.add_argument("--depth-out", type=Path, default=None, help="also write the z-depth in metres as .npy [F, H, W]")
    parser.add_argument("--png-out", type=Path, default=None, help="also write the first frame as a PNG still")
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    parser.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    parser.add_argument("--seconds", type=float, default=None, help="length of a preset (default: 5 s, snapped to 8k+1 frames)")
    parser.add_argument("--fps", type=float, default=DEFAULT_FPS)
    parser.add_argument("--hfov", type=float, default=DEFAULT_HFOV_DEG, help="horizontal field of view in degrees")


def preset_frames(seconds: float, fps: float) -> int:
    """Frames of a preset lasting `seconds`, snapped to the nearest 8k+1 (at least 9)."""
    raw = seconds * fps
    return max(1, round((raw - 1) / 8)) * 8 + 1


def world_trajectory(scene, source: str, width: int, height: int, fps: float, hfov_deg: float, seconds: float | None):
    """(world_T_cams [F, 4, 4], K [3, 3]) for a trajectory source placed in `scene`."""
    import numpy as np

    from controls.camera import intrinsics_matrix
    from controls.trajectory import PRESETS, load

    is_preset = source in PRESETS
    if seconds is not None and not is_preset:
        raise ValueError(f"--seconds applies to presets only, not to {source!r}")
    if seconds is not None and not (0 < seconds <= 3600):
        raise ValueError(f"--seconds must be in (0, 3600], got {seconds}")
    n_frames = preset_frames(5.0 if seconds is None else seconds, fps) if is_preset else None
    is_file = Path(source).suffix.lower() in (".txt", ".npz", ".json") or "/" in source
    if is_file:
        trajectory = load(source, width=width, height=height, fps=fps)
        return trajectory.world_T_cams, intrinsics_matrix(trajectory.intrinsics[0])
    trajectory = load(source, width=width, height=height, fps=fps, n_frames=n_frames, hfov_deg=hfov_deg)
    poses = scene.place_trajectory(np.asarray(trajectory.world_T_cams))
    return poses, intrinsics_matrix(trajectory.intrinsics[0])


def write_video(path: Path, frames, fps: float) -> str:
    """Write uint8 [F, H, W, 3] frames as an mp4 with libx264 (or mpeg4 where libx264 is missing); returns the codec."""
    import av

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=round(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p" if frames.shape[1] % 2 == 0 and frames.shape[2] % 2 == 0 else "yuv444p"
        if codec == "libx264":
            stream.options = {"crf": "16", "preset": "medium"}
        else:
            stream.bit_rate = 4_000_000
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return codec


def main(args: argparse.Namespace) -> int:
    import numpy as np

    from sim.world import Scene

    if args.out.suffix.lower() != ".mp4":
        raise SystemExit(f"--out must end in .mp4, got {args.out}")
    try:
        scene = Scene.from_seed(args.scene, args.theme)
        poses, K = world_trajectory(scene, args.trajectory, args.width, args.height, args.fps, args.hfov, args.seconds)
        result = scene.render(poses, K, args.width, args.height)
    except ValueError as error:
        raise SystemExit(f"run.py render: {error}") from None
    codec = write_video(args.out, result.rgb, args.fps)
    if args.depth_out is not None:
        args.depth_out.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.depth_out, result.depth)
    if args.png_out is not None:
        from PIL import Image

        args.png_out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(result.rgb[0]).save(args.png_out)
    print(f"wrote {args.out} ({len(poses)} frames, {args.width}x{args.height}, {codec}, scene {args.scene} "
          f"'{scene.theme.name}')" + "".join(f", {p}" for p in (args.depth_out, args.png_out) if p is not None))
    return 0
