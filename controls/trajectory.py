"""Camera trajectories: presets, the SANA-WM action DSL, and loading/saving files.

A `Trajectory` is raw-frame poses (world_T_cam, OpenCV axes, y-down world, metres) with per-frame
intrinsics in pixels of a width x height image, at `fps`. `load` accepts a file (see
`controls.formats`), a preset name, or an action string, so every command line can take any of them.

The action DSL is the official one (`diffusers.pipelines.sana_wm.cam_utils.action_string_to_c2w`):
comma-separated `<keys>-<frames>` segments, keys from `wasdijkl` or `none`; w/s move forward/back and
a/d strafe left/right on the world horizontal plane, i/k pitch up/down, j/l yaw left/right. Defaults
(0.05 per frame, 1.2 deg per frame, pitch limit 85 deg) are that function's; the output has one pose
more than the frames listed (the start pose). Note the official streaming demo uses 0.025 per frame,
0.6 deg per frame and a 60 deg clamp (`DEMO_*` below) and, in its first release, swapped a/d with j/l.
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from controls import formats
from controls.camera import (
    intrinsics_from_fov,
    intrinsics_after_resize_crop,
    intrinsics_vec4,
    look_at,
    make_pose,
    prepare_camera,
    rotation_from_ypr,
    rotation_pitch,
    rotation_yaw,
)

DEFAULT_TRANSLATION_SPEED = 0.05
DEFAULT_ROTATION_SPEED_DEG = 1.2
DEFAULT_PITCH_LIMIT_DEG = 85.0
DEMO_TRANSLATION_SPEED = 0.025
DEMO_ROTATION_SPEED_DEG = 0.6
DEMO_PITCH_LIMIT_DEG = 60.0
ACTION_KEYS = frozenset("wasdijkl")
MAX_ACTION_FRAMES = 100_000
MAX_TRANSLATION_M = 1e6
MAX_IMAGE_SIDE = 16384

DEFAULT_WIDTH, DEFAULT_HEIGHT, DEFAULT_HFOV_DEG, DEFAULT_N_FRAMES = 1280, 704, 60.0, 81


@dataclass(frozen=True, eq=False)
class Trajectory:
    """Raw-frame camera path: world_T_cams [F, 4, 4] float64, intrinsics [F, 4] (fx, fy, cx, cy px)."""

    world_T_cams: np.ndarray
    intrinsics: np.ndarray
    width: int
    height: int
    fps: float = 16.0

    def __post_init__(self):
        for name in ("width", "height"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 0 < v <= MAX_IMAGE_SIDE:
                raise ValueError(f"{name} must be an integer in [1, {MAX_IMAGE_SIDE}], got {v!r}")
        if isinstance(self.fps, bool) or not isinstance(self.fps, numbers.Real) or not 0 < self.fps <= 1000:
            raise ValueError(f"fps must be a number in (0, 1000], got {self.fps!r}")
        P = np.array(self.world_T_cams, dtype=np.float64)
        K = np.array(self.intrinsics, dtype=np.float64)
        if K.ndim == 3 and K.shape[1:] == (3, 3):
            K = intrinsics_vec4(K)
        if P.ndim != 3 or P.shape[1:] != (4, 4) or len(P) < 1:
            raise ValueError(f"world_T_cams must be [F>=1, 4, 4], got {P.shape}")
        if K.shape != (len(P), 4):
            raise ValueError(f"intrinsics must be [F={len(P)}, 4] (fx, fy, cx, cy), got {K.shape}")
        for name, a in (("world_T_cams", P), ("intrinsics", K)):
            if not np.all(np.isfinite(a)):
                frame = int(np.argwhere(~np.isfinite(a))[0][0])
                raise ValueError(f"{name} has NaN or inf at frame {frame}")
        R = P[:, :3, :3]
        err = np.abs(R.transpose(0, 2, 1) @ R - np.eye(3)).max(axis=(1, 2))
        det = np.linalg.det(R)
        bad = np.flatnonzero((err > 1e-4) | (np.abs(det - 1) > 1e-4) | (np.abs(P[:, 3] - [0, 0, 0, 1]).max(1) > 1e-9))
        if len(bad):
            raise ValueError(
                f"world_T_cams[{bad[0]}] is not a rigid transform (orthonormality error {err[bad[0]]:.2e}, "
                f"det {det[bad[0]]:.6f}, last row {P[bad[0], 3].tolist()})"
            )
        far = np.flatnonzero(np.abs(P[:, :3, 3]).max(1) > MAX_TRANSLATION_M)
        if len(far):
            raise ValueError(f"world_T_cams[{far[0]}] is {P[far[0], :3, 3].tolist()} m away, beyond {MAX_TRANSLATION_M:g} m")
        badk = np.flatnonzero(
            (K[:, 0] <= 0)
            | (K[:, 1] <= 0)
            | (K[:, 0] > 100 * self.width)
            | (K[:, 1] > 100 * self.height)
            | (np.abs(K[:, 2]) > 10 * self.width)
            | (np.abs(K[:, 3]) > 10 * self.height)
        )
        if len(badk):
            raise ValueError(
                f"intrinsics[{badk[0]}] = {K[badk[0]].tolist()} are implausible for a {self.width}x{self.height} "
                "image (need 0 < fx <= 100 W, 0 < fy <= 100 H, |cx| <= 10 W, |cy| <= 10 H)"
            )
        P.setflags(write=False)
        K.setflags(write=False)
        object.__setattr__(self, "world_T_cams", P)
        object.__setattr__(self, "intrinsics", K)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "fps", float(self.fps))

    @property
    def n_frames(self) -> int:
        return len(self.world_T_cams)

    def resized_to(self, width: int, height: int) -> Trajectory:
        """The same path for frames resized to cover (width, height) and centre-cropped (official preprocessing)."""
        K = intrinsics_after_resize_crop(self.intrinsics, (self.width, self.height), (width, height))
        return Trajectory(self.world_T_cams, K, width, height, self.fps)

    def conditioning(self, vae_stride=(8, 32, 32)) -> dict:
        """`prepare_camera` for this trajectory at its own size (see `controls.camera.prepare_camera`)."""
        return prepare_camera(self.world_T_cams, self.intrinsics, (self.height, self.width), vae_stride)


def _parse_action_string(action: str) -> list[frozenset[str]]:
    """Per-frame held keys. Full-width commas are accepted and whitespace ignored, as officially."""
    if not isinstance(action, str):
        raise ValueError(f"action must be a string, got {type(action).__name__}")
    cleaned = "".join(action.replace("，", ",").split())
    if not cleaned:
        raise ValueError("action string is empty (expected e.g. 'w-16,jl-8')")
    frames: list[frozenset[str]] = []
    for segment in cleaned.split(","):
        m = re.fullmatch(r"(.*)-([0-9]+)", segment)
        if m is None:
            raise ValueError(f"action segment {segment!r} is not '<keys>-<frames>' (e.g. 'w-16' or 'none-4')")
        keys, n = m.group(1).lower(), int(m.group(2))
        if n <= 0:
            raise ValueError(f"action segment {segment!r} has a non-positive frame count {n}")
        if keys == "none":
            held = frozenset()
        else:
            unknown = sorted(set(keys) - ACTION_KEYS)
            if unknown or not keys:
                raise ValueError(
                    f"action segment {segment!r} has unknown keys {unknown or [keys]}; allowed: "
                    f"{''.join(sorted(ACTION_KEYS))} or 'none'"
                )
            held = frozenset(keys)
        if len(frames) + n > MAX_ACTION_FRAMES:
            raise ValueError(f"action string lasts more than {MAX_ACTION_FRAMES} frames")
        frames.extend([held] * n)
    return frames


def from_action_string(
    action: str,
    *,
    translation_speed: float = DEFAULT_TRANSLATION_SPEED,
    rotation_speed_deg: float = DEFAULT_ROTATION_SPEED_DEG,
    pitch_limit_deg: float = DEFAULT_PITCH_LIMIT_DEG,
) -> np.ndarray:
    """Roll out the action DSL into world_T_cams [N + 1, 4, 4] float64 (frame 0 = identity).

    Per frame: pitch changes by +-rotation_speed (i up, k down) unless that would pass the limit (then
    not at all); R <- Ry(yaw) @ R @ Rx(pitch) (yaw about world up, pitch about the camera's x axis);
    then the camera moves translation_speed along its forward / right axes projected on the horizontal
    plane (w, s, d, a).
    """
    for name, v in (("translation_speed", translation_speed), ("rotation_speed_deg", rotation_speed_deg),
                    ("pitch_limit_deg", pitch_limit_deg)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite non-negative number, got {v!r}")
    step = math.radians(rotation_speed_deg)
    limit = math.radians(pitch_limit_deg)
    pose = np.eye(4)
    poses = [pose]
    pitch = 0.0
    for held in _parse_action_string(action):
        d_pitch = step * (("i" in held) - ("k" in held))
        if -limit <= pitch + d_pitch <= limit:
            pitch += d_pitch
        else:
            d_pitch = 0.0
        d_yaw = step * (("l" in held) - ("j" in held))
        R = rotation_yaw(d_yaw) @ pose[:3, :3] @ rotation_pitch(d_pitch)
        forward, right = R[:, 2].copy(), R[:, 0].copy()
        forward[1] = right[1] = 0.0
        # Looking straight up or down leaves no horizontal forward; the official code then moves nowhere.
        if np.linalg.norm(forward) > 0:
            forward /= np.linalg.norm(forward)
        if np.linalg.norm(right) > 0:
            right /= np.linalg.norm(right)
        move = translation_speed * (
            (("w" in held) - ("s" in held)) * forward + (("d" in held) - ("a" in held)) * right
        )
        pose = make_pose(R, pose[:3, 3] + move)
        poses.append(pose)
    return np.stack(poses)


def _walk_forward(t: np.ndarray) -> np.ndarray:
    """1.4 m/s straight ahead."""
    return np.stack([make_pose(np.eye(3), [0.0, 0.0, 1.4 * ti]) for ti in t])


def _orbit(t: np.ndarray) -> np.ndarray:
    """Circle a point 3 m ahead at 20 deg/s, always looking at it."""
    centre = np.array([0.0, 0.0, 3.0])
    out = []
    for ti in t:
        a = math.radians(20.0 * ti)
        eye = centre + 3.0 * np.array([-math.sin(a), 0.0, -math.cos(a)])
        out.append(look_at(eye, centre))
    return np.stack(out)


def _pan(t: np.ndarray) -> np.ndarray:
    """Stand still and turn right at 30 deg/s."""
    return np.stack([make_pose(rotation_yaw(math.radians(30.0 * ti)), np.zeros(3)) for ti in t])


def _figure_eight(t: np.ndarray) -> np.ndarray:
    """A 4 m x 2 m figure eight on the ground, one loop per 12 s, facing along the path."""
    w = 2.0 * math.pi / 12.0
    out = []
    for ti in t:
        pos = np.array([2.0 * math.sin(w * ti), 0.0, 1.0 * math.sin(2.0 * w * ti)])
        vel = np.array([2.0 * w * math.cos(w * ti), 0.0, 2.0 * w * math.cos(2.0 * w * ti)])
        out.append(make_pose(rotation_yaw(math.atan2(vel[0], vel[2])), pos))
    return np.stack(out)


def _look_around(t: np.ndarray) -> np.ndarray:
    """Stand still; yaw swings +-40 deg (period 6 s) while pitch nods +-15 deg (period 4 s)."""
    return np.stack(
        [
            make_pose(
                rotation_from_ypr(math.radians(40.0 * math.sin(2 * math.pi * ti / 6.0)),
                                  math.radians(15.0 * math.sin(2 * math.pi * ti / 4.0)), 0.0),
                np.zeros(3),
            )
            for ti in t
        ]
    )


PRESETS = {
    "walk_forward": _walk_forward,
    "orbit": _orbit,
    "pan": _pan,
    "figure_eight": _figure_eight,
    "look_around": _look_around,
}


# What each key of the action DSL does, for help texts (`trajectory_help`).
ACTION_KEY_HELP = {
    "w": "forward", "s": "back", "a": "strafe left", "d": "strafe right",
    "i": "pitch up", "k": "pitch down", "j": "yaw left", "l": "yaw right",
}


def trajectory_help() -> str:
    """The presets (with what each does) and the action-string keys, as lines for a --help epilog."""
    width = max(len(name) for name in PRESETS)
    lines = ["presets:"]
    lines += [f"  {name:<{width}}  {fn.__doc__.strip()}" for name, fn in PRESETS.items()]
    keys = ", ".join(f"{k} {what}" for k, what in ACTION_KEY_HELP.items())
    lines += [
        "action strings: comma-separated <keys>-<frames> segments, e.g. w-16,jl-8: the keys are held together",
        "  for that many frames ('none' holds none: the camera stands still).",
        f"  keys: {keys}",
        f"  per frame {DEFAULT_TRANSLATION_SPEED:g} m and {DEFAULT_ROTATION_SPEED_DEG:g} deg; pitch stops at +-{DEFAULT_PITCH_LIMIT_DEG:g} deg",
    ]
    return "\n".join(lines)


def _check_n_frames(n_frames) -> int:
    if isinstance(n_frames, bool) or not isinstance(n_frames, numbers.Integral) or not 1 <= n_frames <= MAX_ACTION_FRAMES:
        raise ValueError(f"n_frames must be an integer in [1, {MAX_ACTION_FRAMES}], got {n_frames!r}")
    return int(n_frames)


def preset(
    name: str,
    n_frames: int = DEFAULT_N_FRAMES,
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
    hfov_deg: float = DEFAULT_HFOV_DEG,
    fps: float = 16.0,
) -> Trajectory:
    """A named preset (`PRESETS`), timed in seconds so speeds are metric at any fps."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    n = _check_n_frames(n_frames)
    if not (isinstance(fps, numbers.Real) and 0 < fps <= 1000):
        raise ValueError(f"fps must be a number in (0, 1000], got {fps!r}")
    K = intrinsics_vec4(intrinsics_from_fov(width, height, hfov_deg))
    poses = PRESETS[name](np.arange(n) / fps)
    return Trajectory(poses, np.broadcast_to(K, (n, 4)), width, height, fps)


def _looks_like_path(source: str) -> bool:
    return Path(source).suffix.lower() in (".txt", ".npz", ".json") or "/" in source or "\\" in source


def load(
    source: str | Path,
    *,
    width: int | None = None,
    height: int | None = None,
    fps: float = 16.0,
    scene_scale: float = 1.0,
    n_frames: int | None = None,
    hfov_deg: float = DEFAULT_HFOV_DEG,
) -> Trajectory:
    """A trajectory from a file, a preset name, or an action string.

    Files: width/height come from the file where it stores them (passing different ones is an error;
    use `Trajectory.resized_to`), else they must be given (RealEstate10K, a bare benchmark npz; without
    them `formats.ImageSizeMissing`, a ValueError); fps
    from the file where stored, else `fps`. scene_scale: metres = file units * scene_scale.
    Presets and action strings: width x height (default 1280 x 704) with a `hfov_deg` pinhole; n_frames
    applies to presets only (an action string says its own length) and scene_scale scales them too.
    """
    if isinstance(source, Path) or (isinstance(source, str) and _looks_like_path(source)):
        path = Path(source)
        if n_frames is not None:
            raise ValueError(f"n_frames applies to presets only; {path} has its own length")
        if not path.is_file():
            raise ValueError(f"trajectory file {path} does not exist")
        data = formats.read(path, width=width, height=height, scene_scale=scene_scale)
        if data.width is None or data.height is None:
            raise formats.ImageSizeMissing(f"{path}: the file does not store the image size; pass width= and height=")
        return Trajectory(data.world_T_cams, data.intrinsics, data.width, data.height, data.fps or fps)
    if not isinstance(source, str):
        raise ValueError(f"source must be a path, preset name or action string, got {type(source).__name__}")
    if not (isinstance(scene_scale, numbers.Real) and math.isfinite(scene_scale) and scene_scale > 0):
        raise ValueError(f"scene_scale must be a positive finite number, got {scene_scale!r}")
    w, h = width or DEFAULT_WIDTH, height or DEFAULT_HEIGHT
    if source in PRESETS:
        traj = preset(source, DEFAULT_N_FRAMES if n_frames is None else n_frames, w, h, hfov_deg, fps)
        poses = traj.world_T_cams
    else:
        if n_frames is not None:
            raise ValueError(f"n_frames applies to presets only; the action string {source!r} has its own length")
        try:
            poses = from_action_string(source)
        except ValueError as e:
            raise ValueError(
                f"{source!r} is neither a trajectory file, a preset ({', '.join(PRESETS)}) nor a valid action string: {e}"
            ) from None
    poses = np.array(poses)
    poses[:, :3, 3] *= scene_scale
    K = intrinsics_vec4(intrinsics_from_fov(w, h, hfov_deg))
    return Trajectory(poses, np.broadcast_to(K, (len(poses), 4)), w, h, fps)


def save(trajectory: Trajectory, path: str | Path, format: str | None = None, *, scene_scale: float = 1.0) -> None:
    """Write `trajectory` as `format` (one of `formats.FORMATS`, default from the extension).

    scene_scale: file units = metres / scene_scale (the inverse of `load`).
    """
    if not isinstance(trajectory, Trajectory):
        raise ValueError(f"save needs a Trajectory, got {type(trajectory).__name__}")
    fmt = formats.format_for_path(path) if format is None else format
    if fmt not in formats.WRITERS:
        raise ValueError(f"unknown trajectory format {fmt!r}; formats: {', '.join(formats.FORMATS)}")
    data = formats.TrajectoryData(
        trajectory.world_T_cams, trajectory.intrinsics, trajectory.width, trajectory.height, trajectory.fps
    )
    formats.WRITERS[fmt](data, path, scene_scale=scene_scale)
