"""Metric routes: a job's metrics for clients, a party's shared metrics for partners."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from fed.site.api.auth import bearer, peer_party
from fed.site.core.tokens import Role
from fed.site.jobmetrics import job_metrics, shared_metrics
from fed.site.service import SiteService


def metrics_router(service: SiteService) -> APIRouter:
    """``GET /v1/jobs/{id}/metrics`` (viewer token) and its interconnect twin (mTLS)."""
    viewer = Depends(bearer(service.db, Role.VIEWER))
    caller = Depends(peer_party)
    r = APIRouter(prefix="/v1")

    @r.get("/jobs/{job_id}/metrics", tags=["client"],
           summary="The job's metrics: this party's, and what partners share")
    def client_metrics(job_id: str, _: str = viewer) -> dict[str, Any]:
        return job_metrics(service, job_id)

    @r.get("/interconnect/jobs/{job_id}/metrics", tags=["interconnect"],
           summary="This party's metrics of the job that it shares with the job's parties")
    def partner_metrics(job_id: str, party: str = caller) -> dict[str, Any]:
        return shared_metrics(service, party, job_id)

    return r
