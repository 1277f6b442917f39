"""The sending end of the channel: a Ray actor holding a few connections per peer.

A value is serialized once (pickle protocol 5, numpy buffers out of band, no copy)
and streamed as DATA frames. A broken connection is retried with backoff within
the send timeout; the receiver drops the duplicates a retry may cause. Sends run in
a thread pool, so independent sends to one or several peers proceed in parallel.
"""
from __future__ import annotations

import asyncio
import queue
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from fed import serialization
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
from fed.transport import wire
from fed.transport.base import MessageKey
from fed.transport.limits import ReceiverBusy, check_advertised

HEARTBEAT_INTERVAL_S = 1.0


class _Connection:
    """One authenticated stream to a peer's receiver."""

    def __init__(self, sock: socket.socket, limits: Optional[dict] = None) -> None:
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
        tls: Optional[Any],
        comm: dict[str, Any],
    ) -> None:
        from fed.transport.tls import client_context

        self._party = party
        self._job = job
        self._addresses = {p: a for p, a in addresses.items() if p != party}
        # One context per peer: with per-party CAs each trusts only that peer's CA.
        self._ssl: Optional[dict[str, ssl.SSLContext]] = (
            {p: client_context(tls, p) for p in self._addresses} if tls is not None else None
        )
        self._comm = comm
        self._timeout_s = comm["timeout_in_ms"] / 1000.0
        self._chunk = int(comm["chunk_size_in_bytes"])
        self._max_message = comm.get("messages_max_size_in_bytes")
        self._expose_trace = bool(comm.get("expose_error_trace"))
        self._peer_timeout_s = float(comm["peer_timeout_s"])
        self._startup_timeout_s = float(comm["startup_timeout_s"])
        per_peer = int(comm["connections_per_peer"])
        self._idle: dict[str, queue.SimpleQueue] = {p: queue.SimpleQueue() for p in self._addresses}
        self._slots = {p: threading.BoundedSemaphore(per_peer) for p in self._addresses}
        self._pool = ThreadPoolExecutor(
            max_workers=per_peer * max(1, len(self._addresses)) + 2,
            thread_name_prefix="fed-send",
        )
        self._log = party_logger(party, job)
        self._closed = threading.Event()
        self._sent_values: dict[str, int] = {}
        self._sent_bytes: dict[str, int] = {}
        self._retries = 0
        self._refused = 0
        self._failed = 0
        self._last_seen: dict[str, float] = {}
        self._issued: dict[str, int] = {}  # send calls received per peer, in program order
        self._heartbeat_errors: dict[str, str] = {}  # last heartbeat failure per peer
        self._ever_seen: set[str] = set()  # peers that answered at least once
        self._undelivered: dict[str, dict[int, dict]] = {}  # peer -> ordinal -> key
        self._lost: set[str] = set()
        self._heartbeat: Optional[asyncio.Task] = None
        self._receiver = None
        self._identity = None
        if tls is not None:
            from fed.transport.identity import IdentityVerifier


            self._identity = IdentityVerifier(tls, addresses, self._log)
        allowed = comm.get("egress_allowed_parties")
        self._egress_allowed = frozenset(allowed) if allowed is not None else None
        self._audit = AuditLog(comm["audit_log"]) if comm.get("audit_log") else None

    # ---- public actor methods ------------------------------------------------------------

    async def send(self, key_dict: dict[str, Any], wrapped: list) -> dict[str, Any]:
        """Wait for the value (or the failure) behind `wrapped[0]`, push it, return the ack."""
        key = MessageKey.from_dict(key_dict)
        self._issued[key.dst] = self._issued.get(key.dst, 0) + 1
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
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self._push, key, kind, value)
        except FedError as exc:
            self._failed += 1
            self._log.error("sending %s to %r failed: %s", key.producer(), key.dst, exc)
            await self._fail_locally(
                FedTransportError(
                    f"party {self._party!r} could not send {key.producer()} to {key.dst!r}: {exc}"
                )
            )
            raise

    async def notify(self, peer: str, notice: dict[str, Any]) -> None:
        """Deliver a control notice (e.g. a divergence report) to `peer`, best effort."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._pool, self._control, peer, wire.NOTICE, notice, 5.0)
        except Exception as exc:
            self._log.warning("could not deliver a notice to %r: %s", peer, exc)

    async def ping_all(self, timeout_s: float) -> dict[str, str]:
        """Wait until every peer answers a PING. Returns {peer: why} for the peers that did
        not answer in time or refused us (a refusal, e.g. another job, ends the wait)."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout_s
        missing = {p: "no answer" for p in self._addresses}
        while missing and time.monotonic() < deadline:
            peers = sorted(missing)
            results = await asyncio.gather(
                *[loop.run_in_executor(self._pool, self._ping, p, 2.0) for p in peers]
            )
            for peer, (ok, why) in zip(peers, results):
                if ok:
                    del missing[peer]
                else:
                    missing[peer] = why
            if any(why.startswith("refused") for why in missing.values()):
                break
            if missing:
                await asyncio.sleep(0.2)
        return missing

    async def start_heartbeats(self, receiver_name: str) -> None:
        """Watch every peer; tell our receiver when one stays silent past the peer timeout."""
        import ray

        self._receiver = ray.get_actor(receiver_name)
        now = time.monotonic()
        self._last_seen = {p: now for p in self._addresses}
        self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_loop())

    async def bye(self, counts: dict[str, int], timeout_s: float, unseen_timeout_s: float) -> None:
        """Tell each peer how many values we sent it, so it never waits for more. One
        attempt for a peer that answered before (if it is gone, it finished or died); a
        peer that never answered may still be starting: retry it up to the longer timeout."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *[
                loop.run_in_executor(
                    self._pool, self._bye_one, p, counts.get(p, 0),
                    timeout_s, 0.0 if p in self._ever_seen else unseen_timeout_s,
                )
                for p in self._addresses
                if p not in self._lost
            ]
        )

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
        self._pool.shutdown(wait=False)  # hosted in the driver (tcp.py): free its threads

    async def stats(self) -> dict[str, Any]:
        return {
            "sent_values": dict(self._sent_values),
            "sent_bytes": dict(self._sent_bytes),
            "retries": self._retries,
            "refused": self._refused,
            "failed": self._failed,
            "lost_peers": sorted(self._lost),
            "heartbeat_errors": dict(self._heartbeat_errors),
        }

    # ---- internals -------------------------------------------------------------------------

    async def _fail_locally(self, error: FedError) -> None:
        import ray

        from fed.transport.tcp import receiver_name

        try:
            receiver = self._receiver or ray.get_actor(receiver_name(self._job, self._party))
            await receiver.fail.remote(error)
        except Exception:
            pass

    def _push(self, key: MessageKey, kind: str, value: Any) -> dict[str, Any]:
        """Check the perimeter, serialize once, stream with retries, audit the outcome."""
        if self._egress_allowed is not None and key.dst not in self._egress_allowed:
            self._audit_record(key, kind, "denied", 0, None)
            raise FedEgressDenied(
                f"party {self._party!r} may not send {key.producer()} to {key.dst!r}: not in "
                f"config['egress']['allowed_parties'] {sorted(self._egress_allowed)}"
            )
        try:
            pickled, buffers = serialization.dumps(value)
        except FedSerializationError:
            raise
        except Exception as exc:
            raise FedSerializationError(
                f"cannot serialize {key.producer()} for party {key.dst!r}: {exc}"
            ) from None
        sizes = [len(pickled)] + [b.nbytes for b in buffers]
        total = sum(sizes)
        if self._max_message is not None and total > self._max_message:
            raise FedLimitError(
                "too_large",
                f"{key.producer()} is {total} bytes, above messages_max_size_in_bytes="
                f"{self._max_message}; raise the limit in config['cross_silo_comm']",
            )
        header = wire.encode_control(
            wire.MSG, {"key": key.to_dict(), "kind": kind, "sizes": sizes}
        )
        parts = [pickled, *buffers]
        digest = payload_digest(parts) if self._audit is not None else None
        started: list[bool] = []  # set once bytes may have left (for the audit log)

        def use(conn: _Connection) -> dict[str, Any]:
            check_advertised(conn.limits, key.dst, len(header) - wire.HEAD_SIZE, sizes, self._chunk)
            started.append(True)
            reply = self._stream(conn, header, parts)
            if reply.get("_refused") and reply.get("reason") == "busy":
                conn.close()
                raise ReceiverBusy(f"{key.dst!r} is busy: {reply.get('detail', '')}")
            return reply

        status = "failed"
        try:
            reply = self._send_with_retries(key, use)
            if reply.get("_refused"):
                status = "refused"
                self._refused += 1
                raise refused_error(reply.get("reason", "?"), reply.get("detail", ""))
            status = "duplicate" if reply.get("duplicate") else "sent"
        finally:
            if started:
                self._audit_record(key, kind, status, total, digest)
        self._last_seen[key.dst] = time.monotonic()  # an ACK is proof of life too
        self._ever_seen.add(key.dst)
        self._sent_values[key.dst] = self._sent_values.get(key.dst, 0) + 1
        self._sent_bytes[key.dst] = self._sent_bytes.get(key.dst, 0) + total
        return {"bytes": total, "duplicate": bool(reply.get("duplicate"))}

    def _send_with_retries(self, key: MessageKey, use) -> dict[str, Any]:
        deadline = time.monotonic() + self._timeout_s
        delay = 0.05
        while True:
            try:
                return self._with_connection(key.dst, use, deadline)
            except (OSError, wire.PeerClosed, wire.ProtocolError) as exc:
                if key.dst in self._lost:
                    raise FedPeerUnavailableError(
                        key.dst, f"lost while sending {key.producer()}: {exc}"
                    ) from None
                if self._closed.is_set() or time.monotonic() + delay > deadline:
                    raise FedTransportError(
                        f"gave up sending to {key.dst!r} after {self._timeout_s:.0f} s "
                        f"(timeout_in_ms): {exc}"
                    ) from None
                self._retries += 1
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _audit_record(self, key: MessageKey, kind: str, status: str, nbytes: int,
                      digest: Optional[str]) -> None:
        if self._audit is None:
            return
        try:
            self._audit.record(
                job=key.job, src=key.src, dst=key.dst, call=key.producer_call,
                call_seq=key.producer_seq, consumer=key.consumer_call, ordinal=key.ordinal,
                kind=kind, bytes=nbytes, sha256=digest, status=status,
            )
        except OSError as exc:  # the bytes are gone already; make the gap loud
            self._log.error("could not write the egress audit log %s: %s (record: %s %s to %r)",
                            self._audit.path, exc, status, key.producer(), key.dst)

    def _stream(self, conn: _Connection, header: bytes, parts: list) -> dict[str, Any]:
        wire.send_value(conn.sock, header, parts, self._chunk)
        return self._reply(conn)

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
        slots = self._slots[peer]
        if not slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"no free connection to {peer!r} before the deadline")
        try:
            try:
                conn = self._idle[peer].get_nowait()
            except queue.Empty:
                conn = self._connect(peer, max(0.5, deadline - time.monotonic()))
            try:
                result = use(conn)
            except BaseException:
                conn.close()
                raise
            if result.get("_refused"):
                conn.close()  # the receiver closes after a refusal
            else:
                self._idle[peer].put(conn)
            return result
        finally:
            slots.release()

    def _connect(self, peer: str, timeout_s: float) -> _Connection:
        host, port = self._addresses[peer]
        sock = socket.create_connection((host, port), timeout=min(timeout_s, 10.0))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock = self._ssl[peer].wrap_socket(sock, server_side=False, server_hostname=host)
                # The server must be the party we meant to reach, not just anyone the CA knows.
                self._identity.check(sock.getpeercert(binary_form=True), peer, as_server=True)
            wire.send_control(
                sock,
                wire.HELLO,
                {"proto": wire.PROTOCOL, "job": self._job, "src": self._party, "dst": peer},
            )
            ftype, body = wire.read_control(sock, 64 * 1024)
            if ftype == wire.REFUSE:
                self._refused += 1
                raise refused_error(str(body.get("reason", "?")), str(body.get("detail", "")))
            if ftype != wire.WELCOME:
                raise wire.ProtocolError(f"expected WELCOME, got {wire.NAMES.get(ftype, ftype)}")
            sock.settimeout(self._timeout_s)  # a stalled stream fails and is retried
            limits = body.get("limits")
            return _Connection(sock, limits if isinstance(limits, dict) else None)
        except BaseException:
            sock.close()
            raise

    def _control(self, peer: str, ftype: int, body: dict, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s

        def use(conn: _Connection) -> dict[str, Any]:
            wire.send_control(conn.sock, ftype, body)
            return self._reply(conn)

        return self._with_connection(peer, use, deadline)

    def _ping(self, peer: str, timeout_s: float) -> tuple[bool, str]:
        try:
            conn = self._connect(peer, timeout_s)
        except FedRefusedError as exc:
            return False, f"refused: {exc.detail}"
        except (OSError, wire.PeerClosed, wire.ProtocolError) as exc:
            return False, str(exc) or type(exc).__name__
        try:
            conn.sock.settimeout(timeout_s)
            wire.send_control(conn.sock, wire.PING, {})
            ftype, _ = wire.read_control(conn.sock, 1024)
            return ftype == wire.PONG, "unexpected answer to PING"
        except (OSError, wire.PeerClosed, wire.ProtocolError) as exc:
            return False, str(exc) or type(exc).__name__
        finally:
            conn.close()

    def _bye_one(self, peer: str, sent: int, timeout_s: float, retry_for_s: float) -> None:
        deadline = time.monotonic() + retry_for_s
        while True:
            try:
                self._control(peer, wire.BYE, {"sent": sent}, timeout_s)
                return
            except (OSError, wire.PeerClosed, wire.ProtocolError) as exc:
                if time.monotonic() + 0.2 > deadline:  # the peer may have finished already
                    self._log.debug("BYE to %r not delivered: %s", peer, exc)
                    return
                time.sleep(0.2)
            except Exception as exc:
                self._log.debug("BYE to %r not delivered: %s", peer, exc)
                return

    async def _heartbeat_loop(self) -> None:
        """PING every peer each second, carrying what we wait for from it and how many
        values we issued to it (the peer uses both to detect diverged code that would
        otherwise deadlock). A peer never seen yet gets `startup_timeout_s`."""
        loop = asyncio.get_running_loop()
        conns: dict[str, Optional[_Connection]] = {p: None for p in self._addresses}
        last_error = self._heartbeat_errors
        ever_seen = self._ever_seen
        started = time.monotonic()
        # Generous per-beat timeouts: a loaded machine must not look like a dead peer.
        beat_timeout = max(2.0, self._peer_timeout_s / 3)

        def beat(peer: str, status: dict[str, Any]) -> bool:
            conn = conns[peer]
            try:
                if conn is None:
                    conn = conns[peer] = self._connect(peer, beat_timeout)
                conn.sock.settimeout(beat_timeout)
                wire.send_control(conn.sock, wire.PING, status)
                ftype, _ = wire.read_control(conn.sock, 1024)
                return ftype == wire.PONG
            except Exception as exc:
                last_error[peer] = str(exc) or type(exc).__name__
                if conn is not None:
                    conn.close()
                conns[peer] = None
                return False

        while not self._closed.is_set():
            try:
                waiting = await self._receiver.heartbeat_status.remote(dict(self._issued))
            except Exception:
                waiting = {}
            peers = list(self._addresses)
            statuses = [
                {
                    "issued": self._issued.get(p, 0),
                    "waiting": waiting.get(p, [])[:32],
                    "pending": [k for _o, k in sorted(self._undelivered.get(p, {}).items())[:32]],
                }
                for p in peers
            ]
            results = await asyncio.gather(
                *[loop.run_in_executor(None, beat, p, st) for p, st in zip(peers, statuses)]
            )
            now = time.monotonic()
            for peer, ok in zip(peers, results):
                if ok:
                    self._last_seen[peer] = now
                    ever_seen.add(peer)
                    if peer in self._lost:
                        self._lost.discard(peer)
                        self._log.info("party %r answers again", peer)
                        await self._receiver.peer_back.remote(peer)
                    continue
                limit = self._peer_timeout_s if peer in ever_seen else self._startup_timeout_s
                silent = now - (self._last_seen[peer] if peer in ever_seen else started)
                if peer not in self._lost and silent > limit:
                    self._lost.add(peer)
                    self._log.error("party %r has not answered for %.1f s", peer, silent)
                    what = "peer_timeout_s" if peer in ever_seen else "startup_timeout_s"
                    await self._receiver.peer_lost.remote(
                        peer,
                        f"no answer for {silent:.1f} s ({what}={limit:g}); the process may "
                        "have died, not started, or the network between the parties is cut. "
                        f"Last error: {last_error.get(peer, 'none')}",
                    )
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)
        for conn in conns.values():
            if conn is not None:
                conn.close()
