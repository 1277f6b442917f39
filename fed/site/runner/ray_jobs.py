"""The local runner: each party task is a job on the party's own Ray cluster, submitted
through Ray's Job Submission API (the cluster's dashboard address, ``http://HOST:8265``).

The Ray job's submission id is the launch's deterministic ``submission_id``, so a
repeated submit (a retry, a site restarted mid-submit) finds the run it started and
starts nothing new. The launch travels as JSON in the job's environment
(:data:`~fed.site.runner.base.LAUNCH_ENV`) to ``python -m fed.site.taskmain``.

Ray keeps its job records only as long as the cluster lives: a submission id the
cluster does not know is ``UNKNOWN`` here, and the site keeps its own record.
Timeouts are the caller's: :attr:`RunStatus.started_at` tells when Ray started the run.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fed.names import JOB_SECRET_ENV
from fed.site.errors import RunnerError, RunnerUnavailableError
from fed.site.runner.base import (
    ENTRY_COMMAND,
    LAUNCH_ENV,
    RunState,
    RunStatus,
    TaskLaunch,
)

#: Ray's own places for the cluster token, in the order Ray reads them.
RAY_TOKEN_ENV = "RAY_AUTH_TOKEN"
RAY_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
RAY_DEFAULT_TOKEN_FILE = Path.home() / ".ray" / "auth_token"
#: Longest wait for one answer of the dashboard (a submit takes a few seconds on a busy host).
DEFAULT_REQUEST_TIMEOUT_S = 30.0
#: A failure message from Ray is cut to this many characters in a status's reason.
MAX_REASON_CHARS = 2000

_STATES = {
    "PENDING": RunState.PENDING,
    "RUNNING": RunState.RUNNING,
    "SUCCEEDED": RunState.SUCCEEDED,
    "FAILED": RunState.FAILED,
    "STOPPED": RunState.STOPPED,
}
_CHECK = ("check that the party's Ray cluster runs with its dashboard there "
          "(`ray start --head --dashboard-port PORT`) and that runner.ray_address in site.yaml names it")
_T = TypeVar("_T")


def find_ray_token(token_file: str | None = None) -> str | None:
    """The Ray cluster token to send: ``token_file`` if given, else where Ray looks
    (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``); None if none."""
    if token_file is None and os.environ.get(RAY_TOKEN_ENV):
        return os.environ[RAY_TOKEN_ENV].strip()
    path = Path(token_file or os.environ.get(RAY_TOKEN_PATH_ENV) or RAY_DEFAULT_TOKEN_FILE)
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        if token_file is not None:
            raise RunnerError(f"the Ray token file {token_file} does not exist (runner.ray_token_file)") from None
        return None
    except OSError as exc:
        raise RunnerError(f"cannot read the Ray token file {path}: {exc.strerror}") from None


class RayJobsRunner:
    """A :class:`~fed.site.runner.base.TaskRunner` over one Ray cluster's Job Submission API.

    ``job_secret`` is given to runs whose channel has no TLS (tests), as ``fed run``
    gives one to its parties. ``token`` authenticates to a cluster with Ray's token
    authentication on (default: found where Ray keeps it, see :func:`find_ray_token`).
    """

    def __init__(self, address: str, *, job_secret: str | None = None, token: str | None = None,
                 request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> None:
        if request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be positive, got {request_timeout_s}")
        self.address = address.rstrip("/")
        self._job_secret = job_secret
        self._token = token if token is not None else find_ray_token()
        self._timeout = request_timeout_s
        self._client: Any = None

    @classmethod
    def from_config(cls, runner: Any, *, job_secret: str | None = None) -> RayJobsRunner:
        """The runner a site's ``runner`` section (fed.site.config.RunnerConfig) describes."""
        if runner.kind != "local" or not runner.ray_address:
            raise RunnerError(f"runner.kind is {runner.kind!r} with ray_address {runner.ray_address!r}: "
                              "RayJobsRunner runs kind 'local' with a ray_address (fed site init --ray-address)")
        return cls(runner.ray_address, job_secret=job_secret, token=find_ray_token(runner.ray_token_file))

    # ------------------------------------------------------------------ the contract

    def submit(self, launch: TaskLaunch) -> None:
        """Submit the run unless Ray holds ``launch.submission_id`` already (any state)."""
        sid = launch.submission_id
        if self._info(sid) is not None:
            return
        try:
            self._call(lambda c: c.submit_job(
                entrypoint=ENTRY_COMMAND, submission_id=sid, runtime_env={"env_vars": self._env(launch)},
                metadata={"rayfed_job": launch.job_id, "rayfed_task": launch.task, "rayfed_party": launch.party}))
        except RunnerError:
            if self._info(sid) is not None:  # a concurrent submit of the same id won
                return
            raise

    def status(self, submission_id: str) -> RunStatus:
        info = self._info(submission_id)
        if info is None:
            return RunStatus(RunState.UNKNOWN, f"the Ray cluster at {self.address} has no job {submission_id}")
        state = _STATES.get(_ray_status(info), RunState.UNKNOWN)
        reason = "" if state in (RunState.PENDING, RunState.RUNNING, RunState.SUCCEEDED) else _reason(info)
        started = info.start_time / 1000.0 if info.start_time else None
        return RunStatus(state, reason, started_at=started)

    def stop(self, submission_id: str) -> None:
        info = self._info(submission_id)
        if info is None or _ray_status(info) not in ("PENDING", "RUNNING"):
            return
        try:
            self._call(lambda c: c.stop_job(submission_id))
        except RunnerError:
            if self._info(submission_id) is not None:  # gone meanwhile: nothing to stop
                raise

    def logs(self, submission_id: str, max_bytes: int = 65536) -> str:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if self._info(submission_id) is None:
            return ""
        text = self._call(lambda c: c.get_job_logs(submission_id)) or ""
        data = text.encode("utf-8", errors="replace")
        return data[-max_bytes:].decode("utf-8", errors="ignore") if len(data) > max_bytes else text

    # ------------------------------------------------------------------ helpers

    def _env(self, launch: TaskLaunch) -> dict[str, str]:
        env = {LAUNCH_ENV: launch.to_json()}
        if launch.tls is None and self._job_secret:
            env[JOB_SECRET_ENV] = self._job_secret
        return env

    def _info(self, submission_id: str) -> Any:
        """Ray's record of the run, or None if the cluster has none."""
        try:
            return self._call(lambda c: c.get_job_info(submission_id))
        except RunnerError as exc:
            if "status code 404" in str(exc):
                return None
            raise

    def _call(self, fn: Callable[[Any], _T]) -> _T:
        """Run one SDK call; connection and authentication failures become
        RunnerUnavailableError, Ray's refusals RunnerError (Ray's text kept)."""
        from ray.exceptions import AuthenticationError

        try:
            return fn(self._connect())
        except AuthenticationError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "authentication failed"
            raise RunnerUnavailableError(self.address, f"refused our token ({first})", (
                "give the cluster's token in runner.ray_token_file, RAY_AUTH_TOKEN or ~/.ray/auth_token")) from None
        except OSError as exc:  # requests' errors and the SDK's ConnectionError
            import requests

            self._client = None
            what = (f"did not answer within {self._timeout:g} s" if isinstance(exc, requests.exceptions.Timeout)
                    else f"cannot be reached ({type(exc).__name__})")
            raise RunnerUnavailableError(self.address, what, _CHECK) from None
        except (RuntimeError, ValueError) as exc:  # Ray's refusals (HTTP 4xx/5xx), bad addresses
            raise RunnerError(f"Ray cluster at {self.address}: {exc}") from None

    def _connect(self) -> Any:
        if self._client is None:
            headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
            self._client = _timed_client_class()(self.address, self._timeout, headers=headers)
        return self._client


def _timed_client_class() -> type:
    """Ray's JobSubmissionClient with a timeout on every HTTP request.

    The SDK sets none: a dashboard that accepts a connection and never answers would
    hang the caller (the site's scheduler) for good. Its one request method forwards
    extra keyword arguments to ``requests``; this subclass adds ``timeout`` there.
    """
    from ray.job_submission import JobSubmissionClient

    class TimedJobSubmissionClient(JobSubmissionClient):
        def __init__(self, address: str, timeout_s: float, **kwargs: Any) -> None:
            self._rayfed_timeout_s = timeout_s  # set first: __init__ already sends requests
            super().__init__(address, **kwargs)

        def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", self._rayfed_timeout_s)
            return super()._do_request(method, endpoint, **kwargs)

    return TimedJobSubmissionClient


def _ray_status(info: Any) -> str:
    """Ray's status name (``JobStatus`` is a str enum; older SDKs give a plain str)."""
    return str(getattr(info.status, "value", info.status))


def _reason(info: Any) -> str:
    text = " ".join(part for part in (str(info.error_type or ""), str(info.message or "")) if part)
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS] + " ..."
