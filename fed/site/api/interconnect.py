"""The interconnect API: site-to-site calls over mutual TLS (``/v1/interconnect/...``).

The caller's party comes from its client certificate (auth.peer_party); the service
accepts a call only from parties of the job concerned (the initiator, for propose,
open and abort; a party for its own decision).
"""
from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict

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

    return r
