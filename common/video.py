"""Writing videos: uint8 frames to an mp4, atomically (a temporary file, fsynced, renamed at the
end), so a failure or a crash never leaves a half-written output behind. The one mp4 writer of the
project: offline videos (generate, ui, render) and the recorder's per-chunk segments use it."""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np


def write_mp4(path: str | Path, frames: np.ndarray, fps: float, crf: int = 16, preset: str = "medium") -> str:
    """Encode uint8 [F, H, W, 3] frames with libx264 (mpeg4 where libx264 is missing); returns the codec.

    Even sizes are yuv420p (what every player takes); odd ones, which yuv420p cannot hold, keep
    full chroma (yuv444p). `crf` and `preset` are libx264's quality and speed settings.
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 [F, H, W, 3] with F >= 1, got {frames.dtype} {frames.shape}")
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be positive and finite, got {fps!r}")
    path = Path(path)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p" if frames.shape[1] % 2 == 0 and frames.shape[2] % 2 == 0 else "yuv444p"
            if codec == "libx264":
                stream.options = {"crf": str(crf), "preset": preset}
            else:
                stream.bit_rate = 4_000_000
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return codec
