"""Turn pydantic's validation errors into ``(field path, problem)`` pairs people can act on.

Shared by the job spec and the site's configuration files, so both point at fields the
same way: ``tasks[1].deps[0]``, ``approval.auto_accept_initiators``.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from fed.names import PARTY_NAME_RULE, party_name_problem


def field_path(loc: Sequence[Any]) -> str:
    """``('tasks', 1, 'deps', 0)`` -> ``tasks[1].deps[0]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def problems_from(exc: ValidationError, known_fields: Iterable[str]) -> list[tuple[str, str]]:
    """One pair per pydantic error; an unknown field gets a did-you-mean from ``known_fields``."""
    known = sorted(set(known_fields))
    problems = []
    for err in exc.errors():
        loc = err.get("loc", ())
        if err.get("type") == "extra_forbidden" and loc:
            name = str(loc[-1])
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append((field_path(loc), f"unknown field{hint}"))
            continue
        got = err.get("input")
        shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
        problems.append((field_path(loc), f"{err.get('msg', 'invalid')}{shown}"))
    return problems


def name_problem(name: str, what: str) -> str | None:
    """Why ``name`` cannot name a party, task or component (one rule for all three:
    these names end up in file names, URLs and rayfed job names)."""
    if party_name_problem(name) is None:
        return None
    return f"invalid {what} name {name!r}: use {PARTY_NAME_RULE}"


def site_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a site's address: ``https://host[:port]`` and nothing more."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"bad site URL {url!r}: {exc}"
    if parts.scheme != "https":
        return f"bad site URL {url!r}: sites talk HTTPS only, so it must start with https://"
    if not parts.hostname:
        return f"bad site URL {url!r}: no host"
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return f"bad site URL {url!r}: give only https://host:port (no path, query or user)"
    if port == 0:
        return f"bad site URL {url!r}: port 0"
    return None


def normal_url(url: str) -> str:
    """A site URL without its trailing slash (URLs are compared as text)."""
    return url.rstrip("/")
