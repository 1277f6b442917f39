"""Mount the board on the site's application (one call from api/app.py)."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse

from fed.site.board.live import live_router
from fed.site.board.pages import PREFIX, page_router
from fed.site.board.sessions import STATE_KEY, SessionSigner
from fed.site.board.web import SECURITY_HEADERS, Board, LoginRequired
from fed.site.service import SiteService


def install_board(app: FastAPI, service: SiteService) -> None:
    """Add the board's routes; a page without a session sends the browser to the login."""
    signer = SessionSigner(service.party)
    setattr(app.state, STATE_KEY, signer)
    board = Board(service.db, service.party, signer)
    app.include_router(page_router(service, board))
    app.include_router(live_router(service, board))

    async def to_login(_request: Request, _exc: Exception) -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/login", status_code=303, headers=SECURITY_HEADERS)

    app.add_exception_handler(LoginRequired, to_login)
