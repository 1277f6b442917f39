"""``fed deploy render``: the manifests of two parties for several values files, every
document validated (KubeRay kinds against the schemas of the pinned release, core kinds
with kubernetes-validate, and independently with check-jsonschema); broken documents and
wrong values are refused, the latter before anything is written."""
from __future__ import annotations

import base64
import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fed.cli.certs import create_dev_pki
from fed.cli.main import main as fed_main
from fed.deploy.errors import ManifestInvalid
from fed.deploy.names import ray_version
from fed.deploy.validate import SCHEMA_DIR, validate_document
from fed.site.config import SiteConfig

REPO = Path(__file__).resolve().parents[1]
PARTIES = ("alice", "bob")
CIDRS = {"alice": "203.0.113.10/32", "bob": "198.51.100.20/32"}


def federation(tmp_path: Path, ports: str = "9401-9404", site_port: int = 8443) -> Path:
    parties = {p: {"site": f"https://{p}.example.org:{site_port}", "channel": {"host": f"{p}.example.org",
                                                                              "ports": ports}} for p in PARTIES}
    path = tmp_path / f"federation-{ports}.yaml"
    path.write_text(yaml.safe_dump({"parties": parties}))
    return path


def peers_of(party: str) -> dict:
    return {p: {"cidrs": [CIDRS[p]]} for p in PARTIES if p != party}


#: name -> (values for a party, federation channel ports, site port)
CASES = {
    "loadbalancer-sqlite": (lambda party, certs: {
        "channel": {"type": "LoadBalancer"}, "tls": {"secret": f"rayfed-{party}-tls"},
        "site": {"service": {"type": "LoadBalancer"}, "database": {"kind": "sqlite", "size": "2Gi"}}},
        "9401-9404", 8443),
    "nodeport-postgresql": (lambda party, certs: {
        "channel": {"type": "NodePort"}, "tls": {"secret": f"rayfed-{party}-tls"},
        "site": {"service": {"type": "NodePort"},
                 "database": {"kind": "postgresql", "secret": "site-db", "key": "url"}}},
        "30401-30404", 30443),
    "tls-from-certs-clusterip": (lambda party, certs: {
        "channel": {"type": "ClusterIP", "annotations": {"example.org/passthrough": "true"}},
        "tls": {"certs": str(certs)}, "ray": {"workers": {"min_replicas": 1, "max_replicas": 8, "cpu": 4}},
        "site": {"client_cidrs": ["10.0.0.0/8"]}},
        "9401-9401", 443),
}


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    create_dev_pki(list(PARTIES), out)
    return out


def render(tmp_path: Path, party: str, values: dict, fed: Path) -> tuple[int, Path]:
    values_file = tmp_path / f"{party}-values.yaml"
    values_file.write_text(yaml.safe_dump({**values, "peers": values.get("peers", peers_of(party))}))
    out = tmp_path / f"out-{party}"
    code = fed_main(["deploy", "render", "--party", party, "--federation", str(fed),
                     "--values", str(values_file), "-o", str(out)])
    return code, out


def documents(out: Path) -> dict[str, dict]:
    names = yaml.safe_load((out / "kustomization.yaml").read_text())["resources"]
    assert sorted(names) == sorted(p.name for p in out.glob("*.yaml") if p.name != "kustomization.yaml")
    return {n: yaml.safe_load((out / n).read_text()) for n in names}


def by_kind(docs: dict[str, dict], kind: str) -> list[dict]:
    return [d for d in docs.values() if d["kind"] == kind]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("party", PARTIES)
def test_render_two_parties_and_every_document_validates(tmp_path, certs, case, party):
    make, ports, site_port = CASES[case]
    code, out = render(tmp_path, party, make(party, certs), federation(tmp_path, ports, site_port))
    assert code == 0
    docs = documents(out)
    for doc in docs.values():
        validate_document(doc)
    kinds = sorted(d["kind"] for d in docs.values())
    postgres = case == "nodeport-postgresql"
    assert ("PersistentVolumeClaim" in kinds) is not postgres
    assert ("Secret" in kinds) is (case == "tls-from-certs-clusterip")
    (cluster,) = by_kind(docs, "RayCluster")
    assert cluster["spec"]["rayVersion"] == ray_version()
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    channel = next(d for d in by_kind(docs, "Service") if d["metadata"]["name"].endswith("-channel"))
    assert channel["spec"]["type"] == make(party, certs)["channel"]["type"]
    low, high = (int(p) for p in ports.split("-"))
    assert [p["port"] for p in channel["spec"]["ports"]] == list(range(low, high + 1))
    if postgres:
        assert all(p["nodePort"] == p["port"] for p in channel["spec"]["ports"])


def test_check_jsonschema_agrees_and_rejects_a_broken_raycluster(tmp_path, certs):
    make, ports, site_port = CASES["loadbalancer-sqlite"]
    code, out = render(tmp_path, "alice", make("alice", certs), federation(tmp_path, ports, site_port))
    assert code == 0
    (name,) = [n for n, d in documents(out).items() if d["kind"] == "RayCluster"]
    check = [sys.executable, "-m", "check_jsonschema", "--schemafile", str(SCHEMA_DIR / "raycluster_v1.json")]
    ok = subprocess.run([*check, str(out / name)], check=False, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = yaml.safe_load((out / name).read_text())
    broken["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    bad = subprocess.run([*check, str(tmp_path / "broken.yaml")], check=False, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "imagePullPolicyy" in bad.stdout + bad.stderr


def _mutations():
    def unknown_raycluster_field(d):
        d["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3

    def wrong_type(d):
        d["spec"]["ports"][0]["port"] = "https"

    def unknown_deployment_field(d):
        d["spec"]["template"]["spec"]["containers"][0]["commands"] = ["x"]

    def bad_policy(d):
        d["spec"]["ingress"][2]["from"][0]["ipBlock"] = {"cidrs": ["10.0.0.0/8"]}

    return {"RayCluster": unknown_raycluster_field, "Service": wrong_type, "Deployment": unknown_deployment_field,
            "NetworkPolicy": bad_policy}


@pytest.mark.parametrize("kind", sorted(_mutations()))
def test_a_broken_document_fails_validation(tmp_path, certs, kind):
    make, ports, site_port = CASES["loadbalancer-sqlite"]
    _, out = render(tmp_path, "alice", make("alice", certs), federation(tmp_path, ports, site_port))
    doc = copy.deepcopy(by_kind(documents(out), kind)[0])
    _mutations()[kind](doc)
    with pytest.raises(ManifestInvalid, match=kind):
        validate_document(doc)


WRONG = {
    "missing certificate": ({"tls": {}}, "tls: missing certificate"),
    "certificate file missing": ({"tls": {"certs": "EMPTY"}}, "missing certificate file"),
    "peer without an address": ({"tls": {"secret": "s"}, "peers": {}}, "peers.bob: a peer without an address"),
    "peer CIDR invalid": ({"tls": {"secret": "s"}, "peers": {"bob": {"cidrs": ["198.51.100.300/32"]}}},
                          "peers.bob.cidrs[0]: not a CIDR"),
    "invalid port": ({"tls": {"secret": "s"}, "site": {"container_port": 70000}}, "site.container_port"),
    "node port outside the range": ({"tls": {"secret": "s"}, "channel": {"type": "NodePort"}},
                                    "channel.type: NodePort exposes"),
    "unknown field": ({"tls": {"secret": "s"}, "chanel": {}}, "chanel: unknown field (did you mean 'channel'?)"),
    "not a party": ({"tls": {"secret": "s"}, "peers": {"bob": {"cidrs": ["10.0.0.1/32"]},
                                                       "carol": {"cidrs": ["10.0.0.2/32"]}}}, "peers.carol"),
}


@pytest.mark.parametrize("case", sorted(WRONG))
def test_wrong_values_are_refused_before_anything_is_written(tmp_path, capsys, case):
    values, expected = WRONG[case]
    if values.get("tls", {}).get("certs") == "EMPTY":
        values = {**values, "tls": {"certs": str(tmp_path)}}
    code, out = render(tmp_path, "alice", values, federation(tmp_path))
    assert code == 1
    assert expected in capsys.readouterr().err
    assert not out.exists()


def test_a_certificate_of_another_party_is_refused(tmp_path, certs):
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    shutil.copy(certs / "ca.crt", wrong / "ca.crt")
    shutil.copy(certs / "bob.crt", wrong / "alice.crt")
    shutil.copy(certs / "bob.key", wrong / "alice.key")
    code, out = render(tmp_path, "alice", {"tls": {"certs": str(wrong)}}, federation(tmp_path))
    assert code == 1 and not out.exists()


def test_tls_secret_holds_the_certs_files_and_is_private(tmp_path, certs):
    code, out = render(tmp_path, "alice", {"tls": {"certs": str(certs)}}, federation(tmp_path))
    assert code == 0
    (name,) = [n for n, d in documents(out).items() if d["kind"] == "Secret"]
    data = yaml.safe_load((out / name).read_text())["data"]
    assert base64.b64decode(data["tls.crt"]) == (certs / "alice.crt").read_bytes()
    assert base64.b64decode(data["ca.crt"]) == (certs / "ca.crt").read_bytes()
    assert (out / name).stat().st_mode & 0o077 == 0


def test_network_policy_admits_only_peers_to_channel_and_site(tmp_path):
    code, out = render(tmp_path, "alice", {"tls": {"secret": "s"}}, federation(tmp_path))
    assert code == 0
    (policy,) = by_kind(documents(out), "NetworkPolicy")
    own, operator, peers = policy["spec"]["ingress"]
    assert own == {"from": [{"podSelector": {}}]}  # the party's own pods (same namespace)
    assert operator["ports"] == [{"protocol": "TCP", "port": 8265}]  # KubeRay polls the dashboard
    assert operator["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name":
                                                                       "kuberay-system"}}}]
    assert peers["from"] == [{"ipBlock": {"cidr": CIDRS["bob"]}}]
    assert peers["ports"] == [{"protocol": "TCP", "port": 9401, "endPort": 9404}, {"protocol": "TCP", "port": 8443}]


def test_role_is_limited_to_rayjobs(tmp_path):
    _, out = render(tmp_path, "alice", {"tls": {"secret": "s"}}, federation(tmp_path))
    (role,) = by_kind(documents(out), "Role")
    assert {r for rule in role["rules"] for r in rule["resources"]} == {"rayjobs", "rayjobs/status"}
    assert all(rule["apiGroups"] == ["ray.io"] for rule in role["rules"])


def test_site_yaml_written_in_the_pod_is_the_sites_own_config(tmp_path):
    """Runs the init container's command (paths moved to tmp) with a PostgreSQL URL that
    needs quoting; the result parses as the site's configuration."""
    _, out = render(tmp_path, "alice", {"tls": {"secret": "s"}}, federation(tmp_path))
    (deployment,) = by_kind(documents(out), "Deployment")
    (config_map,) = [d for d in by_kind(documents(out), "ConfigMap") if "site.yaml" in d["data"]]
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    template, site = tmp_path / "template", tmp_path / "site"
    template.mkdir()
    site.mkdir()
    (template / "site.yaml").write_text(config_map["data"]["site.yaml"])
    script = init["command"][2].replace("/etc/rayfed/site-template", str(template))
    script = script.replace("/var/lib/rayfed/site", str(site))
    url = "postgresql://site:p@ss: #w'rd\"@db:5432/site"
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60,
                   env={**os.environ, "RAYFED_SITE_DATABASE": url})
    config = SiteConfig.model_validate(yaml.safe_load((site / "site.yaml").read_text()))
    assert config.database == url and config.party == "alice"
    assert config.runner.kind == "kubernetes" and config.runner.kubernetes.ray_cluster == "rayfed-alice"


def test_shipped_kustomize_base_is_what_the_renderer_writes(tmp_path):
    """deploy/kustomize/alice is `fed deploy render` of deploy/example (see its README)."""
    example, base = REPO / "deploy" / "example", REPO / "deploy" / "kustomize" / "alice"
    out = tmp_path / "alice"
    code = fed_main(["deploy", "render", "--party", "alice", "--federation", str(example / "federation.yaml"),
                     "--values", str(example / "alice-values.yaml"), "-o", str(out)])
    assert code == 0
    shipped = sorted(p.name for p in base.glob("*.yaml"))
    assert shipped == sorted(p.name for p in out.glob("*.yaml"))
    for name in shipped:
        assert (base / name).read_text() == (out / name).read_text(), f"{name}: re-render deploy/kustomize/alice"


def test_schemas_are_strict_and_their_source_is_noted():
    for name in ("raycluster_v1.json", "rayjob_v1.json"):
        schema = json.loads((SCHEMA_DIR / name).read_text())
        assert schema["additionalProperties"] is False
        assert schema["properties"]["spec"]["additionalProperties"] is False
    source = (SCHEMA_DIR / "SOURCE.md").read_text()
    assert "v1.7.0" in source and "Apache License 2.0" in source
    assert "Apache License" in (SCHEMA_DIR / "LICENSE").read_text()


def _schema_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("kuberay_schemas", REPO / "scripts" / "kuberay_schemas.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_schema_script_makes_crd_schemas_strict():
    """scripts/kuberay_schemas.py on a small CRD: unknown fields refused where the CRD lists
    properties, kept where Kubernetes preserves them; int-or-string and nullable."""
    from jsonschema import Draft7Validator

    crd = {"spec": {"group": "ray.io", "names": {"kind": "Thing"}, "versions": [{"name": "v1", "schema": {
        "openAPIV3Schema": {"type": "object", "properties": {
            "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
            "spec": {"type": "object", "properties": {
                "port": {"x-kubernetes-int-or-string": True},
                "when": {"type": "string", "nullable": True},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                         "properties": {"a": {"type": "string"}}}}}}}}}]}}
    check = Draft7Validator(_schema_script().schema_of(crd, "v1"))
    good = {"apiVersion": "ray.io/v1", "kind": "Thing", "metadata": {"name": "x"},
            "spec": {"port": "http", "when": None, "free": {"anything": 1}}}
    assert not list(check.iter_errors(good))
    assert not list(check.iter_errors({**good, "spec": {"port": 8080}}))
    assert list(check.iter_errors({**good, "spec": {"prot": 1}}))  # unknown field
    assert list(check.iter_errors({**good, "apiVersion": "ray.io/v2"}))
    assert list(check.iter_errors({**good, "spec": {"port": 1.5}}))
