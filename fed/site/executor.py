"""The party side of running a task: this party's runs, on its own runner.

The scheduler asks each party to **prepare** an attempt (a channel port from the
party's range in federation.yaml, held in the database) and then to **start** it with
every party's channel address. The executor builds the TaskLaunch from this party's
own records: the entrypoint from its component registry, the parameters from the job
spec it approved; a peer sends only addresses. Then :meth:`tick` (the site's worker
thread) follows each run: runner status, the task's timeout, the log tail and the end
state kept in the database, and a report of every change.

After a restart, the same tick re-attaches: a run the database says was submitted is
asked about by its deterministic submission id; a run the runner no longer knows ends
``failed`` with that reason; a run recorded as starting but never accepted by the
runner is submitted again (the same id: the runner starts it at most once).
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fed.site.config import SiteConfig
from fed.site.core import runs, store
from fed.site.core.db import Database
from fed.site.core.metrics import ingest_metrics_file
from fed.site.core.models import Component, PartyTask, Task, utcnow
from fed.site.core.spec import JobSpec, spec_from_json
from fed.site.core.states import Entity, TaskState
from fed.site.errors import Conflict, SiteConfigError
from fed.site.runner.base import RunState, RunStatus, TaskLaunch, TaskRunner
from fed.site.taskcontext import METRICS_FILE

log = logging.getLogger("fed.site")
#: ``(job_id, task, attempt, state, reason)``: a change of this party's run.
Report = Callable[[str, str, int, str, str], None]
LOG_TAIL_BYTES = 65536
_ADDRESS = re.compile(r"^[A-Za-z0-9_.:\[\]-]{1,255}:\d{1,5}$")
_T = TaskState
_ACTIVE = (_T.STARTING.value, _T.RUNNING.value)
_RUN_TO_TASK = {RunState.RUNNING: _T.RUNNING, RunState.SUCCEEDED: _T.SUCCEEDED,
                RunState.FAILED: _T.FAILED, RunState.STOPPED: _T.CANCELED}


class PartyExecutor:
    """Runs this party's part of tasks and follows them."""

    def __init__(self, config: SiteConfig, db: Database, runner: TaskRunner, workdir: Path,
                 report: Report) -> None:
        self.config, self.db, self.runner, self.party = config, db, runner, config.party
        self.workdir, self._report = Path(workdir), report

    # ---- asked by the scheduler ---------------------------------------------------------------
    def prepare(self, job_id: str, task: str, attempt: int) -> dict[str, Any]:
        """Hold a channel port for this attempt; the same answer when asked again."""
        channel = self.config.federation.parties[self.party].channel
        if channel is None:
            raise SiteConfigError(f"party {self.party!r} has no channel in its federation.yaml: add "
                                  "`channel: {host: ..., ports: \"20000-20099\"}` to run tasks")
        actor = "site:executor"
        with self.db.session() as s:
            store.lock_job(s, job_id)
            pt = self._own(s, job_id, task)
            if pt.attempt > attempt:
                raise Conflict(f"task {task} of job {job_id} is at attempt {pt.attempt} here, not {attempt}")
            if pt.attempt < attempt:
                runs.follow(s, Entity.PARTY_TASK, pt, _T.WAITING, f"attempt {attempt} prepared", actor)
                pt.attempt, pt.submission_id, pt.started_at, pt.log_tail, pt.addresses = attempt, None, None, "", ""
            pt.port = runs.allocate_port(s, channel.ports, job_id, task, attempt)
            return {"party": self.party, "attempt": attempt, "address": f"{channel.host}:{pt.port}"}

    def start(self, job_id: str, task: str, attempt: int, addresses: dict[str, str]) -> dict[str, Any]:
        """Submit this party's run of the attempt (a repeated start does nothing new)."""
        with self.db.session() as s:
            job = store.lock_job(s, job_id)
            spec = spec_from_json(job.spec_json)
            pt = self._own(s, job_id, task)
            if pt.attempt != attempt or pt.port is None:
                raise Conflict(f"task {task} of job {job_id}: attempt {attempt} was not prepared here "
                               f"(this party is at attempt {pt.attempt})")
            if pt.submission_id is not None:
                return {"party": self.party, "state": pt.state}
            launch = self._launch(s, spec, pt, addresses)
            pt.submission_id, pt.started_at = launch.submission_id, utcnow()
            store.change_state(s, Entity.PARTY_TASK, pt, _T.STARTING, f"attempt {attempt} submitted", "site:executor")
        self._submit(launch)
        return {"party": self.party, "state": _T.STARTING.value}

    def stop(self, job_id: str, task: str | None, reason: str, attempt: int | None = None) -> None:
        """Stop this party's runs of the job (one task, or all; one attempt, or any) that
        have not ended; a party task not started yet is canceled."""
        with self.db.session() as s:
            active = [(pt.task, pt.attempt, pt.submission_id if pt.state in _ACTIVE else None)
                      for pt in runs.party_tasks(s, job_id, task, self.party)
                      if (attempt is None or pt.attempt == attempt) and (pt.state in (_T.WAITING.value, *_ACTIVE))]
        for name, attempt_now, sid in active:
            if sid is not None:
                self.runner.stop(sid)
            self._finish(job_id, name, attempt_now, _T.CANCELED, reason, sid)

    def fail(self, job_id: str, task: str, attempt: int, reason: str) -> None:
        """This party cannot run the attempt (e.g. a bad start): it ends failed, and says why."""
        self._set(job_id, task, attempt, _T.FAILED, reason, None)

    def halt(self, job_id: str, task: str, submission_id: str) -> None:
        """Stop one run by its id (the scheduler already recorded why) and keep its log tail."""
        self.runner.stop(submission_id)
        tail = self._tail(submission_id)
        with self.db.session() as s:
            pt = s.get(PartyTask, (job_id, task, self.party))
            if pt is not None and pt.submission_id == submission_id:
                pt.log_tail = tail

    def logs(self, job_id: str, task: str) -> str:
        """This party's log tail of its latest run of ``task`` (kept here after the run ends)."""
        with self.db.session() as s:
            pt = self._own(s, job_id, task)
            sid, state, tail = pt.submission_id, pt.state, pt.log_tail
        if sid is not None and state in _ACTIVE:
            return self.runner.logs(sid, LOG_TAIL_BYTES)
        return tail

    # ---- followed by the site's worker --------------------------------------------------------
    def tick(self) -> None:
        """Look at every run of this party still going: status, timeout, end."""
        with self.db.session() as s:
            active = s.query(PartyTask).filter(PartyTask.party == self.party, PartyTask.state.in_(_ACTIVE)).all()
            todo = [(pt.job_id, pt.task, pt.attempt, pt.state, pt.submission_id, pt.started_at) for pt in active]
            timeouts = {(t.job_id, t.name): t.timeout_s for t in runs_tasks(s, {j for j, *_ in todo})}
        for job_id, task, attempt, state, sid, started in todo:
            if sid is None:
                continue
            try:
                self._follow(job_id, task, attempt, state, sid, started, timeouts.get((job_id, task)))
            except Exception:  # one run's trouble must not stop the others
                log.exception("site %s: following %s failed", self.party, sid)

    def _follow(self, job_id: str, task: str, attempt: int, state: str, sid: str, started: Any,
                timeout_s: float | None) -> None:
        self._ingest(job_id, task, attempt)
        status = self.runner.status(sid)
        if status.state is RunState.UNKNOWN:
            self._unknown(job_id, task, attempt, state, sid)
        elif status.state in _RUN_TO_TASK and _RUN_TO_TASK[status.state] is not _T.RUNNING:
            self._finish(job_id, task, attempt, _RUN_TO_TASK[status.state], _run_reason(status), sid)
        elif timeout_s is not None and started is not None and runs.age_s(started) > timeout_s:
            self.runner.stop(sid)
            self._finish(job_id, task, attempt, _T.TIMEOUT, f"ran longer than its timeout ({timeout_s:g} s)", sid)
        elif status.state is RunState.RUNNING and state != _T.RUNNING.value:
            self._set(job_id, task, attempt, _T.RUNNING, "running", None)

    def _unknown(self, job_id: str, task: str, attempt: int, state: str, sid: str) -> None:
        if state == _T.STARTING.value:  # maybe never accepted: the same id again, at most once
            with self.db.session() as s:
                spec = spec_from_json(store.lock_job(s, job_id).spec_json)
                pt = self._own(s, job_id, task)
                launch = self._launch(s, spec, pt, None)
            self._submit(launch)
            return
        self._finish(job_id, task, attempt, _T.FAILED, (f"lost: the runner has no record of run {sid} "
                     "(its cluster was restarted or the run was removed)"), sid)

    def _submit(self, launch: TaskLaunch) -> None:
        try:
            self.runner.submit(launch)
        except Exception as exc:  # noqa: BLE001 - any runner failure fails the run, with its reason
            self._finish(launch.job_id, launch.task, launch.attempt, _T.FAILED,
                         f"the runner refused the run: {type(exc).__name__}: {exc}", launch.submission_id)
            return
        self._report(launch.job_id, launch.task, launch.attempt, _T.STARTING.value, "submitted")

    def _ingest(self, job_id: str, task: str, attempt: int) -> None:
        """The metrics the component appended since the last look (its metrics.jsonl)."""
        path = self.workdir / job_id / task / str(attempt) / METRICS_FILE
        if path.is_file():
            with self.db.session() as s:
                ingest_metrics_file(s, job_id, task, self.party, path)

    def _finish(self, job_id: str, task: str, attempt: int, state: TaskState, reason: str, sid: str | None) -> None:
        self._ingest(job_id, task, attempt)
        self._set(job_id, task, attempt, state, reason, self._tail(sid) if sid is not None else "")

    def _tail(self, sid: str) -> str:
        try:
            return self.runner.logs(sid, LOG_TAIL_BYTES)
        except Exception as exc:  # noqa: BLE001 - the end state matters more than the log
            return f"(log unavailable: {exc})"

    def _set(self, job_id: str, task: str, attempt: int, state: TaskState, reason: str, tail: str | None) -> None:
        with self.db.session() as s:
            store.lock_job(s, job_id)
            pt = self._own(s, job_id, task)
            if pt.attempt != attempt:
                return
            changed = runs.follow(s, Entity.PARTY_TASK, pt, state, reason, "site:executor")
            if tail is not None:
                pt.log_tail = tail
            if state is not _T.RUNNING:
                runs.release_ports(s, job_id, task)
        if changed:
            self._report(job_id, task, attempt, state.value, reason)

    # ---- building a launch from this party's own records -------------------------------------
    def _own(self, s: Any, job_id: str, task: str) -> PartyTask:
        pt = s.get(PartyTask, (job_id, task, self.party))
        if pt is None:
            raise Conflict(f"party {self.party!r} does not run task {task!r} of job {job_id}")
        return pt

    def _launch(self, s: Any, spec: JobSpec, pt: PartyTask, addresses: dict[str, str] | None) -> TaskLaunch:
        task = next(t for t in spec.tasks if t.name == pt.task)
        addresses = self._check_addresses(spec, task.name, addresses or _stored_addresses(pt))
        component = s.get(Component, (task.component, task.version))
        if component is None:
            raise Conflict(f"party {self.party!r} no longer has component {task.component} {task.version}")
        pt.addresses = json.dumps(addresses, sort_keys=True)
        params = {**task.params, **task.party_params.get(self.party, {})}
        inputs = {dep: str(self._output_dir(spec, pt.job_id, dep, s)) for dep in task.deps}
        out = self.workdir / pt.job_id / pt.task / str(pt.attempt)
        tls = self.config.tls
        return TaskLaunch(job_id=pt.job_id, task=pt.task, attempt=pt.attempt, party=self.party,
                          component=task.component, version=task.version, entrypoint=component.entrypoint,
                          addresses=addresses, params=params, inputs=inputs, output_dir=str(out),
                          timeout_s=task.timeout_s,
                          tls={"cert": tls.cert, "key": tls.key, "ca_cert": tls.ca_cert})

    def _output_dir(self, spec: JobSpec, job_id: str, dep: str, s: Any) -> Path:
        row = s.get(PartyTask, (job_id, dep, self.party))
        return self.workdir / job_id / dep / str(row.attempt if row else 1)

    def _check_addresses(self, spec: JobSpec, task: str, addresses: dict[str, str]) -> dict[str, str]:
        """The scheduler's addresses: exactly the task's parties, each ``host:port`` (data only)."""
        runners = set(spec.task_parties(next(t for t in spec.tasks if t.name == task)))
        if set(addresses) != runners or not all(isinstance(a, str) and _ADDRESS.match(a) for a in addresses.values()):
            raise Conflict(f"addresses for task {task} must give host:port for exactly {sorted(runners)}")
        return dict(addresses)


def runs_tasks(s: Any, job_ids: set[str]) -> list[Task]:
    if not job_ids:
        return []
    return list(s.query(Task).filter(Task.job_id.in_(job_ids)))


def _stored_addresses(pt: PartyTask) -> dict[str, str]:
    if not pt.addresses:
        raise Conflict(f"run {pt.submission_id}: its channel addresses were not kept; it cannot be resubmitted")
    return json.loads(pt.addresses)


def _run_reason(status: RunStatus) -> str:
    return status.reason or f"the run ended {status.state.value}"

