"""Writing videos: uint8 frames to an mp4, atomically (a temporary file renamed at the end), so a
failure never leaves a half-written output behind."""
from __future__ import annotations

import os
from pathlib import Path


def write_mp4(path: str | Path, frames, fps: float) -> str:
    """Encode uint8 [F, H, W, 3] frames with libx264 (mpeg4 where libx264 is missing); returns the codec."""
    import av

    path = Path(path)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.mp4")
    try:
        with av.open(str(tmp), mode="w") as container:
            stream = container.add_stream(codec, rate=round(fps))
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            # yuv420p needs even sizes; odd ones keep full chroma
            stream.pix_fmt = "yuv420p" if frames.shape[1] % 2 == 0 and frames.shape[2] % 2 == 0 else "yuv444p"
            if codec == "libx264":
                stream.options = {"crf": "16", "preset": "medium"}
            else:
                stream.bit_rate = 4_000_000
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return codec
