"""What the board reads beyond the client API's views: filtered job lists and the DAG."""
from __future__ import annotations

import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fed.site.core.models import Job
from fed.site.core.spec import spec_from_json
from fed.site.core.store import parties_of
from fed.site.core.views import job_summary
from fed.site.errors import NotFoundError


def find_jobs(s: Session, state: str | None = None, initiator: str | None = None,
              since: datetime.date | None = None, until: datetime.date | None = None,
              limit: int = 200) -> list[dict[str, Any]]:
    """The newest jobs first, filtered by state, initiator and creation day (UTC, inclusive)."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if state:
        query = query.where(Job.state == state)
    if initiator:
        query = query.where(Job.initiator == initiator)
    if since:
        query = query.where(Job.created_at >= _midnight(since))
    if until:
        query = query.where(Job.created_at < _midnight(until + datetime.timedelta(days=1)))
    return [job_summary(j, parties_of(s, j.id)) for j in s.scalars(query)]


def _midnight(day: datetime.date) -> datetime.datetime:
    return datetime.datetime.combine(day, datetime.time(), tzinfo=datetime.timezone.utc)


def initiators(s: Session) -> list[str]:
    """Every party that initiated a job held here (the initiator filter's choices)."""
    return sorted(set(s.scalars(select(Job.initiator).distinct())))


def task_deps(s: Session, job_id: str) -> dict[str, list[str]]:
    """``{task: [tasks it depends on]}`` in the spec's order."""
    job = s.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id!r} at this site")
    return {t.name: list(t.deps) for t in spec_from_json(job.spec_json).tasks}
