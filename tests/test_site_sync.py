"""Four real sites (alice, bob, carol hold data; dave holds none) over HTTPS with mutual
TLS on loopback, each with its own database (SQLite, or PostgreSQL) and worker thread, serving in this
process so each site's runner can be a scripted one: the scheduler, the executors and
the sync between sites are real; only the runs themselves are scripted (the three-site
tests over real Ray clusters are in test_site_run.py).

Scripted runs succeed after a few looks, unless the task's params say otherwise:
``fail: [party, ...]`` fails that party's run, ``hang: true`` keeps every run going
until it is stopped.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason='the site extra is not installed (pip install -e ".[site]")')

from sitekit import fed_cli

from fed.site.client import SiteClient
from fed.site.config import load_site
from fed.site.core.models import ChannelPort
from fed.site.runner.base import RunState, RunStatus, TaskLaunch
from fed.site.server import _Server, open_site, uvicorn_config

PARTIES = ("alice", "bob", "carol", "dave")
DATA = ("alice", "bob", "carol")
FINAL = ("succeeded", "failed", "rejected", "canceled", "timeout")


class AutoRunner:
    """Runs that end by the task's params after a few status looks (never twice per id)."""

    def __init__(self) -> None:
        self.launches: dict[str, TaskLaunch] = {}
        self.looks: dict[str, int] = {}
        self.stopped: set[str] = set()
        self.submits: dict[str, int] = {}
        self._lock = threading.Lock()

    def submit(self, launch: TaskLaunch) -> None:
        with self._lock:
            if launch.submission_id not in self.launches:
                self.launches[launch.submission_id] = launch
                self.submits[launch.submission_id] = 1

    def status(self, sid: str) -> RunStatus:
        with self._lock:
            launch = self.launches.get(sid)
            if launch is None:
                return RunStatus(RunState.UNKNOWN)
            if sid in self.stopped:
                return RunStatus(RunState.STOPPED, "stopped on request")
            self.looks[sid] = self.looks.get(sid, 0) + 1
            if self.looks[sid] < 3 or launch.params.get("hang"):
                return RunStatus(RunState.RUNNING)
            if launch.party in launch.params.get("fail", []):
                return RunStatus(RunState.FAILED, "exit code 3")
            return RunStatus(RunState.SUCCEEDED)

    def stop(self, sid: str) -> None:
        with self._lock:
            if sid in self.launches:
                self.stopped.add(sid)

    def logs(self, sid: str, max_bytes: int = 65536) -> str:
        return f"{sid}: hello from the component\n"[-max_bytes:]


class Site:
    def __init__(self, site_dir: Path, runner: AutoRunner | None = None) -> None:
        config = load_site(site_dir)
        self.dir = site_dir
        self.runner = runner or AutoRunner()
        self.service = open_site(config, self.runner, site_dir / "runs")
        self.server = _Server(uvicorn_config(self.service), None)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.service.control.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "site did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        self.service.control.stop()
        self.server.should_exit = True
        self.thread.join(30)
        self.service.db.close()

    def ports_held(self) -> int:
        with self.service.db.session() as s:
            return s.query(ChannelPort).count()


def _scheduler_only_runner(site_dir: Path):
    """The runner site.yaml gives a ``--scheduler-only`` site: one that runs nothing."""
    from fed.site.runner.none import NoRunner
    from fed.site.server import site_runner

    runner, _ = site_runner(load_site(site_dir), site_dir)
    assert isinstance(runner, NoRunner), runner
    return runner


def _ok(*args: str) -> str:
    proc = fed_cli(*args)
    assert proc.returncode == 0, f"fed {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def fed4(request, tmp_path_factory):
    from fed.cli.ports import PortLease

    root = tmp_path_factory.mktemp(f"sync-{request.param}")
    server = request.getfixturevalue("postgres") if request.param == "postgres" else None
    lease = PortLease()
    ports = lease.reserve(8)
    urls = {p: f"https://127.0.0.1:{ports[i]}" for i, p in enumerate(PARTIES)}
    _ok("certs", "--parties", ",".join(PARTIES), "--out", str(root / "certs"))
    fed_file = root / "federation.yaml"
    fed_file.write_text(json.dumps({"parties": {
        p: {"site": urls[p], "channel": {"host": "127.0.0.1", "ports": f"{ports[4 + i]}-{ports[4 + i]}"}}
        for i, p in enumerate(PARTIES)}}))
    tokens = {}
    for p in PARTIES:
        site = str(root / p)
        db = ["--database", server.new_database()] if server else []
        only = ["--scheduler-only"] if p == "dave" else []  # dave holds no data, runs nothing
        _ok("site", "init", site, "--party", p, "--federation", str(fed_file), "--certs", str(root / "certs"),
            "--auto-accept-initiators", "alice", "--auto-accept-components", "work", *db, *only)
        (root / p / "site.yaml").write_text((root / p / "site.yaml").read_text()
                                            + "sync: {poll_interval_s: 0.3, safety_poll_s: 2.0, tick_s: 0.1}\n")
        for comp in ("work", "held"):  # "held" is not auto-accepted: it waits for a person
            _ok("site", "component", "add", site, comp, "--entrypoint", f"demo_{p}.{comp}:run", "--version", "1")
        tokens[p] = _ok("site", "token", "create", site, "--role", "admin").strip()
    lease.release()
    sites = {p: Site(root / p, _scheduler_only_runner(root / p) if p == "dave" else None) for p in PARTIES}
    try:
        for site in sites.values():
            site.start()
        yield root, urls, tokens, sites
    finally:
        for site in sites.values():
            site.stop()


def _client(fed4, party: str) -> SiteClient:
    root, urls, tokens, _ = fed4
    return SiteClient(urls[party], tokens[party], str(root / "certs" / "ca.crt"))


def _spec(fed4, mode: str, params: dict | None = None, scheduler: str = "alice", retries: int = 0) -> dict:
    _, urls, _, _ = fed4
    parties = [{"name": p, "site": urls[p]} for p in DATA]
    if scheduler == "dave":
        parties.append({"name": "dave", "site": urls["dave"], "holds_data": False})
    return {"initiator": "alice", "scheduler": scheduler, "sync_mode": mode, "parties": parties,
            "tasks": [{"name": "stats", "component": "work", "version": "1", "params": params or {},
                       "retries": retries},
                      {"name": "train", "component": "work", "version": "1", "deps": ["stats"]}]}


def _everywhere(fed4, job_id: str, parties=DATA, timeout: float = 60) -> dict[str, dict]:
    """Each party's view once the job ended at every party and no port is held."""
    deadline = time.monotonic() + timeout
    while True:
        views = {}
        for p in parties:
            with _client(fed4, p) as c:
                views[p] = c.job(job_id)
        held = sum(fed4[3][p].ports_held() for p in parties)
        settled = all(all(pt["state"] in FINAL for t in v["tasks"] for pt in t["parties"]) for v in views.values())
        if all(v["state"] in FINAL for v in views.values()) and settled and held == 0:
            return views
        assert time.monotonic() < deadline, json.dumps({p: _brief(v) for p, v in views.items()}, indent=1)
        time.sleep(0.2)


def _brief(view: dict) -> dict:
    return {"state": view["state"], "reason": view["reason"],
            "tasks": {t["name"]: [t["state"], {pt["party"]: pt["state"] for pt in t["parties"]}]
                      for t in view["tasks"]}}


@pytest.mark.parametrize("mode", ["callback", "poll"])
def test_job_runs_to_success_in_both_sync_modes(fed4, mode):
    with _client(fed4, "alice") as alice:
        job = alice.submit(_spec(fed4, mode, {"bins": 4}))
    views = _everywhere(fed4, job["id"])
    for party, view in views.items():
        assert _brief(view) == {"state": "succeeded", "reason": "every task succeeded", "tasks": {
            t: ["succeeded", dict.fromkeys(DATA, "succeeded")] for t in ("stats", "train")}}, party
    sites = fed4[3]
    for party in DATA:  # each party ran each task once, from its own registry
        launches = sites[party].runner.launches
        mine = {sid: la for sid, la in launches.items() if la.job_id == job["id"]}
        assert sorted(mine) == [f"rayfed-{job['id']}-stats-1", f"rayfed-{job['id']}-train-1"]
        stats = mine[f"rayfed-{job['id']}-stats-1"]
        assert stats.entrypoint == f"demo_{party}.work:run" and stats.params == {"bins": 4}
        assert set(stats.addresses) == set(DATA)
        with _client(fed4, party) as c:
            assert "hello from the component" in c.logs(job["id"], "stats")


def test_a_failing_task_fails_the_job_everywhere_after_its_retries(fed4):
    with _client(fed4, "alice") as alice:
        job = alice.submit(_spec(fed4, "callback", {"fail": ["carol"]}, retries=1))
    views = _everywhere(fed4, job["id"])
    for party, view in views.items():
        assert view["state"] == "failed", (party, _brief(view))
        assert "attempt 2: failed at party 'carol': exit code 3" in view["reason"], party
        tasks = {t["name"]: t for t in view["tasks"]}
        assert tasks["stats"]["state"] == "failed" and tasks["stats"]["attempt"] == 2
        assert tasks["train"]["state"] == "canceled"
    carol = fed4[3]["carol"].runner
    assert [sid for sid in carol.submits if job["id"] in sid] == [
        f"rayfed-{job['id']}-stats-1", f"rayfed-{job['id']}-stats-2"]


def test_stop_from_a_party_that_is_not_the_scheduler(fed4):
    with _client(fed4, "alice") as alice:
        job = alice.submit(_spec(fed4, "callback", {"hang": True}))
    sid = f"rayfed-{job['id']}-stats-1"
    deadline = time.monotonic() + 30
    while not all(sid in fed4[3][p].runner.launches for p in DATA):
        assert time.monotonic() < deadline, "the runs did not start"
        time.sleep(0.1)
    with _client(fed4, "carol") as carol:
        carol.stop(job["id"], "wrong data")
    views = _everywhere(fed4, job["id"])
    for party, view in views.items():
        assert view["state"] == "canceled" and "wrong data" in view["reason"], (party, _brief(view))
        assert sid in fed4[3][party].runner.stopped, party


def test_third_party_scheduler_runs_no_task(fed4):
    with _client(fed4, "alice") as alice:
        job = alice.submit(_spec(fed4, "poll", scheduler="dave"))
    views = _everywhere(fed4, job["id"], parties=PARTIES)
    for party, view in views.items():
        assert view["state"] == "succeeded", (party, _brief(view))
    # dave's site is --scheduler-only: its runner refuses every run, so the job succeeding
    # everywhere shows the scheduler never asked it to run one.
    from fed.site.runner.none import NoRunner

    assert isinstance(fed4[3]["dave"].runner, NoRunner)


def test_run_calls_are_refused_to_the_wrong_party(fed4):
    from fed.site.config import TlsFiles
    from fed.site.errors import PeerSiteError
    from fed.site.peers import PeerClient

    root, urls, _, _ = fed4
    with _client(fed4, "alice") as alice:
        job = alice.submit(_spec(fed4, "callback"))
    _everywhere(fed4, job["id"])
    certs = root / "certs"
    tls = TlsFiles(cert=str(certs / "bob.crt"), key=str(certs / "bob.key"), ca_cert=str(certs / "ca.crt"))
    with PeerClient(tls, PARTIES, "carol", urls["carol"]) as as_bob:
        for path, body in (("tasks/stats/prepare", {"attempt": 9}), ("sync", {"job": {}, "tasks": [], "party_tasks": []})):
            with pytest.raises(PeerSiteError, match="403.*only the scheduler"):
                as_bob.call("POST", f"/v1/interconnect/jobs/{job['id']}/{path}", body)
        with pytest.raises(PeerSiteError, match="409.*not the scheduler"):
            as_bob.call("POST", f"/v1/interconnect/jobs/{job['id']}/report",
                        {"task": "stats", "attempt": 1, "state": "failed"})


def _wait_launched(fed4, sid: str, parties=DATA) -> None:
    deadline = time.monotonic() + 30
    while not all(sid in fed4[3][p].runner.launches for p in parties):
        assert time.monotonic() < deadline, f"{sid} did not start at every party"
        time.sleep(0.05)


def _restart(fed4, party: str, runner: AutoRunner | None, down_s: float) -> None:
    """Take the party's site down (its database keeps what it committed, as after a
    SIGKILL), wait, and start it again over the same directory."""
    sites = fed4[3]
    old = sites[party]
    old.stop()
    time.sleep(down_s)
    sites[party] = Site(old.dir, runner)
    sites[party].start()


@pytest.mark.parametrize("mode", ["callback", "poll"])
def test_a_site_restarted_mid_job_reattaches_and_nothing_runs_twice(fed4, mode):
    with _client(fed4, "alice") as alice:
        job = alice.submit(_spec(fed4, mode))
    sid = f"rayfed-{job['id']}-stats-1"
    _wait_launched(fed4, sid)
    _restart(fed4, "bob", fed4[3]["bob"].runner, down_s=1.0)  # its Ray cluster kept running
    views = _everywhere(fed4, job["id"])
    for party, view in views.items():
        assert view["state"] == "succeeded", (party, _brief(view))
        assert fed4[3][party].runner.submits[sid] == 1, party


def test_a_site_whose_runs_were_lost_fails_the_job_with_the_reason(fed4):
    with _client(fed4, "alice") as alice:
        job = alice.submit(_spec(fed4, "callback"))
    sid = f"rayfed-{job['id']}-stats-1"
    _wait_launched(fed4, sid)
    deadline = time.monotonic() + 30
    while _own_state(fed4, "carol", job["id"], "stats") != "running":  # (a run only submitted is resubmitted)
        assert time.monotonic() < deadline, "carol's run was never seen running"
        time.sleep(0.05)
    _restart(fed4, "carol", AutoRunner(), down_s=0.2)  # a new cluster: the run is gone
    views = _everywhere(fed4, job["id"])
    for party, view in views.items():
        assert view["state"] == "failed", (party, _brief(view))
        assert "at party 'carol': lost: the runner has no record" in view["reason"], party


def test_cli_submit_wait_follows_to_the_end_and_exits_by_the_outcome(fed4):
    root, _, tokens, _ = fed4
    conn = ["--site", str(root / "alice"), "--token", tokens["alice"]]
    spec_file = root / "job-ok.json"
    spec_file.write_text(json.dumps(_spec(fed4, "callback")))
    ok = fed_cli("job", "submit", str(spec_file), "--wait", "--interval", "0.2", *conn, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "stats:alice=succeeded,bob=succeeded,carol=succeeded" in ok.stdout
    job_id = ok.stdout.split()[1]
    logs = fed_cli("job", "logs", job_id, "train", *conn)
    assert logs.returncode == 0 and f"rayfed-{job_id}-train-1: hello" in logs.stdout
    spec_file.write_text(json.dumps(_spec(fed4, "poll", {"fail": ["bob"]})))
    bad = fed_cli("job", "submit", str(spec_file), "--wait", "--interval", "0.2", *conn, timeout=120)
    assert bad.returncode == 1 and "failed at party 'bob': exit code 3" in bad.stderr, bad.stdout + bad.stderr
    status = fed_cli("site", "status", str(root / "bob"))
    assert status.returncode == 0 and "calls to other sites waiting for delivery" in status.stdout


def test_a_party_runs_nothing_of_a_job_it_has_not_accepted(fed4):
    from fed.site.config import TlsFiles
    from fed.site.errors import PeerSiteError
    from fed.site.peers import PeerClient

    root, urls, _, _ = fed4
    spec = _spec(fed4, "callback")
    spec["tasks"] = [{"name": "stats", "component": "held", "version": "1"}]
    with _client(fed4, "alice") as alice:
        job = alice.submit(spec)
    certs = root / "certs"
    tls = TlsFiles(cert=str(certs / "alice.crt"), key=str(certs / "alice.key"), ca_cert=str(certs / "ca.crt"))
    with PeerClient(tls, PARTIES, "bob", urls["bob"]) as as_scheduler, \
            pytest.raises(PeerSiteError, match="409.*has not accepted job"):
        as_scheduler.call("POST", f"/v1/interconnect/jobs/{job['id']}/tasks/stats/prepare", {"attempt": 1})
    with _client(fed4, "bob") as bob:
        bob.decide(job["id"], False, "not now")


def _own_state(fed4, party: str, job_id: str, task: str) -> str:
    from fed.site.core.models import PartyTask

    with fed4[3][party].service.db.session() as s:
        return s.get(PartyTask, (job_id, task, party)).state
