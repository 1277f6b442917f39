"""Who is calling: a client's bearer token and role, or a peer site's party.

* Client API: ``Authorization: Bearer <token>``; a missing or unknown token is 401,
  a token whose role is too low is 403. The caller is named ``token:<name>``. A GET
  without the header may instead carry a board session cookie (fed.site.board), so
  the board's pages read the API (the metrics chart) with the logged-in token's role;
  anything that changes state needs the header (or a board form with its CSRF value).
* Interconnect API: the TLS client certificate, verified by the handshake against
  the federation's CA, must name exactly one party with its URI SAN
  ``rayfed://party/<name>`` (as the channel reads it, fed.certnames); no certificate
  is 401. Whether that party may act on a job is the service's check.
"""
from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

from cryptography import x509
from fastapi import HTTPException, Request

from fed.certnames import read_names
from fed.names import PARTY_URI_PREFIX
from fed.site.board.sessions import STATE_KEY
from fed.site.core.db import Database
from fed.site.core.tokens import Role, authenticate

#: Where server.py puts the client certificate (the ASGI TLS extension's key).
TLS_EXTENSION = "tls"


def bearer(db: Database, needed: Role) -> Callable[[Request], str]:
    """A FastAPI dependency admitting tokens of role ``needed`` or above; returns the actor."""

    def check(request: Request) -> str:
        header = request.headers.get("authorization", "")
        if not header and request.method in ("GET", "HEAD"):
            session = _board_session(db, request)
            if session is not None:
                return _admit(*session, needed)
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "this API needs a token: send 'Authorization: Bearer <token>' "
                                "(an admin makes one with `fed site token create DIR --role ...`)",
                                headers={"WWW-Authenticate": "Bearer"})
        with db.session() as s:
            record = authenticate(s, token.strip())
            name, role = (record.name, Role(record.role)) if record else (None, None)
        if role is None:
            raise HTTPException(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
        return _admit(name, role, needed)

    return check


def _admit(name: str, role: Role, needed: Role) -> str:
    if not role.allows(needed):
        raise HTTPException(403, f"token {name!r} has role {role.value!r}; this needs {needed.value!r}")
    return f"token:{name}"


def _board_session(db: Database, request: Request) -> tuple[str, Role] | None:
    """The token name and role of a valid board session cookie on this request, if any."""
    signer = getattr(request.app.state, STATE_KEY, None)
    cookie = request.cookies.get(signer.cookie) if signer is not None else None
    if signer is None or not cookie:
        return None
    with db.session() as s:
        user = signer.user(s, cookie)
    return (user.name, user.role) if user else None


def client_certificate(scope: dict[str, Any]) -> bytes | None:
    """The DER client certificate of the connection, if the client presented one."""
    chain = scope.get("extensions", {}).get(TLS_EXTENSION, {}).get("client_cert_chain") or []
    return ssl.PEM_cert_to_DER_cert(chain[0]) if chain else None


def peer_party(request: Request) -> str:
    """A FastAPI dependency: the party named by the caller's TLS client certificate."""
    der = client_certificate(request.scope)
    if der is None:
        raise HTTPException(401, "interconnect calls need mutual TLS: present your party's "
                            "certificate (made by `fed certs`, signed by the federation's CA)")
    names = read_names(x509.load_der_x509_certificate(der))
    parties = names.parties(frozenset(), uri_only=True)
    if len(parties) != 1:
        raise HTTPException(403, f"the client certificate ({names.describe()}) must name exactly one "
                            f"party with the URI SAN {PARTY_URI_PREFIX}<name>")
    return next(iter(parties))
