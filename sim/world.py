"""A procedural world from a seed: ground, sky, sun and scattered objects; free-space queries.

The world is a flat torus: the ground plane y = 0 (y points down, so everything above the ground
has y < 0) tiles with period `PERIOD_M` in x and z, objects and textures included, so a walk never
reaches an edge. Objects farther than `FAR_M` from the camera are hidden by the horizon haze, which
reaches full strength there; `FAR_M <= PERIOD_M / 2` keeps every visible object's nearest copy the
only one that matters.

Determinism: everything random is drawn from `numpy.random.default_rng` seeded by the scene seed
(and the spawn index), so a seed always gives the same scene and the same bytes.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from sim import primitives as P
from sim.ground import bake_clouds, bake_detail, bake_ground
from sim.textures import MipTexture
from sim.themes import THEMES, Theme

PERIOD_M = 96.0
FAR_M = 44.0
EYE_HEIGHT_M = 1.6
FOGGY_SHARE = 0.2
FOGGY_DENSITY = (0.035, 0.07)  # 1/m: visibility of roughly 40 to 85 m
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Primitives:
    """M analytic primitives (see sim/primitives.py for the local frames)."""

    kind: np.ndarray  # [M] int8
    centre: np.ndarray  # [M, 3] float64, world, inside [0, PERIOD_M) in x and z
    half: np.ndarray  # [M, 3] float32 half-extents
    yaw: np.ndarray  # [M] float32 radians about y
    colour: np.ndarray  # [M, 3] float32 albedo
    texture: np.ndarray  # [M] float32 contrast of the surface pattern
    bound: np.ndarray  # [M] float32 bounding-sphere radius about `centre`

    def __len__(self) -> int:
        return len(self.kind)


@dataclass(frozen=True)
class RenderResult:
    rgb: np.ndarray  # [N, H, W, 3] uint8
    depth: np.ndarray  # [N, H, W] float32 metres along the optical axis, inf for sky


class Scene:
    """One procedural world. Build with `Scene.from_seed`; render with `render`."""

    def __init__(self, seed: int, theme: Theme, sun_dir: np.ndarray, prims: Primitives, ground: MipTexture,
                 detail: MipTexture, clouds: MipTexture, period: float = PERIOD_M, far: float = FAR_M,
                 fog_density: float | None = None) -> None:
        if not 0 < far <= period / 2:
            raise ValueError(f"far={far} must lie in (0, period / 2 = {period / 2}]")
        fog_density = theme.fog_density if fog_density is None else fog_density
        if not (isinstance(fog_density, numbers.Real) and 0 <= fog_density <= 1):
            raise ValueError(f"fog_density must be a number in [0, 1] per metre, got {fog_density!r}")
        self.seed = seed
        self.theme = theme
        self.sun_dir = sun_dir.astype(np.float32)  # [3] unit vector towards the sun (sun_dir[1] < 0)
        self.prims = prims
        self.ground = ground
        self.detail = detail
        self.clouds = clouds
        self.period = float(period)
        self.far = float(far)
        self.fog_density = float(fog_density)  # 1/m of exponential fog, on top of the haze that ends at `far`

    @classmethod
    def from_seed(cls, seed: int, theme: str | None = None, fog: bool | None = None) -> Scene:
        """The scene of `seed` (an int in [0, 2**63)).

        theme: the look (one of `THEMES`); None lets the seed pick. fog: True for a foggy day (fog
        density FOGGY_DENSITY instead of the theme's light haze), False for none; None lets the seed
        pick (one scene in FOGGY_SHARE is foggy).
        """
        check_seed(seed)
        if theme is not None and theme not in THEMES:
            raise ValueError(f"unknown theme {theme!r}; known themes: {sorted(THEMES)}")
        if fog is not None and not isinstance(fog, bool):
            raise ValueError(f"fog must be True, False or None, got {fog!r}")
        rng = np.random.default_rng([seed, 0x5CE1E])
        # Every draw happens whatever the arguments, so from_seed(s) equals from_seed(s, the theme it picked).
        names = sorted(THEMES)
        picked = names[int(rng.integers(len(names)))]
        th = THEMES[picked if theme is None else theme]
        foggy_draw = rng.random() < FOGGY_SHARE
        foggy = foggy_draw if fog is None else fog
        fog_draw = rng.uniform(*FOGGY_DENSITY)
        elevation = math.radians(rng.uniform(*th.sun_elevation_deg))
        azimuth = rng.uniform(0.0, 2.0 * math.pi)
        sun_dir = np.array([math.cos(elevation) * math.sin(azimuth), -math.sin(elevation),
                            math.cos(elevation) * math.cos(azimuth)])
        prims = _scatter_objects(rng, th, PERIOD_M)
        ground = bake_ground(rng, th, prims, sun_dir, PERIOD_M)
        detail = bake_detail(rng, th.grain)
        clouds = bake_clouds(rng, th.clouds)
        return cls(seed, th, sun_dir, prims, ground, detail, clouds, fog_density=fog_draw if foggy else th.fog_density)

    def render(self, world_T_cam, K, width: int, height: int, supersample: int = 1) -> RenderResult:
        """RGB and z-depth seen by pinhole cameras.

        Args:
            world_T_cam: [4, 4] or [N, 4, 4] camera-to-world poses (OpenCV axes, metres).
            K: [3, 3] intrinsics in pixels (no skew); pixel centres at integer coordinates.
            supersample: 1, or 3 or 5 to anti-alias the colours with s x s samples per pixel (s^2
                times the work); depth stays that of the pixel centre.
        Returns:
            RenderResult with rgb [N, H, W, 3] uint8 and depth [N, H, W] float32 (N = 1 for one pose).
        """
        from sim.renderer import render

        return render(self, world_T_cam, K, width, height, supersample)

    def wrap(self, delta: np.ndarray) -> np.ndarray:
        """Offsets [..., 3] with x and z folded into [-period/2, period/2): the nearest copy on the torus."""
        out = np.array(delta, dtype=np.float64, copy=True)
        half = self.period / 2
        out[..., 0] = np.mod(out[..., 0] + half, self.period) - half
        out[..., 2] = np.mod(out[..., 2] + half, self.period) - half
        return out

    def distance(self, position) -> np.ndarray | float:
        """Distance from points [3] or [N, 3] to the nearest object surface (a lower bound; < 0 inside)."""
        pos, single = _points(position)
        rel = self.wrap(pos[:, None, :] - self.prims.centre[None, :, :])  # [N, M, 3]
        c, s = np.cos(self.prims.yaw), np.sin(self.prims.yaw)
        lx = c * rel[..., 0] - s * rel[..., 2]
        lz = s * rel[..., 0] + c * rel[..., 2]
        ly = rel[..., 1]
        h = self.prims.half.astype(np.float64)
        dist = np.full(lx.shape, np.inf)
        for kind, sdf in P.SDF.items():
            sel = self.prims.kind == kind
            if sel.any():
                dist[:, sel] = sdf(lx[:, sel], ly[:, sel], lz[:, sel], h[sel, 0], h[sel, 1], h[sel, 2])
        nearest = dist.min(axis=1) if dist.shape[1] else np.full(len(pos), np.inf)
        return float(nearest[0]) if single else nearest

    def is_free(self, position, radius: float = 0.3) -> bool | np.ndarray:
        """True where a ball of `radius` metres at `position` ([3] or [N, 3]) touches no object and
        stays above the ground (y < -radius)."""
        if not (isinstance(radius, numbers.Real) and not isinstance(radius, bool) and math.isfinite(radius) and radius >= 0):
            raise ValueError(f"radius must be a finite number >= 0, got {radius!r}")
        pos, single = _points(position)
        free = (np.asarray(self.distance(pos)) > radius) & (pos[:, 1] < -radius)
        return bool(free[0]) if single else free

    def spawn_world_T_cam(self, index: int = 0, clearance: float = 1.5) -> np.ndarray:
        """A deterministic start pose [4, 4]: level, at eye height, `clearance` metres from every
        object, facing one of the objects 6-20 m away."""
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or index < 0:
            raise ValueError(f"spawn index must be an int >= 0, got {index!r}")
        rng = np.random.default_rng([self.seed, int(index), 0x5BA7])
        for _ in range(2000):
            position = np.array([rng.uniform(0, self.period), -EYE_HEIGHT_M, rng.uniform(0, self.period)])
            if self.is_free(position, clearance):
                break
        else:
            raise RuntimeError(f"scene {self.seed}: no free spawn point with clearance {clearance} m")
        rel = self.wrap(self.prims.centre - position)
        dist = np.hypot(rel[:, 0], rel[:, 2])
        near = np.flatnonzero((dist > 6.0) & (dist < 20.0))
        if len(near):
            target = rel[near[int(rng.integers(len(near)))]]
            yaw = math.atan2(target[0], target[2]) + math.radians(rng.uniform(-10.0, 10.0))
        else:
            yaw = rng.uniform(-math.pi, math.pi)
        return pose_from_yaw(position, yaw)

    def place_trajectory(self, relative_world_T_cams, radius: float = 0.3, max_tries: int = 64) -> np.ndarray:
        """`spawn_world_T_cam(i) @ relative` for the first spawn index i whose whole path is free.

        relative_world_T_cams: [F, 4, 4] poses relative to the first frame (frame 0 = identity).
        Returns [F, 4, 4] world poses.
        """
        relative = np.asarray(relative_world_T_cams, dtype=np.float64)
        if relative.ndim != 3 or relative.shape[1:] != (4, 4) or not np.isfinite(relative).all():
            raise ValueError(f"relative poses must be finite [F, 4, 4], got shape {relative.shape}")
        for index in range(max_tries):
            poses = self.spawn_world_T_cam(index) @ relative
            if self.is_free(poses[:, :3, 3], radius).all():
                return poses
        raise RuntimeError(f"scene {self.seed}: no spawn among the first {max_tries} keeps this trajectory free")


def pose_from_yaw(position, yaw: float) -> np.ndarray:
    """world_T_cam [4, 4] of a level camera at `position` turned right by `yaw` radians from +z."""
    c, s = math.cos(yaw), math.sin(yaw)
    pose = np.eye(4)
    pose[:3, :3] = [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]
    pose[:3, 3] = position
    return pose


def check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"scene seed must be an int in [0, 2**63), got {seed!r}")


def _points(position) -> tuple[np.ndarray, bool]:
    pos = np.asarray(position, dtype=np.float64)
    single = pos.ndim == 1
    pos = pos.reshape(1, -1) if single else pos
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must be [3] or [N, 3], got shape {np.shape(position)}")
    if not np.isfinite(pos).all():
        raise ValueError(f"positions must be finite, got {pos[~np.isfinite(pos).all(axis=1)][:3].tolist()}")
    return pos, single


def _scatter_objects(rng: np.random.Generator, theme: Theme, period: float) -> Primitives:
    """Objects of the theme's families at well-spaced random spots, as a list of primitives."""
    families = sorted(theme.objects)
    weights = np.array([theme.objects[f] for f in families])
    count = int(round(theme.density * period * period))
    spots: list[tuple[float, float, float]] = []  # x, z, footprint radius
    parts: list[tuple] = []
    for _ in range(count * 4):
        if len(spots) >= count:
            break
        family = families[int(rng.choice(len(families), p=weights / weights.sum()))]
        x, z = rng.uniform(0, period, size=2)
        pieces = _build_family(rng, theme, family)
        footprint = max(max(h[0], h[2]) + math.hypot(dx, dz) for _, (dx, _, dz), h, _, _, _ in pieces)
        if any(_torus_gap(x, z, sx, sz, period) < footprint + sr + 0.8 for sx, sz, sr in spots):
            continue
        spots.append((x, z, footprint))
        for kind, (dx, y, dz), half, yaw, colour, texture in pieces:
            parts.append((kind, (np.mod(x + dx, period), y, np.mod(z + dz, period)), half, yaw, colour, texture))
    half = np.array([p[2] for p in parts], dtype=np.float32).reshape(-1, 3)
    return Primitives(
        kind=np.array([p[0] for p in parts], dtype=np.int8),
        centre=np.array([p[1] for p in parts], dtype=np.float64).reshape(-1, 3),
        half=half,
        yaw=np.array([p[3] for p in parts], dtype=np.float32),
        colour=np.clip(np.array([p[4] for p in parts], dtype=np.float32).reshape(-1, 3), 0, 1),
        texture=np.array([p[5] for p in parts], dtype=np.float32),
        bound=np.linalg.norm(half, axis=1).astype(np.float32) * 1.001,
    )


def _torus_gap(x0: float, z0: float, x1: float, z1: float, period: float) -> float:
    dx = (x0 - x1 + period / 2) % period - period / 2
    dz = (z0 - z1 + period / 2) % period - period / 2
    return math.hypot(dx, dz)


def _jitter(rng: np.random.Generator, colour, amount: float = 0.06) -> tuple[float, float, float]:
    c = np.asarray(colour) * (1.0 + rng.uniform(-amount, amount)) + rng.uniform(-amount, amount, size=3) * 0.5
    return tuple(np.clip(c, 0.0, 1.0))


def _build_family(rng: np.random.Generator, theme: Theme, family: str) -> list[tuple]:
    """Primitives of one object, as (kind, (dx, y, dz) offset of the centre, half, yaw, colour, texture)."""
    u = rng.uniform
    yaw = u(-math.pi, math.pi)
    foliage = theme.foliage[int(rng.integers(len(theme.foliage)))]
    paint = theme.palette[int(rng.integers(len(theme.palette)))]
    if family == "round_tree":
        trunk_h, trunk_r = u(1.4, 2.8), u(0.12, 0.25)
        crown = (u(1.0, 2.2), u(0.9, 1.8))
        crown_y = -(trunk_h + 0.6 * crown[1])
        # The trunk reaches into the crown.
        trunk_half = (trunk_h + 0.3 * crown[1]) / 2
        return [(P.CYLINDER, (0.0, -trunk_half, 0.0), (trunk_r, trunk_half, trunk_r), 0.0, _jitter(rng, theme.wood), 0.25),
                (P.ELLIPSOID, (0.0, crown_y, 0.0), (crown[0], crown[1], crown[0] * u(0.85, 1.15)), yaw,
                 _jitter(rng, foliage), 0.35)]
    if family == "fir_tree":
        trunk_h, trunk_r = u(0.6, 1.2), u(0.1, 0.2)
        cone_r, cone_h = u(0.9, 2.0), u(3.0, 7.0)
        base = -0.8 * trunk_h
        return [(P.CYLINDER, (0.0, -trunk_h / 2, 0.0), (trunk_r, trunk_h / 2, trunk_r), 0.0, _jitter(rng, theme.wood), 0.25),
                (P.CONE, (0.0, base - cone_h / 2, 0.0), (cone_r, cone_h / 2, cone_r), yaw, _jitter(rng, foliage), 0.3)]
    if family in ("rock", "boulder"):
        r = (u(0.3, 0.8), u(0.2, 0.5), u(0.3, 0.8)) if family == "rock" else (u(1.0, 2.2), u(0.8, 1.6), u(1.0, 2.2))
        return [(P.ELLIPSOID, (0.0, 0.3 * r[1], 0.0), r, yaw, _jitter(rng, theme.rock, 0.1), 0.4)]
    if family == "crate":
        h = (u(0.3, 1.5), u(0.3, 1.3), u(0.3, 1.5))
        pieces = [(P.BOX, (0.0, -h[1], 0.0), h, yaw, _jitter(rng, paint), 0.3)]
        if rng.random() < 0.35:
            top = (h[0] * u(0.4, 0.8), h[1] * u(0.4, 0.8), h[2] * u(0.4, 0.8))
            top_paint = theme.palette[int(rng.integers(len(theme.palette)))]
            pieces.append((P.BOX, (0.0, -2 * h[1] - top[1], 0.0), top, yaw + u(-0.6, 0.6), _jitter(rng, top_paint), 0.3))
        return pieces
    if family == "pillar":
        r, height = u(0.2, 0.6), u(2.0, 5.0)
        return [(P.CYLINDER, (0.0, -height / 2, 0.0), (r, height / 2, r), 0.0, _jitter(rng, paint), 0.3)]
    if family == "cone":
        r, height = u(0.5, 1.5), u(1.0, 3.5)
        return [(P.CONE, (0.0, -height / 2, 0.0), (r, height / 2, r), yaw, _jitter(rng, paint), 0.3)]
    if family == "ball":
        r = u(0.3, 1.0)
        return [(P.ELLIPSOID, (0.0, -r, 0.0), (r, r, r), yaw, _jitter(rng, paint), 0.3)]
    if family == "cactus":
        r, height = u(0.18, 0.32), u(2.0, 4.0)
        green = _jitter(rng, foliage)
        pieces = [(P.CYLINDER, (0.0, -height / 2, 0.0), (r, height / 2, r), 0.0, green, 0.35),
                  (P.ELLIPSOID, (0.0, -height, 0.0), (r, r, r), 0.0, green, 0.35)]
        for side in (-1.0, 1.0)[: int(rng.integers(0, 3))]:
            arm_r, arm_h = r * 0.7, height * u(0.25, 0.4)
            ax, az = side * (r + arm_r + 0.25) * math.cos(yaw), side * (r + arm_r + 0.25) * math.sin(yaw)
            arm_y = -height * u(0.45, 0.65) - arm_h / 2
            pieces += [(P.CYLINDER, (ax, arm_y, az), (arm_r, arm_h / 2, arm_r), 0.0, green, 0.35),
                       (P.ELLIPSOID, (ax, arm_y - arm_h / 2, az), (arm_r, arm_r, arm_r), 0.0, green, 0.35),
                       # The elbow: a bar from the trunk to the arm (a box's local x maps to (cos, -sin) of its yaw).
                       (P.BOX, (ax / 2, arm_y + arm_h / 2 - arm_r * 0.6, az / 2),
                        (math.hypot(ax, az) / 2, arm_r * 0.6, arm_r * 0.6), -yaw, green, 0.35)]
        return pieces
    if family == "hut":
        r, wall_h, roof_h = u(1.2, 2.2), u(1.8, 2.6), u(1.2, 2.2)
        roof = theme.palette[int(rng.integers(len(theme.palette)))]
        return [(P.CYLINDER, (0.0, -wall_h / 2, 0.0), (r, wall_h / 2, r), 0.0, _jitter(rng, paint), 0.3),
                (P.CONE, (0.0, -wall_h - roof_h / 2 + 0.05, 0.0), (r * 1.3, roof_h / 2, r * 1.3), yaw, _jitter(rng, roof, 0.1), 0.35)]
    raise ValueError(f"unknown object family {family!r}")
