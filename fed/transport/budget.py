"""Backpressure for the receiver: how many bytes each peer may make this party hold.

The budget charges bytes that *arrived*, never bytes a header merely declares: every
DATA frame is charged before it is read (plus bookkeeping per declared buffer, which
must fit the limit), and a value's charge stays until a barrier claims it or the
value is dropped (stalled stream, refusal, closed connection), when it is returned at
once. `FrameSlots` bounds the other thing a peer can make us hold: large control
frames being decoded, one per peer at a time.

A frame fits when the peer's charged bytes stay within the limit, or when its value
is the oldest one in flight from that peer and the peer holds no finished value (so
one value larger than the limit still crosses, and two concurrent values cannot
wait on each other forever), or when its barrier is already waiting (it is claimed
the moment it is complete; refusing it could deadlock the job). A connection whose
frame does not fit stops reading (TCP pushes back on the sender) until it fits.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Slot = tuple[str, int]  # (source party, ordinal)


class Inflight:
    """One value being received: its slot and the bytes charged for it so far."""

    __slots__ = ("slot", "seq", "charged", "settled")

    def __init__(self, slot: Slot, seq: int) -> None:
        self.slot, self.seq, self.charged, self.settled = slot, seq, 0, False


class PeerBudget:
    """Thread-safe accounting shared by connection threads and the actor's event loop."""

    def __init__(self, limit: int | None,
                 on_held: Callable[[str, int], None] | None = None) -> None:
        self._limit = limit
        #: Told a peer's held bytes when a value settles or is released (not per frame).
        self._on_held = on_held
        self._held: dict[str, int] = {}  # per peer: bytes of finished values + in flight
        self._stored: dict[str, int] = {}  # per peer: bytes of finished, unclaimed values
        self._inflight: dict[str, dict[int, Inflight]] = {}
        self._awaited: set[Slot] = set()
        self._seq = itertools.count()
        self._closed = False
        self._cond = threading.Condition()

    def admit(self, slot: Slot, declared: int, timeout_s: float) -> Inflight | None:
        """Start a value: wait up to `timeout_s` until its *declared* size would fit.

        Reserves nothing (the declaration is only a hint for backpressure); returns
        the value's handle, or None when it still does not fit (the caller answers
        `busy` and the sender retries later).
        """
        peer = slot[0]
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not (self._held.get(peer, 0) == 0 or self._fits(slot, declared, None)):
                if not self._wait(deadline):
                    return None
            value = Inflight(slot, next(self._seq))
            self._inflight.setdefault(peer, {})[value.seq] = value
            return value

    def charge(self, value: Inflight, nbytes: int, timeout_s: float,
               oldest_may_exceed: bool = True) -> bool:
        """Charge `nbytes` about to be read for `value`; wait up to `timeout_s` for room.
        Without `oldest_may_exceed` (bookkeeping declared in a header, not bytes that
        arrived) the charge must fit the limit unless a barrier waits for the value;
        one larger than the limit is refused at once."""
        peer = value.slot[0]
        deadline = time.monotonic() + timeout_s
        with self._cond:
            if (not oldest_may_exceed and self._limit is not None and nbytes > self._limit
                    and value.slot not in self._awaited):
                return False  # more than the whole limit: waiting cannot help
            while not self._fits(value.slot, nbytes, value if oldest_may_exceed else None):
                if value.settled or not self._wait(deadline):
                    return False
            if value.settled:
                return False
            value.charged += nbytes
            self._held[peer] = self._held.get(peer, 0) + nbytes
            return True

    def _wait(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if self._closed or remaining <= 0:
            return False
        self._cond.wait(remaining)
        return True

    def _fits(self, slot: Slot, nbytes: int, value: Inflight | None) -> bool:
        peer = slot[0]
        held = self._held.get(peer, 0)
        if self._limit is None or held + nbytes <= self._limit or slot in self._awaited:
            return True
        if value is None or self._stored.get(peer, 0):
            return False
        return value.seq == min(self._inflight.get(peer, {}), default=value.seq)

    def settle(self, value: Inflight, keep: bool) -> bool:
        """End `value`: keep its charge (held for a barrier) or return it. Only the first
        call counts (a connection thread and the event loop may race); True if it did."""
        peer = value.slot[0]
        with self._cond:
            if value.settled:
                return False
            value.settled = True
            self._inflight.get(peer, {}).pop(value.seq, None)
            if keep:
                self._stored[peer] = self._stored.get(peer, 0) + value.charged
            else:
                self._held[peer] = max(0, self._held.get(peer, 0) - value.charged)
            self._cond.notify_all()
            held = self._held.get(peer, 0)
        self._report(peer, held)
        return True

    def _report(self, peer: str, held: int) -> None:
        if self._on_held is not None:
            self._on_held(peer, held)

    def release(self, src: str, nbytes: int) -> None:
        """A held value was claimed by a barrier or dropped."""
        with self._cond:
            self._held[src] = max(0, self._held.get(src, 0) - nbytes)
            self._stored[src] = max(0, self._stored.get(src, 0) - nbytes)
            self._cond.notify_all()
            held = self._held[src]
        self._report(src, held)

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


class FrameSlots:
    """At most one large control frame per peer is read and decoded at a time.

    Decoding a control frame (msgpack) can cost up to 80 times its size in Python
    objects, so frames above `small` bytes take their peer's one slot first: what a
    peer's large frames cost is then one frame, however many connections it holds.
    """

    def __init__(self, small: int) -> None:
        self._small = small
        self._busy: set[str] = set()
        self._closed = False
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, peer: str, length: int, deadline: float) -> Iterator[Callable[[], None]]:
        """Hold `peer`'s slot for a frame of `length` bytes (none needed for a small one)
        until the block ends or the `release` it yields is called; TimeoutError if the
        slot is not free by `deadline`."""
        if length <= self._small:
            yield _nothing
            return
        with self._cond:
            while peer in self._busy or self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    raise TimeoutError(f"a large frame from {peer!r} waited for its slot")
                self._cond.wait(remaining)
            self._busy.add(peer)
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                with self._cond:
                    self._busy.discard(peer)
                    self._cond.notify_all()

        try:
            yield release
        finally:
            release()

    def close(self) -> None:
        """Wake every waiting connection: the receiver stops."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _nothing() -> None:
    pass
