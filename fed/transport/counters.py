"""The receiver's figures for fed.stats(), safe from any thread.

Connection threads and the receiver actor's event loop count concurrently, so every
change and the snapshot take the one lock all the figures share.
"""
from __future__ import annotations

import threading
from typing import Any

from fed.transport.metrics import ChannelMetrics


class Count:
    """One figure; `bump` it from any thread."""

    __slots__ = ("_lock", "_value")

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._value = 0

    def bump(self) -> int:
        """Add one; return the new value."""
        with self._lock:
            self._value += 1
            return self._value

    def unlocked(self) -> int:
        """The value, for a reader that holds the lock already."""
        return self._value


class ReceiverCounters:
    """Values and bytes received per source party, and counts of what was turned away."""

    def __init__(self, metrics: ChannelMetrics | None = None) -> None:
        self._metrics = metrics or ChannelMetrics.off()
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}
        self._bytes: dict[str, int] = {}
        #: A value already held or consumed arrived again and was dropped.
        self.duplicates = Count(self._lock)
        #: A connection was answered with REFUSE.
        self.refusals = Count(self._lock)
        #: A connection was closed at accept: a connection cap was reached.
        self.dropped_connections = Count(self._lock)
        #: A BYE, NOTICE or wait report from a peer nothing authenticated was ignored.
        self.ignored_controls = Count(self._lock)

    def received(self, src: str, nbytes: int) -> None:
        """A value of `nbytes` wire bytes from `src` was stored or handed to its barrier."""
        with self._lock:
            self._values[src] = self._values.get(src, 0) + 1
            self._bytes[src] = self._bytes.get(src, 0) + nbytes
        self._metrics.received(src, nbytes)

    def refused(self, reason: str) -> None:
        """A connection was answered with REFUSE for `reason`."""
        self.refusals.bump()
        self._metrics.refused(reason)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"received_values": dict(self._values), "received_bytes": dict(self._bytes),
                    "duplicates_dropped": self.duplicates.unlocked(),
                    "refusals": self.refusals.unlocked(),
                    "dropped_connections": self.dropped_connections.unlocked(),
                    "ignored_controls": self.ignored_controls.unlocked()}
