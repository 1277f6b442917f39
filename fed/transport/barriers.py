"""Receive barriers and the values that arrive for them, on the receiver's event loop.

A value that arrives before its barrier is held (charged to its sender's budget, see
budget.py) until the barrier claims it; a barrier that comes first waits on a future
the arrival completes. Every slot (source party, ordinal) is served once: a value for
a slot already consumed is a duplicate and is dropped. Checking (`decode`) runs on the
connection thread that read the value: the receiver builds no value (only a peer's
error envelope, which is small data); it checks the value's format and holds its
received parts (fed/transport/payload.py), and the value is built where it is used,
so what a small value decodes to never sits in the receiver. Everything else runs on
the loop.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fed.errors import FedError, FedSerializationError, error_from_wire
from fed.transport import payload
from fed.transport.base import MessageKey
from fed.transport.budget import Inflight, PeerBudget, Slot
from fed.transport.counters import ReceiverCounters
from fed.transport.plasma import Landing


@dataclass
class Arrived:
    key: MessageKey
    kind: str = "value"  # or "error": an error envelope
    value: Any = None
    error: BaseException | None = None
    nbytes: int = 0  # held against the sender's buffer budget until claimed
    wire_bytes: int = 0  # the value's size on the wire (stats)


class Barriers:
    """Values arrived vs. barriers waiting. Touched only on the actor's event loop,
    except `seen`, a read-only check connection threads make before reading a value."""

    def __init__(self, budget: PeerBudget, counters: ReceiverCounters,
                 policy: payload.WirePolicy) -> None:
        self._budget = budget
        self._counters = counters
        #: How claimed values are built (the driver's registered codecs may change it).
        self.policy = policy
        self._arrived: dict[Slot, Arrived] = {}
        self._consumed: set[Slot] = set()
        self._waiters: dict[Slot, tuple[MessageKey, asyncio.Future]] = {}
        #: Once the job failed, every later barrier raises this.
        self.failure: FedError | None = None

    async def wait(self, key: MessageKey, hopeless: Callable[[MessageKey], None]) -> Arrived:
        """What arrived for `key`, waiting for it unless `hopeless(key)` raises first.
        The slot is consumed either way: a value arriving later is dropped."""
        slot = (key.src, key.ordinal)
        arrived = self._arrived.pop(slot, None)
        if arrived is not None:
            self._budget.release(key.src, arrived.nbytes)
        try:
            if self.failure is not None:  # decided: every later barrier says the same
                raise self.failure
            if arrived is None:
                hopeless(key)
                arrived = await self._wait_for(key, slot)
        finally:
            self._consumed.add(slot)  # a value arriving later is dropped, its budget returned
        return arrived

    async def _wait_for(self, key: MessageKey, slot: Slot) -> Arrived:
        fut = asyncio.get_running_loop().create_future()
        self._waiters[slot] = (key, fut)
        self._budget.awaiting(slot, True)
        try:
            return await fut
        finally:
            self._waiters.pop(slot, None)
            self._budget.awaiting(slot, False)

    def value(self, arrived: Arrived, key: MessageKey) -> Any:
        """The barrier's result: a marker that builds the value where it is used (with the
        codecs registered now), or the value's error."""
        if arrived.error is not None:
            raise _raisable(arrived.error, key)
        return arrived.value.claimed(self.policy)

    def on_arrival(self, arrived: Arrived, value: Inflight) -> bool:
        """Takes over the value's budget charge; returns False for a duplicate (already
        held or consumed) or a value nobody will claim any more."""
        key = arrived.key
        slot = (key.src, key.ordinal)
        waiter = self._waiters.get(slot)
        # A done waiter: its barrier ended (took a value, or failed) and has not marked
        # the slot consumed yet. A consumed slot includes values whose barrier failed.
        if slot in self._arrived or slot in self._consumed or (waiter and waiter[1].done()):
            self._counters.duplicates.bump()
            self._budget.settle(value, keep=False)
            return False
        if waiter is None and self.failure is not None:
            self._budget.settle(value, keep=False)  # the job failed: never claimed
            self._consumed.add(slot)
            return True
        if not self._budget.settle(value, keep=True):
            raise FedError("the connection gave up on this value before it was stored")
        nbytes = value.charged
        self._counters.received(key.src, arrived.wire_bytes)
        if waiter is not None:
            waiter[1].set_result(arrived)
            self._budget.release(key.src, nbytes)
        else:
            arrived.nbytes = nbytes
            self._arrived[slot] = arrived
        return True

    def on_duplicate(self) -> None:
        """A connection dropped a value unread: its slot was already seen."""
        self._counters.duplicates.bump()

    def seen(self, slot: Slot) -> bool:
        """Whether a value for `slot` is held or was consumed (any thread may ask)."""
        return slot in self._consumed or slot in self._arrived

    def waiting(self) -> list[MessageKey]:
        """The keys the barriers wait for, oldest barrier first."""
        return [key for key, _fut in self._waiters.values()]

    def waiting_for(self, slot: Slot) -> MessageKey | None:
        waiter = self._waiters.get(slot)
        return None if waiter is None else waiter[0]

    def fail_waiting(self, error_for: Callable[[MessageKey], BaseException | None]) -> None:
        """Fail each waiting barrier whose key `error_for` maps to an error."""
        for key, fut in list(self._waiters.values()):
            if not fut.done():
                error = error_for(key)
                if error is not None:
                    fut.set_exception(error)

    def fail_all(self, error: FedError) -> None:
        """The job failed: every waiting barrier and every later one raises `error`
        (the first failure decided wins)."""
        if self.failure is None:
            self.failure = error
        self.fail_waiting(lambda _key: error)

    def counts(self) -> dict[str, int]:
        return {"waiting": len(self._waiters), "buffered": len(self._arrived)}


def decode(key: MessageKey, kind: str, fmt: str, buffers: list, landing: Landing | None,
           policy: payload.WirePolicy, log: logging.LoggerAdapter) -> Arrived:
    """What arrived, checked: a value is held as its parts (a marker that builds it
    where it is used; a large one's parts go to the object store); a peer's error
    envelope (small, data only) is decoded now, to be raised by the barrier."""
    arrived = Arrived(key, kind=kind)
    try:
        if kind == "error":
            envelope = payload.build(fmt, buffers, policy)
            arrived.error = error_from_wire(envelope, key.src, key.producer_call)
            return arrived
        payload.check(fmt, buffers, policy)
        arrived.value = payload.Received(fmt, buffers, policy)
        if landing is not None:
            _land(arrived, landing, fmt, policy, log)
    except FedSerializationError as exc:
        arrived.error, arrived.value = exc, None
    return arrived


def _land(arrived: Arrived, landing: Landing, fmt: str, policy: payload.WirePolicy,
          log: logging.LoggerAdapter) -> None:
    """A large value's buffers into the object store; the barrier gets a marker that
    builds the value where it is used."""
    try:
        arrived.value = landing.marker(fmt, policy)
    except Exception as exc:  # noqa: BLE001  (e.g. the object store is full: keep it here)
        log.warning("keeping a %d byte value in the receiver (the object store refused "
                    "it: %s)", sum(landing.sizes), exc)
        arrived.value = payload.Received(fmt, landing.detach(), policy)


def _raisable(error: BaseException, key: MessageKey) -> Exception:
    """An error that came from the wire, safe to raise in the actor's event loop: a
    BaseException that is not an Exception (SystemExit, KeyboardInterrupt...) would
    stop the loop, so it is wrapped."""
    if isinstance(error, Exception):
        return error
    return FedError(f"{key.src!r} sent {type(error).__name__} as the error of "
                    f"{key.producer()}; refused to raise it here")
