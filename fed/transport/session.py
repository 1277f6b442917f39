"""The protocol one connection speaks to the receiver, run on the connection's thread.

HELLO -> WELCOME once the claimed source may speak here (a peer of this party, its
certificate with TLS, the job secret's proof without), then frames until the
connection ends: MSG (a value: header checked, its buffers' bookkeeping charged to the
peer's budget, body read into buffers allocated as their bytes arrive and charged
frame by frame, then decoded or checked, handed over), PING (answered with PONG; may
carry a heartbeat status), BYE and NOTICE (answered with ACK). Every read has a
deadline, and a control frame over 4 KiB waits for its peer's one large-frame slot. What a value or a control frame means is decided on the receiver actor's
event loop, reached through `SessionHooks`. A bad frame raises `Refusal` or
`wire.ProtocolError`; the listener answers it and closes the connection.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fed.errors import FedIdentityError, FedSerializationError
from fed.names import JOB_SECRET_ENV
from fed.transport import payload, wire
from fed.transport.barriers import Arrived, decode
from fed.transport.base import MessageKey
from fed.transport.budget import FrameSlots, Inflight, PeerBudget, Slot
from fed.transport.counters import ReceiverCounters
from fed.transport.limits import (
    BUFFER_BOOKKEEPING_BYTES,
    SMALL_FRAME_BYTES,
    ReceiverLimits,
    Refusal,
    RefusalLog,
    allocate,
    reserve,
)
from fed.transport.listener import Conn
from fed.transport.plasma import Landing, close_buffers
from fed.transport.proof import proof_ok

if TYPE_CHECKING:  # imported by the actor only with TLS (it loads cryptography)
    from fed.transport.identity import IdentityVerifier

#: A duplicate's bytes are read into (and dropped from) a scratch buffer this large.
_DISCARD_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Terms:
    """Who may speak to this receiver, and what they may send it."""

    party: str
    job: str
    peers: frozenset[str]
    limits: ReceiverLimits
    max_chunk: int  # the largest DATA frame taken (advertised in WELCOME)
    identity: IdentityVerifier | None  # with TLS: whose certificate is whose
    job_secret: bytes | None

    @property
    def controls_trusted(self) -> bool:
        """Control frames that could end the job count only from a proven peer (with
        TLS, which is exactly when there is an identity check, or the job secret)."""
        return self.identity is not None or self.job_secret is not None


@dataclass(frozen=True)
class SessionHooks:
    """The receiver as a connection sees it. All but `seen` run on the actor's event
    loop and return their result (or raise) on the connection's thread."""

    arrival: Callable[[Arrived, Inflight], bool]  # a value; False: a duplicate after all
    duplicate: Callable[[], None]  # a value for a slot already seen, dropped unread
    peer_status: Callable[[str, dict], None]  # PING: what the peer waits for
    bye: Callable[[str, Any], None]  # BYE: the peer finished after `sent` values
    notice: Callable[[str, dict], None]  # NOTICE: a failure the peer reports
    seen: Callable[[Slot], bool]  # a value for the slot is held or was consumed
    policy: Callable[[], payload.WirePolicy]  # how values are checked (any thread may ask)


class SessionServer:
    """Serves the protocol on any number of connections, each on its own thread."""

    def __init__(self, terms: Terms, hooks: SessionHooks, budget: PeerBudget,
                 frames: FrameSlots, bind_peer: Callable[[Conn, str], bool],
                 refusals: RefusalLog, counters: ReceiverCounters, stopping: threading.Event,
                 log: logging.LoggerAdapter) -> None:
        self._terms = terms
        self._limits = terms.limits
        self._hooks = hooks
        self._budget = budget
        self._frames = frames  # one large control frame per peer decoded at a time
        self._bind_peer = bind_peer  # counts the connection against the peer's cap
        self._refusals = refusals
        self._counters = counters
        self._stopping = stopping
        self._log = log

    def serve(self, conn: Conn, deadline: float) -> None:
        """The handshake (by `deadline`), then frames until the connection ends."""
        peer = self._handshake(conn, deadline)
        if peer is not None:
            self._serve_frames(conn.sock, peer)

    # ---- handshake ---------------------------------------------------------------------

    def _handshake(self, conn: Conn, deadline: float) -> str | None:
        """HELLO -> WELCOME once the claimed source may speak here; else a Refusal.

        The whole exchange (TLS included) must finish by `deadline`. The WELCOME
        advertises this receiver's limits, so a well-behaved sender refuses an
        oversized value locally instead of streaming it. None: the peer's connection
        cap is reached, and the connection is closed without a word (the sender
        retries with backoff).
        """
        sock = conn.sock
        ftype, hello = self._read_control(sock, SMALL_FRAME_BYTES, deadline)
        if ftype != wire.HELLO or hello.get("proto") != wire.PROTOCOL:
            raise wire.ProtocolError("the connection did not start with a rayfed HELLO")
        src, job = self._check_hello(sock, hello)
        if not self._bind_peer(conn, src):
            self._refusals.record(conn.ip, Refusal(
                "too_many_connections", f"{src!r} already has max_connections_per_peer="
                f"{self._limits.max_connections_per_peer} connections here", src, job))
            return None
        terms = self._terms
        self._send(sock, wire.WELCOME, {
            "party": terms.party, "job": terms.job,
            "limits": {**self._limits.advertise(), "max_data_frame_bytes": terms.max_chunk},
        })
        return src

    def _check_hello(self, sock: socket.socket, hello: dict[str, Any]) -> tuple[str, str]:
        """The HELLO's (src, job) if that source may speak here, else a Refusal. With TLS
        the peer certificate must belong to the claimed source (fed.transport.identity).
        A refusal names neither this party's job nor its peers to a client that has not
        proven who it is."""
        terms = self._terms
        src, job, dst = hello.get("src"), hello.get("job"), hello.get("dst")
        if not all(isinstance(v, str) for v in (src, job, dst)):
            raise Refusal("protocol", "HELLO needs string src, job and dst")
        if src not in terms.peers or src == terms.party:
            raise Refusal("unknown_party", f"{src!r} is not a peer of this party", src, job)
        if terms.identity is not None:
            try:
                terms.identity.check(sock.getpeercert(binary_form=True), src, as_server=False)
            except FedIdentityError as exc:
                raise Refusal("identity", exc.detail, src, job) from None
        if job != terms.job:
            raise Refusal("job_not_running", f"job {job!r} is not running in party {dst!r}",
                          src, job)
        if terms.job_secret is not None and not proof_ok(terms.job_secret, hello):
            raise Refusal("identity", f"a peer claiming to be {src!r} did not prove the job "
                          f"secret: start every party with the same {JOB_SECRET_ENV}", src, job)
        if dst != terms.party:
            raise Refusal("wrong_destination", f"this is party {terms.party!r}, not {dst!r}",
                          src, job)
        return src, job

    # ---- frames ------------------------------------------------------------------------

    def _serve_frames(self, sock: socket.socket, peer: str) -> None:
        """Frames after WELCOME: each must start within idle_timeout_s and, once its
        head is in, complete within frame_timeout_s. A large one first takes its peer's
        one large-frame slot (FrameSlots): however many connections a peer holds, this
        party decodes at most one of its large frames at a time."""
        limits = self._limits
        while not self._stopping.is_set():
            head = wire.read_head(sock, time.monotonic() + limits.idle_timeout_s)
            deadline = time.monotonic() + limits.frame_timeout_s
            with self._frames.hold(peer, head[1], deadline) as release:
                if head[0] == wire.MSG:
                    self._receive_value(sock, peer, head, release)
                else:  # the decoded frame is dropped with the call, inside the slot
                    self._on_control(sock, peer, *self._read_control(
                        sock, limits.max_header_bytes, deadline, head))

    def _on_control(self, sock: socket.socket, peer: str, ftype: int, body: dict) -> None:
        """PING, BYE or NOTICE: answered; what it reports counts only from a proven peer."""
        hooks = self._hooks
        if ftype == wire.PING:
            if body and self._trusts_controls(peer, "wait reports"):
                hooks.peer_status(peer, body)
            self._send(sock, wire.PONG, {})
        elif ftype == wire.BYE:
            if self._trusts_controls(peer, "BYE"):
                hooks.bye(peer, body.get("sent"))
            self._send(sock, wire.ACK, {})
        elif ftype == wire.NOTICE:
            if self._trusts_controls(peer, "NOTICE"):
                hooks.notice(peer, body)
            self._send(sock, wire.ACK, {})
        else:
            raise wire.ProtocolError(f"unexpected {wire.NAMES[ftype]} frame")

    def _trusts_controls(self, peer: str, what: str) -> bool:
        """Without TLS or a job secret, anyone could send a frame claiming `peer`: such
        frames may deliver values but not end or fail the job (docs/security.md)."""
        if self._terms.controls_trusted:
            return True
        if self._counters.ignored_controls.bump() == 1:
            self._log.warning(
                "ignoring %s from %r: without TLS or %s nothing proves who sent it, so "
                "control frames cannot end this job (peers are then judged by heartbeats). "
                "Use TLS, or start every party with the same %s (fed run does). (Warned once.)",
                what, peer, JOB_SECRET_ENV, JOB_SECRET_ENV)
        return False

    def _read_control(self, sock: socket.socket, max_len: int, deadline: float | None = None,
                      head: tuple[int, int] | None = None) -> tuple[int, dict[str, Any]]:
        """One control frame within frame_timeout_s (or `deadline`); an oversized one is
        refused as `header_too_large` before its payload is read."""
        if deadline is None:
            deadline = time.monotonic() + self._limits.frame_timeout_s
        try:
            return wire.read_control(sock, max_len, deadline, head)
        except wire.FrameTooLarge as exc:
            raise Refusal("header_too_large", f"{wire.NAMES[exc.ftype]} frame of {exc.length} "
                          f"bytes exceeds max_header_bytes={exc.max_len}") from None

    def _send(self, sock: socket.socket, ftype: int, body: dict[str, Any]) -> None:
        # Reads leave their own deadline set as the socket's timeout.
        wire.send_control(sock, ftype, body, timeout=self._limits.frame_timeout_s)

    # ---- values ------------------------------------------------------------------------

    def _receive_value(self, sock: socket.socket, peer: str, head: tuple[int, int],
                       release: Callable[[], None]) -> None:
        """One value: its header (the large-frame slot, if it took one, is released once
        the buffers' bookkeeping is charged), then its body, charged frame by frame,
        checked or unpickled, and delivered."""
        key, kind, fmt, sizes = self._read_header(sock, peer, head)
        if self._hooks.seen((key.src, key.ordinal)):
            # A replay (or a retry of a value we hold): drop it unread and unpickled.
            self._read_body(sock, None, sizes, None)
            self._hooks.duplicate()
            self._send(sock, wire.ACK, {"ordinal": key.ordinal, "duplicate": True})
            return
        value = self._admit(peer, key, sizes)
        release()
        arrived, fresh = self._take_value(sock, peer, key, (kind, fmt), sizes, value)
        if isinstance(arrived.error, FedSerializationError):
            raise Refusal("deserialization", str(arrived.error), peer, key.job)
        self._send(sock, wire.ACK, {"ordinal": key.ordinal, "duplicate": not fresh})

    def _read_header(self, sock: socket.socket, peer: str,
                     head: tuple[int, int]) -> tuple[MessageKey, str, str, array]:
        """The MSG header whose frame head is `head`, kept as key, kind, format and sizes: what
        msgpack decoded (up to 81 bytes per byte of the frame) is dropped on return."""
        _ftype, header = self._read_control(sock, self._limits.max_header_bytes, head=head)
        return self._check_header(peer, header)

    def _admit(self, peer: str, key: MessageKey, sizes: array) -> Inflight:
        """Start the value in the peer's budget: wait (bounded) until its declared size
        would fit, then charge its buffers' bookkeeping, which must fit the limit (a
        declaration is not data a job needs through). Refusal `busy` otherwise."""
        busy_after_s = self._limits.busy_after_s
        value = self._budget.admit((key.src, key.ordinal), sum(sizes), busy_after_s)
        if value is None:
            raise self._busy(peer, key)
        bookkeeping = len(sizes) * BUFFER_BOOKKEEPING_BYTES
        if not self._budget.charge(value, bookkeeping, busy_after_s, oldest_may_exceed=False):
            self._budget.settle(value, keep=False)
            raise self._busy(peer, key, f" (its {len(sizes)} declared buffers need "
                                        f"{bookkeeping} bytes of bookkeeping)")
        return value

    def _take_value(self, sock: socket.socket, peer: str, key: MessageKey,
                    kind_fmt: tuple[str, str], sizes: array,
                    value: Inflight) -> tuple[Arrived, bool]:
        """Read, check or decode, and hand over an admitted value: (what arrived, whether
        it was fresh). Whatever happens, its memory and budget charge are not left behind."""
        buffers: list = []
        landing: Landing | None = None
        kind, fmt = kind_fmt
        try:
            landing, buffers = self._allocate(peer, key, kind, sizes)
            self._read_body(sock, buffers, sizes, value)
            arrived = decode(key, kind, fmt, buffers, landing, self._hooks.policy(), self._log)
            arrived.wire_bytes = sum(sizes)
            fresh = self._hooks.arrival(arrived, value)
            buffers = []  # delivered or dropped: freed with their last reference
        finally:
            self._budget.settle(value, keep=False)  # no-op once the loop kept it
            if landing is not None:
                landing.close()
            close_buffers(buffers)  # a failed value's memory is returned now
        return arrived, fresh

    def _allocate(self, peer: str, key: MessageKey, kind: str,
                  sizes: array) -> tuple[Landing | None, list]:
        """Receive buffers for a value: large ones mapped now (address space only), small
        ones (None) allocated as their first byte arrives; large values go to the object
        store once complete (fed/transport/plasma.py)."""
        try:
            landing = Landing.maybe(sizes, kind)
            return landing, landing.buffers if landing else [reserve(s) for s in sizes]
        except (MemoryError, OSError, OverflowError, ValueError) as exc:
            raise Refusal("too_large", f"this party cannot allocate {sum(sizes)} bytes: "
                          f"{exc}", peer, key.job) from None

    def _busy(self, peer: str, key: MessageKey, why: str = "") -> Refusal:
        return Refusal("busy", f"a value from {peer!r} does not fit max_buffered_bytes_per_peer="
                       f"{self._limits.max_buffered_bytes_per_peer} in party "
                       f"{self._terms.party!r} beside what {peer!r} has waiting for barriers "
                       f"there{why}; retry later", peer, key.job)

    def _check_header(self, peer: str,
                      header: dict[str, Any]) -> tuple[MessageKey, str, str, array]:
        """A MSG header's key, kind, format and sizes (8 bytes each), or a ProtocolError /
        Refusal saying why not."""
        try:
            key = MessageKey.from_dict(header["key"])
            kind = header["kind"]
            fmt = header.get("format", payload.CODEC)
            sizes = array("Q", header["sizes"])  # unsigned: a negative size fails here
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise wire.ProtocolError(f"malformed MSG header: {exc}") from None
        if not key.well_typed() or kind not in ("value", "error") or fmt not in payload.FORMATS:
            raise wire.ProtocolError("malformed MSG header: ill-typed key fields, kind or format")
        party, job = self._terms.party, self._terms.job
        if key.src != peer:
            raise Refusal("spoofed_source", f"a value claiming source {key.src!r} on a "
                          f"connection authenticated as {peer!r}", peer, key.job)
        if key.job != job:
            raise Refusal("job_not_running", f"job {key.job!r} is not running on this "
                          f"connection (job {job!r})", peer, key.job)
        if key.dst != party:
            raise Refusal("wrong_destination", f"this is party {party!r}, not {key.dst!r}",
                          peer, key.job)
        if not sizes:
            raise wire.ProtocolError("MSG header declares no sizes")
        if fmt == payload.PICKLE and (kind == "error" or self._hooks.policy().allowlist is None):
            # Refused unread: this party accepts no pickle (nor any error as a pickle).
            raise Refusal("deserialization", payload.pickle_refused_text(), peer, key.job)
        limits = self._limits
        if len(sizes) > limits.max_frames_per_value:
            raise Refusal("too_many_frames", f"{len(sizes)} buffers exceed max_frames_per_value="
                          f"{limits.max_frames_per_value} in party {party!r}", peer, key.job)
        total = sum(sizes)
        if limits.max_value_bytes is not None and total > limits.max_value_bytes:
            raise Refusal("too_large", f"value of {total} bytes exceeds messages_max_size_in_bytes="
                          f"{limits.max_value_bytes} in party {party!r}", peer, key.job)
        return key, kind, fmt, sizes

    def _read_body(self, sock: socket.socket, buffers: list | None, sizes: array,
                   value: Inflight | None) -> None:
        """Read DATA frames into `buffers` in order, each frame charged to the peer's
        budget (`value`) before it is read; `buffers` None: read and drop the bytes."""
        cursor = _BodyCursor(sock, buffers, sizes)
        remaining = sum(sizes)
        frames = 0
        while remaining > 0:
            frames += 1
            length = self._next_data_frame(sock, remaining, frames, value)
            remaining -= length
            cursor.fill(length, time.monotonic() + self._limits.frame_timeout_s)
        cursor.finish()

    def _next_data_frame(self, sock: socket.socket, remaining: int, frames: int,
                         value: Inflight | None) -> int:
        """Read the head of the value's next DATA frame (its `frames`th) and charge its
        length to the peer's budget (`value`) before its bytes are read."""
        limits = self._limits
        ftype, length = wire.read_head(sock, time.monotonic() + limits.frame_timeout_s)
        max_chunk = self._terms.max_chunk
        if ftype != wire.DATA or length == 0 or length > max_chunk or length > remaining:
            raise wire.ProtocolError(f"bad DATA frame (type {ftype}, {length} bytes; at most "
                                     f"{min(max_chunk, remaining)} expected)")
        if frames > limits.max_frames_per_value:
            raise Refusal("too_many_frames", f"a value sent in more than max_frames_per_value="
                          f"{limits.max_frames_per_value} DATA frames")
        if value is not None and not self._budget.charge(value, length, limits.busy_after_s):
            raise Refusal("busy", f"no room in max_buffered_bytes_per_peer="
                          f"{limits.max_buffered_bytes_per_peer} for the rest of the value")
        return length


class _BodyCursor:
    """Where a value's next bytes go: buffer by buffer, in order. A buffer still None
    is allocated when its first byte arrives (so a declared size costs nothing before);
    with no buffers at all, the bytes are read into scratch memory and dropped."""

    def __init__(self, sock: socket.socket, buffers: list | None, sizes: array) -> None:
        self._sock, self._buffers, self._sizes = sock, buffers, sizes
        self._index, self._offset = 0, 0
        self._scratch = memoryview(bytearray(_DISCARD_CHUNK)) if buffers is None else None

    def fill(self, length: int, deadline: float) -> None:
        """Read one frame's `length` bytes into the buffers from the current position."""
        sizes = self._sizes
        while length > 0:
            while sizes[self._index] - self._offset == 0:
                self._index, self._offset = self._index + 1, 0
            take = min(length, sizes[self._index] - self._offset)
            if self._scratch is not None:
                take = min(take, len(self._scratch))
                wire.recv_into_exact(self._sock, self._scratch[:take], deadline)
            else:
                with memoryview(self._buffer(self._index)) as view:
                    wire.recv_into_exact(self._sock, view[self._offset:self._offset + take],
                                         deadline)
            self._offset += take
            length -= take

    def finish(self) -> None:
        """Allocate the buffers no byte arrived for (empty ones)."""
        for index in range(len(self._buffers) if self._buffers is not None else 0):
            self._buffer(index)

    def _buffer(self, index: int) -> Any:
        buffer = self._buffers[index]
        if buffer is None:
            try:
                buffer = self._buffers[index] = allocate(self._sizes[index])
            except (MemoryError, OSError, OverflowError, ValueError) as exc:
                raise Refusal("too_large", f"this party cannot allocate a "
                              f"{self._sizes[index]} byte buffer: {exc}") from None
        return buffer
