"""The receiver's TCP/TLS server: listening socket, accept loop, one thread per connection.

Connections are admitted under caps (in total, per source address before the
handshake, per authenticated party; `Admission`), tuned, and taken through the TLS
handshake within the handshake deadline; then `serve` (the protocol, session.py)
runs on the connection's thread. Whatever ends a connection is handled here: a
`Refusal` or protocol error is answered with REFUSE, then the sender's stream is
drained (bounded) so the REFUSE is not lost to a reset; the socket is always closed.
"""
from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fed.errors import FedError
from fed.transport import wire
from fed.transport.counters import ReceiverCounters
from fed.transport.limits import ReceiverLimits, Refusal, RefusalLog

#: After a REFUSE: how long and how much of the sender's stream is read before closing.
_DRAIN_S = 2.0
_DRAIN_BYTES = 64 * 1024 * 1024
_ACCEPT_BACKOFF_S = 0.05


@dataclass
class Conn:
    """One accepted connection: its socket (the TLS one once wrapped), source address,
    and the party its handshake authenticated (None until then)."""

    sock: socket.socket
    ip: str
    peer: str | None = None


class Admission:
    """The open connections and their caps; thread-safe (accept and connection threads)."""

    def __init__(self, limits: ReceiverLimits) -> None:
        self._limits = limits
        self._conns: dict[int, Conn] = {}
        self._lock = threading.Lock()

    def admit(self, conn: Conn) -> bool:
        """Count `conn` if the caps leave room: in total; connections not past the
        handshake, in total (half the slots, so authenticated peers always find room)
        and per address."""
        limits = self._limits
        with self._lock:
            if len(self._conns) >= limits.max_connections:
                return False
            unbound = [c for c in self._conns.values() if c.peer is None]
            if (len(unbound) >= max(1, limits.max_connections // 2)
                    or sum(c.ip == conn.ip for c in unbound) >= limits.max_handshakes_per_ip):
                return False
            self._conns[id(conn)] = conn
            return True

    def bind_peer(self, conn: Conn, peer: str) -> bool:
        """The handshake named `peer`: count the connection against that party's cap."""
        with self._lock:
            bound = sum(c.peer == peer for c in self._conns.values())
            if bound >= self._limits.max_connections_per_peer:
                return False
            conn.peer = peer
            return True

    def forget(self, conn: Conn) -> None:
        with self._lock:
            self._conns.pop(id(conn), None)

    def sockets(self) -> list[socket.socket]:
        with self._lock:
            return [c.sock for c in self._conns.values()]


class Listener:
    """Binds the party's listen address and serves each connection on its own thread."""

    def __init__(self, party: str, job: str, address: tuple[str, int],
                 tls: ssl.SSLContext | None, limits: ReceiverLimits, admission: Admission,
                 serve: Callable[[Conn, float], None], counters: ReceiverCounters,
                 refusals: RefusalLog, stopping: threading.Event,
                 log: logging.LoggerAdapter) -> None:
        self._party, self._job, self._address = party, job, address
        self._ssl = tls
        self._limits = limits
        self._admission = admission
        self._serve = serve  # the protocol after TLS, until the connection ends
        self._counters = counters
        self._refusals = refusals
        self._stopping = stopping
        self._log = log
        self._server: socket.socket | None = None

    def start(self) -> int:
        """Bind and listen; return the port (useful when configured as 0)."""
        host, port = self._address
        server = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                               socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind(self._address)
        except OSError as exc:
            server.close()
            raise FedError(
                f"party {self._party!r} cannot listen on {host}:{port}: "
                f"{exc.strerror or exc}. Is another job or program using that port? Pick a free "
                "port in the addresses given to fed.init."
            ) from None
        server.listen(128)
        self._server = server
        threading.Thread(target=self._accept_loop, name="fed-accept", daemon=True).start()
        return server.getsockname()[1]

    def stop(self) -> None:
        """Close the listening socket and wake every connection's thread, which closes it.
        The caller sets `stopping` first."""
        if self._server is not None:
            try:
                self._server.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._server.close()
        for sock in self._admission.sockets():
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the thread reading it, which closes it
            except OSError:
                pass

    def _accept_loop(self) -> None:
        """Accept until stopped; a failing accept (EMFILE, ENOBUFS...) is logged and
        retried with backoff, never the end of the server."""
        backoff = _ACCEPT_BACKOFF_S
        while not self._stopping.is_set():
            try:
                raw, addr = self._server.accept()
                self._admit(raw, str(addr[0]))
                backoff = _ACCEPT_BACKOFF_S
            except (OSError, RuntimeError) as exc:
                if self._stopping.is_set():
                    return
                self._log.warning("accepting a connection failed (%s); retrying in %.2f s",
                                  exc, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 2.0)

    def _admit(self, raw: socket.socket, ip: str) -> None:
        """Serve `raw` on its own thread if the connection caps leave room, else close it."""
        conn = Conn(raw, ip)
        if not self._admission.admit(conn):
            self._counters.dropped_connections.bump()
            raw.close()
            return
        try:
            threading.Thread(target=self._handle, args=(conn,), name="fed-conn",
                             daemon=True).start()
        except BaseException:
            self._admission.forget(conn)
            raw.close()
            raise

    def _handle(self, conn: Conn) -> None:
        """A connection's thread: TLS, then the protocol; a refusal is answered."""
        try:
            refusal = self._serve_until_refused(conn)
            if refusal is not None:  # answered once the frames that raised it are gone:
                refusal.__traceback__ = refusal.__context__ = None  # what they decoded is freed
                refusal.party = refusal.party or conn.peer
                self._refused(conn.sock, refusal)
        finally:
            self._admission.forget(conn)
            try:
                conn.sock.close()
            except OSError:
                pass

    def _serve_until_refused(self, conn: Conn) -> Refusal | None:
        """TLS, then the protocol until the connection ends; the refusal to answer, if any."""
        try:
            tune(conn.sock)
            deadline = time.monotonic() + self._limits.handshake_timeout_s
            if self._ssl is not None:
                conn.sock = tls_handshake(self._ssl, conn.sock, deadline)
            self._serve(conn, deadline)
        except (TimeoutError, wire.PeerClosed, ConnectionError, ssl.SSLError, OSError):
            pass
        except Refusal as refusal:
            return refusal
        except wire.ProtocolError as exc:
            return Refusal("protocol", str(exc))
        except Exception as exc:  # noqa: BLE001  (hostile input must never take the receiver down)
            return Refusal("protocol", f"{type(exc).__name__}: {exc}"[:500])
        return None

    def _refused(self, sock: socket.socket, refusal: Refusal) -> None:
        """Log (once per peer and reason), count, and tell the sender why; the caller closes."""
        try:
            host = str(sock.getpeername()[0])
        except (OSError, IndexError):
            host = "?"
        if refusal.party is not None and refusal.job is None:
            refusal.job = self._job  # past the handshake: the connection's job
        self._refusals.record(host, refusal)
        self._counters.refused(refusal.reason)
        try:
            wire.send_control(sock, wire.REFUSE, {"reason": refusal.reason,
                                                  "detail": refusal.detail},
                              timeout=self._limits.frame_timeout_s)
            _drain(sock)
        except (OSError, ValueError):
            pass


def _drain(sock: socket.socket) -> None:
    """Half-close, then read (bounded) what the sender still streams, so the REFUSE
    just sent is not destroyed by a reset and the sender fails fast."""
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


def tune(sock: socket.socket) -> None:
    """No Nagle delay; TCP keepalive so a vanished peer's connection ends."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def tls_handshake(ctx: ssl.SSLContext, raw: socket.socket, deadline: float) -> ssl.SSLSocket:
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
