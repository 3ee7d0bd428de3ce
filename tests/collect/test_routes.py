"""/api/campaign/* and /review over the aiohttp test client: consent before anything, participants
prove who they are, the token guards every review route off loopback, bad input is a 4xx line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from app.config import AppConfig, ServerConfig, StreamConfig
from app.server import RUNTIME, create_app
from collect.campaign import load_campaign
from tests.app.helpers import fake_runtime
from tests.recording.helpers import write_episode

STREAM = StreamConfig(width=64, height=48, fps=16.0, idle_chunks=0)
TOKEN = "a-long-enough-token"
JSON = {"Content-Type": "application/json"}


def campaign_file(tmp_path: Path) -> Path:
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(tmp_path / "park.png")
    path = tmp_path / "campaign.toml"
    path.write_text('''
name = "routes"
consent = "We record what you do."
record_dir = "rec"
dataset = "ds"
[[tasks]]
id = "photo"
instruction = "Walk into the park."
starts = ["park.png"]
time_limit_s = 20
[[tasks]]
id = "scene"
instruction = "Look around."
starts = ["scene:2"]
time_limit_s = 20
''')
    return path


async def client_for(server: ServerConfig) -> TestClient:
    client = TestClient(TestServer(create_app(AppConfig(server=server, stream=STREAM), fake_runtime(STREAM)), host="127.0.0.1"))
    await client.start_server()
    return client


async def test_campaign_join_needs_consent_and_hands_out_tasks(tmp_path):
    path = campaign_file(tmp_path)
    campaign = load_campaign(path)
    client = await client_for(ServerConfig(port=0, campaign=path, record_dir=campaign.record_dir))
    try:
        info = await (await client.get("/api/campaign")).json()
        assert info["consent"] == "We record what you do." and info["tasks"] == 2
        refused = await client.post("/api/campaign/join", json={"consent": False})
        assert refused.status == 400 and "consent" in (await refused.json())["error"]
        assert not (campaign.record_dir / "participants.jsonl").exists()
        assert (await client.post("/api/campaign/join", data="consent=true", headers={"Content-Type": "application/x-www-form-urlencoded"})).status == 415
        joined = await (await client.post("/api/campaign/join", json={"consent": True})).json()
        # The first task's start is an image file: it is offered as an upload the page can connect to.
        assert joined["task"]["id"] == "photo" and joined["task"]["start"].startswith("upload:")
        assert client.app[RUNTIME].start_view(joined["task"]["start"]) is not None
        wrong = await client.post("/api/campaign/next", json={"participant": joined["participant"], "secret": "guess", "outcome": "done"})
        assert wrong.status == 403
        bad = await client.post("/api/campaign/next", json={"participant": joined["participant"], "secret": joined["secret"], "outcome": "bored"})
        assert bad.status == 400 and "outcome must be one of" in (await bad.json())["error"]
        unbound = await client.post("/api/campaign/bind", json={"participant": joined["participant"], "secret": joined["secret"], "session_id": "nope"})
        assert unbound.status == 404
        step = await (await client.post("/api/campaign/next", json={"participant": joined["participant"], "secret": joined["secret"], "outcome": "skip"})).json()
        assert step["task"]["id"] == "scene" and step["task"]["start"] == "scene:2" and not step["finished"]
        done = await (await client.post("/api/campaign/next", json={"participant": joined["participant"], "secret": joined["secret"], "outcome": "end"})).json()
        assert done == {"task": None, "finished": True}
        progress = await (await client.get("/api/campaign/progress")).json()
        assert progress["participants"] == 1 and progress["episodes"] == 0
    finally:
        await client.close()


async def test_no_campaign_routes_without_a_campaign(tmp_path):
    client = await client_for(ServerConfig(port=0, record_dir=tmp_path))
    try:
        assert (await client.get("/api/campaign")).status == 404
        assert (await client.get("/review")).status == 200
    finally:
        await client.close()


async def test_review_needs_the_token_off_loopback_and_writes_reviews(tmp_path):
    rec = tmp_path / "rec"
    rec.mkdir()
    write_episode(rec / "e-001", chunks=3, meta={"participant": "p-1", "task": "t"})
    (rec / "junk").mkdir()
    client = await client_for(ServerConfig(host="0.0.0.0", port=0, token=TOKEN, record_dir=rec))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        for path in ("/review", "/api/review/episodes", "/api/review/episodes/e-001", "/api/review/episodes/e-001/video.mp4", "/api/review/episodes/e-001/thumbnail.jpg"):
            assert (await client.get(path)).status == 401, path
        assert (await client.post("/api/review/episodes/e-001", json={"decision": "accept"})).status == 401
        assert not (rec / "reviews.json").exists()
        assert (await client.get(f"/review?token={TOKEN}")).status == 200
        listing = await (await client.get("/api/review/episodes", headers=auth)).json()
        by = {e["name"]: e for e in listing["episodes"]}
        assert by["e-001"]["participant"] == "p-1" and by["e-001"]["frames"] == 25 and by["e-001"]["decision"] is None
        assert "no meta.json" in by["junk"]["error"]
        detail = await (await client.get("/api/review/episodes/e-001", headers=auth)).json()
        assert len(detail["x"]) == 25 and detail["keys"][0] == 1
        video = await client.get(f"/api/review/episodes/e-001/video.mp4?token={TOKEN}")
        assert video.status == 200 and (await video.read())[4:8] == b"ftyp"
        for name in ("..", "e-001%2F..%2F..", "nope"):
            assert (await client.get(f"/api/review/episodes/{name}", headers=auth)).status in (404,), name
        bad = await client.post("/api/review/episodes/e-001", json={"decision": "maybe"}, headers=auth)
        assert bad.status == 400 and "accept, reject or null" in (await bad.json())["error"]
        ok = await client.post("/api/review/episodes/e-001", json={"decision": "reject", "note": "blurry"}, headers={**auth, **JSON})
        assert ok.status == 200
        assert json.loads((rec / "reviews.json").read_text())["decisions"]["e-001"]["decision"] == "reject"
        # A hand-broken reviews.json: one line, not a 500.
        (rec / "reviews.json").write_text("{broken")
        broken = await client.get("/api/review/episodes", headers=auth)
        assert broken.status == 409 and "not valid JSON" in (await broken.json())["error"]
    finally:
        await client.close()


async def test_under_a_campaign_the_record_toggle_records_nothing(tmp_path):
    """Only binding a consenting participant turns recording on; a page's own `record` is refused."""
    from app.session import Session
    from streaming.worker import GenerationWorker
    from tests.app.helpers import RecordingTransport

    runtime = fake_runtime(STREAM)
    session = Session("c1", RecordingTransport(), runtime, GenerationWorker(num_threads=1), runtime.start_view("scene:1"), 64 * 1024, record_dir=tmp_path)
    session.record_messages = False
    assert session.handle_text(json.dumps({"type": "record", "on": True})) is None
    assert session.dropped["unexpected"] == 1 and not session.recorder.consent
    session.recorder.close()
