"""Serve a site over HTTPS with uvicorn: one port for both APIs.

The TLS handshake asks every client for a certificate and verifies one if given
(``CERT_OPTIONAL`` against the federation's CA): people and scripts use tokens and
need none, peer sites present their party certificate. uvicorn does not pass the
client certificate to the application, so :class:`TlsScopeProtocol` (uvicorn's h11
protocol, one instance per connection) adds it to each request's ASGI scope as the
ASGI TLS extension does (``scope["extensions"]["tls"]["client_cert_chain"]``).
"""
from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from fed.site.api.app import create_app
from fed.site.config import SiteConfig, load_site
from fed.site.control import JobControl
from fed.site.core.db import Database
from fed.site.runner.base import TaskRunner
from fed.site.service import SiteService


class _WithClientCert:
    """The application, seen through one connection: adds its client certificate."""

    def __init__(self, app: Any, chain: list[str]) -> None:
        self._app, self._chain = app, chain

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = dict(scope)
            scope["extensions"] = {**scope.get("extensions", {}), "tls": {"client_cert_chain": self._chain}}
        await self._app(scope, receive, send)


class TlsScopeProtocol(H11Protocol):
    """uvicorn's h11 protocol passing the connection's client certificate to the app."""

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(True) if ssl_object is not None else None
        self.app = _WithClientCert(self.app, [ssl.DER_cert_to_PEM_cert(der)] if der else [])


def open_site(config: SiteConfig, runner: TaskRunner | None = None, workdir: Path = Path("runs")) -> SiteService:
    """The site's service over its migrated database; with a runner, it also runs jobs
    (its worker thread is started by :func:`serve`)."""
    db = Database(config.database)
    db.migrate()
    if runner is None:
        return SiteService(config, db)
    control = JobControl(config, db, runner, workdir)
    return SiteService(config, db, on_job_state=control.on_job_state, control=control)


def uvicorn_config(service: SiteService, log_level: str = "warning") -> uvicorn.Config:
    tls = service.config.tls
    return uvicorn.Config(
        create_app(service), host=service.config.listen.host, port=service.config.listen.port,
        ssl_certfile=tls.cert, ssl_keyfile=tls.key, ssl_ca_certs=tls.ca_cert,
        ssl_cert_reqs=ssl.CERT_OPTIONAL, http=TlsScopeProtocol, lifespan="off",
        log_level=log_level, timeout_graceful_shutdown=5,
    )


class _Server(uvicorn.Server):
    """uvicorn's server, telling the caller once it listens."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._on_started is not None:
            self._on_started()


def serve(site_dir: Path, log_level: str = "warning", on_ready: Callable[[SiteConfig], None] | None = None) -> None:
    """Run the site in ``site_dir`` until SIGINT or SIGTERM (uvicorn exits 1 if it cannot
    listen, after logging why)."""
    config = load_site(site_dir)
    runner, workdir = site_runner(config, Path(site_dir))
    service = open_site(config, runner, workdir)
    ready = (lambda: on_ready(config)) if on_ready is not None else None
    if service.control is not None:
        service.control.start()
    try:
        _Server(uvicorn_config(service, log_level), ready).run()
    finally:
        if service.control is not None:
            service.control.stop()
        service.db.close()


def site_runner(config: SiteConfig, site_dir: Path) -> tuple[TaskRunner | None, Path]:
    """The runner of this site's party tasks, from site.yaml's ``runner`` section, and the
    directory for task outputs (``workdir``, relative to the site directory). No runner
    (a local runner without ``ray_address``): the site approves jobs but neither schedules
    nor runs them; ``kind: none`` schedules and runs none (a third-party scheduler)."""
    section = config.runner
    workdir = (Path(site_dir) / section.workdir).resolve()
    if section.kind == "kubernetes" and section.kubernetes is not None:
        from fed.site.runner.kubernetes import RayJobRunner
        from fed.site.runner.ray_jobs import find_ray_token

        # The dashboard stops runs and serves their logs; with Ray's token
        # authentication on it wants the cluster's token, as the local runner does.
        token = find_ray_token(section.ray_token_file)
        return RayJobRunner.from_config(section.kubernetes, dashboard_token=token), workdir
    if section.kind == "none":
        from fed.site.runner.none import NoRunner

        return NoRunner(), workdir
    if section.ray_address is None:
        return None, workdir
    from fed.site.runner.ray_jobs import RayJobsRunner

    return RayJobsRunner.from_config(section), workdir
