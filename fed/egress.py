"""The data perimeter: which values may leave this party, checked before each send.

`config["egress"]` (fed.config.EgressConfig) names the parties values may go to and
an optional policy callback. The check runs in the driver at the call that would
send, so a vetoed value is never computed into a send and the error points at the
user's line; the sender proxy re-checks the party list (defence in depth) and writes
the audit log (fed.audit).
"""
from __future__ import annotations

from dataclasses import dataclass

from fed.audit import AuditLog
from fed.config import FedConfig
from fed.errors import FedEgressDenied
from fed.transport.base import MessageKey


@dataclass(frozen=True)
class EgressRequest:
    """What a policy callback sees: one value about to leave this party."""

    job: str
    src: str
    dst: str
    call: str  # the producing call, e.g. "mymodule.train"
    call_seq: int
    consumer: str  # the call in `dst` that consumes it ("fed.get" for fed.get)
    consumer_seq: int

    @classmethod
    def from_key(cls, key: MessageKey) -> EgressRequest:
        return cls(key.job, key.src, key.dst, key.producer_call, key.producer_seq,
                   key.consumer_call, key.consumer_seq)


def check_egress(config: FedConfig, key: MessageKey) -> None:
    """Raise FedEgressDenied if this party's policy forbids `key`'s value to leave.

    Fails closed: a policy that raises or returns anything falsy vetoes the send.
    Only values leaving ``config.party`` are checked (in simulation the other
    simulated parties' sends are theirs to police).
    """
    egress = config.egress
    if key.src != config.party:
        return
    why = None
    if egress.allowed_parties is not None and key.dst not in egress.allowed_parties:
        why = (f"{key.dst!r} is not in config['egress']['allowed_parties'] "
               f"{list(egress.allowed_parties)}")
    elif egress.policy is not None:
        request = EgressRequest.from_key(key)
        try:
            allowed = egress.policy(request)
        except Exception as exc:
            why = f"the egress policy raised {type(exc).__name__}: {exc}"
        else:
            if not allowed:
                why = f"the egress policy returned {allowed!r}"
    if why is None:
        return
    if egress.audit_log is not None:
        AuditLog(egress.audit_log).record(
            job=key.job, src=key.src, dst=key.dst, call=key.producer_call,
            call_seq=key.producer_seq, consumer=key.consumer_call, ordinal=key.ordinal,
            kind="value", bytes=0, sha256=None, status="denied", detail=why,
        )
    raise FedEgressDenied(
        f"party {key.src!r} may not send {key.producer()} to {key.dst!r} "
        f"(for {key.consumer()}): {why}"
    )
