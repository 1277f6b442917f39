"""One status for all: how party task states make a task's state, and task states a job's.

The rule (docs/sites.md, "Combine rule"), for the parties' runs of one attempt:

1. any party ``failed``: the task **failed** (a failure is the cause; the others are
   stopped and end ``canceled``, which must not hide it);
2. else any ``timeout``: **timeout**;
3. else any ``canceled``: **canceled**;
4. else every party ``succeeded``: **succeeded**;
5. else the least advanced party decides: any ``waiting`` -> ``starting`` once some
   party started (else ``waiting``), any ``starting`` -> ``starting``, else ``running``.

A task that ends ``failed`` or ``timeout`` with retries left is started again (a new
attempt in every party); ``canceled`` is a stop on request and is never retried.
A job is failed, timeout or canceled as soon as one task is (same ranking); succeeded
when every task succeeded; otherwise running.

Pure functions: no database, no I/O (unit-tested without sites or Ray).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from fed.site.core.states import JobState, TaskState

_T = TaskState
#: Final states, strongest first: the first one present among the parties wins.
FAILURE_RANK: tuple[TaskState, ...] = (_T.FAILED, _T.TIMEOUT, _T.CANCELED)
_RETRIED = frozenset({_T.FAILED.value, _T.TIMEOUT.value})
_JOB_OF_TASK = {_T.FAILED.value: JobState.FAILED, _T.TIMEOUT.value: JobState.TIMEOUT,
                _T.CANCELED.value: JobState.CANCELED}


def combine_task(states: Iterable[str]) -> TaskState:
    """The task's state from its parties' states (for one attempt)."""
    present = {str(getattr(s, "value", s)) for s in states}
    if not present:
        return _T.WAITING
    for final in FAILURE_RANK:
        if final.value in present:
            return final
    if present == {_T.SUCCEEDED.value}:
        return _T.SUCCEEDED
    if _T.WAITING.value in present:
        return _T.STARTING if present - {_T.WAITING.value} else _T.WAITING
    if _T.STARTING.value in present:
        return _T.STARTING
    return _T.RUNNING


def retry_due(state: str, attempt: int, retries: int) -> bool:
    """Whether a task that ended in ``state`` after attempt ``attempt`` (1-based) runs again."""
    return state in _RETRIED and attempt <= retries


def combine_job(task_states: Iterable[str]) -> JobState:
    """The job's state from its tasks' states (while it runs)."""
    present = [str(getattr(s, "value", s)) for s in task_states]
    for final in FAILURE_RANK:
        if final.value in present:
            return _JOB_OF_TASK[final.value]
    if present and all(s == _T.SUCCEEDED.value for s in present):
        return JobState.SUCCEEDED
    return JobState.RUNNING


def ready_tasks(deps: Mapping[str, Sequence[str]], states: Mapping[str, str]) -> list[str]:
    """Tasks waiting whose dependencies all succeeded, in the spec's order."""
    done = _T.SUCCEEDED.value
    return [name for name, needs in deps.items()
            if states.get(name) == _T.WAITING.value and all(states.get(d) == done for d in needs)]


def first_cause(states: Mapping[str, tuple[str, str]]) -> tuple[str, str] | None:
    """``(party, reason)`` of the run that decided a failed/timeout/canceled task, by the
    ranking above (``states``: party -> (state, reason))."""
    for final in FAILURE_RANK:
        for party, (state, reason) in sorted(states.items()):
            if state == final.value:
                return party, reason
    return None
