"""Running jobs at one site: the executor (this party's runs), the scheduler (jobs this
party schedules), the follower (jobs scheduled elsewhere), the outbox, and the worker
thread that drives them.

The interconnect calls about runs land here, after the caller's party was read from its
certificate: only a party of the job may call; only the job's scheduler may prepare,
start or stop a party's run or push a snapshot; a party reports only its own runs.

Restarts need no special path: the worker's first round re-attaches to the runs the
database says are going (executor), pulls the job's state from its scheduler
(follower), polls the parties (scheduler) and redelivers the outbox.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from fed.site.calls import INTERCONNECT, PeerCalls
from fed.site.config import SiteConfig
from fed.site.core import outbox, runs, store
from fed.site.core.db import Database
from fed.site.core.models import Job
from fed.site.core.states import ApprovalState, Entity, JobState, is_final
from fed.site.errors import AccessDenied, Conflict, NotFoundError, SiteError
from fed.site.executor import PartyExecutor
from fed.site.follower import Follower
from fed.site.runner.base import TaskRunner
from fed.site.scheduler import Scheduler

log = logging.getLogger("fed.site")


class JobControl:
    """Everything about running accepted jobs at this site."""

    def __init__(self, config: SiteConfig, db: Database, runner: TaskRunner, workdir: Path) -> None:
        self.config, self.db, self.party = config, db, config.party
        self.calls = PeerCalls(config, db)
        self.executor = PartyExecutor(config, db, runner, workdir, self._report_own)
        self.scheduler = Scheduler(config, db, self.calls, self.executor, self.wake)
        self.follower = Follower(config, db, self.calls, self.executor)
        self._wakeup, self._stopping = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None

    # ---- the worker ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"site-{self.party}-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(30)

    def wake(self) -> None:
        self._wakeup.set()

    def on_job_state(self, _job_id: str, state: str) -> None:
        """SiteService's hook: an accepted job is the scheduler's to start."""
        if state == JobState.ACCEPTED.value:
            self.wake()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wakeup.clear()
            self.round()
            self._wakeup.wait(self.config.sync.tick_s)

    def round(self) -> None:
        """One round of everything the site does by itself."""
        for step in (self.executor.tick, self.scheduler.tick, self.follower.tick, self.calls.deliver_outbox):
            try:
                step()
            except Exception:  # the worker must outlive any one failure
                log.exception("site %s: %s failed", self.party, getattr(step, "__qualname__", step))

    # ---- this party's runs, reported --------------------------------------------------------------
    def _report_own(self, job_id: str, task: str, attempt: int, state: str, reason: str) -> None:
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                return
            if job.scheduler != self.party and job.sync_mode == "callback":
                url = store.job_party(s, job_id, job.scheduler).site_url
                outbox.enqueue(s, job_id, job.scheduler, url, f"{INTERCONNECT}/{job_id}/report",
                               {"task": task, "attempt": attempt, "state": state, "reason": reason})
            scheduler = job.scheduler
        if scheduler == self.party:
            self.scheduler.receive_report(self.party, job_id, task, attempt, state, reason)
        self.wake()

    # ---- client API ------------------------------------------------------------------------------
    def stop_job(self, job_id: str, reason: str, actor: str) -> str:
        """Stop the job everywhere: here at once, then through its scheduler."""
        scheduler, url = self._scheduler_of(job_id)
        if scheduler == self.party:
            return self.scheduler.stop_job(job_id, reason, actor)
        self.executor.stop(job_id, None, f"stopped by {actor} at {self.party}: {reason}")
        body = {"reason": f"{actor} at {self.party}: {reason}"}
        path = f"{INTERCONNECT}/{job_id}/stop"
        try:
            self.calls.call(scheduler, url, "POST", path, body)
        except SiteError as exc:
            with self.db.session() as s:
                outbox.enqueue(s, job_id, scheduler, url, path, body)
            return f"stop queued for the scheduler {scheduler!r} ({exc}); this party's runs are stopped"
        self.follower.pull(job_id, scheduler)
        return "stopped"

    def logs(self, job_id: str, task: str) -> str:
        return self.executor.logs(job_id, task)

    # ---- interconnect (caller = the peer's party) -------------------------------------------------
    def prepare(self, caller: str, job_id: str, task: str, attempt: int) -> dict[str, Any]:
        self._check(caller, job_id, scheduler_only=True)
        self._check_approved(job_id)
        return self.executor.prepare(job_id, task, attempt)

    def start_run(self, caller: str, job_id: str, task: str, attempt: int, addresses: dict[str, str]) -> dict[str, Any]:
        self._check(caller, job_id, scheduler_only=True)
        self._check_approved(job_id)
        try:
            return self.executor.start(job_id, task, attempt, addresses)
        except SiteError as exc:  # the scheduler learns it from the run's state
            self.executor.fail(job_id, task, attempt, f"could not start: {exc}")
            return {"party": self.party, "state": "failed", "reason": str(exc)}

    def stop_run(self, caller: str, job_id: str, task: str, attempt: int, reason: str) -> dict[str, Any]:
        self._check(caller, job_id, scheduler_only=True)
        self.executor.stop(job_id, task, reason, attempt)
        return {"party": self.party, "stopped": True}

    def report(self, caller: str, job_id: str, task: str, attempt: int, state: str, reason: str) -> dict[str, Any]:
        self._check(caller, job_id, at_scheduler=True)
        changed = self.scheduler.receive_report(caller, job_id, task, attempt, state, reason)
        return {"party": self.party, "recorded": changed}

    def own_runs(self, caller: str, job_id: str) -> dict[str, Any]:
        self._check(caller, job_id)
        with self.db.session() as s:
            return {"party_tasks": [runs.party_task_row(pt) for pt in runs.party_tasks(s, job_id, party=self.party)]}

    def snapshot(self, caller: str, job_id: str) -> dict[str, Any]:
        self._check(caller, job_id)
        with self.db.session() as s:
            return runs.snapshot(s, s.get(Job, job_id))

    def receive_snapshot(self, caller: str, job_id: str, snap: dict[str, Any]) -> dict[str, Any]:
        self._check(caller, job_id, scheduler_only=True)
        self.follower.apply(job_id, snap)
        return {"party": self.party, "applied": True}

    def stop_request(self, caller: str, job_id: str, reason: str) -> dict[str, Any]:
        self._check(caller, job_id, at_scheduler=True)
        return {"party": self.party, "job_state": self.scheduler.stop_job(job_id, reason, f"party:{caller}")}

    def _check(self, caller: str, job_id: str, scheduler_only: bool = False, at_scheduler: bool = False) -> None:
        with self.db.session() as s:
            spec = store.spec_for_party(s, job_id, caller, self.party)
        if scheduler_only and caller != spec.scheduler_party:
            raise AccessDenied(f"only the scheduler {spec.scheduler_party!r} of job {job_id} may do this")
        if at_scheduler and self.party != spec.scheduler_party:
            raise Conflict(f"{self.party} is not the scheduler of job {job_id} (ask {spec.scheduler_party!r})")

    def _check_approved(self, job_id: str) -> None:
        """This party runs a job only if it accepted it itself, and only while it is live."""
        with self.db.session() as s:
            job = s.get(Job, job_id)
            mine = store.job_party(s, job_id, self.party)
            approval, state = (mine.approval if mine else None), job.state
        if approval != ApprovalState.ACCEPTED.value:
            raise Conflict(f"party {self.party!r} has not accepted job {job_id} (its decision: {approval}); "
                           "it runs nothing of it")
        if is_final(Entity.JOB, state):
            raise Conflict(f"job {job_id} is {state} at {self.party}'s site: nothing more runs")

    def _scheduler_of(self, job_id: str) -> tuple[str, str]:
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"no job {job_id!r} at {self.party}'s site")
            return job.scheduler, store.job_party(s, job_id, job.scheduler).site_url
