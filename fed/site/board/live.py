"""What the job page fetches while open: state changes as server-sent events, this
party's log tail, and the board's static files.

The event stream polls the site's database once a second and sends the job's states
(job, approvals, tasks, party tasks, history) only when they changed; the browser's
EventSource reconnects by itself after a stream's lifetime ends. Logs are this
party's own (``SiteService.task_logs``): no route takes a party, so a partner's log
cannot be asked for.
"""
from __future__ import annotations

import json
import mimetypes
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from fed.site.board.pages import PREFIX
from fed.site.board.web import HERE, SECURITY_HEADERS, Board
from fed.site.errors import NotFoundError
from fed.site.service import SiteService

POLL_S = 1.0
STREAM_S = 600.0  # then the browser reconnects (and the session is checked again)
KEEPALIVE_S = 15.0
LOG_TAIL_CHARS = 64 * 1024


def snapshot(detail: dict[str, Any]) -> dict[str, Any]:
    """The parts of a job's view the page updates live."""
    return {k: detail[k] for k in ("state", "reason", "parties", "tasks", "history")}


def live_router(service: SiteService, board: Board) -> APIRouter:
    r = APIRouter(prefix=PREFIX, include_in_schema=False)
    static = _static_files()

    def signed_in(request: Request) -> None:
        if board.user(request) is None:
            raise HTTPException(401, "log in to the board first")

    @r.get("/jobs/{job_id}/events")
    def events(request: Request, job_id: str) -> Response:
        signed_in(request)
        service.status(job_id)  # 404 before the stream starts
        headers = {**SECURITY_HEADERS, "X-Accel-Buffering": "no"}
        return StreamingResponse(_stream(request, service, board, job_id), media_type="text/event-stream",
                                 headers=headers)

    @r.get("/jobs/{job_id}/tasks/{task}/log")
    def log_tail(request: Request, job_id: str, task: str) -> Response:
        signed_in(request)
        detail = service.status(job_id)
        runs = [t for t in detail["tasks"] if t["name"] == task
                and any(p["party"] == service.party for p in t["parties"])]
        if not runs:
            raise NotFoundError(f"party {service.party!r} runs no task {task!r} in job {job_id}: "
                                "the board shows only this party's own logs")
        text = service.task_logs(job_id, task) or ""
        return PlainTextResponse(text[-LOG_TAIL_CHARS:], headers=SECURITY_HEADERS)

    @r.get("/static/{name}")
    def static_file(name: str) -> Response:
        if name not in static:
            raise HTTPException(404, "no such file")
        body, media = static[name]
        return Response(body, media_type=media, headers={**SECURITY_HEADERS, "Cache-Control": "max-age=300"})

    return r


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The package's static files, read once: only these names are ever served."""
    out = {}
    for path in sorted((HERE / "static").iterdir()):
        if path.is_file():
            out[path.name] = (path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream")
    return out


async def _stream(request: Request, service: SiteService, board: Board, job_id: str) -> AsyncIterator[str]:
    """``data:`` lines with the job's snapshot whenever it changed, until the client leaves,
    its session ends or the stream's lifetime is over."""
    yield "retry: 2000\n\n"
    last, quiet_since, end = "", time.monotonic(), time.monotonic() + STREAM_S
    while time.monotonic() < end and not await request.is_disconnected():
        text = await anyio.to_thread.run_sync(_poll, service, board, request, job_id)
        if text is None:
            return
        if text != last:
            last, quiet_since = text, time.monotonic()
            yield f"data: {text}\n\n"
        elif time.monotonic() - quiet_since > KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield ": still here\n\n"
        await anyio.sleep(POLL_S)


def _poll(service: SiteService, board: Board, request: Request, job_id: str) -> str | None:
    if board.user(request) is None:
        return None
    return json.dumps(snapshot(service.status(job_id)), sort_keys=True)
