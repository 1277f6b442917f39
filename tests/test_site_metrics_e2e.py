"""Metrics across three real sites: a party sees its own metrics and what partners
share, through the API and `fed job metrics`; a partner gets only shared series, a
stranger nothing."""
from __future__ import annotations

import csv
import io
import ssl
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason='the site extra is not installed (pip install -e ".[site]")')

import httpx
from test_site_e2e import PARTIES, cli_ok, fed3  # noqa: F401 - fed3 is the three-site fixture

from fed.site.config import load_site
from fed.site.core.db import Database
from fed.site.core.metrics import ingest_metrics_file
from fed.site.errors import PeerSiteError
from fed.site.peers import PeerClient
from fed.site.runner.base import TaskLaunch
from fed.site.taskcontext import METRICS_FILE, TaskContext


def log_and_ingest(site_dir: Path, job_id: str, party: str, out: Path) -> None:
    """What a component and the executor do: log per-round metrics, then store them."""
    launch = TaskLaunch(job_id=job_id, task="t1", attempt=0, party=party, component="stats", version="1",
                        entrypoint="demo.stats:run", addresses={}, output_dir=str(out))
    ctx = TaskContext(launch)
    for step in range(3):
        ctx.log_metrics({f"{party}_accuracy": 0.5 + step / 10, "loss": 1.0 / (step + 1)}, step=step)
    db = Database(load_site(site_dir).database)
    try:
        with db.session() as s:
            assert ingest_metrics_file(s, job_id, "t1", party, out / METRICS_FILE).added == 6
    finally:
        db.close()


@pytest.fixture(scope="module")
def job_with_metrics(fed3):  # noqa: F811
    """A job of all three parties whose task logged metrics everywhere; bob shares
    the metrics of its `stats` component, alice and carol keep theirs private."""
    cli_ok("site", "component", "add", str(fed3.root / "bob"), "stats", "--entrypoint", "demo.stats:run",
           "--version", "1", "--share-metrics")
    with fed3.client("alice", "submitter") as alice:
        job_id = alice.submit(fed3.spec("stats"))["id"]
    for party in PARTIES:
        log_and_ingest(fed3.root / party, job_id, party, fed3.root / f"out-{party}" / job_id)
    return job_id


def names(answer: dict) -> set[tuple[str, str]]:
    return {(m["party"], m["name"]) for m in answer["metrics"]}


def test_a_party_sees_its_own_metrics_and_the_shared_ones(fed3, job_with_metrics):  # noqa: F811
    with fed3.client("alice", "viewer") as alice:
        answer = alice.metrics(job_with_metrics)
    assert answer["unavailable"] == {}
    assert names(answer) == {("alice", "alice_accuracy"), ("alice", "loss"),
                             ("bob", "bob_accuracy"), ("bob", "loss")}  # not carol's: private
    bob_acc = next(m for m in answer["metrics"] if m["name"] == "bob_accuracy")
    assert [p[:2] for p in bob_acc["points"]] == [[0, 0.5], [1, 0.6], [2, 0.7]]
    with fed3.client("carol", "viewer") as carol:
        assert names(carol.metrics(job_with_metrics)) == {
            ("carol", "carol_accuracy"), ("carol", "loss"), ("bob", "bob_accuracy"), ("bob", "loss")}


def test_fed_job_metrics_prints_a_table_or_csv(fed3, job_with_metrics):  # noqa: F811
    site = ("--site", str(fed3.root / "bob"), "--token", fed3.tokens[("bob", "viewer")])
    rows = list(csv.DictReader(io.StringIO(cli_ok("job", "metrics", job_with_metrics, "--csv", *site))))
    assert {(r["party"], r["name"]) for r in rows} == {("bob", "bob_accuracy"), ("bob", "loss")}
    assert [(r["step"], r["value"]) for r in rows if r["name"] == "bob_accuracy"] == [
        ("0", "0.5"), ("1", "0.6"), ("2", "0.7")]
    table = cli_ok("job", "metrics", job_with_metrics, *site)
    assert "bob_accuracy" in table and "alice" not in table


def test_partners_get_only_shared_series_and_strangers_nothing(fed3, job_with_metrics):  # noqa: F811
    path = f"/v1/interconnect/jobs/{job_with_metrics}/metrics"
    with PeerClient(fed3.tls("carol"), PARTIES, "alice", fed3.urls["alice"]) as carol_to_alice:
        assert carol_to_alice.call("GET", path) == {"metrics": []}  # alice shares nothing
    with PeerClient(fed3.tls("carol"), PARTIES, "bob", fed3.urls["bob"]) as carol_to_bob:
        assert names(carol_to_bob.call("GET", path)) == {("bob", "bob_accuracy"), ("bob", "loss")}
    with PeerClient(fed3.tls("dave"), PARTIES, "bob", fed3.urls["bob"]) as dave, \
            pytest.raises(PeerSiteError, match=r"refused \(403\).*'dave' is not a party"):
        dave.call("GET", path)
    with httpx.Client(verify=ssl.create_default_context(cafile=fed3.ca)) as raw:
        assert raw.get(fed3.urls["bob"] + path).status_code == 401
        assert raw.get(fed3.urls["bob"] + f"/v1/jobs/{job_with_metrics}/metrics").status_code == 401


def samples(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_site_metrics_need_a_token_and_count_jobs_tasks_approvals_and_requests(fed3, job_with_metrics):  # noqa: F811
    with fed3.client("alice", "submitter") as alice:
        held = alice.submit(fed3.spec("fedavg"))["id"]  # carol's policy holds fedavg for a person
    with httpx.Client(verify=ssl.create_default_context(cafile=fed3.ca)) as raw:
        assert raw.get(fed3.urls["carol"] + "/metrics").status_code == 401
        viewer = {"Authorization": f"Bearer {fed3.tokens[('carol', 'viewer')]}"}
        raw.get(fed3.urls["carol"] + f"/v1/jobs/{job_with_metrics}/metrics", headers=viewer)
        raw.get(fed3.urls["carol"] + "/v1/no-such-route", headers=viewer)
        resp = raw.get(fed3.urls["carol"] + "/metrics", headers=viewer)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    got = samples(resp.text)
    with fed3.client("carol", "viewer") as carol:
        view = carol.jobs()
        assert held in [j["id"] for j in carol.pending()]
    by_state: dict[str, int] = {}
    for job in view:
        by_state[job["state"]] = by_state.get(job["state"], 0) + 1
    for state, n in by_state.items():
        assert got[f'rayfed_site_jobs{{state="{state}"}}'] == n
    assert got["rayfed_site_approvals_waiting"] >= 1
    assert got['rayfed_site_tasks{state="waiting"}'] >= 1
    route = 'method="GET",route="/v1/jobs/{job_id}/metrics",status="200"'
    assert got[f"rayfed_site_api_request_duration_seconds_count{{{route}}}"] >= 1
    assert got['rayfed_site_api_request_duration_seconds_count{method="GET",route="unmatched",status="404"}'] >= 1
    assert not any("no-such-route" in series for series in got)
