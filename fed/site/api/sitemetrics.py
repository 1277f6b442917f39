"""The site's ``/metrics`` for Prometheus: jobs and tasks by state, approvals waiting,
API request latency (docs/observability.md).

Each app has its own registry (never prometheus_client's global one), so two sites in
one process, or a test's app, never mix figures. Counts by state are read from the
database when scraped; request latency is measured by an ASGI middleware up to the
response's start (a server-sent event stream counts until its headers, not for as long
as it stays open), labelled with the route's template so random paths add no series.
Scraping needs a token like every other endpoint (a viewer token is enough).
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from fastapi import Depends, FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from fed.site.api.auth import bearer
from fed.site.core import views
from fed.site.core.models import PartyTask, Task
from fed.site.core.tokens import Role
from fed.site.service import SiteService

#: Upper bounds (seconds) of the request latency histogram.
REQUEST_BOUNDS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class StateCollector(Collector):
    """Gauges computed from the database at each scrape."""

    def __init__(self, service: SiteService) -> None:
        self._service = service

    def collect(self) -> Iterator[GaugeMetricFamily]:
        party = self._service.party
        with self._service.db.session() as s:
            jobs = views.count_jobs(s)
            tasks = dict(s.execute(select(Task.state, func.count()).group_by(Task.state)).all())
            mine = dict(s.execute(select(PartyTask.state, func.count()).where(PartyTask.party == party)
                                  .group_by(PartyTask.state)).all())
            waiting = views.count_pending_for(s, party)
        yield _by_state("rayfed_site_jobs", "Jobs this site holds, by job state.", jobs)
        yield _by_state("rayfed_site_tasks", "Tasks of the jobs this site holds, by task state.", tasks)
        yield _by_state("rayfed_site_party_tasks", "This party's runs of tasks, by state.", mine)
        yield GaugeMetricFamily("rayfed_site_approvals_waiting",
                                "Jobs waiting for this party's decision (fed job pending).", value=waiting)


def _by_state(name: str, doc: str, counts: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["state"])
    for state, n in sorted(counts.items()):
        family.add_metric([state], n)
    return family


class LatencyMiddleware:
    """Times every HTTP request of the app into ``histogram`` (method, route, status)."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app, self.histogram = app, histogram

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answered = False

        async def timed_send(message: dict) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
                self._observe(scope, str(message["status"]), started)
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except BaseException:
            if not answered:
                self._observe(scope, "500", started)
            raise

    def _observe(self, scope: dict, status: str, started: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        self.histogram.labels(scope["method"], route, status).observe(time.perf_counter() - started)


def install_site_metrics(app: FastAPI, service: SiteService) -> CollectorRegistry:
    """Add ``GET /metrics`` (viewer token) and the latency middleware to ``app``."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StateCollector(service))
    latency = Histogram("rayfed_site_api_request_duration_seconds",
                        "Time from a request's arrival to its response's start, by route.",
                        ["method", "route", "status"], registry=registry, buckets=REQUEST_BOUNDS_S)
    app.add_middleware(LatencyMiddleware, histogram=latency)

    @app.get("/metrics", tags=["client"], summary="Prometheus metrics of this site (viewer token)",
             response_class=Response)
    def metrics(_: str = Depends(bearer(service.db, Role.VIEWER))) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return registry
