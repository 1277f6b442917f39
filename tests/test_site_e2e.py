"""Three real sites (alice, bob, carol) on loopback: HTTPS with `fed certs` certificates,
each with its own database (SQLite files, or databases of a real PostgreSQL server).

Policies: bob auto-accepts stats and fedavg from alice; carol auto-accepts only stats
from alice; bob has no ``train`` component. dave holds a certificate of the same CA
but is in no federation file and no job.
"""
from __future__ import annotations

import copy
import json
import ssl
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason='the site extra is not installed (pip install -e ".[site]")')

import httpx
from sitekit import SiteProcess, fed_cli

from fed.site.client import SiteClient, SiteRequestError
from fed.site.config import TlsFiles
from fed.site.errors import PeerSiteError
from fed.site.peers import PeerClient

PARTIES = ("alice", "bob", "carol")
POLICY = {"alice": ("", ""), "bob": ("alice", "stats,fedavg"), "carol": ("alice", "stats")}
COMPONENTS = {"alice": ("stats", "fedavg", "train"), "bob": ("stats", "fedavg"), "carol": ("stats", "fedavg", "train")}


def cli_ok(*args: str) -> str:
    proc = fed_cli(*args)
    assert proc.returncode == 0, f"fed {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


class Federation:
    def __init__(self, root: Path, urls: dict[str, str], tokens: dict[tuple[str, str], str]) -> None:
        self.root, self.urls, self.tokens = root, urls, tokens
        self.ca = str(root / "certs" / "ca.crt")

    def client(self, party: str, role: str = "admin") -> SiteClient:
        return SiteClient(self.urls[party], self.tokens[(party, role)], self.ca)

    def tls(self, party: str) -> TlsFiles:
        certs = self.root / "certs"
        return TlsFiles(cert=str(certs / f"{party}.crt"), key=str(certs / f"{party}.key"), ca_cert=self.ca)

    def spec(self, component: str = "stats", **extra) -> dict:
        spec = {"initiator": "alice",
                "parties": [{"name": p, "site": self.urls[p]} for p in PARTIES],
                "tasks": [{"name": "t1", "component": component, "version": "1"}]}
        spec.update(extra)
        return spec

    def everywhere(self, job_id: str) -> dict[str, dict]:
        out = {}
        for party in PARTIES:
            with self.client(party, "admin") as c:
                out[party] = c.job(job_id)
        return out


def _make_sites(root: Path, ports: list[int], databases: dict[str, str | None]) -> dict[tuple[str, str], str]:
    urls = {p: f"https://127.0.0.1:{port}" for p, port in zip(PARTIES, ports)}
    cli_ok("certs", "--parties", ",".join(PARTIES + ("dave",)), "--out", str(root / "certs"))
    fed_file = root / "federation.yaml"
    fed_file.write_text(json.dumps({"parties": {p: {"site": u} for p, u in urls.items()}}))
    tokens = {}
    for party in PARTIES:
        site = str(root / party)
        db = ["--database", databases[party]] if databases[party] else []
        initiators, comps = POLICY[party]
        cli_ok("site", "init", site, "--party", party, "--federation", str(fed_file), "--certs", str(root / "certs"),
               "--auto-accept-initiators", initiators, "--auto-accept-components", comps, *db)
        for comp in COMPONENTS[party]:
            cli_ok("site", "component", "add", site, comp, "--entrypoint", f"demo.{comp}:run", "--version", "1")
        for role in ("admin", "submitter", "viewer"):
            tokens[(party, role)] = cli_ok("site", "token", "create", site, "--role", role).strip()
    return tokens


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def fed3(request, tmp_path_factory):
    """Three running sites; torn down (processes stopped) at the end of the module."""
    from fed.cli.ports import PortLease

    root = tmp_path_factory.mktemp(f"sites-{request.param}")
    if request.param == "postgres":
        server = request.getfixturevalue("postgres")
        databases = {p: server.new_database() for p in PARTIES}
    else:
        databases = dict.fromkeys(PARTIES)
    with PortLease() as lease:
        ports = lease.reserve(3)
        tokens = _make_sites(root, ports, databases)
        fed = Federation(root, {p: f"https://127.0.0.1:{port}" for p, port in zip(PARTIES, ports)}, tokens)
        lease.release()  # the sites bind them now
        sites = [SiteProcess(root / p, fed.urls[p]) for p in PARTIES]
        try:
            for site in sites:
                site.wait_ready(fed.ca)
            yield fed
        finally:
            for site in sites:
                site.stop()


def test_auto_accepted_job_is_accepted_at_every_site(fed3):
    with fed3.client("alice", "submitter") as alice:
        job = alice.submit(fed3.spec("stats"))
    views = fed3.everywhere(job["id"])
    for party, view in views.items():
        assert view["state"] == "accepted", (party, view)
        assert {p["party"]: p["approval"] for p in view["parties"]} == dict.fromkeys(PARTIES, "accepted")
    bob_history = [(h["entity"], h["party"], h["to"], h["actor"]) for h in views["bob"]["history"]]
    assert ("approval", "bob", "accepted", "site:policy") in bob_history
    assert ("approval", "carol", "accepted", "party:carol") in bob_history
    assert {pt["state"] for pt in views["carol"]["tasks"][0]["parties"]} == {"waiting"}


def test_held_job_waits_for_a_person_then_is_accepted(fed3):
    spec_file = fed3.root / "fedavg.json"
    spec_file.write_text(json.dumps(fed3.spec("fedavg")))
    out = cli_ok("job", "submit", str(spec_file), "--site", str(fed3.root / "alice"),
                 "--token", fed3.tokens[("alice", "submitter")], "--json")
    job_id = json.loads(out)["id"]
    with fed3.client("carol", "viewer") as carol:
        pending = [j["id"] for j in carol.pending()]
        assert job_id in pending
        held = next(p for p in carol.job(job_id)["parties"] if p["party"] == "carol")
        assert held["approval"] == "pending" and "fedavg" in held["reason"]
        with pytest.raises(SiteRequestError) as info:
            carol.decide(job_id, True)
        assert info.value.status == 403  # a viewer may not approve
    with fed3.client("bob", "viewer") as bob:
        assert job_id not in [j["id"] for j in bob.pending()]  # bob's policy accepted it
    cli_ok("job", "approve", job_id, "--reason", "checked by Carol", "--site", str(fed3.root / "carol"),
           "--token", fed3.tokens[("carol", "admin")])
    for party, view in fed3.everywhere(job_id).items():
        assert view["state"] == "accepted", party
        carol_row = next(p for p in view["parties"] if p["party"] == "carol")
        assert carol_row["reason"] == "checked by Carol"


def test_one_rejection_ends_the_job_for_all(fed3):
    with fed3.client("alice", "submitter") as alice:
        job_id = alice.submit(fed3.spec("fedavg"))["id"]
    with fed3.client("carol") as carol:
        carol.decide(job_id, False, "not this quarter")
        with pytest.raises(SiteRequestError) as info:
            carol.decide(job_id, True)
        assert info.value.status == 409
    for party, view in fed3.everywhere(job_id).items():
        assert view["state"] == "rejected", party
        assert view["reason"] == "rejected by party 'carol': not this quarter"
        assert {t["state"] for t in view["tasks"]} == {"canceled"}


def test_a_party_lacking_a_component_rejects_with_the_reason_shown_everywhere(fed3):
    with fed3.client("alice", "submitter") as alice:
        job_id = alice.submit(fed3.spec("train"))["id"]
    for party, view in fed3.everywhere(job_id).items():
        assert view["state"] == "rejected", party
        assert "rejected by party 'bob'" in view["reason"] and "no component 'train'" in view["reason"]


def test_third_party_scheduler_holds_no_data(fed3):
    spec = fed3.spec("stats", scheduler="carol")
    spec["parties"][2]["holds_data"] = False
    with fed3.client("alice", "submitter") as alice:
        job_id = alice.submit(spec)["id"]
    for party, view in fed3.everywhere(job_id).items():
        assert view["state"] == "accepted" and view["scheduler"] == "carol", party
        assert [pt["party"] for pt in view["tasks"][0]["parties"]] == ["alice", "bob"]


def test_invalid_spec_is_refused_with_field_paths(fed3):
    spec = fed3.spec("stats")
    spec["tasks"].append({"name": "t2", "component": "stats", "version": "1", "deps": ["t2", "zz"]})
    spec["parties"][1]["site"] = "http://127.0.0.1:1"
    with fed3.client("alice", "submitter") as alice, pytest.raises(SiteRequestError) as info:
        alice.submit(spec)
    fields = {p["field"] for p in info.value.problems}
    assert info.value.status == 422 and {"parties[1].site", "tasks[1].deps[0]", "tasks[1].deps[1]"} <= fields
    bad = fed3.spec("stats", initiator="bob")
    with fed3.client("alice", "submitter") as alice, pytest.raises(SiteRequestError, match="initiator's site"):
        alice.submit(bad)


def test_client_api_refuses_missing_tokens_and_low_roles(fed3):
    url = fed3.urls["alice"]
    with httpx.Client(verify=ssl.create_default_context(cafile=fed3.ca)) as raw:
        for path in ("/v1/jobs", "/v1/site", "/v1/openapi.json", "/v1/components"):
            resp = raw.get(url + path)
            assert resp.status_code == 401 and "Bearer" in resp.headers["www-authenticate"], path
        assert raw.get(url + "/v1/jobs", headers={"Authorization": "Bearer rfs_forged"}).status_code == 401
        assert raw.get(url + "/docs").status_code == 404  # no unauthenticated UI
    with fed3.client("alice", "viewer") as viewer:
        with pytest.raises(SiteRequestError) as info:
            viewer.submit(fed3.spec())
        assert info.value.status == 403
        doc = viewer.request("GET", "/v1/openapi.json")
        new = {"name": "extra", "version": "9", "entrypoint": "demo.extra:run"}
        with pytest.raises(SiteRequestError) as info:
            viewer.request("POST", "/v1/components", new)
        assert info.value.status == 403
    assert "/v1/interconnect/jobs/{job_id}/propose" in doc["paths"] and "/v1/jobs" in doc["paths"]
    with fed3.client("alice", "admin") as admin:
        admin.request("POST", "/v1/components", new)
        assert {**new, "share_metrics": False} in admin.request("GET", "/v1/components")
        with pytest.raises(SiteRequestError, match="package.module:function") as info:
            admin.request("POST", "/v1/components", {**new, "version": "10", "entrypoint": "rm -rf"})
        assert info.value.status == 422


def test_interconnect_needs_a_certificate_of_a_party_of_the_job(fed3):
    with fed3.client("alice", "submitter") as alice:
        job_id = alice.submit(fed3.spec("stats"))["id"]
    url = fed3.urls["bob"] + f"/v1/interconnect/jobs/{job_id}"
    with httpx.Client(verify=ssl.create_default_context(cafile=fed3.ca)) as no_cert:
        assert no_cert.get(url).status_code == 401
        assert no_cert.post(url + "/decision", json={"decision": "rejected"}).status_code == 401
    with PeerClient(fed3.tls("dave"), PARTIES, "bob", fed3.urls["bob"]) as dave:
        for method, path, body in (("GET", "", None), ("POST", "/decision", {"decision": "rejected", "reason": "x"})):
            with pytest.raises(PeerSiteError, match=r"refused \(403\).*'dave' is not a party"):
                dave.call(method, f"/v1/interconnect/jobs/{job_id}{path}", body)
        forged = copy.deepcopy(fed3.spec("stats"))
        with pytest.raises(PeerSiteError, match=r"refused \(403\).*'dave' proposed"):
            dave.call("POST", "/v1/interconnect/jobs/forged-1/propose", {"spec": forged})
    with PeerClient(fed3.tls("carol"), PARTIES, "bob", fed3.urls["bob"]) as carol:
        assert carol.call("GET", f"/v1/interconnect/jobs/{job_id}")["state"] == "accepted"
        with pytest.raises(PeerSiteError, match=r"refused \(403\).*only the initiator"):
            carol.call("POST", f"/v1/interconnect/jobs/{job_id}/abort", {"reason": "not mine to abort"})
    assert fed3.everywhere(job_id)["bob"]["state"] == "accepted"


def test_a_site_answering_with_another_partys_certificate_gets_nothing(fed3):
    """bob's URL points at carol's site: alice sees carol's certificate after the
    handshake and sends nothing; the job fails at alice with the reason."""
    spec = fed3.spec("stats")
    spec["parties"][1]["site"] = fed3.urls["carol"]
    with fed3.client("alice", "submitter") as alice:
        job = alice.submit(spec)
    assert job["state"] == "failed" and "could not propose the job to party 'bob'" in job["reason"]
    assert "wrong site" in job["reason"] and "carol" in job["reason"]
    with fed3.client("carol") as carol, pytest.raises(SiteRequestError) as info:
        carol.job(job["id"])
    assert info.value.status == 404


def test_an_unreachable_party_fails_the_job_with_the_reason(fed3, port_lease):
    spec = fed3.spec("stats")
    spec["parties"][1]["site"] = f"https://127.0.0.1:{port_lease.reserve(1)[0]}"  # nobody listens
    with fed3.client("alice", "submitter") as alice:
        job = alice.submit(spec)
    assert job["state"] == "failed"
    assert "could not propose the job to party 'bob'" in job["reason"] and "unreachable" in job["reason"]
