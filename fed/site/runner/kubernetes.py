"""Party tasks as KubeRay ``RayJob`` objects on the party's own ``RayCluster``.

A site inside Kubernetes (``runner.kind: kubernetes`` in site.yaml, which
``fed deploy render`` writes) hands each launch to :class:`RayJobRunner`. The RayJob is
named from the submission id (so a repeated submit finds the first one), selects the
party's RayCluster with ``clusterSelector``, runs the same entry as the local runner with
the launch in ``runtimeEnvYAML``'s environment, and carries the task's deadline as
``activeDeadlineSeconds``. KubeRay's ``status.jobStatus`` and ``jobDeploymentStatus``
map onto :class:`RunState`. Stopping a running job and reading its output go to the Ray
dashboard of the cluster (``status.dashboardURL``), as KubeRay itself does.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from fed.deploy.names import JOB_LABEL, PART_OF, PARTY_LABEL, dns_label, rayjob_name
from fed.site.config import KubernetesRunnerConfig
from fed.site.runner.base import (
    ENTRY_COMMAND,
    LAUNCH_ENV,
    RunState,
    RunStatus,
    TaskLaunch,
)
from fed.site.runner.kubeapi import KubeApi, KubernetesApiError, api_url, namespace_of

#: The annotation holding the full submission id (a RayJob's name may be shortened).
SUBMISSION_ANNOTATION = "rayfed.io/submission-id"
_RAY_STATES = {"SUCCEEDED": RunState.SUCCEEDED, "FAILED": RunState.FAILED, "STOPPED": RunState.STOPPED,
               "RUNNING": RunState.RUNNING, "PENDING": RunState.PENDING}
_FAILED_DEPLOYMENTS = frozenset({"Failed", "ValidationFailed"})


def rayjob_manifest(launch: TaskLaunch, namespace: str, ray_cluster: str) -> dict[str, Any]:
    """The RayJob for one launch (validated against the KubeRay schema in the tests)."""
    import yaml

    sid = launch.submission_id
    # The channel binds every interface of the head pod: peers reach it through the
    # channel Service, whose address is not the pod's.
    launch = dataclasses.replace(launch, listen_all_interfaces=True)
    labels = {**PART_OF, PARTY_LABEL: dns_label(launch.party), "app.kubernetes.io/component": "task",
              JOB_LABEL: dns_label(launch.job_id)}
    runtime_env = yaml.safe_dump({"env_vars": {LAUNCH_ENV: launch.to_json()}}, sort_keys=True)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": rayjob_name(sid), "namespace": namespace, "labels": labels,
                     "annotations": {SUBMISSION_ANNOTATION: sid}},
        "spec": {
            "clusterSelector": {"ray.io/cluster": ray_cluster},
            "jobId": sid,
            "entrypoint": ENTRY_COMMAND,
            "runtimeEnvYAML": runtime_env,
            "activeDeadlineSeconds": max(1, math.ceil(launch.timeout_s)),
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": False,
        },
    }


def run_status(rayjob: dict[str, Any]) -> RunStatus:
    """KubeRay's view of one RayJob as the site's run state."""
    status = rayjob.get("status") or {}
    job, deployment = status.get("jobStatus", ""), status.get("jobDeploymentStatus", "")
    reason = ": ".join(x for x in (status.get("reason", ""), status.get("message", "")) if x)
    state = _RAY_STATES.get(job)
    if state in (RunState.SUCCEEDED, RunState.FAILED, RunState.STOPPED):
        return RunStatus(state, reason)
    if deployment in _FAILED_DEPLOYMENTS:
        return RunStatus(RunState.FAILED, reason or f"RayJob {deployment}")
    if state is RunState.RUNNING:
        return RunStatus(RunState.RUNNING)
    return RunStatus(RunState.PENDING, deployment)


class RayJobRunner:
    """The :class:`~fed.site.runner.base.TaskRunner` of a site inside Kubernetes."""

    def __init__(self, api: KubeApi, namespace: str, ray_cluster: str, dashboard_scheme: str = "http") -> None:
        self.api, self.namespace, self.ray_cluster = api, namespace, ray_cluster
        self._scheme = dashboard_scheme
        self._path = f"/apis/ray.io/v1/namespaces/{namespace}/rayjobs"

    @classmethod
    def from_config(cls, config: KubernetesRunnerConfig) -> RayJobRunner:
        """The runner of ``runner.kubernetes`` in site.yaml, with the pod's service account."""
        api = KubeApi(api_url(config), config.token_file, config.ca_file)
        return cls(api, namespace_of(config), config.ray_cluster)

    def close(self) -> None:
        self.api.close()

    def _get(self, submission_id: str) -> dict[str, Any] | None:
        """The RayJob of this submission; None if there is none (or another id's)."""
        obj = self.api.request("GET", f"{self._path}/{rayjob_name(submission_id)}")
        if obj is None or obj.get("metadata", {}).get("annotations", {}).get(SUBMISSION_ANNOTATION) != submission_id:
            return None
        return obj

    def submit(self, launch: TaskLaunch) -> None:
        body = rayjob_manifest(launch, self.namespace, self.ray_cluster)
        try:
            self.api.request("POST", self._path, body)
        except KubernetesApiError as exc:
            if exc.status != 409 or self._get(launch.submission_id) is None:
                raise
            # 409 AlreadyExists with our annotation: this submission runs already.

    def status(self, submission_id: str) -> RunStatus:
        obj = self._get(submission_id)
        if obj is None:
            return RunStatus(RunState.UNKNOWN, "no RayJob for this submission")
        return run_status(obj)

    def stop(self, submission_id: str) -> None:
        """A running Ray job is stopped through its dashboard (the RayJob then reports
        STOPPED); a RayJob whose Ray job has not started is deleted (its status is then
        UNKNOWN, which is final)."""
        obj = self._get(submission_id)
        if obj is None or run_status(obj).state not in (RunState.PENDING, RunState.RUNNING):
            return
        dashboard = (obj.get("status") or {}).get("dashboardURL")
        if (obj.get("status") or {}).get("jobStatus") in ("PENDING", "RUNNING") and dashboard:
            self._dashboard("POST", dashboard, f"/api/jobs/{submission_id}/stop")
            return
        self.api.request("DELETE", f"{self._path}/{rayjob_name(submission_id)}")

    def logs(self, submission_id: str, max_bytes: int = 65536) -> str:
        obj = self._get(submission_id)
        dashboard = (obj.get("status") or {}).get("dashboardURL") if obj else None
        if not dashboard:
            return ""
        data = self._dashboard("GET", dashboard, f"/api/jobs/{submission_id}/logs")
        text = str((data or {}).get("logs", ""))
        return text.encode()[-max_bytes:].decode(errors="replace")

    def _dashboard(self, method: str, dashboard: str, path: str) -> dict[str, Any] | None:
        import httpx

        url = f"{self._scheme}://{dashboard.removeprefix('http://')}{path}"
        try:
            resp = httpx.request(method, url, timeout=15.0)
        except httpx.HTTPError as exc:
            raise KubernetesApiError(f"{method} {url}", 0, f"Ray dashboard unreachable: {exc}") from None
        if resp.status_code == 404:
            return None
        if resp.status_code >= 400:
            raise KubernetesApiError(f"{method} {url}", resp.status_code, resp.text[:300])
        return resp.json()
