"""Port reservation for local runs (fed/cli/ports.py): the band, the locks, the release."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

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
