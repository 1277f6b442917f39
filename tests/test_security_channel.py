"""Hostile input against running receivers: real ReceiverProxy / SenderProxy actors in
this process's Ray cluster, real sockets, real TLS with `fed certs` certificates.

Two receivers take the abuse (one plain TCP for volume, one TLS for identity); after
it each must still deliver a legitimate job's values, and nothing else.
"""
from __future__ import annotations

import os
import random
import socket
import ssl
import struct
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import ray
from multiparty import start_ray
from securitykit import (
    MIB,
    Raw,
    actor_rss,
    client_hello,
    encode_map,
    encoded,
    issue_cert,
    msg_key,
    start_receiver,
    start_sender,
    trickle,
    wait_until,
)

import fed
from fed import codec
from fed.cli.certs import create_dev_pki
from fed.config import TlsConfig
from fed.errors import (
    FedEgressDenied,
    FedIdentityError,
    FedSerializationError,
)
from fed.transport import wire

PARTIES = ["alice", "bob", "carol"]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    start_ray(num_cpus=2, object_store_memory=256 * MIB)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    create_dev_pki(PARTIES, root / "main")
    create_dev_pki(["alice"], root / "rogue")
    return root


def tls_of(pki: Path, party: str, verify: bool = True) -> TlsConfig:
    main = pki / "main"
    return TlsConfig(cert=str(main / f"{party}.crt"), key=str(main / f"{party}.key"),
                     ca_cert=str(main / "ca.crt"), verify_party=verify)


def creds(pki: Path, party: str, which: str = "main") -> tuple[str, str, str]:
    d = pki / which
    return str(d / f"{party}.crt"), str(d / f"{party}.key"), str(pki / "main" / "ca.crt")


def refusal(reply) -> str:
    assert reply is not None, "the receiver closed without a REFUSE"
    ftype, body = reply
    assert ftype == wire.REFUSE, (wire.NAMES.get(ftype), body)
    return body["reason"]


def tls_refusal(port: int, ca: str, cert_key: tuple[str, str] | None) -> str:
    """The reason of the TLS alert a receiver answers a client with (no data is sent, so
    the alert cannot be lost to a reset)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=ca)
    if cert_key is not None:
        ctx.load_cert_chain(*cert_key)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                data = tls.recv(1)  # TLS 1.3: the client certificate is judged after the handshake
        except ssl.SSLError as exc:
            return exc.reason or str(exc)
    raise AssertionError(f"the TLS connection was not refused (read {data!r})")


def poll_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return condition()
        time.sleep(0.05)
    return True


class Evil:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---- identity over TLS ----------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_tls_identity_impersonation_spoofing_and_misrouting(pki: Path) -> None:
    job = "secure"
    bob, bob_port = start_receiver("bob", job, PARTIES, tls_of(pki, "bob"))
    carol, carol_port = start_receiver("carol", job, PARTIES, tls_of(pki, "carol"))

    # carol's valid certificate claiming to be alice.
    with Raw(bob_port, creds(pki, "carol")) as c:
        assert refusal(c.hello("alice", job, "bob")) == "identity"
    # A certificate from another CA, and no certificate at all: the receiver's TLS layer
    # refuses the handshake with the matching alert (not a crash, not a closed port).
    main_ca = str(pki / "main" / "ca.crt")
    rogue = creds(pki, "alice", "rogue")[:2]
    assert tls_refusal(bob_port, main_ca, rogue) in ("TLSV1_ALERT_UNKNOWN_CA",
                                                     "SSLV3_ALERT_BAD_CERTIFICATE")
    assert tls_refusal(bob_port, main_ca, None) in ("TLSV13_ALERT_CERTIFICATE_REQUIRED",
                                                    "SSLV3_ALERT_HANDSHAKE_FAILURE")
    # Bytes that are not TLS at all.
    for n in range(50):
        with socket.create_connection(("127.0.0.1", bob_port), timeout=5) as s:
            s.sendall(random.Random(n).randbytes(300))
    # Authenticated alice, but another job / another destination.
    with Raw(bob_port, creds(pki, "alice")) as c:
        reply = c.hello("alice", "other-job", "bob")
        assert refusal(reply) == "job_not_running" and job not in reply[1]["detail"]
    with Raw(bob_port, creds(pki, "alice")) as c:
        assert refusal(c.hello("alice", job, "carol")) == "wrong_destination"
    # Authenticated alice whose frames claim another source, job or destination.
    for key, reason in [
        (msg_key(job, "carol", "bob", 0), "spoofed_source"),
        (msg_key("other-job", "alice", "bob", 0), "job_not_running"),
        (msg_key(job, "alice", "carol", 0), "wrong_destination"),
    ]:
        with Raw(bob_port, creds(pki, "alice")) as c:
            ftype, welcome = c.hello("alice", job, "bob")
            assert ftype == wire.WELCOME and welcome["limits"]["max_header_bytes"] > 0
            assert refusal(c.send_value(key, encoded("forged"))) == reason

    # The sender checks the server: "bob"'s address answered by carol's receiver.
    misrouted = start_sender("alice", job, {"bob": carol_port}, tls_of(pki, "alice"))
    key = msg_key(job, "alice", "bob", 0)
    with pytest.raises(FedIdentityError, match="certificate of \\['carol'\\]"):
        ray.get(misrouted.send.remote(key, [ray.put("to bob only")]))

    # After all that, the real alice delivers, and only her values arrived.
    alice = start_sender("alice", job, {"bob": bob_port}, tls_of(pki, "alice"))
    ray.get(alice.send.remote(key, [ray.put({"weights": np.arange(4.0)})]))
    value = ray.get(bob.get.remote(key))
    assert value["weights"].tolist() == [0.0, 1.0, 2.0, 3.0]
    stats = ray.get(bob.stats.remote())
    assert stats["received_values"] == {"alice": 1}
    for reason in ("identity", "job_not_running", "wrong_destination", "spoofed_source"):
        assert stats["refusals_by_reason"].get(reason), stats
    assert ray.get(carol.stats.remote())["received_values"] == {}

    # One CA per party: carol's CA minted a certificate naming alice. It verifies (the
    # receiver trusts carol's CA), but only as carol's, so it cannot speak for alice.
    main, rogue = pki / "main", pki / "rogue"
    per_party = TlsConfig(cert=str(main / "bob.crt"), key=str(main / "bob.key"), verify_party=True,
                          ca_cert={"alice": str(main / "ca.crt"), "carol": str(rogue / "ca.crt")})
    _bob2, port2 = start_receiver("bob", job, PARTIES, per_party)
    forged = (str(rogue / "alice.crt"), str(rogue / "alice.key"), str(main / "ca.crt"))
    with Raw(port2, forged) as c:
        ftype, body = c.hello("alice", job, "bob")
        assert ftype == wire.REFUSE and "issued by the CA of ['carol']" in body["detail"]
    with Raw(port2, creds(pki, "alice")) as c:
        assert c.hello("alice", job, "bob")[0] == wire.WELCOME


@pytest.mark.timeout(120)
def test_rayfed_shared_certificate_works_only_in_shared_mode(pki: Path) -> None:
    cert, key = issue_cert(pki / "main", pki / "shared" / "all", cn="rayfed", dns=["localhost"])
    shared = TlsConfig(cert=cert, key=key, ca_cert=str(pki / "main" / "ca.crt"), verify_party=False)
    strict = TlsConfig(cert=cert, key=key, ca_cert=shared.ca_cert)  # the default
    k = msg_key("shared", "alice", "bob", 0)
    lax_bob, lax_port = start_receiver("bob", "shared", PARTIES, shared)
    strict_bob, strict_port = start_receiver("bob", "shared", PARTIES, strict)
    ray.get(start_sender("alice", "shared", {"bob": lax_port}, shared).send.remote(k, [ray.put(1)]))
    assert ray.get(lax_bob.get.remote(k)) == 1  # accepted (with a one-time warning)
    with Raw(strict_port, (cert, key, shared.ca_cert)) as c:
        ftype, body = c.hello("alice", "shared", "bob")
        assert ftype == wire.REFUSE and body["reason"] == "identity" and "verify_party" in body["detail"]
    assert ray.get(strict_bob.stats.remote())["refusals_by_reason"] == {"identity": 1}


# ---- volume and shape attacks on a plain receiver -------------------------------------------


def random_frames(rng: random.Random, job: str, count: int) -> bytes:
    """`count` frames: random types and bytes, some MSG headers shaped almost right."""
    out = bytearray()
    for _ in range(count):
        ftype = rng.choice([rng.randrange(256), wire.MSG, wire.DATA, wire.PING, wire.MSG])
        roll = rng.random()
        if roll < 0.3:  # a valid PING keeps the connection (and the parsing) going
            out += wire.encode_control(wire.PING, {})
            continue
        if roll < 0.6:
            payload = rng.randbytes(rng.randrange(0, 300))
        else:
            key = msg_key(rng.choice([job, "x"]), rng.choice(["mallory", "bob", 7]),
                          rng.choice(["alice", "bob"]), rng.randrange(10_000, 20_000))
            if rng.random() < 0.3:
                key[rng.choice(list(key))] = rng.choice([None, -1, "s", [1], {"a": 1}, 2**64 - 1])
            sizes = [rng.choice([16, 64, 2**31, -5, "9"]) for _ in range(rng.randrange(0, 3))]
            payload = encode_map({"key": key, "kind": rng.choice(["value", "error", 3]),
                                  "sizes": sizes})
        declared = len(payload) if rng.random() < 0.9 else rng.randrange(2**32)
        out += struct.pack("!BI", ftype, declared) + payload
    return out


def fuzz_connection(port: int, job: str, seed: int, handshake: bool, frames: int) -> None:
    rng = random.Random(seed)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            if handshake:
                s.sendall(wire.encode_control(wire.HELLO, {
                    "proto": wire.PROTOCOL, "src": "mallory", "job": job, "dst": "alice"}))
            s.sendall(random_frames(rng, job, frames))
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
    except OSError:
        pass  # the receiver may reset a connection it refused


@pytest.mark.timeout(240)
def test_hostile_input_receiver_stays_up_bounded_and_then_delivers(tmp_path: Path) -> None:
    job = "victim"
    limits = {"max_buffered_bytes_per_peer": 32 * MIB, "max_header_bytes": 64 * 1024,
              "max_frames_per_value": 1000, "busy_after_s": 1.0}
    alice, port = start_receiver("alice", job, ["alice", "bob", "mallory"], limits=limits)
    rss_before = actor_rss(alice)

    # 1. >= 10,000 frames of random bytes: 1,000 connections before the handshake and
    #    1,000 after a valid one (10 frames each).
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: fuzz_connection(port, job, i, i % 2 == 1, 1 if i % 2 == 0 else 20),
                      range(2000)))
    fuzz_s = time.monotonic() - started
    stats = ray.get(alice.stats.remote())
    assert stats["refusals"] >= 1000, stats
    # Whatever forged MSG got through the header checks was refused when unpickled.
    assert stats["received_values"].get("mallory", 0) == stats["refusals_by_reason"].get("deserialization", 0)
    assert "bob" not in stats["received_values"] and stats["held_bytes"] == {}

    def bob_conn() -> Raw:
        c = Raw(port)
        assert c.hello("bob", job, "alice")[0] == wire.WELCOME
        return c

    # 2. Wrong job; an oversized header; a declared value no machine holds; too many frames.
    with Raw(port) as c:
        assert refusal(c.hello("bob", "other-job", "alice")) == "job_not_running"
    with bob_conn() as c:
        c.frame(wire.MSG, b"\x80" * 1000, declared=10 * MIB)
        assert refusal(c.reply_or_closed()) == "header_too_large"
    with bob_conn() as c:
        c.control(wire.MSG, {"key": msg_key(job, "bob", "alice", 40), "kind": "value", "sizes": [1 << 44]})
        assert refusal(c.reply_or_closed()) == "too_large"
    with bob_conn() as c:
        assert refusal(c.send_value(msg_key(job, "bob", "alice", 41), b"x" * 2000, chunk=1)) == "too_many_frames"

    # 3. Truncated streams: a 16 GiB value declared, 8 MiB sent, then the connection drops;
    #    a header cut short. Declared sizes cost no memory, and the budget is returned.
    with bob_conn() as c:
        c.control(wire.MSG, {"key": msg_key(job, "bob", "alice", 42), "kind": "value", "sizes": [16 << 30]})
        for _ in range(8):
            c.frame(wire.DATA, b"\0" * MIB)
    with bob_conn() as c:
        c.sock.sendall(wire.encode_control(wire.MSG, {"key": msg_key(job, "bob", "alice", 43)})[:9])
    # The budget returns when the connection thread notices the close.
    assert poll_until(lambda: ray.get(alice.stats.remote())["held_bytes"] == {}, 20), \
        ray.get(alice.stats.remote())

    # 4. A pickle whose reduce calls os.system, sent as a codec value and as a pickle
    #    value: refused, never run, the barrier gets the error. (The restricted unpickler
    #    refusing it by name, with an allowlist, is tested in test_pickle_optin.py.)
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    key7 = msg_key(job, "bob", "alice", 7)
    import pickle

    for ordinal, protocol, fmt in ((7, 0, "codec"), (8, 5, "codec"), (12, 5, "pickle")):
        with bob_conn() as c:
            evil = pickle.dumps(Evil(str(marker)), protocol=protocol)
            reply = c.send_value({**key7, "ordinal": ordinal}, evil, fmt=fmt)
            assert refusal(reply) in ("deserialization",)
    for ordinal in (7, 8):
        with pytest.raises(FedSerializationError, match="malformed value"):
            ray.get(alice.get.remote({**key7, "ordinal": ordinal}))
    assert not marker.exists(), "the os.system payload ran!"

    # 5. Replayed key: the first value wins; the replay (even a malicious one) is not
    #    decoded, and as a pickle value it is refused unread.
    key1 = msg_key(job, "bob", "alice", 1)
    with bob_conn() as c:
        assert c.send_value(key1, encoded("original")) == (wire.ACK, {"ordinal": 1, "duplicate": False})
        evil = pickle.dumps(Evil(str(marker)))
        assert c.send_value(key1, evil)[1]["duplicate"] is True
    with bob_conn() as c:
        assert refusal(c.send_value(key1, evil, fmt="pickle")) == "deserialization"
    assert ray.get(alice.get.remote(key1)) == "original"
    with bob_conn() as c:
        assert c.send_value(key1, encoded("replayed after consumption"))[1]["duplicate"] is True
    assert not marker.exists()

    # 6. Backpressure: 20 MiB held for an unclaimed barrier; the next 20 MiB does not fit in
    #    32 MiB, so the receiver stops reading and answers `busy`; once the first value is
    #    claimed the second goes through.
    blob = b"\1" * (20 * MIB)
    k10, k11 = msg_key(job, "bob", "alice", 10), msg_key(job, "bob", "alice", 11)
    as_codec = codec.encode(blob)  # a header and the blob as its out-of-band buffer
    with bob_conn() as c:
        assert c.send_value(k10, as_codec.header, [blob])[0] == wire.ACK
    assert ray.get(alice.stats.remote())["held_bytes"]["bob"] > 20 * MIB
    with bob_conn() as c:
        c.control(wire.MSG, {"key": k11, "kind": "value", "sizes": [len(blob)]})
        t0 = time.monotonic()
        assert refusal(c.reply_or_closed()) == "busy"
        busy_s = time.monotonic() - t0
        assert busy_s >= 0.9, busy_s  # busy_after_s=1: it waited for room, then said so
    # The real sender meets the same wall (a `busy`, so a retry), and gets through only
    # once k10 is claimed.
    sender = start_sender("bob", job, {"alice": port})
    pending = sender.send.remote(k11, [ray.put(blob)])
    assert poll_until(lambda: ray.get(sender.stats.remote())["retries"] >= 1, 60), \
        ray.get(sender.stats.remote())
    assert not ray.wait([pending], timeout=0)[0], "admitted beyond max_buffered_bytes_per_peer"
    assert len(ray.get(alice.get.remote(k10))) == 20 * MIB
    assert ray.get(pending)["bytes"] > 20 * MIB
    assert len(ray.get(alice.get.remote(k11))) == 20 * MIB
    assert ray.get(sender.stats.remote())["retries"] >= 1

    growth = actor_rss(alice) - rss_before
    assert growth < 200 * MIB, f"receiver grew by {growth / MIB:.0f} MiB"

    # 7. The legitimate job completes afterwards, through the real sender.
    legit = {20 + i: v for i, v in enumerate([np.ones((256, 256)), {"round": 3}, "done"])}
    ray.get([sender.send.remote(msg_key(job, "bob", "alice", o), [ray.put(v)]) for o, v in legit.items()])
    got = ray.get([alice.get.remote(msg_key(job, "bob", "alice", o)) for o in legit])
    assert got[0].sum() == 256 * 256 and got[1] == {"round": 3} and got[2] == "done"
    stats = ray.get(alice.stats.remote())
    assert stats["received_values"]["bob"] == 1 + 2 + 2 + 3  # key1, 7/8 errors, k10, k11, legit
    assert stats["held_bytes"] == {}
    print(f"busy answered after {busy_s:.2f} s (busy_after_s=1)")
    print(f"fuzz: 2,000 connections / 11,000 frames in {fuzz_s:.1f} s; "
          f"refusals {stats['refusals_by_reason']}; receiver RSS growth {growth / MIB:.0f} MiB")


# ---- memory, deadlines and connection caps -----------------------------------------------------


def held(actor) -> dict:
    return ray.get(actor.stats.remote())["held_bytes"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("secure", [False, True], ids=["plain", "tls"])
def test_a_declared_value_costs_only_the_bytes_that_arrived_and_they_return(
        pki: Path, secure: bool) -> None:
    """What an authenticated hostile peer can make a party hold with declarations: a
    header declaring a 4 GiB out-of-band buffer (the object-store path), 1 MiB of it,
    then silence; a header declaring 1,000,000 buffers, then silence. The budget
    charges what arrived (and the buffers' bookkeeping), memory grows by about that,
    and it returns when the stalled stream is dropped at its frame deadline; the
    bookkeeping of 1,000,000 buffers (128 MB) does not fit the budget: `busy`."""
    job = "declared"
    limits = {"max_buffered_bytes_per_peer": 64 * MIB, "frame_timeout_s": 3.0}
    alice, port = start_receiver("alice", job, PARTIES, tls_of(pki, "alice") if secure else None,
                                 limits=limits)
    bob = creds(pki, "bob") if secure else None
    rss_before = actor_rss(alice)
    with Raw(port, bob, timeout=30) as c:
        assert c.hello("bob", job, "alice")[0] == wire.WELCOME
        c.control(wire.MSG, {"key": msg_key(job, "bob", "alice", 0), "kind": "value",
                             "sizes": [100, 4 << 30]})
        c.frame(wire.DATA, b"\1" * MIB)
        # Charged: the bytes that arrived, plus 128 bytes of bookkeeping per buffer.
        assert wait_until(lambda: held(alice).get("bob") == MIB + 2 * 128, 20), held(alice)
        growth_open = actor_rss(alice) - rss_before
        started = time.monotonic()
        assert c.reply_or_closed() is None  # dropped at the deadline
        dropped_after = time.monotonic() - started
    assert wait_until(lambda: held(alice) == {}, 20), held(alice)
    growth_after = actor_rss(alice) - rss_before
    assert growth_open < 128 * MIB, f"grew {growth_open / MIB:.0f} MiB for 1 MiB received"
    assert growth_after < 64 * MIB, f"kept {growth_after / MIB:.0f} MiB after the drop"
    with Raw(port, bob, timeout=30) as c:
        assert c.hello("bob", job, "alice")[0] == wire.WELCOME
        c.control(wire.MSG, {"key": msg_key(job, "bob", "alice", 2), "kind": "value",
                             "sizes": [1] * 1_000_000})
        assert refusal(c.reply_or_closed()) == "busy"
    assert held(alice) == {}
    # The receiver still takes an honest large value through the same path.
    big = np.arange(2 * MIB, dtype=np.float32)
    sender = start_sender("bob", job, {"alice": port}, tls_of(pki, "bob") if secure else None)
    ray.get(sender.send.remote(msg_key(job, "bob", "alice", 1), [ray.put(big)]))
    assert np.array_equal(ray.get(alice.get.remote(msg_key(job, "bob", "alice", 1))), big)
    print(f"4 GiB declared, 1 MiB sent: RSS +{growth_open / MIB:.1f} MiB while open, "
          f"+{growth_after / MIB:.1f} MiB after the drop ({dropped_after:.1f} s later)")


@pytest.mark.timeout(120)
def test_a_small_value_cannot_decode_large() -> None:
    """32 bytes of pickle that would build 256 MiB (bytearray(n)): a receiver without an
    allowlist refuses a pickle value unread, and the codec builds nothing it was not
    sent (a declared size must match the bytes that arrived)."""
    job = "expands"
    alice, port = start_receiver("alice", job, ["alice", "bob"])
    n = 256 * MIB
    bomb = b"\x80\x05\x8c\x08builtins\x8c\tbytearray\x93J" + n.to_bytes(4, "little") + b"\x85R."
    liar = codec.encode(np.zeros(n // 8)).header  # declares 256 MiB, sends none
    rss_before = actor_rss(alice)
    with Raw(port) as c:
        assert c.hello("bob", job, "alice")[0] == wire.WELCOME
        reply = c.send_value(msg_key(job, "bob", "alice", 0), bomb, fmt="pickle")
        assert refusal(reply) == "deserialization" and "accepts none" in reply[1]["detail"]
    with Raw(port) as c:
        assert c.hello("bob", job, "alice")[0] == wire.WELCOME
        assert refusal(c.send_value(msg_key(job, "bob", "alice", 1), liar)) == "deserialization"
    growth = actor_rss(alice) - rss_before
    assert held(alice).get("bob", 0) < 1024, held(alice)  # the refused value's bytes
    assert growth < 64 * MIB, f"the receiver grew by {growth / MIB:.0f} MiB"
    with pytest.raises(FedSerializationError, match="uses more buffers than arrived"):
        ray.get(alice.get.remote(msg_key(job, "bob", "alice", 1)))
    assert held(alice) == {}


@pytest.mark.timeout(240)
def test_slow_handshakes_trickling_frames_and_idle_connections_end_at_deadlines(pki: Path) -> None:
    job = "slow"
    limits = {"handshake_timeout_s": 2.0, "frame_timeout_s": 2.0, "idle_timeout_s": 3.0}
    alice, port = start_receiver("alice", job, ["alice", "bob"], limits=limits)
    _bob, tls_port = start_receiver("bob", job, PARTIES, tls_of(pki, "bob"), limits=limits)
    hello = wire.encode_control(wire.HELLO, {"proto": wire.PROTOCOL, "src": "bob", "job": job,
                                             "dst": "alice"})
    times = {}
    # One byte every 0.5 s: each read is quick, the handshake as a whole is not.
    for name, target, data in [("HELLO", port, hello),
                               ("TLS ClientHello", tls_port, client_hello(creds(pki, "bob")[2]))]:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", target), timeout=10) as s:
            sent = trickle(s, data, 0.5)
        times[name] = time.monotonic() - started
        assert sent is not None and sent < len(data), f"a trickled {name} was let through"
    # After WELCOME: a DATA frame that trickles is dropped at the frame deadline.
    with Raw(port) as c:
        assert c.hello("bob", job, "alice")[0] == wire.WELCOME
        c.control(wire.MSG, {"key": msg_key(job, "bob", "alice", 0), "kind": "value", "sizes": [64]})
        c.sock.sendall(struct.pack("!BI", wire.DATA, 64))
        started = time.monotonic()
        sent = trickle(c.sock, b"x" * 64, 0.5)
        times["DATA frame"] = time.monotonic() - started
        assert sent is not None and sent < 64, "a trickled frame was let through"
    # A connection silent after WELCOME ends at the idle deadline.
    with Raw(port) as c:
        assert c.hello("bob", job, "alice")[0] == wire.WELCOME
        started = time.monotonic()
        assert c.reply_or_closed() is None
        times["idle"] = time.monotonic() - started
    assert held(alice) == {}
    # An honest sender's pooled connection is closed the same way; its next send reconnects.
    sender = start_sender("bob", job, {"alice": port})
    k1, k2 = msg_key(job, "bob", "alice", 1), msg_key(job, "bob", "alice", 2)
    ray.get(sender.send.remote(k1, [ray.put("one")]))
    time.sleep(4.0)  # longer than idle_timeout_s: the pooled connection is gone
    ray.get(sender.send.remote(k2, [ray.put("two")]))
    assert ray.get([alice.get.remote(k1), alice.get.remote(k2)]) == ["one", "two"]
    print("dropped after " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))


@pytest.mark.timeout(180)
def test_a_connection_flood_does_not_stop_a_peer_from_delivering_or_answering() -> None:
    job = "flood"
    limits = {"max_connections": 64, "max_handshakes_per_ip": 8, "max_connections_per_peer": 8}
    alice, port = start_receiver("alice", job, ["alice", "bob", "mallory"], limits=limits)
    # 300 connections from another source address that never say anything.
    flood = []
    for _ in range(300):
        s = socket.socket()
        s.settimeout(5)
        try:
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", port))
        except OSError:
            pass
        flood.append(s)
    # 20 connections that complete the handshake as the same (hostile) party.
    kept, closed = [], 0
    for _ in range(20):
        c = Raw(port)
        try:
            assert c.hello("mallory", job, "alice")[0] == wire.WELCOME
            kept.append(c)
        except (OSError, wire.PeerClosed):
            closed += 1
            c.close()
    try:
        assert len(kept) == 8 and closed == 12
        sender = start_sender("bob", job, {"alice": port})
        assert "alice" not in ray.get(sender.ping_all.remote(10.0))  # heartbeats answered
        keys = [msg_key(job, "bob", "alice", i) for i in range(5)]
        ray.get([sender.send.remote(k, [ray.put(i)]) for i, k in enumerate(keys)])
        assert ray.get([alice.get.remote(k) for k in keys]) == list(range(5))
        stats = ray.get(alice.stats.remote())
        assert stats["dropped_connections"] >= 300 - 8, stats
        assert stats["refusals_by_reason"].get("too_many_connections") == 12, stats
    finally:
        for s in flood:
            s.close()
        for c in kept:
            c.close()


@pytest.mark.timeout(120)
def test_one_peers_reports_fail_only_its_barriers_and_wire_errors_cannot_stop_the_loop() -> None:
    """A peer that holds the job secret (as an authenticated peer holds its certificate)
    and reports failures: they fail the barriers waiting on it, nothing else."""
    job, secret = "scoped", b"s3cret"
    bob, port = start_receiver("bob", job, PARTIES, job_secret=secret)
    from_alice, from_carol = msg_key(job, "alice", "bob", 0), msg_key(job, "carol", "bob", 0)
    wait_alice, wait_carol = bob.get.remote(from_alice), bob.get.remote(from_carol)
    assert wait_until(lambda: ray.get(bob.stats.remote())["waiting"] == 2, 20)
    with Raw(port) as c:
        assert c.hello("carol", job, "bob", secret)[0] == wire.WELCOME
        c.control(wire.PING, {"issued": "x", "waiting": [[{}, 1]], "pending": [{"ordinal": []}]})
        assert c.read()[0] == wire.PONG  # ill-typed status: ignored
        c.control(wire.NOTICE, {"kind": "divergence", "text": "forged"})
        assert c.read()[0] == wire.ACK
        c.control(wire.BYE, {"sent": 0})
        assert c.read()[0] == wire.ACK
        c.control(wire.PING, {"issued": 0, "waiting": [],
                              "pending": [msg_key(job, "carol", "bob", 0, call="elsewhere")]})
        assert c.read()[0] == wire.PONG
    with pytest.raises(fed.FedDivergenceError, match="forged"):
        ray.get(wait_carol)
    with Raw(port) as c:  # a value arriving after its barrier failed is dropped and released
        assert c.hello("carol", job, "bob", secret)[0] == wire.WELCOME
        assert c.send_value(from_carol, encoded("late")) == (wire.ACK, {"ordinal": 0, "duplicate": True})
    assert held(bob) == {}
    assert not ray.wait([wait_alice], timeout=1.0)[0], "carol's reports failed alice's barrier"
    # A refusal decided on the header reaches a client that keeps streaming the body.
    with Raw(port) as c:
        assert c.hello("alice", job, "bob", secret)[0] == wire.WELCOME
        reply = c.send_value(msg_key("other-job", "alice", "bob", 5), b"\0" * (32 * MIB))
        assert refusal(reply) == "job_not_running"
    # An error value that is a SystemExit: the barrier fails, the event loop lives on.
    with Raw(port) as c:
        assert c.hello("alice", job, "bob", secret)[0] == wire.WELCOME
        assert c.send_value(from_alice, encoded("not an error"), kind="error")[0] == wire.ACK
    with pytest.raises(fed.FedError):
        ray.get(wait_alice, timeout=20)
    assert ray.get(bob.stats.remote(), timeout=20)["waiting"] == 0


@pytest.mark.timeout(120)
def test_without_tls_or_a_job_secret_forged_control_frames_cannot_end_the_job() -> None:
    """Without TLS anyone who reaches the port can claim to be carol: her BYE, NOTICE
    and wait reports are then ignored (counted), and her barrier still gets the value."""
    job = "unproven"
    bob, port = start_receiver("bob", job, PARTIES)
    from_carol = msg_key(job, "carol", "bob", 0)
    wait_carol = bob.get.remote(from_carol)
    assert wait_until(lambda: ray.get(bob.stats.remote())["waiting"] == 1, 20)
    with Raw(port) as c:
        assert c.hello("carol", job, "bob")[0] == wire.WELCOME
        c.control(wire.NOTICE, {"kind": "divergence", "text": "forged"})
        assert c.read()[0] == wire.ACK
        c.control(wire.BYE, {"sent": 0})
        assert c.read()[0] == wire.ACK
        c.control(wire.PING, {"issued": 0, "waiting": [],
                              "pending": [msg_key(job, "carol", "bob", 0, call="elsewhere")]})
        assert c.read()[0] == wire.PONG
    assert ray.get(bob.stats.remote())["ignored_controls"] == 3
    assert not ray.wait([wait_carol], timeout=1.0)[0], "a forged control frame failed a barrier"
    with Raw(port) as c:
        assert c.hello("carol", job, "bob")[0] == wire.WELCOME
        assert c.send_value(from_carol, encoded("real"))[0] == wire.ACK
    assert ray.get(wait_carol, timeout=20) == "real"


@pytest.mark.timeout(120)
def test_with_a_job_secret_a_hello_without_its_proof_is_refused() -> None:
    job = "proven"
    bob, port = start_receiver("bob", job, PARTIES, job_secret=b"right")
    for secret in (None, b"wrong"):
        with Raw(port) as c:
            reply = c.hello("carol", job, "bob", secret)
            assert refusal(reply) == "identity", reply
            assert "RAYFED_JOB_SECRET" in reply[1]["detail"]
    with Raw(port) as c:
        assert c.hello("carol", job, "bob", b"right")[0] == wire.WELCOME


def set_open_files_limit(actor, extra) -> int:
    """Limit the actor's process to its open files plus `extra` (None: restore)."""
    def limit(_self, extra):
        import os
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if extra is None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        else:
            resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + extra, hard))
        return soft

    return ray.get(actor.__ray_call__.remote(limit, extra))


@pytest.mark.timeout(120)
def test_the_server_keeps_accepting_after_running_out_of_file_descriptors() -> None:
    job = "emfile"
    alice, port = start_receiver("alice", job, ["alice", "bob"])
    set_open_files_limit(alice, 2)
    try:
        conns = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(6)]
        time.sleep(1.0)  # let accept() run into EMFILE
    finally:
        set_open_files_limit(alice, None)
    for s in conns:
        s.close()
    with Raw(port) as c:  # accepted again once descriptors are back
        assert c.hello("bob", job, "alice")[0] == wire.WELCOME


# ---- the egress perimeter in simulation mode ---------------------------------------------------


@fed.remote
def produce():
    return "rows"


@fed.remote
def consume(x):
    return len(x)


@pytest.mark.timeout(120)
def test_egress_policy_stops_a_send_at_the_call_site(tmp_path: Path) -> None:
    log = tmp_path / "egress.jsonl"
    fed.init(addresses={p: f"127.0.0.1:{i + 1}" for i, p in enumerate(PARTIES)}, party="alice",
             mode="simulation", job_name="perimeter",
             config={"egress": {"allowed_parties": ["bob"], "audit_log": str(log)}})
    try:
        rows = produce.party("alice").remote()
        assert fed.get(consume.party("bob").remote(rows)) == 4
        with pytest.raises(FedEgressDenied, match="'carol' is not in"):
            consume.party("carol").remote(rows)
    finally:
        fed.shutdown()
    assert '"status": "denied"' in log.read_text() and '"dst": "carol"' in log.read_text()


# ---- declared sizes on the object-store path ---------------------------------------------------


@pytest.mark.timeout(120)
def test_a_16_gib_out_of_band_buffer_declared_and_dropped_costs_nothing() -> None:
    """The declared-size case of the hostile test, through an out-of-band buffer slot:
    large buffers take the object-store landing path, where the allocation happens."""
    job = "declared-oob"
    alice, port = start_receiver("alice", job, ["alice", "bob"])
    try:
        declare_drop_and_deliver(alice, port, job)
    finally:
        ray.kill(alice)  # a receiver stuck in an allocation must not outlive the test


def declare_drop_and_deliver(alice, port: int, job: str) -> None:
    rss_before = actor_rss(alice)
    with Raw(port) as c:
        assert c.hello("bob", job, "alice")[0] == wire.WELCOME
        c.control(wire.MSG, {"key": msg_key(job, "bob", "alice", 0), "kind": "value",
                             "sizes": [64, 16 << 30]})
        for _ in range(8):
            c.frame(wire.DATA, b"\0" * MIB)
    assert poll_until(lambda: ray.get(alice.stats.remote())["held_bytes"] == {}, 20), \
        ray.get(alice.stats.remote())
    growth = actor_rss(alice) - rss_before
    print(f"16 GiB out-of-band buffer declared, 8 MiB sent: receiver RSS +{growth / MIB:.0f} MiB")
    assert growth < 100 * MIB, f"receiver grew by {growth / MIB:.0f} MiB for 8 MiB received"
    with Raw(port) as c:  # and it still takes values
        assert c.hello("bob", job, "alice")[0] == wire.WELCOME
        assert c.send_value(msg_key(job, "bob", "alice", 1), encoded("after"))[0] == wire.ACK
    assert ray.get(alice.get.remote(msg_key(job, "bob", "alice", 1))) == "after"


# ---- the egress audit log is written before a value leaves -------------------------------------


@pytest.mark.timeout(120)
def test_a_value_whose_audit_record_cannot_be_written_does_not_leave(tmp_path: Path) -> None:
    import json

    job = "audit-ahead"
    alice, port = start_receiver("alice", job, ["alice", "bob"])
    logdir = tmp_path / "logs"
    logdir.mkdir()
    log = logdir / "bob.jsonl"
    sender = start_sender("bob", job, {"alice": port}, audit_log=str(log))
    first = msg_key(job, "bob", "alice", 0)
    ray.get(sender.send.remote(first, [ray.put("first")]))
    assert ray.get(alice.get.remote(first)) == "first"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["status"] for r in records] == ["sending", "sent"], records
    assert records[1]["attempts"] == 1 and records[0]["sha256"] == records[1]["sha256"]
    log.unlink()
    logdir.rmdir()  # the log can no longer be written
    with pytest.raises(fed.FedEgressDenied, match="audit log"):
        ray.get(sender.send.remote(msg_key(job, "bob", "alice", 1), [ray.put("second")]))
    assert ray.get(alice.stats.remote())["received_values"] == {"bob": 1}
