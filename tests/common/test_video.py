"""The one mp4 writer: even and odd sizes round-trip, bad input is refused, a failure leaves no file."""
from __future__ import annotations

import av
import numpy as np
import pytest

from common.video import write_mp4


def _frames(n: int, h: int, w: int) -> np.ndarray:
    return np.stack([np.full((h, w, 3), 20 + 9 * i, np.uint8) for i in range(n)])


@pytest.mark.parametrize("h, w, pix_fmt", [pytest.param(48, 64, "yuv420p", id="even"), pytest.param(47, 63, "yuv444p", id="odd")])
def test_write_mp4_round_trips(tmp_path, h, w, pix_fmt):
    frames = _frames(5, h, w)
    out = tmp_path / "sub" / "clip.mp4"
    codec = write_mp4(out, frames, 16.0, crf=18, preset="veryfast")
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name in (codec, "h264") and stream.codec_context.pix_fmt == pix_fmt
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    assert decoded.shape == frames.shape and np.abs(decoded.astype(int) - frames.astype(int)).mean() < 4
    assert [p.name for p in out.parent.iterdir()] == ["clip.mp4"]


def test_write_mp4_refuses_bad_input_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(tmp_path / "a.mp4", np.zeros((2, 8, 8, 3), np.float32), 16.0)
    with pytest.raises(ValueError, match="fps"):
        write_mp4(tmp_path / "b.mp4", _frames(2, 8, 8), 0.0)
    with pytest.raises(Exception):
        write_mp4(tmp_path / "c.mp4", _frames(2, 8, 8), 16.0, preset="no-such-preset")
    assert list(tmp_path.iterdir()) == []
