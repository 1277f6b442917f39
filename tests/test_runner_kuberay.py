"""The RayJob runner (fed/site/runner/kubernetes.py) against the runner contract, with
its tasks running for real on a real Ray cluster (tests/raykit.py).

No Kubernetes cluster runs here, so the Kubernetes API server the runner talks to is a
stand-in (tests/kubestandin.py, real HTTPS): that HTTP boundary is the only thing
replaced. Behind it, tests/kuberay_operator.py does what KubeRay's operator does: it
submits each RayJob to the Ray cluster through Ray's Job Submission API, mirrors the Ray
job's status into the RayJob, enforces ``activeDeadlineSeconds`` and stops the Ray job
of a deleted RayJob. The runner stops runs and reads their logs at the real dashboard.
Run under the CPU lock:
``flock /tmp/rayfed-cpu.lock python -m pytest tests/test_runner_kuberay.py``.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.job_submission")

import runner_contract
from kuberay_operator import RayOperator
from kubestandin import KubeStandIn
from raykit import start_clusters
from runner_contract import make_factory

from fed.cli.ports import PortLease
from fed.deploy.names import rayjob_name
from fed.site.config import KubernetesRunnerConfig, RunnerConfig, SiteConfig
from fed.site.runner.base import FINAL_RUN_STATES, RunState
from fed.site.runner.kubeapi import KubeApi
from fed.site.runner.kubernetes import RayJobRunner
from fed.site.server import site_runner

TESTS = Path(__file__).resolve().parent
NS = CLUSTER = "rayfed-alice"


@pytest.fixture(scope="module")
def ray_cluster():
    """One real Ray cluster (token authentication on) for the whole module."""
    with PortLease() as lease:
        (cluster,) = start_clusters(lease, 1, extra_path=(TESTS,))
        try:
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture
def kuberay(ray_cluster, tmp_path, port_lease):
    """(stand-in API server with the operator on the real cluster, a RayJobRunner on it)."""
    (api_port,) = port_lease.reserve(1)
    standin = KubeStandIn(tmp_path, api_port, operator=RayOperator(ray_cluster.dashboard_url, ray_cluster.token))
    token = tmp_path / "sa-token"
    token.write_text(standin.token)
    standin.start()
    runner = RayJobRunner(KubeApi(standin.url, str(token), standin.ca_file), NS, CLUSTER,
                          dashboard_token=ray_cluster.token)
    try:
        yield standin, runner
    finally:
        runner.close()
        standin.stop()


def _ray_job_ends(client, submission_id: str) -> str:
    """The final status of a Ray job, as Ray's own client reports it (a stop is
    asynchronous in Ray; pytest-timeout bounds a hang)."""
    while (state := str(client.get_job_info(submission_id).status.value)) in ("PENDING", "RUNNING"):
        time.sleep(0.2)
    return state


@pytest.mark.parametrize("check", runner_contract.ALL_CHECKS, ids=lambda c: c.__name__)
def test_rayjob_runner_contract(kuberay, tmp_path, check):
    _, runner = kuberay
    check(runner, make_factory(tmp_path), tmp_path)


def test_the_deadline_fails_the_run_and_stops_its_ray_job(kuberay, tmp_path):
    """activeDeadlineSeconds (the launch's timeout): the RayJob fails with KubeRay's
    DeadlineExceeded and its Ray job is stopped, though the component never ends."""
    standin, runner = kuberay
    make = make_factory(tmp_path)
    launch = make("gated", {"gate": str(tmp_path / "never"), "counter": str(tmp_path / "count")})
    launch = dataclasses.replace(launch, timeout_s=1.0)
    runner.submit(launch)
    status = runner_contract.wait_for(runner, launch.submission_id, set(FINAL_RUN_STATES))
    assert status.state is RunState.FAILED and "DeadlineExceeded" in status.reason, status
    assert _ray_job_ends(standin.operator.client, launch.submission_id) == "STOPPED"


def test_deleting_the_rayjob_stops_its_ray_job(kuberay, tmp_path):
    """KubeRay's finalizer: a RayJob deleted while its Ray job runs stops that job."""
    standin, runner = kuberay
    make = make_factory(tmp_path)
    launch = make("gated", {"gate": str(tmp_path / "never"), "counter": str(tmp_path / "count")})
    runner.submit(launch)
    runner_contract.wait_for(runner, launch.submission_id, {RunState.RUNNING})
    runner.api.request("DELETE", f"/apis/ray.io/v1/namespaces/{NS}/rayjobs/{rayjob_name(launch.submission_id)}")
    assert runner.status(launch.submission_id).state is RunState.UNKNOWN
    assert _ray_job_ends(standin.operator.client, launch.submission_id) == "STOPPED"


def test_the_task_gets_the_rayjobs_environment(kuberay, tmp_path):
    """The launch reaches the component through the RayJob's runtimeEnvYAML, with the
    RayJob's jobId as the Ray job's submission id."""
    standin, runner = kuberay
    launch = make_factory(tmp_path)("writes_output", {})
    runner.submit(launch)
    assert runner_contract.wait_for(runner, launch.submission_id, set(FINAL_RUN_STATES)).state is RunState.SUCCEEDED
    assert (Path(launch.output_dir) / "out.txt").read_text() == "alice"
    rayjob = standin.rayjobs[(NS, rayjob_name(launch.submission_id))]
    assert rayjob["status"]["jobDeploymentStatus"] == "Complete" and rayjob["status"]["jobStatus"] == "SUCCEEDED"
    assert str(standin.operator.client.get_job_info(launch.submission_id).status.value) == "SUCCEEDED"


def test_the_site_gives_its_rayjob_runner_the_ray_token_of_site_yaml(kuberay, ray_cluster, tmp_path):
    """runner.ray_token_file reaches the RayJob runner that site.yaml makes: stopping a
    run goes through the cluster's dashboard, which refuses calls without the token."""
    standin, _ = kuberay
    sa_token, ray_token = tmp_path / "sa", tmp_path / "ray-token"
    sa_token.write_text(standin.token)
    ray_token.write_text(ray_cluster.token + "\n")
    kube = KubernetesRunnerConfig(ray_cluster=CLUSTER, namespace=NS, api_url=standin.url,
                                  token_file=str(sa_token), ca_file=standin.ca_file)
    config = SiteConfig.model_construct(runner=RunnerConfig(kind="kubernetes", kubernetes=kube,
                                                            ray_token_file=str(ray_token)))
    runner, _ = site_runner(config, tmp_path)
    try:
        launch = make_factory(tmp_path)("gated", {"gate": str(tmp_path / "never"),
                                                  "counter": str(tmp_path / "count")})
        runner.submit(launch)
        runner_contract.wait_for(runner, launch.submission_id, {RunState.RUNNING})
        runner.stop(launch.submission_id)
        assert _ray_job_ends(standin.operator.client, launch.submission_id) == "STOPPED"
    finally:
        runner.close()
