"""Backpressure for the receiver: how many bytes each peer may have waiting here.

A value that arrives before its receive barrier asks for it is held in memory. The
bytes held per peer are bounded: a connection whose next value does not fit waits
(stops reading, so TCP pushes back on the sender) until barriers claim earlier
values. A value always fits when nothing else from that peer is held (so one value
larger than the limit still crosses) or when its barrier is already waiting (it is
claimed the moment it is complete, and refusing it could deadlock the job).
"""
from __future__ import annotations

import threading
import time
from typing import Optional

Slot = tuple[str, int]  # (source party, ordinal)


class PeerBudget:
    """Thread-safe accounting shared by connection threads and the actor's event loop."""

    def __init__(self, limit: Optional[int]) -> None:
        self._limit = limit
        self._held: dict[str, int] = {}
        self._awaited: set[Slot] = set()
        self._closed = False
        self._cond = threading.Condition()

    def admit(self, slot: Slot, nbytes: int, timeout_s: float) -> bool:
        """Reserve `nbytes` for the value in `slot`; wait up to `timeout_s` for room.

        False when it still does not fit (or the receiver stops): the caller refuses
        the value as busy and the sender retries later.
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._fits(slot, nbytes):
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    return False
                self._cond.wait(remaining)
            self._held[slot[0]] = self._held.get(slot[0], 0) + nbytes
            return True

    def _fits(self, slot: Slot, nbytes: int) -> bool:
        held = self._held.get(slot[0], 0)
        return (
            self._limit is None or held == 0 or held + nbytes <= self._limit
            or slot in self._awaited
        )

    def release(self, src: str, nbytes: int) -> None:
        """The bytes of a value were claimed by a barrier, dropped, or never completed."""
        with self._cond:
            self._held[src] = max(0, self._held.get(src, 0) - nbytes)
            self._cond.notify_all()

    def awaiting(self, slot: Slot, waiting: bool) -> None:
        """A barrier starts (True) or stops (False) waiting for `slot`."""
        with self._cond:
            if waiting:
                self._awaited.add(slot)
                self._cond.notify_all()
            else:
                self._awaited.discard(slot)

    def held(self) -> dict[str, int]:
        with self._cond:
            return {p: n for p, n in self._held.items() if n}

    def close(self) -> None:
        """Wake every waiting connection; nothing is admitted any more."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
