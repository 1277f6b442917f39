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
from fed.errors import (
    FedError,
    FedRefusedError,
    FedSerializationError,
    FedTransportError,
    remote_error_from,
)
from fed.transport import wire
from fed.transport.base import MessageKey

HEARTBEAT_INTERVAL_S = 1.0


class _Connection:
    """One authenticated stream to a peer's receiver."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

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
        tls: Optional[dict],
        comm: dict[str, Any],
    ) -> None:
        from fed.transport.tls import client_context

        self._party = party
        self._job = job
        self._addresses = {p: a for p, a in addresses.items() if p != party}
        self._ssl: Optional[ssl.SSLContext] = client_context(tls)
        self._comm = comm
        self._timeout_s = comm["timeout_in_ms"] / 1000.0
        self._chunk = int(comm["chunk_size_in_bytes"])
        self._max_message = comm.get("messages_max_size_in_bytes")
        self._expose_trace = bool(comm.get("expose_error_trace"))
        self._peer_timeout_s = float(comm["peer_timeout_s"])
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
        self._lost: set[str] = set()
        self._heartbeat: Optional[asyncio.Task] = None
        self._receiver = None

    # ---- public actor methods ------------------------------------------------------------

    async def send(self, key_dict: dict[str, Any], wrapped: list) -> dict[str, Any]:
        """Wait for the value (or the failure) behind `wrapped[0]`, push it, return the ack."""
        key = MessageKey.from_dict(key_dict)
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

    async def bye(self, counts: dict[str, int], timeout_s: float) -> None:
        """Tell each peer how many values we sent it, so it never waits for more."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *[
                loop.run_in_executor(self._pool, self._bye_one, p, counts.get(p, 0), timeout_s)
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

    async def stats(self) -> dict[str, Any]:
        return {
            "sent_values": dict(self._sent_values),
            "sent_bytes": dict(self._sent_bytes),
            "retries": self._retries,
            "refused": self._refused,
            "failed": self._failed,
            "lost_peers": sorted(self._lost),
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
            raise FedTransportError(
                f"{key.producer()} is {total} bytes, above messages_max_size_in_bytes="
                f"{self._max_message}; raise the limit in config['cross_silo_comm']"
            )
        header = wire.encode_control(
            wire.MSG, {"key": key.to_dict(), "kind": kind, "sizes": sizes}
        )
        parts = [pickled, *buffers]
        deadline = time.monotonic() + self._timeout_s
        delay = 0.05
        while True:
            try:
                reply = self._with_connection(
                    key.dst, lambda c: self._stream(c, header, parts), deadline
                )
                break
            except (OSError, wire.PeerClosed, wire.ProtocolError) as exc:
                if self._closed.is_set() or time.monotonic() + delay > deadline:
                    raise FedTransportError(
                        f"gave up sending to {key.dst!r} after {self._timeout_s:.0f} s "
                        f"(timeout_in_ms): {exc}"
                    ) from None
                self._retries += 1
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        if reply.get("_refused"):
            self._refused += 1
            raise FedRefusedError(reply.get("reason", "?"), reply.get("detail", ""))
        self._sent_values[key.dst] = self._sent_values.get(key.dst, 0) + 1
        self._sent_bytes[key.dst] = self._sent_bytes.get(key.dst, 0) + total
        return {"bytes": total, "duplicate": bool(reply.get("duplicate"))}

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
                sock = self._ssl.wrap_socket(sock, server_side=False, server_hostname=host)
            wire.send_control(
                sock,
                wire.HELLO,
                {"proto": wire.PROTOCOL, "job": self._job, "src": self._party, "dst": peer},
            )
            ftype, body = wire.read_control(sock, 64 * 1024)
            if ftype == wire.REFUSE:
                self._refused += 1
                raise FedRefusedError(body.get("reason", "?"), body.get("detail", ""))
            if ftype != wire.WELCOME:
                raise wire.ProtocolError(f"expected WELCOME, got {wire.NAMES.get(ftype, ftype)}")
            sock.settimeout(None)
            return _Connection(sock)
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

    def _bye_one(self, peer: str, sent: int, timeout_s: float) -> None:
        try:
            self._control(peer, wire.BYE, {"sent": sent}, timeout_s)
        except Exception as exc:  # the peer may have finished already
            self._log.debug("BYE to %r not delivered: %s", peer, exc)

    async def _heartbeat_loop(self) -> None:
        loop = asyncio.get_running_loop()
        conns: dict[str, Optional[_Connection]] = {p: None for p in self._addresses}
        last_error: dict[str, str] = {}

        def beat(peer: str) -> bool:
            conn = conns[peer]
            try:
                if conn is None:
                    conn = conns[peer] = self._connect(peer, HEARTBEAT_INTERVAL_S * 2)
                conn.sock.settimeout(HEARTBEAT_INTERVAL_S * 2)
                wire.send_control(conn.sock, wire.PING, {})
                ftype, _ = wire.read_control(conn.sock, 1024)
                return ftype == wire.PONG
            except Exception as exc:
                last_error[peer] = str(exc) or type(exc).__name__
                if conn is not None:
                    conn.close()
                conns[peer] = None
                return False

        while not self._closed.is_set():
            peers = list(self._addresses)
            results = await asyncio.gather(*[loop.run_in_executor(None, beat, p) for p in peers])
            now = time.monotonic()
            for peer, ok in zip(peers, results):
                if ok:
                    self._last_seen[peer] = now
                    if peer in self._lost:
                        self._lost.discard(peer)
                        await self._receiver.peer_back.remote(peer)
                elif peer not in self._lost and now - self._last_seen[peer] > self._peer_timeout_s:
                    self._lost.add(peer)
                    silent = now - self._last_seen[peer]
                    self._log.error("party %r has not answered for %.1f s", peer, silent)
                    await self._receiver.peer_lost.remote(
                        peer,
                        f"no answer for {silent:.1f} s (peer_timeout_s={self._peer_timeout_s:g}); "
                        "the process may have died or the network between the parties is cut. "
                        f"Last error: {last_error.get(peer, 'none')}",
                    )
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)
        for conn in conns.values():
            if conn is not None:
                conn.close()
