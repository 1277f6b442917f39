"""``fed site demo``: three parties on this machine, each with its own Ray cluster and its
own site, run ``examples/jobs/job.yaml`` from one submit, with live progress.

The steps are the ones docs/sites.md walks through by hand: certificates, a federation
file, ``fed site init`` per party (approval policy: accept the example's components from
alice), the components registered, the sites started, the job submitted at alice's site
and followed until it ends. Everything runs under one directory (``--dir``, else a fresh
temporary one) and on ports leased from this machine; nothing is left running unless
``--serve`` asks to keep the sites up (until Ctrl+C).
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fed.cli.ports import PortLease

PARTIES = ("alice", "bob", "carol")
COMPONENTS = {"stats": "examples.jobs.components:stats", "fedavg": "examples.jobs.components:fedavg"}
FINAL = {"succeeded", "failed", "rejected", "canceled", "timeout"}
JOB_DEADLINE_S = 900.0


def checkout_root() -> Path:
    """The repository the package runs from (the demo needs its examples/)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "examples" / "jobs" / "job.yaml").is_file():
        raise SystemExit("fed site demo runs from a checkout of rayfed (it needs examples/jobs/): "
                         "git clone the repository and pip install -e '.[site]' there")
    return root


@dataclass
class Site:
    party: str
    dir: Path
    url: str
    proc: subprocess.Popen | None = None
    viewer: str = ""
    submitter: str = ""


def write_federation(root: Path, lease: PortLease) -> dict[str, Any]:
    """federation.yaml with a site port and a channel port per party."""
    import yaml

    sites, channels = lease.reserve(len(PARTIES)), _channel_ranges(lease, len(PARTIES))
    federation = {"parties": {p: {"site": f"https://127.0.0.1:{sites[i]}",
                                  "channel": {"host": "127.0.0.1", "ports": channels[i]}}
                              for i, p in enumerate(PARTIES)}}
    (root / "federation.yaml").write_text(yaml.safe_dump(federation, sort_keys=False))
    return federation


def _channel_ranges(lease: PortLease, count: int) -> list[str]:
    """One leased port per party as its channel range (the example's tasks run one after
    the other, so each party needs one channel port at a time)."""
    return [f"{port}-{port}" for port in lease.reserve(count)]


def init_sites(root: Path, federation: dict[str, Any], clusters: list[Any]) -> list[Site]:
    """``fed site init`` for each party, its components, its tokens and its Ray cluster."""
    from fed.site.config import (
        RunnerConfig,
        TlsFiles,
        build_site_config,
        load_federation,
        write_site,
    )
    from fed.site.core import components
    from fed.site.core.db import Database
    from fed.site.core.policy import ApprovalPolicy
    from fed.site.core.tokens import Role, create_token

    parsed = load_federation(root / "federation.yaml")
    policy = ApprovalPolicy(auto_accept_initiators=["alice"], auto_accept_components=sorted(COMPONENTS))
    sites = []
    for party, cluster in zip(PARTIES, clusters):
        site_dir = root / "sites" / party
        site_dir.mkdir(parents=True)
        token_file = site_dir / "ray-token"
        token_file.write_text(cluster.token + "\n")
        token_file.chmod(0o600)
        runner = RunnerConfig(ray_address=cluster.dashboard_url, ray_token_file=str(token_file))
        certs = (root / "certs").resolve()
        tls = TlsFiles(cert=str(certs / f"{party}.crt"), key=str(certs / f"{party}.key"), ca_cert=str(certs / "ca.crt"))
        config = build_site_config(site_dir, party, parsed, tls, None, policy, runner)
        write_site(site_dir, config)
        db = Database(config.database)
        db.migrate()
        site = Site(party, site_dir, federation["parties"][party]["site"])
        with db.session() as s:
            for name, entrypoint in COMPONENTS.items():
                # Each demo party shares FedAvg's accuracy with its partners (a party's
                # choice per component; private by default).
                components.add_component(s, name, "1", entrypoint, share_metrics=name == "fedavg")
            site.viewer = create_token(s, Role.VIEWER, "demo viewer")
            site.submitter = create_token(s, Role.ADMIN, "demo admin")
        db.close()
        sites.append(site)
    return sites


def start_sites(sites: list[Site], root: Path, python_path: Path) -> None:
    from fed.site.client import SiteClient

    env = _env_with_path(python_path)
    for site in sites:
        log = open(site.dir / "site.log", "wb")  # noqa: SIM115 - the child holds it
        site.proc = subprocess.Popen([sys.executable, "-m", "fed.cli.main", "site", "start", str(site.dir)],
                                     stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
    for site in sites:
        deadline = time.monotonic() + 60
        while True:
            if site.proc.poll() is not None:
                raise SystemExit(f"{site.party}'s site exited:\n{_tail(site.dir / 'site.log')}")
            with contextlib.suppress(Exception):
                SiteClient(site.url, site.viewer, str(root / "certs" / "ca.crt"), timeout_s=5).request("GET", "/v1/site")
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{site.party}'s site did not answer:\n{_tail(site.dir / 'site.log')}")
            time.sleep(0.3)


def _env_with_path(path: Path) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path), env.get("PYTHONPATH")]))
    return env


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def job_spec(repo: Path, federation: dict[str, Any], sync_mode: str | None) -> dict[str, Any]:
    """examples/jobs/job.yaml with this run's site URLs (and sync mode, if given)."""
    import yaml

    spec = yaml.safe_load((repo / "examples" / "jobs" / "job.yaml").read_text())
    for party in spec["parties"]:
        party["site"] = federation["parties"][party["name"]]["site"]
    if sync_mode:
        spec["sync_mode"] = sync_mode
    return spec


def progress(job: dict[str, Any]) -> str:
    """``job STATE | stats: alice=succeeded bob=running ... | train: ...``."""
    parts = [f"job {job['state']}"]
    for task in job.get("tasks", []):
        cells = " ".join(f"{p['party']}={p['state']}" for p in task.get("parties", []))
        parts.append(f"{task['name']} {task['state']}: {cells}")
    return " | ".join(parts)


def follow(client: Any, job_id: str, out: Any = sys.stdout) -> dict[str, Any]:
    """Print each change of the job's states until it ends (or the deadline passes)."""
    deadline, last = time.monotonic() + JOB_DEADLINE_S, ""
    while True:
        job = client.job(job_id)
        line = progress(job)
        if line != last:
            print(time.strftime("%H:%M:%S"), line, file=out, flush=True)
            last = line
        if job["state"] in FINAL:
            return job
        if time.monotonic() > deadline:
            print(f"the job did not end within {JOB_DEADLINE_S:.0f} s; stopping it", file=out)
            client.request("POST", f"/v1/jobs/{job_id}/stop", {"reason": "fed site demo: deadline"})
            return client.job(job_id)
        time.sleep(0.5)


def final_states(sites: list[Site], root: Path, job_id: str) -> dict[str, str]:
    """Each party's own view of the job's final state (every site keeps the whole job)."""
    from fed.site.client import SiteClient

    states = {}
    for site in sites:
        client = SiteClient(site.url, site.viewer, str(root / "certs" / "ca.crt"))
        deadline = time.monotonic() + 60
        while True:
            job = client.job(job_id)
            if job["state"] in FINAL or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        states[site.party] = job["state"] + (f" ({job['reason']})" if job.get("reason") else "")
    return states


def print_metrics(client: Any, job_id: str) -> None:
    """What the components logged at alice's site, e.g. FedAvg's accuracy per round."""
    for series in client.request("GET", f"/v1/jobs/{job_id}/metrics")["metrics"]:
        values = " ".join(f"{value:.3f}" for _step, value, _at in series["points"][-10:])
        print(f"  {series['party']} {series['task']} {series['name']}: {values}")


def stop_sites(sites: list[Site]) -> None:
    for site in sites:
        if site.proc is not None and site.proc.poll() is None:
            site.proc.terminate()
    for site in sites:
        if site.proc is not None:
            try:
                site.proc.wait(20)
            except subprocess.TimeoutExpired:
                site.proc.kill()
                site.proc.wait(10)


@contextlib.contextmanager
def workspace(path: str | None) -> Iterator[Path]:
    if path:
        root = Path(path).resolve()
        if root.exists() and any(root.iterdir()):
            raise SystemExit(f"{root} is not empty: give a new directory to --dir")
        root.mkdir(parents=True, exist_ok=True)
        yield root
        return
    with tempfile.TemporaryDirectory(prefix="rayfed-demo-") as tmp:
        yield Path(tmp)


def run(args: argparse.Namespace) -> int:
    from fed.cli.certs import create_dev_pki
    from fed.site.client import SiteClient
    from fed.site.localray import start_clusters

    repo = checkout_root()
    lease = PortLease()
    with stop_signals(), workspace(args.dir) as root:
        federation = write_federation(root, lease)
        create_dev_pki(list(PARTIES), root / "certs")
        print(f"starting three Ray clusters and three sites under {root} ...", flush=True)
        clusters = start_clusters(lease, len(PARTIES), python_path=(repo,))
        sites: list[Site] = []
        try:
            sites = init_sites(root, federation, clusters)
            lease.release()  # the sites and clusters hold their ports now
            start_sites(sites, root, repo)
            for site, cluster in zip(sites, clusters):
                token = f"  viewer token {site.viewer}" if args.serve else ""
                print(f"  {site.party}: site {site.url}  board {site.url}/board/  Ray {cluster.dashboard_url}{token}")
            client = SiteClient(sites[0].url, sites[0].submitter, str(root / "certs" / "ca.crt"))
            job = client.submit(job_spec(repo, federation, args.sync_mode))
            print(f"submitted job {job['id']} at alice's site ({job_spec(repo, federation, args.sync_mode)['sync_mode']} mode)")
            job = follow(client, job["id"])
            states = final_states(sites, root, job["id"])
            for party, state in states.items():
                print(f"  {party}: {state}")
            print_metrics(client, job["id"])
            ok = all(state.startswith("succeeded") for state in states.values())
            print("the job succeeded in every party" if ok else "the job did not succeed", flush=True)
            if args.serve:
                serve(sites)
            return 0 if ok else 1
        finally:
            stop_sites(sites)
            for cluster in clusters:
                cluster.stop()
            lease.release()


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Ctrl+C and SIGTERM end the demo through its cleanup (KeyboardInterrupt), whatever
    the disposition it inherited: a shell starts background commands with SIGINT ignored,
    and Python's default for SIGTERM would leave the clusters and sites running."""
    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(sites: list[Site]) -> None:
    """Keep the sites up until Ctrl+C (or SIGTERM), printing where to look and a viewer
    token each."""
    print("\nthe sites stay up until Ctrl+C:", flush=True)
    for site in sites:
        print(f"  {site.party}: {site.url}/board/  viewer token: {site.viewer}", flush=True)
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopping the sites and the Ray clusters", flush=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", help="work under this new directory (kept afterwards); default: a temporary one")
    p.add_argument("--sync-mode", choices=("callback", "poll"), help="override the job's sync mode")
    p.add_argument("--serve", action="store_true", help="keep the sites up after the job until Ctrl+C")
