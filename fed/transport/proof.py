"""Proof of the job secret in HELLO, for channels that have no TLS.

Without TLS nothing in a connection says who opened it, so anyone who reaches a
party's port could claim to be a peer and end the job with a forged BYE or NOTICE. A
job secret shared by the parties (``RAYFED_JOB_SECRET``; ``fed run`` makes a fresh one
per run) binds a connection to its holders: the HELLO carries an HMAC-SHA256 of its
source, destination and job under the secret, and a receiver that has the secret
refuses any HELLO without the right one. A receiver with neither TLS nor a secret
still takes values (the channel is then unauthenticated, see docs/security.md) but
ignores the control frames (BYE, NOTICE, wait reports) that could end the job.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from typing import Any

from fed.names import JOB_SECRET_ENV


def job_secret_from_env(environ: Mapping[str, str] = os.environ) -> bytes | None:
    """The job secret this process was started with, or None."""
    value = environ.get(JOB_SECRET_ENV)
    return value.encode() if value else None


def hello_proof(secret: bytes, src: str, dst: str, job: str) -> str:
    """The HMAC a HELLO from `src` to `dst` in `job` carries."""
    message = "\n".join(("rayfed-hello", src, dst, job)).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def proof_ok(secret: bytes, hello: Mapping[str, Any]) -> bool:
    """Whether `hello` (already checked for string src, dst, job) proves the secret."""
    given = hello.get("proof")
    if not isinstance(given, str):
        return False
    expected = hello_proof(secret, hello["src"], hello["dst"], hello["job"])
    return hmac.compare_digest(given.encode(), expected.encode())
