"""The state machines of jobs, party approvals, tasks and party tasks.

Every allowed change is listed in :data:`TRANSITIONS`; anything else raises
:class:`~fed.site.errors.IllegalTransitionError`. Setting the state a record already
has is not a change (callers treat a repeated message as done, so retries are safe).
"""
from __future__ import annotations

from enum import Enum

from fed.site.errors import IllegalTransitionError


class Entity(str, Enum):
    """What a state belongs to (also the ``entity`` column of the history)."""

    JOB = "job"
    APPROVAL = "approval"  # one party's decision on a job
    TASK = "task"  # a DAG node, combined over its parties
    PARTY_TASK = "party_task"  # one party's run of a task


class JobState(str, Enum):
    AWAITING_APPROVAL = "awaiting_approval"
    ACCEPTED = "accepted"  # every party accepted: the scheduler may start tasks
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELED = "canceled"
    TIMEOUT = "timeout"


class ApprovalState(str, Enum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class TaskState(str, Enum):
    """States of a task and of a party task alike."""

    WAITING = "waiting"
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    TIMEOUT = "timeout"


def _table(moves: dict[Enum, set[Enum]]) -> dict[str, frozenset[str]]:
    """Plain-string form (an Enum member does not hash like its value)."""
    return {a.value: frozenset(b.value for b in targets) for a, targets in moves.items()}


_J, _A, _T = JobState, ApprovalState, TaskState
_TASK_MOVES = _table({
    _T.WAITING: {_T.STARTING, _T.CANCELED},
    _T.STARTING: {_T.RUNNING, _T.FAILED, _T.CANCELED, _T.TIMEOUT, _T.WAITING},
    # running -> waiting: a failed attempt that will be retried.
    _T.RUNNING: {_T.SUCCEEDED, _T.FAILED, _T.CANCELED, _T.TIMEOUT, _T.WAITING},
})

# A party task's attempt that ended goes back to waiting when the scheduler retries its
# task (every party runs the new attempt, also those whose run of the old one succeeded);
# a party task is therefore final only once its task is.
_PARTY_TASK_MOVES = {**_TASK_MOVES, **_table({
    _T.SUCCEEDED: {_T.WAITING}, _T.FAILED: {_T.WAITING}, _T.CANCELED: {_T.WAITING}, _T.TIMEOUT: {_T.WAITING},
})}

#: ``{entity: {from_state: {allowed to_state, ...}}}``; states absent as keys are final.
TRANSITIONS: dict[Entity, dict[str, frozenset[str]]] = {
    Entity.JOB: _table({
        _J.AWAITING_APPROVAL: {_J.ACCEPTED, _J.REJECTED, _J.FAILED, _J.CANCELED},
        _J.ACCEPTED: {_J.RUNNING, _J.FAILED, _J.CANCELED},
        _J.RUNNING: {_J.SUCCEEDED, _J.FAILED, _J.CANCELED, _J.TIMEOUT},
    }),
    Entity.APPROVAL: _table({_A.PENDING: {_A.ACCEPTED, _A.REJECTED}}),
    Entity.TASK: _TASK_MOVES,
    Entity.PARTY_TASK: _PARTY_TASK_MOVES,
}

#: The state each entity is created in.
INITIAL: dict[Entity, str] = {
    Entity.JOB: _J.AWAITING_APPROVAL.value,
    Entity.APPROVAL: _A.PENDING.value,
    Entity.TASK: _T.WAITING.value,
    Entity.PARTY_TASK: _T.WAITING.value,
}


def is_final(entity: Entity, state: str) -> bool:
    """Whether nothing can follow ``state``."""
    return str(_value(state)) not in TRANSITIONS[entity]


def check_transition(entity: Entity, ident: str, current: str, target: str) -> bool:
    """True if ``current -> target`` is a change to make, False if it is no change;
    IllegalTransitionError if the table forbids it."""
    current, target = str(_value(current)), str(_value(target))
    if current == target:
        return False
    if target not in TRANSITIONS[entity].get(current, frozenset()):
        raise IllegalTransitionError(entity.value, ident, current, target)
    return True


def _value(state: object) -> object:
    return state.value if isinstance(state, Enum) else state
