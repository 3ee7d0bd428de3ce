"""Analytic primitives: ray hits lie on the surface, and signed distances are honest bounds."""
from __future__ import annotations

import numpy as np
import pytest

from sim import primitives as P

HALF = np.array([0.8, 1.3, 0.6], dtype=np.float32)
KINDS = [pytest.param(k, id=name) for k, name in P.KIND_NAMES.items()]


def _half(kind):
    # Cylinders and cones are round: hz = hx.
    return HALF if kind in (P.ELLIPSOID, P.BOX) else np.array([HALF[0], HALF[1], HALF[0]], dtype=np.float32)


def _inside(kind, x, y, z, h):
    if kind == P.ELLIPSOID:
        return (x / h[0]) ** 2 + (y / h[1]) ** 2 + (z / h[2]) ** 2 < 1
    if kind == P.BOX:
        return (np.abs(x) < h[0]) & (np.abs(y) < h[1]) & (np.abs(z) < h[2])
    r = np.hypot(x, z)
    if kind == P.CYLINDER:
        return (r < h[0]) & (np.abs(y) < h[1])
    return (np.abs(y) < h[1]) & (r < h[0] * (y + h[1]) / (2 * h[1]))


@pytest.mark.parametrize("kind", KINDS)
def test_ray_hits_lie_on_the_surface_and_misses_stay_outside(kind):
    rng = np.random.default_rng(0)
    h = _half(kind)
    n = 4000
    o = rng.uniform(-4, 4, size=(n, 3)).astype(np.float32)
    o[:, 2] = rng.choice([-4.0, 4.0], size=n)  # origins outside the primitive
    target = rng.uniform(-1.5, 1.5, size=(n, 3)).astype(np.float32) * h
    d = (target - o) * rng.uniform(0.5, 2.0, size=(n, 1)).astype(np.float32)
    hb = [np.full(n, v, np.float32) for v in h]
    t, nx, ny, nz = P.INTERSECT[kind](*o.T, *d.T, *hb)
    hit = np.isfinite(t)
    assert 0.2 < hit.mean() < 0.95
    p = o[hit] + t[hit, None] * d[hit]
    dist = P.SDF[kind](*p.T.astype(np.float64), *[v[hit] for v in hb])
    assert np.abs(dist).max() < 2e-3
    # The normal points out: a step along it leaves the primitive.
    normal = np.stack([nx[hit], ny[hit], nz[hit]], 1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    out = p + 0.01 * normal
    assert not _inside(kind, *out.T, h).any()
    # Points before the first hit (and along missing rays) are outside.
    s = rng.uniform(0, 1, size=n).astype(np.float32)
    reach = np.where(hit, t, 3.0 * np.linalg.norm(o, axis=1) / np.linalg.norm(d, axis=1))
    q = o + (s * reach * 0.999)[:, None] * d
    assert not _inside(kind, *q.T, h).any()


@pytest.mark.parametrize("kind", KINDS)
def test_signed_distance_sign_and_bound(kind):
    rng = np.random.default_rng(1)
    h = _half(kind).astype(np.float64)
    p = rng.uniform(-2.5, 2.5, size=(3000, 3))
    d = P.SDF[kind](*p.T, *h)
    inside = _inside(kind, *p.T, h)
    assert np.array_equal(d < 0, inside)
    # A ball of radius sdf around an outside point holds no inside point.
    outside = np.flatnonzero(~inside)[:300]
    dirs = rng.normal(size=(len(outside), 64, 3))
    dirs /= np.linalg.norm(dirs, axis=2, keepdims=True)
    probe = p[outside, None, :] + dirs * (0.999 * d[outside, None, None]) * rng.uniform(0, 1, size=(len(outside), 64, 1))
    assert not _inside(kind, *probe.reshape(-1, 3).T, h).any()
