"""The receiving end of the channel: a Ray actor hosting this party's TCP/TLS server.

Connection threads read frames straight into preallocated buffers (blocking sockets
release the GIL, so reading runs beside the actor's event loop); whole values are
handed to the event loop, where receive barriers (`get`) wait for them.
"""
from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any, Optional

from fed import serialization
from fed._log import configure_unconfigured, party_logger
from fed.errors import (
    FedDivergenceError,
    FedError,
    FedIdentityError,
    FedPeerUnavailableError,
    FedSerializationError,
    FedTransportError,
)
from fed.transport import wire
from fed.transport.base import MessageKey
from fed.transport.budget import PeerBudget
from fed.transport.limits import ReceiverLimits, Refusal, RefusalLog, allocate, read_control_bounded
from fed.transport.plasma import Landing

MAX_CONNECTIONS = 256


@dataclass
class _Arrived:
    key: MessageKey
    value: Any = None
    error: Optional[BaseException] = None
    nbytes: int = 0  # held against the sender's buffer budget until claimed


@dataclass
class _Counters:
    values: dict = field(default_factory=dict)
    bytes: dict = field(default_factory=dict)
    duplicates: int = 0
    refusals: int = 0

    def add(self, src: str, nbytes: int) -> None:
        self.values[src] = self.values.get(src, 0) + 1
        self.bytes[src] = self.bytes.get(src, 0) + nbytes


class ReceiverProxy:
    """One per party and job. Listens on the party's address; serves receive barriers."""

    def __init__(
        self,
        party: str,
        job: str,
        parties: list[str],
        listen_host: str,
        listen_port: int,
        tls: Optional[Any],
        allowlist: Any,
        max_message_bytes: Optional[int],
        max_chunk_bytes: int,
        limits: Optional[dict] = None,
    ) -> None:
        from fed.transport.identity import IdentityVerifier
        from fed.transport.tls import server_context

        self._party = party
        self._job = job
        self._parties = set(parties)
        self._listen = (listen_host, listen_port)
        self._ssl: Optional[ssl.SSLContext] = server_context(tls)
        self._allowlist = serialization.Allowlist.from_config(allowlist)
        self._max_message = max_message_bytes
        self._max_chunk = max(max_chunk_bytes, 64 * 1024 * 1024)
        self._log = party_logger(party, job)
        configure_unconfigured()  # in a worker process refusals must still be seen
        self._limits = ReceiverLimits.from_comm(
            {**(limits or {}), "messages_max_size_in_bytes": max_message_bytes}
        )
        self._identity = IdentityVerifier(tls, parties, self._log) if tls is not None else None
        self._budget = PeerBudget(self._limits.max_buffered_bytes_per_peer)
        self._refusals = RefusalLog(self._log)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._server: Optional[socket.socket] = None
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        # Event-loop state (touched only on the actor's loop).
        self._arrived: dict[tuple[str, int], _Arrived] = {}
        self._consumed: set[tuple[str, int]] = set()
        self._waiters: dict[tuple[str, int], tuple[MessageKey, asyncio.Future]] = {}
        self._finished: dict[str, int] = {}
        self._lost: dict[str, FedPeerUnavailableError] = {}
        self._failure: Optional[FedError] = None
        self._issued: dict[str, int] = {}  # values this party issued per peer (from our sender)
        self._stuck: dict[str, int] = {}  # consecutive heartbeats showing a wait cycle per peer
        self._outbox: list[tuple[str, dict[str, Any]]] = []  # notices for peers (next_notices)
        self._outbox_ready: Optional[asyncio.Future] = None
        self._counters = _Counters()

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> int:
        """Bind and listen; return the port (useful when configured as 0)."""
        self._loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self._listen[0] else socket.AF_INET
        server = socket.socket(family, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind(self._listen)
        except OSError as exc:
            server.close()
            raise FedError(
                f"party {self._party!r} cannot listen on {self._listen[0]}:{self._listen[1]}: "
                f"{exc.strerror or exc}. Is another job or program using that port? Pick a free "
                "port in the addresses given to fed.init."
            ) from None
        server.listen(128)
        self._server = server
        threading.Thread(target=self._accept_loop, name="fed-accept", daemon=True).start()
        return server.getsockname()[1]

    async def stop(self) -> None:
        """Close the listening socket and every connection; the port is free on return."""
        self._stopping.set()
        self._budget.close()
        if self._server is not None:
            try:
                self._server.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._server.close()
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        for _key, fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(FedError("rayfed shut down while this value was awaited"))
        if self._outbox_ready is not None and not self._outbox_ready.done():
            self._outbox_ready.set_result(None)  # ends next_notices

    async def stats(self) -> dict[str, Any]:
        c = self._counters
        return {
            "received_values": dict(c.values),
            "received_bytes": dict(c.bytes),
            "duplicates_dropped": c.duplicates,
            "refusals": c.refusals,
            "waiting": len(self._waiters),
            "buffered": len(self._arrived),
            "held_bytes": self._budget.held(),
            "refusals_by_reason": dict(self._refusals.by_reason),
        }

    # ---- barriers --------------------------------------------------------------------

    async def get(self, key_dict: dict[str, Any]) -> Any:
        """The receive barrier: wait for the value `key` names, check it joins the same calls."""
        key = MessageKey.from_dict(key_dict)
        slot = (key.src, key.ordinal)
        arrived = self._arrived.pop(slot, None)
        if arrived is None:
            self._raise_if_hopeless(key)
            if self._loop is None:  # a barrier may be served before start() ran
                self._loop = asyncio.get_running_loop()
            fut = self._loop.create_future()
            self._waiters[slot] = (key, fut)
            self._budget.awaiting(slot, True)
            try:
                arrived = await fut
            finally:
                self._waiters.pop(slot, None)
                self._budget.awaiting(slot, False)
        else:
            self._budget.release(key.src, arrived.nbytes)
        self._consumed.add(slot)
        if not arrived.key.same_calls(key):
            raise self._diverged(expected=key, got=arrived.key)
        if arrived.error is not None:
            raise arrived.error
        return arrived.value

    def _raise_if_hopeless(self, key: MessageKey) -> None:
        if self._failure is not None:
            raise self._failure
        if key.src in self._lost:
            raise self._lost[key.src]
        sent = self._finished.get(key.src)
        if sent is not None and key.ordinal >= sent:
            raise self._finished_error(key, sent)

    def _finished_error(self, key: MessageKey, sent: int) -> FedDivergenceError:
        return FedDivergenceError(
            f"the parties' code diverged: party {self._party!r} waits for value "
            f"#{key.ordinal} from {key.src!r}, produced by {key.producer()} for "
            f"{key.consumer()}, but {key.src!r} finished the job after sending {sent} "
            "value(s) here (a call or fed.get that only some parties execute?)"
        )

    def _diverged(self, expected: MessageKey, got: MessageKey) -> FedDivergenceError:
        text = (
            f"the parties' code diverged: party {self._party!r} expected message "
            f"#{expected.ordinal} from {expected.src!r} to be {expected.producer()} consumed "
            f"by {expected.consumer()}, but {got.src!r} sent {got.producer()} for "
            f"{got.consumer()}. Every party must run the same sequence of .remote() and "
            "fed.get calls (look for code that depends on the party name)."
        )
        error = FedDivergenceError(text)
        self._fail_all(error)
        self._notify_peer(expected.src, {"kind": "divergence", "text": text})
        return error

    def _fail_all(self, error: FedError) -> None:
        if self._failure is None:
            self._failure = error
        for _key, fut in list(self._waiters.values()):
            if not fut.done():
                fut.set_exception(error)

    def _notify_peer(self, peer: Optional[str], notice: dict[str, Any]) -> None:
        """Queue a notice for `peer`; the party's sender (in the driver, see tcp.py) takes
        it with `next_notices` and delivers it, best effort: our own party has the error.
        A notice for peer None is for our own sender (e.g. a peer said BYE)."""
        self._outbox.append((peer, notice))
        if self._outbox_ready is not None and not self._outbox_ready.done():
            self._outbox_ready.set_result(None)

    async def next_notices(self) -> Optional[list]:
        """Wait for notices to deliver to peers; None once the receiver stops."""
        while not self._outbox and not self._stopping.is_set():
            self._outbox_ready = asyncio.get_running_loop().create_future()  # before start()
            await self._outbox_ready
        notices, self._outbox = self._outbox, []
        return notices or None

    # ---- events from the sender proxy / connections ------------------------------------

    async def peer_lost(self, peer: str, detail: str) -> None:
        """The sender's heartbeats lost `peer`: fail every barrier waiting on it."""
        error = FedPeerUnavailableError(peer, detail)
        self._lost[peer] = error
        for (src, _ordinal), (_key, fut) in list(self._waiters.items()):
            if src == peer and not fut.done():
                fut.set_exception(error)

    async def heartbeat_status(self, issued: dict[str, int]) -> dict[str, list]:
        """Called by our sender each heartbeat: learn how many values this party issued
        to each peer; return, per peer, the messages our barriers still wait for."""
        self._issued = dict(issued)
        waiting: dict[str, list] = {}
        for (src, ordinal), (key, _fut) in self._waiters.items():
            waiting.setdefault(src, []).append([ordinal, key.consumer()])
        return waiting

    def _on_peer_status(self, peer: str, status: dict[str, Any]) -> None:
        """Detect a wait cycle that identical code can never produce.

        If we wait for value #j from `peer` that it has not issued yet, while `peer`
        waits for value #k from us that we have not issued, the two drivers are at
        positions the same script cannot reach at once: the code diverged, and both
        would wait forever. Held for several heartbeats to ride out reporting lag.
        """
        try:
            peer_issued = int(status.get("issued", 0))
            peer_waits = [(int(o), str(d)) for o, d in status.get("waiting", [])]
            peer_pending = [MessageKey.from_dict(k) for k in status.get("pending", [])]
        except (TypeError, ValueError, AttributeError):
            return
        # A value the peer will send us, announced before it exists: if it is not the
        # one our barrier expects at that position, the code diverged; say so now.
        for announced in peer_pending:
            waiter = self._waiters.get((peer, announced.ordinal))
            if waiter is not None and not waiter[0].same_calls(announced):
                self._diverged(expected=waiter[0], got=announced)
                return
        ours = [(o, k) for (src, o), (k, _f) in self._waiters.items()
                if src == peer and o >= peer_issued]
        theirs = [(o, d) for o, d in peer_waits if o >= self._issued.get(peer, 0)]
        if not (ours and theirs):
            self._stuck.pop(peer, None)
            return
        self._stuck[peer] = self._stuck.get(peer, 0) + 1
        if self._stuck[peer] < 3:
            return
        (j, our_key), (k, their_desc) = min(ours, key=lambda x: x[0]), min(theirs)
        text = (
            f"the parties' code diverged: party {self._party!r} waits for value #{j} from "
            f"{peer!r} ({our_key.producer()} for {our_key.consumer()}), which {peer!r} never "
            f"sent, while {peer!r} waits for value #{k} from {self._party!r} (for "
            f"{their_desc}), which {self._party!r} never sent. Every party must run the same "
            "sequence of .remote() and fed.get calls (look for code that depends on the "
            "party name, e.g. an extra fed.get in one party)."
        )
        self._fail_all(FedDivergenceError(text))
        self._notify_peer(peer, {"kind": "divergence", "text": text})

    async def peer_back(self, peer: str) -> None:
        self._lost.pop(peer, None)

    async def fail(self, error: FedError) -> None:
        """A local failure the whole job must see (a send that could not be delivered)."""
        self._fail_all(error)

    def _on_arrival(self, arrived: _Arrived, nbytes: int) -> bool:
        """Runs on the loop. Returns False for a duplicate (already held or consumed)."""
        key = arrived.key
        slot = (key.src, key.ordinal)
        waiter = self._waiters.get(slot)
        # A done waiter: its barrier took a value and has not marked the slot consumed yet.
        if slot in self._arrived or slot in self._consumed or (waiter and waiter[1].done()):
            self._counters.duplicates += 1
            self._budget.release(key.src, nbytes)
            return False
        self._counters.add(key.src, nbytes)
        if waiter is not None:
            waiter[1].set_result(arrived)
            self._budget.release(key.src, nbytes)
        else:
            arrived.nbytes = nbytes
            self._arrived[slot] = arrived
        return True

    def _on_bye(self, peer: str, sent: int) -> None:
        self._finished[peer] = sent
        self._notify_peer(None, {"kind": "peer_finished", "peer": peer})  # for our sender
        for (src, ordinal), (key, fut) in list(self._waiters.items()):
            if src == peer and ordinal >= sent and not fut.done():
                fut.set_exception(self._finished_error(key, sent))

    def _on_notice(self, peer: str, notice: dict[str, Any]) -> None:
        if notice.get("kind") == "divergence":
            self._fail_all(FedDivergenceError(f"party {peer!r} reports: {notice.get('text')}"))
        elif notice.get("kind") == "send_failed":
            self._on_send_failed(peer, notice)

    def _on_send_failed(self, peer: str, notice: dict[str, Any]) -> None:
        """`peer` could not deliver one value: fail the barrier on it (now or when it comes)."""
        try:
            key = MessageKey.from_dict(notice["key"])
        except (KeyError, TypeError):
            return
        if _well_typed(key) and key.src == peer and key.job == self._job:
            error = FedTransportError(f"party {peer!r} reports: {notice.get('text')}")
            self._on_arrival(_Arrived(key, error=error), 0)

    def _call_on_loop(self, fn, *args):
        """Run `fn` on the actor's loop from a connection thread and return its result."""
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            try:
                box.append(fn(*args))
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait()
        return box[0] if box else None

    # ---- connections (threads) ---------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _addr = self._server.accept()
            except OSError:
                return
            with self._conns_lock:
                if len(self._conns) >= MAX_CONNECTIONS:
                    conn.close()
                    continue
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name="fed-conn", daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        conn: socket.socket = raw
        peer: Optional[str] = None
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.settimeout(30.0)  # the handshake must finish promptly
            if self._ssl is not None:
                conn = self._ssl.wrap_socket(raw, server_side=True)
            peer = self._handshake(conn)
            if peer is None:
                return
            conn.settimeout(None)
            while not self._stopping.is_set():
                ftype, body = read_control_bounded(conn, self._limits.max_header_bytes)
                if ftype == wire.MSG:
                    self._receive_value(conn, peer, body)
                elif ftype == wire.PING:
                    if body:
                        self._call_on_loop(self._on_peer_status, peer, body)
                    wire.send_control(conn, wire.PONG, {})
                elif ftype == wire.BYE:
                    self._call_on_loop(self._on_bye, peer, int(body.get("sent", 0)))
                    wire.send_control(conn, wire.ACK, {})
                elif ftype == wire.NOTICE:
                    self._call_on_loop(self._on_notice, peer, body)
                    wire.send_control(conn, wire.ACK, {})
                else:
                    raise wire.ProtocolError(f"unexpected {wire.NAMES[ftype]} frame")
        except (wire.PeerClosed, ConnectionError, ssl.SSLError, socket.timeout, OSError):
            pass
        except Refusal as refusal:
            refusal.party = refusal.party or peer
            self._refused(conn, raw, refusal)
        except wire.ProtocolError as exc:
            self._refused(conn, raw, Refusal("protocol", str(exc), party=peer))
        except Exception as exc:  # hostile input must never take the receiver down
            detail = f"{type(exc).__name__}: {exc}"[:500]
            self._refused(conn, raw, Refusal("protocol", detail, party=peer))
        finally:
            with self._conns_lock:
                self._conns.discard(raw)
            try:
                conn.close()
            except OSError:
                pass

    def _refuse(self, conn: socket.socket, reason: str, detail: str) -> None:
        self._counters.refusals += 1
        try:
            wire.send_control(conn, wire.REFUSE, {"reason": reason, "detail": detail})
        except OSError:
            pass

    def _refused(self, conn: socket.socket, raw: socket.socket, refusal: Refusal) -> None:
        """Log (once per peer and reason), count, and tell the sender why; the caller closes."""
        host = "?"
        for sock in (conn, raw):  # a TLS wrap detaches `raw`
            try:
                host = str(sock.getpeername()[0])
                break
            except (OSError, IndexError):
                continue
        if refusal.party is not None and refusal.job is None:
            refusal.job = self._job  # past the handshake: the connection's job
        self._refusals.record(host, refusal)
        self._refuse(conn, refusal.reason, refusal.detail)

    def _handshake(self, conn: socket.socket) -> Optional[str]:
        """HELLO -> WELCOME once the claimed source may speak here; else a Refusal.

        With TLS the peer certificate must belong to the claimed source party
        (fed.transport.identity). The WELCOME advertises this receiver's limits, so a
        well-behaved sender refuses an oversized value locally instead of streaming it.
        """
        ftype, hello = read_control_bounded(conn, 64 * 1024)
        if ftype != wire.HELLO or hello.get("proto") != wire.PROTOCOL:
            raise wire.ProtocolError("the connection did not start with a rayfed HELLO")
        src, job, dst = hello.get("src"), hello.get("job"), hello.get("dst")
        if not all(isinstance(v, str) for v in (src, job, dst)):
            raise Refusal("protocol", "HELLO needs string src, job and dst")
        if src not in self._parties or src == self._party:
            raise Refusal("unknown_party", f"{src!r} is not a peer of {self._party!r}", src, job)
        if self._identity is not None:
            try:
                self._identity.check(conn.getpeercert(binary_form=True), src, as_server=False)
            except FedIdentityError as exc:
                raise Refusal("identity", exc.detail, src, job) from None
        if job != self._job:
            raise Refusal("job_not_running", f"job {job!r} is not running in party "
                          f"{self._party!r} (running: {self._job!r})", src, job)
        if dst != self._party:
            raise Refusal("wrong_destination", f"this is party {self._party!r}, not {dst!r}", src, job)
        wire.send_control(conn, wire.WELCOME, {
            "party": self._party, "job": self._job, "limits": self._limits.advertise(),
        })
        return src

    def _receive_value(self, conn: socket.socket, peer: str, header: dict[str, Any]) -> None:
        """One value: check its header against the connection and the limits, reserve
        buffer room (waiting while the peer's budget is full), read, unpickle, deliver."""
        try:
            key = MessageKey.from_dict(header["key"])
            kind = header["kind"]
            sizes = [int(s) for s in header["sizes"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise wire.ProtocolError(f"malformed MSG header: {exc}") from None
        if not _well_typed(key):
            raise wire.ProtocolError("malformed MSG header: ill-typed key fields")
        if key.src != peer:
            raise Refusal("spoofed_source", f"a value claiming source {key.src!r} on a "
                          f"connection authenticated as {peer!r}", peer, key.job)
        if key.job != self._job:
            raise Refusal("job_not_running", f"job {key.job!r} is not running on this "
                          f"connection (job {self._job!r})", peer, key.job)
        if key.dst != self._party:
            raise Refusal("wrong_destination", f"this is party {self._party!r}, not {key.dst!r}",
                          peer, key.job)
        if not sizes or any(s < 0 for s in sizes):
            raise wire.ProtocolError("MSG header declares no or negative sizes")
        limits = self._limits
        if len(sizes) > limits.max_frames_per_value:
            raise Refusal("too_many_frames", f"{len(sizes)} buffers exceed max_frames_per_value="
                          f"{limits.max_frames_per_value} in party {self._party!r}", peer, key.job)
        total = sum(sizes)
        if limits.max_value_bytes is not None and total > limits.max_value_bytes:
            raise Refusal("too_large", f"value of {total} bytes exceeds messages_max_size_in_bytes="
                          f"{limits.max_value_bytes} in party {self._party!r}", peer, key.job)
        slot = (key.src, key.ordinal)
        if slot in self._consumed or slot in self._arrived:
            # A replay (or a retry of a value we hold): drop it unread and unpickled.
            self._read_body(conn, [None] * len(sizes), sizes)
            self._call_on_loop(self._on_arrival, _Arrived(key), 0)
            wire.send_control(conn, wire.ACK, {"ordinal": key.ordinal, "duplicate": True})
            return
        if not self._budget.admit(slot, total, limits.busy_after_s):
            raise Refusal("busy", f"{peer!r} already has max_buffered_bytes_per_peer="
                          f"{limits.max_buffered_bytes_per_peer} bytes waiting in party "
                          f"{self._party!r} for their barriers; retry later", peer, key.job)
        handed_over = False
        try:
            try:
                # Large values land in the object store directly (fed/transport/plasma.py).
                landing = Landing.maybe(sizes, kind)
                buffers = landing.buffers if landing else [allocate(s) for s in sizes]
            except (MemoryError, OSError) as exc:
                raise Refusal("too_large", f"party {self._party!r} cannot allocate {total} "
                              f"bytes: {exc}", peer, key.job) from None
            self._read_body(conn, buffers, sizes)
            arrived = _Arrived(key)
            data = buffers[0] if isinstance(buffers[0], bytearray) else memoryview(buffers[0])
            try:
                value = serialization.loads(data, buffers[1:], self._allowlist)
                if kind == "error":
                    arrived.error = value if isinstance(value, BaseException) else FedError(repr(value))
                else:
                    arrived.value = landing.marker(self._allowlist) if landing else value
            except FedSerializationError as exc:
                arrived.error = exc
            handed_over = True
            fresh = self._call_on_loop(self._on_arrival, arrived, total)
        finally:
            if not handed_over:
                self._budget.release(peer, total)
        if isinstance(arrived.error, FedSerializationError):
            raise Refusal("deserialization", str(arrived.error), peer, key.job)
        wire.send_control(conn, wire.ACK, {"ordinal": key.ordinal, "duplicate": not fresh})

    def _read_body(self, conn: socket.socket, buffers: list, sizes: list[int]) -> None:
        """Read DATA frames into `buffers` in order (None: discard those bytes)."""
        index, offset = 0, 0
        remaining = sum(sizes)
        scratch: Optional[memoryview] = None
        frames = 0
        while remaining > 0:
            ftype, length = wire.read_head(conn)
            if ftype != wire.DATA or length == 0 or length > self._max_chunk or length > remaining:
                raise wire.ProtocolError(f"bad DATA frame (type {ftype}, {length} bytes)")
            frames += 1
            if frames > self._limits.max_frames_per_value:
                raise Refusal("too_many_frames", f"a value sent in more than max_frames_per_value="
                              f"{self._limits.max_frames_per_value} DATA frames")
            remaining -= length
            while length > 0:
                while sizes[index] - offset == 0:
                    index, offset = index + 1, 0
                take = min(length, sizes[index] - offset)
                target = buffers[index]
                if target is None:
                    if scratch is None or len(scratch) < take:
                        scratch = memoryview(bytearray(min(max(take, 1 << 16), 1 << 24)))
                    step = min(take, len(scratch))
                    wire.recv_into_exact(conn, scratch[:step])
                    take = step
                else:
                    with memoryview(target) as view:
                        wire.recv_into_exact(conn, view[offset:offset + take])
                offset += take
                length -= take


def _well_typed(key: MessageKey) -> bool:
    """Key fields come from the wire: hashable, of the types the barriers compare."""
    counts = (key.ordinal, key.producer_seq, key.producer_index, key.consumer_seq)
    names = (key.job, key.src, key.dst, key.producer_call, key.consumer_call)
    return all(type(n) is int and n >= 0 for n in counts) and all(isinstance(t, str) for t in names)
