"""The site's ASGI application: both APIs, typed errors as HTTP answers, and the
OpenAPI document behind a viewer token (nothing is served without authentication)."""
from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from fed.site.api.auth import bearer
from fed.site.api.client import client_router
from fed.site.api.interconnect import interconnect_router
from fed.site.api.metrics import metrics_router
from fed.site.api.sitemetrics import install_site_metrics
from fed.site.board.routes import install_board
from fed.site.core.tokens import Role
from fed.site.errors import (
    AccessDenied,
    ComponentError,
    Conflict,
    IllegalTransitionError,
    JobSpecError,
    NotFoundError,
    PeerSiteError,
    SiteError,
)
from fed.site.service import SiteService

#: HTTP status per error type (first match wins; SiteError last).
_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (JobSpecError, 422), (ComponentError, 422), (NotFoundError, 404), (AccessDenied, 403),
    (Conflict, 409), (IllegalTransitionError, 409), (PeerSiteError, 502), (SiteError, 400),
)


def _error_response(_request: Request, exc: Exception) -> JSONResponse:
    status = next(code for cls, code in _STATUS if isinstance(exc, cls))
    body: dict[str, Any] = {"detail": str(exc), "error": type(exc).__name__}
    if isinstance(exc, JobSpecError):
        body["problems"] = [{"field": f, "problem": p} for f, p in exc.problems]
    return JSONResponse(body, status_code=status)


def create_app(service: SiteService) -> FastAPI:
    """The application serving one site."""
    app = FastAPI(
        title=f"rayfed site of party {service.party}",
        description="Client API (bearer tokens) and interconnect API (mutual TLS) of a rayfed party site.",
        version="1",
        docs_url=None, redoc_url=None, openapi_url=None,
    )
    app.include_router(client_router(service))
    app.include_router(interconnect_router(service))
    app.include_router(metrics_router(service))
    install_site_metrics(app, service)
    app.add_exception_handler(SiteError, _error_response)
    install_board(app, service)

    @app.get("/v1/openapi.json", tags=["client"], summary="This API's OpenAPI document")
    def openapi(_: str = Depends(bearer(service.db, Role.VIEWER))) -> dict[str, Any]:
        return app.openapi()

    return app
