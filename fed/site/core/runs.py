"""Runs in the database: channel ports, state changes learned from elsewhere, snapshots.

A party's own party-task rows are the truth about its runs; the scheduler's rows are the
truth about tasks and the job; every other row is a copy. A copy may skip states (a
lost message, a fast run), so :func:`follow` walks the transition table's shortest legal
path to the reported state, recording each step: the tables are never bypassed.
"""
from __future__ import annotations

import datetime
import random
from collections import deque
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from fed.site.core.models import ChannelPort, Job, PartyTask, Task, utcnow
from fed.site.core.states import TRANSITIONS, Entity
from fed.site.core.store import Record, change_state
from fed.site.errors import SiteConfigError

_FIELD = {Entity.JOB: "state", Entity.TASK: "state", Entity.PARTY_TASK: "state"}


def path_to(entity: Entity, current: str, target: str) -> list[str] | None:
    """The shortest list of states leading from ``current`` to ``target`` (empty if equal),
    or None if the table allows no way there."""
    if current == target:
        return []
    moves = TRANSITIONS[entity]
    seen, queue = {current: []}, deque([current])
    while queue:
        here = queue.popleft()
        for nxt in sorted(moves.get(here, ())):
            if nxt in seen:
                continue
            seen[nxt] = seen[here] + [nxt]
            if nxt == target:
                return seen[nxt]
            queue.append(nxt)
    return None


def follow(s: Session, entity: Entity, record: Record, target: str, reason: str, actor: str) -> bool:
    """Bring ``record`` to ``target`` by legal steps; False if it is there already or if
    no legal path leads there (a stale message: the record has moved on)."""
    target = getattr(target, "value", target)
    steps = path_to(entity, getattr(record, _FIELD[entity]), target)
    if not steps:
        return False
    for state in steps:
        change_state(s, entity, record, state, reason, actor)
    return True


def port_range(spec: str) -> range:
    low, _, high = spec.partition("-")
    return range(int(low), int(high) + 1)


def allocate_port(s: Session, ports: str, job_id: str, task: str, attempt: int) -> int:
    """A free port of this party's channel range for ``(job, task, attempt)``, held in the
    database (a restart keeps it; asking again returns the same port)."""
    held = s.scalars(select(ChannelPort).where(ChannelPort.job_id == job_id, ChannelPort.task == task)).all()
    for row in held:
        if row.attempt == attempt:
            return row.port
    s.execute(delete(ChannelPort).where(ChannelPort.job_id == job_id, ChannelPort.task == task))
    used = set(s.scalars(select(ChannelPort.port)))
    old = {row.port for row in held}  # an older attempt's run may still be exiting
    free = [p for p in port_range(ports) if p not in used]
    free = [p for p in free if p not in old] or free
    if not free:
        raise SiteConfigError(f"every channel port of the range {ports} is in use by other tasks; "
                              "widen `channel.ports` of this party in federation.yaml")
    port = random.choice(free)  # spreads reuse over the range
    s.add(ChannelPort(port=port, job_id=job_id, task=task, attempt=attempt))
    s.flush()
    return port


def release_ports(s: Session, job_id: str, task: str | None = None) -> None:
    query = delete(ChannelPort).where(ChannelPort.job_id == job_id)
    if task is not None:
        query = query.where(ChannelPort.task == task)
    s.execute(query)


def tasks_of(s: Session, job_id: str) -> list[Task]:
    return list(s.scalars(select(Task).where(Task.job_id == job_id).order_by(Task.name)))


def party_tasks(s: Session, job_id: str, task: str | None = None, party: str | None = None) -> list[PartyTask]:
    query = select(PartyTask).where(PartyTask.job_id == job_id)
    if task is not None:
        query = query.where(PartyTask.task == task)
    if party is not None:
        query = query.where(PartyTask.party == party)
    return list(s.scalars(query.order_by(PartyTask.task, PartyTask.party)))


def own_active(s: Session, party: str) -> list[str]:
    """``job/task attempt N: state`` of this party's runs that have not ended."""
    rows = s.scalars(select(PartyTask).where(PartyTask.party == party,
                                             PartyTask.state.in_(("starting", "running"))))
    return [f"{pt.job_id}/{pt.task} attempt {pt.attempt}: {pt.state}" for pt in rows]


def party_task_row(pt: PartyTask) -> dict[str, Any]:
    return {"task": pt.task, "party": pt.party, "state": pt.state, "reason": pt.reason, "attempt": pt.attempt}


def snapshot(s: Session, job: Job) -> dict[str, Any]:
    """The job, its tasks and party tasks as this site holds them (what the scheduler
    pushes to the parties, and what a party pulls from the scheduler)."""
    return {
        "job": {"state": job.state, "reason": job.reason},
        "tasks": [{"name": t.name, "state": t.state, "reason": t.reason, "attempt": t.attempt}
                  for t in tasks_of(s, job.id)],
        "party_tasks": [party_task_row(pt) for pt in party_tasks(s, job.id)],
    }


def age_s(ts: datetime.datetime) -> float:
    """Seconds since ``ts`` (SQLite returns naive datetimes; they are UTC)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=datetime.timezone.utc)
    return (utcnow() - ts).total_seconds()
