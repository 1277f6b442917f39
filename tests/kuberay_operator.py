"""What KubeRay's operator does for a RayJob that selects an existing RayCluster
(``clusterSelector``), done for real against a real Ray cluster (tests/raykit.py).

No Kubernetes cluster runs here, so tests/kubestandin.py stands in for the API server
and calls this class where KubeRay's controller would reconcile: on create it submits
the RayJob's ``entrypoint`` with its ``runtimeEnvYAML`` as the Ray job ``jobId``
through Ray's Job Submission API; on each read it copies Ray's job status into
``status.jobStatus`` / ``jobDeploymentStatus`` (with KubeRay's reasons), fails the
RayJob with ``DeadlineExceeded`` and stops its Ray job once ``activeDeadlineSeconds``
have passed; on delete it stops the Ray job (KubeRay's finalizer does). A RayJob
whose deployment is ``Complete`` or ``Failed`` is final and no longer updated.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import yaml

_FINAL_DEPLOYMENTS = ("Complete", "Failed")
_LIVE_JOBS = ("PENDING", "RUNNING")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class RayOperator:
    """The operator's part, over the dashboard at ``dashboard_url`` (``http://HOST:PORT``)."""

    def __init__(self, dashboard_url: str, token: str | None = None) -> None:
        from ray.job_submission import JobSubmissionClient

        headers = {"Authorization": f"Bearer {token}"} if token else None
        self.dashboard = dashboard_url.removeprefix("http://")
        self.client = JobSubmissionClient(dashboard_url, headers=headers)
        self._started: dict[str, float] = {}  # jobId -> monotonic time of the create

    def created(self, rayjob: dict[str, Any]) -> None:
        """Submit the RayJob's Ray job (its ``jobId`` as the submission id)."""
        spec, status = rayjob["spec"], rayjob.setdefault("status", {})
        self._started[spec["jobId"]] = time.monotonic()
        status.update(jobId=spec["jobId"], startTime=_now(), jobDeploymentStatus="Initializing",
                      dashboardURL=self.dashboard)
        runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "") or {}
        try:
            self.client.submit_job(entrypoint=spec["entrypoint"], submission_id=spec["jobId"],
                                   runtime_env=runtime_env)
        except (RuntimeError, OSError) as exc:  # Ray refused it or cannot be reached
            status.update(jobDeploymentStatus="Failed", reason="SubmissionFailed", message=str(exc)[:500])
            return
        status["jobDeploymentStatus"] = "Running"

    def observe(self, rayjob: dict[str, Any]) -> None:
        """Bring the RayJob's status up to date with its Ray job and its deadline."""
        spec, status = rayjob["spec"], rayjob.setdefault("status", {})
        if status.get("jobDeploymentStatus") in _FINAL_DEPLOYMENTS:
            return
        deadline = spec.get("activeDeadlineSeconds")
        started = self._started.get(spec["jobId"], time.monotonic())
        if deadline is not None and time.monotonic() - started > deadline:
            self._stop(spec["jobId"])
            status.update(jobDeploymentStatus="Failed", reason="DeadlineExceeded", endTime=_now(),
                          message=f"The RayJob has passed the activeDeadlineSeconds ({deadline} s)")
            return
        info = self._info(spec["jobId"])
        if info is None:
            return
        job = str(getattr(info.status, "value", info.status))
        status["jobStatus"] = job
        if job in ("SUCCEEDED", "STOPPED"):
            status.update(jobDeploymentStatus="Complete", endTime=_now())
        elif job == "FAILED":
            status.update(jobDeploymentStatus="Failed", reason="AppFailed", endTime=_now(),
                          message=str(info.message or "the Ray job failed"))

    def deleted(self, rayjob: dict[str, Any]) -> None:
        """A deleted RayJob's Ray job is stopped if it still runs."""
        self._stop(rayjob["spec"]["jobId"])

    def _stop(self, job_id: str) -> None:
        info = self._info(job_id)
        if info is not None and str(getattr(info.status, "value", info.status)) in _LIVE_JOBS:
            self.client.stop_job(job_id)

    def _info(self, job_id: str) -> Any:
        try:
            return self.client.get_job_info(job_id)
        except RuntimeError as exc:
            if "404" in str(exc):
                return None
            raise
