"""The sending end of the channel, hosted in the driver on its own event-loop thread.

A value is encoded once (the typed codec, fed/transport/payload.py: array memory out
of band, no copy) and streamed as DATA frames. A broken connection is retried with backoff within
the send timeout; the receiver drops the duplicates a retry may cause. Each peer
has its own worker threads (`connections_per_peer` of them), so a slow peer never
delays sends to the others, and control frames (BYE, NOTICE, startup PINGs) and
heartbeats have threads of their own. The sender knows nothing of Ray or of the
receiver: the transport gives it callbacks (`SenderHooks`).
"""
from __future__ import annotations

import asyncio
import queue
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fed._log import party_logger
from fed.audit import AuditLog, payload_digest
from fed.errors import (
    FedEgressDenied,
    FedError,
    FedLimitError,
    FedPeerUnavailableError,
    FedRefusedError,
    FedSerializationError,
    FedTransportError,
    refused_error,
    remote_error_from,
)
from fed.transport import payload, wire
from fed.transport.base import MessageKey
from fed.transport.limits import ReceiverBusy, check_advertised
from fed.transport.metrics import ChannelMetrics
from fed.transport.proof import hello_proof
from fed.transport.retry import with_retries
from fed.transport.threads import WorkerThreads

HEARTBEAT_INTERVAL_S = 1.0
_NETWORK_ERRORS = (OSError, wire.PeerClosed, wire.ProtocolError)


def _transient(exc: BaseException) -> bool:
    """Worth another attempt: the network, or a receiver of the same job not running yet."""
    if isinstance(exc, FedRefusedError):
        return exc.reason in ("job_not_running", "busy")
    return isinstance(exc, _NETWORK_ERRORS)


@dataclass
class SenderHooks:
    """What the sender tells (and asks) the rest of its party; all run on the sender's loop."""

    local_status: Callable[[dict], Awaitable[dict]]  # issued -> {peer: [[ordinal, consumer]]}
    peer_lost: Callable[[str, str], Awaitable[None]]
    peer_back: Callable[[str], Awaitable[None]]
    send_failed: Callable[[FedError], None]  # must not block

    @classmethod
    def detached(cls) -> SenderHooks:
        """For a sender with no party around it (tools, tests): nothing to tell."""

        async def nothing_waited(_issued: dict) -> dict:
            return {}

        async def ignore(*_args: Any) -> None:
            return None

        return cls(nothing_waited, ignore, ignore, lambda _error: None)


class _Connection:
    """One authenticated stream to a peer's receiver."""

    def __init__(self, sock: socket.socket, limits: dict | None = None) -> None:
        self.sock = sock
        self.limits = limits or {}  # what the receiver advertised in WELCOME

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class SenderProxy:
    """One per party and job. Pushes values to peers; watches that peers stay alive."""

    def __init__(
        self,
        party: str,
        job: str,
        addresses: dict[str, tuple[str, int]],
        tls: Any | None,
        comm: dict[str, Any],
        hooks: SenderHooks | None = None,
        metrics: ChannelMetrics | None = None,
    ) -> None:
        self._party, self._job = party, job
        self._metrics = metrics or ChannelMetrics.off()
        self._hooks = hooks or SenderHooks.detached()
        self._log = party_logger(party, job)
        self._addresses = {p: a for p, a in addresses.items() if p != party}
        peers = list(self._addresses)
        self._read_settings(comm)
        self._set_up_security(tls, addresses, peers, comm)
        self._idle: dict[str, queue.SimpleQueue] = {p: queue.SimpleQueue() for p in peers}
        # Per-peer data threads: a slow or dead peer holds only its own.
        self._data = {p: WorkerThreads(f"fed-send-{p}", int(comm["connections_per_peer"])) for p in peers}
        self._control = WorkerThreads("fed-control", 2 * len(peers) + 1)
        self._beats = WorkerThreads("fed-heartbeat", len(peers))
        self._closed = threading.Event()
        self._lock = threading.Lock()  # counters below are updated from worker threads
        self._sent_values: dict[str, int] = {}
        self._sent_bytes: dict[str, int] = {}
        self._retries = self._refused = self._failed = 0
        self._last_seen: dict[str, float] = {}
        self._next_ordinal: dict[str, int] = {}  # per peer: above every ordinal sent to it
        self._heartbeat_errors: dict[str, str] = {}  # last heartbeat failure per peer
        self._ever_seen: set[str] = set()  # peers that answered at least once
        self._undelivered: dict[str, dict[int, dict]] = {}  # peer -> ordinal -> key
        self._lost: set[str] = set()
        self._finished: set[str] = set()  # peers whose BYE reached our receiver
        self._heartbeat: asyncio.Task | None = None
        self._failure_notices: set[asyncio.Task] = set()  # send_failed notices in flight

    def _read_settings(self, comm: dict[str, Any]) -> None:
        """The channel settings (cross_silo_comm) the sender uses, once."""
        self._job_secret: bytes | None = comm.get("job_secret")
        self._timeout_s = comm["timeout_in_ms"] / 1000.0
        self._chunk = int(comm["chunk_size_in_bytes"])
        self._max_message = comm.get("messages_max_size_in_bytes")
        self._expose_trace = bool(comm.get("expose_error_trace"))
        self._policy: payload.WirePolicy = comm.get("wire_policy") or payload.WirePolicy()
        self._peer_timeout_s = float(comm["peer_timeout_s"])
        self._startup_timeout_s = float(comm["startup_timeout_s"])

    def _set_up_security(self, tls: Any | None, addresses: dict[str, tuple[str, int]],
                         peers: list[str], comm: dict[str, Any]) -> None:
        """TLS contexts and peer identity checks, the egress allowlist, the audit log."""
        from fed.transport.tls import client_context

        # One context per peer: with per-party CAs each trusts only that peer's CA.
        self._ssl: dict[str, ssl.SSLContext] | None = (
            {p: client_context(tls, p) for p in peers} if tls is not None else None
        )
        self._identity = None
        if tls is not None:
            from fed.transport.identity import IdentityVerifier

            self._identity = IdentityVerifier(tls, addresses, self._log)
        allowed = comm.get("egress_allowed_parties")
        self._egress_allowed = frozenset(allowed) if allowed is not None else None
        self._audit = AuditLog(comm["audit_log"]) if comm.get("audit_log") else None

    # ---- called by the transport (on the sender's loop) ------------------------------------

    async def send(self, key_dict: dict[str, Any], wrapped: list) -> dict[str, Any]:
        """Wait for the value (or the failure) behind `wrapped[0]`, push it, return the ack."""
        key = MessageKey.from_dict(key_dict)
        self._next_ordinal[key.dst] = max(self._next_ordinal.get(key.dst, 0), key.ordinal + 1)
        self._undelivered.setdefault(key.dst, {})[key.ordinal] = key_dict
        try:
            return await self._send(key, wrapped)
        finally:
            self._undelivered[key.dst].pop(key.ordinal, None)

    async def _send(self, key: MessageKey, wrapped: list) -> dict[str, Any]:
        try:
            value = await wrapped[0]
            kind = "value"
        except Exception as exc:  # the producing task failed: push an error envelope
            value = remote_error_from(exc, self._party, key.producer_call, self._expose_trace)
            kind = "error"
        ready_at = time.monotonic()  # the value's latency counts from here (queueing included)
        try:
            return await self._data[key.dst].run(self._push, key, kind, value, ready_at)
        except FedError as exc:
            text = f"party {self._party!r} could not send {key.producer()} to {key.dst!r}: {exc}"
            self._count_failure()
            self._log.error("%s", text)
            if key.dst not in self._finished and key.dst not in self._lost:
                # The consumer's barrier fails now rather than at heartbeat loss; bye()
                # waits for these notices (a value refused here, before it left, would
                # otherwise be waited for forever once our BYE says we are done).
                notice = {"kind": "send_failed", "key": key.to_dict(), "text": text}
                task = asyncio.get_running_loop().create_task(
                    self.notify(key.dst, notice, self._timeout_s))
                self._failure_notices.add(task)
                task.add_done_callback(self._failure_notices.discard)
            self._hooks.send_failed(exc)  # the typed error (identity, limit, ...) as raised
            raise

    def _count_failure(self) -> None:
        with self._lock:
            self._failed += 1

    async def notify(self, peer: str, notice: dict[str, Any], retry_s: float = 0.0) -> None:
        """Deliver a control notice (e.g. a divergence report) to `peer`, best effort,
        retrying for `retry_s` (a peer may still be starting)."""
        deadline = time.monotonic() + retry_s
        try:
            await self._control.run(self._notice_until, peer, notice, deadline)
        except Exception as exc:
            self._log.warning("could not deliver a notice to %r: %s", peer, exc)

    def _notice_until(self, peer: str, notice: dict[str, Any], deadline: float) -> None:
        def abort(_exc: BaseException) -> None:
            if peer in self._finished or peer in self._lost or self._closed.is_set():
                raise FedPeerUnavailableError(peer, "finished, lost, or we are stopping")

        with_retries(lambda: self._control_frame(peer, wire.NOTICE, notice, 5.0),
                     deadline=deadline, transient=_transient, abort=abort,
                     first_delay_s=0.2, max_delay_s=1.0)

    def peer_finished(self, peer: str) -> None:
        """`peer` said BYE: stop watching it, fail what we still owe it, send it no BYE."""
        if peer in self._addresses and peer not in self._finished:
            self._finished.add(peer)
            self._log.debug("party %r finished", peer)

    async def ping_all(self, timeout_s: float) -> dict[str, str]:
        """Wait until every peer answers a PING. Returns {peer: why} for the peers that did
        not answer in time or refused us (a refusal other than a job still ending is final)."""
        deadline = time.monotonic() + timeout_s
        results = await asyncio.gather(
            *[self._control.run(self._ping_until, p, deadline) for p in self._addresses]
        )
        return {p: why for p, why in zip(self._addresses, results) if why}

    def _ping_until(self, peer: str, deadline: float) -> str:
        """'' once `peer` answers a PING; else why not, at the deadline."""
        try:
            with_retries(lambda: self._ping(peer, 2.0), deadline=deadline, transient=_transient,
                         first_delay_s=0.2, max_delay_s=0.5)
            return ""
        except FedRefusedError as exc:
            return f"refused: {exc.detail}"
        except Exception as exc:
            return str(exc) or type(exc).__name__

    async def start_heartbeats(self) -> None:
        """Watch every peer; report one that stays silent past the peer timeout."""
        now = time.monotonic()
        self._last_seen = {p: now for p in self._addresses}
        self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_loop())

    async def bye(self, next_ordinals: dict[str, int], deadline: float) -> None:
        """Tell each peer where our channel to it ends, so it never waits for more. One
        attempt for a peer that answered before (if it is gone, it finished or died); a
        peer that never answered may still be starting: retry it until `deadline`. No BYE
        to a peer that already finished or is lost."""
        if self._failure_notices:  # delivered before BYE, bounded by the deadline
            await asyncio.wait(list(self._failure_notices),
                               timeout=max(0.0, deadline - time.monotonic()))
        peers = [p for p in self._addresses if p not in self._lost and p not in self._finished]
        await asyncio.gather(*[
            self._control.run(self._bye_one, p,
                              max(next_ordinals.get(p, 0), self._next_ordinal.get(p, 0)),
                              time.monotonic() if p in self._ever_seen else deadline)
            for p in peers
        ])

    async def stop(self) -> None:
        self._closed.set()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for idle in self._idle.values():
            while True:
                try:
                    idle.get_nowait().close()
                except queue.Empty:
                    break
        for workers in (*self._data.values(), self._control, self._beats):
            workers.close()

    async def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "sent_values": dict(self._sent_values),
                "sent_bytes": dict(self._sent_bytes),
                "retries": self._retries,
                "refused": self._refused,
                "failed": self._failed,
                "lost_peers": sorted(self._lost),
                "finished_peers": sorted(self._finished),
                "heartbeat_errors": dict(self._heartbeat_errors),
            }

    # ---- internals (worker threads) --------------------------------------------------------

    def _check_peer(self, key: MessageKey) -> None:
        """Give up on a send at once when its peer can no longer take it."""
        if key.dst in self._finished:
            raise FedPeerUnavailableError(
                key.dst, f"finished without consuming value #{key.ordinal} ({key.producer()})"
            )
        if key.dst in self._lost:
            raise FedPeerUnavailableError(key.dst, f"lost while sending {key.producer()}")

    def _serialize(self, key: MessageKey, value: Any) -> tuple[str, list]:
        if self._egress_allowed is not None and key.dst not in self._egress_allowed:
            raise FedEgressDenied(
                f"party {self._party!r} may not send {key.producer()} to {key.dst!r}: not in "
                f"config['egress']['allowed_parties'] {sorted(self._egress_allowed)}"
            )
        try:
            return payload.pack(value, self._policy)
        except FedSerializationError as exc:
            raise FedSerializationError(
                f"cannot send {key.producer()} to party {key.dst!r}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 (a user codec may raise anything)
            raise FedSerializationError(
                f"cannot serialize {key.producer()} for party {key.dst!r}: {exc}"
            ) from None

    def use_codecs(self, codecs: Any) -> None:
        """Encode with these user codecs from now on (fed.register_codec after fed.init)."""
        self._policy = self._policy.with_codecs(codecs)

    def _push(self, key: MessageKey, kind: str, value: Any, ready_at: float) -> dict[str, Any]:
        """Check the perimeter, serialize once, stream with retries, audit the outcome."""
        self._check_peer(key)
        try:
            fmt, parts = self._serialize(key, value)
        except FedEgressDenied:
            self._audit_record(key, kind, "denied", 0, None)
            raise
        sizes = [memoryview(p).nbytes for p in parts]
        total = sum(sizes)
        if self._max_message is not None and total > self._max_message:
            raise FedLimitError(
                "too_large",
                f"{key.producer()} is {total} bytes, above messages_max_size_in_bytes="
                f"{self._max_message}; raise the limit in config['cross_silo_comm']",
            )
        header = wire.encode_control(
            wire.MSG, {"key": key.to_dict(), "kind": kind, "format": fmt, "sizes": sizes}
        )
        digest = payload_digest(parts) if self._audit is not None else None
        attempts = 0  # bytes leave once per attempt (for the audit log)

        def use(conn: _Connection) -> dict[str, Any]:
            nonlocal attempts
            check_advertised(conn.limits, key.dst, len(header) - wire.HEAD_SIZE, sizes, self._chunk)
            attempts += 1
            wire.send_value(conn.sock, header, parts, self._chunk)
            reply = self._reply(conn)
            if reply.get("_refused") and reply.get("reason") == "busy":
                conn.close()
                raise ReceiverBusy(f"{key.dst!r} is busy: {reply.get('detail', '')}")
            return reply

        self._audit_ahead(key, kind, total, digest)
        status = "failed"
        try:
            reply = self._send_with_retries(key, use)
            if reply.get("_refused"):
                status = "refused"
                self._count_refused(key.dst, str(reply.get("reason", "?")))
                raise refused_error(reply.get("reason", "?"), reply.get("detail", ""))
            status = "duplicate" if reply.get("duplicate") else "sent"
        finally:
            self._audit_record(key, kind, status, total, digest, attempts=attempts)
        self._seen(key.dst)  # an ACK is proof of life too
        with self._lock:
            self._sent_values[key.dst] = self._sent_values.get(key.dst, 0) + 1
            self._sent_bytes[key.dst] = self._sent_bytes.get(key.dst, 0) + total
        self._metrics.sent(key.dst, total, time.monotonic() - ready_at)
        return {"bytes": total, "duplicate": bool(reply.get("duplicate"))}

    def _count_refused(self, peer: str, reason: str) -> None:
        with self._lock:
            self._refused += 1
        self._metrics.send_refused(peer, reason)

    def _seen(self, peer: str) -> None:
        self._last_seen[peer] = time.monotonic()
        self._ever_seen.add(peer)

    def _send_with_retries(self, key: MessageKey, use) -> dict[str, Any]:
        """The deadline starts here, on this peer's own thread: time queued behind other
        sends to the peer does not count against timeout_in_ms."""
        deadline = time.monotonic() + self._timeout_s

        def abort(_exc: BaseException) -> None:
            self._check_peer(key)
            if self._closed.is_set():
                raise FedTransportError(f"shut down while sending to {key.dst!r}")

        def retried(_exc: BaseException) -> None:
            with self._lock:
                self._retries += 1
            self._metrics.retried(key.dst)

        try:
            return with_retries(lambda: self._with_connection(key.dst, use, deadline),
                                deadline=deadline, transient=_transient, abort=abort,
                                on_retry=retried)
        except _NETWORK_ERRORS as exc:
            raise FedTransportError(
                f"gave up sending to {key.dst!r} after {self._timeout_s:.0f} s "
                f"(timeout_in_ms): {exc}"
            ) from None

    def _audit_ahead(self, key: MessageKey, kind: str, nbytes: int,
                     digest: str | None) -> None:
        """The `sending` record, on disk before any byte may leave; if it cannot be
        written the value does not leave (fed/audit.py)."""
        if self._audit is None:
            return
        try:
            self._audit.record(durable=True, **self._audit_fields(key, kind, nbytes, digest),
                               status="sending")
        except OSError as exc:
            raise FedEgressDenied(
                f"{key.producer()} was not sent to {key.dst!r}: the egress audit log "
                f"{self._audit.path} could not be written ({exc}), and a value leaves only "
                "once its audit record is on disk. Free the disk or fix the path in "
                "config['egress']['audit_log']"
            ) from None

    def _audit_record(self, key: MessageKey, kind: str, status: str, nbytes: int,
                      digest: str | None, **extra: Any) -> None:
        if self._audit is None:
            return
        try:
            self._audit.record(**self._audit_fields(key, kind, nbytes, digest), status=status,
                               **extra)
        except OSError as exc:  # the `sending` record already names the value; be loud
            self._log.error("could not write the egress audit log %s: %s (record: %s %s to %r)",
                            self._audit.path, exc, status, key.producer(), key.dst)

    @staticmethod
    def _audit_fields(key: MessageKey, kind: str, nbytes: int,
                      digest: str | None) -> dict[str, Any]:
        return dict(job=key.job, src=key.src, dst=key.dst, call=key.producer_call,
                    call_seq=key.producer_seq, consumer=key.consumer_call, ordinal=key.ordinal,
                    kind=kind, bytes=nbytes, sha256=digest)

    def _reply(self, conn: _Connection) -> dict[str, Any]:
        ftype, body = wire.read_control(conn.sock, 1024 * 1024)
        if ftype == wire.REFUSE:
            body["_refused"] = True
            return body
        if ftype not in (wire.ACK, wire.PONG):
            raise wire.ProtocolError(f"expected ACK, got {wire.NAMES.get(ftype, ftype)}")
        return body

    def _with_connection(self, peer: str, use, deadline: float):
        """Run `use(conn)` on an idle or new connection; discard it if it breaks."""
        try:
            conn = self._idle[peer].get_nowait()
        except queue.Empty:
            conn = self._connect(peer, max(0.5, deadline - time.monotonic()))
        try:
            result = use(conn)
        except BaseException:
            conn.close()
            raise
        if result.get("_refused") or self._closed.is_set():
            conn.close()  # the receiver closes after a refusal
        else:
            self._idle[peer].put(conn)
        return result

    def _connect(self, peer: str, timeout_s: float) -> _Connection:
        host, port = self._addresses[peer]
        sock = socket.create_connection((host, port), timeout=min(timeout_s, 10.0))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock = self._ssl[peer].wrap_socket(sock, server_side=False, server_hostname=host)
                # The server must be the party we meant to reach, not just anyone the CA knows.
                self._identity.check(sock.getpeercert(binary_form=True), peer, as_server=True)
            wire.send_control(sock, wire.HELLO, self._hello(peer))
            ftype, body = wire.read_control(sock, 64 * 1024)
            if ftype == wire.REFUSE:
                self._count_refused(peer, str(body.get("reason", "?")))
                raise refused_error(str(body.get("reason", "?")), str(body.get("detail", "")))
            if ftype != wire.WELCOME:
                raise wire.ProtocolError(f"expected WELCOME, got {wire.NAMES.get(ftype, ftype)}")
            sock.settimeout(self._timeout_s)  # a stalled stream fails and is retried
            limits = body.get("limits")
            return _Connection(sock, limits if isinstance(limits, dict) else None)
        except BaseException:
            sock.close()
            raise

    def _hello(self, peer: str) -> dict[str, Any]:
        hello = {"proto": wire.PROTOCOL, "job": self._job, "src": self._party, "dst": peer}
        if self._job_secret is not None:
            hello["proof"] = hello_proof(self._job_secret, self._party, peer, self._job)
        return hello

    def _control_frame(self, peer: str, ftype: int, body: dict, timeout_s: float) -> dict:
        """One control frame on a fresh connection: never queued behind a data transfer."""
        conn = self._connect(peer, timeout_s)
        try:
            conn.sock.settimeout(timeout_s)
            wire.send_control(conn.sock, ftype, body)
            reply = self._reply(conn)
        finally:
            conn.close()
        if reply.get("_refused"):
            raise refused_error(str(reply.get("reason", "?")), str(reply.get("detail", "")))
        return reply

    def _ping(self, peer: str, timeout_s: float) -> None:
        self._control_frame(peer, wire.PING, {}, timeout_s)
        self._seen(peer)

    def _bye_one(self, peer: str, next_ordinal: int, deadline: float) -> None:
        body = {"sent": next_ordinal}  # ordinals below this were sent (or vetoed)
        try:
            with_retries(lambda: self._control_frame(peer, wire.BYE, body, 5.0),
                         deadline=deadline, transient=_transient,
                         abort=lambda _e: self._bye_abort(peer), first_delay_s=0.2,
                         max_delay_s=0.5)
        except Exception as exc:  # the peer may have finished already
            self._log.debug("BYE to %r not delivered: %s", peer, exc)

    def _bye_abort(self, peer: str) -> None:
        if peer in self._finished:
            raise FedPeerUnavailableError(peer, "finished")

    # ---- heartbeats (on the loop; PINGs on the heartbeat threads) ---------------------------

    def _beat(self, conns: dict, peer: str, status: dict[str, Any], timeout_s: float) -> bool:
        """One PING on the peer's heartbeat connection; False (and the reason kept) on failure."""
        conn = conns.get(peer)
        try:
            if conn is None:
                conn = conns[peer] = self._connect(peer, timeout_s)
            conn.sock.settimeout(timeout_s)
            wire.send_control(conn.sock, wire.PING, status)
            ftype, _ = wire.read_control(conn.sock, 1024)
            return ftype == wire.PONG
        except Exception as exc:
            self._heartbeat_errors[peer] = str(exc) or type(exc).__name__
            if conn is not None:
                conn.close()
            conns[peer] = None
            return False

    def _status_for(self, peer: str, waiting: dict) -> dict[str, Any]:
        """What a PING carries: our next ordinal to the peer, what we wait for from it, and
        the values we are about to send it (the peer uses these to detect diverged code)."""
        pending = sorted(self._undelivered.get(peer, {}).items())[:32]
        return {
            "issued": self._next_ordinal.get(peer, 0),
            "waiting": waiting.get(peer, [])[:32],
            "pending": [k for _o, k in pending],
        }

    async def _heartbeat_loop(self) -> None:
        """PING every live peer each second. A peer never seen yet gets `startup_timeout_s`;
        a peer that finished is no longer watched."""
        conns: dict[str, _Connection | None] = {}
        started = time.monotonic()
        # Generous per-beat timeouts: a loaded machine must not look like a dead peer.
        beat_timeout = max(2.0, self._peer_timeout_s / 3)
        try:
            while not self._closed.is_set():
                try:
                    waiting = await asyncio.wait_for(
                        self._hooks.local_status(dict(self._next_ordinal)), beat_timeout)
                except Exception:
                    waiting = {}
                peers = [p for p in self._addresses if p not in self._finished]
                results = await asyncio.gather(*[
                    self._beats.run(self._beat, conns, p, self._status_for(p, waiting),
                                    beat_timeout)
                    for p in peers
                ])
                for peer, ok in zip(peers, results):
                    await self._after_beat(peer, ok, started)
                await asyncio.sleep(HEARTBEAT_INTERVAL_S)
        finally:
            for conn in conns.values():
                if conn is not None:
                    conn.close()

    async def _after_beat(self, peer: str, ok: bool, started: float) -> None:
        if ok:
            self._seen(peer)
            if peer in self._lost:
                self._lost.discard(peer)
                self._log.info("party %r answers again", peer)
                await self._hooks.peer_back(peer)
            return
        if peer in self._finished or peer in self._lost:
            return  # its BYE may have arrived while this beat failed
        seen = peer in self._ever_seen
        limit = self._peer_timeout_s if seen else self._startup_timeout_s
        silent = time.monotonic() - (self._last_seen[peer] if seen else started)
        if silent <= limit:
            return
        self._lost.add(peer)
        self._metrics.peer_lost(peer)
        self._log.error("party %r has not answered for %.1f s", peer, silent)
        what = "peer_timeout_s" if seen else "startup_timeout_s"
        await self._hooks.peer_lost(
            peer,
            f"no answer for {silent:.1f} s ({what}={limit:g}); the process may have died, "
            "not started, or the network between the parties is cut. Last error: "
            f"{self._heartbeat_errors.get(peer, 'none')}",
        )
