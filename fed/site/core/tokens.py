"""Bearer tokens of the client API: shown once at creation, kept only as a SHA-256.

A token is 32 random bytes, so a plain SHA-256 cannot be reversed by guessing (a slow
password hash protects low-entropy secrets; these are not). Looking a token up by
its hash takes one indexed read.
"""
from __future__ import annotations

import enum
import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from fed.site.core.models import Token, utcnow

TOKEN_PREFIX = "rfs_"


class Role(str, enum.Enum):
    """What a token may do; each role includes the ones below it."""

    VIEWER = "viewer"  # read jobs, components and the site's status
    SUBMITTER = "submitter"  # and submit jobs
    ADMIN = "admin"  # and approve or reject jobs, manage components

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_RANKS = {Role.VIEWER: 0, Role.SUBMITTER: 1, Role.ADMIN: 2}


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(s: Session, role: Role, name: str) -> str:
    """Store a new token's hash and return the token (the only time it exists in clear)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    s.add(Token(id=secrets.token_hex(8), name=name, role=role.value, token_hash=token_hash(token)))
    s.flush()
    return token


def authenticate(s: Session, token: str) -> Token | None:
    """The live token record for ``token``, or None."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    record = s.scalars(select(Token).where(Token.token_hash == token_hash(token))).one_or_none()
    if record is None or record.revoked_at is not None:
        return None
    return record


def revoke_token(s: Session, token_id: str) -> bool:
    record = s.get(Token, token_id)
    if record is None or record.revoked_at is not None:
        return False
    record.revoked_at = utcnow()
    return True


def list_tokens(s: Session) -> list[dict[str, str | None]]:
    rows = s.scalars(select(Token).order_by(Token.created_at))
    return [{"id": t.id, "name": t.name, "role": t.role,
             "revoked": "yes" if t.revoked_at else "no"} for t in rows]
