"""Batched ray casting of a `Scene`: ground plane, analytic primitives, sky, fog.

Rays go through pixel centres as `o + t d` with d = R K^-1 (u, v, 1): pixel centres sit on integer
coordinates, the project's convention (controls/camera.py), and the ray parameter t of a hit is its
z-depth. Objects are found per (frame, primitive) candidate: primitives whose bounding sphere lies
beyond the far distance are culled, the rest project their local box (clipped to the near plane) to
a conservative screen rectangle and are tested only against the rays inside it, so a primitive
behind the camera or off screen costs nothing. The nearest hit per ray wins by a scatter-min over
all (ray, primitive) pairs, with the ground plane as the first candidate.

Shading: baked ground texture times fine detail, lambert plus sky-tinted ambient on objects, a sky
gradient with sun glow and clouds, and a haze that takes everything to the horizon colour at
`scene.far`. All per-pixel work is float32 numpy on one thread.
"""
from __future__ import annotations

import math

import numpy as np

from sim import primitives as P
from sim.ground import light_terms
from sim.textures import smoothstep

NEAR_M = 0.05
MAX_RAYS_PER_BATCH = 1 << 19
CLOUD_HEIGHT_M = 400.0
SUN_RADIUS_DEG = 2.2


def check_poses(world_T_cam) -> tuple[np.ndarray, bool]:
    """[4, 4] or [N, 4, 4] finite rigid camera-to-world poses -> float64 [N, 4, 4] and whether one was given."""
    poses = np.asarray(world_T_cam, dtype=np.float64)
    single = poses.ndim == 2
    if single:
        poses = poses[None]
    if poses.ndim != 3 or poses.shape[1:] != (4, 4) or len(poses) == 0:
        raise ValueError(f"world_T_cam must be [4, 4] or [N, 4, 4] with N >= 1, got shape {np.shape(world_T_cam)}")
    bad = ~np.isfinite(poses).all(axis=(1, 2))
    if bad.any():
        raise ValueError(f"world_T_cam has non-finite entries in frames {np.flatnonzero(bad)[:8].tolist()}")
    rot = poses[:, :3, :3]
    ortho = np.abs(rot @ rot.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(rot)
    bottom = np.abs(poses[:, 3] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=1)
    bad = (ortho > 1e-4) | (np.abs(det - 1.0) > 1e-4) | (bottom > 1e-6)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"world_T_cam[{i}] is not rigid: |R R^T - I| = {ortho[i]:.3g}, det R = {det[i]:.6g}, "
                         f"bottom row = {poses[i, 3].tolist()}")
    return poses, single


def check_intrinsics(K) -> tuple[float, float, float, float]:
    """[3, 3] pinhole intrinsics without skew -> (fx, fy, cx, cy)."""
    k = np.asarray(K, dtype=np.float64)
    if k.shape != (3, 3) or not np.isfinite(k).all():
        raise ValueError(f"K must be a finite [3, 3] matrix, got shape {k.shape} {k.tolist() if k.size <= 9 else ''}")
    if k[0, 0] <= 0 or k[1, 1] <= 0 or k[0, 1] != 0 or k[1, 0] != 0 or k[2].tolist() != [0.0, 0.0, 1.0]:
        raise ValueError(f"K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0, got {k.tolist()}")
    return float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2])


def check_size(width, height) -> None:
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= 8192:
            raise ValueError(f"{name} must be an int in [1, 8192], got {value!r}")


def render(scene, world_T_cam, K, width: int, height: int, supersample: int = 1):
    """See `Scene.render`."""
    from sim.world import RenderResult

    poses, single = check_poses(world_T_cam)
    intrinsics = check_intrinsics(K)
    check_size(width, height)
    if isinstance(supersample, bool) or supersample not in (1, 3, 5):
        raise ValueError(f"supersample must be 1, 3 or 5 (odd, so one sample sits on the pixel centre), got {supersample!r}")
    if supersample > 1:
        # Sub-pixel p of the s-times larger image looks along pixel coordinate (p - (s - 1) / 2) / s.
        s = supersample
        fx, fy, cx, cy = intrinsics
        fine = render(scene, poses, [[fx * s, 0.0, cx * s + (s - 1) / 2], [0.0, fy * s, cy * s + (s - 1) / 2], [0.0, 0.0, 1.0]],
                      width * s, height * s)
        blocks = fine.rgb.reshape(len(poses), height, s, width, s, 3).astype(np.float32).mean(axis=(2, 4))
        return RenderResult(rgb=np.rint(blocks).astype(np.uint8), depth=fine.depth[:, s // 2::s, s // 2::s].copy())
    under = poses[:, 1, 3] >= 0
    if under.any():
        i = int(np.flatnonzero(under)[0])
        raise ValueError(f"camera {i} is at y = {poses[i, 1, 3]:.3f}, at or below the ground plane y = 0 (y points down)")
    # Even batches of at most MAX_RAYS_PER_BATCH rays (33 frames -> 11 + 11 + 11, not 16 + 16 + 1).
    n_batches = -(-len(poses) // max(1, MAX_RAYS_PER_BATCH // (width * height)))
    per_batch = -(-len(poses) // n_batches)
    rgb = np.empty((len(poses), height, width, 3), dtype=np.uint8)
    depth = np.empty((len(poses), height, width), dtype=np.float32)
    # Misses carry t = inf through the hit-point arithmetic (inf * 0 = nan); those values are never used.
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for start in range(0, len(poses), per_batch):
            stop = min(start + per_batch, len(poses))
            rgb[start:stop], depth[start:stop] = _render_batch(scene, poses[start:stop], intrinsics, width, height)
    return RenderResult(rgb=rgb, depth=depth)


def _render_batch(scene, poses: np.ndarray, intrinsics, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    fx, fy, cx, cy = intrinsics
    n, hw = len(poses), width * height
    f32 = np.float32
    # 1. Rays: unit camera-z directions, turned into the world. Colours are kept as one array per
    # channel because numpy is far slower on [R, 3] arrays with a broadcast channel axis.
    u = ((np.arange(width) - cx) / fx).astype(f32)
    v = ((np.arange(height) - cy) / fy).astype(f32)
    uu, vv = np.tile(u, height), np.repeat(v, width)  # [HW]
    rot = poses[:, :3, :3].astype(f32)
    dx = (rot[:, 0, 0, None] * uu + rot[:, 0, 1, None] * vv + rot[:, 0, 2, None]).reshape(-1)  # [R = N*HW]
    dy = (rot[:, 1, 0, None] * uu + rot[:, 1, 1, None] * vv + rot[:, 1, 2, None]).reshape(-1)
    dz = (rot[:, 2, 0, None] * uu + rot[:, 2, 1, None] * vv + rot[:, 2, 2, None]).reshape(-1)
    origin = poses[:, :3, 3]  # [N, 3] float64
    ox, oy, oz = (np.repeat(origin[:, i].astype(f32), hw) for i in range(3))  # [R]

    # 2. Ground plane y = 0 (the camera is above it, y < 0), then objects.
    depth = np.full(n * hw, np.inf, dtype=f32)
    np.divide(-oy, dy, out=depth, where=dy > 1e-7)
    obj, nx, ny, nz = _trace_objects(scene, poses, intrinsics, width, height, dx, dy, dz, depth)

    # 3. Sky colour of every direction; below the horizon it is the horizon colour, the fog's colour.
    theme = scene.theme
    inv_len = 1.0 / np.sqrt(dx * dx + dy * dy + dz * dz)
    elevation = np.clip(-dy * inv_len, 0.0, 1.0)
    # Fog also veils the sky: the gradient and the clouds fade towards the horizon colour.
    sky_clear = math.exp(-25.0 * scene.fog_density)
    rise = np.sqrt(elevation) * f32(sky_clear)
    sun = scene.sun_dir
    cos_sun = (dx * sun[0] + dy * sun[1] + dz * sun[2]) * inv_len
    c2 = np.maximum(cos_sun, 0.0)
    c2 *= c2
    c8 = c2 * c2
    c8 *= c8
    c64 = c8 * c8
    c64 *= c64
    c64 *= c64
    glow = f32(0.22) * c8 + f32(0.35) * c64
    sky = [f32(h) + f32(z - h) * rise + f32(s) * glow for z, h, s in zip(theme.sky_zenith, theme.sky_horizon, theme.sun_color)]
    rgb = [channel.copy() for channel in sky]
    is_sky = np.isinf(depth)

    # 4. Ground: baked lit texture times fine detail, the mip level from the pixel's footprint.
    ground = np.flatnonzero((obj < 0) & ~is_sky)
    if len(ground):
        t = depth[ground]
        gx = ox[ground] + t * dx[ground]
        gz = oz[ground] + t * dz[ground]
        il = inv_len[ground]
        footprint = t / (il * fx * np.sqrt(np.maximum(dy[ground] * il, 1e-3)))
        (detail,) = scene.detail.sample(gx, gz, footprint)
        for channel, value in zip(rgb, scene.ground.sample(gx, gz, footprint)):
            channel[ground] = value * detail

    # 5. Objects: albedo x surface pattern x (ambient + lambert sun).
    hit = np.flatnonzero(obj >= 0)
    if len(hit):
        m = obj[hit]
        wx, wy, wz = nx[hit], ny[hit], nz[hit]
        norm = 1.0 / np.sqrt(wx * wx + wy * wy + wz * wz)
        cos_n = (wx * sun[0] + wy * sun[1] + wz * sun[2]) * norm
        # Faces turned down see less sky.
        sky_view = f32(0.82) - f32(0.18) * wy * norm
        t = depth[hit]
        px = ox[hit] + t * dx[hit]
        py = oy[hit] + t * dy[hit]
        pz = oz[hit] + t * dz[hit]
        footprint = t / inv_len[hit] * f32(0.4 / fx)
        # Project the pattern along the normal's dominant axis (no stretched stripes on any face).
        ax, ay, az = np.abs(wx), np.abs(wy), np.abs(wz)
        facing_y = ay >= np.maximum(ax, az)
        facing_x = ~facing_y & (ax >= az)
        tex_u = np.where(facing_x, pz, px) * f32(0.4)
        tex_v = np.where(facing_y, pz, py) * f32(0.4)
        (pattern,) = scene.detail.sample(tex_u, tex_v, footprint)
        pattern = f32(1.0) + (pattern - f32(1.0)) * (scene.prims.texture[m] / f32(max(theme.grain, 0.05)))
        ambient, direct = light_terms(theme)
        lambert = np.maximum(cos_n, 0.0)
        for i, channel in enumerate(rgb):
            light = ambient[i] * sky_view + direct[i] * lambert
            channel[hit] = scene.prims.colour[m, i] * pattern * light

    # 6. Haze: exponential fog plus a ramp that reaches the horizon colour at the far distance. Sky
    # rays (depth inf) get the plain sky gradient here and their clouds and sun just below.
    dist = depth / inv_len
    clear = np.exp(f32(-scene.fog_density) * dist) * (f32(1.0) - smoothstep(0.5 * scene.far, scene.far, dist))
    for channel, fog in zip(rgb, sky):
        channel -= fog
        channel *= clear
        channel += fog
    sky_rays = np.flatnonzero(is_sky)
    if len(sky_rays):
        details = _sky_details(scene, [c[sky_rays] for c in sky], elevation[sky_rays], cos_sun[sky_rays],
                               dx[sky_rays], dy[sky_rays], dz[sky_rays], ox[sky_rays], oz[sky_rays], fx)
        for channel, value in zip(rgb, details):
            channel[sky_rays] = value

    image = np.empty((n * hw, 3), dtype=np.uint8)
    for i, channel in enumerate(rgb):
        channel *= f32(255.0)
        channel += f32(0.5)
        np.clip(channel, 0.0, 255.0, out=channel)
        image[:, i] = channel
    return image.reshape(n, height, width, 3), depth.reshape(n, height, width)


def _sky_details(scene, sky, elevation, cos_sun, dx, dy, dz, ox, oz, fx) -> list[np.ndarray]:
    """Clouds on a high plane and the sun disc over the sky gradient, for sky rays only."""
    theme = scene.theme
    f32 = np.float32
    up = np.flatnonzero(elevation > 0.01)
    if len(up):
        t = f32(CLOUD_HEIGHT_M) / -dy[up]
        length = np.sqrt(dx[up] ** 2 + dy[up] ** 2 + dz[up] ** 2)
        footprint = t * length / (fx * np.sqrt(elevation[up]))
        (cover,) = scene.clouds.sample(ox[up] + t * dx[up], oz[up] + t * dz[up], footprint)
        cover *= f32(0.85 * math.exp(-25.0 * scene.fog_density)) * smoothstep(0.01, 0.12, elevation[up])
        for channel, sun_c, horizon_c in zip(sky, theme.sun_color, theme.sky_horizon):
            shade = f32(0.75 * (0.9 * sun_c + 0.1) + 0.25 * horizon_c)
            part = channel[up]
            channel[up] = part + (shade - part) * cover
    disc = smoothstep(math.cos(math.radians(SUN_RADIUS_DEG * 1.3)), math.cos(math.radians(SUN_RADIUS_DEG)), cos_sun)
    return [channel + (f32(1.3 * sun_c) - channel) * disc for channel, sun_c in zip(sky, theme.sun_color)]


def _trace_objects(scene, poses, intrinsics, width, height, dx, dy, dz, depth):
    """Nearest primitive per ray. Lowers `depth` in place where an object is nearer than the ground.

    Returns obj [R] int32 (primitive index, -1 for none) and the world normal components [R] x 3.
    """
    fx, fy, cx, cy = intrinsics
    n, hw = len(poses), width * height
    prims = scene.prims
    rays = n * hw
    obj = np.full(rays, -1, dtype=np.int32)
    nx = np.zeros(rays, np.float32)
    ny = np.zeros(rays, np.float32)
    nz = np.zeros(rays, np.float32)
    if len(prims) == 0:
        return obj, nx, ny, nz

    # 1. Cull (frame, primitive) candidates by distance, then bound each on screen by its box.
    rel = scene.wrap(prims.centre[None, :, :] - poses[:, None, :3, 3])  # [N, M, 3] centre from camera
    near_enough = np.linalg.norm(rel, axis=2) - prims.bound[None, :] < scene.far
    frame_i, prim_i = np.nonzero(near_enough)
    lo_u, hi_u, lo_v, hi_v = _box_on_screen(poses[frame_i, :3, :3], rel[frame_i, prim_i], prims.half[prim_i],
                                            prims.yaw[prim_i], intrinsics, width, height)
    visible = (hi_u > lo_u) & (hi_v > lo_v)
    frame_i, prim_i, lo_u, hi_u, lo_v, hi_v = (a[visible] for a in (frame_i, prim_i, lo_u, hi_u, lo_v, hi_v))
    rel_c = rel[frame_i, prim_i]  # [C, 3]

    # 2. Intersect every candidate with the rays inside its rectangle, one primitive kind at a time.
    found = []
    kinds = prims.kind[prim_i]
    for kind, intersect in P.INTERSECT.items():
        sel = np.flatnonzero(kinds == kind)
        if len(sel) == 0:
            continue
        w, h = (hi_u - lo_u)[sel], (hi_v - lo_v)[sel]
        area = w * h
        # Ray indices of every (candidate, pixel) pair, row by row: each rectangle row is a run of
        # consecutive rays starting at `row_start`.
        row_owner = np.repeat(np.arange(len(sel)), h)
        row = np.arange(len(row_owner)) - np.repeat(np.cumsum(h) - h, h)
        row_start = frame_i[sel][row_owner] * hw + (lo_v[sel][row_owner] + row) * width + lo_u[sel][row_owner]
        run = w[row_owner]
        ray = np.repeat(row_start - (np.cumsum(run) - run), run) + np.arange(int(area.sum()))
        cand = np.repeat(np.arange(len(sel)), area)
        m = prim_i[sel]
        yaw = prims.yaw[m]
        cos, sin = np.cos(yaw), np.sin(yaw)
        o = -rel_c[sel]
        # Per-candidate values, repeated over each candidate's pairs (pairs are grouped by candidate).
        ox = np.repeat((cos * o[:, 0] - sin * o[:, 2]).astype(np.float32), area)
        oz = np.repeat((sin * o[:, 0] + cos * o[:, 2]).astype(np.float32), area)
        oy = np.repeat(o[:, 1].astype(np.float32), area)
        cc, ss = np.repeat(cos, area), np.repeat(sin, area)
        half = prims.half[m]
        hx, hy, hz = (np.repeat(half[:, i], area) for i in range(3))
        gx, gy, gz = dx[ray], dy[ray], dz[ray]
        t, lnx, lny, lnz = intersect(ox, oy, oz, cc * gx - ss * gz, gy, ss * gx + cc * gz, hx, hy, hz)
        better = t < depth[ray]
        if not better.any():
            continue
        ray, t, cand = ray[better], t[better], cand[better]
        cc, ss, lnx, lny, lnz = cc[better], ss[better], lnx[better], lny[better], lnz[better]
        np.minimum.at(depth, ray, t)
        found.append((ray, m[cand], t, cc * lnx + ss * lnz, lny, cc * lnz - ss * lnx))

    # 3. The winners: pairs whose t is the ray's minimum.
    for ray, m, t, wnx, wny, wnz in found:
        win = t <= depth[ray]
        ray = ray[win]
        obj[ray], nx[ray], ny[ray], nz[ray] = m[win], wnx[win], wny[win], wnz[win]
    return obj, nx, ny, nz


_CORNERS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64).T  # [3, 8]


def _box_on_screen(rot, centre, half, yaw, intrinsics, width, height):
    """Pixel ranges [lo, hi) in u and v that may see each primitive's box ([C] each, empty if hi <= lo).

    rot: [C, 3, 3] camera-to-world rotations; centre: [C, 3] box centres from the camera (world axes).
    The visible part of a box is its part with z >= NEAR_M, whose corners are the box corners in
    front of that plane plus points on the plane with x (y) between the box's extremes. Arrays are
    corner-major ([8, C]) because numpy reduces a short trailing axis slowly.
    """
    fx, fy, cx, cy = intrinsics
    c, s = np.cos(yaw).astype(np.float64), np.sin(yaw).astype(np.float64)  # [C]
    lx, ly, lz = (_CORNERS[i, :, None] * half[None, :, i] for i in range(3))  # [8, C] each
    wx = c * lx + s * lz + centre[:, 0]
    wy = ly + centre[:, 1]
    wz = -s * lx + c * lz + centre[:, 2]
    # Camera coordinates R^T w of every corner.
    cam_x, cam_y, z = (rot[:, 0, i] * wx + rot[:, 1, i] * wy + rot[:, 2, i] * wz for i in range(3))  # [8, C]
    front = z >= NEAR_M
    seen = front.any(axis=0)
    crosses = ~front.all(axis=0)
    inv_z = 1.0 / np.where(front, z, np.inf)
    ranges = []
    for q, f, centre_px, size in ((cam_x, fx, cx, width), (cam_y, fy, cy, height)):
        proj = q * inv_z  # corners behind the plane project to 0 here and are masked below
        lo = np.where(front, proj, np.inf).min(axis=0)
        hi = np.where(front, proj, -np.inf).max(axis=0)
        lo = np.where(crosses, np.minimum(lo, q.min(axis=0) / NEAR_M), lo)
        hi = np.where(crosses, np.maximum(hi, q.max(axis=0) / NEAR_M), hi)
        a = np.clip(np.floor(lo * f + centre_px), 0, size)
        b = np.clip(np.ceil(hi * f + centre_px) + 1, 0, size)
        ranges += [np.where(seen, a, 0).astype(np.int64), np.where(seen, b, 0).astype(np.int64)]
    return ranges
