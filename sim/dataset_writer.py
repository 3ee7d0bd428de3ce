"""A fixed evaluation set of sim clips on disk, written in parallel, and its reader.

    python -m sim.dataset_writer --out data/sim_eval --scenes 32 --clips-per-scene 2 --frames 33

Layout of the folder:
  index.json           {"version", "width", "height", "fps", "hfov_deg", "n_frames", "codec", "clips": [...]}
  clip_00000.mp4       the frames (lossless RGB with libx264rgb where available, else near-lossless)
  clip_00000.npz       world_T_cams [F, 4, 4] float64, K [3, 3], fps, scene_seed, clip_seed, theme,
                       and depth [F, H, W] float16 metres (inf for sky) when written with --depth

Scenes are the evaluation split (`ClipDataset.scene_seed("eval", i)`, seeds >= EVAL_SEED_BASE), so a
set never overlaps training data. Clip i is scene i // clips_per_scene, clip seed i % clips_per_scene.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim import DEFAULT_FPS, DEFAULT_HEIGHT, DEFAULT_HFOV_DEG, DEFAULT_WIDTH
from sim.clips import Clip, ClipDataset, check_n_frames, sample_clip

FORMAT_VERSION = 1


@dataclass(frozen=True)
class EvalSetSpec:
    n_scenes: int
    clips_per_scene: int = 1
    n_frames: int = 33
    width: int = DEFAULT_WIDTH
    height: int = DEFAULT_HEIGHT
    fps: float = DEFAULT_FPS
    hfov_deg: float = DEFAULT_HFOV_DEG
    depth: bool = False

    def __post_init__(self):
        for name in ("n_scenes", "clips_per_scene", "width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        check_n_frames(self.n_frames)
        if not 0 < self.fps <= 240 or not 0 < self.hfov_deg < 180:
            raise ValueError(f"fps={self.fps} must be in (0, 240] and hfov_deg={self.hfov_deg} in (0, 180)")


def _video_codec() -> str:
    """libx264rgb (lossless RGB), else libx264 (lossless YUV 4:4:4, rounding only), else mpeg4."""
    import av

    return next(c for c in ("libx264rgb", "libx264", "mpeg4") if c in av.codecs_available or c == "mpeg4")


def write_frames(path: Path, frames: np.ndarray, fps: float, codec: str) -> None:
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=round(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        if codec.startswith("libx264"):
            stream.pix_fmt = "rgb24" if codec == "libx264rgb" else "yuv444p"
            stream.options = {"qp": "0", "preset": "veryfast"}
        else:
            stream.pix_fmt = "yuv420p"
            stream.bit_rate = 50_000_000
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_frames(path: Path) -> np.ndarray:
    """uint8 [F, H, W, 3] frames of a video file."""
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _write_scene(job: tuple[Path, EvalSetSpec, int, str]) -> list[dict]:
    """Render and write the clips of evaluation scene `scene_index` (the scene is built once)."""
    from sim.world import Scene

    folder, spec, scene_index, codec = job
    scene_seed = ClipDataset.scene_seed("eval", scene_index)
    scene = Scene.from_seed(scene_seed)
    entries = []
    for clip_seed in range(spec.clips_per_scene):
        index = scene_index * spec.clips_per_scene + clip_seed
        clip = sample_clip(scene_seed, clip_seed, spec.n_frames, spec.width, spec.height, spec.fps, spec.hfov_deg, scene=scene)
        stem = f"clip_{index:05d}"
        write_frames(folder / f"{stem}.mp4", clip.frames, spec.fps, codec)
        extra = {"depth": clip.depth.astype(np.float16)} if spec.depth else {}
        np.savez_compressed(folder / f"{stem}.npz", world_T_cams=clip.world_T_cams, K=clip.K, fps=clip.fps,
                            scene_seed=clip.scene_seed, clip_seed=clip.clip_seed, theme=clip.theme, **extra)
        entries.append({"index": index, "stem": stem, "scene_seed": clip.scene_seed, "clip_seed": clip.clip_seed,
                        "theme": clip.theme})
    return entries


def write_eval_set(folder: str | Path, spec: EvalSetSpec, workers: int = 2, progress: bool = True) -> Path:
    """Render the evaluation set `spec` into `folder` with `workers` processes; returns index.json's path."""
    from tqdm import tqdm

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    codec = _video_codec()
    jobs = [(folder, spec, i, codec) for i in range(spec.n_scenes)]
    bar = tqdm(total=len(jobs), desc="sim eval set (scenes)", disable=not progress)
    results = []
    if workers == 1:
        for job in jobs:
            results += _write_scene(job)
            bar.update()
    else:
        with multiprocessing.get_context().Pool(workers) as pool:
            for entries in pool.imap_unordered(_write_scene, jobs):
                results += entries
                bar.update()
    bar.close()
    index = {
        "version": FORMAT_VERSION, "width": spec.width, "height": spec.height, "fps": spec.fps, "hfov_deg": spec.hfov_deg,
        "n_frames": spec.n_frames, "codec": codec, "depth": spec.depth,
        "clips": sorted(results, key=lambda r: r["index"]),
    }
    path = folder / "index.json"
    path.write_text(json.dumps(index, indent=1))
    return path


class EvalSet:
    """Reader of a folder written by `write_eval_set`: len() and [i] -> Clip."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / "index.json"
        if not path.is_file():
            raise ValueError(f"{self.folder} is not a sim evaluation set (no index.json)")
        self.index = json.loads(path.read_text())
        if self.index.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format version {self.index.get('version')!r}, this reader knows {FORMAT_VERSION}")
        self.clips = self.index["clips"]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> Clip:
        if not -len(self) <= i < len(self):
            raise IndexError(f"clip {i} out of range for a set of {len(self)}")
        entry = self.clips[i]
        frames = read_frames(self.folder / f"{entry['stem']}.mp4")
        with np.load(self.folder / f"{entry['stem']}.npz") as data:
            poses, K = data["world_T_cams"], data["K"]
            depth = data["depth"].astype(np.float32) if "depth" in data else None
            meta = (float(data["fps"]), int(data["scene_seed"]), str(data["theme"]), int(data["clip_seed"]))
        if len(frames) != len(poses):
            raise ValueError(f"{entry['stem']}: {len(frames)} frames in the video but {len(poses)} poses")
        return Clip(frames=frames, depth=depth, world_T_cams=poses, K=K, fps=meta[0], scene_seed=meta[1], theme=meta[2],
                    clip_seed=meta[3])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scenes", type=int, default=32)
    parser.add_argument("--clips-per-scene", type=int, default=1)
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    parser.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    parser.add_argument("--fps", type=float, default=DEFAULT_FPS)
    parser.add_argument("--hfov", type=float, default=DEFAULT_HFOV_DEG)
    parser.add_argument("--depth", action="store_true", help="store z-depth (float16) with each clip")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    spec = EvalSetSpec(args.scenes, args.clips_per_scene, args.frames, args.width, args.height, args.fps, args.hfov, args.depth)
    print(f"wrote {write_eval_set(args.out, spec, args.workers)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
