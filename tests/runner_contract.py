"""The runner contract (fed/site/runner/base.py) as checks any TaskRunner must pass.

Each check takes the runner and a launch factory ``make(component, params) ->
TaskLaunch`` (a fresh job id per call; entrypoint ``runner_components:<component>``
importable where the runner runs tasks) and the test's temporary directory. They wait
on states and files, never on elapsed time; a deadline only bounds a hang.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fed.site.runner.base import (
    FINAL_RUN_STATES,
    RunState,
    RunStatus,
    TaskLaunch,
    TaskRunner,
)

MakeLaunch = Callable[[str, dict[str, Any]], TaskLaunch]
DEADLINE_S = 180.0


def wait_for(runner: TaskRunner, sid: str, states: set[RunState]) -> RunStatus:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        status = runner.status(sid)
        if status.state in states:
            return status
        assert time.monotonic() < deadline, f"{sid} never reached {sorted(states)}: {status}"
        time.sleep(0.2)


def _gated(make: MakeLaunch, tmp: Path) -> tuple[TaskLaunch, Path, Path]:
    gate, counter = tmp / f"gate-{time.monotonic_ns()}", tmp / f"count-{time.monotonic_ns()}"
    return make("gated", {"gate": str(gate), "counter": str(counter)}), gate, counter


def check_runs_to_success(runner: TaskRunner, make: MakeLaunch, tmp: Path) -> None:
    """submit -> running -> succeeded, the output in the launch's output dir."""
    launch, gate, _ = _gated(make, tmp)
    runner.submit(launch)
    status = wait_for(runner, launch.submission_id, {RunState.RUNNING} | FINAL_RUN_STATES)
    assert status.state == RunState.RUNNING, status
    gate.touch()
    status = wait_for(runner, launch.submission_id, set(FINAL_RUN_STATES))
    assert status.state == RunState.SUCCEEDED, (status, runner.logs(launch.submission_id))
    assert (Path(launch.output_dir) / "result.txt").read_text() == "done"


def check_failure_in_logs(runner: TaskRunner, make: MakeLaunch, tmp: Path) -> None:
    """A component that raises: FAILED, with its traceback in the logs."""
    launch = make("failing", {"word": "kumquat"})
    runner.submit(launch)
    status = wait_for(runner, launch.submission_id, set(FINAL_RUN_STATES))
    assert status.state == RunState.FAILED, status
    assert status.reason
    logs = runner.logs(launch.submission_id)
    assert "Traceback" in logs and "ValueError: component failed on purpose: kumquat" in logs, logs


def check_submit_twice_runs_once(runner: TaskRunner, make: MakeLaunch, tmp: Path) -> None:
    """A repeated submit (while running, and after the end) starts nothing new."""
    launch, gate, counter = _gated(make, tmp)
    runner.submit(launch)
    runner.submit(launch)
    wait_for(runner, launch.submission_id, {RunState.RUNNING} | FINAL_RUN_STATES)
    runner.submit(launch)
    gate.touch()
    assert wait_for(runner, launch.submission_id, set(FINAL_RUN_STATES)).state == RunState.SUCCEEDED
    runner.submit(launch)
    assert runner.status(launch.submission_id).state == RunState.SUCCEEDED
    assert counter.read_text().splitlines() == [launch.submission_id]


def check_stop(runner: TaskRunner, make: MakeLaunch, tmp: Path) -> None:
    """stop ends a running run as STOPPED; stopping again, or a finished run, changes nothing."""
    launch, gate, _ = _gated(make, tmp)
    runner.submit(launch)
    wait_for(runner, launch.submission_id, {RunState.RUNNING})
    runner.stop(launch.submission_id)
    assert wait_for(runner, launch.submission_id, set(FINAL_RUN_STATES)).state == RunState.STOPPED
    runner.stop(launch.submission_id)
    gate.touch()
    assert runner.status(launch.submission_id).state == RunState.STOPPED


def check_unknown(runner: TaskRunner, make: MakeLaunch, tmp: Path) -> None:
    """A submission id the runner never saw: UNKNOWN, no logs, stop is a no-op."""
    sid = make("gated", {}).submission_id  # never submitted
    assert runner.status(sid).state == RunState.UNKNOWN
    assert runner.logs(sid) == ""
    runner.stop(sid)
    assert runner.status(sid).state == RunState.UNKNOWN


def check_logs_tail_bounded(runner: TaskRunner, make: MakeLaunch, tmp: Path) -> None:
    """logs() returns at most max_bytes, and they are the last ones."""
    launch = make("chatty", {"lines": 3000})
    runner.submit(launch)
    assert wait_for(runner, launch.submission_id, set(FINAL_RUN_STATES)).state == RunState.SUCCEEDED
    tail = runner.logs(launch.submission_id, max_bytes=1000)
    assert 0 < len(tail.encode()) <= 1000
    assert "LAST LINE" in tail and "line 000000" not in tail, tail
    assert len(runner.logs(launch.submission_id).encode()) > 1000


ALL_CHECKS = (check_runs_to_success, check_failure_in_logs, check_submit_twice_runs_once, check_stop,
              check_unknown, check_logs_tail_bounded)
