"""Receive large values straight into this party's Ray object store.

Without this, a pushed value is read into the receiver's own memory, unpickled, and
returned from the barrier (`ReceiverProxy.get`), whereupon Ray copies it into the object
store: the receiving party holds the payload twice at its peak, and pays one extra
memcpy and one extra round of page faults per byte.

Here the receiver first creates an object in the object store with room for the
value's out-of-band buffers (a ``ray.put`` of zero-filled arrays: the zero source
pages are never materialised), and reads the DATA frames directly into that object's
memory. The barrier then returns a small :class:`InObjectStore` marker instead of the
value. Unpickling the marker (which Ray does wherever the barrier's value is used: a
task's argument, ``fed.get``, a nested ref resolved in a task) rebuilds the value on
the object-store buffers, without a copy, through the same restricted unpickler and
allowlist the receiver already checked it with.

The object-store object is owned by the receiver actor and nested in the barrier's
return value, so Ray keeps it alive exactly as long as the barrier's result is used.
Object-store memory is read-only for every reader (as any Ray argument is); only the
receiver writes it, before anyone can see it.
"""
from __future__ import annotations

import ctypes
import logging
import mmap
import threading
from typing import Any, Optional

#: Values with fewer out-of-band bytes than this take the ordinary path.
MIN_TOTAL_BYTES = 1024 * 1024
#: Out-of-band buffers smaller than this travel inside the marker instead.
MIN_BUFFER_BYTES = 64 * 1024


_zeros_lock = threading.Lock()
_zeros_region: Optional[tuple] = None


def _zeros(n: int) -> Any:
    """`n` zero bytes to copy from, as a read-only numpy array.

    A fresh ``np.zeros`` is untouched memory, and Ray's parallel copy out of it stalls
    on page faults (measured: ray.put of 128 MiB takes ~46 ms from np.zeros and ~12 ms
    from touched memory). So the zeros come from one read-only anonymous mapping whose
    pages were read once: every page maps the kernel's shared zero page, which costs
    page tables (2 MiB per GiB) but no RSS, and copying from it never faults again.
    """
    global _zeros_region
    import numpy as np

    with _zeros_lock:
        if _zeros_region is None or _zeros_region[1].nbytes < n:
            size = max(n, 64 * 1024 * 1024)
            region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
            array = np.frombuffer(region, dtype=np.uint8)
            int(array[::mmap.PAGESIZE].sum())  # fault every page in once, as the zero page
            _zeros_region = (region, array)
        return _zeros_region[1][:n]


def _writable(array: Any) -> memoryview:
    """A writable byte view on a (read-only) object-store numpy array's memory."""
    address = array.__array_interface__["data"][0]
    return memoryview((ctypes.c_char * array.nbytes).from_address(address)).cast("B")


class Landing:
    """Buffers for one incoming value, the large ones in the object store."""

    def __init__(self, sizes: list[int]) -> None:
        import ray

        self.sizes = sizes
        self.big = [i for i, s in enumerate(sizes) if i > 0 and s >= MIN_BUFFER_BYTES]
        self.ref = ray.put([_zeros(sizes[i]) for i in self.big])
        self._arrays = ray.get(self.ref)  # keeps the mapping alive while we write
        if any(a.flags.writeable or a.nbytes != sizes[i]
               for a, i in zip(self._arrays, self.big)):
            raise RuntimeError("the object store returned copies, not its own memory")
        views = dict(zip(self.big, (_writable(a) for a in self._arrays)))
        self.buffers = [views.get(i) if i in views else bytearray(s)
                        for i, s in enumerate(sizes)]

    @classmethod
    def maybe(cls, sizes: list[int], kind: str) -> Optional["Landing"]:
        """A landing for a large value, else None (small values, errors, no Ray)."""
        if kind != "value" or sum(s for s in sizes[1:] if s >= MIN_BUFFER_BYTES) < MIN_TOTAL_BYTES:
            return None
        try:
            return cls(sizes)
        except Exception as exc:  # e.g. the object store is full: the ordinary path works
            logging.getLogger(__name__).warning(
                "receiving %d bytes through the receiver's own memory (twice the payload at "
                "its peak) instead of straight into the object store: %s", sum(sizes), exc)
            return None

    def marker(self, allowlist: Any) -> "InObjectStore":
        small = {i: bytes(b) for i, b in enumerate(self.buffers) if i > 0 and i not in self.big}
        marker = InObjectStore(bytes(self.buffers[0]), self.ref, self.big, small, allowlist)
        self._arrays = self.buffers = None  # the marker's ref keeps the object alive
        return marker


def _rebuild(pickled: bytes, ref: Any, big: list[int], small: dict[int, bytes],
             allowlist: Any) -> Any:
    import ray

    from fed import serialization

    arrays = ray.get(ref)
    buffers = dict(small)
    buffers.update(zip(big, arrays))
    return serialization.loads(pickled, [buffers[i] for i in range(1, len(buffers) + 1)],
                               allowlist)


class InObjectStore:
    """What a barrier returns for a large value; unpickles as the value itself."""

    __slots__ = ("pickled", "ref", "big", "small", "allowlist")

    def __init__(self, pickled: bytes, ref: Any, big: list[int], small: dict[int, bytes],
                 allowlist: Any) -> None:
        self.pickled, self.ref, self.big, self.small = pickled, ref, big, small
        self.allowlist = allowlist

    def __reduce__(self):
        return (_rebuild, (self.pickled, self.ref, self.big, self.small, self.allowlist))
