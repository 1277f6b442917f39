"""The board's plumbing: templates, security headers, the logged-in user, form posts.

Every page is sent with a strict Content-Security-Policy (scripts, styles and
connections to this site only; no inline script), ``no-store`` caching and no
framing. A POST is accepted only with the session's CSRF value and, when the
browser names one, this site's own Origin.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jinja2
from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse

from fed.site.board.sessions import BoardUser, SessionSigner
from fed.site.core.db import Database

HERE = Path(__file__).resolve().parent
MAX_FORM_BYTES = 64 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
                                "form-action 'self'; base-uri 'none'; object-src 'none'"),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make form posts say Origin: null
}


class LoginRequired(Exception):
    """No valid session: pages send the browser to the login page."""


def templates() -> jinja2.Environment:
    """The board's templates (autoescaped: every value shown is text, never markup)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = lambda iso: (iso or "").replace("T", " ").rstrip("Z")[:19]
    return env


class Board:
    """What every board route needs: the database, the signer and the templates."""

    def __init__(self, db: Database, party: str, signer: SessionSigner) -> None:
        self.db, self.party, self.signer = db, party, signer
        self.env = templates()

    def user(self, request: Request) -> BoardUser | None:
        with self.db.session() as s:
            return self.signer.user(s, request.cookies.get(self.signer.cookie))

    def require(self, request: Request) -> BoardUser:
        user = self.user(request)
        if user is None:
            raise LoginRequired()
        return user

    def page(self, request: Request, name: str, user: BoardUser | None, status: int = 200,
             **values: Any) -> HTMLResponse:
        cookie = request.cookies.get(self.signer.cookie)
        csrf = self.signer.csrf(cookie) if cookie and user else ""
        html = self.env.get_template(name).render(party=self.party, user=user, csrf=csrf, **values)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    async def form(self, request: Request, *, login: bool = False) -> dict[str, str]:
        """A posted form, after the Origin and (unless logging in) CSRF checks."""
        origin = request.headers.get("origin")
        if origin is not None and origin != _own_origin(request):
            raise HTTPException(403, "cross-site form post refused")
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, "form too large")
        fields = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if not login and not self.signer.csrf_ok(request.cookies.get(self.signer.cookie), fields.get("csrf")):
            raise HTTPException(403, "missing or stale form token (CSRF): reload the page and try again")
        return fields


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"
