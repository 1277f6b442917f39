"""Real Ray clusters for the site's runner tests: ``ray start --head --block`` in a process
of its own, every port leased (fed/cli/ports.py), its own temp dir, token authentication
on with a fresh token, stopped (and every process it started killed) at the end.

Every process of a cluster carries ``RAYFED_RAY_CLUSTER=<its temp dir>`` in its
environment (Ray's processes inherit it), which is how :meth:`RayCluster.stop` finds
what is left without touching any other Ray on the machine (never ``ray stop``).
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
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from multiparty import kill_sessions

from fed.cli.ports import PortLease

REPO = Path(__file__).resolve().parents[1]
MARK_ENV = "RAYFED_RAY_CLUSTER"
# Every port a head node opens; each cluster leases its own.
PORT_FLAGS = ("port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
              "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
              "node-manager-port", "object-manager-port")
START_TIMEOUT_S = 240.0


@dataclass
class RayCluster:
    root: Path
    ports: dict[str, int]
    token: str
    proc: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['dashboard-port']}"

    def start(self, num_cpus: int = 2) -> None:
        cmd = ["ray", "start", "--head", "--block", f"--num-cpus={num_cpus}", "--disable-usage-stats",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1",
               f"--temp-dir={self.root}", f"--object-store-memory={200 * 1024 * 1024}"]
        cmd += [f"--{flag}={port}" for flag, port in self.ports.items()]
        log = open(self.root / "ray-start.log", "w")  # noqa: SIM115 (the child holds it)
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True, cwd=self.root)
        log.close()

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until the dashboard answers job queries with our token (the job agent may
        still be starting: the runner's submit reports that as a RunnerError)."""
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
                raise RuntimeError(f"Ray dashboard at {self.dashboard_url} not ready:\n{self.start_log()}")
            time.sleep(0.5)

    def start_log(self) -> str:
        try:
            return (self.root / "ray-start.log").read_text()[-4000:]
        except OSError:
            return ""

    def processes(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get(MARK_ENV) == str(self.root) and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to `ray start`, then SIGKILL to whatever of this cluster is left."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        # Ray's processes share the session of `ray start`; each job's entrypoint has its own.
        sessions = {sid for sid in (_session(p.pid) for p in self.processes()) if sid is not None}
        if self.proc is not None:
            sessions.add(self.proc.pid)
        kill_sessions(sessions, marker=str(self.root), timeout_s=15)
        if self.proc is not None:
            self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:  # gone meanwhile
        return None


def new_cluster(lease: PortLease, extra_path: tuple[Path, ...] = ()) -> RayCluster:
    """A cluster (not started yet) whose job drivers import this checkout's ``fed``."""
    root = Path(tempfile.mkdtemp(prefix="rfr", dir="/tmp"))  # short: Ray's socket paths
    ports = dict(zip(PORT_FLAGS, lease.reserve(len(PORT_FLAGS))))
    token = secrets.token_hex(32)
    path = os.pathsep.join(str(p) for p in (REPO, *extra_path, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
               RAY_USAGE_STATS_ENABLED="0", **{MARK_ENV: str(root)})
    env.pop("RAY_ADDRESS", None)
    return RayCluster(root=root, ports=ports, token=token, env=env)


def start_clusters(lease: PortLease, count: int, extra_path: tuple[Path, ...] = ()) -> list[RayCluster]:
    """``count`` clusters started together (each takes seconds to come up)."""
    clusters = [new_cluster(lease, extra_path) for _ in range(count)]
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
