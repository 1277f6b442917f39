"""What the receiver knows about each peer, and what it must tell them.

Peers are lost (our sender's heartbeats), finish (BYE), report failures (NOTICE) and
report what they wait for (heartbeat PINGs); from these the receiver fails the
barriers that can never be served and detects code that diverged between parties.
Notices for peers (divergence reports) and for our own sender (a peer's BYE) wait in
an outbox the driver's sender long-polls (`ReceiverProxy.next_notices`). Everything
here runs on the receiver actor's event loop.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from fed.errors import (
    FedDivergenceError,
    FedError,
    FedPeerUnavailableError,
    FedTransportError,
)
from fed.transport import wire
from fed.transport.barriers import Arrived, Barriers
from fed.transport.base import MessageKey
from fed.transport.budget import Inflight

#: Consecutive heartbeats a wait cycle must show before it counts (reporting lag).
_STUCK_HEARTBEATS = 3


class Outbox:
    """Notices for the driver's sender to deliver, taken with a long-poll."""

    def __init__(self, stopping: threading.Event) -> None:
        self._stopping = stopping
        self._notices: list[tuple[str | None, dict[str, Any]]] = []
        self._ready: asyncio.Future | None = None

    def put(self, peer: str | None, notice: dict[str, Any]) -> None:
        """Queue a notice for `peer`; the party's sender (in the driver, see tcp.py) takes
        it with `take` and delivers it, best effort: our own party has the error.
        A notice for peer None is for our own sender (e.g. a peer said BYE)."""
        self._notices.append((peer, notice))
        self.wake()

    def wake(self) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    async def take(self) -> list | None:
        """Wait for notices; None once the receiver stops."""
        while not self._notices and not self._stopping.is_set():
            self._ready = asyncio.get_running_loop().create_future()  # before start()
            await self._ready
        notices, self._notices = self._notices, []
        return notices or None


class Peers:
    """Peer status (lost, finished, failed), divergence and wait-cycle detection."""

    def __init__(self, party: str, job: str, barriers: Barriers, outbox: Outbox) -> None:
        self._party = party
        self._job = job
        self._barriers = barriers
        self._outbox = outbox
        self._finished: dict[str, int] = {}
        self._lost: dict[str, FedPeerUnavailableError] = {}
        self._peer_failed: dict[str, FedError] = {}  # a peer reported a failure (NOTICE)
        self._issued: dict[str, int] = {}  # values this party issued per peer (from our sender)
        self._stuck: dict[str, int] = {}  # consecutive heartbeats showing a wait cycle per peer

    def raise_if_hopeless(self, key: MessageKey) -> None:
        """Before a barrier waits: raise if its value can never come."""
        if self._barriers.failure is not None:
            raise self._barriers.failure
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

    def diverged(self, expected: MessageKey, got: MessageKey,
                 scope: str | None = None) -> FedDivergenceError:
        """A value joins other calls than its barrier: fail the job (or, when learnt
        from what peer `scope` announced, what depends on it) and tell the sender."""
        text = (
            f"the parties' code diverged: party {self._party!r} expected message "
            f"#{expected.ordinal} from {expected.src!r} to be {expected.producer()} consumed "
            f"by {expected.consumer()}, but {got.src!r} sent {got.producer()} for "
            f"{got.consumer()}. Every party must run the same sequence of .remote() and "
            "fed.get calls (look for code that depends on the party name)."
        )
        error = FedDivergenceError(text)
        if scope is None:
            self._barriers.fail_all(error)
        else:  # learnt from what `scope` announced: fail only what depends on it
            self._fail_peer(scope, error)
        self._outbox.put(expected.src, {"kind": "divergence", "text": text})
        return error

    def lost(self, peer: str, detail: str) -> None:
        """Our sender's heartbeats lost `peer`: fail every barrier waiting on it."""
        error = FedPeerUnavailableError(peer, detail)
        self._lost[peer] = error
        self._barriers.fail_waiting(_from(peer, error))

    def back(self, peer: str) -> None:
        self._lost.pop(peer, None)

    def waiting(self, issued: dict[str, int]) -> dict[str, list]:
        """Learn how many values this party issued to each peer; return, per peer, the
        messages our barriers still wait for (our sender's heartbeat status)."""
        self._issued = dict(issued)
        waiting: dict[str, list] = {}
        for key in self._barriers.waiting():
            waiting.setdefault(key.src, []).append([key.ordinal, key.consumer()])
        return waiting

    def on_status(self, peer: str, status: dict[str, Any]) -> None:
        """A heartbeat status from `peer`: what it waits for and what it will send."""
        parsed = _parse_status(status)
        if parsed is None:
            return  # not what our senders send: ignored
        peer_issued, peer_waits, peer_pending = parsed
        # A value the peer will send us, announced before it exists: if it is not the
        # one our barrier expects at that position, the code diverged; say so now.
        for announced in peer_pending:
            expected = self._barriers.waiting_for((peer, announced.ordinal))
            if expected is not None and not expected.same_calls(announced):
                self.diverged(expected=expected, got=announced, scope=peer)
                return
        self._check_cycle(peer, peer_issued, peer_waits)

    def _check_cycle(self, peer: str, peer_issued: int, peer_waits: list) -> None:
        """Detect a wait cycle that identical code can never produce.

        If we wait for value #j from `peer` that it has not issued yet, while `peer`
        waits for value #k from us that we have not issued, the two drivers are at
        positions the same script cannot reach at once: the code diverged, and both
        would wait forever. Held for several heartbeats to ride out reporting lag.
        """
        ours = [(k.ordinal, k) for k in self._barriers.waiting()
                if k.src == peer and k.ordinal >= peer_issued]
        theirs = [(o, d) for o, d in peer_waits if o >= self._issued.get(peer, 0)]
        if not (ours and theirs):
            self._stuck.pop(peer, None)
            return
        self._stuck[peer] = self._stuck.get(peer, 0) + 1
        if self._stuck[peer] < _STUCK_HEARTBEATS:
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
        self._outbox.put(peer, {"kind": "divergence", "text": text})

    def on_bye(self, peer: str, sent: Any) -> None:
        """`peer` finished after sending `sent` values here: barriers waiting for more
        from it can never be served."""
        if type(sent) is not int or sent < 0:
            raise wire.ProtocolError("BYE needs a non-negative integer `sent`")
        self._finished[peer] = sent
        self._outbox.put(None, {"kind": "peer_finished", "peer": peer})  # for our sender
        self._barriers.fail_waiting(
            lambda key: self._finished_error(key, sent)
            if key.src == peer and key.ordinal >= sent else None)

    def on_notice(self, peer: str, notice: dict[str, Any]) -> None:
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
        if key.well_typed() and key.src == peer and key.job == self._job:
            error = FedTransportError(f"party {peer!r} reports: {text}")
            nothing_charged = Inflight((key.src, key.ordinal), -1)
            self._barriers.on_arrival(Arrived(key, error=error), nothing_charged)

    def _fail_peer(self, peer: str, error: FedError) -> None:
        """Fail every barrier waiting on `peer`, now and later."""
        self._peer_failed.setdefault(peer, error)
        self._barriers.fail_waiting(_from(peer, error))


def _from(peer: str, error: FedError) -> Callable[[MessageKey], FedError | None]:
    """`error` for barriers waiting on a value from `peer`, None for the others."""
    return lambda key: error if key.src == peer else None


def _parse_status(status: Any) -> tuple[int, list, list] | None:
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
    if not all(k.well_typed() for k in pending):
        return None
    return issued, waits, pending
