"""Two aiortc peers in one process: the page's side (a client peer) and the server's, through /offer."""
from __future__ import annotations

import asyncio
import math

import pytest

from app.config import StreamConfig
from app.server import SESSIONS, WORKER
from tests.app.helpers import WebRTCClient, fake_runtime, serve, tiny_runtime, wait_for

FORWARD = 1


pytestmark = pytest.mark.usefixtures("fast_stun")


async def _walk_forward(runtime, n_frames: int = 40):
    async with serve(runtime) as (url, app):
        client = WebRTCClient()
        try:
            response, answer = await client.connect(url)
            assert response.status == 200, answer
            await client.wait_open()
            # Hold FORWARD (sent at 30 Hz like the page's coalesced snapshots) while frames arrive.
            async def hold():
                while True:
                    client.send_input(FORWARD)
                    await asyncio.sleep(1 / 30)

            sender = asyncio.ensure_future(hold())
            try:
                frames = await client.frames(n_frames)
            finally:
                sender.cancel()
            await wait_for(lambda: max(client.telemetry, default=-1) >= n_frames - 1)
        finally:
            await client.close()
        # Everything the session held is freed when the peer goes away.
        await wait_for(lambda: not app[SESSIONS] and not app[WORKER].jobs)
        return client, frames


@pytest.mark.parametrize("make_runtime", [pytest.param(fake_runtime, id="fake-model"), pytest.param(tiny_runtime, id="tiny-model")])
async def test_walk_forward_over_webrtc_moves_the_pose_by_the_commanded_amount(make_runtime):
    runtime = make_runtime(StreamConfig(width=64, height=48, fps=16.0, idle_chunks=0, torch_threads=1))
    client, frames = await _walk_forward(runtime)
    assert len(frames) >= 30 and frames[0].width == 64 and frames[0].height == 48
    assert all(b.pts > a.pts for a, b in zip(frames, frames[1:]))
    session = [m for m in client.messages if m["type"] == "session"]
    assert session and session[0]["transport"] == "webrtc" and session[0]["session_id"] == client.session_id

    tele = [client.telemetry[i] for i in sorted(client.telemetry)]
    ids = [t["frame_id"] for t in tele]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "one telemetry per frame, in order, none skipped at this rate"
    seqs = [t["input_seq"] for t in tele]
    assert all(b >= a for a, b in zip(seqs, seqs[1:])) and seqs[-1] <= client.seq
    # Frames within a chunk share its chunk id and input seq.
    for a, b in zip(tele, tele[1:]):
        if a["chunk_id"] == b["chunk_id"]:
            assert a["input_seq"] == b["input_seq"]

    # The walk: from the last frame before FORWARD took effect, N frames at 1/fps each move
    # v·(T − τ(1 − e^(−T/τ))) metres along +z (yaw 0), T = N / fps; x and height stay put.
    moving = [t for t in tele if t["input_seq"] > 0]
    before = [t for t in tele if t["input_seq"] <= 0]
    assert moving and before
    p0, p1 = before[-1]["position"], moving[-1]["position"]
    T = (moving[-1]["frame_id"] - before[-1]["frame_id"]) / 16.0
    v, tau = 1.4, 0.1
    expected = v * (T - tau * (1 - math.exp(-T / tau)))
    assert p1[2] - p0[2] == pytest.approx(expected, rel=0.02, abs=1e-3)
    assert abs(p1[0] - p0[0]) < 1e-6 and abs(p1[1] - p0[1]) < 1e-6
    assert expected > 0.5


@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_the_answer_follows_the_codec_the_offer_prefers(codec):
    runtime = fake_runtime(StreamConfig(width=64, height=48, fps=16.0))
    async with serve(runtime) as (url, app):
        client = WebRTCClient(codec=codec)
        try:
            response, answer = await client.connect(url)
            assert response.status == 200
            video = answer["sdp"].split("m=video", 1)[1]
            first_payload = video.split("\r\n", 1)[0].split()[2]
            assert f"a=rtpmap:{first_payload} {codec.upper()}/90000" in video
            frames = await client.frames(5)
            assert frames[-1].width == 64
        finally:
            await client.close()
