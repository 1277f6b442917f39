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
from fed._log import party_logger
from fed.errors import (
    FedDivergenceError,
    FedError,
    FedPeerUnavailableError,
    FedSerializationError,
)
from fed.transport import wire
from fed.transport.base import MessageKey

MAX_CONTROL_FRAME = 1024 * 1024
MAX_CONNECTIONS = 256


@dataclass
class _Arrived:
    key: MessageKey
    value: Any = None
    error: Optional[BaseException] = None


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
        tls: Optional[dict],
        allowlist: Any,
        max_message_bytes: Optional[int],
        max_chunk_bytes: int,
    ) -> None:
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

    async def stats(self) -> dict[str, Any]:
        c = self._counters
        return {
            "received_values": dict(c.values),
            "received_bytes": dict(c.bytes),
            "duplicates_dropped": c.duplicates,
            "refusals": c.refusals,
            "waiting": len(self._waiters),
            "buffered": len(self._arrived),
        }

    # ---- barriers --------------------------------------------------------------------

    async def get(self, key_dict: dict[str, Any]) -> Any:
        """The receive barrier: wait for the value `key` names, check it joins the same calls."""
        key = MessageKey.from_dict(key_dict)
        slot = (key.src, key.ordinal)
        arrived = self._arrived.pop(slot, None)
        if arrived is None:
            self._raise_if_hopeless(key)
            fut = self._loop.create_future()
            self._waiters[slot] = (key, fut)
            try:
                arrived = await fut
            finally:
                self._waiters.pop(slot, None)
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
            f"party {self._party!r} waits for value #{key.ordinal} from {key.src!r}, produced "
            f"by {key.producer()} for {key.consumer()}, but {key.src!r} finished the job "
            f"after sending {sent} value(s) here: the parties ran different code (a call or "
            "fed.get that only some parties execute)"
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

    def _notify_peer(self, peer: str, notice: dict[str, Any]) -> None:
        import ray

        from fed.transport.tcp import sender_name

        try:
            sender = ray.get_actor(sender_name(self._job, self._party))
            sender.notify.remote(peer, notice)
        except Exception as exc:  # best effort: our own party already has the error
            self._log.warning("could not notify %s: %s", peer, exc)

    # ---- events from the sender proxy / connections ------------------------------------

    async def peer_lost(self, peer: str, detail: str) -> None:
        """The sender's heartbeats lost `peer`: fail every barrier waiting on it."""
        error = FedPeerUnavailableError(peer, detail)
        self._lost[peer] = error
        for (src, _ordinal), (_key, fut) in list(self._waiters.items()):
            if src == peer and not fut.done():
                fut.set_exception(error)

    async def peer_back(self, peer: str) -> None:
        self._lost.pop(peer, None)

    async def fail(self, error: FedError) -> None:
        """A local failure the whole job must see (a send that could not be delivered)."""
        self._fail_all(error)

    def _on_arrival(self, arrived: _Arrived, nbytes: int) -> bool:
        """Runs on the loop. Returns False for a duplicate (already held or consumed)."""
        key = arrived.key
        slot = (key.src, key.ordinal)
        if slot in self._arrived or slot in self._consumed:
            self._counters.duplicates += 1
            return False
        self._counters.add(key.src, nbytes)
        waiter = self._waiters.get(slot)
        if waiter is not None and not waiter[1].done():
            waiter[1].set_result(arrived)
        else:
            self._arrived[slot] = arrived
        return True

    def _on_bye(self, peer: str, sent: int) -> None:
        self._finished[peer] = sent
        for (src, ordinal), (key, fut) in list(self._waiters.items()):
            if src == peer and ordinal >= sent and not fut.done():
                fut.set_exception(self._finished_error(key, sent))

    def _on_notice(self, peer: str, notice: dict[str, Any]) -> None:
        if notice.get("kind") == "divergence":
            self._fail_all(FedDivergenceError(f"party {peer!r} reports: {notice.get('text')}"))
        elif notice.get("kind") == "send_failed":
            self._fail_all(FedError(f"party {peer!r} reports: {notice.get('text')}"))

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
                ftype, body = wire.read_control(conn, MAX_CONTROL_FRAME)
                if ftype == wire.MSG:
                    self._receive_value(conn, peer, body)
                elif ftype == wire.PING:
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
        except wire.ProtocolError as exc:
            self._log.warning("closing a connection that broke the protocol: %s", exc)
            self._refuse(conn, "protocol", str(exc))
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

    def _handshake(self, conn: socket.socket) -> Optional[str]:
        ftype, hello = wire.read_control(conn, 64 * 1024)
        if ftype != wire.HELLO or hello.get("proto") != wire.PROTOCOL:
            raise wire.ProtocolError("the connection did not start with a rayfed HELLO")
        src, job, dst = hello.get("src"), hello.get("job"), hello.get("dst")
        if job != self._job:
            self._refuse(conn, "job_not_running", f"job {job!r} is not running in party "
                         f"{self._party!r} (running: {self._job!r})")
            return None
        if dst != self._party:
            self._refuse(conn, "wrong_destination", f"this is party {self._party!r}, not {dst!r}")
            return None
        if src not in self._parties or src == self._party:
            self._refuse(conn, "unknown_party", f"{src!r} is not a peer of {self._party!r} in job {job!r}")
            return None
        wire.send_control(conn, wire.WELCOME, {"party": self._party, "job": self._job})
        return src

    def _receive_value(self, conn: socket.socket, peer: str, header: dict[str, Any]) -> None:
        try:
            key = MessageKey.from_dict(header["key"])
            kind = header["kind"]
            sizes = [int(s) for s in header["sizes"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise wire.ProtocolError(f"malformed MSG header: {exc}") from None
        if key.src != peer or key.job != self._job or key.dst != self._party:
            raise wire.ProtocolError(
                f"MSG key {key.src}->{key.dst} in job {key.job!r} does not match the connection"
            )
        if not sizes or any(s < 0 for s in sizes):
            raise wire.ProtocolError("MSG header declares no or negative sizes")
        total = sum(sizes)
        if self._max_message is not None and total > self._max_message:
            # Drain the body so the connection stays usable, then refuse.
            self._read_body(conn, [None] * len(sizes), sizes)
            self._refuse(conn, "too_large", f"value of {total} bytes exceeds "
                         f"messages_max_size_in_bytes={self._max_message} in party {self._party!r}")
            return
        buffers = [bytearray(s) for s in sizes]
        self._read_body(conn, buffers, sizes)
        arrived = _Arrived(key)
        try:
            value = serialization.loads(buffers[0], buffers[1:], self._allowlist)
            if kind == "error":
                arrived.error = value if isinstance(value, BaseException) else FedError(repr(value))
            else:
                arrived.value = value
        except FedSerializationError as exc:
            arrived.error = exc
        fresh = self._call_on_loop(self._on_arrival, arrived, total)
        if isinstance(arrived.error, FedSerializationError):
            self._refuse(conn, "deserialization", str(arrived.error))
            return
        wire.send_control(conn, wire.ACK, {"ordinal": key.ordinal, "duplicate": not fresh})

    def _read_body(self, conn: socket.socket, buffers: list, sizes: list[int]) -> None:
        """Read DATA frames into `buffers` in order (None: discard those bytes)."""
        index, offset = 0, 0
        remaining = sum(sizes)
        scratch: Optional[memoryview] = None
        while remaining > 0:
            ftype, length = wire.read_head(conn)
            if ftype != wire.DATA or length == 0 or length > self._max_chunk or length > remaining:
                raise wire.ProtocolError(f"bad DATA frame (type {ftype}, {length} bytes)")
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
                    wire.recv_into_exact(conn, memoryview(target)[offset:offset + take])
                offset += take
                length -= take
