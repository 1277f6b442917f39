"""In-process transport for simulation mode: every party in one driver and one Ray cluster.

Values still cross through serialization and the receiver's allowlist (in a Ray
task), so a value production would refuse is refused here first.
"""
from __future__ import annotations

from typing import Any

import ray

from fed import serialization
from fed.errors import FedDeserializationRefused, FedSerializationError, remote_error_from
from fed.config import FedConfig
from fed.transport.base import MessageKey, Transport


@ray.remote(num_cpus=0)
def _cross(key_dict: dict[str, Any], wrapped: list, allowlist: Any, expose: bool) -> Any:
    """Serialize the value as the sender would, deserialize it as the receiver would."""
    key = MessageKey.from_dict(key_dict)
    try:
        value = ray.get(wrapped[0])
    except Exception as exc:
        raise remote_error_from(exc, key.src, key.producer_call, expose) from None
    try:
        pickled, buffers = serialization.dumps(value)
    except FedSerializationError:
        raise
    except Exception as exc:
        raise FedSerializationError(
            f"cannot serialize {key.producer()} in party {key.src!r} for party {key.dst!r}: {exc}"
        ) from None
    try:
        return serialization.loads(
            pickled, [bytearray(b) for b in buffers], serialization.Allowlist.from_config(allowlist)
        )
    except FedDeserializationRefused as exc:
        raise FedDeserializationRefused(
            exc.type_name, f"(party {key.dst!r} receiving {key.producer()}) {exc.hint}"
        ) from None


class LocalTransport(Transport):
    """Hands values between the simulated parties of one driver."""

    def __init__(self, config: FedConfig) -> None:
        self._config = config
        self._in_flight: dict[tuple[str, str, int], "ray.ObjectRef"] = {}

    def start(self) -> None:
        pass

    def send(self, key: MessageKey, ref: "ray.ObjectRef") -> None:
        self._in_flight[(key.src, key.dst, key.ordinal)] = ref

    def receive(self, key: MessageKey) -> "ray.ObjectRef":
        ref = self._in_flight.pop((key.src, key.dst, key.ordinal))
        comm = self._config.comm
        return _cross.remote(
            key.to_dict(), [ref], comm.serializing_allowed_list, comm.expose_error_trace
        )

    def wait_for_peers(self, timeout_s: float) -> None:
        pass

    def stop(self, flush_timeout_s: float) -> list[BaseException]:
        self._in_flight.clear()
        return []
