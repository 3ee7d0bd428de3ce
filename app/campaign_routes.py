"""Campaign routes (`run.py serve --campaign FILE`): consent, one task at a time, and progress.

    GET  /api/campaign            {name, consent, tasks} (404 when the server runs no campaign)
    POST /api/campaign/join       {consent: true} -> {participant, secret, task}
    POST /api/campaign/bind       {participant, secret, session_id} -> recording on for that session
    POST /api/campaign/next       {participant, secret, outcome} -> {task | null, finished}
    GET  /api/campaign/progress   {participants, episodes, minutes, accepted, rejected}

The page shows the consent text first; nothing is recorded before `join` with consent true, and
only a session bound to a participant records (collect.desk). POSTs take JSON only (a cross-site
page cannot send it without a preflight) and, on a non-loopback bind, the server's token, like
/offer. Every refusal is a 4xx with `{"error": ...}`. A task whose start is an image file is
offered as an upload id (the image is added to the runtime's uploads when the task is handed out).
"""
from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web

from collect.campaign import Campaign
from collect.desk import CampaignDesk, DeskError

log = logging.getLogger("roam.campaign")

DESK = web.AppKey("campaign_desk", CampaignDesk)
MAX_BODY_BYTES = 4096
# The operator's console gets a progress line at most this often (and after each step).
PROGRESS_EVERY_S = 60.0


def add_campaign_routes(app: web.Application, campaign: Campaign) -> None:
    app[DESK] = CampaignDesk(campaign)
    app.router.add_get("/api/campaign", _info)
    app.router.add_post("/api/campaign/join", _join)
    app.router.add_post("/api/campaign/bind", _bind)
    app.router.add_post("/api/campaign/next", _next)
    app.router.add_get("/api/campaign/progress", _progress)
    app.on_startup.append(_start_console)
    app.on_cleanup.append(_stop_console)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def token_ok(request: web.Request) -> bool:
    """The server's token (when it has one) from `?token=` or `Authorization: Bearer`, checked as
    /offer checks it."""
    from app.server import _token_ok

    return _token_ok(request)


async def _body(request: web.Request) -> dict:
    if request.content_type != "application/json":
        raise DeskError(415, f"Content-Type must be application/json, got {request.content_type!r}")
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise DeskError(413, f"body over {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw)
    except ValueError as error:
        raise DeskError(400, f"not JSON: {error}") from None
    if not isinstance(body, dict):
        raise DeskError(400, "expected a JSON object")
    return body


def _guarded(handler):
    async def wrapped(request: web.Request) -> web.Response:
        if not token_ok(request):
            return _error(401, "bad or missing token")
        try:
            return await handler(request)
        except DeskError as error:
            return _error(error.status, str(error))

    return wrapped


@_guarded
async def _info(request: web.Request) -> web.Response:
    desk = request.app[DESK]
    campaign = desk.campaign
    return web.json_response({"name": campaign.name, "consent": campaign.consent, "tasks": len(campaign.tasks), "progress": await asyncio.to_thread(desk.progress)})


async def _page_task(request: web.Request, desk: CampaignDesk, participant) -> dict | None:
    """The current task with `start` as an id the page can connect to."""
    from app.server import RUNTIME

    task = desk.current(participant)
    if task is None or task["start"].startswith("scene:"):
        return task
    path = task["start"]
    try:
        data = await asyncio.to_thread(lambda: open(path, "rb").read())
        task["start"] = await asyncio.to_thread(request.app[RUNTIME].uploads.add, data)
    except (OSError, ValueError) as error:
        raise DeskError(500, f"the campaign's start image for task {task['id']} cannot be used: {error}") from None
    return task


@_guarded
async def _join(request: web.Request) -> web.Response:
    desk = request.app[DESK]
    body = await _body(request)
    participant = desk.join(body.get("consent"))
    task = await _page_task(request, desk, participant)
    return web.json_response({"participant": participant.id, "secret": participant.secret, "task": task})


@_guarded
async def _bind(request: web.Request) -> web.Response:
    from app.server import SESSIONS

    desk = request.app[DESK]
    body = await _body(request)
    participant = desk.find(body.get("participant"), body.get("secret"))
    session_id = body.get("session_id")
    session = request.app[SESSIONS].get(session_id) if isinstance(session_id, str) else None
    if session is None or session.closed:
        raise DeskError(404, f"no live session {session_id!r}")
    desk.bind(participant, session, str(body.get("start_id") or ""))
    return web.json_response({"recording": True, "participant": participant.id})


@_guarded
async def _next(request: web.Request) -> web.Response:
    desk = request.app[DESK]
    body = await _body(request)
    participant = desk.find(body.get("participant"), body.get("secret"))
    desk.step(participant, body.get("outcome"))
    task = await _page_task(request, desk, participant)
    progress = await asyncio.to_thread(desk.progress)
    _log_progress(desk, progress)
    return web.json_response({"task": task, "finished": participant.finished})


@_guarded
async def _progress(request: web.Request) -> web.Response:
    desk = request.app[DESK]
    return web.json_response(await asyncio.to_thread(desk.progress))


def _log_progress(desk: CampaignDesk, progress: dict) -> None:
    log.info("campaign %s: %d participants, %d episodes, %.1f min recorded, %d accepted", desk.campaign.name,
             progress["participants"], progress["episodes"], progress["minutes"], progress["accepted"])


CONSOLE = web.AppKey("campaign_console", asyncio.Task)


async def _start_console(app: web.Application) -> None:
    desk = app[DESK]

    async def report() -> None:
        last = None
        while True:
            progress = await asyncio.to_thread(desk.progress)
            if progress != last:
                _log_progress(desk, progress)
                last = progress
            await asyncio.sleep(PROGRESS_EVERY_S)

    log.info("campaign %s: %d tasks, recording into %s, dataset %s", desk.campaign.name, len(desk.campaign.tasks), desk.record_dir, desk.campaign.dataset)
    app[CONSOLE] = asyncio.ensure_future(report())


async def _stop_console(app: web.Application) -> None:
    if CONSOLE in app:
        app[CONSOLE].cancel()
        await asyncio.gather(app[CONSOLE], return_exceptions=True)
