"""The Transport interface: send a value to a peer, wait for a value from a peer.

The driver only talks to this interface; a backend (TCP/TLS, in-process, a future
gRPC or gateway relay) is one module implementing it.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import ray

if TYPE_CHECKING:
    from fed.errors import FedError


@dataclass(frozen=True)
class MessageKey:
    """Identifies one value crossing from `src` to `dst` and says which calls it joins.

    ``ordinal`` numbers the values on the (src, dst) channel; every party computes it
    at the same program point, so it is the message's identity. The producer and
    consumer fields are the *call fingerprints* both sides compare: if they differ,
    the parties' code diverged and both get a divergence error naming the calls.
    """

    job: str
    src: str
    dst: str
    ordinal: int
    producer_seq: int
    producer_index: int
    producer_call: str
    consumer_seq: int
    consumer_call: str

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its recursive deep copy is ~10x slower (7 us vs 0.6 us),
        # on the driver's path twice per message; every field is a str or an int.
        return {name: getattr(self, name) for name in _KEY_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MessageKey:
        return cls(**data)

    def producer(self) -> str:
        return f"{self.producer_call} (call #{self.producer_seq}, return {self.producer_index})"

    def consumer(self) -> str:
        return f"{self.consumer_call} (call #{self.consumer_seq})"

    def same_calls(self, other: MessageKey) -> bool:
        return (
            self.producer_seq == other.producer_seq
            and self.producer_index == other.producer_index
            and self.producer_call == other.producer_call
            and self.consumer_seq == other.consumer_seq
            and self.consumer_call == other.consumer_call
        )

    def well_typed(self) -> bool:
        """For a key from the wire: every field hashable and of the type barriers compare."""
        counts = (self.ordinal, self.producer_seq, self.producer_index, self.consumer_seq)
        names = (self.job, self.src, self.dst, self.producer_call, self.consumer_call)
        return (all(type(n) is int and n >= 0 for n in counts)
                and all(isinstance(t, str) for t in names))


_KEY_FIELDS = tuple(f.name for f in fields(MessageKey))


def veto_text(key: MessageKey, reason: str) -> str:
    """What the consumer of a vetoed value is told (NOTICE `send_failed`)."""
    return f"value #{key.ordinal} ({key.producer()}) will not come: {reason}"


class Transport(abc.ABC):
    """What the driver needs from a channel backend."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start listening and sending; return when this party can receive."""

    @abc.abstractmethod
    def send(self, key: MessageKey, ref: ray.ObjectRef) -> None:
        """Push the value behind `ref` (when ready) to `key.dst`. Never blocks the driver."""

    @abc.abstractmethod
    def receive(self, key: MessageKey) -> ray.ObjectRef:
        """A ref that resolves to the value `key.src` pushes for `key` (the receive barrier)."""

    @abc.abstractmethod
    def wait_for_peers(self, timeout_s: float) -> None:
        """Return when every peer answers, or raise naming the missing ones."""

    @abc.abstractmethod
    def stop(
        self,
        flush_timeout_s: float,
        *,
        next_ordinals: dict[str, int] | None = None,
        aborted: bool = False,
    ) -> list[BaseException]:
        """Flush pending sends (bounded), tell peers we are done, free every resource.

        `next_ordinals` gives, per peer, the channel's next ordinal (every ordinal below
        it was sent or vetoed); `aborted` means fed.init failed: peers are not told the
        job finished. Returns the send failures seen."""

    def set_codecs(self, codecs: Any) -> None:
        """Use these user codecs (a fed.codec.UserCodecs) for values sent or claimed from
        now on; returns once the receiving side has them."""

    def vetoed(self, key: MessageKey, reason: str) -> None:
        """`key`'s value will never be sent (this party's egress policy refused it): tell
        `key.dst`, whose barrier on it would otherwise wait. Best effort, never blocks.
        A transport that also executes `key.dst` (simulation) makes its `receive(key)`
        fail as that barrier would."""

    def job_failure(self) -> FedError | None:
        """The error this party decided its job failed with, as known without a call
        (None if not decided, or not learnt yet): every later fed.get raises it, even
        for values that had already arrived."""
        return None

    def refresh_failure(self) -> FedError | None:
        """Learn the decision now (a fed.get that failed asks: its error may be it)."""
        return self.job_failure()

    def stats(self) -> dict[str, Any]:
        """Counters a user can read: values and bytes per peer, retries, refusals."""
        return {}
