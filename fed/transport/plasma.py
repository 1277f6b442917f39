"""Hand large received values to the object store in one copy, out of the receiver.

Without this, a pushed value's buffers would be returned from the barrier
(`ReceiverProxy.get`) inside a small-value marker, whereupon Ray pickles them again
into the object store: the receiving party holds the payload twice for as long as
the barrier's result lives in the receiver, and pays an extra serialization.

Here the DATA frames are read straight (``recv_into``) into receiver-owned buffers:
large ones anonymous memory maps whose pages are committed only as bytes arrive,
small ones allocated when their first byte arrives (fed.transport.limits), so a
header that declares a huge value costs address space, not memory, and a stalled or
refused stream returns what it used at once (`close`). Once the value is complete,
its large out-of-band buffers are put into the object store with one ``ray.put`` (one
copy) and the receiver's buffers are released. The barrier then returns a small
:class:`InObjectStore` marker; unpickling it (which
Ray does wherever the barrier's value is used: a task's argument, ``fed.get``, a
nested ref resolved in a task) builds the value on the object-store buffers, without
a copy, with the codec (and, for an opt-in pickle value, the allowlist) the receiver
already checked it with (fed/transport/payload.py). Sealed objects are never written
to, so arrays built there are read-only.
"""
from __future__ import annotations

import mmap
from collections.abc import Sequence
from typing import Any

#: Values with fewer out-of-band bytes than this take the ordinary path.
MIN_TOTAL_BYTES = 1024 * 1024
#: Out-of-band buffers smaller than this travel inside the marker instead.
MIN_BUFFER_BYTES = 64 * 1024


def close_buffers(buffers: list) -> None:
    """Return the memory of receive buffers now (a memory map is unmapped at once)."""
    for buf in buffers:
        try:
            if isinstance(buf, memoryview):  # a slice of a Landing's region
                buf.release()
            elif isinstance(buf, mmap.mmap) and not buf.closed:
                buf.close()
        except BufferError:  # still exported (a view alive): freed when it dies
            pass


class Landing:
    """Receive buffers for one large value, destined for the object store."""

    def __init__(self, sizes: Sequence[int]) -> None:
        from fed.transport.limits import reserve, reserve_region

        self.sizes = sizes
        self.big = [i for i, s in enumerate(sizes) if i > 0 and s >= MIN_BUFFER_BYTES]
        # The large buffers share one mapping; small ones (None) are allocated as their
        # first byte arrives (session.py).
        self._region, views = reserve_region([sizes[i] for i in self.big])
        big = set(self.big)
        buffers: list = [None if i in big else reserve(s) for i, s in enumerate(sizes)]
        for i, view in zip(self.big, views):
            buffers[i] = view
        self.buffers: list | None = buffers

    @classmethod
    def maybe(cls, sizes: Sequence[int], kind: str) -> Landing | None:
        """A landing for a large value, else None (small values, errors)."""
        if kind != "value" or sum(s for s in sizes[1:] if s >= MIN_BUFFER_BYTES) < MIN_TOTAL_BYTES:
            return None
        return cls(sizes)

    def marker(self, fmt: str, policy: Any) -> InObjectStore:
        """Put the complete value's large buffers into the object store; free ours."""
        import numpy as np
        import ray

        buffers = self.buffers
        big = set(self.big)
        small = {i: bytes(b) for i, b in enumerate(buffers) if i > 0 and i not in big}
        arrays = [np.frombuffer(buffers[i], dtype=np.uint8) for i in self.big]
        ref = ray.put(arrays)
        del arrays
        marker = InObjectStore(fmt, bytes(buffers[0]), ref, self.big, small, policy)
        self.close()
        return marker

    def detach(self) -> list:
        """Hand the receive buffers over (the caller keeps the value in them)."""
        buffers, self.buffers = self.buffers, None
        return buffers

    def close(self) -> None:
        """Release the receive buffers (after the put, or when the stream fails)."""
        if self.buffers is not None:
            close_buffers(self.buffers)
            self.buffers = None
        if self._region is not None:  # detached slices keep it mapped until they die
            close_buffers([self._region])
            self._region = None


def _rebuild(fmt: str, header: bytes, ref: Any, big: list[int], small: dict[int, bytes],
             policy: Any) -> Any:
    import ray

    from fed.transport import payload

    arrays = ray.get(ref)
    buffers = dict(small)
    buffers.update(zip(big, arrays))
    parts = [header] + [buffers[i] for i in range(1, len(buffers) + 1)]
    return payload.build(fmt, parts, policy)


class InObjectStore:
    """What a barrier returns for a large value; unpickles as the value itself."""

    __slots__ = ("fmt", "header", "ref", "big", "small", "policy")

    def __init__(self, fmt: str, header: bytes, ref: Any, big: list[int],
                 small: dict[int, bytes], policy: Any) -> None:
        self.fmt, self.header, self.ref, self.big, self.small = fmt, header, ref, big, small
        self.policy = policy

    def claimed(self, policy: Any) -> InObjectStore:
        """This value under the policy its barrier runs with (codecs registered since)."""
        return InObjectStore(self.fmt, self.header, self.ref, self.big, self.small, policy)

    def __reduce__(self):
        return (_rebuild, (self.fmt, self.header, self.ref, self.big, self.small, self.policy))
