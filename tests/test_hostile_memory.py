"""What a peer the receiver accepts can make it hold (issue 14), attack by attack.

Each test drives a real ReceiverProxy actor with hand-made frames from an accepted
peer and reads the *peak* resident memory of the receiver's process (VmHWM, restarted
just before the attack), so memory held for a moment counts as much as memory kept.
benchmarks/hostile_peer.py measures the same with TLS, real parties and a running job.
"""
from __future__ import annotations

import threading

import msgpack
import pytest
import ray
from multiparty import start_ray
from securitykit import (
    MIB,
    Raw,
    msg_key,
    peak_rss,
    reset_peak_rss,
    start_receiver,
    wait_until,
)

from fed.transport import wire
from fed.transport.limits import CONNECTION_OVERHEAD_BYTES, FRAME_DECODE_FACTOR

PARTIES = ["alice", "bob"]
BUDGET = 64 * MIB


@pytest.fixture(scope="module", autouse=True)
def cluster():
    start_ray(num_cpus=2, object_store_memory=256 * MIB)
    yield
    ray.shutdown()


def receiver(job: str, allowlist=None, frame_timeout_s: float = 5.0):
    return start_receiver("alice", job, PARTIES, allowlist=allowlist, limits={
        "max_buffered_bytes_per_peer": BUDGET, "busy_after_s": 1.0,
        "frame_timeout_s": frame_timeout_s})


def welcomed(port: int, job: str) -> Raw:
    c = Raw(port, timeout=30)
    assert c.hello("bob", job, "alice")[0] == wire.WELCOME
    return c


def held(actor) -> dict:
    return ray.get(actor.stats.remote())["held_bytes"]


def bomb(nbytes: int) -> bytes:
    """A value of one opt-in pickle part: 32 bytes naming admitted types that would
    unpickle to bytearray(nbytes)."""
    from fed.codec import tags

    data = (b"\x80\x05\x8c\x08builtins\x8c\tbytearray\x93J" + nbytes.to_bytes(4, "little")
            + b"\x85R.")
    return msgpack.packb([tags.PICKLE, data, 0], use_bin_type=True)


@pytest.mark.timeout(120)
def test_values_nobody_waits_for_are_checked_not_decoded() -> None:
    """Eight 32-byte pickles that would each decode to 256 MiB, sent to a party that opts
    in to pickle before any barrier waits: checked against the allowlist without being
    built, held as their bytes; where one is used, the guarded unpickler refuses it
    (bytearray is never called with a size)."""
    job = "bombs"
    alice, port = receiver(job, allowlist=[])
    base = reset_peak_rss(alice)
    with welcomed(port, job) as c:
        for i in range(8):
            reply = c.send_value(msg_key(job, "bob", "alice", i), bomb(256 * MIB), fmt="pickle")
            assert reply[0] == wire.ACK, reply
    growth = peak_rss(alice) - base
    assert growth < 32 * MIB, f"peak +{growth / MIB:.0f} MiB for 8 x 32 bytes received"
    assert held(alice)["bob"] < 8 * 1024
    with pytest.raises(Exception, match="bytearray"):
        ray.get(alice.get.remote(msg_key(job, "bob", "alice", 0)))


@pytest.mark.timeout(120)
def test_declared_buffers_cost_nothing_until_their_bytes_arrive() -> None:
    """1 GiB declared as 1,024 buffers just under the 1 MiB memory-map threshold (each
    allocated when its first byte arrives, not when declared), 1 MiB sent, silence."""
    job = "declared"
    alice, port = receiver(job)
    base = reset_peak_rss(alice)
    with welcomed(port, job) as c:
        c.control(wire.MSG, {"key": msg_key(job, "bob", "alice", 0), "kind": "value",
                             "sizes": [64] + [MIB - 1] * 1024})
        c.frame(wire.DATA, b"\1" * MIB)
        assert wait_until(lambda: held(alice).get("bob") == MIB + 1025 * 128, 20), held(alice)
        growth = peak_rss(alice) - base
    assert growth < 32 * MIB, f"peak +{growth / MIB:.0f} MiB for 1 MiB received"
    assert wait_until(lambda: held(alice) == {}, 20), held(alice)


@pytest.mark.timeout(120)
def test_bookkeeping_beyond_the_budget_is_busy() -> None:
    """1,000,000 one-byte buffers need 128 MB of bookkeeping, more than the 64 MiB
    budget: the header is answered `busy` (retry later), and nothing stays held."""
    job = "bookkeeping"
    alice, port = receiver(job)
    base = reset_peak_rss(alice)
    with welcomed(port, job) as c:
        c.control(wire.MSG, {"key": msg_key(job, "bob", "alice", 0), "kind": "value",
                             "sizes": [1] * 1_000_000})
        reply = c.reply_or_closed()
    assert reply is not None and reply[1].get("reason") == "busy", reply
    assert held(alice) == {}
    growth = peak_rss(alice) - base
    assert growth < FRAME_DECODE_FACTOR * MIB, f"peak +{growth / MIB:.0f} MiB"


def _large_frame(port: int, job: str, body: bytes, ftype: int, replies: list) -> None:
    with welcomed(port, job) as c:
        c.frame(ftype, body)
        replies.append(c.reply_or_closed())


@pytest.mark.timeout(180)
def test_a_peer_gets_one_large_control_frame_decoded_at_a_time() -> None:
    """32 connections (the per-party cap) each send a 1 MiB PING whose msgpack decodes to
    about 73 MiB of empty dicts: served one at a time per peer, so the peak is one such
    frame plus each connection's overhead, not 32 frames; every PING is answered."""
    job = "frames"
    # Frames queue for the peer's one slot; on a loaded machine 32 decodes in a row can
    # outlast a short frame deadline, which is not what this test is about.
    alice, port = receiver(job, frame_timeout_s=120.0)
    body = msgpack.packb({"waiting": [{}] * (MIB - 64)})
    assert len(body) <= MIB
    base = reset_peak_rss(alice)
    replies: list = []
    threads = [threading.Thread(target=_large_frame, args=(port, job, body, wire.PING, replies))
               for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    growth = peak_rss(alice) - base
    assert [r[0] if r else None for r in replies] == [wire.PONG] * 32
    bound = FRAME_DECODE_FACTOR * MIB + 32 * CONNECTION_OVERHEAD_BYTES
    assert growth < bound, f"peak +{growth / MIB:.0f} MiB, bound {bound / MIB:.0f} MiB"
    print(f"32 x 1 MiB PING of empty maps: peak +{growth / MIB:.0f} MiB "
          f"(bound {bound / MIB:.0f} MiB)")
