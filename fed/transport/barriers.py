"""Receive barriers and the values that arrive for them, on the receiver's event loop.

A value that arrives before its barrier is held (charged to its sender's budget, see
budget.py) until the barrier claims it; a barrier that comes first waits on a future
the arrival completes. Every slot (source party, ordinal) is served once: a value for
a slot already consumed is a duplicate and is dropped. Decoding (`decode`) runs on
the connection thread that read the value; everything else runs on the loop.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fed import serialization
from fed.errors import FedError, FedSerializationError, error_from_wire
from fed.transport.base import MessageKey
from fed.transport.budget import Inflight, PeerBudget, Slot
from fed.transport.counters import ReceiverCounters
from fed.transport.plasma import Landing


@dataclass
class Arrived:
    key: MessageKey
    value: Any = None
    error: BaseException | None = None
    nbytes: int = 0  # held against the sender's buffer budget until claimed
    wire_bytes: int = 0  # the value's size on the wire (stats)
    #: The received buffers of a value held until claimed: kept instead of the decoded
    #: value (which may be far larger than what the budget charged) and decoded again
    #: by the barrier.
    encoded: list | None = None


class Barriers:
    """Values arrived vs. barriers waiting. Touched only on the actor's event loop,
    except `seen`, a read-only check connection threads make before reading a value."""

    def __init__(self, budget: PeerBudget, counters: ReceiverCounters, allowlist: Any) -> None:
        self._budget = budget
        self._counters = counters
        self._allowlist = allowlist
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

    async def value(self, arrived: Arrived, key: MessageKey) -> Any:
        """The barrier's result: the value (decoded again if it was held) or its error."""
        if arrived.error is not None:
            raise _raisable(arrived.error, key)
        if arrived.encoded is not None:
            return await asyncio.get_running_loop().run_in_executor(
                None, loads, arrived.encoded, self._allowlist)
        return arrived.value

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
            arrived.encoded = None
            waiter[1].set_result(arrived)
            self._budget.release(key.src, nbytes)
        else:
            if arrived.encoded is not None:
                arrived.value = None  # held as the charged bytes; decoded when claimed
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


def decode(key: MessageKey, kind: str, buffers: list, landing: Landing | None,
           allowlist: Any, log: logging.LoggerAdapter) -> Arrived:
    """Unpickle (through the allowlist) what arrived; a large value is handed to the
    object store and represented by its marker."""
    arrived = Arrived(key)
    try:
        with memoryview(buffers[0]) as data:
            value = serialization.loads(data, buffers[1:], allowlist)
        if kind == "error":
            arrived.error = error_from_wire(value, key.src, key.producer_call)
        elif landing is not None:
            try:
                del value  # the marker is rebuilt from the object store
                arrived.value = landing.marker(allowlist)
            except Exception as exc:  # noqa: BLE001  (e.g. the object store is full: keep it here)
                log.warning("keeping a %d byte value in the receiver (the object "
                            "store refused it: %s)", sum(landing.sizes), exc)
                arrived.value = serialization.loads(bytes(buffers[0]), buffers[1:], allowlist)
        else:
            arrived.value, arrived.encoded = value, buffers
    except FedSerializationError as exc:
        arrived.error = exc
    return arrived


def loads(buffers: list, allowlist: Any) -> Any:
    """Decode a held value's buffers again (they passed the allowlist on arrival)."""
    with memoryview(buffers[0]) as data:
        return serialization.loads(data, buffers[1:], allowlist)


def _raisable(error: BaseException, key: MessageKey) -> Exception:
    """An error that came from the wire, safe to raise in the actor's event loop: a
    BaseException that is not an Exception (SystemExit, KeyboardInterrupt...) would
    stop the loop, so it is wrapped."""
    if isinstance(error, Exception):
        return error
    return FedError(f"{key.src!r} sent {type(error).__name__} as the error of "
                    f"{key.producer()}; refused to raise it here")
