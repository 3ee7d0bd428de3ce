"""Baked ground appearance: albedo, paths, pebbles and sun shadows in one periodic texture.

The scene is static and the ground is a lambertian plane lit by one sun, so its shaded colour does
not depend on the viewer: it is baked once per scene into a world-space `MipTexture` that tiles
with the world's period. Object shadows are found by casting a ray from ground samples towards the
sun; each primitive only tests the samples inside its own shadow footprint, laid out along the sun's
azimuth so that long dusk shadows stay cheap.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.ndimage

from sim import primitives as P
from sim.textures import MipTexture, band_noise, box_blur_periodic, smoothstep
from sim.themes import Theme

GROUND_TEXELS = 1024
SHADOW_TEXELS = 256
OCCLUSION_TEXELS = 512
OCCLUSION_REACH_M = 1.2  # how far from an object's foot the ground darkens
DETAIL_TEXELS = 256
DETAIL_TEXEL_M = 0.015
CLOUD_TEXELS = 256
CLOUD_TEXEL_M = 12.0


def light_terms(theme: Theme) -> tuple[np.ndarray, np.ndarray]:
    """The light model, ([3], [3]) float32: a sky-tinted ambient term and the sun's colour; a surface
    receives ambient + direct * max(cos(normal, sun), 0) * visibility."""
    ambient = theme.exposure * theme.ambient * (0.55 + 0.45 * np.asarray(theme.sky_horizon, dtype=np.float32))
    direct = theme.exposure * (1.0 - theme.ambient) * 1.4 * np.asarray(theme.sun_color, dtype=np.float32)
    return ambient.astype(np.float32), direct.astype(np.float32)


def bake_ground(rng: np.random.Generator, theme: Theme, prims, sun_dir: np.ndarray, period: float) -> MipTexture:
    """The lit ground colour of the whole period, [S, S, 3] (row = z, column = x), as a MipTexture."""
    size = GROUND_TEXELS
    texel = period / size
    broad, mid, fine, grain = band_noise(rng, size, [(1, 4), (4, 24), (24, 128), (128, 512)])
    (speckle,) = band_noise(rng, size, [(180, 512)], slope=0.0)
    x = (np.arange(size, dtype=np.float32) + 0.5) * texel
    X, Z = np.meshgrid(x, x)  # [S, S] metres, row = z

    patch = smoothstep(-0.25, 0.35, broad + 0.6 * mid)
    albedo = [np.float32(g) + np.float32(p - g) * patch for g, p in zip(theme.ground, theme.ground_patch)]
    # Winding paths: bands around periodic sine curves, with ragged edges.
    for axis in range(int(rng.integers(1, 3))):
        along, across = (X, Z) if axis == 0 else (Z, X)
        k1, k2 = int(rng.integers(1, 3)), int(rng.integers(2, 5))
        w1, w2 = np.float32(2 * math.pi * k1 / period), np.float32(2 * math.pi * k2 / period)
        offset = (rng.uniform(0, period)
                  + rng.uniform(3, 9) * np.sin(w1 * along + np.float32(rng.uniform(0, 6.3)))
                  + rng.uniform(1, 3) * np.sin(w2 * along + np.float32(rng.uniform(0, 6.3))))
        half_period = np.float32(period / 2)
        gap = np.abs(np.mod(across - offset + half_period, np.float32(period)) - half_period) + np.float32(0.25) * fine
        width = rng.uniform(0.6, 1.2)
        on_path = smoothstep(width, 0.7 * width, gap)
        albedo = [a + (np.float32(p) - a) * on_path for a, p in zip(albedo, theme.ground_path)]
    variation = 1.0 + np.float32(0.10) * mid + np.float32(0.12) * fine + np.float32(0.08) * grain
    pebbles = smoothstep(2.3, 2.8, speckle)
    pebble_shade = 1.0 + np.float32(0.2) * grain
    albedo = [a * variation + (np.float32(p) * pebble_shade - a * variation) * pebbles for a, p in zip(albedo, theme.pebble)]

    lit = _shadow_map(prims, sun_dir, period)
    lit = scipy.ndimage.zoom(lit, size / lit.shape[0], order=1, mode="grid-wrap", grid_mode=True)
    open_sky = _occlusion_map(prims, period)
    open_sky = scipy.ndimage.zoom(open_sky, size / open_sky.shape[0], order=1, mode="grid-wrap", grid_mode=True)
    ambient, direct = light_terms(theme)
    sun = np.float32(-float(sun_dir[1])) * lit * (0.5 + 0.5 * open_sky)
    colour = np.stack([a * (ambient[i] * open_sky + direct[i] * sun) for i, a in enumerate(albedo)], axis=-1)
    return MipTexture.from_image(np.clip(colour, 0.0, 1.0), texel)


def bake_detail(rng: np.random.Generator, grain: float) -> MipTexture:
    """Fine multiplicative ground detail around 1 (grass blades, grains), periodic over 3.84 m."""
    (noise,) = band_noise(rng, DETAIL_TEXELS, [(6, 128)], slope=0.5)
    return MipTexture.from_image(1.0 + grain * np.clip(noise, -2.5, 2.5) / 2.5, DETAIL_TEXEL_M)


def bake_clouds(rng: np.random.Generator, cover: float) -> MipTexture:
    """Cloud opacity in [0, 1] on a plane high above, periodic over 3 km."""
    (noise,) = band_noise(rng, CLOUD_TEXELS, [(2, 48)], slope=1.2)
    threshold = 1.2 - 2.0 * cover
    return MipTexture.from_image(smoothstep(threshold, threshold + 1.2, noise), CLOUD_TEXEL_M)


def _shadow_map(prims, sun_dir: np.ndarray, period: float) -> np.ndarray:
    """Sun visibility of the ground, [SHADOW_TEXELS, SHADOW_TEXELS] float32 in [0, 1] (1 = lit)."""
    size = SHADOW_TEXELS
    texel = period / size
    step = 0.75 * texel
    shadow = np.zeros(size * size, dtype=np.float32)
    if len(prims) == 0:
        return np.ones((size, size), np.float32)
    sin_e = -float(sun_dir[1])
    azimuth = np.array([sun_dir[0], sun_dir[2]]) / math.hypot(sun_dir[0], sun_dir[2])
    side = np.array([-azimuth[1], azimuth[0]])
    # Each primitive's shadow lies within its bounding sphere's shadow: an ellipse around the
    # ground point below the centre along the sun ray, r wide and r / sin(elevation) long.
    centre = prims.centre
    foot = centre[:, [0, 2]] - (centre[:, 1] / float(sun_dir[1]))[:, None] * np.array([sun_dir[0], sun_dir[2]])
    r = prims.bound.astype(np.float64)
    n_long = np.ceil(2 * r / sin_e / step).astype(np.int64) + 1
    n_wide = np.ceil(2 * r / step).astype(np.int64) + 1
    counts = n_long * n_wide
    owner = np.repeat(np.arange(len(prims)), counts)
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    a = (local // n_wide[owner]) * step - r[owner] / sin_e
    b = (local % n_wide[owner]) * step - r[owner]
    gx = foot[owner, 0] + a * azimuth[0] + b * side[0]
    gz = foot[owner, 1] + a * azimuth[1] + b * side[1]
    # Snap samples to texel centres so the test matches the texel they darken.
    ix = np.floor(gx / texel).astype(np.int64)
    iz = np.floor(gz / texel).astype(np.int64)
    ox = (ix + 0.5) * texel - centre[owner, 0]
    oz = (iz + 0.5) * texel - centre[owner, 2]
    oy = -centre[owner, 1]
    c, s = np.cos(prims.yaw[owner]), np.sin(prims.yaw[owner])
    lx, lz = c * ox - s * oz, s * ox + c * oz
    dx, dz = c * sun_dir[0] - s * sun_dir[2], s * sun_dir[0] + c * sun_dir[2]
    dy = np.full_like(lx, sun_dir[1])
    half = prims.half[owner]
    hit = np.zeros(len(owner), dtype=bool)
    kinds = prims.kind[owner]
    for kind, intersect in P.INTERSECT.items():
        sel = kinds == kind
        if sel.any():
            f32 = [v[sel].astype(np.float32) for v in (lx, oy, lz, dx, dy, dz, half[:, 0], half[:, 1], half[:, 2])]
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                t = intersect(*f32)[0]
            hit[sel] = np.isfinite(t)
    index = (iz[hit] & (size - 1)) * size + (ix[hit] & (size - 1))
    shadow[index] = 1.0
    lit = 1.0 - shadow.reshape(size, size)
    return box_blur_periodic(lit, 1)


def _occlusion_map(prims, period: float) -> np.ndarray:
    """How much sky the ground sees near objects standing on it, [OCCLUSION_TEXELS]^2 in (0, 1].

    Ground close to an object's foot is darkened by 1 - 0.45 exp(-d / 0.3 m), d the distance from a
    point just above the ground to the object (its signed distance), so objects look grounded.
    """
    size = OCCLUSION_TEXELS
    texel = period / size
    occlusion = np.zeros(size * size, dtype=np.float32)
    bottom = prims.centre[:, 1] + prims.half[:, 1]
    standing = np.flatnonzero(bottom > -0.2)
    if len(standing) == 0:
        return np.ones((size, size), np.float32)
    reach = np.hypot(prims.half[standing, 0], prims.half[standing, 2]).astype(np.float64) + OCCLUSION_REACH_M
    n_side = np.ceil(2 * reach / texel).astype(np.int64) + 1
    counts = n_side * n_side
    owner = np.repeat(np.arange(len(standing)), counts)
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    prim = standing[owner]
    ix = np.floor((prims.centre[prim, 0] - reach[owner]) / texel).astype(np.int64) + local % n_side[owner]
    iz = np.floor((prims.centre[prim, 2] - reach[owner]) / texel).astype(np.int64) + local // n_side[owner]
    ox = (ix + 0.5) * texel - prims.centre[prim, 0]
    oz = (iz + 0.5) * texel - prims.centre[prim, 2]
    oy = -0.05 - prims.centre[prim, 1]
    c, s = np.cos(prims.yaw[prim]), np.sin(prims.yaw[prim])
    lx, lz = c * ox - s * oz, s * ox + c * oz
    half = prims.half[prim].astype(np.float64)
    dist = np.full(len(prim), np.inf)
    kinds = prims.kind[prim]
    for kind, sdf in P.SDF.items():
        sel = kinds == kind
        if sel.any():
            dist[sel] = sdf(lx[sel], oy[sel], lz[sel], half[sel, 0], half[sel, 1], half[sel, 2])
    darkening = (0.45 * np.exp(-np.maximum(dist, 0.0) / 0.3)).astype(np.float32)
    np.maximum.at(occlusion, (iz & (size - 1)) * size + (ix & (size - 1)), darkening)
    return 1.0 - occlusion.reshape(size, size)
