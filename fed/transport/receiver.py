"""The receiving end of the channel: a Ray actor hosting this party's TCP/TLS server.

Connection threads read frames straight into receive buffers whose memory is committed
as bytes arrive (blocking sockets release the GIL, so reading runs beside the actor's
event loop); whole values are handed to the event loop, where receive barriers (`get`)
wait for them. Every read has a deadline (handshake, frame, idle; docs/security.md)
and connections are capped per source address and per party.

This module wires the parts and serves the actor's methods: listener.py (server,
accept loop, admission, TLS, refusals), session.py (the protocol on one connection),
barriers.py (values arrived vs. barriers waiting), peers.py (peer status, divergence,
notices for peers), counters.py (figures for fed.stats).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import ssl
import threading
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from fed._log import configure_unconfigured, party_logger
from fed.errors import FedError
from fed.transport import payload
from fed.transport.barriers import Barriers
from fed.transport.base import MessageKey
from fed.transport.budget import FrameSlots, PeerBudget
from fed.transport.counters import ReceiverCounters
from fed.transport.limits import (
    SMALL_FRAME_BYTES,
    ReceiverLimits,
    RefusalLog,
    return_freed_memory,
)
from fed.transport.listener import Admission, Listener
from fed.transport.metrics import ChannelMetrics
from fed.transport.peers import Outbox, Peers
from fed.transport.session import SessionHooks, SessionServer, Terms

if TYPE_CHECKING:
    from fed.transport.identity import IdentityVerifier

#: How long a connection thread waits for the actor's event loop to take a value.
_LOOP_CALL_TIMEOUT_S = 60.0
_MIN_MAX_CHUNK = 64 * 1024 * 1024


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
        tls: Any | None,
        allowlist: Any,
        max_message_bytes: int | None,
        max_chunk_bytes: int,
        limits: dict | None = None,
        job_secret: bytes | None = None,
        tensor_device: str = "cpu",
        codecs: Any = None,
    ) -> None:
        from fed.transport.tls import server_context

        ssl_context = server_context(tls)
        # Values are checked on arrival and built where consumed (fed/transport/payload.py).
        policy = payload.WirePolicy.from_config(allowlist, tensor_device, codecs)
        log = party_logger(party, job)
        configure_unconfigured()  # in a worker process refusals must still be seen
        return_freed_memory()  # what peers make this process decode is not kept after
        receiver_limits = ReceiverLimits.from_comm(
            {**(limits or {}), "messages_max_size_in_bytes": max_message_bytes}
        )
        terms = Terms(
            party=party, job=job, peers=frozenset(parties), limits=receiver_limits,
            # DATA frames may be as large as the sender's chunk_size_in_bytes, at least
            # 64 MiB (a receiver must take what a peer with a larger chunk size sends).
            max_chunk=max(max_chunk_bytes, _MIN_MAX_CHUNK),
            identity=_identity(tls, parties, log), job_secret=job_secret,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        metrics = ChannelMetrics(party)
        self._counters = ReceiverCounters(metrics)
        self._refusals = RefusalLog(log)
        self._budget = PeerBudget(receiver_limits.max_buffered_bytes_per_peer, metrics.held)
        self._frames = FrameSlots(SMALL_FRAME_BYTES)
        # Event-loop state (touched only on the actor's loop).
        self._barriers = Barriers(self._budget, self._counters, policy)
        self._outbox = Outbox(self._stopping)
        self._peers = Peers(party, job, self._barriers, self._outbox)
        self._listener = self._listener_for(terms, (listen_host, listen_port), ssl_context, log)

    def _listener_for(self, terms: Terms, address: tuple[str, int],
                      ssl_context: ssl.SSLContext | None, log: logging.LoggerAdapter) -> Listener:
        """The server and the protocol its connection threads run."""
        admission = Admission(terms.limits)
        session = SessionServer(terms, self._session_hooks(), self._budget, self._frames,
                                admission.bind_peer, self._refusals, self._counters,
                                self._stopping, log)
        return Listener(terms.party, terms.job, address, ssl_context, terms.limits, admission,
                        session.serve, self._counters, self._refusals, self._stopping, log)

    def _session_hooks(self) -> SessionHooks:
        """What connection threads may do: each call but `seen` runs on the loop."""
        def on_loop(fn: Callable[..., Any]) -> Callable[..., Any]:
            return partial(self._call_on_loop, fn)

        return SessionHooks(
            arrival=on_loop(self._barriers.on_arrival),
            duplicate=on_loop(self._barriers.on_duplicate),
            peer_status=on_loop(self._peers.on_status),
            bye=on_loop(self._peers.on_bye),
            notice=on_loop(self._peers.on_notice),
            seen=self._barriers.seen,
            policy=lambda: self._barriers.policy,
        )

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> int:
        """Bind and listen; return the port (useful when configured as 0)."""
        self._loop = asyncio.get_running_loop()
        return self._listener.start()

    async def stop(self) -> None:
        """Close the listening socket and every connection; the port is free on return."""
        self._stopping.set()
        self._budget.close()
        self._frames.close()
        self._listener.stop()
        self._barriers.fail_waiting(
            lambda _key: FedError("rayfed shut down while this value was awaited"))
        self._outbox.wake()  # ends next_notices

    async def stats(self) -> dict[str, Any]:
        return {
            **self._counters.snapshot(),
            **self._barriers.counts(),
            "held_bytes": self._budget.held(),
            "refusals_by_reason": self._refusals.by_reason_snapshot(),
        }

    # ---- barriers --------------------------------------------------------------------

    async def get(self, key_dict: dict[str, Any]) -> Any:
        """The receive barrier: wait for the value `key` names, check it joins the same calls."""
        key = MessageKey.from_dict(key_dict)
        arrived = await self._barriers.wait(key, self._peers.raise_if_hopeless)
        if not arrived.key.same_calls(key):
            raise self._peers.diverged(expected=key, got=arrived.key)
        return self._barriers.value(arrived, key)

    async def set_codecs(self, codecs: Any) -> None:
        """The driver's user codecs (fed.register_codec), for values claimed from now on."""
        self._barriers.policy = self._barriers.policy.with_codecs(codecs)

    async def next_notices(self) -> list | None:
        """Wait for notices to deliver to peers; None once the receiver stops."""
        return await self._outbox.take()

    # ---- events from the sender proxy ------------------------------------------------

    async def peer_lost(self, peer: str, detail: str) -> None:
        """The sender's heartbeats lost `peer`: fail every barrier waiting on it."""
        self._peers.lost(peer, detail)

    async def heartbeat_status(self, issued: dict[str, int]) -> dict[str, list]:
        """Called by our sender each heartbeat: learn how many values this party issued
        to each peer; return, per peer, the messages our barriers still wait for."""
        return self._peers.waiting(issued)

    async def peer_back(self, peer: str) -> None:
        self._peers.back(peer)

    async def job_failure(self) -> FedError | None:
        """The error the job failed with in this party, once decided (else None)."""
        return self._barriers.failure

    async def fail(self, error: FedError) -> None:
        """A local failure the whole job must see (a send that could not be delivered)."""
        self._barriers.fail_all(error)

    # ---- connection threads -> loop --------------------------------------------------

    def _call_on_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` on the actor's loop from a connection thread; return its result or
        raise its exception here (never on the loop), within _LOOP_CALL_TIMEOUT_S."""
        result: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            if not result.set_running_or_notify_cancel():
                return  # the connection thread gave up waiting
            try:
                result.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001  (handed to the thread; loop carries on)
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


def _identity(tls: Any | None, parties: list[str],
              log: logging.LoggerAdapter) -> IdentityVerifier | None:
    """With TLS, the check that a peer's certificate belongs to the party it claims."""
    if tls is None:
        return None
    from fed.transport.identity import IdentityVerifier

    return IdentityVerifier(tls, parties, log)
