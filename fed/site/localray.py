"""A party's own Ray cluster on this machine, for ``fed site demo``: ``ray start --head
--block`` in a process session of its own, every port leased (fed/cli/ports.py), its own
temp dir, token authentication on with a fresh token, and a stop that ends every process
the cluster started without touching any other Ray on the machine (never ``ray stop``).

Every process of a cluster carries ``RAYFED_RAY_CLUSTER=<its temp dir>`` in its
environment (Ray's processes inherit it); that mark is how :meth:`LocalRayCluster.stop`
finds what is left, including job drivers that run in sessions of their own.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from fed.cli.ports import PortLease

MARK_ENV = "RAYFED_RAY_CLUSTER"
#: Every port a head node opens; each cluster leases its own.
PORT_FLAGS = ("port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
              "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
              "node-manager-port", "object-manager-port")
START_TIMEOUT_S = 240.0


@dataclass
class LocalRayCluster:
    root: Path
    ports: dict[str, int]
    token: str
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['dashboard-port']}"

    def start(self, num_cpus: int = 2, object_store_mib: int = 200) -> None:
        cmd = ["ray", "start", "--head", "--block", f"--num-cpus={num_cpus}", "--disable-usage-stats",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1",
               f"--temp-dir={self.root}", f"--object-store-memory={object_store_mib * 1024 * 1024}"]
        cmd += [f"--{flag}={port}" for flag, port in self.ports.items()]
        with open(self.root / "ray-start.log", "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True, cwd=self.root)

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until the dashboard answers job queries with this cluster's token."""
        deadline = time.monotonic() + timeout_s
        request = urllib.request.Request(self.dashboard_url + "/api/jobs/",
                                         headers={"Authorization": f"Bearer {self.token}"})
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited ({self.proc.returncode}):\n{self.start_log()}")
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray dashboard at {self.dashboard_url} did not answer within "
                                   f"{timeout_s:.0f} s:\n{self.start_log()}")
            time.sleep(0.5)

    def start_log(self) -> str:
        try:
            return (self.root / "ray-start.log").read_text()[-4000:]
        except OSError:
            return ""

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster (found by its environment mark)."""
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get(MARK_ENV) == str(self.root) and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to ``ray start``, then SIGKILL to whatever of this cluster is left."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        _kill_and_wait(self.processes(), timeout_s=15)
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


def _kill_and_wait(procs: Iterable[psutil.Process], timeout_s: float) -> None:
    victims = [p for p in procs if p.pid != os.getpid()]
    for proc in victims:
        try:
            proc.kill()
        except psutil.Error:
            pass
    mine = {c.pid for c in psutil.Process().children()}  # reaped by whoever started them
    psutil.wait_procs([v for v in victims if v.pid not in mine], timeout=timeout_s)


def new_cluster(lease: PortLease, python_path: Iterable[Path] = ()) -> LocalRayCluster:
    """A cluster (not started yet) whose job drivers import ``python_path`` first."""
    root = Path(tempfile.mkdtemp(prefix="rfr", dir="/tmp"))  # short: Ray's socket paths are limited
    ports = dict(zip(PORT_FLAGS, lease.reserve(len(PORT_FLAGS))))
    token = secrets.token_hex(32)
    path = os.pathsep.join(str(p) for p in (*python_path, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
               RAY_USAGE_STATS_ENABLED="0", **{MARK_ENV: str(root)})
    env.pop("RAY_ADDRESS", None)
    return LocalRayCluster(root=root, ports=ports, token=token, env=env)


def start_clusters(lease: PortLease, count: int, python_path: Iterable[Path] = ()) -> list[LocalRayCluster]:
    """``count`` clusters started together (each takes seconds to come up)."""
    paths = list(python_path)
    clusters = [new_cluster(lease, paths) for _ in range(count)]
    try:
        for cluster in clusters:
            cluster.start()
        for cluster in clusters:
            cluster.wait_ready()
    except BaseException:
        for cluster in clusters:
            cluster.stop()
        raise
    return clusters
