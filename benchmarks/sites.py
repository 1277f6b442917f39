"""The site service, measured: its client API's query rate with many jobs in the database.

    python benchmarks/sites.py [--jobs 10000] [--seconds 5] [--threads 4] [--database URL]

Makes a federation of three parties (certificates, ``fed site init``), fills alice's
database with ``--jobs`` jobs (three quarters of them finished, a quarter waiting
for alice's decision), starts alice's site (``fed site start``, HTTPS, a real
uvicorn process) and sends each kind of query from ``--threads`` client threads for
``--seconds``. It prints requests per second and latency percentiles per query, all
measured in this run. SQLite by default; ``--database postgresql://...`` measures a
PostgreSQL server you run.
"""
from __future__ import annotations

import argparse
import contextlib
import random
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PARTIES = ("alice", "bob", "carol")


def fed(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "fed.cli.main", *args], capture_output=True, text=True,
                          cwd=REPO, check=False)
    if done.returncode:
        raise SystemExit(f"fed {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def make_sites(root: Path, ports: list[int], database: str | None) -> Path:
    """Certificates, federation.yaml and alice's site directory."""
    fed("certs", "--parties", ",".join(PARTIES), "--out", str(root / "certs"))
    federation = {"parties": {p: {"site": f"https://127.0.0.1:{port}"} for p, port in zip(PARTIES, ports)}}
    (root / "federation.yaml").write_text(yaml.safe_dump(federation))
    site = root / "alice"
    extra = ["--database", database] if database else []
    fed("site", "init", str(site), "--party", "alice", "--federation", str(root / "federation.yaml"),
        "--certs", str(root / "certs"), *extra)
    return site


def fill(site: Path, jobs: int) -> list[str]:
    """Insert ``jobs`` jobs straight through the site's own store (one transaction per 500)."""
    from fed.site.config import load_site
    from fed.site.core import store
    from fed.site.core.db import Database
    from fed.site.core.spec import parse_spec

    config = load_site(site)
    db = Database(config.database)
    db.migrate()
    spec = parse_spec({
        "name": "bench", "initiator": "bob",
        "parties": [{"name": p, "site": config.federation.parties[p].site} for p in PARTIES],
        "tasks": [{"name": "stats", "component": "stats", "version": "1"},
                  {"name": "train", "component": "fedavg", "version": "1", "deps": ["stats"]}],
    })
    ids = []
    for start in range(0, jobs, 500):
        with db.session() as s:
            for i in range(start, min(jobs, start + 500)):
                job_id = f"20260101000000-{i:08x}"
                job = store.create_job(s, job_id, spec, "bench", "benchmark fill")
                if i % 4:  # a finished job: set directly, the fill is not a state machine test
                    job.state = "succeeded"
                ids.append(job_id)
    db.close()
    return ids


@contextlib.contextmanager
def running_site(site: Path) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen([sys.executable, "-m", "fed.cli.main", "site", "start", str(site)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def client_factory(url: str, token: str, ca: str) -> Callable[[], object]:
    import httpx

    def make() -> httpx.Client:
        return httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=ca), timeout=30,
                            headers={"Authorization": f"Bearer {token}"})
    return make


def wait_ready(make: Callable[[], object], proc: subprocess.Popen, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    with make() as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the site exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/v1/site").status_code == 200:
                    return
            time.sleep(0.2)
    raise SystemExit("the site did not answer")


def hammer(make: Callable[[], object], path_of: Callable[[random.Random], str], threads: int,
           seconds: float) -> tuple[int, list[float], int]:
    """Requests from ``threads`` clients for ``seconds``: (count, latencies in s, errors)."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker(seed: int) -> None:
        rng, mine, bad = random.Random(seed), [], 0
        with make() as client:
            while time.monotonic() < stop_at:
                began = time.perf_counter()
                response = client.get(path_of(rng))
                mine.append(time.perf_counter() - began)
                bad += response.status_code != 200
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return len(latencies), latencies, errors[0]


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--database", help="a PostgreSQL URL (default: SQLite in the site directory)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from fed.cli.ports import PortLease

    with tempfile.TemporaryDirectory() as tmp:
        lease = PortLease()
        ports = lease.reserve(3)
        root = Path(tmp)
        site = make_sites(root, ports, args.database)
        began = time.perf_counter()
        ids = fill(site, args.jobs)
        fill_s = time.perf_counter() - began
        token = fed("site", "token", "create", str(site), "--role", "viewer").strip().split()[-1]
        lease.release()
        with running_site(site) as proc:
            make = client_factory(f"https://127.0.0.1:{ports[0]}", token, str(root / "certs" / "ca.crt"))
            wait_ready(make, proc)
            queries = {
                "GET /v1/jobs (newest 100)": lambda rng: "/v1/jobs?limit=100",
                "GET /v1/jobs?state=awaiting_approval": lambda rng: "/v1/jobs?state=awaiting_approval&limit=100",
                "GET /v1/jobs/{id} (random job)": lambda rng: f"/v1/jobs/{rng.choice(ids)}",
                "GET /v1/jobs/pending": lambda rng: "/v1/jobs/pending",
                "GET /v1/site (counts by state)": lambda rng: "/v1/site",
            }
            print(f"{args.jobs} jobs in the database (filled in {fill_s:.1f} s), {args.threads} client "
                  f"threads, {args.seconds:.0f} s per query, database: {args.database or 'SQLite file'}\n")
            print("| query | requests/s | p50 ms | p95 ms | errors |")
            print("| --- | --- | --- | --- | --- |")
            for name, path_of in queries.items():
                count, lat, errors = hammer(make, path_of, args.threads, args.seconds)
                print(f"| {name} | {count / args.seconds:,.0f} | {1000 * percentile(lat, 50):.1f} | "
                      f"{1000 * percentile(lat, 95):.1f} | {errors} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
