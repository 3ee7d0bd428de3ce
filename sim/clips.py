"""Clips of the procedural world: human-like random walks rendered with metric cameras.

A walk is made the way a person makes one: a random program of key and mouse inputs (walk, turn
while walking, look around, stop, strafe, back up, sprint) drives `controls.integrator.PoseIntegrator`
one frame at a time, so clips move exactly like the live app. Free space is kept by looking ahead:
when the point the camera heads for (0.8 s ahead at its current velocity) is blocked, the program
stops and turns away; if a step would still end inside an object, the step is undone and the camera
stands still for that frame. Every camera position of a clip is `scene.is_free(position, CLEARANCE_M)`.

Splits: evaluation scenes have seeds >= EVAL_SEED_BASE, training scenes seeds below it, and
`ClipDataset` refuses to mix them.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

from controls.integrator import ControlSettings, InputSnapshot, Key, PoseIntegrator
from sim import DEFAULT_FPS, DEFAULT_HEIGHT, DEFAULT_HFOV_DEG, DEFAULT_WIDTH, default_intrinsics
from sim.world import Scene, check_seed

EVAL_SEED_BASE = 1_000_000
CLEARANCE_M = 0.3
LOOKAHEAD_S = 0.8
TEMPORAL_STRIDE = 8
# retimed walks (sample_trajectory): at 4x a sprinting frame step is already ~1 m, and free space is only checked
# at the frames' positions, so faster steps could pass through thin objects
MAX_SPEED = 4.0
MAX_SIM_FPS = 1000.0  # the PoseIntegrator's limit on its frame rate, which bounds how slow a retimed walk can be

# behaviour -> (relative frequency, duration range in seconds)
BEHAVIOURS: dict[str, tuple[float, tuple[float, float]]] = {
    "walk": (0.34, (1.5, 5.0)),
    "turn_walk": (0.2, (0.6, 2.0)),
    "look": (0.14, (1.0, 3.0)),
    "stop": (0.07, (0.3, 1.2)),
    "strafe": (0.13, (0.6, 2.0)),
    "back": (0.05, (0.5, 1.2)),
    "sprint": (0.07, (0.8, 2.0)),
}


@dataclass(frozen=True)
class Clip:
    frames: np.ndarray  # [F, H, W, 3] uint8
    depth: np.ndarray  # [F, H, W] float32 z-depth in metres, inf for sky
    world_T_cams: np.ndarray  # [F, 4, 4] float64
    K: np.ndarray  # [3, 3] float64
    fps: float
    scene_seed: int
    theme: str
    clip_seed: int = 0


def check_n_frames(n_frames) -> int:
    if (isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or n_frames < 1
            or (n_frames - 1) % TEMPORAL_STRIDE):
        raise ValueError(f"n_frames must be {TEMPORAL_STRIDE}k+1 (1, 9, 17, 25, 33, ...), got {n_frames!r}")
    return int(n_frames)


class _Program:
    """A random input program: one InputSnapshot per frame, in absolute yaw/pitch."""

    def __init__(self, rng: np.random.Generator, fps: float, yaw_deg: float):
        self.rng, self.fps = rng, fps
        self.yaw, self.pitch = yaw_deg, 0.0
        self.seq = 0
        self.frames_left = 0
        self._start("walk")

    def _start(self, behaviour: str, duration_s: float | None = None) -> None:
        rng = self.rng
        lo, hi = BEHAVIOURS[behaviour][1]
        self.behaviour = behaviour
        self.frames_left = max(1, int(round((duration_s or rng.uniform(lo, hi)) * self.fps)))
        self.keys = Key(0)
        self.yaw_rate = rng.normal(0.0, 6.0)  # deg/s, a gentle drift by default
        self.pitch_target = float(np.clip(rng.normal(0.0, 4.0), -12.0, 12.0))
        if behaviour == "walk":
            self.keys = Key.FORWARD | (Key.SLOW if rng.random() < 0.15 else Key(0))
        elif behaviour == "turn_walk":
            self.keys = Key.FORWARD
            self.yaw_rate = rng.choice([-1.0, 1.0]) * rng.uniform(20.0, 60.0)
        elif behaviour == "look":
            self.yaw_rate = rng.choice([-1.0, 1.0]) * rng.uniform(25.0, 70.0)
            self.pitch_target = float(rng.uniform(-15.0, 15.0))
        elif behaviour == "stop":
            self.yaw_rate = 0.0
        elif behaviour == "strafe":
            self.keys = rng.choice([Key.LEFT, Key.RIGHT]) | (Key.FORWARD if rng.random() < 0.4 else Key(0))
        elif behaviour == "back":
            self.keys = Key.BACK
        elif behaviour == "sprint":
            self.keys = Key.FORWARD | Key.SPRINT

    def turn_away(self) -> None:
        """Stop and turn 90-180 degrees (a person meeting an obstacle), then carry on."""
        rng = self.rng
        self._start("look", duration_s=rng.uniform(0.8, 1.6))
        angle = rng.choice([-1.0, 1.0]) * rng.uniform(90.0, 180.0)
        self.yaw_rate = angle / (self.frames_left / self.fps)

    def next_snapshot(self) -> InputSnapshot:
        if self.frames_left <= 0:
            names = list(BEHAVIOURS)
            weights = np.array([BEHAVIOURS[n][0] for n in names])
            self._start(names[int(self.rng.choice(len(names), p=weights / weights.sum()))])
        self.frames_left -= 1
        self.yaw += self.yaw_rate / self.fps
        # Pitch eases towards the behaviour's target (about 0.5 s time constant).
        self.pitch += (self.pitch_target - self.pitch) * (1.0 - math.exp(-2.0 / self.fps))
        self.seq += 1
        return InputSnapshot(seq=self.seq, client_time_ms=1000.0 * self.seq / self.fps, keys=self.keys,
                             yaw_deg=self.yaw, pitch_deg=self.pitch, roll_deg=0.0)


def check_speed(speed) -> float:
    if isinstance(speed, bool) or not isinstance(speed, numbers.Real) or not 0 <= speed <= MAX_SPEED:
        raise ValueError(f"speed must be a number in [0, {MAX_SPEED}], got {speed!r}")
    return float(speed)


def sample_trajectory(scene: Scene, clip_seed: int, n_frames: int, fps: float = DEFAULT_FPS,
                      settings: ControlSettings = ControlSettings(), speed: float = 1.0) -> np.ndarray:
    """A free-space random walk in `scene`: world_T_cams [n_frames, 4, 4] (see the module docstring).

    `speed` retimes the walk: the same program of inputs runs with a frame interval of speed/fps
    seconds, so played at `fps` it moves `speed` times as fast (0.25: a slow stroll along the same
    path; 0: the camera stands at the walk's start for every frame).
    """
    check_seed(clip_seed)
    if not (isinstance(fps, numbers.Real) and not isinstance(fps, bool) and 0 < fps <= 240):
        raise ValueError(f"fps must be a number in (0, 240], got {fps!r}")
    speed = check_speed(speed)
    rng = np.random.default_rng([int(clip_seed), scene.seed, 0xC11B])
    start = scene.spawn_world_T_cam(int(rng.integers(0, 2**31)))
    if speed == 0.0:
        return np.repeat(start[None], n_frames, axis=0)
    # the integrator and the program step on the walk's own clock: `sim_fps` frames per simulated second
    sim_fps = fps / speed
    if sim_fps > MAX_SIM_FPS:
        raise ValueError(f"speed {speed:g} at {fps:g} fps needs {sim_fps:g} integrator steps per second; "
                         f"the slowest walk at this fps is speed {fps / MAX_SIM_FPS:g} (or 0, standing)")
    yaw0 = math.degrees(math.atan2(start[0, 2], start[2, 2]))
    integrator = PoseIntegrator(settings, start, sim_fps)
    program = _Program(rng, sim_fps, yaw0)
    poses = [start]
    while len(poses) < n_frames:
        velocity = integrator.velocity
        ahead = integrator.position + velocity * LOOKAHEAD_S
        if np.linalg.norm(velocity) > 0.05 and not scene.is_free(ahead, CLEARANCE_M + 0.2) and program.behaviour != "look":
            program.turn_away()
        before = integrator.state()
        pose = integrator.advance(program.next_snapshot(), 1)[0]
        if not scene.is_free(pose[:3, 3], CLEARANCE_M):
            # Undo the step and stand still: the pose keeps the previous position with zero velocity.
            integrator.restore(before)
            integrator.reset(integrator.world_T_cam)
            program.turn_away()
            pose = integrator.advance(None, 1)[0]
        poses.append(pose)
    return np.stack(poses)


def sample_clip(scene_seed: int, clip_seed: int, n_frames: int = 33, width: int = DEFAULT_WIDTH,
                height: int = DEFAULT_HEIGHT, fps: float = DEFAULT_FPS, hfov_deg: float = DEFAULT_HFOV_DEG,
                theme: str | None = None, scene: Scene | None = None, speed: float = 1.0) -> Clip:
    """Render one random-walk clip of `n_frames` (8k+1) frames in scene `scene_seed`.

    `speed` retimes the walk (`sample_trajectory`; 0 = a standing camera). `scene` may pass the already
    built `Scene.from_seed(scene_seed, theme)` to save rebuilding it.
    Same arguments -> the same clip, byte for byte.
    """
    check_seed(scene_seed)
    n = check_n_frames(n_frames)
    if scene is None:
        scene = Scene.from_seed(scene_seed, theme)
    elif scene.seed != scene_seed or (theme is not None and scene.theme.name != theme):
        raise ValueError(f"scene (seed {scene.seed}, theme {scene.theme.name}) is not scene {scene_seed} ({theme})")
    K = default_intrinsics(width, height, hfov_deg)
    poses = sample_trajectory(scene, clip_seed, n, fps, speed=speed)
    result = scene.render(poses, K, width, height)
    return Clip(frames=result.rgb, depth=result.depth, world_T_cams=poses, K=K, fps=float(fps),
                scene_seed=int(scene_seed), theme=scene.theme.name, clip_seed=int(clip_seed))


def check_split_seed(split: str, scene_seed: int) -> None:
    """ValueError unless `scene_seed` belongs to `split` (eval: >= EVAL_SEED_BASE, train: below)."""
    check_seed(scene_seed)
    if split == "train" and scene_seed >= EVAL_SEED_BASE:
        raise ValueError(f"scene seed {scene_seed} is an evaluation seed (>= {EVAL_SEED_BASE}), not a training one")
    if split == "eval" and scene_seed < EVAL_SEED_BASE:
        raise ValueError(f"scene seed {scene_seed} is a training seed (< {EVAL_SEED_BASE}), not an evaluation one")
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")


class ClipDataset(torch.utils.data.IterableDataset):
    """Clips rendered on the fly, as dicts of tensors (collate into batches with a DataLoader).

    Each item: frames uint8 [F, H, W, 3], depth float32 [F, H, W], world_T_cams float64 [F, 4, 4],
    K float64 [3, 3], scene_seed, clip_seed (ints), theme (str).

    split="train": an endless stream; scenes drawn at random from the training seeds, each giving
    `clips_per_scene` clips. split="eval": the fixed scenes `scene_seed("eval", i)` for i < n_scenes,
    `clips_per_scene` each, in order. With DataLoader workers, each worker renders a disjoint share
    (its own random stream for train, every num_workers-th clip for eval).
    """

    def __init__(self, split: str = "train", n_frames: int = 33, width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT,
                 fps: float = DEFAULT_FPS, hfov_deg: float = DEFAULT_HFOV_DEG, clips_per_scene: int = 4,
                 n_scenes: int | None = None, seed: int = 0, theme: str | None = None):
        super().__init__()
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        if split == "eval" and n_scenes is None:
            raise ValueError("the eval split needs n_scenes (it is a fixed, finite set)")
        if n_scenes is not None and (not isinstance(n_scenes, int) or n_scenes < 1):
            raise ValueError(f"n_scenes must be a positive int or None, got {n_scenes!r}")
        if not isinstance(clips_per_scene, int) or clips_per_scene < 1:
            raise ValueError(f"clips_per_scene must be a positive int, got {clips_per_scene!r}")
        check_seed(seed)
        default_intrinsics(width, height, hfov_deg)  # validates the camera now rather than in a worker
        self.split, self.n_frames, self.width, self.height = split, check_n_frames(n_frames), width, height
        self.fps, self.hfov_deg, self.clips_per_scene = fps, hfov_deg, clips_per_scene
        self.n_scenes, self.seed, self.theme = n_scenes, seed, theme

    @staticmethod
    def scene_seed(split: str, index: int) -> int:
        """The scene seed of scene `index` of a split: train -> index mod EVAL_SEED_BASE, eval -> EVAL_SEED_BASE + index."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise ValueError(f"scene index must be an int >= 0, got {index!r}")
        seed = int(index) % EVAL_SEED_BASE if split == "train" else EVAL_SEED_BASE + int(index)
        check_split_seed(split, seed)
        return seed

    def _scene_seeds(self, worker: int, workers: int):
        if self.split == "eval" or self.n_scenes is not None:
            for index in range(worker, self.n_scenes, workers):
                yield self.scene_seed(self.split, index)
        else:
            rng = np.random.default_rng([self.seed, worker, 0xDA7A])
            while True:
                yield int(rng.integers(0, EVAL_SEED_BASE))

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for scene_seed in self._scene_seeds(worker, workers):
            check_split_seed(self.split, scene_seed)
            scene = Scene.from_seed(scene_seed, self.theme)
            for k in range(self.clips_per_scene):
                clip = sample_clip(scene_seed, self.seed * self.clips_per_scene + k, self.n_frames, self.width, self.height,
                                   self.fps, self.hfov_deg, self.theme, scene=scene)
                yield {
                    "frames": torch.from_numpy(clip.frames),
                    "depth": torch.from_numpy(clip.depth),
                    "world_T_cams": torch.from_numpy(clip.world_T_cams),
                    "K": torch.from_numpy(clip.K),
                    "scene_seed": clip.scene_seed,
                    "clip_seed": clip.clip_seed,
                    "theme": clip.theme,
                }
