"""The contract between a site and whatever runs its party tasks.

A site hands a :class:`TaskLaunch` to a :class:`TaskRunner` and then only asks about it
by its ``submission_id``. The local runner submits to the party's Ray cluster through
Ray's Job Submission API; the Kubernetes runner creates a ``RayJob``. Both run the same
entry (``python -m fed.site.taskmain``, which reads the launch from the environment
variable :data:`LAUNCH_ENV`), so a component behaves the same under either.

The submission id is a pure function of job, task and attempt: a site that retries a
call, or restarts and submits again, asks for the same id and never runs a task twice.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Protocol

#: The environment variable that carries a launch (JSON) into the task's process.
LAUNCH_ENV = "RAYFED_TASK_LAUNCH"
#: The command both runners start; the launch travels in :data:`LAUNCH_ENV`.
ENTRY_COMMAND = "python -m fed.site.taskmain"


@dataclass(frozen=True)
class TaskLaunch:
    """Everything one party's run of one task needs; built by the site from its own records
    (the entrypoint comes from this party's component registry, never from a peer)."""

    job_id: str
    task: str
    attempt: int
    party: str
    component: str
    version: str
    entrypoint: str  # package.module:function
    #: Every party of the task -> ``host:port`` of its channel for this task.
    addresses: dict[str, str]
    params: dict[str, Any] = field(default_factory=dict)
    #: Upstream task name -> its output directory at this party.
    inputs: dict[str, str] = field(default_factory=dict)
    output_dir: str = ""
    timeout_s: float = 3600.0
    #: This party's TLS files for the channel (``cert``, ``key``, ``ca_cert``), as paths the
    #: task's process can read; None runs the channel without TLS (tests only).
    tls: dict[str, str] | None = None
    #: Bind this party's channel on every interface of its node rather than on its own
    #: address: behind a Kubernetes Service the address peers dial is not the pod's (set
    #: by the Kubernetes runner; the party's NetworkPolicy decides who reaches the port).
    listen_all_interfaces: bool = False

    @property
    def submission_id(self) -> str:
        """``rayfed-<job>-<task>-<attempt>``: deterministic, so a repeated submit is a no-op."""
        return f"rayfed-{self.job_id}-{self.task}-{self.attempt}"

    @property
    def fed_job_name(self) -> str:
        """The rayfed job name of this run: concurrent tasks never take each other's values."""
        digest = hashlib.sha256(self.submission_id.encode()).hexdigest()[:8]
        return f"{self.job_id}.{self.task[:40]}.{self.attempt}.{digest}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TaskLaunch:
        return cls(**json.loads(text))


class RunState(str, Enum):
    PENDING = "pending"  # accepted by the runner, not started yet
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"  # stopped on request
    UNKNOWN = "unknown"  # the runner has no record of it (e.g. its cluster was replaced)


FINAL_RUN_STATES = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.STOPPED, RunState.UNKNOWN})


@dataclass(frozen=True)
class RunStatus:
    state: RunState
    reason: str = ""
    #: When the runner started the run (epoch seconds), if it knows: the caller's
    #: timeout may count from there.
    started_at: float | None = None


class TaskRunner(Protocol):
    """Runs party tasks on this party's own cluster. Every method may be called again
    with the same arguments (after a retry or a restart) and must then do nothing new."""

    def submit(self, launch: TaskLaunch) -> None:
        """Start the run unless a run with ``launch.submission_id`` exists already."""

    def status(self, submission_id: str) -> RunStatus:
        """The run's state now; ``UNKNOWN`` if the runner has no record of it."""

    def stop(self, submission_id: str) -> None:
        """Stop the run if it is still going; a finished or unknown run is left as it is."""

    def logs(self, submission_id: str, max_bytes: int = 65536) -> str:
        """The last ``max_bytes`` of the run's output (empty if there is none yet)."""
