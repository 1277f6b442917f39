"""Metrics from components: read a task's ``metrics.jsonl`` into the database, and the
series the APIs serve.

A component appends one JSON object a line (fed.site.taskcontext); the executor calls
:func:`ingest_metrics_file` while the task runs and once at its end. Each call reads
only what was appended since the last one (the offset is stored with the points, in
the same transaction, so a repeated or concurrent call never stores a point twice), at
most :data:`MAX_READ_BYTES` a call. The file is the component's own output, so it is
read as untrusted text: a line that is not a valid metric, or longer than
:data:`MAX_LINE_BYTES`, is skipped and counted; a task keeps at most
:data:`MAX_POINTS_PER_TASK` points, the rest is counted as dropped.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from fed.site.core.models import METRIC_NAME, Component, MetricPoint, MetricSource, Task

MAX_LINE_BYTES = 4096
MAX_READ_BYTES = 1 << 20
MAX_POINTS_PER_TASK = 100_000
_STEP_BOUND = 1 << 62


@dataclass(frozen=True)
class IngestResult:
    """What one call read: points stored, lines skipped as invalid, points over the bound."""

    added: int
    bad_lines: int
    dropped: int


def _source(s: Session, job_id: str, task: str, party: str) -> MetricSource:
    """The task's read position, locked for this transaction: created if missing without
    a race (INSERT ... ON CONFLICT DO NOTHING), then read FOR UPDATE on PostgreSQL (SQLite
    transactions here are BEGIN IMMEDIATE: one writer at a time)."""
    insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
    s.execute(insert(MetricSource).values(job_id=job_id, task=task, party=party, offset=0, skipping=False,
                                          points=0, bad_lines=0, dropped=0).on_conflict_do_nothing())
    query = (select(MetricSource).with_for_update().execution_options(populate_existing=True)
             .where(MetricSource.job_id == job_id, MetricSource.task == task, MetricSource.party == party))
    return s.scalars(query).one()


def _read_new(path: str, source: MetricSource) -> bytes:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < source.offset:  # the file was replaced: read the new one from its start
                source.offset, source.skipping = 0, False
            f.seek(source.offset)
            return f.read(MAX_READ_BYTES)
    except FileNotFoundError:
        return b""


def _split(data: bytes, skipping: bool) -> tuple[list[bytes], int, bool, int]:
    """Complete lines in ``data``; bytes consumed; still inside an over-long line; lines
    turned away for length. A partial last line is left for the next call unless it is
    over the bound already."""
    lines, pos, too_long = [], 0, 0
    while (end := data.find(b"\n", pos)) >= 0:
        if skipping:
            skipping = False
        elif end - pos > MAX_LINE_BYTES:
            too_long += 1
        else:
            lines.append(data[pos:end])
        pos = end + 1
    if len(data) - pos > MAX_LINE_BYTES and not skipping:
        too_long, skipping = too_long + 1, True
    if skipping:
        pos = len(data)
    return lines, pos, skipping, too_long


def parse_line(line: bytes) -> tuple[str, int | None, float, float] | None:
    """``(name, step, value, at)`` of one well-formed line, or None."""
    try:
        item = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(item, dict):
        return None
    name, step, value, at = item.get("name"), item.get("step"), item.get("value"), item.get("at")
    if not isinstance(name, str) or not 0 < len(name) <= METRIC_NAME:
        return None
    if step is not None and (type(step) is not int or abs(step) >= _STEP_BOUND):
        return None
    if not all(_finite(v) for v in (value, at)):
        return None
    return name, step, float(value), float(at)


def _finite(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def ingest_metrics_file(s: Session, job_id: str, task: str, party: str, path: str | os.PathLike,
                        max_points: int = MAX_POINTS_PER_TASK) -> IngestResult:
    """Store the points appended to ``path`` since the last call for this task and party
    (at most ``max_points`` for the task and party in all)."""
    source = _source(s, job_id, task, party)
    data = _read_new(os.fspath(path), source)
    lines, consumed, source.skipping, bad = _split(data, source.skipping)
    added = dropped = 0
    for line in lines:
        parsed = parse_line(line)
        if parsed is None:
            bad += 1
        elif source.points + added >= max_points:
            dropped += 1
        else:
            name, step, value, at = parsed
            s.add(MetricPoint(job_id=job_id, task=task, party=party, name=name, step=step, value=value, at=at))
            added += 1
    source.offset += consumed
    source.points += added
    source.bad_lines += bad
    source.dropped += dropped
    return IngestResult(added, bad, dropped)


def series(s: Session, job_id: str, party: str | None = None, shared_only: bool = False) -> list[dict[str, Any]]:
    """Every series of the job stored here (of ``party`` only, if given), as the API serves
    them: ``{"party", "task", "name", "points": [[step, value, at], ...]}``. With
    ``shared_only``, only tasks whose component this party registered as sharing metrics."""
    query = select(MetricPoint).where(MetricPoint.job_id == job_id)
    if party is not None:
        query = query.where(MetricPoint.party == party)
    if shared_only:
        query = query.where(MetricPoint.task.in_(shared_tasks(s, job_id)))
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    rows = s.scalars(query.order_by(MetricPoint.party, MetricPoint.task, MetricPoint.name, MetricPoint.id))
    for p in rows:
        entry = out.setdefault((p.party, p.task, p.name),
                               {"party": p.party, "task": p.task, "name": p.name, "points": []})
        entry["points"].append([p.step, p.value, p.at])
    return list(out.values())


def shared_tasks(s: Session, job_id: str) -> list[str]:
    """The job's tasks whose component (name and version) this party shares metrics of."""
    query = (select(Task.name).join(Component, (Component.name == Task.component)
                                    & (Component.version == Task.version))
             .where(Task.job_id == job_id, Component.share_metrics.is_(True)))
    return list(s.scalars(query))
