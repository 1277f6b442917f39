"""What a peer may make this party's receiver hold, and how the receiver says no.

Every refusal is a REFUSE frame with a reason the sender turns into a typed error
(fed.errors.refused_error); the receiver logs each kind once per peer and counts
all of them, and the connection is closed, never the receiver.
"""
from __future__ import annotations

import logging
import mmap
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional, Union

from fed.errors import FedLimitError
from fed.transport import wire

#: Buffers at least this large are anonymous memory maps: pages are committed only as
#: bytes arrive, so a header that merely *declares* a huge value costs nothing.
_LAZY_BUFFER_BYTES = 1024 * 1024
_MAX_LOGGED_KINDS = 1000


@dataclass(frozen=True)
class ReceiverLimits:
    """The bounds of docs/security.md, as the receiver enforces them."""

    max_value_bytes: Optional[int] = None
    max_buffered_bytes_per_peer: Optional[int] = 2 * 1024**3
    max_header_bytes: int = 1024 * 1024
    max_frames_per_value: int = 1_000_000
    #: How long a connection waits for buffer room before answering `busy` (the sender
    #: retries within its timeout_in_ms).
    busy_after_s: float = 5.0

    @classmethod
    def from_comm(cls, comm: Mapping[str, Any]) -> "ReceiverLimits":
        """From the ``cross_silo_comm`` keys (missing keys keep their defaults)."""
        names = {
            "messages_max_size_in_bytes": "max_value_bytes",
            "max_buffered_bytes_per_peer": "max_buffered_bytes_per_peer",
            "max_header_bytes": "max_header_bytes",
            "max_frames_per_value": "max_frames_per_value",
            "busy_after_s": "busy_after_s",  # not a user key: tests shorten the wait
        }
        return cls(**{ours: comm[theirs] for theirs, ours in names.items() if theirs in comm})

    def advertise(self) -> dict[str, Any]:
        """Sent in WELCOME so a well-behaved sender checks before streaming."""
        data = asdict(self)
        data.pop("busy_after_s")
        return data


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

    def __init__(self, reason: str, detail: str, party: Optional[str] = None,
                 job: Optional[str] = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.party = party
        self.job = job


class RefusalLog:
    """Counts refusals; logs the first of each kind per peer (a flood stays one line)."""

    def __init__(self, log: logging.LoggerAdapter) -> None:
        self._log = log
        self._seen: set[tuple[str, Optional[str], str]] = set()
        self.by_reason: dict[str, int] = {}

    def record(self, host: str, refusal: Refusal) -> None:
        self.by_reason[refusal.reason] = self.by_reason.get(refusal.reason, 0) + 1
        kind = (host, refusal.party, refusal.reason)
        if kind in self._seen or len(self._seen) >= _MAX_LOGGED_KINDS:
            return
        self._seen.add(kind)
        self._log.warning(
            "refused %s from %s (claims party %r, job %r): %s [logged once per peer and "
            "reason; fed.stats() counts them all]",
            refusal.reason, host, refusal.party, refusal.job, refusal.detail,
        )


def allocate(size: int) -> Union[bytearray, mmap.mmap]:
    """A zeroed, writable buffer of `size` bytes whose memory is committed as it is written."""
    if size < _LAZY_BUFFER_BYTES:
        return bytearray(size)
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)


def read_control_bounded(sock: Any, max_len: int) -> tuple[int, dict[str, Any]]:
    """wire.read_control, but an oversized header is a `header_too_large` refusal."""
    ftype, length = wire.read_head(sock)
    if ftype not in wire.NAMES or ftype == wire.DATA:
        raise wire.ProtocolError(f"expected a control frame, got frame type {ftype}")
    if length > max_len:
        raise Refusal("header_too_large", f"{wire.NAMES[ftype]} frame of {length} bytes exceeds "
                      f"max_header_bytes={max_len}")
    payload = bytearray(length)
    wire.recv_into_exact(sock, memoryview(payload))
    return ftype, wire.decode(payload)
