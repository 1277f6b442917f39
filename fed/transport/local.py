"""In-process transport for simulation mode: every party in one driver and one Ray cluster.

Values still cross through the codec (and, when configured, the opt-in pickle and
its allowlist) and the message size limit, exactly as in production
(fed/transport/payload.py), so a value production would refuse is refused here first.

The crossings run in one async actor (`_Crossing`): a crossing whose input is not
ready yet is a suspended coroutine there, not a Ray worker process blocked in
`ray.get` (which is what a plain task resolving a nested ref would be), so a
simulation of many parties needs no more processes than its own tasks do. As in
production, where the receiver proxy's barrier is an async actor method, a failed
producer makes the crossing raise `FedRemoteError`, so consumer tasks and `fed.get`
in the other parties see exactly what they would see in production.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any

import ray
from ray.exceptions import RayTaskError

from fed.config import FedConfig
from fed.errors import (
    FedDeserializationRefused,
    FedError,
    FedRemoteError,
    FedSerializationError,
    FedTransportError,
    refused_error,
    remote_error_from,
)
from fed.transport import payload
from fed.transport.base import MessageKey, Transport, veto_text

# Crossings waiting for their input at once; beyond it they queue in the actor (in
# submission order, so the queue cannot deadlock: a crossing only waits on earlier work).
_MAX_PENDING_CROSSINGS = 100_000


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _producer_error(exc: Exception, key: MessageKey) -> FedRemoteError:
    """The `FedRemoteError` a consumer of a failed producer gets, with the producer's frames.

    A simulation has one owner, so details are never withheld from it; and Ray's text
    of the failure keeps the user's stack frames, which the unpickled cause has lost.
    """
    error = remote_error_from(exc, key.src, key.producer_call, True)
    if not isinstance(exc, RayTaskError) or isinstance(getattr(exc, "cause", None), FedError):
        return error  # not the user's code that failed, but rayfed (e.g. an input crossing)
    trace = _ANSI.sub("", str(exc))
    return FedRemoteError(key.src, key.producer_call, error.cause_type, error.message, trace)


class _Crossing:
    """Encodes each value as the sender would and checks it as the receiver would; the
    consumer builds it from the marker this returns, as in production."""

    def __init__(self, policy: payload.WirePolicy, max_message_bytes: int | None) -> None:
        self._policy = policy
        self._max_bytes = max_message_bytes
        self._values: Counter[str] = Counter()
        self._bytes: Counter[str] = Counter()
        self._refusals = 0
        self._failed_producers = 0

    async def cross(self, key_dict: dict[str, Any], wrapped: list) -> Any:
        """The value behind `wrapped[0]` as party `key.dst` would receive it."""
        key = MessageKey.from_dict(key_dict)
        try:
            value = await wrapped[0]
        except Exception as exc:  # the producer failed: the consumer gets what production gives
            self._failed_producers += 1
            raise _producer_error(exc, key) from None
        try:
            return self._roundtrip(key, value)
        except FedError:
            self._refusals += 1
            raise

    def set_codecs(self, codecs: Any) -> None:
        self._policy = self._policy.with_codecs(codecs)

    def _roundtrip(self, key: MessageKey, value: Any) -> Any:
        try:
            fmt, parts = payload.pack(value, self._policy)
        except FedSerializationError as exc:
            raise FedSerializationError(
                f"cannot send {key.producer()} from party {key.src!r} to party {key.dst!r}: {exc}"
            ) from None
        size = sum(memoryview(p).nbytes for p in parts)
        if self._max_bytes is not None and size > self._max_bytes:
            raise refused_error(  # FedLimitError, as the production receiver's refusal
                "too_large",
                f"{key.producer()} from party {key.src!r} is {size} bytes, more than "
                f"messages_max_size_in_bytes={self._max_bytes} in party {key.dst!r}",
            )
        channel = f"{key.src}->{key.dst}"
        self._values[channel] += 1
        self._bytes[channel] += size
        # bytearray copies, as the receiver's buffers are: arrays arrive writable.
        received = [bytearray(p) for p in parts]
        try:
            payload.check(fmt, received, self._policy)
        except FedDeserializationRefused as exc:
            raise FedDeserializationRefused(
                exc.type_name, f"(party {key.dst!r} receiving {key.producer()}) {exc.hint}"
            ) from None
        return payload.Received(fmt, received, self._policy)

    async def vetoed(self, key_dict: dict[str, Any], text: str) -> None:
        """What the consumer's barrier raises for a value its producer's egress vetoed."""
        key = MessageKey.from_dict(key_dict)
        raise FedTransportError(f"party {key.src!r} reports: {text}")

    def stats(self) -> dict[str, Any]:
        return {
            "values": dict(self._values),
            "bytes": dict(self._bytes),
            "refusals": self._refusals,
            "failed_producers": self._failed_producers,
        }


_CrossingActor = ray.remote(num_cpus=0, max_concurrency=_MAX_PENDING_CROSSINGS)(_Crossing)


class LocalTransport(Transport):
    """Hands values between the simulated parties of one driver."""

    def __init__(self, config: FedConfig, codecs: Any = None) -> None:
        self._config = config
        self._codecs = codecs
        # The producer's ref, or the reason its egress vetoed the value (a str).
        self._in_flight: dict[tuple[str, str, int], ray.ObjectRef | str] = {}
        self._crossing: ray.actor.ActorHandle | None = None

    def start(self) -> None:
        comm = self._config.comm
        policy = payload.WirePolicy.from_config(  # FedConfigError here
            comm.serializing_allowed_list, comm.tensor_device, self._codecs)
        self._crossing = _CrossingActor.remote(policy, comm.messages_max_size_in_bytes)
        ray.get(self._crossing.stats.remote())  # started: its cost belongs to fed.init

    def send(self, key: MessageKey, ref: ray.ObjectRef) -> None:
        self._in_flight[(key.src, key.dst, key.ordinal)] = ref

    def vetoed(self, key: MessageKey, reason: str) -> None:
        self._in_flight[(key.src, key.dst, key.ordinal)] = veto_text(key, reason)

    def receive(self, key: MessageKey) -> ray.ObjectRef:
        if self._crossing is None:
            raise FedError("the simulated channel is stopped: call fed.init first")
        ref = self._in_flight.pop((key.src, key.dst, key.ordinal))
        if isinstance(ref, str):  # vetoed: the consumer's copy fails as in production
            return self._crossing.vetoed.remote(key.to_dict(), ref)
        # The ref travels nested, so the actor awaits it (and sees its failure) itself.
        return self._crossing.cross.remote(key.to_dict(), [ref])

    def set_codecs(self, codecs: Any) -> None:
        self._codecs = codecs
        if self._crossing is not None:
            ray.get(self._crossing.set_codecs.remote(codecs))

    def wait_for_peers(self, timeout_s: float) -> None:
        pass

    def stop(
        self,
        flush_timeout_s: float,
        *,
        next_ordinals: dict[str, int] | None = None,
        aborted: bool = False,
    ) -> list[BaseException]:
        self._in_flight.clear()
        if self._crossing is not None:
            ray.kill(self._crossing)
            self._crossing = None
        return []

    def stats(self) -> dict[str, Any]:
        """Per ``"src->dst"`` channel: values and bytes crossed; refusals; failed producers."""
        if self._crossing is None:
            return {}
        return ray.get(self._crossing.stats.remote())
