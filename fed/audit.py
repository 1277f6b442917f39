"""The egress audit log: one JSON line per value that left this party (or was stopped).

The point is evidence: a data owner can show what left, when, for which call and to
whom. ``sha256`` is computed over the exact bytes sent (the pickle, then each
out-of-band buffer, in order), so the receiving party can compute the same digest.
Records are appended with one ``write`` on an ``O_APPEND`` descriptor, so several
writers in the party (the driver's sender threads, a second job) can share the file.

Every value that may leave is recorded twice. First a ``sending`` record, written and
``fsync``-ed *before its first byte goes out*: if that write fails the value is not sent,
so a crash, OOM kill or power loss can never leave bytes on the wire without a line in
the log. Then one completion record with the outcome and the number of attempts (bytes
leave once per attempt):
``sent`` (acknowledged), ``duplicate`` (acknowledged, the peer already had it from an
earlier attempt), ``refused`` (it arrived, the peer refused it), ``failed`` (it may have
partly left before the channel failed). ``denied`` (the egress policy stopped it; nothing
left) is the only record of a value that never started. A ``sending`` record with no
completion record is a send the process did not live to finish; ``fed audit`` shows it as
``unfinished``.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

STATUSES = ("sending", "sent", "duplicate", "refused", "failed", "denied", "unfinished")
COMPLETED_STATUSES = ("sent", "duplicate", "refused", "failed")
LEFT_STATUSES = ("sent", "duplicate", "refused", "failed", "unfinished")


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

    def record(self, durable: bool = False, **fields: Any) -> None:
        """Append one record; ``durable`` also ``fsync``s it (used before bytes leave).

        Raises OSError when the record could not be written whole, so the caller can
        decide (the sender refuses to send a value whose ``sending`` record failed)."""
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
        line = (json.dumps({"time": now, **fields}, default=str) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(f"short write to {self.path} ({written} of {len(line)} bytes)")
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)


def read_records(path: str) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
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


def _send_id(record: dict[str, Any]) -> tuple:
    return tuple(str(record.get(f)) for f in ("job", "src", "dst", "ordinal", "call_seq"))


def resolve_unfinished(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop each ``sending`` record that has a completion record; the others (the
    process died mid-send) become ``unfinished``: their bytes may have left."""
    records = list(records)
    completed = {_send_id(r) for r in records if r.get("status") in COMPLETED_STATUSES}
    out = []
    for r in records:
        if r.get("status") == "sending":
            if _send_id(r) in completed:
                continue
            r = {**r, "status": "unfinished"}
        out.append(r)
    return out


def summarize(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, int]]:
    """{(job, src, dst): {"values": n, "bytes": n, <status>: n}} over records that left."""
    table: dict[tuple[str, str, str], dict[str, int]] = {}
    for r in resolve_unfinished(records):
        row = table.setdefault(
            (str(r.get("job")), str(r.get("src")), str(r.get("dst"))), {"values": 0, "bytes": 0}
        )
        status = str(r.get("status"))
        row[status] = row.get(status, 0) + 1
        if status in LEFT_STATUSES:
            row["values"] += 1
            row["bytes"] += int(r.get("bytes") or 0)
    return table
