"""The local runner (fed/site/runner/ray_jobs.py) against real Ray clusters, the task
entry (fed/site/taskmain.py), and the example components as a real 3-party job.

Three Ray clusters (``ray start --head``, one per party, token authentication on) are
started once for the module and stopped after it. Run under the CPU lock:
``flock /tmp/rayfed-cpu.lock python -m pytest tests/test_site_runner.py``.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytest.importorskip("ray.job_submission")

import runner_contract
from raykit import REPO, start_clusters

from fed.cli.ports import PortLease
from fed.site.errors import RunnerUnavailableError
from fed.site.runner.base import LAUNCH_ENV, RunState, TaskLaunch
from fed.site.runner.ray_jobs import RayJobsRunner

TESTS = Path(__file__).resolve().parent
PARTIES = ("alice", "bob", "carol")


@pytest.fixture(scope="module")
def clusters():
    """One Ray cluster per party, for the whole module."""
    with PortLease() as lease:
        started = start_clusters(lease, len(PARTIES), extra_path=(TESTS,))
        try:
            yield dict(zip(PARTIES, started))
        finally:
            for cluster in started:
                cluster.stop()


def make_factory(tmp: Path, party: str = "alice"):
    def make(component: str, params: dict) -> TaskLaunch:
        job = f"j{uuid.uuid4().hex[:10]}"
        return TaskLaunch(job_id=job, task="t", attempt=0, party=party, component=component, version="1",
                          entrypoint=f"runner_components:{component}", addresses={party: "127.0.0.1:1"},
                          params=params, output_dir=str(tmp / job / "t"))
    return make


# ---------------------------------------------------------------- the runner contract

@pytest.mark.parametrize("check", runner_contract.ALL_CHECKS, ids=lambda c: c.__name__)
def test_ray_jobs_runner_contract(clusters, tmp_path, check):
    cluster = clusters["alice"]
    check(RayJobsRunner(cluster.dashboard_url, token=cluster.token), make_factory(tmp_path), tmp_path)


def test_runs_are_visible_through_rays_own_client(clusters, tmp_path):
    """The runs are ordinary Ray jobs: Ray's JobSubmissionClient sees the same state."""
    from ray.job_submission import JobSubmissionClient

    cluster = clusters["alice"]
    runner = RayJobsRunner(cluster.dashboard_url, token=cluster.token)
    launch = make_factory(tmp_path)("writes_output", {})
    runner.submit(launch)
    status = runner_contract.wait_for(runner, launch.submission_id, set(runner_contract.FINAL_RUN_STATES))
    assert status.state == RunState.SUCCEEDED and status.started_at is not None
    client = JobSubmissionClient(cluster.dashboard_url, headers={"Authorization": f"Bearer {cluster.token}"})
    info = client.get_job_info(launch.submission_id)
    assert str(info.status.value) == "SUCCEEDED"
    assert info.metadata["rayfed_job"] == launch.job_id and info.metadata["rayfed_party"] == "alice"
    assert (Path(launch.output_dir) / "out.txt").read_text() == "alice"
    metric = json.loads((Path(launch.output_dir) / "metrics.jsonl").read_text())
    assert (metric["name"], metric["value"], metric["step"]) == ("answer", 42.0, 1)


def test_wrong_token_is_a_clear_error(clusters, tmp_path):
    cluster = clusters["alice"]
    runner = RayJobsRunner(cluster.dashboard_url, token="not-the-token")
    with pytest.raises(RunnerUnavailableError, match="refused our token") as err:
        runner.status("rayfed-x-t-0")
    assert cluster.dashboard_url in str(err.value) and "ray_token_file" in str(err.value)


def test_runner_from_the_site_config_reads_the_token_file(clusters, tmp_path):
    from fed.site.config import RunnerConfig
    from fed.site.errors import RunnerError

    cluster = clusters["alice"]
    token_file = tmp_path / "ray-token"
    token_file.write_text(cluster.token + "\n")
    config = RunnerConfig(ray_address=cluster.dashboard_url, ray_token_file=str(token_file))
    runner = RayJobsRunner.from_config(config)
    assert runner.status("rayfed-nothing-t-0").state == RunState.UNKNOWN
    with pytest.raises(RunnerError, match="does not exist"):
        RayJobsRunner.from_config(RunnerConfig(ray_address=cluster.dashboard_url,
                                               ray_token_file=str(tmp_path / "missing")))
    with pytest.raises(RunnerError, match="--ray-address"):
        RayJobsRunner.from_config(RunnerConfig())


def test_unreachable_cluster_names_address_and_fix():
    with PortLease() as lease:
        (port,) = lease.reserve(1)  # nobody listens there
        runner = RayJobsRunner(f"http://127.0.0.1:{port}", token="x")
        with pytest.raises(RunnerUnavailableError) as err:
            runner.status("rayfed-x-t-0")
    text = str(err.value)
    assert f"127.0.0.1:{port}" in text and "cannot be reached" in text and "ray start --head" in text


def test_a_dashboard_that_never_answers_is_a_clear_error_not_a_hang():
    """A server that accepts connections and never answers (a hung dashboard)."""
    import socket

    with PortLease() as lease, socket.socket() as silent:
        (port,) = lease.reserve(1)
        silent.bind(("127.0.0.1", port))
        silent.listen(8)  # the kernel completes the handshake; nobody reads or answers
        runner = RayJobsRunner(f"http://127.0.0.1:{port}", token="x", request_timeout_s=1.0)
        with pytest.raises(RunnerUnavailableError, match="did not answer within 1 s"):
            runner.status("rayfed-x-t-0")


# ---------------------------------------------------------------- site.yaml: runner

def test_site_init_writes_the_runner_section(tmp_path):
    import yaml
    from sitekit import fed_cli

    from fed.site.config import load_site

    certs = tmp_path / "certs"
    assert fed_cli("certs", "--parties", "alice", "--out", str(certs)).returncode == 0
    federation = tmp_path / "federation.yaml"
    federation.write_text(json.dumps({"parties": {"alice": {"site": "https://127.0.0.1:23001"}}}))
    init = ("site", "init", str(tmp_path / "alice"), "--party", "alice", "--federation", str(federation),
            "--certs", str(certs))
    ok = fed_cli(*init, "--ray-address", "http://127.0.0.1:28265")
    assert ok.returncode == 0, ok.stderr
    config = load_site(tmp_path / "alice")
    assert (config.runner.kind, config.runner.ray_address, config.runner.workdir) == \
        ("local", "http://127.0.0.1:28265", "runs")
    assert config.task_dir(tmp_path / "alice", "j1", "stats") == (tmp_path / "alice" / "runs" / "j1" / "stats").resolve()
    bad = fed_cli(*init, "--force", "--ray-address", "127.0.0.1:8265")
    assert bad.returncode == 1 and "runner.ray_address" in bad.stderr and "http://HOST:PORT" in bad.stderr
    site_file = tmp_path / "alice" / "site.yaml"
    data = yaml.safe_load(site_file.read_text())
    data["runner"]["kind"] = "slurm"
    site_file.write_text(yaml.safe_dump(data))
    with pytest.raises(Exception, match="runner.kind"):
        load_site(tmp_path / "alice")


# ---------------------------------------------------------------- taskmain

def _taskmain(env_launch: str | None, tmp: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (LAUNCH_ENV, "RAY_ADDRESS")}
    env["PYTHONPATH"] = os.pathsep.join((str(REPO), str(TESTS)))
    if env_launch is not None:
        env[LAUNCH_ENV] = env_launch
    return subprocess.run([sys.executable, "-m", "fed.site.taskmain"], env=env, cwd=tmp, capture_output=True,
                          text=True, timeout=120, check=False)


def _launch_json(tmp: Path, **changes) -> str:
    launch = make_factory(tmp)("writes_output", {})
    data = json.loads(launch.to_json())
    data.update(changes)
    return json.dumps(data)


@pytest.mark.parametrize("launch, message", [
    (None, "RAYFED_TASK_LAUNCH is not set"),
    ("{not json", "is not JSON"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"job_id": "j"}', "is not a task launch"),
    ("EXTRA", "is not a task launch"),
    ("ENTRY=no_such_module_xyz:run", "module 'no_such_module_xyz' is not importable"),
    ("ENTRY=runner_components:nope", "has no 'nope'"),
    ("ENTRY=runner_components:not_callable", "is not callable"),
    ("ENTRY=runner_components", "is not package.module:function"),
    ("NOADDR", "including 'alice'"),
    ("NOOUT", "output_dir is empty"),
])
def test_taskmain_refuses_a_bad_launch(tmp_path, launch, message):
    if launch == "EXTRA":
        launch = _launch_json(tmp_path, surprise=1)
    elif launch and launch.startswith("ENTRY="):
        launch = _launch_json(tmp_path, entrypoint=launch[len("ENTRY="):])
    elif launch == "NOADDR":
        launch = _launch_json(tmp_path, addresses={"bob": "127.0.0.1:1"})
    elif launch == "NOOUT":
        launch = _launch_json(tmp_path, output_dir="")
    done = _taskmain(launch, tmp_path)
    assert done.returncode == 2, done
    assert message in done.stderr, done.stderr


def test_taskmain_runs_the_component_and_reports_its_failure(tmp_path):
    done = _taskmain(_launch_json(tmp_path), tmp_path)
    assert done.returncode == 0, done.stderr
    (out,) = tmp_path.glob("*/t/out.txt")
    assert out.read_text() == "alice"
    failed = _taskmain(_launch_json(tmp_path, entrypoint="runner_components:failing", params={"word": "fig"}),
                       tmp_path)
    assert failed.returncode == 1
    assert "Traceback" in failed.stderr and "component failed on purpose: fig" in failed.stderr


# ---------------------------------------------------------------- the example components, 3 parties

def _run_task(runners: dict, tmp: Path, job: str, task: str, inputs: dict | None = None,
              params: dict | None = None, tls: dict | None = None) -> dict[str, Path]:
    """One task of the example job in every party, each on its own cluster; its output dirs."""
    with PortLease() as lease:
        addresses = lease.addresses(list(PARTIES))
        launches = {p: TaskLaunch(job_id=job, task=task, attempt=0, party=p, component=task, version="1",
                                  entrypoint=f"examples.jobs.components:{task}", addresses=addresses,
                                  params=params or {}, inputs=(inputs or {}).get(p, {}),
                                  output_dir=str(tmp / p / job / task), tls=(tls or {}).get(p))
                    for p in PARTIES}
        for p in PARTIES:
            runners[p].submit(launches[p])
        for p in PARTIES:
            status = runner_contract.wait_for(runners[p], launches[p].submission_id,
                                              set(runner_contract.FINAL_RUN_STATES))
            assert status.state == RunState.SUCCEEDED, (p, status, runners[p].logs(launches[p].submission_id))
    return {p: Path(launches[p].output_dir) for p in PARTIES}


@pytest.mark.timeout(900)
def test_example_job_runs_as_three_parties_on_three_clusters(clusters, tmp_path):
    secret = secrets.token_hex(16)  # channels without TLS here: the parties share a job secret
    runners = {p: RayJobsRunner(c.dashboard_url, token=c.token, job_secret=secret) for p, c in clusters.items()}
    job = f"j{uuid.uuid4().hex[:10]}"
    stats = _run_task(runners, tmp_path, job, "stats")
    results = {p: json.loads((d / "stats.json").read_text()) for p, d in stats.items()}
    federated = {p: r["federated"] for p, r in results.items()}
    assert federated["alice"] == federated["bob"] == federated["carol"]
    assert federated["alice"]["count"] == sum(r["local"]["count"] for r in results.values())

    inputs = {p: {"stats": str(d)} for p, d in stats.items()}
    trained = _run_task(runners, tmp_path, job, "fedavg", inputs, params={"rounds": 3})
    for p, out in trained.items():
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        accuracy = [m for m in metrics if m["name"] == "accuracy"]
        assert [m["step"] for m in accuracy] == [1, 2, 3], p
        assert accuracy[-1]["value"] > 0.8, (p, accuracy)
        assert (out / "model.npz").is_file()


def test_example_stats_over_mutual_tls(clusters, tmp_path):
    """The launch's TLS files reach fed.init: the parties' channels run mutual TLS."""
    from sitekit import fed_cli

    certs = tmp_path / "certs"
    assert fed_cli("certs", "--parties", ",".join(PARTIES), "--out", str(certs)).returncode == 0
    tls = {p: {"cert": str(certs / f"{p}.crt"), "key": str(certs / f"{p}.key"), "ca_cert": str(certs / "ca.crt")}
           for p in PARTIES}
    runners = {p: RayJobsRunner(c.dashboard_url, token=c.token) for p, c in clusters.items()}  # no job secret
    out = _run_task(runners, tmp_path, f"j{uuid.uuid4().hex[:10]}", "stats", tls=tls)
    counts = {json.loads((d / "stats.json").read_text())["federated"]["count"] for d in out.values()}
    assert len(counts) == 1
