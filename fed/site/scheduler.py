"""The scheduler: runs an accepted job's DAG from the job's scheduler party.

For each task whose dependencies succeeded it opens a new attempt: asks every party of
the task to **prepare** (a channel port each), then sends all of them **start** with
every party's address. Party-task changes come back by report (callback mode) or by
polling the parties (poll mode; in callback mode a slower poll catches lost reports).
Each change is combined (core/combine.py) into the task's state and the job's; a failed
or timed-out task with retries left gets a new attempt in all its parties (the old
runs are stopped first). Combined states go to every party as a snapshot.

Only the worker thread (control.py) calls :meth:`tick`; request threads record reports
and wake it. Calls to peers are made with no transaction open; notifications go
through the outbox (delivered and redelivered by the worker).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from fed.site.calls import INTERCONNECT, PeerCalls
from fed.site.config import SiteConfig
from fed.site.core import combine, outbox, runs, store
from fed.site.core.db import Database
from fed.site.core.models import Job, JobParty, PartyTask, Task
from fed.site.core.spec import spec_from_json
from fed.site.core.states import Entity, JobState, TaskState, is_final
from fed.site.errors import SiteError
from fed.site.executor import PartyExecutor

log = logging.getLogger("fed.site")
_T = TaskState
_LIVE = (_T.STARTING.value, _T.RUNNING.value)
After = list[Callable[[], None]]


class Scheduler:
    """The scheduler role of this site, for the jobs that name its party as scheduler."""

    def __init__(self, config: SiteConfig, db: Database, calls: PeerCalls, executor: PartyExecutor,
                 wake: Callable[[], None]) -> None:
        self.config, self.db, self.calls, self.executor = config, db, calls, executor
        self.party, self._wake = config.party, wake
        self._polled: dict[str, float] = {}

    # ---- the worker's round ---------------------------------------------------------------------
    def tick(self) -> None:
        """Start what is ready and poll the parties of every job this site schedules."""
        with self.db.session() as s:
            jobs = s.execute(select(Job.id, Job.sync_mode).where(
                Job.scheduler == self.party,
                Job.state.in_((JobState.ACCEPTED.value, JobState.RUNNING.value)))).all()
        for job_id, mode in jobs:
            try:
                self._advance(job_id)
                self._poll_if_due(job_id, mode)
                self._fail_unstarted(job_id)
            except Exception:  # one job's trouble must not stop the others
                log.exception("site %s: scheduling job %s failed", self.party, job_id)

    def _advance(self, job_id: str) -> None:
        with self.db.session() as s:
            job = store.lock_job(s, job_id)
            if job.state == JobState.ACCEPTED.value:
                store.change_state(s, Entity.JOB, job, JobState.RUNNING, "the scheduler started it", self._actor)
            if job.state != JobState.RUNNING.value:
                return
            spec = spec_from_json(job.spec_json)
            tasks = {t.name: t for t in runs.tasks_of(s, job_id)}
            ready = combine.ready_tasks({t.name: t.deps for t in spec.tasks}, {n: t.state for n, t in tasks.items()})
            starts = [self._open_attempt(s, tasks[name]) for name in ready]
        for name, attempt, parties in starts:
            self._start_attempt(job_id, name, attempt, parties)

    def _open_attempt(self, s: Any, task: Task) -> tuple[str, int, list[tuple[str, str]]]:
        task.attempt += 1
        store.change_state(s, Entity.TASK, task, _T.STARTING, f"attempt {task.attempt} of {task.retries + 1}",
                           self._actor)
        rows = runs.party_tasks(s, task.job_id, task.name)
        for pt in rows:
            if pt.party != self.party:  # this party's own row is its executor's (prepare sets it)
                pt.attempt = task.attempt
        urls = {p.party: p.site_url for p in store.parties_of(s, task.job_id)}
        return task.name, task.attempt, [(pt.party, urls[pt.party]) for pt in rows]

    def _start_attempt(self, job_id: str, task: str, attempt: int, parties: list[tuple[str, str]]) -> None:
        """Prepare every party (a port each), then send them all the addresses."""
        addresses = {}
        for party, url in parties:
            try:
                answer = (self.executor.prepare(job_id, task, attempt) if party == self.party else
                          self.calls.call(party, url, "POST", f"{INTERCONNECT}/{job_id}/tasks/{task}/prepare",
                                          {"attempt": attempt}))
            except SiteError as exc:
                self.receive_report(party, job_id, task, attempt, _T.FAILED.value, f"could not prepare: {exc}")
                return
            addresses[party] = answer["address"]
        body = {"attempt": attempt, "addresses": addresses}
        with self.db.session() as s:
            for party, url in parties:
                if party != self.party:
                    outbox.enqueue(s, job_id, party, url, f"{INTERCONNECT}/{job_id}/tasks/{task}/start", body)
        if any(party == self.party for party, _ in parties):
            try:
                self.executor.start(job_id, task, attempt, addresses)
            except SiteError as exc:
                self.receive_report(self.party, job_id, task, attempt, _T.FAILED.value, f"could not start: {exc}")
        self._push(job_id)

    def _poll_if_due(self, job_id: str, mode: str) -> None:
        every = self.config.sync.poll_interval_s if mode == "poll" else self.config.sync.safety_poll_s
        now = time.monotonic()
        if now - self._polled.get(job_id, 0.0) < every:
            return
        self._polled[job_id] = now
        with self.db.session() as s:
            parties = [(p.party, p.site_url) for p in store.parties_of(s, job_id) if p.party != self.party]
            active = {pt.party for pt in runs.party_tasks(s, job_id)}
        for party, url in parties:
            if party not in active:
                continue
            try:
                rows = self.calls.call(party, url, "GET", f"{INTERCONNECT}/{job_id}/runs", attempts=1)
            except SiteError as exc:
                log.info("site %s: polling %s for job %s: %s", self.party, party, job_id, exc)
                continue
            for row in rows.get("party_tasks", []):
                self.receive_report(party, job_id, row["task"], row["attempt"], row["state"], row["reason"])
        self._push(job_id)

    def _fail_unstarted(self, job_id: str) -> None:
        """A task still starting after its timeout: the parties that never started fail it
        (a site that never came back must not leave the job stuck)."""
        late = []
        with self.db.session() as s:
            for t in runs.tasks_of(s, job_id):
                if t.state == _T.STARTING.value and runs.age_s(t.updated_at) > t.timeout_s:
                    late += [(pt.party, t.name, t.attempt) for pt in runs.party_tasks(s, job_id, t.name)
                             if pt.party != self.party and pt.state in (_T.WAITING.value, _T.STARTING.value)]
        for party, task, attempt in late:
            self.receive_report(party, job_id, task, attempt, _T.FAILED.value,
                                f"party {party!r} did not start attempt {attempt} within the task's timeout")

    # ---- reports --------------------------------------------------------------------------------
    def receive_report(self, party: str, job_id: str, task: str, attempt: int, state: str, reason: str) -> bool:
        """A party's run changed: record it, combine, retry or end. Returns whether it
        changed anything (a stale or repeated report does not)."""
        after: After = []
        with self.db.session() as s:
            job = store.lock_job(s, job_id)
            t = s.get(Task, (job_id, task))
            pt = s.get(PartyTask, (job_id, task, party))
            if (job.state != JobState.RUNNING.value or t is None or pt is None or attempt != t.attempt
                    or t.state == _T.WAITING.value or is_final(Entity.TASK, t.state)):
                return False
            changed = runs.follow(s, Entity.PARTY_TASK, pt, state, reason, f"party:{party}")
            if not changed and party != self.party:  # this party's row: its executor wrote it
                return False
            self._settle_task(s, job, t, after)
            self._push_in(s, job, after)
        for action in after:
            action()
        self._wake()
        return True

    def _settle_task(self, s: Any, job: Job, t: Task, after: After) -> None:
        rows = runs.party_tasks(s, job.id, t.name)
        combined = combine.combine_task(pt.state for pt in rows)
        if combined not in combine.FAILURE_RANK:
            runs.follow(s, Entity.TASK, t, combined, "every party succeeded" if combined is _T.SUCCEEDED else "",
                        self._actor)
            if combined is _T.SUCCEEDED:
                self._settle_job(s, job, after)
            return
        party, why = combine.first_cause({pt.party: (pt.state, pt.reason) for pt in rows}) or ("?", "")
        reason = f"attempt {t.attempt}: {combined.value} at party {party!r}: {why}"
        self._stop_runs(s, job, rows, f"task {t.name} {reason}", after)
        if combine.retry_due(combined.value, t.attempt, t.retries):
            runs.follow(s, Entity.TASK, t, _T.WAITING, f"{reason}; retrying", self._actor)
            for pt in rows:
                runs.follow(s, Entity.PARTY_TASK, pt, _T.WAITING, f"task retried after {reason}", self._actor)
            return
        runs.follow(s, Entity.TASK, t, combined, reason, self._actor)
        self._settle_job(s, job, after)

    def _settle_job(self, s: Any, job: Job, after: After) -> None:
        tasks = runs.tasks_of(s, job.id)
        state = combine.combine_job(t.state for t in tasks)
        if state is JobState.RUNNING:
            return
        cause = next((t for t in tasks if t.state == {JobState.FAILED: _T.FAILED, JobState.TIMEOUT: _T.TIMEOUT,
                                                       JobState.CANCELED: _T.CANCELED}.get(state)), None)
        reason = f"task {cause.name!r} {cause.reason}" if cause else "every task succeeded"
        self._end(s, job, state, reason, after)

    def _end(self, s: Any, job: Job, state: JobState, reason: str, after: After) -> None:
        """End the job: cancel what has not started, stop what runs, everywhere."""
        store.end_job(s, job, state, reason, self._actor)
        why = f"job {state.value}: {reason}"
        for t in runs.tasks_of(s, job.id):
            if t.state in _LIVE:
                rows = runs.party_tasks(s, job.id, t.name)
                self._stop_runs(s, job, rows, why, after)
                runs.follow(s, Entity.TASK, t, _T.CANCELED, why, self._actor)
        runs.release_ports(s, job.id)

    def _stop_runs(self, s: Any, job: Job, rows: list[PartyTask], reason: str, after: After) -> None:
        """Stop every party's run of these rows that has not ended (through the outbox)."""
        for pt in rows:
            if pt.state not in (_T.WAITING.value, *_LIVE):
                continue
            body = {"attempt": pt.attempt, "reason": reason}
            if pt.party == self.party:  # this party's own run: stopped by id, whatever comes next
                if pt.submission_id is not None:
                    after.append(lambda t=pt.task, sid=pt.submission_id: self.executor.halt(job.id, t, sid))
                runs.release_ports(s, job.id, pt.task)
            else:
                url = s.get(JobParty, (job.id, pt.party)).site_url
                outbox.enqueue(s, job.id, pt.party, url, f"{INTERCONNECT}/{job.id}/tasks/{pt.task}/stop", body)
            runs.follow(s, Entity.PARTY_TASK, pt, _T.CANCELED, reason, self._actor)

    # ---- stop on request -----------------------------------------------------------------------
    def stop_job(self, job_id: str, reason: str, actor: str) -> str:
        """Cancel the job and stop its runs in every party. Returns the job's state."""
        after: After = []
        with self.db.session() as s:
            job = store.lock_job(s, job_id)
            if not is_final(Entity.JOB, job.state):
                self._end(s, job, JobState.CANCELED, f"stopped by {actor}: {reason}", after)
                self._push_in(s, job, after)
            state = job.state
        for action in after:
            action()
        self._wake()
        return state

    # ---- snapshots to the parties ---------------------------------------------------------------
    def _push(self, job_id: str) -> None:
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is not None:
                self._push_in(s, job, [])

    def _push_in(self, s: Any, job: Job, _after: After) -> None:
        """Queue the combined state for every other party (callback mode; in poll mode
        the parties pull it)."""
        if job.sync_mode != "callback":
            return
        snap = runs.snapshot(s, job)
        for p in store.parties_of(s, job.id):
            if p.party != self.party:
                outbox.enqueue(s, job.id, p.party, p.site_url, f"{INTERCONNECT}/{job.id}/sync", snap, replaces=True)

    @property
    def _actor(self) -> str:
        return f"site:{self.party}"

