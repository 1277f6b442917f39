"""A peer's "error" envelope against a running receiver: only rayfed errors are raised.

A real ReceiverProxy actor, a raw socket client speaking the protocol (what any peer,
or without TLS anyone reaching the port, can send).
"""
from __future__ import annotations

import uuid

import pytest
import ray
from multiparty import start_ray
from securitykit import MIB, Raw, encoded, msg_key, start_receiver

from fed.errors import FedRemoteError
from fed.transport import wire

#: unpickles to SystemExit(); raised in the receiver's event loop it killed the loop thread.
SYSTEM_EXIT_PAYLOAD = b"\x80\x05\x8c\x08builtins\x8c\x0aSystemExit\x93)R."


@pytest.fixture(scope="module", autouse=True)
def cluster():
    start_ray(num_cpus=2, object_store_memory=128 * MIB)
    yield
    ray.shutdown()


def _cause(exc: BaseException) -> BaseException:
    return getattr(exc, "cause", None) or exc


@pytest.mark.timeout(120)
def test_a_system_exit_error_envelope_is_wrapped_and_the_receiver_keeps_serving() -> None:
    job = f"wire-errors-{uuid.uuid4().hex[:6]}"
    bob, port = start_receiver("bob", job, ["alice", "bob"])
    first, second = msg_key(job, "alice", "bob", 0), msg_key(job, "alice", "bob", 1)
    with Raw(port) as raw:
        assert raw.hello("alice", job, "bob")[0] == wire.WELCOME
        # An error envelope is codec data: a pickled one is refused unread...
        reply = raw.send_value(first, SYSTEM_EXIT_PAYLOAD, kind="error", fmt="pickle")
        assert reply[0] == wire.REFUSE and reply[1]["reason"] == "deserialization"
    with Raw(port) as raw:
        assert raw.hello("alice", job, "bob")[0] == wire.WELCOME
        # ... and codec data that is no envelope is wrapped, never raised as sent.
        assert raw.send_value(first, encoded(["SystemExit"]), kind="error")[0] == wire.ACK
        assert raw.send_value(second, encoded({"after": 1}))[0] == wire.ACK
    with pytest.raises(ray.exceptions.RayTaskError) as info:
        ray.get(bob.get.remote(first), timeout=60)
    err = _cause(info.value)
    assert isinstance(err, FedRemoteError), repr(err)
    assert err.cause_type == "invalid error envelope: builtins.list"
    assert err.src_party == "alice" and err.call == first["producer_call"]
    # The loop that served that barrier is alive: later barriers and control calls answer.
    assert ray.get(bob.get.remote(second), timeout=60) == {"after": 1}
    assert ray.get(bob.stats.remote(), timeout=60)["received_values"] == {"alice": 2}
    ray.kill(bob)


def test_error_text_that_may_quote_user_data_leaves_only_with_expose_error_trace() -> None:
    from fed.errors import FedEgressDenied, FedTransportError, remote_error_from

    policy = FedEgressDenied("policy said: patient 4711 has cancer")
    hidden = remote_error_from(policy, "alice", "f", expose=False)
    assert "4711" not in str(hidden) and "FedEgressDenied" in str(hidden)
    assert "4711" in str(remote_error_from(policy, "alice", "f", expose=True))
    channel = FedTransportError("party 'alice' could not send f#1 to 'bob': too large")
    assert "could not send" in str(remote_error_from(channel, "alice", "f", expose=False))
    user = ValueError("row 17 of secret.csv")
    assert "secret.csv" not in str(remote_error_from(user, "alice", "f", expose=False))
