"""The production transport: a receiver Ray actor per party, TCP(+TLS) between parties.

Receive barriers are actor calls, so the values a peer pushes land in this party's Ray
cluster; only our framed stream (docs/protocol.md) crosses the boundary. The sender
(SenderProxy: connections, retries, heartbeats) is hosted in the driver process on its
own event-loop thread rather than in a second actor: a push then costs no Ray call at
all (the driver owns the refs it sends, so awaiting them is local), and a party runs
one engine process instead of two. Measured in docs/benchmarks.md.
"""
from __future__ import annotations

import atexit
import concurrent.futures
import errno
import socket
import time
from collections.abc import Callable
from typing import Any

import ray

from fed._log import party_logger
from fed.config import FedConfig
from fed.errors import FedError, FedPeerUnavailableError
from fed.names import JOB_SECRET_ENV
from fed.transport.base import MessageKey, Transport, veto_text
from fed.transport.hosted import Hosted
from fed.transport.metrics import ChannelMetrics
from fed.transport.payload import WirePolicy
from fed.transport.placement import receiver_placement
from fed.transport.proof import job_secret_from_env
from fed.transport.receiver import ReceiverProxy
from fed.transport.sender import SenderHooks, SenderProxy

_PRUNE_EVERY = 256


def receiver_name(job: str, party: str) -> str:
    return f"fed-receiver/{job}/{party}"


def _check_listen(party: str, host: str, port: int) -> None:
    """Fail now, in fed.init, if the receiver could not bind the party's listen address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    except OSError as exc:
        raise FedError(
            f"party {party!r} cannot listen on {host}:{port}: {exc.strerror or exc}. Is "
            "another job or program using that port? Pick a free port in the addresses "
            "given to fed.init."
        ) from None
    finally:
        probe.close()


#: Each waiting receive barrier holds one of the receiver actor's call slots; the
#: heartbeat, stats and stop calls need slots too, so a small RayFed-era setting must
#: not starve them (peers would declare this party dead).
MIN_RECEIVER_CONCURRENCY = 1000
DEFAULT_RECEIVER_CONCURRENCY = 10000


def receiver_concurrency(configured: int | None) -> int:
    """The receiver actor's max_concurrency for `cross_silo_comm.max_concurrency`."""
    if configured is None:
        return DEFAULT_RECEIVER_CONCURRENCY
    return max(configured, MIN_RECEIVER_CONCURRENCY)


#: How long fed.shutdown gives the receiver to close its port (a loaded machine may
#: need seconds), and then, if it did not answer, its killed process to end.
_RECEIVER_STOP_S = 10.0


def _wait_until_dead(actor: ray.actor.ActorHandle, timeout_s: float) -> bool:
    """Wait (bounded) until a killed actor's process has ended; True if it has."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=max(0.1, deadline - time.monotonic()))
        except ray.exceptions.RayActorError:
            return True
        except Exception:
            return False
        time.sleep(0.05)
    return False


def _wait_port_free(host: str, port: int, timeout_s: float) -> bool:
    """Wait (bounded) until a server could listen on host:port again, as fed.shutdown
    promises; True at once when the address is not on this machine (another node)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
                return True
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    return True  # not ours to check here (e.g. the address is another node's)
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


class TcpTransport(Transport):
    """Drives this party's receiver actor and hosts its sender, from the driver."""

    def __init__(
        self, config: FedConfig, on_send_failed: Callable[[FedError], None] | None = None,
        codecs: Any = None,
    ) -> None:
        self._config = config
        self._on_send_failed = on_send_failed
        self._codecs = codecs
        self._receiver = None
        #: The job's failure once this party decided it (fed.get raises it from then on).
        self._failure: FedError | None = None
        self._sender = None
        self._pending: list = []
        self._start_error: BaseException | None = None

    def start(self) -> None:
        """Start the receiver actor and the hosted sender; return without waiting for the
        actor's worker process (most of fed.init's time otherwise): the listen address is
        checked here, peers retry until we listen, and a late start failure fails every
        receive barrier (see _on_receiver_started)."""
        cfg = self._config
        secret = job_secret_from_env()
        if cfg.tls is None and secret is None:
            party_logger(cfg.party, cfg.job_name).warning(
                "the channel has neither TLS nor a job secret (%s): anyone who reaches this "
                "party's port can send values as a peer, and control frames (BYE, NOTICE) "
                "from peers are ignored. Use TLS across organisations (docs/security.md).",
                JOB_SECRET_ENV)
        self._receiver = self._start_receiver(secret)
        # comm.send_resource_label has nothing to place: the sender runs in the driver.
        try:
            sender = SenderProxy(cfg.party, cfg.job_name, self._address_book(), cfg.tls,
                                 self._sender_settings(secret), self._sender_hooks(),
                                 ChannelMetrics(cfg.party))
            self._sender = Hosted(sender, "fed-sender")
        except BaseException:
            self._kill()
            raise
        self._receiver.start.remote().future().add_done_callback(self._on_receiver_started)
        self._sender.call(sender.start_heartbeats())
        self._sender.submit(self._relay_notices())
        atexit.register(self._flush_at_exit)

    def _start_receiver(self, secret: bytes | None) -> ray.actor.ActorHandle:
        """The receiver actor, on the node that owns the listen address, once that
        address is known to be bindable there."""
        cfg = self._config
        comm = cfg.comm
        me = cfg.parties[cfg.party]
        placement = receiver_placement(me.listen.host, comm.recv_resource_label)
        placement.run(_check_listen, cfg.party, me.listen.host, me.listen.port)
        return ray.remote(ReceiverProxy).options(
            name=receiver_name(cfg.job_name, cfg.party),
            resources=comm.recv_resource_label,
            scheduling_strategy=placement.strategy,  # the node owning the listen address
            num_cpus=0, max_concurrency=receiver_concurrency(comm.max_concurrency),
            max_restarts=0,
        ).remote(
            cfg.party, cfg.job_name, list(cfg.parties), me.listen.host, me.listen.port,
            cfg.tls, comm.serializing_allowed_list, comm.messages_max_size_in_bytes,
            comm.chunk_size_in_bytes,
            limits={  # receiver bounds, docs/security.md
                "max_buffered_bytes_per_peer": comm.max_buffered_bytes_per_peer,
                "max_header_bytes": comm.max_header_bytes,
                "max_frames_per_value": comm.max_frames_per_value,
            },
            job_secret=secret, tensor_device=comm.tensor_device, codecs=self._codecs,
        )

    def _address_book(self) -> dict[str, tuple[str, int]]:
        return {p: (a.address.host, a.address.port) for p, a in self._config.parties.items()}

    def _sender_settings(self, secret: bytes | None) -> dict[str, Any]:
        cfg = self._config
        comm = cfg.comm
        return {
            "job_secret": secret,
            "timeout_in_ms": comm.timeout_in_ms,
            "chunk_size_in_bytes": comm.chunk_size_in_bytes,
            "messages_max_size_in_bytes": comm.messages_max_size_in_bytes,
            "expose_error_trace": comm.expose_error_trace,
            "peer_timeout_s": comm.peer_timeout_s,
            "startup_timeout_s": comm.startup_timeout_s,
            "connections_per_peer": comm.connections_per_peer,
            "egress_allowed_parties": cfg.egress.allowed_parties,  # docs/security.md
            "audit_log": cfg.egress.audit_log,
            "wire_policy": WirePolicy.from_config(comm.serializing_allowed_list,
                                                  comm.tensor_device, self._codecs),
        }

    def _sender_hooks(self) -> SenderHooks:
        """The sender's view of this party: it reaches our receiver only through these."""

        async def local_status(issued: dict) -> dict:
            status = await self._receiver.heartbeat_status.remote(issued)
            if self._failure is None:  # a decision the driver has not seen an error of
                self._failure = await self._receiver.job_failure.remote()
            return status

        async def peer_lost(peer: str, detail: str) -> None:
            await self._receiver.peer_lost.remote(peer, detail)

        async def peer_back(peer: str) -> None:
            await self._receiver.peer_back.remote(peer)

        def send_failed(error: FedError) -> None:
            if self._on_send_failed is not None:
                self._on_send_failed(error)

        return SenderHooks(local_status, peer_lost, peer_back, send_failed)

    def _flush_at_exit(self) -> None:
        """A driver that ends without fed.shutdown still delivers what it sent, including
        values that become ready during this flush (bounded): the sender's worker threads
        are its own, not an executor that interpreter exit has already closed."""
        pending = [f for f in self._pending if not f.done()]
        if pending:
            limit = min(self._config.comm.shutdown_flush_timeout_s, 10.0)
            concurrent.futures.wait(pending, timeout=limit)

    def set_codecs(self, codecs: Any) -> None:
        self._codecs = codecs
        if self._sender is not None:
            self._sender.obj.use_codecs(codecs)
        if self._receiver is not None:
            ray.get(self._receiver.set_codecs.remote(codecs))

    def send(self, key: MessageKey, ref: ray.ObjectRef) -> None:
        self._pending.append(self._sender.submit(self._sender.obj.send(key.to_dict(), [ref])))
        if len(self._pending) >= _PRUNE_EVERY:
            self._pending = [f for f in self._pending if not f.done()]

    def vetoed(self, key: MessageKey, reason: str) -> None:
        notice = {"kind": "send_failed", "key": key.to_dict(), "text": veto_text(key, reason)}
        retry_s = self._config.comm.timeout_in_ms / 1000.0  # as long as a send would try
        self._pending.append(self._sender.submit(self._sender.obj.notify(key.dst, notice, retry_s)))

    async def _relay_notices(self) -> None:
        """Deliver the notices our receiver has for peers (e.g. a divergence report), and
        tell the sender which peers said BYE (notices addressed to no peer)."""
        while self._receiver is not None:
            try:
                notices = await self._receiver.next_notices.remote()
            except Exception:
                return  # the receiver stopped
            if not notices:
                return
            for peer, notice in notices:
                if peer is None:
                    if notice.get("kind") == "peer_finished":
                        self._sender.obj.peer_finished(str(notice.get("peer")))
                    continue
                await self._sender.obj.notify(peer, notice)

    def _on_receiver_started(self, fut: concurrent.futures.Future) -> None:
        exc = fut.exception()
        if exc is None or self._receiver is None:
            return
        if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, FedError):
            exc = exc.cause
        self._start_error = exc
        try:
            self._receiver.fail.remote(exc if isinstance(exc, FedError) else FedError(str(exc)))
        except Exception:
            pass

    def receive(self, key: MessageKey) -> ray.ObjectRef:
        if self._start_error is not None:
            raise self._start_error
        return self._receiver.get.remote(key.to_dict())

    def wait_for_peers(self, timeout_s: float) -> None:
        missing = self._sender.call(self._sender.obj.ping_all(timeout_s))
        if missing:
            details = "; ".join(f"{peer}: {why}" for peer, why in sorted(missing.items()))
            raise FedPeerUnavailableError(
                ", ".join(sorted(missing)),
                f"not ready within {timeout_s:g} s of fed.init (barrier_on_initializing): "
                f"{details}. Start every party with the same job_name and addresses, or raise "
                "config['cross_silo_comm']['startup_timeout_s']",
            )

    def stop(
        self,
        flush_timeout_s: float,
        *,
        next_ordinals: dict[str, int] | None = None,
        aborted: bool = False,
    ) -> list[BaseException]:
        """Flush sends, say BYE (not after an aborted fed.init), stop the server, all
        within `flush_timeout_s` (plus up to 20 s to stop the receiver). Returns the
        send failures seen."""
        if self._sender is None:
            return []
        atexit.unregister(self._flush_at_exit)
        deadline = time.monotonic() + flush_timeout_s
        failures = self._flush(flush_timeout_s)
        if not aborted:
            ordinals = dict(next_ordinals or {})
            try:
                self._sender.call(self._sender.obj.bye(ordinals, deadline),
                                  timeout=max(0.0, deadline - time.monotonic()) + 6)
            except Exception:
                pass
        try:
            self._sender.call(self._sender.obj.stop(), timeout=5)
        except Exception:
            pass
        receiver = self._receiver
        try:  # closes the listening socket: the port is free once this returns
            ray.get(receiver.stop.remote(), timeout=_RECEIVER_STOP_S)
            stopped = True
        except Exception:
            stopped = False
        self._kill()
        if not stopped:  # the port is free once the actor's process is gone
            _wait_until_dead(receiver, _RECEIVER_STOP_S)
        listen = self._config.parties[self._config.party].listen
        if not _wait_port_free(listen.host, listen.port, _RECEIVER_STOP_S):
            party_logger(self._config.party, self._config.job_name).warning(
                "the receiver's port %s:%s is still in use %g s after fed.shutdown began "
                "to free it", listen.host, listen.port, _RECEIVER_STOP_S)
        return failures

    def _flush(self, timeout_s: float) -> list[BaseException]:
        failures: list[BaseException] = []
        if self._pending:
            done, not_done = concurrent.futures.wait(self._pending, timeout=timeout_s)
            for fut in done:
                exc = fut.exception() if not fut.cancelled() else None
                if exc is not None:
                    failures.append(exc)
            if not_done:
                failures.append(
                    FedError(f"{len(not_done)} value(s) were still being sent after "
                             f"{timeout_s:g} s (shutdown_flush_timeout_s) and were dropped")
                )
        self._pending = []
        return failures

    def _kill(self) -> None:
        if self._receiver is not None:
            try:
                ray.kill(self._receiver)
            except Exception:
                pass
        if self._sender is not None:
            self._sender.close()
        self._sender = self._receiver = None

    def job_failure(self) -> FedError | None:
        return self._failure

    def refresh_failure(self) -> FedError | None:
        if self._receiver is not None and self._failure is None:
            try:
                self._failure = ray.get(self._receiver.job_failure.remote(), timeout=10)
            except Exception:  # noqa: BLE001  (a gone receiver: the caller's error stands)
                pass
        return self._failure

    def stats(self) -> dict[str, Any]:
        if self._sender is None:
            return {}
        received = self._receiver.stats.remote()
        sent = self._sender.call(self._sender.obj.stats())
        received = ray.get(received)
        return {"sent": sent, "received": received}
