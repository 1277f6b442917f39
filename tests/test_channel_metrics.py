"""The channel's Prometheus metrics (fed/transport/metrics.py) from a real two-party
job: each party's Ray cluster runs its metrics agent on a leased port, and the test
reads the agent's Prometheus endpoint as a scraper would."""
from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from multiparty import assert_all_ok, describe, run_parties

import fed
from fed.transport.metrics import METRICS

pytestmark = pytest.mark.timeout(240)


@fed.remote
def make(n):
    return np.ones(n)


@fed.remote
def combine(a, b):
    return a + b


def nonzero_names(found: dict[str, float]) -> set[str]:
    return {series.split("{")[0] for series, value in found.items() if value > 0}


def values_sent(found: dict[str, float], party: str, peer: str) -> float:
    return sum(v for s, v in found.items() if s.startswith("ray_rayfed_values_sent_total{")
               and f'peer="{peer}"' in s and f'party="{party}"' in s)


def complete(found: dict[str, float], party: str) -> bool:
    """Every wanted metric is non-zero and all the rounds' sends are counted: the agent
    exports what workers reported so far, so an early scrape may hold only the first send."""
    peer = "bob" if party == "alice" else "alice"
    return WANT[party] <= nonzero_names(found) and values_sent(found, party, peer) >= ROUNDS


def scrape(port: int, ready: Callable[[dict[str, float]], bool], timeout_s: float = 90) -> dict[str, float]:
    """``{series line: value}`` of the rayfed metrics once ``ready`` holds, or the last
    scrape when the deadline passes (the test's assertions then say what is missing).
    An agent not listening yet is scraped again a second later."""
    deadline = time.monotonic() + timeout_s
    found: dict[str, float] = {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError:  # the agent is not up yet
            time.sleep(1)
            continue
        found = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                 for line in text.splitlines() if line.startswith("ray_rayfed_")}
        if ready(found):
            return found
        time.sleep(1)
    return found


def refuse_one(address: str) -> None:
    """A stranger speaking no protocol: the receiver answers REFUSE (reason protocol)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"\xff" * 64)
        sock.settimeout(10)
        try:
            while sock.recv(4096):
                pass
        except OSError:
            pass


ROUNDS = 3
WANT = {
    "alice": {"ray_rayfed_values_sent_total", "ray_rayfed_bytes_sent_total",
              "ray_rayfed_values_received_total", "ray_rayfed_bytes_received_total",
              "ray_rayfed_value_latency_seconds_count", "ray_rayfed_refusals_total"},
    "bob": {"ray_rayfed_values_sent_total", "ray_rayfed_bytes_sent_total",
            "ray_rayfed_values_received_total", "ray_rayfed_bytes_received_total",
            "ray_rayfed_value_latency_seconds_count"},
}


def start_ray(metrics_port: int) -> None:
    """This party's Ray cluster, its metrics agent exporting on ``metrics_port``."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False,
             object_store_memory=256 * 1024 * 1024, _metrics_export_port=metrics_port,
             _system_config={"metrics_report_interval_ms": 1000})


def job(party: str, addresses: dict, metrics_ports: dict) -> dict[str, float]:
    start_ray(metrics_ports[party])
    fed.init(addresses=addresses, party=party)
    total = None
    for round_ in range(ROUNDS):
        a, b = make.party("alice").remote(1000 + round_), make.party("bob").remote(1000 + round_)
        total = fed.get(combine.party("bob").remote(a, combine.party("alice").remote(a, b)))
    if party == "alice":
        refuse_one(addresses["alice"])
    found = scrape(metrics_ports[party], lambda found: complete(found, party))
    fed.shutdown()
    return {"sum": float(total.sum()), "metrics": found}


def test_a_two_party_job_exports_the_channel_metrics():
    outcomes = run_parties(job, timeout=220, args=lambda lease: (dict(zip(("alice", "bob"), lease.reserve(2))),))
    assert_all_ok(outcomes)
    for party, outcome in outcomes.items():
        found = outcome.result["metrics"]
        assert WANT[party] <= nonzero_names(found), (party, sorted(found))
        peer = "bob" if party == "alice" else "alice"
        assert values_sent(found, party, peer) >= ROUNDS, (party, sorted(found.items()))
        assert any(s.startswith("ray_rayfed_barrier_held_bytes{") for s in found), sorted(found)
    refusals = [s for s in outcomes["alice"].result["metrics"] if s.startswith("ray_rayfed_refusals_total{")]
    assert any('reason="protocol"' in s for s in refusals), refusals
    assert {f"rayfed_{name}" for name in METRICS} >= {"rayfed_values_sent", "rayfed_barrier_held_bytes"}


PEER_TIMEOUT_S = 5
RETRIES = "ray_rayfed_send_retries_total"


def nonzero_for_bob(found: dict[str, float], name: str) -> bool:
    return any(v > 0 for s, v in found.items() if s.startswith(name + "{") and 'peer="bob"' in s)


def troubled_job(party: str, addresses: dict, metrics_ports: dict, out_dir: str) -> dict:
    """bob starts after alice's sends to him were retried, and is killed after one value
    (alice loses him): alice's counters of both, as her scraper sees them."""
    if party == "bob":  # starts once alice's agent exports a retried send to him
        scrape(metrics_ports["alice"], lambda found: nonzero_for_bob(found, RETRIES))
    start_ray(metrics_ports[party])
    fed.init(addresses=addresses, party=party, config={"cross_silo_comm": {"peer_timeout_s": PEER_TIMEOUT_S}})
    a = make.party("alice").remote(1000)
    total = fed.get(combine.party("bob").remote(a, a))
    if party == "bob":
        Path(out_dir, "bob-may-die").touch()  # the harness SIGKILLs bob's session now
        time.sleep(600)
    try:
        fed.get(make.party("bob").remote(10))
        error = None
    except fed.FedError as exc:
        error = type(exc).__name__
    found = scrape(metrics_ports[party], lambda found: all(
        nonzero_for_bob(found, n) for n in (RETRIES, "ray_rayfed_peers_lost_total")))
    fed.shutdown()
    return {"sum": float(total.sum()), "error": error, "metrics": found}


def test_retries_and_a_lost_peer_are_counted(tmp_path):
    outcomes = run_parties(troubled_job, timeout=220, kill_after={"bob": str(tmp_path / "bob-may-die")},
                           args=lambda lease: (dict(zip(("alice", "bob"), lease.reserve(2))), str(tmp_path)))
    alice = outcomes["alice"]
    assert alice.ok, describe(outcomes)
    assert outcomes["bob"].killed_at is not None, describe(outcomes)
    assert alice.result["sum"] == 2000.0 and alice.result["error"] is not None, alice.result
    found = alice.result["metrics"]
    for name in (RETRIES, "ray_rayfed_peers_lost_total"):
        assert nonzero_for_bob(found, name), (name, sorted(found.items()))
