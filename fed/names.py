"""Names shared by `fed.init`, the transport and the `fed` command, defined once.

Dependency-free so that the CLI (`fed run`, `fed certs`) can import it and still
start instantly.
"""
from __future__ import annotations

import re
from typing import Any

# The environment `fed run` sets for each party process (read by `fed.init`).
ADDRESSES_ENV = "RAYFED_ADDRESSES"  # JSON {party: "host:port"}
PARTY_ENV = "RAYFED_PARTY"
MODE_ENV = "RAYFED_MODE"
TLS_DIR_ENV = "RAYFED_TLS_DIR"  # a `fed certs` directory
JOB_NAME_ENV = "RAYFED_JOB_NAME"  # a fresh job name per `fed run`
JOB_SECRET_ENV = "RAYFED_JOB_SECRET"  # authenticates HELLOs without TLS (fed/transport/proof.py)

#: A certificate names party ``p`` with the URI SubjectAlternativeName PARTY_URI_PREFIX + p.
PARTY_URI_PREFIX = "rayfed://party/"

# One rule for party names everywhere (fed.init, fed run, fed certs): a name is also a
# file name, a DNS label and part of a certificate's URI SAN.
_PARTY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
PARTY_NAME_RULE = "1-63 letters, digits, '_', '-' or '.', starting with a letter or digit"


def party_name_problem(name: Any) -> str | None:
    """Why `name` cannot be a party name, or None if it can."""
    if not isinstance(name, str) or not _PARTY_NAME.fullmatch(name):
        return f"invalid party name {name!r}: use {PARTY_NAME_RULE}"
    return None
