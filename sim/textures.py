"""Periodic procedural textures and their mip pyramids.

Every texture here tiles seamlessly: noise is made by filtering white noise in the Fourier domain
of a periodic grid, so the world (a torus of side `Scene.period`) has no seams. A `MipTexture`
stores all levels of a pyramid in one flat array so a single gather samples pixels at different
levels at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft


def band_noise(rng: np.random.Generator, size: int, bands: list[tuple[float, float]], slope: float = 1.0) -> list[np.ndarray]:
    """Periodic noise layers, one per frequency band, from one shared white-noise field.

    Args:
        size: side of the square grid (texels).
        bands: (low, high) cycles per grid side for each layer.
        slope: amplitude falls as 1/f**slope inside a band (1 gives natural-looking fractal noise).
    Returns:
        one float32 [size, size] array per band, zero mean and unit standard deviation.
    """
    white = rng.standard_normal((size, size)).astype(np.float32)
    spectrum = scipy.fft.rfft2(white, workers=1)
    fy = np.fft.fftfreq(size, 1.0 / size).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(size, 1.0 / size).astype(np.float32)[None, :]
    freq = np.sqrt(fx * fx + fy * fy)  # [size, size // 2 + 1] cycles per side
    layers = []
    for low, high in bands:
        gain = np.where((freq >= low) & (freq <= high), 1.0 / np.maximum(freq, 1.0) ** slope, 0.0).astype(np.float32)
        layer = scipy.fft.irfft2(spectrum * gain, s=(size, size), workers=1).astype(np.float32)
        layers.append((layer - layer.mean()) / (layer.std() + 1e-12))
    return layers


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """Hermite step from 0 at edge0 to 1 at edge1 (edges may be in either order)."""
    u = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def box_blur_periodic(image: np.ndarray, radius: int) -> np.ndarray:
    """Separable box blur with wrap-around, over the first two axes."""
    if radius <= 0:
        return image
    out = image
    for axis in (0, 1):
        acc = np.zeros_like(out)
        for shift in range(-radius, radius + 1):
            acc += np.roll(out, shift, axis=axis)
        out = acc / (2 * radius + 1)
    return out


@dataclass(frozen=True)
class MipTexture:
    """A square, periodic texture with its full mip pyramid packed in one flat array.

    texels: [sum of side_l**2] uint32 (RGBA bytes) or float32 (one channel), level l of side
    `size >> l` starting at `offsets[l]`. `texel_m` is the side of one level-0 texel in metres.
    """

    texels: np.ndarray
    offsets: np.ndarray  # [levels] int32
    size: int
    texel_m: float

    @property
    def levels(self) -> int:
        return len(self.offsets)

    @classmethod
    def from_image(cls, image: np.ndarray, texel_m: float) -> MipTexture:
        """image: [S, S, 3] float in [0, 1] (packed as RGBA8) or [S, S] float (kept as float32)."""
        size = image.shape[0]
        if image.shape[1] != size or size & (size - 1):
            raise ValueError(f"texture must be square with a power-of-two side, got {image.shape}")
        pyramid = [image.astype(np.float32)]
        while pyramid[-1].shape[0] > 1:
            a = pyramid[-1]
            pyramid.append(0.25 * (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]))
        if image.ndim == 3:
            flat = [_pack_rgba(level.reshape(-1, 3)) for level in pyramid]
        else:
            flat = [level.reshape(-1) for level in pyramid]
        sizes = np.array([len(f) for f in flat], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
        return cls(texels=np.concatenate(flat), offsets=offsets, size=size, texel_m=float(texel_m))

    def sample(self, x: np.ndarray, z: np.ndarray, footprint_m: np.ndarray) -> list[np.ndarray]:
        """Sample at world (x, z) metres (any value: the texture wraps) with a pixel footprint in
        metres, which picks the mip level. Bilinear within the level, nearest between levels.

        Returns the channels as float32 [P] arrays: [r, g, b] in [0, 1] for RGBA textures, [value]
        for one-channel ones.
        """
        level = _floor_log2(footprint_m * np.float32(1.0 / self.texel_m))
        np.clip(level, 0, self.levels - 1, out=level)
        side = (np.int32(self.size) >> level)  # [P]
        scale = side.astype(np.float32) * np.float32(1.0 / (self.texel_m * self.size))  # texels of this level per metre
        u = x * scale - np.float32(0.5)
        v = z * scale - np.float32(0.5)
        u0 = np.floor(u)
        v0 = np.floor(v)
        fu = u - u0
        fv = v - v0
        mask = side - 1
        iu0 = u0.astype(np.int32) & mask
        iv0 = v0.astype(np.int32) & mask
        iu1 = (iu0 + 1) & mask
        iv1 = (iv0 + 1) & mask
        base = self.offsets[level]
        row0 = base + iv0 * side
        row1 = base + iv1 * side
        corners = [self._fetch(row0 + iu0), self._fetch(row0 + iu1), self._fetch(row1 + iu0), self._fetch(row1 + iu1)]
        out = []
        for c00, c10, c01, c11 in zip(*corners):
            top = c00 + (c10 - c00) * fu
            bottom = c01 + (c11 - c01) * fu
            out.append(top + (bottom - top) * fv)
        return out

    def _fetch(self, index: np.ndarray) -> list[np.ndarray]:
        values = np.take(self.texels, index)
        if self.texels.dtype == np.uint32:
            rgba = values.view(np.uint8).reshape(-1, 4)
            return [rgba[:, i].astype(np.float32) * np.float32(1.0 / 255.0) for i in range(3)]
        return [values]


def _pack_rgba(rgb: np.ndarray) -> np.ndarray:
    """[P, 3] float in [0, 1] -> [P] uint32 holding RGBA bytes (A = 255)."""
    rgba = np.empty((rgb.shape[0], 4), dtype=np.uint8)
    rgba[:, :3] = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    rgba[:, 3] = 255
    return rgba.view(np.uint32).reshape(-1)


def _floor_log2(x: np.ndarray) -> np.ndarray:
    """floor(log2(x)) for positive float32 x via the exponent bits (np.log2 is ~20x slower); <= 0 -> 0."""
    bits = np.maximum(x, 1.0).astype(np.float32).view(np.int32)
    return (bits >> 23) - 127
