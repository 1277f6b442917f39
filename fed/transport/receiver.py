"""The receiving end of the channel: a Ray actor hosting this party's TCP/TLS server.

Connection threads read frames straight into receive buffers whose memory is committed
as bytes arrive (blocking sockets release the GIL, so reading runs beside the actor's
event loop); whole values are handed to the event loop, where receive barriers (`get`)
wait for them. Every read has a deadline (handshake, frame, idle; docs/security.md)
and connections are capped per source address and per party.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from fed._log import configure_unconfigured, party_logger
from fed.names import JOB_SECRET_ENV
from fed.errors import (
    FedDivergenceError,
    FedError,
    FedIdentityError,
    FedPeerUnavailableError,
    FedSerializationError,
    error_from_wire,
    FedTransportError,
)
from fed.transport import payload, wire
from fed.transport.base import MessageKey
from fed.transport.budget import Inflight, PeerBudget
from fed.transport.proof import proof_ok
from fed.transport.limits import ReceiverLimits, Refusal, RefusalLog, allocate
from fed.transport.plasma import Landing, close_buffers

#: How long a connection thread waits for the actor's event loop to take a value.
_LOOP_CALL_TIMEOUT_S = 60.0
#: After a REFUSE: how long and how much of the sender's stream is read before closing.
_DRAIN_S = 2.0
_DRAIN_BYTES = 64 * 1024 * 1024
_ACCEPT_BACKOFF_S = 0.05
_MIN_MAX_CHUNK = 64 * 1024 * 1024
#: What one declared buffer costs before its bytes arrive (list slot, buffer object).
_BUFFER_OVERHEAD_BYTES = 128


@dataclass
class _Arrived:
    key: MessageKey
    value: Any = None
    error: Optional[BaseException] = None
    nbytes: int = 0  # held against the sender's buffer budget until claimed
    wire_bytes: int = 0  # the value's size on the wire (stats)


@dataclass
class _Counters:
    """The receiver's figures; bumped from connection threads and the loop alike."""

    values: dict = field(default_factory=dict)
    bytes: dict = field(default_factory=dict)
    duplicates: int = 0
    refusals: int = 0
    dropped_connections: int = 0  # closed at accept: a connection cap was reached
    ignored_controls: int = 0  # BYE/NOTICE/wait reports nothing authenticated
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, src: str, nbytes: int) -> None:
        with self._lock:
            self.values[src] = self.values.get(src, 0) + 1
            self.bytes[src] = self.bytes.get(src, 0) + nbytes

    def bump(self, name: str) -> int:
        """Add one to counter `name`; return its new value."""
        with self._lock:
            value = getattr(self, name) + 1
            setattr(self, name, value)
            return value

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"received_values": dict(self.values), "received_bytes": dict(self.bytes),
                    "duplicates_dropped": self.duplicates, "refusals": self.refusals,
                    "dropped_connections": self.dropped_connections,
                    "ignored_controls": self.ignored_controls}


class ReceiverProxy:
    """One per party and job. Listens on the party's address; serves receive barriers.

    `max_chunk_bytes` is this party's own ``chunk_size_in_bytes``; the receiver accepts
    DATA frames up to the larger of it and 64 MiB (peers may send larger chunks than
    we do) and advertises that bound in its WELCOME as ``max_data_frame_bytes``.
    """

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
        job_secret: Optional[bytes] = None,
        tensor_device: str = "cpu",
        codecs: Any = None,
    ) -> None:
        from fed.transport.identity import IdentityVerifier
        from fed.transport.tls import server_context

        self._party = party
        self._job = job
        self._parties = set(parties)
        self._listen = (listen_host, listen_port)
        self._ssl: Optional[ssl.SSLContext] = server_context(tls)
        self._job_secret = job_secret
        # Control frames that could end the job count only from a proven peer.
        self._controls_trusted = self._ssl is not None or job_secret is not None
        # Values are checked on arrival and built where consumed (fed/transport/payload.py).
        self._policy = payload.WirePolicy.from_config(allowlist, tensor_device, codecs)
        self._max_message = max_message_bytes
        # DATA frames may be as large as the sender's chunk_size_in_bytes, at least 64 MiB
        # (a receiver must take what a peer with a larger chunk size sends).
        self._max_chunk = max(max_chunk_bytes, _MIN_MAX_CHUNK)
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
        self._conns: dict[int, _Conn] = {}
        self._conns_lock = threading.Lock()
        # Event-loop state (touched only on the actor's loop).
        self._arrived: dict[tuple[str, int], _Arrived] = {}
        self._consumed: set[tuple[str, int]] = set()
        self._waiters: dict[tuple[str, int], tuple[MessageKey, asyncio.Future]] = {}
        self._finished: dict[str, int] = {}
        self._lost: dict[str, FedPeerUnavailableError] = {}
        self._peer_failed: dict[str, FedError] = {}  # a peer reported a failure (NOTICE)
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
            socks = [c.sock for c in self._conns.values()]
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the thread reading it, which closes it
            except OSError:
                pass
        for _key, fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(FedError("rayfed shut down while this value was awaited"))
        if self._outbox_ready is not None and not self._outbox_ready.done():
            self._outbox_ready.set_result(None)  # ends next_notices

    async def stats(self) -> dict[str, Any]:
        return {
            **self._counters.snapshot(),
            "waiting": len(self._waiters),
            "buffered": len(self._arrived),
            "held_bytes": self._budget.held(),
            "refusals_by_reason": self._refusals.by_reason_snapshot(),
        }

    # ---- barriers --------------------------------------------------------------------

    async def get(self, key_dict: dict[str, Any]) -> Any:
        """The receive barrier: wait for the value `key` names, check it joins the same calls."""
        key = MessageKey.from_dict(key_dict)
        slot = (key.src, key.ordinal)
        arrived = self._arrived.pop(slot, None)
        if arrived is not None:
            self._budget.release(key.src, arrived.nbytes)
        try:
            if self._failure is not None:  # decided: every later barrier says the same
                raise self._failure
            if arrived is None:
                arrived = await self._wait_for(key, slot)
        finally:
            self._consumed.add(slot)  # a value arriving later is dropped, its budget returned
        if not arrived.key.same_calls(key):
            raise self._diverged(expected=key, got=arrived.key)
        if arrived.error is not None:
            raise _raisable(arrived.error, key)
        # A marker that builds the value where it is used, with the codecs registered now.
        return arrived.value.claimed(self._policy)

    async def set_codecs(self, codecs: Any) -> None:
        """The driver's user codecs (fed.register_codec), for values claimed from now on."""
        self._policy = self._policy.with_codecs(codecs)

    async def _wait_for(self, key: MessageKey, slot: tuple[str, int]) -> _Arrived:
        self._raise_if_hopeless(key)
        if self._loop is None:  # a barrier may be served before start() ran
            self._loop = asyncio.get_running_loop()
        fut = self._loop.create_future()
        self._waiters[slot] = (key, fut)
        self._budget.awaiting(slot, True)
        try:
            return await fut
        finally:
            self._waiters.pop(slot, None)
            self._budget.awaiting(slot, False)

    def _raise_if_hopeless(self, key: MessageKey) -> None:
        if self._failure is not None:
            raise self._failure
        if key.src in self._lost:
            raise self._lost[key.src]
        if key.src in self._peer_failed:
            raise self._peer_failed[key.src]
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

    def _diverged(self, expected: MessageKey, got: MessageKey,
                  scope: Optional[str] = None) -> FedDivergenceError:
        text = (
            f"the parties' code diverged: party {self._party!r} expected message "
            f"#{expected.ordinal} from {expected.src!r} to be {expected.producer()} consumed "
            f"by {expected.consumer()}, but {got.src!r} sent {got.producer()} for "
            f"{got.consumer()}. Every party must run the same sequence of .remote() and "
            "fed.get calls (look for code that depends on the party name)."
        )
        error = FedDivergenceError(text)
        if scope is None:
            self._fail_all(error)
        else:  # learnt from what `scope` announced: fail only what depends on it
            self._fail_peer(scope, error)
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
        parsed = _parse_status(status)
        if parsed is None:
            return  # not what our senders send: ignored
        peer_issued, peer_waits, peer_pending = parsed
        # A value the peer will send us, announced before it exists: if it is not the
        # one our barrier expects at that position, the code diverged; say so now.
        for announced in peer_pending:
            waiter = self._waiters.get((peer, announced.ordinal))
            if waiter is not None and not waiter[0].same_calls(announced):
                self._diverged(expected=waiter[0], got=announced, scope=peer)
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
        self._fail_peer(peer, FedDivergenceError(text))
        self._notify_peer(peer, {"kind": "divergence", "text": text})

    async def peer_back(self, peer: str) -> None:
        self._lost.pop(peer, None)

    async def fail(self, error: FedError) -> None:
        """A local failure the whole job must see (a send that could not be delivered)."""
        self._fail_all(error)

    def _on_arrival(self, arrived: _Arrived, value: Inflight) -> bool:
        """Runs on the loop. Takes over the value's budget charge; returns False for a
        duplicate (already held or consumed) or a value nobody will claim any more."""
        key = arrived.key
        slot = (key.src, key.ordinal)
        waiter = self._waiters.get(slot)
        # A done waiter: its barrier ended (took a value, or failed) and has not marked
        # the slot consumed yet. A consumed slot includes values whose barrier failed.
        if slot in self._arrived or slot in self._consumed or (waiter and waiter[1].done()):
            self._counters.bump("duplicates")
            self._budget.settle(value, keep=False)
            return False
        if waiter is None and self._failure is not None:
            self._budget.settle(value, keep=False)  # the job failed: never claimed
            self._consumed.add(slot)
            return True
        if not self._budget.settle(value, keep=True):
            raise FedError("the connection gave up on this value before it was stored")
        nbytes = value.charged
        self._counters.add(key.src, arrived.wire_bytes)
        if waiter is not None:
            waiter[1].set_result(arrived)
            self._budget.release(key.src, nbytes)
        else:
            arrived.nbytes = nbytes
            self._arrived[slot] = arrived
        return True

    def _on_duplicate(self) -> None:
        self._counters.bump("duplicates")

    def _on_bye(self, peer: str, sent: Any) -> None:
        """`peer` finished after sending `sent` values here: barriers waiting for more
        from it can never be served."""
        if type(sent) is not int or sent < 0:
            raise wire.ProtocolError("BYE needs a non-negative integer `sent`")
        self._finished[peer] = sent
        self._notify_peer(None, {"kind": "peer_finished", "peer": peer})  # for our sender
        for (src, ordinal), (key, fut) in list(self._waiters.items()):
            if src == peer and ordinal >= sent and not fut.done():
                fut.set_exception(self._finished_error(key, sent))

    def _on_notice(self, peer: str, notice: dict[str, Any]) -> None:
        """A failure `peer` reports fails what depends on `peer`, nothing else."""
        text = str(notice.get("text"))[:4000]
        if notice.get("kind") == "divergence":
            self._fail_peer(peer, FedDivergenceError(f"party {peer!r} reports: {text}"))
        elif notice.get("kind") == "send_failed":
            self._on_send_failed(peer, notice, text)

    def _on_send_failed(self, peer: str, notice: dict[str, Any], text: str) -> None:
        """`peer` could not deliver one value: fail the barrier on it (now or when it comes)."""
        try:
            key = MessageKey.from_dict(notice["key"])
        except (KeyError, TypeError):
            return
        if _well_typed(key) and key.src == peer and key.job == self._job:
            error = FedTransportError(f"party {peer!r} reports: {text}")
            nothing_charged = Inflight((key.src, key.ordinal), -1)
            self._on_arrival(_Arrived(key, error=error), nothing_charged)

    def _fail_peer(self, peer: str, error: FedError) -> None:
        """Fail every barrier waiting on `peer`, now and later."""
        self._peer_failed.setdefault(peer, error)
        for (src, _ordinal), (_key, fut) in list(self._waiters.items()):
            if src == peer and not fut.done():
                fut.set_exception(error)

    def _call_on_loop(self, fn, *args):
        """Run `fn` on the actor's loop from a connection thread; return its result or
        raise its exception here (never on the loop), within _LOOP_CALL_TIMEOUT_S."""
        result: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            if not result.set_running_or_notify_cancel():
                return  # the connection thread gave up waiting
            try:
                result.set_result(fn(*args))
            except BaseException as exc:  # handed to the thread; the loop carries on
                result.set_exception(exc)

        if self._loop is None or self._loop.is_closed():
            raise FedError("the receiver's event loop is not running")
        self._loop.call_soon_threadsafe(run)
        try:
            return result.result(_LOOP_CALL_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            result.cancel()
            raise FedError(f"the receiver's event loop did not answer within "
                           f"{_LOOP_CALL_TIMEOUT_S:g} s") from None

    # ---- connections (threads) ---------------------------------------------------------

    def _accept_loop(self) -> None:
        """Accept until stopped; a failing accept (EMFILE, ENOBUFS...) is logged and
        retried with backoff, never the end of the server."""
        backoff = _ACCEPT_BACKOFF_S
        while not self._stopping.is_set():
            try:
                raw, addr = self._server.accept()
                self._admit_connection(raw, str(addr[0]))
                backoff = _ACCEPT_BACKOFF_S
            except (OSError, RuntimeError) as exc:
                if self._stopping.is_set():
                    return
                self._log.warning("accepting a connection failed (%s); retrying in %.2f s",
                                  exc, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 2.0)

    def _admit_connection(self, raw: socket.socket, ip: str) -> None:
        """Serve `raw` on its own thread if the connection caps leave room, else close it."""
        conn = _Conn(raw, ip)
        with self._conns_lock:
            room = self._room_for(ip)
            if room:
                self._conns[id(conn)] = conn
        if not room:
            self._counters.bump("dropped_connections")
            raw.close()
            return
        try:
            threading.Thread(target=self._serve, args=(conn,), name="fed-conn", daemon=True).start()
        except BaseException:
            self._forget(conn)
            raw.close()
            raise

    def _room_for(self, ip: str) -> bool:
        """Caps (under _conns_lock): in total; connections not past the handshake, in
        total (half the slots, so authenticated peers always find room) and per address."""
        limits = self._limits
        if len(self._conns) >= limits.max_connections:
            return False
        unbound = [c for c in self._conns.values() if c.peer is None]
        return (len(unbound) < max(1, limits.max_connections // 2)
                and sum(c.ip == ip for c in unbound) < limits.max_handshakes_per_ip)

    def _bind_peer(self, conn: _Conn, peer: str) -> bool:
        """The handshake named `peer`: count the connection against that party's cap."""
        with self._conns_lock:
            if sum(c.peer == peer for c in self._conns.values()) >= self._limits.max_connections_per_peer:
                return False
            conn.peer = peer
            return True

    def _forget(self, conn: _Conn) -> None:
        with self._conns_lock:
            self._conns.pop(id(conn), None)

    def _serve(self, conn: _Conn) -> None:
        peer: Optional[str] = None
        try:
            _tune(conn.sock)
            deadline = time.monotonic() + self._limits.handshake_timeout_s
            if self._ssl is not None:
                conn.sock = _tls_handshake(self._ssl, conn.sock, deadline)
            peer = self._handshake(conn, deadline)
            if peer is not None:
                self._serve_frames(conn.sock, peer)
        except (wire.PeerClosed, ConnectionError, ssl.SSLError, socket.timeout, OSError):
            pass
        except Refusal as refusal:
            refusal.party = refusal.party or peer
            self._refused(conn.sock, refusal)
        except wire.ProtocolError as exc:
            self._refused(conn.sock, Refusal("protocol", str(exc), party=peer))
        except Exception as exc:  # hostile input must never take the receiver down
            detail = f"{type(exc).__name__}: {exc}"[:500]
            self._refused(conn.sock, Refusal("protocol", detail, party=peer))
        finally:
            self._forget(conn)
            try:
                conn.sock.close()
            except OSError:
                pass

    def _serve_frames(self, sock: socket.socket, peer: str) -> None:
        """Frames after WELCOME: each must start within idle_timeout_s and, once its
        head is in, complete within frame_timeout_s."""
        limits = self._limits
        while not self._stopping.is_set():
            head = wire.read_head(sock, time.monotonic() + limits.idle_timeout_s)
            ftype, body = self._read_control(sock, limits.max_header_bytes, head=head)
            if ftype == wire.MSG:
                self._receive_value(sock, peer, body)
            elif ftype == wire.PING:
                if body and self._trusts_controls(peer, "wait reports"):
                    self._call_on_loop(self._on_peer_status, peer, body)
                self._send(sock, wire.PONG, {})
            elif ftype == wire.BYE:
                if self._trusts_controls(peer, "BYE"):
                    self._call_on_loop(self._on_bye, peer, body.get("sent"))
                self._send(sock, wire.ACK, {})
            elif ftype == wire.NOTICE:
                if self._trusts_controls(peer, "NOTICE"):
                    self._call_on_loop(self._on_notice, peer, body)
                self._send(sock, wire.ACK, {})
            else:
                raise wire.ProtocolError(f"unexpected {wire.NAMES[ftype]} frame")

    def _trusts_controls(self, peer: str, what: str) -> bool:
        """Without TLS or a job secret, anyone could send a frame claiming `peer`: such
        frames may deliver values but not end or fail the job (docs/security.md)."""
        if self._controls_trusted:
            return True
        if self._counters.bump("ignored_controls") == 1:
            self._log.warning(
                "ignoring %s from %r: without TLS or %s nothing proves who sent it, so "
                "control frames cannot end this job (peers are then judged by heartbeats). "
                "Use TLS, or start every party with the same %s (fed run does). (Warned once.)",
                what, peer, JOB_SECRET_ENV, JOB_SECRET_ENV)
        return False

    def _read_control(self, sock: socket.socket, max_len: int, deadline: Optional[float] = None,
                      head: Optional[tuple[int, int]] = None) -> tuple[int, dict[str, Any]]:
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
        sock.settimeout(self._limits.frame_timeout_s)  # reads leave their own deadline set
        wire.send_control(sock, ftype, body)

    def _refuse(self, sock: socket.socket, reason: str, detail: str) -> None:
        """Send REFUSE, then half-close and read (bounded) what the sender still streams,
        so the REFUSE is not destroyed by a reset and the sender fails fast."""
        self._counters.bump("refusals")
        try:
            self._send(sock, wire.REFUSE, {"reason": reason, "detail": detail})
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _DRAIN_S
            scratch = bytearray(1 << 16)
            drained = 0
            while drained < _DRAIN_BYTES and time.monotonic() < deadline:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                n = sock.recv_into(scratch)
                if n == 0:
                    break
                drained += n
        except (OSError, ValueError):
            pass

    def _refused(self, sock: socket.socket, refusal: Refusal) -> None:
        """Log (once per peer and reason), count, and tell the sender why; the caller closes."""
        try:
            host = str(sock.getpeername()[0])
        except (OSError, IndexError):
            host = "?"
        if refusal.party is not None and refusal.job is None:
            refusal.job = self._job  # past the handshake: the connection's job
        self._refusals.record(host, refusal)
        self._refuse(sock, refusal.reason, refusal.detail)

    def _handshake(self, conn: _Conn, deadline: float) -> Optional[str]:
        """HELLO -> WELCOME once the claimed source may speak here; else a Refusal.

        The whole exchange (TLS included) must finish by `deadline`. With TLS the peer
        certificate must belong to the claimed source party (fed.transport.identity).
        The WELCOME advertises this receiver's limits, so a well-behaved sender refuses
        an oversized value locally instead of streaming it. A refusal names neither
        this party's job nor its peers to a client that has not proven who it is.
        """
        sock = conn.sock
        ftype, hello = self._read_control(sock, 64 * 1024, deadline)
        if ftype != wire.HELLO or hello.get("proto") != wire.PROTOCOL:
            raise wire.ProtocolError("the connection did not start with a rayfed HELLO")
        src, job, dst = hello.get("src"), hello.get("job"), hello.get("dst")
        if not all(isinstance(v, str) for v in (src, job, dst)):
            raise Refusal("protocol", "HELLO needs string src, job and dst")
        if src not in self._parties or src == self._party:
            raise Refusal("unknown_party", f"{src!r} is not a peer of this party", src, job)
        if self._identity is not None:
            try:
                self._identity.check(sock.getpeercert(binary_form=True), src, as_server=False)
            except FedIdentityError as exc:
                raise Refusal("identity", exc.detail, src, job) from None
        if job != self._job:
            raise Refusal("job_not_running", f"job {job!r} is not running in party {dst!r}",
                          src, job)
        if self._job_secret is not None and not proof_ok(self._job_secret, hello):
            raise Refusal("identity", f"a peer claiming to be {src!r} did not prove the job "
                          f"secret: start every party with the same {JOB_SECRET_ENV}", src, job)
        if dst != self._party:
            raise Refusal("wrong_destination", f"this is party {self._party!r}, not {dst!r}", src, job)
        if not self._bind_peer(conn, src):
            self._refusals.record(conn.ip, Refusal(
                "too_many_connections", f"{src!r} already has max_connections_per_peer="
                f"{self._limits.max_connections_per_peer} connections here", src, job))
            return None  # closed without a word: the sender retries with backoff
        self._send(sock, wire.WELCOME, {
            "party": self._party, "job": self._job,
            "limits": {**self._limits.advertise(), "max_data_frame_bytes": self._max_chunk},
        })
        return src

    def _receive_value(self, sock: socket.socket, peer: str, header: dict[str, Any]) -> None:
        """One value: check its header against the connection and the limits, then read
        it, charging the peer's budget frame by frame, unpickle and deliver."""
        key, kind, fmt, sizes = self._check_header(peer, header)
        total = sum(sizes)
        slot = (key.src, key.ordinal)
        if slot in self._consumed or slot in self._arrived:
            # A replay (or a retry of a value we hold): drop it unread and unpickled.
            self._read_body(sock, [None] * len(sizes), sizes, None)
            self._call_on_loop(self._on_duplicate)
            self._send(sock, wire.ACK, {"ordinal": key.ordinal, "duplicate": True})
            return
        limits = self._limits
        value = self._budget.admit(slot, total, limits.busy_after_s)
        if value is None:
            raise self._busy(peer, key)
        buffers: list = []
        landing: Optional[Landing] = None
        try:
            # The buffers' bookkeeping is charged like bytes: many tiny declared buffers
            # cost memory before any byte arrives.
            if not self._budget.charge(value, len(sizes) * _BUFFER_OVERHEAD_BYTES,
                                       limits.busy_after_s):
                raise self._busy(peer, key)
            try:
                # Large values go to the object store once complete (fed/transport/plasma.py).
                landing = Landing.maybe(sizes, kind)
                buffers = landing.buffers if landing else [allocate(s) for s in sizes]
            except (MemoryError, OSError, OverflowError, ValueError) as exc:
                raise Refusal("too_large", f"this party cannot allocate {total} bytes: "
                              f"{exc}", peer, key.job) from None
            self._read_body(sock, buffers, sizes, value)
            arrived = self._decode(key, kind, fmt, buffers, landing)
            arrived.wire_bytes = total
            fresh = self._call_on_loop(self._on_arrival, arrived, value)
            buffers = []  # delivered or dropped: freed with their last reference
        finally:
            self._budget.settle(value, keep=False)  # no-op once the loop kept it
            if landing is not None:
                landing.close()
            close_buffers(buffers)  # a failed value's memory is returned now
        if isinstance(arrived.error, FedSerializationError):
            raise Refusal("deserialization", str(arrived.error), peer, key.job)
        self._send(sock, wire.ACK, {"ordinal": key.ordinal, "duplicate": not fresh})

    def _busy(self, peer: str, key: MessageKey) -> Refusal:
        return Refusal("busy", f"{peer!r} already has max_buffered_bytes_per_peer="
                       f"{self._limits.max_buffered_bytes_per_peer} bytes waiting in party "
                       f"{self._party!r} for their barriers; retry later", peer, key.job)

    def _check_header(self, peer: str,
                      header: dict[str, Any]) -> tuple[MessageKey, str, str, list[int]]:
        """A MSG header's key, kind, format and sizes, or a ProtocolError / Refusal saying
        why not."""
        try:
            key = MessageKey.from_dict(header["key"])
            kind = header["kind"]
            fmt = header.get("format", payload.CODEC)
            sizes = [int(s) for s in header["sizes"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise wire.ProtocolError(f"malformed MSG header: {exc}") from None
        if not _well_typed(key) or kind not in ("value", "error") or fmt not in payload.FORMATS:
            raise wire.ProtocolError("malformed MSG header: ill-typed key fields, kind or format")
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
        if fmt == payload.PICKLE and (kind == "error" or self._policy.allowlist is None):
            # Refused unread: this party accepts no pickle (or an error as a pickle).
            raise Refusal("deserialization", payload.pickle_refused_text(), peer, key.job)
        limits = self._limits
        if len(sizes) > limits.max_frames_per_value:
            raise Refusal("too_many_frames", f"{len(sizes)} buffers exceed max_frames_per_value="
                          f"{limits.max_frames_per_value} in party {self._party!r}", peer, key.job)
        total = sum(sizes)
        if limits.max_value_bytes is not None and total > limits.max_value_bytes:
            raise Refusal("too_large", f"value of {total} bytes exceeds messages_max_size_in_bytes="
                          f"{limits.max_value_bytes} in party {self._party!r}", peer, key.job)
        return key, kind, fmt, sizes

    def _decode(self, key: MessageKey, kind: str, fmt: str, buffers: list,
                landing: Optional[Landing]) -> _Arrived:
        """Check what arrived (an error envelope is decoded: it is small and raised here);
        a value is held as a marker that builds it where it is consumed, a large one in
        the object store."""
        arrived = _Arrived(key)
        try:
            if kind == "error":
                value = payload.build(fmt, buffers, self._policy)
                arrived.error = error_from_wire(value, key.src, key.producer_call)
                return arrived
            payload.check(fmt, buffers, self._policy)
            arrived.value = payload.Received(fmt, buffers, self._policy)
            if landing is not None:
                try:
                    arrived.value = landing.marker(fmt, self._policy)
                except Exception as exc:  # e.g. the object store is full: keep it here
                    self._log.warning("keeping a %d byte value in the receiver (the object "
                                      "store refused it: %s)", sum(landing.sizes), exc)
                    arrived.value = payload.Received(fmt, [bytes(b) for b in buffers],
                                                     self._policy)
        except FedSerializationError as exc:
            arrived.error = exc
        return arrived

    def _read_body(self, sock: socket.socket, buffers: list, sizes: list[int],
                   value: Optional[Inflight]) -> None:
        """Read DATA frames into `buffers` in order (None: discard those bytes), each
        frame charged to the peer's budget (`value`) before it is read."""
        limits = self._limits
        index, offset = 0, 0
        remaining = sum(sizes)
        scratch: Optional[memoryview] = None
        frames = 0
        while remaining > 0:
            ftype, length = wire.read_head(sock, time.monotonic() + limits.frame_timeout_s)
            if ftype != wire.DATA or length == 0 or length > self._max_chunk or length > remaining:
                raise wire.ProtocolError(f"bad DATA frame (type {ftype}, {length} bytes; at most "
                                         f"{min(self._max_chunk, remaining)} expected)")
            frames += 1
            if frames > limits.max_frames_per_value:
                raise Refusal("too_many_frames", f"a value sent in more than max_frames_per_value="
                              f"{limits.max_frames_per_value} DATA frames")
            if value is not None and not self._budget.charge(value, length, limits.busy_after_s):
                raise Refusal("busy", f"no room in max_buffered_bytes_per_peer="
                              f"{limits.max_buffered_bytes_per_peer} for the rest of the value")
            deadline = time.monotonic() + limits.frame_timeout_s
            remaining -= length
            while length > 0:
                while sizes[index] - offset == 0:
                    index, offset = index + 1, 0
                take = min(length, sizes[index] - offset)
                target = buffers[index]
                if target is None:
                    if scratch is None or len(scratch) < take:
                        scratch = memoryview(bytearray(min(max(take, 1 << 16), 1 << 24)))
                    take = min(take, len(scratch))
                    wire.recv_into_exact(sock, scratch[:take], deadline)
                else:
                    with memoryview(target) as view:
                        wire.recv_into_exact(sock, view[offset:offset + take], deadline)
                offset += take
                length -= take


@dataclass
class _Conn:
    """One accepted connection: its socket (the TLS one once wrapped), source address,
    and the party its handshake authenticated (None until then)."""

    sock: socket.socket
    ip: str
    peer: Optional[str] = None


def _tune(sock: socket.socket) -> None:
    """No Nagle delay; TCP keepalive so a vanished peer's connection ends."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _tls_handshake(ctx: ssl.SSLContext, raw: socket.socket, deadline: float) -> ssl.SSLSocket:
    """The server side of the TLS handshake, finished by `deadline` however slowly the
    client sends (a per-read timeout would let a trickle last forever)."""
    sock = ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
    try:
        sock.setblocking(False)
        while True:
            try:
                sock.do_handshake()
                break
            except ssl.SSLWantReadError:
                wait: tuple[list, list] = ([sock], [])
            except ssl.SSLWantWriteError:
                wait = ([], [sock])
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise wire.DeadlineExceeded("the TLS handshake did not finish in time")
            select.select(*wait, [], remaining)
        sock.setblocking(True)
        return sock
    except BaseException:
        sock.close()
        raise


def _raisable(error: BaseException, key: MessageKey) -> Exception:
    """An error that came from the wire, safe to raise in the actor's event loop: a
    BaseException that is not an Exception (SystemExit, KeyboardInterrupt...) would
    stop the loop, so it is wrapped."""
    if isinstance(error, Exception):
        return error
    return FedError(f"{key.src!r} sent {type(error).__name__} as the error of "
                    f"{key.producer()}; refused to raise it here")


def _parse_status(status: Any) -> Optional[tuple[int, list, list]]:
    """A heartbeat status from the wire: (issued, [(ordinal, consumer)], [MessageKey]),
    or None when any field is not of the type our senders send."""
    try:
        issued = status.get("issued", 0)
        waits = [(o, d) for o, d in status.get("waiting", [])]
        pending = [MessageKey.from_dict(k) for k in status.get("pending", [])]
    except (TypeError, ValueError, AttributeError, KeyError):
        return None
    if type(issued) is not int or issued < 0:
        return None
    if not all(type(o) is int and o >= 0 and isinstance(d, str) for o, d in waits):
        return None
    if not all(_well_typed(k) for k in pending):
        return None
    return issued, waits, pending


def _well_typed(key: MessageKey) -> bool:
    """Key fields come from the wire: hashable, of the types the barriers compare."""
    counts = (key.ordinal, key.producer_seq, key.producer_index, key.consumer_seq)
    names = (key.job, key.src, key.dst, key.producer_call, key.consumer_call)
    return all(type(n) is int and n >= 0 for n in counts) and all(isinstance(t, str) for t in names)
