"""Jobs in the database: create them, change their states by the tables, record why.

Every change goes through :func:`change_state`, which checks the transition table
(fed.site.core.states) and appends a row to the history in the same transaction; a
forbidden change raises IllegalTransitionError and writes nothing.
"""
from __future__ import annotations

import datetime
import re
import secrets
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fed.site.core.models import Job, JobParty, PartyTask, StateChange, Task, utcnow
from fed.site.core.spec import JobSpec, spec_from_json
from fed.site.core.states import (
    INITIAL,
    ApprovalState,
    Entity,
    JobState,
    TaskState,
    check_transition,
)
from fed.site.errors import AccessDenied, NotFoundError

_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
Record = Job | JobParty | Task | PartyTask
_STATE_FIELD = {Entity.JOB: "state", Entity.APPROVAL: "approval", Entity.TASK: "state",
                Entity.PARTY_TASK: "state"}


def new_job_id() -> str:
    """Sortable by creation time, unique without coordination: ``20260101120000-1a2b3c4d``."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


def job_id_problem(job_id: str) -> str | None:
    if _JOB_ID.fullmatch(job_id):
        return None
    return f"invalid job id {job_id!r}: 1-64 letters, digits, '_', '-' or '.'"


def create_job(s: Session, job_id: str, spec: JobSpec, actor: str, reason: str) -> Job:
    """Insert a job with its parties, tasks and party tasks, all in their initial states."""
    job = Job(id=job_id, name=spec.name, initiator=spec.initiator, scheduler=spec.scheduler_party,
              sync_mode=spec.sync_mode, spec_json=spec.to_json(), state=INITIAL[Entity.JOB], reason=reason)
    s.add(job)
    _history(s, job_id, Entity.JOB, None, job.state, reason, actor)
    s.flush()  # rows refer to the job, then to its tasks: insert in that order
    for p in spec.parties:
        s.add(JobParty(job_id=job_id, party=p.name, site_url=spec.site_of(p.name), holds_data=p.holds_data,
                       approval=INITIAL[Entity.APPROVAL], reason=""))
    for t in spec.tasks:
        s.add(Task(job_id=job_id, name=t.name, component=t.component, version=t.version,
                   state=INITIAL[Entity.TASK], retries=t.retries, timeout_s=t.timeout_s, attempt=0, reason=""))
    s.flush()
    for t in spec.tasks:
        for party in spec.task_parties(t):
            s.add(PartyTask(job_id=job_id, task=t.name, party=party, state=INITIAL[Entity.PARTY_TASK], reason=""))
    s.flush()
    return job


def lock_job(s: Session, job_id: str) -> Job:
    """The job's row, locked until the transaction ends (PostgreSQL; SQLite: see db.py)."""
    job = s.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
    if job is None:
        raise NotFoundError(f"no job {job_id!r} at this site")
    return job


def change_state(s: Session, entity: Entity, record: Record, target: str, reason: str, actor: str) -> bool:
    """Move ``record`` to ``target`` if the table allows; record it in the history.
    Returns False (and writes nothing) if it is already there."""
    field = _STATE_FIELD[entity]
    current = getattr(record, field)
    target = getattr(target, "value", target)
    task = getattr(record, "task", None) if entity is Entity.PARTY_TASK else getattr(record, "name", None)
    party = getattr(record, "party", None)
    ident = "/".join(x for x in (record.job_id if entity is not Entity.JOB else record.id, task, party) if x)
    if not check_transition(entity, ident, current, target):
        return False
    setattr(record, field, target)
    record.reason = reason
    stamp = "decided_at" if entity is Entity.APPROVAL else "updated_at"
    setattr(record, stamp, utcnow())
    job_id = record.id if entity is Entity.JOB else record.job_id
    _history(s, job_id, entity, current, target, reason, actor,
             task=None if entity in (Entity.JOB, Entity.APPROVAL) else task, party=party)
    return True


def _history(s: Session, job_id: str, entity: Entity, old: str | None, new: str, reason: str,
             actor: str, task: str | None = None, party: str | None = None) -> None:
    s.add(StateChange(job_id=job_id, entity=entity.value, task=task, party=party, from_state=old,
                      to_state=new, reason=reason, actor=actor, at=utcnow()))


def job_party(s: Session, job_id: str, party: str) -> JobParty | None:
    return s.get(JobParty, (job_id, party))


def parties_of(s: Session, job_id: str) -> list[JobParty]:
    return list(s.scalars(select(JobParty).where(JobParty.job_id == job_id).order_by(JobParty.party)))


def settle_approval(s: Session, job: Job, actor: str) -> None:
    """Derive the job's state from its parties' decisions: one rejection rejects the job
    (naming the party and its reason); every party accepting accepts it."""
    if job.state != JobState.AWAITING_APPROVAL.value:
        return
    parties = parties_of(s, job.id)
    rejected = [p for p in parties if p.approval == ApprovalState.REJECTED.value]
    if rejected:
        first = rejected[0]
        end_job(s, job, JobState.REJECTED, f"rejected by party {first.party!r}: {first.reason}", actor)
    elif all(p.approval == ApprovalState.ACCEPTED.value for p in parties):
        change_state(s, Entity.JOB, job, JobState.ACCEPTED, "every party accepted", actor)


def end_job(s: Session, job: Job, state: JobState, reason: str, actor: str) -> None:
    """Put the job in a final state and cancel its tasks that have not started."""
    change_state(s, Entity.JOB, job, state, reason, actor)
    why = f"job {state.value}: {reason}"
    for task in s.scalars(select(Task).where(Task.job_id == job.id)):
        if task.state == TaskState.WAITING.value:
            change_state(s, Entity.TASK, task, TaskState.CANCELED, why, actor)
    for pt in s.scalars(select(PartyTask).where(PartyTask.job_id == job.id)):
        if pt.state == TaskState.WAITING.value:
            change_state(s, Entity.PARTY_TASK, pt, TaskState.CANCELED, why, actor)


def iso(ts: Any) -> str | None:
    """UTC time as ISO 8601 (SQLite returns naive datetimes; they are UTC)."""
    if ts is None:
        return None
    if ts.tzinfo is not None:
        ts = ts.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return ts.isoformat(timespec="milliseconds") + "Z"


def spec_for_party(s: Session, job_id: str, caller: str, here: str) -> JobSpec:
    """The job's spec if ``caller`` is one of its parties (the check every interconnect
    call makes first); NotFoundError or AccessDenied otherwise. ``here``: this site's party."""
    job = s.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id!r} at {here}'s site")
    spec = spec_from_json(job.spec_json)
    if caller not in spec.party_names:
        raise AccessDenied(f"party {caller!r} is not a party of job {job_id}")
    return spec
