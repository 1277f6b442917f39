"""The scheduler's rules without Ray or servers: the combine rule, DAG readiness, legal
paths between states, channel ports and the outbox (SQLite and PostgreSQL), and one
party's scheduler + executor over a scripted runner (attempts, retries, timeout, stop,
re-attaching after a restart)."""
from __future__ import annotations

import datetime
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy", reason='the site extra is not installed (pip install -e ".[site]")')

from fed.site.config import (
    ChannelSpec,
    Federation,
    FederationParty,
    Listen,
    SiteConfig,
    SyncSettings,
    TlsFiles,
)
from fed.site.control import JobControl
from fed.site.core import components, outbox, runs, store
from fed.site.core.combine import (
    combine_job,
    combine_task,
    first_cause,
    ready_tasks,
    retry_due,
)
from fed.site.core.db import Database
from fed.site.core.models import MetricPoint, OutboxMessage, PartyTask, Task
from fed.site.core.spec import parse_spec
from fed.site.core.states import ApprovalState, Entity, JobState, TaskState
from fed.site.errors import SiteConfigError
from fed.site.runner.base import RunState, RunStatus, TaskLaunch


@pytest.mark.parametrize("states, combined", [
    (["succeeded", "succeeded"], "succeeded"),
    (["succeeded", "running"], "running"),
    (["waiting", "waiting"], "waiting"),
    (["waiting", "running"], "starting"),
    (["starting", "running"], "starting"),
    (["failed", "canceled"], "failed"),
    (["canceled", "timeout", "succeeded"], "timeout"),
    (["canceled", "succeeded"], "canceled"),
    (["failed", "timeout"], "failed"),
    ([], "waiting"),
])
def test_combine_rule_for_a_task(states, combined):
    assert combine_task(states).value == combined


def test_combine_rule_for_a_job_and_retries():
    assert combine_job(["succeeded", "succeeded"]) is JobState.SUCCEEDED
    assert combine_job(["succeeded", "waiting"]) is JobState.RUNNING
    assert combine_job(["canceled", "failed", "running"]) is JobState.FAILED
    assert combine_job(["timeout", "canceled"]) is JobState.TIMEOUT
    assert retry_due("failed", 1, 1) and retry_due("timeout", 1, 2)
    assert not retry_due("failed", 2, 1) and not retry_due("canceled", 1, 5)
    assert first_cause({"bob": ("canceled", "stopped"), "carol": ("failed", "boom")}) == ("carol", "boom")


def test_dag_readiness():
    deps = {"a": [], "b": ["a"], "c": ["a", "b"], "d": []}
    assert ready_tasks(deps, dict.fromkeys(deps, "waiting")) == ["a", "d"]
    assert ready_tasks(deps, {"a": "succeeded", "b": "waiting", "c": "waiting", "d": "running"}) == ["b"]
    assert ready_tasks(deps, {"a": "succeeded", "b": "failed", "c": "waiting", "d": "succeeded"}) == []


def test_copies_follow_legal_paths_only():
    assert runs.path_to(Entity.PARTY_TASK, "waiting", "succeeded") == ["starting", "running", "succeeded"]
    assert runs.path_to(Entity.PARTY_TASK, "succeeded", "running") == ["waiting", "starting", "running"]
    assert runs.path_to(Entity.TASK, "succeeded", "running") is None  # a task's end is final
    assert runs.path_to(Entity.JOB, "awaiting_approval", "running") == ["accepted", "running"]


def test_channel_ports_are_held_and_distinct(db):
    with db.session() as s:
        a = runs.allocate_port(s, "30000-30002", "j1", "t1", 1)
        assert runs.allocate_port(s, "30000-30002", "j1", "t1", 1) == a  # asked again: same port
        b = runs.allocate_port(s, "30000-30002", "j1", "t2", 1)
        c = runs.allocate_port(s, "30000-30002", "j2", "t1", 1)
        assert len({a, b, c}) == 3 and {a, b, c} <= set(range(30000, 30003))
        with pytest.raises(SiteConfigError, match="widen `channel.ports`"):
            runs.allocate_port(s, "30000-30002", "j3", "t1", 1)
        runs.release_ports(s, "j2")
        assert runs.allocate_port(s, "30000-30002", "j3", "t1", 1) == c


def test_outbox_keeps_order_per_party_and_backs_off(db):
    with db.session() as s:
        for i in range(2):
            outbox.enqueue(s, "j", "bob", "https://b", f"/p{i}", {"i": i})
        outbox.enqueue(s, "j", "carol", "https://c", "/snap", {"v": 1}, replaces=True)
        outbox.enqueue(s, "j", "carol", "https://c", "/snap", {"v": 2}, replaces=True)
    with db.session() as s:
        first = {m.party: (m.id, m.path, m.body) for m in outbox.due(s)}
    assert first["bob"][1] == "/p0" and first["carol"][2] == '{"v": 2}'
    with db.session() as s:
        outbox.failed(s, first["bob"][0], "unreachable")
        outbox.delivered(s, first["carol"][0])
    with db.session() as s:
        assert outbox.due(s) == []  # bob's first waits its backoff; the second waits behind it
        row = s.get(OutboxMessage, first["bob"][0])
        assert row.attempts == 1 and "unreachable" in row.last_error
        assert outbox.pending_count(s) == 2


class ScriptedRunner:
    """A runner whose runs end when the test says (the TaskRunner contract, in memory)."""

    def __init__(self) -> None:
        self.launches: dict[str, TaskLaunch] = {}
        self.states: dict[str, RunStatus] = {}
        self.submits: dict[str, int] = {}
        self.stopped: list[str] = []

    def submit(self, launch: TaskLaunch) -> None:
        sid = launch.submission_id
        if sid in self.states:
            return
        self.launches[sid], self.states[sid] = launch, RunStatus(RunState.RUNNING)
        self.submits[sid] = self.submits.get(sid, 0) + 1

    def status(self, sid: str) -> RunStatus:
        return self.states.get(sid, RunStatus(RunState.UNKNOWN))

    def stop(self, sid: str) -> None:
        self.stopped.append(sid)
        if sid in self.states and self.states[sid].state is RunState.RUNNING:
            self.states[sid] = RunStatus(RunState.STOPPED, "stopped")

    def logs(self, sid: str, max_bytes: int = 65536) -> str:
        return f"log of {sid}"[-max_bytes:]


def _config(db_url: str) -> SiteConfig:
    site = "https://127.0.0.1:1"
    fed = Federation(parties={"alice": FederationParty(site=site, channel=ChannelSpec(host="127.0.0.1",
                                                                                      ports="31000-31009"))})
    return SiteConfig(party="alice", url=site, listen=Listen(host="127.0.0.1", port=1), database=db_url,
                      tls=TlsFiles(cert="a.crt", key="a.key", ca_cert="ca.crt"), federation=fed,
                      sync=SyncSettings(tick_s=0.05))


def _accepted_job(db: Database, **task) -> str:
    spec = parse_spec({"initiator": "alice", "parties": [{"name": "alice", "site": "https://127.0.0.1:1"}],
                       "tasks": [{"name": "stats", "component": "stats", "version": "1", **task},
                                 {"name": "train", "component": "stats", "version": "1", "deps": ["stats"]}]})
    with db.session() as s:
        components.add_component(s, "stats", "1", "demo.stats:run")
        store.create_job(s, "j1", spec, "test", "test")
        job = store.lock_job(s, "j1")
        store.change_state(s, Entity.APPROVAL, store.job_party(s, "j1", "alice"), ApprovalState.ACCEPTED, "", "test")
        store.settle_approval(s, job, "test")
    return "j1"


@pytest.fixture
def alice(db, tmp_path):
    runner = ScriptedRunner()
    control = JobControl(_config(db.url), db, runner, tmp_path / "runs")
    return control, runner


def _states(db: Database) -> tuple[str, dict[str, tuple[str, int]]]:
    with db.session() as s:
        job = store.lock_job(s, "j1")
        return job.state, {t.name: (t.state, t.attempt) for t in s.query(Task).filter(Task.job_id == "j1")}


def _end(runner: ScriptedRunner, sid: str, state: RunState, reason: str = "") -> None:
    runner.states[sid] = RunStatus(state, reason)


def test_dag_runs_in_order_from_this_partys_own_registry(db, alice):
    control, runner = alice
    job_id = _accepted_job(db, params={"bins": 3})
    control.round()
    assert list(runner.launches) == ["rayfed-j1-stats-1"]
    launch = runner.launches["rayfed-j1-stats-1"]
    assert launch.entrypoint == "demo.stats:run" and launch.params == {"bins": 3}
    assert launch.addresses["alice"].startswith("127.0.0.1:310")
    out = Path(launch.output_dir)
    out.mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"name": "acc", "value": 0.5, "step": 1, "at": 1.0}\n')
    _end(runner, "rayfed-j1-stats-1", RunState.SUCCEEDED)
    control.round()
    control.round()
    with db.session() as s:  # the component's metrics were taken in by the site
        assert [(p.name, p.value) for p in s.query(MetricPoint)] == [("acc", 0.5)]
    assert "rayfed-j1-train-1" in runner.launches
    assert runner.launches["rayfed-j1-train-1"].inputs == {"stats": launch.output_dir}
    _end(runner, "rayfed-j1-train-1", RunState.SUCCEEDED)
    control.round()
    assert _states(db) == ("succeeded", {"stats": ("succeeded", 1), "train": ("succeeded", 1)})
    assert control.logs(job_id, "stats") == "log of rayfed-j1-stats-1"


def test_a_failed_task_is_retried_then_fails_the_job(db, alice):
    control, runner = alice
    _accepted_job(db, retries=1)
    control.round()
    _end(runner, "rayfed-j1-stats-1", RunState.FAILED, "exit 3")
    control.round()
    control.round()
    assert "rayfed-j1-stats-2" in runner.launches  # a new attempt, a new submission id
    _end(runner, "rayfed-j1-stats-2", RunState.FAILED, "exit 3")
    control.round()
    state, tasks = _states(db)
    assert state == "failed" and tasks == {"stats": ("failed", 2), "train": ("canceled", 0)}
    with db.session() as s:
        reason = store.lock_job(s, "j1").reason
    assert "attempt 2: failed at party 'alice': exit 3" in reason
    assert set(runner.submits.values()) == {1}


def test_a_run_past_its_timeout_is_stopped(db, alice):
    control, runner = alice
    _accepted_job(db, timeout_s=5)
    control.round()
    with db.session() as s:
        pt = s.get(PartyTask, ("j1", "stats", "alice"))
        pt.started_at = pt.started_at - datetime.timedelta(seconds=60)
    control.round()
    assert "rayfed-j1-stats-1" in runner.stopped
    assert _states(db)[0] == "timeout"


def test_stop_cancels_the_job_and_stops_the_run(db, alice):
    control, runner = alice
    _accepted_job(db)
    control.round()
    assert control.stop_job("j1", "enough", "token:admin") == JobState.CANCELED.value
    assert runner.stopped == ["rayfed-j1-stats-1"]
    assert _states(db) == ("canceled", {"stats": ("canceled", 1), "train": ("canceled", 0)})


def test_after_a_restart_runs_are_reattached_or_failed_as_lost(db, alice, tmp_path):
    control, runner = alice
    _accepted_job(db)
    control.round()
    again = JobControl(_config(db.url), db, runner, tmp_path / "runs")  # the site restarted
    again.round()
    assert runner.submits == {"rayfed-j1-stats-1": 1} and _states(db)[1]["stats"] == ("running", 1)
    fresh = ScriptedRunner()  # the party's Ray cluster was replaced: the run is gone
    JobControl(_config(db.url), db, fresh, tmp_path / "runs").round()
    state, tasks = _states(db)
    assert state == "failed" and tasks["stats"] == ("failed", 1)
    with db.session() as s:
        assert "lost: the runner has no record" in s.get(PartyTask, ("j1", "stats", "alice")).reason
    assert TaskState.FAILED.value == "failed"
