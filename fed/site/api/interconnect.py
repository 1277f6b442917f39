"""The interconnect API: site-to-site calls over mutual TLS (``/v1/interconnect/...``).

The caller's party comes from its client certificate (auth.peer_party); the service
accepts a call only from parties of the job concerned (the initiator, for propose,
open and abort; a party for its own decision).
"""
from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from fed.site.api.auth import peer_party
from fed.site.service import SiteService


class Proposal(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spec: dict[str, Any]


class PartyDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["accepted", "rejected"]
    reason: str = ""


class Abort(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str


class Attempt(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attempt: int = Field(ge=1)


class Start(Attempt):
    addresses: dict[str, str]


class StopRun(Attempt):
    reason: str = ""


class Report(Attempt):
    task: str
    state: Literal["waiting", "starting", "running", "succeeded", "failed", "canceled", "timeout"]
    reason: str = ""


class Snapshot(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job: dict[str, Any]
    tasks: list[dict[str, Any]]
    party_tasks: list[dict[str, Any]]


def interconnect_router(service: SiteService) -> APIRouter:
    """Routes of the interconnect API, bound to one site's service."""
    caller = Depends(peer_party)
    r = APIRouter(prefix="/v1/interconnect", tags=["interconnect"])

    @r.post("/jobs/{job_id}/propose", summary="The initiator proposes a job to this party")
    def propose(job_id: str, body: Proposal, party: str = caller) -> dict[str, Any]:
        return service.receive_proposal(party, job_id, body.spec)

    @r.post("/jobs/{job_id}/open", summary="Every party holds the job: decide by policy")
    def open_job(job_id: str, party: str = caller) -> dict[str, Any]:
        return service.open_job(party, job_id)

    @r.post("/jobs/{job_id}/decision", summary="The calling party's decision on the job")
    def decision(job_id: str, body: PartyDecision, party: str = caller) -> dict[str, Any]:
        return service.receive_decision(party, job_id, body.decision, body.reason)

    @r.post("/jobs/{job_id}/abort", summary="The initiator fails a job it could not deliver")
    def abort(job_id: str, body: Abort, party: str = caller) -> dict[str, Any]:
        return service.receive_abort(party, job_id, body.reason)

    @r.get("/jobs/{job_id}", summary="The job as this site holds it (states and decisions)")
    def job(job_id: str, party: str = caller) -> dict[str, Any]:
        return service.peer_view(party, job_id)

    _run_routes(r, service, caller)
    return r


def _run_routes(r: APIRouter, service: SiteService, caller: Any) -> None:
    """Running accepted jobs: the scheduler -> parties (prepare, start, stop, sync) and
    parties -> the scheduler (report, stop request); both sides may read (runs, snapshot)."""
    task_path = "/jobs/{job_id}/tasks/{task}"

    @r.post(task_path + "/prepare", summary="Scheduler: hold a channel port for this attempt")
    def prepare(job_id: str, task: str, body: Attempt, party: str = caller) -> dict[str, Any]:
        return service.running().prepare(party, job_id, task, body.attempt)

    @r.post(task_path + "/start", summary="Scheduler: every party's address; start this party's run")
    def start(job_id: str, task: str, body: Start, party: str = caller) -> dict[str, Any]:
        return service.running().start_run(party, job_id, task, body.attempt, body.addresses)

    @r.post(task_path + "/stop", summary="Scheduler: stop this party's run of the attempt")
    def stop_run(job_id: str, task: str, body: StopRun, party: str = caller) -> dict[str, Any]:
        return service.running().stop_run(party, job_id, task, body.attempt, body.reason)

    @r.post("/jobs/{job_id}/report", summary="A party: its own run changed (callback mode)")
    def report(job_id: str, body: Report, party: str = caller) -> dict[str, Any]:
        return service.running().report(party, job_id, body.task, body.attempt, body.state, body.reason)

    @r.get("/jobs/{job_id}/runs", summary="This party's own party tasks (the scheduler polls it)")
    def own_runs(job_id: str, party: str = caller) -> dict[str, Any]:
        return service.running().own_runs(party, job_id)

    @r.get("/jobs/{job_id}/snapshot", summary="Scheduler: the combined job, task and party task states")
    def snapshot(job_id: str, party: str = caller) -> dict[str, Any]:
        return service.running().snapshot(party, job_id)

    @r.post("/jobs/{job_id}/sync", summary="Scheduler: the combined states, pushed (callback mode)")
    def sync(job_id: str, body: Snapshot, party: str = caller) -> dict[str, Any]:
        return service.running().receive_snapshot(party, job_id, body.model_dump())

    @r.post("/jobs/{job_id}/stop", summary="A party asks the scheduler to stop the job everywhere")
    def stop(job_id: str, body: Abort, party: str = caller) -> dict[str, Any]:
        return service.running().stop_request(party, job_id, body.reason)
