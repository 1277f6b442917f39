"""The runner of a site that runs no tasks (``runner.kind: none``): a third party that
schedules jobs between the data holders but holds no data and runs nothing itself.

Its site still follows and combines the jobs it schedules; a start that reaches it
anyway (a task listing this party) fails that run with a reason naming the setting.
"""
from __future__ import annotations

from fed.site.errors import RunnerError
from fed.site.runner.base import RunState, RunStatus, TaskLaunch


class NoRunner:
    """A TaskRunner that refuses every run and knows of none."""

    def submit(self, launch: TaskLaunch) -> None:
        raise RunnerError(f"party {launch.party!r} runs no tasks (runner.kind: none in its site.yaml); "
                          "give it a Ray cluster (fed site init --ray-address) or leave it out of the task")

    def status(self, submission_id: str) -> RunStatus:
        return RunStatus(RunState.UNKNOWN, "this site runs no tasks")

    def stop(self, submission_id: str) -> None:
        return None

    def logs(self, submission_id: str, max_bytes: int = 65536) -> str:
        return ""
