"""Lifecycle of a job across parties: parties that finish at different times, a failed
fed.init, a send that fails, fed.get with a timeout.

Each test asserts the outcome and prints the time it took (`-s` shows the figures).
"""
from __future__ import annotations

import logging
import socket
import time

import numpy as np
import pytest
from multiparty import assert_all_ok, describe, run_parties, start_ray
from remotes import add, produce

import fed

pytestmark = pytest.mark.timeout(240)


def report(scenario: str, figure: str) -> None:
    print(f"\nLIFECYCLE | {scenario} | {figure}")


@fed.remote
def slow(x, seconds):
    time.sleep(seconds)
    return x


class _Errors(logging.Handler):
    """Collects the ERROR records of the `fed` logger in a party process."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _watch_errors() -> _Errors:
    handler = _Errors()
    logging.getLogger("fed").addHandler(handler)
    return handler


# ---- a party that finishes early: BYE is authoritative -------------------------------------


def finish_at_different_times(party, addresses, bob_lingers_s):
    start_ray()
    fed.init(addresses=addresses, party=party, config={
        "cross_silo_comm": {"peer_timeout_s": 10, "shutdown_flush_timeout_s": 60}})
    errors = _watch_errors()
    value = fed.get(add.party("bob").remote(produce.party("alice").remote(1), 2))
    if party == "bob":
        time.sleep(bob_lingers_s)  # alice has long finished: its BYE must stop our heartbeats
    started = time.monotonic()
    fed.shutdown()
    return value, time.monotonic() - started, errors.lines


def test_party_finishing_long_before_another_logs_no_error_and_shutdown_is_prompt():
    outcomes = run_parties(finish_at_different_times, args=(14.0,), timeout=150)
    assert_all_ok(outcomes)
    value, bob_shutdown_s, bob_errors = outcomes["bob"].result
    assert value == 3 and outcomes["alice"].result[0] == 3
    assert bob_errors == [], bob_errors  # no "party 'alice' has not answered"
    # Without alice's BYE reaching bob's sender, shutdown waits the flush timeout (60 s);
    # the margin below that is for a loaded machine.
    assert bob_shutdown_s < 45, bob_shutdown_s
    report("alice finishes 14 s before bob (peer_timeout_s=10)",
           f"no ERROR in bob; bob's fed.shutdown took {bob_shutdown_s:.2f} s")


def owe_a_finished_peer(party, addresses):
    start_ray()
    fed.init(addresses=addresses, party=party, config={
        "cross_silo_comm": {"peer_timeout_s": 60, "shutdown_flush_timeout_s": 60}})
    late = slow.party("bob").remote(1, 4.0)
    add.party("alice").remote(late, 1)  # alice never waits for it and finishes at once
    started = time.monotonic()
    if party == "bob":
        time.sleep(6.0)  # the value is ready after alice's BYE
    fed.shutdown()
    stats_seen = time.monotonic() - started
    return stats_seen


def test_send_to_a_finished_peer_fails_at_once_naming_the_value():
    outcomes = run_parties(owe_a_finished_peer, timeout=150)
    assert_all_ok(outcomes)
    took = outcomes["bob"].result
    # Without BYE reaching bob's sender it retries until peer_timeout_s (60 s) declares
    # alice lost; with it, the send fails as soon as the value is ready.
    assert took < 6.0 + 40, took
    report("bob's value ready 4 s after alice finished (peer_timeout_s=60)",
           f"bob's sleep plus fed.shutdown took {took:.2f} s")


# ---- a failed fed.init is not "finished" -----------------------------------------------------


def _wait_until_listening(address: str, timeout: float) -> None:
    """Return once something accepts TCP connections at ``address`` (host:port)."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens at {address} after {timeout} s") from None
            time.sleep(0.2)


def init_fails_in_alice(party, addresses):
    start_ray()
    if party == "alice":
        # alice's barrier must run while bob is up: if bob started after alice gave up,
        # bob would never have seen alice and would wait out its startup_timeout_s instead.
        _wait_until_listening(addresses["bob"], timeout=90)
        try:
            fed.init(addresses=addresses, party=party, config={
                "barrier_on_initializing": True,
                "cross_silo_comm": {"startup_timeout_s": 4}})
        except fed.FedPeerUnavailableError as exc:
            return "init failed", exc.peer
        fed.shutdown()
        return "joined", None
    fed.init(addresses=addresses, party=party, config={
        "cross_silo_comm": {"peer_timeout_s": 5, "startup_timeout_s": 60}})
    started = time.monotonic()
    try:
        fed.get(produce.party("alice").remote(1))
        return "got a value", 0.0
    except fed.FedError as exc:
        return type(exc).__name__, str(exc), time.monotonic() - started
    finally:
        fed.shutdown()


def test_failed_init_is_not_reported_to_peers_as_finished():
    outcomes = run_parties(init_fails_in_alice, ["alice", "bob"],  # carol never starts
                           addresses=lambda lease: lease.addresses(["alice", "bob", "carol"]),
                           timeout=200)
    assert_all_ok(outcomes)
    assert outcomes["alice"].result == ("init failed", "carol"), describe(outcomes)
    kind, text, waited = outcomes["bob"].result
    assert kind == "FedPeerUnavailableError", describe(outcomes)
    assert "finished" not in text, text
    report("alice's fed.init fails (carol missing); bob waits for alice's value",
           f"bob: {kind} after {waited:.1f} s (peer_timeout_s=5), no 'finished after 0 values'")


# ---- a failed send: the consumer is told, other values still flow ------------------------------


def one_value_too_large(party, addresses):
    start_ray()
    limit = {"messages_max_size_in_bytes": 1024 * 1024} if party == "bob" else {}
    fed.init(addresses=addresses, party=party, config={"cross_silo_comm": limit})
    started = time.monotonic()
    big = produce.party("alice").remote(np.zeros(512 * 1024))  # 4 MiB: bob refuses it
    small = produce.party("alice").remote(7)
    failed = add.party("bob").remote(big, 1)
    fine = add.party("bob").remote(small, 1)
    try:
        fed.get(failed)
        first = "no error"
    except fed.FedError as exc:
        first = f"{type(exc).__name__}: {exc}"
    detected = time.monotonic() - started
    second = fed.get(fine)
    fed.shutdown()
    return first, second, detected


def test_failed_send_fails_only_the_barrier_on_that_value_in_the_consumer():
    outcomes = run_parties(one_value_too_large, timeout=150)
    assert_all_ok(outcomes)
    for party, o in outcomes.items():
        first, second, detected = o.result
        assert "could not send" in first, (party, first)
        assert second == 8, (party, o.result)
    report("one of two values exceeds bob's messages_max_size_in_bytes",
           f"bob's barrier on it failed after {outcomes['bob'].result[2]:.1f} s; the other "
           "value arrived in both parties")


# ---- fed.get with a timeout --------------------------------------------------------------------


def get_with_timeout(party, addresses):
    start_ray()
    fed.init(addresses=addresses, party=party,
             config={"cross_silo_comm": {"shutdown_flush_timeout_s": 2}})
    hung = slow.party("bob").remote(1, 600)
    started = time.monotonic()
    try:
        fed.get(hung, timeout=2)
        outcome = ("no timeout",)
    except fed.FedTimeoutError as exc:
        outcome = (isinstance(exc, TimeoutError), isinstance(exc, fed.FedError), str(exc))
    waited = time.monotonic() - started
    fed.shutdown()
    return outcome, waited


def test_fed_get_timeout_raises_a_typed_error_naming_the_value():
    outcomes = run_parties(get_with_timeout, timeout=150)
    assert_all_ok(outcomes)
    for party, o in outcomes.items():
        (is_timeout, is_fed, text), waited = o.result
        assert is_timeout and is_fed, o.result
        assert "slow" in text and "'bob'" in text and "timed out after 2 s" in text, text
        report(f"fed.get(timeout=2) on a hung task of bob, in {party}",
               f"FedTimeoutError after {waited:.1f} s")


# ---- an egress veto in the middle of a channel ---------------------------------------------------


@fed.remote
def secret(x):
    return x


def no_secrets(request):
    return not request.call.endswith(".secret")


def veto_in_the_middle(party, addresses):
    import ray

    start_ray()
    fed.init(addresses=addresses, party=party, config={
        "egress": {"policy": no_secrets}, "cross_silo_comm": {"peer_timeout_s": 60}})
    first = add.party("bob").remote(produce.party("alice").remote(1), 1)  # ordinal 0
    started = time.monotonic()
    try:
        blocked = add.party("bob").remote(secret.party("alice").remote(2), 1)  # ordinal 1
    except fed.FedEgressDenied:
        blocked = None  # alice: the veto is raised at the call
    last = add.party("bob").remote(produce.party("alice").remote(3), 1)  # ordinal 2
    outcome = "vetoed here"
    if blocked is not None:  # bob: its task on the vetoed value must fail, not hang
        try:
            ray.get(blocked.get_ray_object_ref())
            outcome = "no error"
        except Exception as exc:
            outcome = str(exc)
    waited = time.monotonic() - started
    values = fed.get([first, last])
    fed.shutdown()
    return outcome, waited, values


def test_vetoed_value_mid_channel_fails_the_consumers_barrier_at_once():
    outcomes = run_parties(veto_in_the_middle, timeout=150)
    assert_all_ok(outcomes)
    assert outcomes["alice"].result[0] == "vetoed here"
    outcome, waited, values = outcomes["bob"].result
    assert "will not come" in outcome and "egress policy" in outcome, outcome
    assert values == [2, 4] and outcomes["alice"].result[2] == [2, 4]
    report("alice's egress policy vetoes value #1 of 3 to bob (peer_timeout_s=60)",
           f"bob's task on it failed after {waited:.1f} s; values #0 and #2 arrived")


# ---- a driver that ends without fed.shutdown() still delivers a value computed late --------------


LATE_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
import fed
import test_lifecycle as t
from multiparty import start_ray

start_ray()
fed.init(addresses={addresses!r}, party={party!r})
late = t.slow.party("alice").remote(41, 3.0)  # ready only after alice's last line
total = t.add.party("bob").remote(late, 1)
if {party!r} == "bob":
    import ray
    print("BOB GOT", ray.get(total.get_ray_object_ref()), flush=True)
    fed.shutdown()
# alice: no fed.get, no fed.shutdown: the interpreter exits while the value is computed
"""


def test_value_ready_after_the_last_line_is_delivered_without_shutdown(port_lease):
    import os
    import subprocess
    import sys

    addresses = port_lease.addresses(["alice", "bob"])
    tests = os.path.dirname(os.path.abspath(__file__))
    procs = {
        party: subprocess.Popen(
            [sys.executable, "-c", LATE_SCRIPT.format(tests=tests, addresses=addresses,
                                                      party=party)],
            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for party in ("alice", "bob")
    }
    outputs = {}
    try:
        for party, proc in procs.items():
            outputs[party] = proc.communicate(timeout=120)[0]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
    assert procs["alice"].returncode == 0, outputs["alice"][-3000:]
    assert "BOB GOT 42" in outputs["bob"], outputs["bob"][-3000:]
    report("alice's last value is ready 3 s after its script ends, no fed.shutdown",
           "bob receives it")


# ---- one unreachable peer does not delay sends to the others ------------------------------------


def sends_around_a_cut_peer(party, addresses, n_to_bob):
    import ray

    start_ray()
    fed.init(addresses=addresses, party=party, config={"cross_silo_comm": {
        "timeout_in_ms": 150000, "shutdown_flush_timeout_s": 150}})
    # More sends to bob (unreachable for now) than the old shared pool had threads.
    to_bob = [add.party("bob").remote(produce.party("alice").remote(i), 0)
              for i in range(n_to_bob)]
    to_carol = add.party("carol").remote(produce.party("alice").remote(100), 1)
    got = None
    if party == "carol":
        got = (ray.get(to_carol.get_ray_object_ref()), time.time())
    elif party == "bob":
        got = sum(ray.get([o.get_ray_object_ref() for o in to_bob]))
    fed.shutdown()
    return got


def test_unreachable_peer_does_not_delay_sends_to_another_peer(port_lease):
    import threading

    from relay import Relay

    bob_port, relay_port, alice_port, carol_port = port_lease.reserve(4)
    addresses = {
        "alice": f"127.0.0.1:{alice_port}",
        "bob": {"address": f"127.0.0.1:{relay_port}", "listen_addr": f"127.0.0.1:{bob_port}"},
        "carol": f"127.0.0.1:{carol_port}",
    }
    relay = Relay(relay_port, ("127.0.0.1", bob_port)).start()
    cutter = threading.Thread(target=relay.cut, args=(45.0,), daemon=True)
    cutter.start()  # bob is unreachable for the first 45 s
    try:
        outcomes = run_parties(sends_around_a_cut_peer, ["alice", "bob", "carol"],
                               args=(12,), addresses=addresses, timeout=200)
    finally:
        cutter.join(60)
        relay.stop()
    assert_all_ok(outcomes)
    value, carol_got_at = outcomes["carol"].result
    assert value == 101
    assert outcomes["bob"].result == sum(range(12))
    cut_start, cut_end = relay.cuts[0]
    assert carol_got_at < cut_end, (carol_got_at, relay.cuts)
    report("12 sends to bob while bob is cut off for 45 s, then 1 send to carol",
           f"carol had its value {carol_got_at - cut_start:.1f} s into the cut "
           f"({cut_end - carol_got_at:.1f} s before it ended); bob got all 12 afterwards")


# ---- a FedObject from an earlier fed.init is refused -------------------------------------------


def test_fed_object_from_an_earlier_init_is_refused():
    addresses = {"alice": "127.0.0.1:1", "bob": "127.0.0.1:2"}
    fed.init(addresses=addresses, party="alice", mode="simulation")
    try:
        old = produce.party("alice").remote(1)
        assert fed.get(old) == 1
    finally:
        fed.shutdown()
    fed.init(addresses=addresses, party="alice", mode="simulation")
    try:
        with pytest.raises(fed.FedError, match="earlier fed.init"):
            add.party("bob").remote(old, 1)
        with pytest.raises(fed.FedError, match="earlier fed.init"):
            fed.get(old)
        assert fed.get(add.party("bob").remote(produce.party("alice").remote(2), 1)) == 3
    finally:
        fed.shutdown()
