"""A party whose Ray cluster has two nodes (`ray start --head` plus `ray start --address`
on this machine): its receiver runs on the node owning its listen address, its tasks run
on the second node, and values cross to and from a single-node party.

The second node listens on 127.0.0.2 (another loopback address), and so does the party:
the receiver must be placed on that node. The cluster's processes are started in their
own sessions under a private temp dir and exactly those are killed at the end (never a
global `ray stop`: other Ray clusters may run on this machine). Fixed ports are picked
in 20000-32767 (outside Ray's worker-port range 10002-19999 and the kernel's ephemeral
range) after a bind check; Ray picks its other ports itself.
"""
from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from multiparty import assert_all_ok, kill_sessions, run_parties

from fed.cli.ports import PortLease

pytestmark = pytest.mark.timeout(240)

SECOND_NODE_IP = "127.0.0.2"
JOB = "multinode"


def _fixed_free_port(taken: set[int]) -> int:
    """A port in 20000-32767 that binds now on every address we use."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32768)
        if port in taken:
            continue
        try:
            for host in ("0.0.0.0",):
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        taken.add(port)
        return port
    raise RuntimeError("no free port in 20000-32767")


def _wait_connectable(host: str, port: int, proc: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`ray start` exited with {proc.returncode}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port}")


def _kill_cluster(procs: list[subprocess.Popen], temp_dir: str) -> None:
    """Kill the `ray start` sessions and every process that uses our temp dir."""
    kill_sessions({p.pid for p in procs}, marker=temp_dir, timeout_s=15)
    for p in procs:
        p.wait(10)


@pytest.fixture(scope="module")
def two_node_cluster() -> Iterator[str]:
    """GCS address of a head node (127.0.0.1) plus a second node (127.0.0.2) with the
    custom resource {"second": 1}, 1 CPU each."""
    temp_dir = tempfile.mkdtemp(prefix="rfmn", dir="/tmp")
    taken: set[int] = set()
    gcs_port = _fixed_free_port(taken)
    ray_bin = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block",
               "--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats"]
    # Token authentication (on by default for `ray start --head`) is off for this
    # throwaway loopback cluster; the driver in _party turns it off the same way.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    head = [*ray_bin, "--head", f"--port={gcs_port}", "--node-ip-address=127.0.0.1",
            "--include-dashboard=false", f"--temp-dir={temp_dir}",
            f"--dashboard-agent-listen-port={_fixed_free_port(taken)}"]
    second = [*ray_bin, f"--address=127.0.0.1:{gcs_port}", f"--node-ip-address={SECOND_NODE_IP}",
              '--resources={"second": 1}', f"--dashboard-agent-listen-port={_fixed_free_port(taken)}"]
    procs: list[subprocess.Popen] = []
    log = open(Path(temp_dir) / "ray-start.log", "wb")
    try:
        deadline = time.monotonic() + 90
        procs.append(subprocess.Popen(head, env=env, stdout=log, stderr=log, start_new_session=True))
        _wait_connectable("127.0.0.1", gcs_port, procs[0], deadline)
        procs.append(subprocess.Popen(second, env=env, stdout=log, stderr=log, start_new_session=True))
        _wait_node_processes(procs[1], deadline)
        yield f"127.0.0.1:{gcs_port}"
    finally:
        _kill_cluster(procs, temp_dir)
        log.close()
        if os.environ.get("KEEP_RAY_LOGS") is None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_node_processes(proc: subprocess.Popen, deadline: float) -> None:
    """Until `ray start` has started the node's own processes (its raylet, and no new
    one for a second): they exist before the test starts, as the cluster's, and are
    not counted as the test's leftovers."""
    import psutil

    seen: set[int] = set()
    steady_since = time.monotonic()
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            kids = psutil.Process(proc.pid).children(recursive=True)
            now = {k.pid for k in kids}
            has_raylet = any("raylet" in " ".join(k.cmdline()) for k in kids)
        except psutil.Error:
            now, has_raylet = set(), False
        if now != seen:
            seen, steady_since = now, time.monotonic()
        elif has_raylet and time.monotonic() - steady_since >= 1.0:
            return
        time.sleep(0.1)
    raise TimeoutError("the second Ray node did not start its raylet")


def _join_cluster(gcs: str) -> str:
    """Connect this driver to the head node; wait for both nodes; the second node's id."""
    import ray

    ray.init(address=gcs, _node_ip_address="127.0.0.1", configure_logging=False)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        second = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "second" in n["Resources"]]
        if second:
            return second[0]
        time.sleep(0.2)
    raise TimeoutError(f"the second node did not join: {ray.nodes()}")


def _party(party: str, addresses: dict, gcs: str) -> dict:
    import ray
    from multiparty import start_ray

    import fed
    from fed.transport.placement import receiver_placement
    from fed.transport.tcp import receiver_name

    out: dict = {}
    if party == "alice":
        out["second_node"] = _join_cluster(gcs)
        out["driver_node"] = ray.get_runtime_context().get_node_id()
        out["placements"] = {h: receiver_placement(h, None).node_id
                             for h in ("127.0.0.1", "0.0.0.0", "localhost", SECOND_NODE_IP)}
        out["labelled"] = receiver_placement(SECOND_NODE_IP, {"second": 1}).strategy
    else:
        start_ray(num_cpus=1)
    fed.init(addresses=addresses, party=party, job_name=JOB)

    @fed.remote
    def make(value):
        return value

    @fed.remote
    def where(value):
        import fed as worker_fed

        return ray.get_runtime_context().get_node_id(), value, worker_fed.__file__

    on_second = {"resources": {"second": 1}}
    from_alice = make.party("alice").options(**on_second).remote({"from": "alice", "n": [1, 2]})
    from_bob = make.party("bob").remote({"from": "bob", "n": [3]})
    at_bob = where.party("bob").remote(from_alice)
    at_alice = where.party("alice").options(**on_second).remote(from_bob)
    out["at_bob"], out["at_alice"] = fed.get([at_bob, at_alice])
    if party == "alice":
        receiver = ray.get_actor(receiver_name(JOB, "alice"))
        out["receiver_node"] = ray.get(receiver.__ray_call__.remote(
            lambda _self: ray.get_runtime_context().get_node_id()))
    fed.shutdown()
    return out


def test_party_on_a_two_node_cluster_exchanges_values_both_ways(two_node_cluster: str,
                                                                monkeypatch) -> None:
    # The party processes inherit this environment and read it when they import Ray:
    # without token auth, like the cluster (an earlier ray.init in this process sets
    # RAY_AUTH_MODE=token, and a driver in token mode refuses the GCS's calls).
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    second_node_ports = PortLease(host=SECOND_NODE_IP)
    try:
        outcomes = run_parties(
            _party, ["alice", "bob"], args=(two_node_cluster,), timeout=180,
            addresses=lambda lease: {**second_node_ports.addresses(["alice"]),
                                     **lease.addresses(["bob"])})
    finally:
        second_node_ports.release()
    assert_all_ok(outcomes)
    alice, bob = outcomes["alice"].result, outcomes["bob"].result
    second, driver = alice["second_node"], alice["driver_node"]
    assert second != driver
    # The receiver runs where alice's listen address (127.0.0.2) lives: the second node.
    assert alice["receiver_node"] == second
    # Loopback, wildcard or host-name listen hosts: the driver's node; a node's own IP:
    # that node; recv_resource_label: Ray chooses among the labelled nodes.
    assert alice["placements"] == {"127.0.0.1": driver, "0.0.0.0": driver, "localhost": driver,
                                   SECOND_NODE_IP: second}
    assert alice["labelled"] is None
    for result in (alice, bob):
        node_at_bob, value_at_bob, _ = result["at_bob"]
        node_at_alice, value_at_alice, fed_file = result["at_alice"]
        assert value_at_bob == {"from": "alice", "n": [1, 2]}
        assert value_at_alice == {"from": "bob", "n": [3]}
        assert node_at_alice == second  # alice's consumer task ran on the second node
        assert fed_file.startswith(str(Path(__file__).resolve().parents[1]))
