"""Input snapshots -> one metric camera pose per video frame.

The page sends idempotent snapshots (held keys as a bitmask, absolute yaw/pitch/roll in degrees, or
look deltas in px) up to 60 Hz; the generation worker calls `PoseIntegrator.advance(latest, n)` once
per chunk and gets exactly n poses (world_T_cam, OpenCV axes, y-down world, metres).

Motion model, per frame of dt = 1/fps:
- Orientation targets: absolute angles from the snapshot replace the targets (pitch clamped to
  +-pitch_limit_deg); look deltas add dx * sensitivity to yaw and -dy * sensitivity to pitch (mouse up
  looks up; `invert_y` flips it); ROLL_LEFT / ROLL_RIGHT move the roll target at roll_speed_deg_per_s.
  Per axis, an absolute angle wins over a delta (docs/protocol.md).
- Velocity target: the held movement keys give a direction on the horizontal plane along the yaw
  heading (forward = (sin yaw, 0, cos yaw), right = (cos yaw, 0, -sin yaw)), normalised so diagonals are
  not faster, times walk_speed_mps (x sprint_factor with SPRINT, x slow_factor with SLOW). With fly=True
  FORWARD/BACK follow the full view direction (pitch included) and UP/DOWN move along world up/down at
  vertical_speed_mps; without fly, UP/DOWN are ignored and the camera never changes height.
- Smoothing: velocity and angles approach their targets exponentially with time constant tau =
  smoothing_tau_s, integrated exactly over each frame, so the result does not depend on the frame rate.
  Holding a key for T seconds from rest covers v * (T - tau * (1 - exp(-T / tau))): the smoothing lag
  is at most v * tau (0.14 m at the defaults).

Snapshots are applied once, when first seen (seq greater than the last applied one); their keys stay
held until a newer snapshot arrives, so `advance(None, n)` keeps moving as the last snapshot said. A
snapshot with seq <= the last applied one (unless it is that same snapshot again), or one that fails
validation, is dropped and counted in `dropped_snapshots`; the integrator carries on with its last good
input. Same start state + same snapshots -> the same poses, bit for bit.
"""
from __future__ import annotations

import enum
import math
import numbers
from dataclasses import dataclass, replace

import numpy as np

from controls.camera import is_rigid, make_pose, rotation_from_ypr, ypr_from_rotation

# Beyond these a value is a client bug, not an input.
MAX_ABS_ANGLE_DEG = 1e6
MAX_LOOK_DELTA_PX = 1e5
MAX_SEQ = 2**53


class Key(enum.IntFlag):
    """Held-key bitmask, as sent by the page in `keys`."""

    FORWARD = 1
    BACK = 2
    LEFT = 4
    RIGHT = 8
    UP = 16
    DOWN = 32
    ROLL_LEFT = 64
    ROLL_RIGHT = 128
    SPRINT = 256
    SLOW = 512


_ALL_KEYS = int(sum(Key))


def _finite(name: str, value, limit: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if abs(value) > limit:
        raise ValueError(f"{name}={value!r} is out of range (|{name}| <= {limit:g})")


@dataclass(frozen=True)
class InputSnapshot:
    """One input message. Angles are absolute world angles in degrees (yaw > 0 right, pitch > 0 up,
    roll > 0 clockwise); look deltas are pixels moved since the previous snapshot (dy > 0 = mouse down)."""

    seq: int
    client_time_ms: float
    keys: Key = Key(0)
    yaw_deg: float | None = None
    pitch_deg: float | None = None
    roll_deg: float | None = None
    look_dx_px: float = 0.0
    look_dy_px: float = 0.0

    def __post_init__(self):
        if isinstance(self.seq, bool) or not isinstance(self.seq, numbers.Integral) or not 0 <= self.seq <= MAX_SEQ:
            raise ValueError(f"seq must be an integer in [0, 2^53], got {self.seq!r}")
        _finite("client_time_ms", self.client_time_ms, 1e15)
        if isinstance(self.keys, bool) or not isinstance(self.keys, numbers.Integral):
            raise ValueError(f"keys must be an integer bitmask, got {self.keys!r}")
        if int(self.keys) & ~_ALL_KEYS or int(self.keys) < 0:
            raise ValueError(f"keys={int(self.keys)} has unknown bits (known mask {_ALL_KEYS})")
        object.__setattr__(self, "keys", Key(int(self.keys)))
        for name in ("yaw_deg", "roll_deg"):
            if getattr(self, name) is not None:
                _finite(name, getattr(self, name), MAX_ABS_ANGLE_DEG)
        if self.pitch_deg is not None:
            _finite("pitch_deg", self.pitch_deg, 90.0)
        _finite("look_dx_px", self.look_dx_px, MAX_LOOK_DELTA_PX)
        _finite("look_dy_px", self.look_dy_px, MAX_LOOK_DELTA_PX)

    @classmethod
    def from_message(cls, obj: dict) -> InputSnapshot:
        """Parse the page's `{"type": "input", "seq", "t", "keys", "yaw", "pitch", "roll", "dx", "dy"}`."""
        if not isinstance(obj, dict):
            raise ValueError(f"input message must be a JSON object, got {type(obj).__name__}")
        if obj.get("type") != "input":
            raise ValueError(f"input message must have type 'input', got {obj.get('type')!r}")
        known = {"type", "seq", "t", "keys", "yaw", "pitch", "roll", "dx", "dy"}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise ValueError(f"input message has unknown fields {unknown}")
        for required in ("seq", "t"):
            if required not in obj:
                raise ValueError(f"input message lacks {required!r}: {obj}")
        seq = obj["seq"]
        # JSON numbers like 42.0 are accepted as integers; 42.5 is not.
        if isinstance(seq, float) and seq.is_integer():
            seq = int(seq)
        return cls(
            seq=seq,
            client_time_ms=obj["t"],
            keys=0 if obj.get("keys") is None else obj["keys"],
            yaw_deg=obj.get("yaw"),
            pitch_deg=obj.get("pitch"),
            roll_deg=obj.get("roll"),
            look_dx_px=0.0 if obj.get("dx") is None else obj["dx"],
            look_dy_px=0.0 if obj.get("dy") is None else obj["dy"],
        )


@dataclass(frozen=True)
class ControlSettings:
    """How keys and the mouse map to metric motion."""

    walk_speed_mps: float = 1.4
    sprint_factor: float = 3.0
    slow_factor: float = 0.3
    smoothing_tau_s: float = 0.1
    look_sensitivity_deg_per_px: float = 0.1
    pitch_limit_deg: float = 60.0  # the official integrator's clamp
    roll_speed_deg_per_s: float = 45.0
    fly: bool = False
    vertical_speed_mps: float = 1.0
    invert_y: bool = False

    def __post_init__(self):
        ranges = {
            "walk_speed_mps": (0.0, 100.0),
            "sprint_factor": (1.0, 100.0),
            "slow_factor": (0.0, 1.0),
            "smoothing_tau_s": (0.0, 10.0),
            "look_sensitivity_deg_per_px": (0.0, 10.0),
            "pitch_limit_deg": (0.0, 89.0),
            "roll_speed_deg_per_s": (0.0, 720.0),
            "vertical_speed_mps": (0.0, 100.0),
        }
        for name, (lo, hi) in ranges.items():
            v = getattr(self, name)
            _finite(name, v, float("inf"))
            if not lo <= v <= hi:
                raise ValueError(f"{name}={v!r} must be in [{lo:g}, {hi:g}]")
        for name in ("fly", "invert_y"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class IntegratorState:
    """Everything `PoseIntegrator` needs to continue exactly (angles in radians, world frame)."""

    position: tuple[float, float, float]
    velocity: tuple[float, float, float]
    yaw: float
    pitch: float
    roll: float
    target_yaw: float
    target_pitch: float
    target_roll: float
    keys: Key = Key(0)
    last_snapshot: InputSnapshot | None = None
    frame_index: int = 0
    dropped_snapshots: int = 0


def _wrap(rad: float) -> float:
    """Angle in (-pi, pi]."""
    return math.pi - (math.pi - rad) % (2.0 * math.pi)


class PoseIntegrator:
    """Deterministic input -> pose integrator at the video frame rate (see module docstring)."""

    def __init__(self, settings: ControlSettings = ControlSettings(), start_world_T_cam=None, fps: float = 16.0):
        if not isinstance(settings, ControlSettings):
            raise ValueError(f"settings must be ControlSettings, got {type(settings).__name__}")
        _finite("fps", fps, 1000.0)
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self._settings = settings
        self.fps = float(fps)
        self.last_drop_reason: str | None = None
        self.reset(np.eye(4) if start_world_T_cam is None else start_world_T_cam)

    @property
    def settings(self) -> ControlSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: ControlSettings) -> None:
        """New settings take effect from the next frame; a tighter pitch clamp applies to the targets at once."""
        if not isinstance(settings, ControlSettings):
            raise ValueError(f"settings must be ControlSettings, got {type(settings).__name__}")
        self._settings = settings
        limit = math.radians(settings.pitch_limit_deg)
        s = self._state
        self._state = replace(s, target_pitch=min(limit, max(-limit, s.target_pitch)))

    def reset(self, world_T_cam=None) -> None:
        """Back to rest at `world_T_cam` (default: the start pose).

        Clears held keys and velocity; keeps the last applied snapshot (so stale seqs stay stale), the
        frame count and the drop count. The page should zero its absolute angles to match.
        """
        pose = self._start if world_T_cam is None else np.asarray(world_T_cam, dtype=np.float64)
        if pose.shape != (4, 4) or not np.all(np.isfinite(pose)) or not is_rigid(pose):
            raise ValueError(f"start pose must be a finite rigid 4x4 transform, got\n{pose}")
        self._start = pose.copy()
        yaw, pitch, roll = ypr_from_rotation(pose[:3, :3])
        limit = math.radians(self.settings.pitch_limit_deg)
        if abs(pitch) > limit + 1e-9:
            raise ValueError(
                f"start pose pitch {math.degrees(pitch):.2f} deg exceeds the clamp +-{self.settings.pitch_limit_deg} deg"
            )
        prev = getattr(self, "_state", None)
        self._state = IntegratorState(
            position=tuple(pose[:3, 3]),
            velocity=(0.0, 0.0, 0.0),
            yaw=yaw,
            pitch=pitch,
            roll=roll,
            target_yaw=yaw,
            target_pitch=pitch,
            target_roll=roll,
            last_snapshot=prev.last_snapshot if prev is not None else None,
            frame_index=prev.frame_index if prev is not None else 0,
            dropped_snapshots=prev.dropped_snapshots if prev is not None else 0,
        )

    def state(self) -> IntegratorState:
        """A frozen copy of the state, for rewind."""
        return self._state

    def restore(self, state: IntegratorState) -> None:
        """Continue from a state returned by `state()`."""
        if not isinstance(state, IntegratorState):
            raise ValueError(f"restore needs an IntegratorState, got {type(state).__name__}")
        self._state = state

    @property
    def dropped_snapshots(self) -> int:
        return self._state.dropped_snapshots

    @property
    def frame_index(self) -> int:
        """Frames produced since construction (`reset` keeps counting)."""
        return self._state.frame_index

    @property
    def position(self) -> np.ndarray:
        """Camera centre in the world [3], metres."""
        return np.array(self._state.position)

    @property
    def velocity(self) -> np.ndarray:
        """World-frame velocity [3], m/s."""
        return np.array(self._state.velocity)

    @property
    def yaw_deg(self) -> float:
        return math.degrees(self._state.yaw)

    @property
    def pitch_deg(self) -> float:
        return math.degrees(self._state.pitch)

    @property
    def roll_deg(self) -> float:
        return math.degrees(self._state.roll)

    @property
    def world_T_cam(self) -> np.ndarray:
        """Current pose [4, 4]."""
        s = self._state
        return make_pose(rotation_from_ypr(s.yaw, s.pitch, s.roll), s.position)

    def _accept(self, snap: InputSnapshot) -> IntegratorState:
        """State with the snapshot's targets applied (deltas applied once)."""
        s, cfg = self._state, self.settings
        limit = math.radians(cfg.pitch_limit_deg)
        sens = math.radians(cfg.look_sensitivity_deg_per_px)
        yaw, pitch, roll = s.target_yaw, s.target_pitch, s.target_roll
        if snap.yaw_deg is not None:
            yaw = math.radians(snap.yaw_deg)
        else:
            yaw = yaw + snap.look_dx_px * sens
        if snap.pitch_deg is not None:
            pitch = math.radians(snap.pitch_deg)
        else:
            pitch = pitch - snap.look_dy_px * sens * (-1.0 if cfg.invert_y else 1.0)
        if snap.roll_deg is not None:
            roll = math.radians(snap.roll_deg)
        return replace(
            s,
            target_yaw=_wrap(yaw),
            target_pitch=min(limit, max(-limit, pitch)),
            target_roll=_wrap(roll),
            keys=snap.keys,
            last_snapshot=snap,
        )

    def _drop(self, reason: str) -> None:
        self.last_drop_reason = reason
        self._state = replace(self._state, dropped_snapshots=self._state.dropped_snapshots + 1)

    def _take(self, snapshot) -> None:
        s = self._state
        if isinstance(snapshot, dict):
            try:
                snapshot = InputSnapshot.from_message(snapshot)
            except ValueError as e:
                self._drop(str(e))
                return
        if snapshot is None or snapshot == s.last_snapshot:
            return
        if not isinstance(snapshot, InputSnapshot):
            self._drop(f"not an InputSnapshot: {type(snapshot).__name__}")
            return
        if s.last_snapshot is not None and snapshot.seq <= s.last_snapshot.seq:
            self._drop(f"stale seq {snapshot.seq} <= last applied {s.last_snapshot.seq}")
            return
        self._state = self._accept(snapshot)

    def _step(self, s: IntegratorState, dt: float) -> IntegratorState:
        cfg = self.settings
        tau = cfg.smoothing_tau_s
        decay = math.exp(-dt / tau) if tau > 0 else 0.0
        keys = s.keys

        roll_dir = (Key.ROLL_RIGHT in keys) - (Key.ROLL_LEFT in keys)
        target_roll = _wrap(s.target_roll + roll_dir * math.radians(cfg.roll_speed_deg_per_s) * dt)

        # Angles approach their targets along the shortest way round.
        yaw = _wrap(s.target_yaw + _wrap(s.yaw - s.target_yaw) * decay)
        pitch = s.target_pitch + (s.pitch - s.target_pitch) * decay
        roll = _wrap(target_roll + _wrap(s.roll - target_roll) * decay)

        fwd = (Key.FORWARD in keys) - (Key.BACK in keys)
        side = (Key.RIGHT in keys) - (Key.LEFT in keys)
        vert = ((Key.DOWN in keys) - (Key.UP in keys)) if cfg.fly else 0
        speed = cfg.walk_speed_mps
        if Key.SPRINT in keys:
            speed *= cfg.sprint_factor
        if Key.SLOW in keys:
            speed *= cfg.slow_factor
        sy, cy = math.sin(yaw), math.cos(yaw)
        if cfg.fly:
            forward = np.array([math.cos(pitch) * sy, -math.sin(pitch), math.cos(pitch) * cy])
        else:
            forward = np.array([sy, 0.0, cy])
        right = np.array([cy, 0.0, -sy])
        planar = fwd * forward + side * right
        norm = float(np.linalg.norm(planar))
        v_target = planar / norm * speed if norm > 0 else np.zeros(3)
        v_target[1] += vert * cfg.vertical_speed_mps  # world +y is down

        # Exact integral of v' = (v_target - v) / tau over one frame.
        v0 = np.array(s.velocity)
        v1 = v_target + (v0 - v_target) * decay
        x1 = np.array(s.position) + v_target * dt + (v0 - v_target) * (tau * (1.0 - decay))
        return replace(
            s,
            position=tuple(float(x) for x in x1),
            velocity=tuple(float(v) for v in v1),
            yaw=yaw,
            pitch=pitch,
            roll=roll,
            target_roll=target_roll,
            frame_index=s.frame_index + 1,
        )

    def advance(self, snapshot: InputSnapshot | dict | None, n_frames: int) -> np.ndarray:
        """Apply `snapshot` (None = no new input) and integrate n_frames -> world_T_cams [n, 4, 4].

        A raw message dict is parsed with `InputSnapshot.from_message`; a bad or stale snapshot is
        dropped (counted in `dropped_snapshots`, reason in `last_drop_reason`), never raised.
        """
        if isinstance(n_frames, bool) or not isinstance(n_frames, numbers.Integral) or n_frames < 0:
            raise ValueError(f"n_frames must be a non-negative integer, got {n_frames!r}")
        self._take(snapshot)
        dt = 1.0 / self.fps
        poses = np.empty((n_frames, 4, 4))
        for i in range(n_frames):
            self._state = self._step(self._state, dt)
            poses[i] = self.world_T_cam
        return poses
