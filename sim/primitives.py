"""Analytic primitives: ray intersection and signed distance, in each primitive's local frame.

Local frame: the primitive's centre at the origin, its axes those of the world turned by its yaw
about y (y points down, as in the world). `half` holds the half-extents (hx, hy, hz):
  ELLIPSOID  radii (hx, hy, hz)
  BOX        half-sides (hx, hy, hz)
  CYLINDER   vertical axis, radius hx (= hz), from y = -hy (top) to y = +hy (bottom)
  CONE       vertical axis, apex at y = -hy (top), base of radius hx (= hz) at y = +hy

Rays are `o + t d` with unnormalised d, so t keeps the caller's units (the renderer passes rays
with unit camera-z, which makes t the z-depth). Every function is vectorised over P rays or
points given as separate component arrays (float32 [P]); misses return t = inf.
"""
from __future__ import annotations

import numpy as np

ELLIPSOID, BOX, CYLINDER, CONE = 0, 1, 2, 3
KIND_NAMES = {ELLIPSOID: "ellipsoid", BOX: "box", CYLINDER: "cylinder", CONE: "cone"}
T_MIN = 1e-4

_INF = np.float32(np.inf)


def _safe(d: np.ndarray) -> np.ndarray:
    """d with zeros nudged to a tiny value of the same sign, so 1/d is finite."""
    return np.where(np.abs(d) < 1e-12, np.where(d < 0, -1e-12, 1e-12), d).astype(np.float32)


def intersect_ellipsoid(ox, oy, oz, dx, dy, dz, hx, hy, hz):
    """Nearest hit t > T_MIN and the outward local normal (unnormalised) [P] x 4."""
    # Scale space so the ellipsoid becomes the unit sphere; t is unchanged by the scaling.
    sx, sy, sz = ox / hx, oy / hy, oz / hz
    ex, ey, ez = dx / hx, dy / hy, dz / hz
    a = ex * ex + ey * ey + ez * ez
    b = sx * ex + sy * ey + sz * ez
    c = sx * sx + sy * sy + sz * sz - 1.0
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    t = (-b - root) / a
    t = np.where(t > T_MIN, t, (-b + root) / a)
    t = np.where((disc >= 0) & (t > T_MIN), t, _INF)
    px, py, pz = ox + t * dx, oy + t * dy, oz + t * dz
    return t, px / (hx * hx), py / (hy * hy), pz / (hz * hz)


def intersect_box(ox, oy, oz, dx, dy, dz, hx, hy, hz):
    """Slab test. Nearest hit t > T_MIN and the outward local normal [P] x 4."""
    near = np.full(ox.shape, -np.inf, dtype=np.float32)
    far = np.full(ox.shape, np.inf, dtype=np.float32)
    axis = np.zeros(ox.shape, dtype=np.int8)
    sign = np.zeros(ox.shape, dtype=np.float32)
    for i, (o, d, h) in enumerate(((ox, dx, hx), (oy, dy, hy), (oz, dz, hz))):
        inv = 1.0 / _safe(d)
        t1 = (-h - o) * inv
        t2 = (h - o) * inv
        lo = np.minimum(t1, t2)
        hi = np.maximum(t1, t2)
        better = lo > near
        near = np.where(better, lo, near)
        axis = np.where(better, np.int8(i), axis)
        sign = np.where(better, -np.sign(d), sign)
        far = np.minimum(far, hi)
    hit = (near <= far) & (far > T_MIN)
    t = np.where(hit, np.where(near > T_MIN, near, far), _INF)
    return t, np.where(axis == 0, sign, 0.0), np.where(axis == 1, sign, 0.0), np.where(axis == 2, sign, 0.0)


def intersect_cylinder(ox, oy, oz, dx, dy, dz, hx, hy, hz):
    """Capped vertical cylinder. Nearest hit t > T_MIN and the outward local normal [P] x 4."""
    r2 = hx * hx
    a = np.maximum(dx * dx + dz * dz, 1e-20)
    b = ox * dx + oz * dz
    c = ox * ox + oz * oz - r2
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    t_side = (-b - root) / a
    y_side = oy + t_side * dy
    side_ok = (disc >= 0) & (t_side > T_MIN) & (np.abs(y_side) <= hy)
    t_side = np.where(side_ok, t_side, _INF)
    # The cap a ray enters through faces it: the top one (y = -hy) for rays going down (+y).
    cap_sign = np.where(dy > 0, -1.0, 1.0).astype(np.float32)
    t_cap = (cap_sign * hy - oy) / _safe(dy)
    cx, cz = ox + t_cap * dx, oz + t_cap * dz
    cap_ok = (t_cap > T_MIN) & (cx * cx + cz * cz <= r2)
    t_cap = np.where(cap_ok, t_cap, _INF)
    use_cap = t_cap < t_side
    t = np.minimum(t_side, t_cap)
    nx = np.where(use_cap, 0.0, ox + t_side * dx)
    nz = np.where(use_cap, 0.0, oz + t_side * dz)
    ny = np.where(use_cap, cap_sign, 0.0)
    return t, nx, ny, nz


def intersect_cone(ox, oy, oz, dx, dy, dz, hx, hy, hz):
    """Vertical cone, apex up, with its base disc. Nearest hit t > T_MIN and local normal [P] x 4."""
    k = hx / (2.0 * hy)  # radius per metre of height below the apex
    k2 = k * k
    yy = oy + hy  # height below the apex
    a = dx * dx + dz * dz - k2 * dy * dy
    b = ox * dx + oz * dz - k2 * yy * dy
    c = ox * ox + oz * oz - k2 * yy * yy
    a = np.where(np.abs(a) < 1e-12, 1e-12, a)
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    t1 = (-b - root) / a
    t2 = (-b + root) / a
    lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
    h_lo = yy + lo * dy
    h_hi = yy + hi * dy
    span = 2.0 * hy
    # Only the lower nappe between apex and base counts.
    lo_ok = (disc >= 0) & (lo > T_MIN) & (h_lo >= 0) & (h_lo <= span)
    hi_ok = (disc >= 0) & (hi > T_MIN) & (h_hi >= 0) & (h_hi <= span)
    t_side = np.where(lo_ok, lo, np.where(hi_ok, hi, _INF))
    t_base = (hy - oy) / _safe(dy)
    bx, bz = ox + t_base * dx, oz + t_base * dz
    base_ok = (dy < 0) & (t_base > T_MIN) & (bx * bx + bz * bz <= hx * hx)
    t_base = np.where(base_ok, t_base, _INF)
    use_base = t_base < t_side
    t = np.minimum(t_side, t_base)
    px, pz = ox + t_side * dx, oz + t_side * dz
    py = yy + t_side * dy
    nx = np.where(use_base, 0.0, px)
    ny = np.where(use_base, 1.0, -k2 * py)
    nz = np.where(use_base, 0.0, pz)
    return t, nx, ny, nz


INTERSECT = {ELLIPSOID: intersect_ellipsoid, BOX: intersect_box, CYLINDER: intersect_cylinder, CONE: intersect_cone}


def sdf_ellipsoid(px, py, pz, hx, hy, hz):
    """A lower bound of the signed distance to the ellipsoid (exact for spheres)."""
    return (np.sqrt((px / hx) ** 2 + (py / hy) ** 2 + (pz / hz) ** 2) - 1.0) * np.minimum(np.minimum(hx, hy), hz)


def sdf_box(px, py, pz, hx, hy, hz):
    qx, qy, qz = np.abs(px) - hx, np.abs(py) - hy, np.abs(pz) - hz
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2 + np.maximum(qz, 0) ** 2)
    return outside + np.minimum(np.maximum(np.maximum(qx, qy), qz), 0.0)


def sdf_cylinder(px, py, pz, hx, hy, hz):
    qr = np.sqrt(px * px + pz * pz) - hx
    qy = np.abs(py) - hy
    return np.sqrt(np.maximum(qr, 0) ** 2 + np.maximum(qy, 0) ** 2) + np.minimum(np.maximum(qr, qy), 0.0)


def sdf_cone(px, py, pz, hx, hy, hz):
    """Exact signed distance to the solid cone: the 2D distance to its (radius, height) triangle."""
    r = np.sqrt(px * px + pz * pz)
    # Triangle in the (r, y) half-plane: apex A = (0, -hy), base corner B = (hx, hy), axis foot C = (0, hy).
    ax, ay = 0.0, -hy
    bx, by = hx, hy
    ex, ey = bx - ax, by - ay
    t = np.clip(((r - ax) * ex + (py - ay) * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    d_slant = np.sqrt((r - ax - t * ex) ** 2 + (py - ay - t * ey) ** 2)
    d_base = np.sqrt((r - np.clip(r, 0.0, hx)) ** 2 + (py - hy) ** 2)
    # Axis points lie inside the solid of revolution, so the axis edge never bounds the distance.
    dist = np.minimum(d_slant, d_base)
    # Inside: below the slant line and above the base.
    inside = (py <= hy) & ((r - ax) * ey - (py - ay) * ex <= 0)
    return np.where(inside, -dist, dist)


SDF = {ELLIPSOID: sdf_ellipsoid, BOX: sdf_box, CYLINDER: sdf_cylinder, CONE: sdf_cone}
