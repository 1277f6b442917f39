"""Board sessions: a signed cookie naming a token by its id, and CSRF values derived from it.

The cookie is ``<token id>.<expiry>.<HMAC>`` under a key drawn when the site starts
(restarting the site ends every session). It carries no secret: the token itself is
seen once, at login, and never stored or logged. Each request reads the token's row
again, so a revoked token ends its sessions at once and the role is always current.
The CSRF value of a form is an HMAC of the session cookie, so a page of another
origin can neither read nor compute it.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from sqlalchemy.orm import Session

from fed.site.core.models import Token
from fed.site.core.tokens import Role

#: The cookie's name is this plus the party: sites of one host share its cookies
#: (cookies ignore ports), so each site keeps its own.
COOKIE = "rayfed_board"
#: Where the application keeps its signer (``app.state``): the client API reads board
#: sessions through it, for GET requests only (api/auth.py).
STATE_KEY = "board_sessions"
#: How long a board session lasts (seconds).
SESSION_TTL_S = 12 * 3600


@dataclass(frozen=True)
class BoardUser:
    """Who is logged in: the token's name and its current role."""

    name: str
    role: Role

    @property
    def actor(self) -> str:
        return f"token:{self.name}"

    def can(self, needed: Role) -> bool:
        return self.role.allows(needed)


class SessionSigner:
    """Issues and checks board session cookies and their CSRF values (one per site process)."""

    def __init__(self, party: str, key: bytes | None = None, ttl_s: int = SESSION_TTL_S) -> None:
        self.cookie = f"{COOKIE}_{party.replace('-', '_')}"
        self._key = key or secrets.token_bytes(32)
        self._ttl_s = ttl_s

    def _mac(self, purpose: str, text: str) -> str:
        return hmac.new(self._key, f"{purpose}|{text}".encode(), hashlib.sha256).hexdigest()

    def issue(self, token_id: str) -> str:
        """A cookie value for a session of the token ``token_id``."""
        body = f"{token_id}.{int(time.time()) + self._ttl_s}"
        return f"{body}.{self._mac('session', body)}"

    def token_id(self, cookie: str | None) -> str | None:
        """The token id of a valid, unexpired cookie, else None."""
        if not cookie or cookie.count(".") != 2:
            return None
        token_id, expiry, mac = cookie.split(".")
        if not hmac.compare_digest(mac, self._mac("session", f"{token_id}.{expiry}")):
            return None
        if not expiry.isdigit() or int(expiry) < time.time():
            return None
        return token_id

    def csrf(self, cookie: str) -> str:
        """The CSRF value forms of this session carry."""
        return self._mac("csrf", cookie)

    def csrf_ok(self, cookie: str | None, value: str | None) -> bool:
        return bool(cookie and value) and hmac.compare_digest(self.csrf(cookie), value)

    def user(self, s: Session, cookie: str | None) -> BoardUser | None:
        """The live token behind a session cookie, or None (bad, expired, revoked)."""
        token_id = self.token_id(cookie)
        record = s.get(Token, token_id) if token_id else None
        if record is None or record.revoked_at is not None:
            return None
        return BoardUser(record.name, Role(record.role))
