"""The production transport: a receiver and a sender Ray actor per party, TCP(+TLS) between.

Sends and receive barriers are actor calls, so they run inside this party's Ray
cluster; only our framed stream (docs/protocol.md) crosses the boundary.
"""
from __future__ import annotations

import time
from typing import Any

import ray

from fed.config import FedConfig
from fed.errors import FedError, FedPeerUnavailableError
from fed.transport.base import MessageKey, Transport
from fed.transport.receiver import ReceiverProxy
from fed.transport.sender import SenderProxy

_PRUNE_EVERY = 256


def receiver_name(job: str, party: str) -> str:
    return f"fed-receiver/{job}/{party}"


def sender_name(job: str, party: str) -> str:
    return f"fed-sender/{job}/{party}"


class TcpTransport(Transport):
    """Drives the two proxy actors of this party from the driver."""

    def __init__(self, config: FedConfig) -> None:
        self._config = config
        self._receiver = None
        self._sender = None
        self._pending: list = []
        self._sent_counts: dict[str, int] = {}

    def start(self) -> None:
        cfg = self._config
        comm = cfg.comm
        me = cfg.parties[cfg.party]
        concurrency = comm.max_concurrency or 10000
        common = dict(num_cpus=0, max_concurrency=concurrency, max_restarts=0)
        self._receiver = ray.remote(ReceiverProxy).options(
            name=receiver_name(cfg.job_name, cfg.party),
            resources=comm.recv_resource_label,
            **common,
        ).remote(
            cfg.party,
            cfg.job_name,
            list(cfg.parties),
            me.listen.host,
            me.listen.port,
            cfg.tls,
            comm.serializing_allowed_list,
            comm.messages_max_size_in_bytes,
            comm.chunk_size_in_bytes,
        )
        addresses = {p: (a.address.host, a.address.port) for p, a in cfg.parties.items()}
        comm_dict = {
            "timeout_in_ms": comm.timeout_in_ms,
            "chunk_size_in_bytes": comm.chunk_size_in_bytes,
            "messages_max_size_in_bytes": comm.messages_max_size_in_bytes,
            "expose_error_trace": comm.expose_error_trace,
            "peer_timeout_s": comm.peer_timeout_s,
            "connections_per_peer": comm.connections_per_peer,
        }
        self._sender = ray.remote(SenderProxy).options(
            name=sender_name(cfg.job_name, cfg.party),
            resources=comm.send_resource_label,
            **common,
        ).remote(cfg.party, cfg.job_name, addresses, cfg.tls, comm_dict)
        try:
            ray.get(self._receiver.start.remote())
        except ray.exceptions.RayTaskError as exc:
            self._kill()
            raise exc.cause if isinstance(exc.cause, FedError) else exc
        ray.get(self._sender.start_heartbeats.remote(receiver_name(cfg.job_name, cfg.party)))

    def send(self, key: MessageKey, ref: "ray.ObjectRef") -> None:
        self._sent_counts[key.dst] = self._sent_counts.get(key.dst, 0) + 1
        self._pending.append(self._sender.send.remote(key.to_dict(), [ref]))
        if len(self._pending) >= _PRUNE_EVERY:
            _done, self._pending = ray.wait(
                self._pending, num_returns=len(self._pending), timeout=0, fetch_local=False
            )

    def receive(self, key: MessageKey) -> "ray.ObjectRef":
        return self._receiver.get.remote(key.to_dict())

    def wait_for_peers(self, timeout_s: float) -> None:
        missing = ray.get(self._sender.ping_all.remote(timeout_s))
        if missing:
            details = "; ".join(f"{peer}: {why}" for peer, why in sorted(missing.items()))
            raise FedPeerUnavailableError(
                ", ".join(sorted(missing)),
                f"not ready within {timeout_s:g} s of fed.init (barrier_on_initializing): "
                f"{details}. Start every party with the same job_name and addresses, or raise "
                "config['cross_silo_comm']['startup_timeout_s']",
            )

    def stop(self, flush_timeout_s: float) -> list[BaseException]:
        """Flush sends (bounded), say BYE, stop the server. Returns the send failures seen."""
        failures: list[BaseException] = []
        if self._sender is None:
            return failures
        deadline = time.monotonic() + flush_timeout_s
        if self._pending:
            done, not_done = ray.wait(
                self._pending, num_returns=len(self._pending), timeout=flush_timeout_s,
                fetch_local=False,
            )
            for ref in done:
                try:
                    ray.get(ref)
                except Exception as exc:
                    failures.append(exc)
            if not_done:
                failures.append(
                    FedError(f"{len(not_done)} value(s) were still being sent after "
                             f"{flush_timeout_s:g} s (shutdown_flush_timeout_s) and were dropped")
                )
        self._pending = []
        try:
            remaining = max(1.0, deadline - time.monotonic())
            ray.get(self._sender.bye.remote(self._sent_counts, min(5.0, remaining)),
                    timeout=remaining + 5)
        except Exception:
            pass
        for actor in (self._sender, self._receiver):
            try:
                ray.get(actor.stop.remote(), timeout=10)
            except Exception:
                pass
        self._kill()
        return failures

    def _kill(self) -> None:
        for actor in (self._sender, self._receiver):
            if actor is not None:
                try:
                    ray.kill(actor)
                except Exception:
                    pass
        self._sender = self._receiver = None

    def stats(self) -> dict[str, Any]:
        if self._sender is None:
            return {}
        sent, received = ray.get([self._sender.stats.remote(), self._receiver.stats.remote()])
        return {"sent": sent, "received": received}
