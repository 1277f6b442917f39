"""The channel's Prometheus metrics (fed/transport/metrics.py) from a real two-party
job: each party's Ray cluster runs its metrics agent on a leased port, and the test
reads the agent's Prometheus endpoint as a scraper would."""
from __future__ import annotations

import socket
import time
import urllib.request

import numpy as np
import pytest
from multiparty import assert_all_ok, run_parties

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


def scrape(port: int, party: str, timeout_s: float = 90) -> dict[str, float]:
    """``{series line: value}`` of the rayfed metrics once ``complete``, or the last
    scrape when the deadline passes (the test's assertions then say what is missing)."""
    deadline = time.monotonic() + timeout_s
    found: dict[str, float] = {}
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        found = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                 for line in text.splitlines() if line.startswith("ray_rayfed_")}
        if complete(found, party):
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


def job(party: str, addresses: dict, metrics_ports: dict) -> dict[str, float]:
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False,
             object_store_memory=256 * 1024 * 1024, _metrics_export_port=metrics_ports[party],
             _system_config={"metrics_report_interval_ms": 1000})
    fed.init(addresses=addresses, party=party)
    total = None
    for round_ in range(ROUNDS):
        a, b = make.party("alice").remote(1000 + round_), make.party("bob").remote(1000 + round_)
        total = fed.get(combine.party("bob").remote(a, combine.party("alice").remote(a, b)))
    if party == "alice":
        refuse_one(addresses["alice"])
    found = scrape(metrics_ports[party], party)
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
