"""What the APIs show of a job: plain dicts built from the database rows."""
from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fed.site.core.models import Job, JobParty, PartyTask, StateChange, Task
from fed.site.core.states import ApprovalState, JobState
from fed.site.core.store import iso, parties_of
from fed.site.errors import NotFoundError


def job_summary(job: Job, parties: list[JobParty]) -> dict[str, Any]:
    """The job's state and every party's decision (what `fed job list` shows)."""
    return {
        "id": job.id, "name": job.name, "state": job.state, "reason": job.reason,
        "initiator": job.initiator, "scheduler": job.scheduler, "sync_mode": job.sync_mode,
        "created_at": iso(job.created_at), "updated_at": iso(job.updated_at),
        "parties": [{"party": p.party, "site": p.site_url, "holds_data": p.holds_data,
                     "approval": p.approval, "reason": p.reason, "decided_at": iso(p.decided_at)}
                    for p in parties],
    }


def job_detail(s: Session, job_id: str) -> dict[str, Any]:
    """The summary plus tasks, party tasks and the whole history of the job."""
    job = s.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id!r} at this site")
    out = job_summary(job, parties_of(s, job_id))
    party_tasks = s.scalars(select(PartyTask).where(PartyTask.job_id == job_id).order_by(PartyTask.party))
    by_task: dict[str, list[dict[str, Any]]] = {}
    for pt in party_tasks:
        by_task.setdefault(pt.task, []).append(
            {"party": pt.party, "state": pt.state, "reason": pt.reason, "attempt": pt.attempt, "updated_at": iso(pt.updated_at)})
    out["tasks"] = [
        {"name": t.name, "component": t.component, "version": t.version, "state": t.state,
         "reason": t.reason, "attempt": t.attempt, "retries": t.retries, "timeout_s": t.timeout_s,
         "parties": by_task.get(t.name, [])}
        for t in s.scalars(select(Task).where(Task.job_id == job_id).order_by(Task.name))
    ]
    history = s.scalars(select(StateChange).where(StateChange.job_id == job_id).order_by(StateChange.id))
    out["history"] = [
        {"at": iso(h.at), "entity": h.entity, "task": h.task, "party": h.party, "from": h.from_state,
         "to": h.to_state, "reason": h.reason, "actor": h.actor}
        for h in history
    ]
    return out


def list_jobs(s: Session, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The newest jobs first, optionally only those in ``state``."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if state:
        query = query.where(Job.state == state)
    return _summaries(s, list(s.scalars(query)))


def _summaries(s: Session, jobs: list[Job]) -> list[dict[str, Any]]:
    """Summaries of many jobs with their parties read in one query (not one per job)."""
    by_job: dict[str, list[JobParty]] = {j.id: [] for j in jobs}
    if by_job:
        rows = s.scalars(select(JobParty).where(JobParty.job_id.in_(by_job)).order_by(JobParty.party))
        for p in rows:
            by_job[p.job_id].append(p)
    return [job_summary(j, by_job[j.id]) for j in jobs]


def pending_for(s: Session, party: str, limit: int = 100) -> list[dict[str, Any]]:
    """Jobs awaiting approval in which ``party`` has not decided yet, oldest first."""
    query = (
        select(Job).join(JobParty, JobParty.job_id == Job.id)
        .where(*_pending(party))
        .order_by(Job.created_at).limit(limit)
    )
    return _summaries(s, list(s.scalars(query)))


def count_pending_for(s: Session, party: str) -> int:
    """How many jobs :func:`pending_for` lists, in one query."""
    query = select(func.count()).select_from(Job).join(JobParty, JobParty.job_id == Job.id)
    return s.scalar(query.where(*_pending(party))) or 0


def _pending(party: str) -> tuple[Any, ...]:
    return (Job.state == JobState.AWAITING_APPROVAL.value, JobParty.party == party,
            JobParty.approval == ApprovalState.PENDING.value)


def count_jobs(s: Session) -> dict[str, int]:
    """``{state: number of jobs}``."""
    rows = s.execute(select(Job.state, func.count()).group_by(Job.state))
    return {state: n for state, n in rows}
