"""The review page and its API: look at recorded episodes, accept or reject them.

    GET  /review                                 web/review.html
    GET  /api/review/episodes                    [{name, participant, task, seconds, frames, complete,
                                                  flags, decision, outcome}], progress
    GET  /api/review/episodes/{name}             path (x, z per frame), yaw, keys per frame, input
                                                 events (seconds from the first frame), flags
    GET  /api/review/episodes/{name}/thumbnail.jpg
    GET  /api/review/episodes/{name}/video.mp4   video.mp4, or the durable segments joined (crashed)
    POST /api/review/episodes/{name}             {decision: "accept" | "reject" | null, note} -> reviews.json

All of it reads the server's record dir (a campaign's `record_dir` under --campaign). On a
non-loopback bind every route needs the server's token (`?token=` or a Bearer header), the page
included. An episode name must be a folder of the record dir (no path separators); a foreign or
corrupt folder is listed with `error` set instead of failing the list. POSTs take JSON only.
"""
from __future__ import annotations

import asyncio
import io
import json
import re
import tempfile
from pathlib import Path

from aiohttp import web

from app.campaign_routes import DESK, _body, _error, token_ok
from collect.campaign import FilterConfig
from collect.desk import DeskError, campaign_progress
from collect.quality import episode_flags
from collect.reviews import ReviewError, read_reviews, write_decision
from streaming.episode import Episode, EpisodeError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
THUMB_WIDTH = 160


def add_review_routes(app: web.Application) -> None:
    app.router.add_get("/review", _page)
    app.router.add_get("/api/review/episodes", _list)
    app.router.add_get("/api/review/episodes/{name}", _detail)
    app.router.add_get("/api/review/episodes/{name}/thumbnail.jpg", _thumbnail)
    app.router.add_get("/api/review/episodes/{name}/video.mp4", _video)
    app.router.add_post("/api/review/episodes/{name}", _decide)


def _record_dir(app: web.Application) -> Path | None:
    from app.server import CONFIG

    record_dir = app[CONFIG].server.record_dir
    return None if record_dir is None else Path(record_dir)


def _filters(app: web.Application) -> FilterConfig:
    return app[DESK].campaign.filters if DESK in app else FilterConfig()


def _guarded(handler):
    async def wrapped(request: web.Request) -> web.StreamResponse:
        if not token_ok(request):
            return _error(401, "bad or missing token (open /review?token=...)")
        record_dir = _record_dir(request.app)
        if record_dir is None:
            return _error(404, "this server records nothing (no record dir)")
        try:
            return await handler(request, record_dir)
        except DeskError as error:
            return _error(error.status, str(error))
        except (ReviewError, EpisodeError) as error:
            return _error(409, str(error))

    return wrapped


def _episode_dir(record_dir: Path, name: str) -> Path:
    folder = record_dir / name
    if not _NAME.match(name) or not folder.is_dir():
        raise DeskError(404, f"no episode {name!r}")
    return folder


async def _page(request: web.Request) -> web.StreamResponse:
    from app.server import CONFIG

    if not token_ok(request):
        return web.Response(status=401, text="bad or missing token: open /review?token=...")
    page = request.app[CONFIG].server.web_dir / "review.html"
    if not page.is_file():
        return web.Response(status=404, text="the review page (web/review.html) is not installed")
    return web.FileResponse(page)


def _summaries(record_dir: Path, filters: FilterConfig, campaign: str | None) -> list[dict]:
    reviews = read_reviews(record_dir)
    out = []
    for folder in sorted(p for p in record_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        item: dict = {"name": folder.name}
        try:
            episode = Episode.open(folder)
        except EpisodeError as error:
            item["error"] = str(error).replace(str(folder), folder.name, 1)
            out.append(item)
            continue
        meta = episode.meta
        if campaign is not None and meta.get("campaign") != campaign:
            continue
        decision = reviews.get(folder.name, {})
        item.update(participant=meta.get("participant"), task=meta.get("task"), task_instruction=meta.get("task_instruction"),
                    scene=meta.get("scene") or meta.get("start"), outcome=meta.get("outcome"), frames=episode.n_frames,
                    seconds=round(episode.n_frames / episode.fps, 2), complete=episode.complete,
                    flags=episode_flags(episode, filters), decision=decision.get("decision"), note=decision.get("note", ""))
        out.append(item)
    return out


@_guarded
async def _list(request: web.Request, record_dir: Path) -> web.Response:
    app = request.app
    campaign = app[DESK].campaign.name if DESK in app else None
    episodes = await asyncio.to_thread(_summaries, record_dir, _filters(app), campaign)
    participants = app[DESK].progress()["participants"] if DESK in app else None
    progress = await asyncio.to_thread(campaign_progress, record_dir, campaign, participants)
    return web.json_response({"campaign": campaign, "episodes": episodes, "progress": progress})


def _episode_detail(folder: Path, filters: FilterConfig) -> dict:
    from controls.camera import ypr_from_rotation

    episode = Episode.open(folder)
    poses = episode.world_T_cams
    yaw = [float(ypr_from_rotation(p[:3, :3])[0]) for p in poses]
    # Event times are placed against when the episode opened (its first chunk reached the recorder):
    # server clock on both sides; the frames themselves lag their inputs by the chunk latency.
    t0 = float(episode.meta.get("created", 0.0))
    events = []
    events_path = folder / "events.jsonl"
    if events_path.is_file():
        for line in events_path.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                break
            if event.get("type") == "input":
                events.append({"t": round(event["server_t"] - t0, 3), "keys": event.get("keys", 0), "seq": event.get("seq")})
            elif isinstance(event, dict) and "type" in event and event["type"] not in ("ping", "visibility"):
                events.append({"t": round(event["server_t"] - t0, 3), "control": event["type"]})
    return {
        "name": folder.name, "fps": episode.fps, "frames": episode.n_frames, "complete": episode.complete,
        "x": poses[:, 0, 3].round(4).tolist(), "z": poses[:, 2, 3].round(4).tolist(), "yaw": [round(y, 4) for y in yaw],
        "keys": episode.keys.tolist(), "events": events, "flags": episode_flags(episode, filters), "meta": {k: episode.meta.get(k) for k in ("participant", "task", "task_instruction", "scene", "outcome", "attempt")},
    }


@_guarded
async def _detail(request: web.Request, record_dir: Path) -> web.Response:
    folder = _episode_dir(record_dir, request.match_info["name"])
    return web.json_response(await asyncio.to_thread(_episode_detail, folder, _filters(request.app)))


@_guarded
async def _thumbnail(request: web.Request, record_dir: Path) -> web.Response:
    folder = _episode_dir(record_dir, request.match_info["name"])

    def encode() -> bytes:
        from PIL import Image

        with Image.open(folder / "start.png") as img:
            img = img.convert("RGB")
            img.thumbnail((THUMB_WIDTH, THUMB_WIDTH))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=80)
            return buf.getvalue()

    try:
        data = await asyncio.to_thread(encode)
    except OSError as error:
        raise DeskError(404, f"episode {folder.name} has no readable start.png ({error})") from None
    return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


@_guarded
async def _video(request: web.Request, record_dir: Path) -> web.StreamResponse:
    from streaming.recorder import concat_segments

    folder = _episode_dir(record_dir, request.match_info["name"])
    episode = await asyncio.to_thread(Episode.open, folder)
    video = folder / "video.mp4"
    if episode.complete and video.is_file():
        return web.FileResponse(video, headers={"Content-Type": "video/mp4"})

    def joined() -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "joined.mp4"
            concat_segments(episode.segment_paths(), out)
            return out.read_bytes()

    if not episode.rows:
        raise DeskError(404, f"episode {folder.name} has no durable frames")
    return web.Response(body=await asyncio.to_thread(joined), content_type="video/mp4")


@_guarded
async def _decide(request: web.Request, record_dir: Path) -> web.Response:
    folder = _episode_dir(record_dir, request.match_info["name"])
    body = await _body(request)
    decision = body.get("decision")
    note = body.get("note", "")
    try:
        decisions = await asyncio.to_thread(write_decision, record_dir, folder.name, decision, note)
    except ReviewError as error:
        raise DeskError(400, str(error)) from None
    return web.json_response({"name": folder.name, "decision": decisions.get(folder.name, {}).get("decision")})
