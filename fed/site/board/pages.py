"""The board's pages: login, jobs (filtered), one job, approvals, components."""
from __future__ import annotations

import datetime

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from fed.site.board import queries
from fed.site.board.dag import layout
from fed.site.board.sessions import SESSION_TTL_S
from fed.site.board.web import SECURITY_HEADERS, Board
from fed.site.core import components
from fed.site.core.states import ApprovalState, JobState
from fed.site.core.tokens import Role, authenticate
from fed.site.errors import SiteError
from fed.site.service import SiteService

PREFIX = "/board"


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)


def _day(text: str | None) -> datetime.date | None:
    try:
        return datetime.date.fromisoformat(text) if text else None
    except ValueError:
        return None


def page_router(service: SiteService, board: Board) -> APIRouter:
    """Routes of the pages, bound to one site's service."""
    r = APIRouter(prefix=PREFIX, include_in_schema=False)
    _login_routes(r, board)
    _job_routes(r, service, board)
    _approval_routes(r, service, board)

    @r.get("/components", response_class=HTMLResponse)
    def component_list(request: Request) -> Response:
        user = board.require(request)
        with service.db.session() as s:
            rows = components.list_components(s)
        return board.page(request, "components.html", user, components=rows, nav="components")

    return r


def _job_routes(r: APIRouter, service: SiteService, board: Board) -> None:
    @r.get("/", response_class=HTMLResponse)
    def jobs(request: Request, state: str = "", initiator: str = "", since: str = "",
             until: str = "") -> Response:
        user = board.require(request)
        with service.db.session() as s:
            rows = queries.find_jobs(s, state or None, initiator or None, _day(since), _day(until))
            choices = queries.initiators(s)
        filters = {"state": state, "initiator": initiator, "since": since, "until": until}
        return board.page(request, "jobs.html", user, jobs=rows, filters=filters, initiators=choices,
                          states=[s.value for s in JobState], nav="jobs")

    @r.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job(request: Request, job_id: str) -> Response:
        user = board.require(request)
        detail = service.status(job_id)
        with service.db.session() as s:
            graph = layout(queries.task_deps(s, job_id))
        order = {n.name: i for i, n in enumerate(sorted(graph.nodes, key=lambda n: (n.x, n.y)))}
        detail["tasks"].sort(key=lambda t: order.get(t["name"], len(order)))  # the DAG's order
        parties = [p["party"] for p in detail["parties"] if p["holds_data"]]
        mine = [t["name"] for t in detail["tasks"] if any(p["party"] == service.party for p in t["parties"])]
        return board.page(request, "job.html", user, job=detail, graph=graph, grid_parties=parties,
                          my_tasks=mine, nav="jobs")


def _approval_routes(r: APIRouter, service: SiteService, board: Board) -> None:
    @r.get("/approvals", response_class=HTMLResponse)
    def approvals(request: Request) -> Response:
        return _approvals_page(request, board, service)

    @r.post("/jobs/{job_id}/decide")
    async def decide(request: Request, job_id: str) -> Response:
        user = await run_in_threadpool(board.require, request)
        fields = await board.form(request)
        if not user.can(Role.ADMIN):
            raise HTTPException(403, f"token {user.name!r} has role {user.role.value!r}; deciding needs 'admin'")
        verdict = fields.get("decision")
        if verdict not in ("approve", "reject"):
            raise HTTPException(422, "decision must be 'approve' or 'reject'")
        reason = fields.get("reason", "").strip()[:2000] or f"{verdict}d on the board"
        try:  # the decision goes to every other party's site: off the event loop
            await run_in_threadpool(service.decide, job_id, verdict == "approve", reason, user.actor)
        except SiteError as exc:
            return await run_in_threadpool(_approvals_page, request, board, service, str(exc), 409)
        return _redirect(f"{PREFIX}/jobs/{job_id}")


def _approvals_page(request: Request, board: Board, service: SiteService, error: str = "",
                    status: int = 200) -> Response:
    user = board.require(request)
    pending = service.pending()
    for job in pending:
        job["mine"] = next(p for p in job["parties"] if p["party"] == service.party)
        job["decided"] = [p for p in job["parties"] if p["approval"] != ApprovalState.PENDING.value]
        job["tasks"] = service.status(job["id"])["tasks"]
    return board.page(request, "approvals.html", user, jobs=pending, error=error, status=status,
                      can_decide=user.can(Role.ADMIN), nav="approvals")


def _token_id(board: Board, token: str) -> str | None:
    with board.db.session() as s:
        record = authenticate(s, token)
        return record.id if record else None


def _login_routes(r: APIRouter, board: Board) -> None:
    @r.get("/login", response_class=HTMLResponse)
    def login_page(request: Request) -> Response:
        return board.page(request, "login.html", None, error="")

    @r.post("/login")
    async def login(request: Request) -> Response:
        fields = await board.form(request, login=True)
        token_id = await run_in_threadpool(_token_id, board, fields.get("token", "").strip())
        if token_id is None:
            return board.page(request, "login.html", None, status=401,
                              error="Unknown or revoked token. Ask an admin for one: fed site token create DIR --role viewer")
        response = _redirect(f"{PREFIX}/")
        response.set_cookie(board.signer.cookie, board.signer.issue(token_id), max_age=SESSION_TTL_S, path="/",
                            secure=True, httponly=True, samesite="strict")
        return response

    @r.post("/logout")
    async def logout(request: Request) -> Response:
        await board.form(request)
        response = _redirect(f"{PREFIX}/login")
        response.delete_cookie(board.signer.cookie, path="/", secure=True, httponly=True, samesite="strict")
        return response


