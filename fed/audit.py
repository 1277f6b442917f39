"""The egress audit log: one JSON line per value that left this party (or was stopped).

The point is evidence: a data owner can show what left, when, for which call and to
whom. ``sha256`` is computed over the exact bytes sent (the pickle, then each
out-of-band buffer, in order), so the receiving party can compute the same digest.
Records are appended with one ``write`` on an ``O_APPEND`` descriptor, so the sender
actor and the driver (which records policy denials) can share the file.

Statuses: ``sent`` (acknowledged), ``duplicate`` (acknowledged, the peer already had
it from an earlier attempt), ``refused`` (it arrived, the peer refused it),
``failed`` (it may have partly left before the channel failed), ``denied`` (the
egress policy stopped it; nothing left).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import threading
from typing import Any, Iterable, Iterator, Optional, Sequence

STATUSES = ("sent", "duplicate", "refused", "failed", "denied")
LEFT_STATUSES = ("sent", "duplicate", "refused", "failed")


def payload_digest(parts: Sequence[Any]) -> str:
    """sha256 of the concatenated parts (bytes or buffers), without concatenating them."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()


class AuditLog:
    """Appends records to a JSON-lines file (created 0600 if missing)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def check_writable(self) -> None:
        """Open the file for appending once, so a bad path fails at start, not mid-job."""
        os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))

    def record(self, **fields: Any) -> None:
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
        line = (json.dumps({"time": now, **fields}, default=str) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)


def read_records(path: str) -> Iterator[tuple[int, Optional[dict[str, Any]], str]]:
    """(line number, record or None if the line is not a JSON object, raw line)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            text = line.rstrip("\n")
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except ValueError:
                record = None
            yield number, record if isinstance(record, dict) else None, text


def summarize(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, int]]:
    """{(job, src, dst): {"values": n, "bytes": n, <status>: n}} over records that left."""
    table: dict[tuple[str, str, str], dict[str, int]] = {}
    for r in records:
        row = table.setdefault(
            (str(r.get("job")), str(r.get("src")), str(r.get("dst"))), {"values": 0, "bytes": 0}
        )
        status = str(r.get("status"))
        row[status] = row.get(status, 0) + 1
        if status in LEFT_STATUSES:
            row["values"] += 1
            row["bytes"] += int(r.get("bytes") or 0)
    return table
