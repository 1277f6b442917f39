"""Port reservation for local runs (fed/cli/ports.py): the band, the locks, the release,
and the test harness's rerun when a party cannot bind its port anyway."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from multiparty import assert_all_ok, run_parties, start_ray

import fed
from fed.cli.ports import (
    RAY_KNOWN_PORTS,
    RAY_WORKER_PORTS,
    PortLease,
    _lock,
    bindable,
    candidate_ports,
    ephemeral_range,
    lock_dir,
)

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parents[1]


def test_reserved_ports_avoid_the_kernels_and_rays_automatic_ranges() -> None:
    low, high = ephemeral_range()
    with PortLease() as lease:
        ports = lease.reserve(20)
    assert len(set(ports)) == 20
    for port in ports:
        assert not low <= port <= high, port
        assert not RAY_WORKER_PORTS[0] <= port <= RAY_WORKER_PORTS[1], port
        assert port not in RAY_KNOWN_PORTS
    assert set(ports) <= set(candidate_ports())


def test_two_leases_never_share_a_port_and_release_unlocks() -> None:
    with PortLease() as first, PortLease() as second:
        a, b = first.reserve(50), second.reserve(50)
        assert not set(a) & set(b)
        assert _lock(lock_dir(), a[0]) is None  # held by `first`
    fd = _lock(lock_dir(), a[0])  # released on exit (unless another run took it meanwhile)
    if fd is not None:
        os.close(fd)


CHILD = """
import sys, time
from fed.cli.ports import PortLease
lease = PortLease()
print(" ".join(map(str, lease.reserve(5))), flush=True)
sys.stdin.readline()  # hold the lease until the parent says so
"""


def test_a_lease_of_another_process_excludes_its_ports_until_that_process_ends() -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        ports = [int(p) for p in child.stdout.readline().split()]
        assert len(ports) == 5
        assert all(_lock(lock_dir(), p) is None for p in ports)
    finally:
        child.communicate("\n", timeout=30)
    assert child.returncode == 0


def test_a_port_someone_listens_on_is_not_bindable() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert not bindable("127.0.0.1", busy.getsockname()[1])


# ---- the harness's backstop: a port that is taken anyway -------------------------------------


@fed.remote
def plus_one(x):
    return x + 1


def join_and_compute(party, addresses):
    start_ray(num_cpus=1)
    fed.init(addresses=addresses, party=party)
    value = fed.get(plus_one.party("bob").remote(plus_one.party("alice").remote(1)))
    fed.shutdown()
    return value


@pytest.mark.timeout(240)
def test_a_party_that_cannot_bind_its_port_reruns_the_scenario_with_fresh_ports() -> None:
    books = []
    with socket.socket() as busy:  # the first book gives alice a port someone listens on
        busy.bind(("127.0.0.1", 0))
        busy.listen()

        def book(lease: PortLease) -> dict[str, str]:
            addresses = lease.addresses(["alice", "bob"])
            if not books:
                addresses["alice"] = f"127.0.0.1:{busy.getsockname()[1]}"
            books.append(addresses)
            return addresses

        outcomes = run_parties(join_and_compute, addresses=book, timeout=180)
    assert_all_ok(outcomes)
    assert [o.result for o in outcomes.values()] == [3, 3]
    assert len(books) == 2, books
