"""The RayJob runner (fed/site/runner/kubernetes.py) against the runner contract: submit,
follow the state to its end, submit twice = one run, stop, unknown, logs.

No Kubernetes cluster runs here: the runner talks real HTTPS to a stand-in Kubernetes
API server (tests/kubestandin.py), which also plays KubeRay's operator (the test sets the
RayJob's status) and the Ray dashboard. Only that HTTP boundary is replaced.
"""
from __future__ import annotations

import dataclasses
import json
import re

import pytest
import yaml

from fed.deploy.names import MAX_RAYJOB_NAME, rayjob_name
from fed.deploy.validate import validate_document
from fed.site.config import KubernetesRunnerConfig
from fed.site.errors import SiteConfigError
from fed.site.runner.base import ENTRY_COMMAND, LAUNCH_ENV, RunState, TaskLaunch
from fed.site.runner.kubeapi import KubeApi, KubernetesApiError
from fed.site.runner.kubernetes import RayJobRunner, rayjob_manifest
from fed.site.taskcontext import TaskContext
from tests.kubestandin import KubeStandIn

NS = "rayfed-alice"
CLUSTER = "rayfed-alice"


def launch(job: str = "job1", task: str = "stats", attempt: int = 1, timeout_s: float = 600.0) -> TaskLaunch:
    return TaskLaunch(job_id=job, task=task, attempt=attempt, party="alice", component="stats", version="1",
                      entrypoint="mypkg.stats:run", addresses={"alice": "alice:9401", "bob": "bob:9401"},
                      params={"bins": 10}, timeout_s=timeout_s)


@pytest.fixture
def kube(tmp_path, port_lease):
    api_port, dash_port = port_lease.reserve(2)
    standin = KubeStandIn(tmp_path, api_port, dash_port)
    token = tmp_path / "token"
    token.write_text(standin.token)
    standin.start()
    runner = RayJobRunner(KubeApi(standin.url, str(token), standin.ca_file), NS, CLUSTER)
    try:
        yield standin, runner, token
    finally:
        runner.close()
        standin.stop()


def _name(run: TaskLaunch) -> str:
    return rayjob_name(run.submission_id)


def test_submit_then_running_then_succeeded(kube):
    standin, runner, _ = kube
    run = launch()
    runner.submit(run)
    assert runner.status(run.submission_id).state is RunState.PENDING
    standin.operator(NS, _name(run), jobDeploymentStatus="Initializing")
    assert runner.status(run.submission_id).state is RunState.PENDING
    standin.operator(NS, _name(run), jobDeploymentStatus="Running", jobStatus="RUNNING", dashboardURL=standin.dashboard)
    assert runner.status(run.submission_id).state is RunState.RUNNING
    standin.operator(NS, _name(run), jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    assert runner.status(run.submission_id).state is RunState.SUCCEEDED


def test_failed_job_and_failed_deployment_carry_the_reason(kube):
    standin, runner, _ = kube
    app, late = launch(task="a"), launch(task="b", timeout_s=1.5)
    runner.submit(app)
    runner.submit(late)
    standin.operator(NS, _name(app), jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed",
                     message="Job entrypoint command failed with exit code 1")
    status = runner.status(app.submission_id)
    assert status.state is RunState.FAILED and "AppFailed" in status.reason and "exit code 1" in status.reason
    standin.operator(NS, _name(late), jobDeploymentStatus="Failed", reason="DeadlineExceeded")
    status = runner.status(late.submission_id)
    assert status.state is RunState.FAILED and "DeadlineExceeded" in status.reason
    assert standin.rayjobs[(NS, _name(late))]["spec"]["activeDeadlineSeconds"] == 2


def test_submit_twice_is_one_run_even_from_a_restarted_site(kube, tmp_path):
    standin, runner, token = kube
    run = launch()
    runner.submit(run)
    runner.submit(run)
    restarted = RayJobRunner(KubeApi(standin.url, str(token), standin.ca_file), NS, CLUSTER)
    try:
        restarted.submit(run)
    finally:
        restarted.close()
    assert standin.creates == 1 and len(standin.rayjobs) == 1
    runner.submit(launch(attempt=2))
    assert standin.creates == 2


def test_stop_a_running_job_stops_it(kube):
    standin, runner, _ = kube
    run = launch()
    runner.submit(run)
    standin.operator(NS, _name(run), jobDeploymentStatus="Running", jobStatus="RUNNING", dashboardURL=standin.dashboard)
    runner.stop(run.submission_id)
    assert runner.status(run.submission_id).state is RunState.STOPPED
    runner.stop(run.submission_id)  # again: nothing new
    assert runner.status(run.submission_id).state is RunState.STOPPED


def test_stop_before_the_ray_job_started_removes_the_rayjob(kube):
    standin, runner, _ = kube
    run = launch()
    runner.submit(run)
    runner.stop(run.submission_id)
    assert (NS, _name(run)) not in standin.rayjobs
    assert runner.status(run.submission_id).state is RunState.UNKNOWN


def test_stop_leaves_finished_and_unknown_runs_alone(kube):
    standin, runner, _ = kube
    run = launch()
    runner.submit(run)
    standin.operator(NS, _name(run), jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    runner.stop(run.submission_id)
    runner.stop("rayfed-nope-nope-1")
    assert runner.status(run.submission_id).state is RunState.SUCCEEDED


def test_unknown_submission_is_unknown(kube):
    _, runner, _ = kube
    assert runner.status("rayfed-never-submitted-1").state is RunState.UNKNOWN


def test_logs_are_the_tail_of_the_jobs_output(kube):
    standin, runner, _ = kube
    run = launch()
    runner.submit(run)
    assert runner.logs(run.submission_id) == ""  # not started: no dashboard yet
    standin.operator(NS, _name(run), jobStatus="RUNNING", dashboardURL=standin.dashboard)
    standin.logs[run.submission_id] = "line 1\nline 2\nthe end\n"
    assert runner.logs(run.submission_id) == "line 1\nline 2\nthe end\n"
    assert runner.logs(run.submission_id, max_bytes=8) == "the end\n"
    assert runner.logs("rayfed-never-submitted-1") == ""


def test_the_rayjob_is_valid_and_carries_the_launch():
    run = launch(job="J-" + "x" * 80, task="Train_Model.v2", timeout_s=90.2)
    doc = rayjob_manifest(run, NS, CLUSTER)
    validate_document(doc)
    name = doc["metadata"]["name"]
    assert len(name) <= MAX_RAYJOB_NAME and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
    assert name != rayjob_name(launch(job="J-" + "x" * 81, task="Train_Model.v2").submission_id)
    assert name == rayjob_manifest(run, NS, CLUSTER)["metadata"]["name"]  # deterministic
    spec = doc["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": CLUSTER}
    assert spec["jobId"] == run.submission_id and spec["entrypoint"] == ENTRY_COMMAND
    assert spec["activeDeadlineSeconds"] == 91
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    carried = TaskLaunch.from_json(env[LAUNCH_ENV])
    assert carried == dataclasses.replace(run, listen_all_interfaces=True)
    assert TaskContext(carried).fed_init_kwargs()["config"] == {"cross_silo_comm": {"listen_all_interfaces": True}}
    assert json.loads(env[LAUNCH_ENV])["entrypoint"] == "mypkg.stats:run"


def test_the_rayjob_passes_kuberays_own_rules_for_cluster_selector_mode():
    """What KubeRay v1.7.0's ValidateRayJobSpec checks beyond the schema."""
    spec = rayjob_manifest(launch(timeout_s=0.2), NS, CLUSTER)["spec"]
    assert spec["clusterSelector"]["ray.io/cluster"]
    assert not spec.get("suspend") and not spec.get("backoffLimit") and "rayClusterSpec" not in spec
    assert spec["submissionMode"] != "SidecarMode"
    assert spec["activeDeadlineSeconds"] >= 1
    assert spec.get("ttlSecondsAfterFinished", 0) == 0 or spec["shutdownAfterJobFinishes"]
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)


def test_an_invalid_rayjob_is_refused_by_the_schema():
    doc = rayjob_manifest(launch(), NS, CLUSTER)
    doc["spec"]["activeDeadlineSecond"] = 5
    from fed.deploy.errors import ManifestInvalid

    with pytest.raises(ManifestInvalid, match="activeDeadlineSecond"):
        validate_document(doc)


def test_a_wrong_token_is_a_clear_error(kube):
    _, runner, token = kube
    token.write_text("rotated-away")  # read on every request
    with pytest.raises(KubernetesApiError, match="401"):
        runner.status("rayfed-a-b-1")


def test_outside_a_cluster_the_config_says_what_is_missing(tmp_path):
    config = KubernetesRunnerConfig(ray_cluster=CLUSTER, token_file=str(tmp_path / "no-token"))
    with pytest.raises(SiteConfigError, match="not running inside Kubernetes"):
        RayJobRunner.from_config(config)


def test_from_config_reads_the_service_accounts_files(kube, tmp_path):
    standin, _, token = kube
    (tmp_path / "namespace").write_text(NS + "\n")
    config = KubernetesRunnerConfig(ray_cluster=CLUSTER, api_url=standin.url, token_file=str(token),
                                    ca_file=standin.ca_file, namespace_file=str(tmp_path / "namespace"))
    runner = RayJobRunner.from_config(config)
    try:
        assert runner.namespace == NS
        runner.submit(launch())
        assert runner.status(launch().submission_id).state is RunState.PENDING
    finally:
        runner.close()
