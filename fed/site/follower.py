"""A party's view of the jobs another party schedules: it takes the scheduler's combined
states (pushed as a snapshot in callback mode, pulled in poll mode and, as a safety net
and after a restart, in both), and stops its own runs of a job that has ended.

This party's own party-task rows are never overwritten from a snapshot: they are the
truth about its runs, and only its executor changes them.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import select

from fed.site.calls import INTERCONNECT, PeerCalls
from fed.site.config import SiteConfig
from fed.site.core import runs, store
from fed.site.core.db import Database
from fed.site.core.models import Job, JobParty, PartyTask, Task
from fed.site.core.states import Entity, JobState, is_final
from fed.site.errors import SiteError
from fed.site.executor import PartyExecutor

log = logging.getLogger("fed.site")
_FOLLOWED = (JobState.ACCEPTED.value, JobState.RUNNING.value)


class Follower:
    """Keeps this site's copy of jobs scheduled elsewhere in step with their scheduler."""

    def __init__(self, config: SiteConfig, db: Database, calls: PeerCalls, executor: PartyExecutor) -> None:
        self.config, self.db, self.calls, self.executor = config, db, calls, executor
        self.party = config.party
        self._pulled: dict[str, float] = {}

    def tick(self) -> None:
        """Pull the snapshot of each followed job whose time has come."""
        with self.db.session() as s:
            jobs = s.execute(select(Job.id, Job.sync_mode, Job.scheduler).where(
                Job.scheduler != self.party, Job.state.in_(_FOLLOWED))).all()
        now = time.monotonic()
        for job_id, mode, scheduler in jobs:
            every = self.config.sync.poll_interval_s if mode == "poll" else self.config.sync.safety_poll_s
            if now - self._pulled.get(job_id, 0.0) < every:
                continue
            self._pulled[job_id] = now
            self.pull(job_id, scheduler)

    def pull(self, job_id: str, scheduler: str) -> None:
        with self.db.session() as s:
            url = s.get(JobParty, (job_id, scheduler)).site_url
        try:
            snap = self.calls.call(scheduler, url, "GET", f"{INTERCONNECT}/{job_id}/snapshot", attempts=1)
        except SiteError as exc:
            log.info("site %s: pulling job %s from its scheduler %s: %s", self.party, job_id, scheduler, exc)
            return
        self.apply(job_id, snap)

    def apply(self, job_id: str, snap: dict[str, Any]) -> None:
        """Bring the job, its tasks and the other parties' party tasks to the snapshot."""
        actor = "party:scheduler"
        with self.db.session() as s:
            job = store.lock_job(s, job_id)
            runs.follow(s, Entity.JOB, job, snap["job"]["state"], snap["job"]["reason"], actor)
            for row in snap["tasks"]:
                t = s.get(Task, (job_id, row["name"]))
                if t is not None:
                    t.attempt = max(t.attempt, int(row["attempt"]))
                    runs.follow(s, Entity.TASK, t, row["state"], row["reason"], actor)
            for row in snap["party_tasks"]:
                pt = s.get(PartyTask, (job_id, row["task"], row["party"]))
                if pt is not None and pt.party != self.party:
                    pt.attempt = int(row["attempt"])
                    runs.follow(s, Entity.PARTY_TASK, pt, row["state"], row["reason"], actor)
            ended, reason = is_final(Entity.JOB, job.state), job.reason
        if ended:
            self.executor.stop(job_id, None, f"job {snap['job']['state']}: {reason}")
