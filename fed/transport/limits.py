"""What a peer may make this party's receiver hold, and how the receiver says no.

Every refusal is a REFUSE frame with a reason the sender turns into a typed error
(fed.errors.refused_error); the receiver logs each kind once per peer and counts
all of them, and the connection is closed, never the receiver.
"""
from __future__ import annotations

import ctypes
import logging
import mmap
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from fed.errors import FedLimitError

#: Buffers at least this large are anonymous memory maps: pages are committed only as
#: bytes arrive (and the budget is charged per DATA frame before it is read), so a
#: declared size costs address space, not memory, until its bytes arrive. Smaller
#: ones are allocated when their first byte arrives (fed.transport.session).
_LAZY_BUFFER_BYTES = 1024 * 1024
#: Where buffers sliced from one mapping start (reserve_region).
_REGION_ALIGN = 64
_MAX_LOGGED_KINDS = 1000
#: mallopt's parameter number for glibc's mmap threshold, and the value it is set to.
_M_MMAP_THRESHOLD = -3
_MMAP_FROM_BYTES = 128 * 1024

#: What each buffer a MSG header declares costs before its bytes arrive (its size, its
#: slot, the buffer object), charged to the peer's budget when the header is accepted.
BUFFER_BOOKKEEPING_BYTES = 128
#: Control frames up to this size (and every HELLO) are part of a connection's fixed
#: overhead; a larger one (a MSG header of a value with many buffers, a heartbeat
#: listing many barriers) first takes its peer's one large-frame slot
#: (fed.transport.budget.FrameSlots).
SMALL_FRAME_BYTES = 4096
#: The most memory a control frame can take while it is decoded, per byte of it: msgpack
#: turns a one-byte empty map into a 64-byte dict plus an 8-byte slot (72), with the
#: frame itself and allocator slack on top.
FRAME_DECODE_FACTOR = 81
#: What one connection may hold beyond its peer's budget: its thread's stack, TLS state,
#: a small control frame and what it decodes to (SMALL_FRAME_BYTES x FRAME_DECODE_FACTOR),
#: and the scratch buffer a duplicate's or refused stream's bytes are dropped into
#: (64 KiB each); glibc keeps no large freed block (return_freed_memory). Measured under an
#: authenticated hostile peer by benchmarks/hostile_peer.py (docs/benchmarks.md). Plus
#: HUGE_PAGE_BYTES: the value a connection reads lands in huge pages (reserve_region), and
#: the one it is filling is committed whole however few of its bytes have arrived.
HUGE_PAGE_BYTES = 2 * 1024 * 1024
CONNECTION_OVERHEAD_BYTES = 512 * 1024 + HUGE_PAGE_BYTES


@dataclass(frozen=True)
class ReceiverLimits:
    """The bounds of docs/security.md, as the receiver enforces them."""

    max_value_bytes: int | None = None
    max_buffered_bytes_per_peer: int | None = 2 * 1024**3
    max_header_bytes: int = 1024 * 1024
    max_frames_per_value: int = 1_000_000
    #: How long a connection waits for buffer room before answering `busy` (the sender
    #: retries within its timeout_in_ms).
    busy_after_s: float = 5.0
    #: From accept to WELCOME sent, TLS handshake included, however the bytes trickle.
    handshake_timeout_s: float = 20.0
    #: Each frame once its head arrived, and the gap between the frames of one value.
    frame_timeout_s: float = 120.0
    #: A connection with no frame for this long after WELCOME is closed (senders open
    #: a new one; heartbeats every second keep the heartbeat connection busy).
    idle_timeout_s: float = 300.0
    #: Connections at once, and those not past the handshake per source address (at
    #: most half of max_connections in total), and those per authenticated party.
    max_connections: int = 256
    max_handshakes_per_ip: int = 16
    max_connections_per_peer: int = 32

    @classmethod
    def from_comm(cls, comm: Mapping[str, Any]) -> ReceiverLimits:
        """From the receiver's settings: the ``cross_silo_comm`` keys of docs/security.md
        (``messages_max_size_in_bytes`` is ``max_value_bytes`` here) and this class's
        field names; missing keys keep their defaults, unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        values = {("max_value_bytes" if k == "messages_max_size_in_bytes" else k): v
                  for k, v in comm.items()}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown receiver limits {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)

    def advertise(self) -> dict[str, Any]:
        """Sent in WELCOME so a well-behaved sender checks before streaming."""
        return {k: getattr(self, k) for k in (
            "max_value_bytes", "max_buffered_bytes_per_peer", "max_header_bytes",
            "max_frames_per_value")}


class ReceiverBusy(ConnectionError):
    """The receiver had no buffer room for a while (REFUSE `busy`): retry with backoff."""


def check_advertised(limits: Mapping[str, Any], peer: str, header_len: int,
                     sizes: list[int], chunk: int) -> None:
    """Sender side: refuse locally what `peer`'s receiver advertised it would refuse."""
    total = sum(sizes)
    frames = max(len(sizes), sum(-(-n // chunk) for n in sizes))
    checks = (
        ("max_value_bytes", total, "too_large", "messages_max_size_in_bytes", "value of {} bytes"),
        ("max_header_bytes", header_len, "header_too_large", "max_header_bytes", "header of {} bytes"),
        ("max_frames_per_value", frames, "too_many_frames", "max_frames_per_value", "{} frames"),
    )
    for name, value, reason, key, what in checks:
        limit = limits.get(name)
        if isinstance(limit, int) and value > limit:
            raise FedLimitError(reason, f"{what.format(value)} exceeds party {peer!r}'s "
                                        f"{key}={limit} (config['cross_silo_comm'] there)")


class Refusal(Exception):
    """Raised while serving a connection: answer REFUSE {reason, detail}, then close."""

    def __init__(self, reason: str, detail: str, party: str | None = None,
                 job: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.party = party
        self.job = job


class RefusalLog:
    """Counts refusals; logs the first of each kind per peer (a flood stays one line)."""

    def __init__(self, log: logging.LoggerAdapter) -> None:
        self._log = log
        self._seen: set[tuple[str, str | None, str]] = set()
        self._by_reason: dict[str, int] = {}
        self._lock = threading.Lock()  # connection threads record concurrently

    def by_reason_snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._by_reason)

    def record(self, host: str, refusal: Refusal) -> None:
        kind = (host, refusal.party, refusal.reason)
        with self._lock:
            self._by_reason[refusal.reason] = self._by_reason.get(refusal.reason, 0) + 1
            first = kind not in self._seen and len(self._seen) < _MAX_LOGGED_KINDS
            if first:
                self._seen.add(kind)
        if first:
            self._log.warning(
                "refused %s from %s (claims party %r, job %r): %s [logged once per peer "
                "and reason; fed.stats() counts them all]",
                refusal.reason, host, refusal.party, refusal.job, refusal.detail,
            )


def allocate(size: int) -> bytearray | mmap.mmap:
    """A zeroed, writable buffer of `size` bytes: a memory map, committed as it is written,
    from 1 MiB up; below, a bytearray (callers allocate it when its first byte arrives)."""
    if size < _LAZY_BUFFER_BYTES:
        return bytearray(size)
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)


def return_freed_memory() -> bool:
    """Make this process's glibc malloc return every freed block of 128 KiB or more to
    the system at once (a fixed mmap threshold); True if it did.

    By default glibc raises that threshold (up to 32 MiB) after such a block is freed,
    and from then on keeps freed blocks below it in the freeing thread's arena. The
    receiver decodes frames on a thread per connection, so a peer sending large frames
    on many connections would leave that much resident memory behind per arena, beyond
    anything the budget counts. Other C libraries are left as they are.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_FROM_BYTES))


def reserve(size: int) -> mmap.mmap | None:
    """A large receive buffer up front: a memory map, so only address space until bytes
    arrive, and a size the machine cannot map fails before any byte is read. None for
    a small one: `allocate` it when its first byte arrives."""
    return allocate(size) if size >= _LAZY_BUFFER_BYTES else None


def reserve_region(sizes: Sequence[int]) -> tuple[mmap.mmap | None, list[memoryview]]:
    """Several large receive buffers as slices of one memory map (64-byte aligned).

    Pages are committed as bytes arrive, as with `reserve`. One mapping per value, not
    one per buffer, and the kernel is asked for transparent huge pages: on a virtual
    machine a fresh 4 KiB page costs a fault each, which made receiving a 25 MB model
    of 50 arrays take several times as long as copying it (docs/benchmarks.md). The
    region is filled in order, so at most one huge page is partly written: the value a
    connection reads commits at most HUGE_PAGE_BYTES beyond the bytes charged for it
    (counted in CONNECTION_OVERHEAD_BYTES).
    """
    offsets, total = [], 0
    for size in sizes:
        offsets.append(total)
        total += -(-size // _REGION_ALIGN) * _REGION_ALIGN
    if total == 0:
        return None, [memoryview(b"")[:0] for _ in sizes]
    region = mmap.mmap(-1, total, flags=mmap.MAP_PRIVATE)
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        try:
            region.madvise(advice)
        except OSError:  # no transparent huge pages here: 4 KiB pages, same bytes
            pass
    view = memoryview(region)
    slices = [view[start:start + size] for start, size in zip(offsets, sizes)]
    view.release()
    return region, slices


def peer_memory_bound(limits: ReceiverLimits, connections: int) -> int:
    """The most one peer holding `connections` connections can make this party's
    receiver hold (docs/security.md): its budget, one large control frame being
    decoded, and each connection's fixed overhead. Not included: values our barriers
    wait for, and one value larger than the budget (it may cross alone)."""
    budget = limits.max_buffered_bytes_per_peer
    if budget is None:
        raise ValueError("no bound without max_buffered_bytes_per_peer")
    return (budget + limits.max_header_bytes * FRAME_DECODE_FACTOR
            + connections * CONNECTION_OVERHEAD_BYTES)
