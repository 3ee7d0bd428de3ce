"""The aiortc video track fed by a session's frame buffer, and the encoder bitrate patch.

`GeneratedVideoTrack.recv()` is the WebRTC playout clock: aiortc's sender awaits it once per frame,
so it returns frames at the pacer's rate (pts on the 90 kHz clock from the real time each frame is
released, strictly increasing) and never runs model work.
"""
from __future__ import annotations

import fractions
from collections.abc import Callable

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from streaming.buffer import VIDEO_CLOCK_HZ, BufferClosed, Pacer, StreamFrame

TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_HZ)


def patch_encoder_bitrates(default_bps: int, max_bps: int) -> None:
    """Raise aiortc's VP8 and H.264 bitrate constants (module globals read per encoder) for localhost.

    aiortc has no bitrate API and ignores b=AS; REMB estimates are clamped to these constants, and
    its defaults (VP8 0.5 Mbit/s start) give a blurry start on a link that can carry far more.
    Must run before any peer connection creates an encoder.
    """
    from aiortc.codecs import h264, vpx

    for module in (vpx, h264):
        module.DEFAULT_BITRATE = default_bps
        module.MAX_BITRATE = max(max_bps, default_bps)
        module.MIN_BITRATE = min(module.MIN_BITRATE, default_bps)


class GeneratedVideoTrack(MediaStreamTrack):
    """A video track that plays one session's generated frames.

    Args:
        pacer: releases frames at the video fps from the session's buffer.
        on_frame: called with each frame as it is handed to the encoder (telemetry).
    """

    kind = "video"

    def __init__(self, pacer: Pacer, on_frame: Callable[[StreamFrame], None] | None = None):
        super().__init__()
        self.pacer = pacer
        self.on_frame = on_frame

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        try:
            frame, pts = await self.pacer.next_frame()
        except BufferClosed:
            self.stop()
            raise MediaStreamError from None
        video = av.VideoFrame.from_ndarray(frame.image, format="rgb24")
        video.pts = pts
        video.time_base = TIME_BASE
        if self.on_frame is not None:
            self.on_frame(frame)
        return video
