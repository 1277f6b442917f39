"""The client API: what people and scripts call with a bearer token (``/v1/...``)."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict

from fed.site.api.auth import bearer
from fed.site.core import components, views
from fed.site.core.tokens import Role
from fed.site.service import SiteService


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = ""


class NewComponent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    version: str
    entrypoint: str
    share_metrics: bool = False


def client_router(service: SiteService) -> APIRouter:
    """Routes of the client API, bound to one site's service."""
    viewer = Depends(bearer(service.db, Role.VIEWER))
    submitter = Depends(bearer(service.db, Role.SUBMITTER))
    admin = Depends(bearer(service.db, Role.ADMIN))
    r = APIRouter(prefix="/v1", tags=["client"])

    @r.get("/site", summary="This site: its party, federation and job counts")
    def site(_: str = viewer) -> dict[str, Any]:
        with service.db.session() as s:
            counts = views.count_jobs(s)
        return {"party": service.party, "url": service.config.url, "jobs": counts,
                "federation": {p: e.site for p, e in service.config.federation.parties.items()}}

    @r.post("/jobs", status_code=201, summary="Submit a job spec (this party is its initiator)")
    def submit(spec: Annotated[dict[str, Any], Body()], actor: str = submitter) -> dict[str, Any]:
        return service.submit(spec, actor)

    @r.get("/jobs", summary="Jobs, newest first")
    def jobs(state: str | None = None, limit: int = 100, _: str = viewer) -> list[dict[str, Any]]:
        return service.list_jobs(state, min(max(limit, 1), 1000))

    @r.get("/jobs/pending", summary="Jobs waiting for this party's decision")
    def pending(limit: int = 100, _: str = viewer) -> list[dict[str, Any]]:
        return service.pending(min(max(limit, 1), 1000))

    @r.get("/jobs/{job_id}", summary="A job: parties' decisions, tasks, party tasks, history")
    def status(job_id: str, _: str = viewer) -> dict[str, Any]:
        return service.status(job_id)

    @r.post("/jobs/{job_id}/approve", summary="Accept a job held for this party")
    def approve(job_id: str, body: Annotated[Decision, Body(default_factory=Decision)], actor: str = admin) -> dict[str, Any]:
        return service.decide(job_id, True, body.reason or "approved", actor)

    @r.post("/jobs/{job_id}/reject", summary="Reject a job held for this party (ends it for all)")
    def reject(job_id: str, body: Annotated[Decision, Body(default_factory=Decision)], actor: str = admin) -> dict[str, Any]:
        return service.decide(job_id, False, body.reason or "rejected", actor)

    @r.post("/jobs/{job_id}/stop", summary="Stop a job in every party (from any party's site)")
    def stop(job_id: str, body: Annotated[Decision, Body(default_factory=Decision)], actor: str = submitter) -> dict[str, Any]:
        return service.stop(job_id, body.reason or "stopped", actor)

    @r.get("/jobs/{job_id}/tasks/{task}/logs", summary="This party's own log tail of a task",
           response_class=PlainTextResponse)
    def logs(job_id: str, task: str, _: str = viewer) -> str:
        return service.task_logs(job_id, task)

    _component_routes(r, service, viewer, admin)
    return r


def _component_routes(r: APIRouter, service: SiteService, viewer: Any, admin: Any) -> None:
    @r.get("/components", summary="Components this party runs")
    def list_components(_: str = viewer) -> list[dict[str, str | bool]]:
        with service.db.session() as s:
            return components.list_components(s)

    @r.post("/components", status_code=201, summary="Register a component version")
    def add_component(body: NewComponent, _: str = admin) -> dict[str, str | bool]:
        with service.db.session() as s:
            components.add_component(s, body.name, body.version, body.entrypoint, body.share_metrics)
        return body.model_dump()
