"""Three real sites (alice, bob, carol) as processes, each with its own Ray cluster
(token authentication on) and SQLite database, running jobs end to end: the scheduler,
the executors over the Job Submission API, both sync modes, a failing task, stop from a
party that is not the scheduler, and a site SIGKILLed and restarted mid-job.

The Ray clusters and the sites are started once for the module. Run under the CPU lock:
``flock /tmp/rayfed-cpu.lock python -m pytest tests/test_site_run.py``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.job_submission")
pytest.importorskip("fastapi", reason='the site extra is not installed (pip install -e ".[site]")')

import yaml
from raykit import start_clusters
from sitekit import SiteProcess, fed_cli

from fed.cli.ports import PortLease
from fed.site.client import SiteClient
from fed.site.runner.base import RunState
from fed.site.runner.ray_jobs import RayJobsRunner

TESTS = Path(__file__).resolve().parent
PARTIES = ("alice", "bob", "carol")
FINAL = ("succeeded", "failed", "rejected", "canceled", "timeout")
COMPONENTS = {"stats": "examples.jobs.components:stats", "gated": "runner_components:gated",
              "failing": "runner_components:failing"}


def _ok(*args: str) -> str:
    proc = fed_cli(*args)
    assert proc.returncode == 0, f"fed {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


class Federation:
    def __init__(self, root: Path, urls: dict[str, str], tokens: dict[str, str], clusters: dict) -> None:
        self.root, self.urls, self.tokens, self.clusters = root, urls, tokens, clusters
        self.sites: dict[str, SiteProcess] = {}
        self.ca = str(root / "certs" / "ca.crt")

    def client(self, party: str) -> SiteClient:
        return SiteClient(self.urls[party], self.tokens[party], self.ca)

    def start(self, party: str) -> None:
        self.sites[party] = SiteProcess(self.root / party, self.urls[party])
        self.sites[party].wait_ready(self.ca)

    def runner(self, party: str) -> RayJobsRunner:
        cluster = self.clusters[party]
        return RayJobsRunner(cluster.dashboard_url, token=cluster.token)

    def spec(self, mode: str, tasks: list[dict]) -> dict:
        return {"initiator": "alice", "sync_mode": mode, "tasks": tasks,
                "parties": [{"name": p, "site": self.urls[p]} for p in PARTIES]}

    def wait_final(self, job_id: str, timeout: float = 240) -> dict[str, dict]:
        """Every party's view once the job and every party task ended there."""
        deadline = time.monotonic() + timeout
        while True:
            views = {}
            for p in PARTIES:
                with self.client(p) as c:
                    views[p] = c.job(job_id)
            done = all(v["state"] in FINAL and all(pt["state"] in FINAL for t in v["tasks"] for pt in t["parties"])
                       for v in views.values())
            if done:
                return views
            assert time.monotonic() < deadline, json.dumps({p: brief(v) for p, v in views.items()}, indent=1)
            time.sleep(0.5)


def brief(view: dict) -> dict:
    return {"state": view["state"], "reason": view["reason"],
            "tasks": {t["name"]: [t["state"], t["attempt"], {pt["party"]: pt["state"] for pt in t["parties"]}]
                      for t in view["tasks"]}}


def _configure(root: Path, party: str, cluster, channel_port: int) -> None:
    """The site's runner: its own Ray cluster; quick sync for the tests."""
    path = root / party / "site.yaml"
    config = yaml.safe_load(path.read_text())
    token_file = root / party / "ray-token"
    token_file.write_text(cluster.token)
    config["runner"] = {"ray_address": cluster.dashboard_url, "ray_token_file": str(token_file),
                        "workdir": str(root / party / "runs")}
    config["sync"] = {"poll_interval_s": 0.5, "safety_poll_s": 3.0, "tick_s": 0.2}
    path.write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def fed3(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    with PortLease() as lease:
        started = start_clusters(lease, len(PARTIES), extra_path=(TESTS,))
        fed = Federation(root, {}, {}, dict(zip(PARTIES, started)))
        try:
            _make_sites(fed, lease)
            for p in PARTIES:
                fed.start(p)
            yield fed
        finally:
            for site in fed.sites.values():
                site.stop()
            for cluster in started:
                cluster.stop()


def _make_sites(fed: Federation, lease: PortLease) -> None:
    root = fed.root
    ports = lease.reserve(2 * len(PARTIES))
    fed.urls.update({p: f"https://127.0.0.1:{ports[i]}" for i, p in enumerate(PARTIES)})
    chan = {p: ports[len(PARTIES) + i] for i, p in enumerate(PARTIES)}
    _ok("certs", "--parties", ",".join(PARTIES), "--out", str(root / "certs"))
    fed_file = root / "federation.yaml"
    fed_file.write_text(json.dumps({"parties": {
        p: {"site": fed.urls[p], "channel": {"host": "127.0.0.1", "ports": f"{chan[p]}-{chan[p]}"}} for p in PARTIES}}))
    for p in PARTIES:
        site = str(root / p)
        _ok("site", "init", site, "--party", p, "--federation", str(fed_file), "--certs", str(root / "certs"),
            "--auto-accept-initiators", "alice", "--auto-accept-components", ",".join(COMPONENTS))
        for name, entry in COMPONENTS.items():
            _ok("site", "component", "add", site, name, "--entrypoint", entry, "--version", "1")
        fed.tokens[p] = _ok("site", "token", "create", site, "--role", "admin").strip()
        _configure(root, p, fed.clusters[p], chan[p])
    lease.release()  # the sites and the channels bind them now


@pytest.mark.parametrize("mode", ["callback", "poll"])
def test_the_statistics_job_runs_end_to_end_in_both_modes(fed3, mode):
    with fed3.client("alice") as alice:
        job = alice.submit(fed3.spec(mode, [{"name": "stats", "component": "stats", "version": "1"}]))
    views = fed3.wait_final(job["id"])
    for party, view in views.items():
        assert brief(view) == {"state": "succeeded", "reason": "every task succeeded", "tasks": {
            "stats": ["succeeded", 1, dict.fromkeys(PARTIES, "succeeded")]}}, party
    with fed3.client("bob") as bob:
        assert "Traceback" not in bob.logs(job["id"], "stats")


def test_a_failing_task_fails_the_job_everywhere(fed3):
    task = {"name": "t", "component": "failing", "version": "1", "params": {"word": "boom"}, "retries": 1}
    with fed3.client("alice") as alice:
        job = alice.submit(fed3.spec("callback", [task]))
    views = fed3.wait_final(job["id"])
    for party, view in views.items():
        assert view["state"] == "failed" and view["tasks"][0]["attempt"] == 2, (party, brief(view))
        assert "attempt 2: failed at party" in view["reason"], party
    # The first party to fail ends the attempt: the others' runs may be stopped before
    # their component raised. Every party that failed has the error in its own log.
    states = {pt["party"]: pt["state"] for pt in views["alice"]["tasks"][0]["parties"]}
    failed = [party for party, state in states.items() if state == "failed"]
    assert failed, states
    for party in failed:
        with fed3.client(party) as client:
            assert "component failed on purpose: boom" in client.logs(job["id"], "t"), (party, states)


def _gated(fed3, name: str) -> tuple[dict, Path, Path]:
    gate, counter = fed3.root / f"{name}.gate", fed3.root / f"{name}.count"
    return ({"name": "t", "component": "gated", "version": "1",
             "params": {"gate": str(gate), "counter": str(counter)}}, gate, counter)


def _wait_started(fed3, job_id: str, counter: Path) -> None:
    deadline = time.monotonic() + 120
    while not counter.exists() or len(counter.read_text().splitlines()) < len(PARTIES):
        assert time.monotonic() < deadline, f"the runs of {job_id} did not all start"
        time.sleep(0.2)


def test_stop_from_a_party_that_is_not_the_scheduler_stops_every_ray_job(fed3):
    task, _gate, counter = _gated(fed3, "stop")
    with fed3.client("alice") as alice:
        job = alice.submit(fed3.spec("callback", [task]))
    _wait_started(fed3, job["id"], counter)
    with fed3.client("bob") as bob:
        bob.stop(job["id"], "wrong data")
    views = fed3.wait_final(job["id"])
    sid = f"rayfed-{job['id']}-t-1"
    for party, view in views.items():
        assert view["state"] == "canceled" and "wrong data" in view["reason"], (party, brief(view))
    for party in PARTIES:  # Ray stops a job asynchronously
        deadline = time.monotonic() + 60
        while (state := fed3.runner(party).status(sid).state) is not RunState.STOPPED:
            assert time.monotonic() < deadline, (party, state)
            time.sleep(0.2)


# These come last: a site this test (re)starts is stopped when it ends (no test leaves a
# process behind), and the next one starts again what is down.
@pytest.mark.parametrize("mode", ["callback", "poll"])
def test_a_site_sigkilled_mid_job_and_restarted_ends_the_job_and_runs_nothing_twice(fed3, mode):
    started = [p for p in PARTIES if fed3.sites[p].proc.poll() is not None]
    try:
        for party in started:
            fed3.start(party)
        victim = "alice" if mode == "poll" else "bob"  # the scheduler itself, or a partner
        started.append(victim)
        _kill_and_restart_mid_job(fed3, mode, victim)
    finally:
        for party in started:
            fed3.sites[party].stop()


def _kill_and_restart_mid_job(fed3, mode: str, victim: str) -> None:
    task, gate, counter = _gated(fed3, f"kill-{mode}")
    with fed3.client("alice") as alice:
        job = alice.submit(fed3.spec(mode, [task]))
    _wait_started(fed3, job["id"], counter)
    fed3.sites[victim].proc.kill()
    fed3.sites[victim].proc.wait(10)
    fed3.sites[victim].stop()
    gate.write_text("go")  # the runs end while the site is down
    time.sleep(1.0)
    fed3.start(victim)
    views = fed3.wait_final(job["id"])
    for party, view in views.items():
        assert view["state"] == "succeeded", (party, brief(view))
    starts = counter.read_text().splitlines()
    assert sorted(starts) == [f"rayfed-{job['id']}-t-1"] * len(PARTIES)
