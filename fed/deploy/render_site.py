"""The site: its configuration (site.yaml), the peers' addresses, the TLS Secret, its
database's storage, the Deployment and the Service peers and people reach it by."""
from __future__ import annotations

import base64
from typing import Any

import yaml

from fed.deploy.names import TLS_FILES, TLS_MOUNT, party_labels
from fed.deploy.plan import Plan
from fed.deploy.render_ray import exposed_service, meta
from fed.deploy.values import PostgresDatabase

SITE_DIR = "/var/lib/rayfed/site"  # an emptyDir: site.yaml written at start
DATA_DIR = "/var/lib/rayfed/data"  # the SQLite volume
TEMPLATE_DIR = "/etc/rayfed/site-template"
DATABASE_ENV = "RAYFED_SITE_DATABASE"
_PLACEHOLDER = "@" + DATABASE_ENV + "@"
#: Fills the database URL into site.yaml at start, so a PostgreSQL password stays in its Secret.
_WRITE_CONFIG = (
    "import json, os, pathlib; "
    f"t = pathlib.Path('{TEMPLATE_DIR}/site.yaml').read_text(); "
    f"p = pathlib.Path('{SITE_DIR}/site.yaml'); "
    f"p.write_text(t.replace('{_PLACEHOLDER}', json.dumps(os.environ['{DATABASE_ENV}']))); p.chmod(0o600)"
)


def site_yaml(plan: Plan) -> str:
    """The site's site.yaml, with the database left as a placeholder filled in at start."""
    config = {
        "party": plan.party,
        "url": plan.site_url,
        "listen": {"host": "0.0.0.0", "port": plan.values.site.container_port},
        "database": _PLACEHOLDER,
        "tls": {k: f"{TLS_MOUNT}/{v}" for k, v in TLS_FILES.items()},
        "federation": plan.federation.model_dump(exclude_none=True),
        "approval": plan.values.site.approval.model_dump(),
        "runner": {"kind": "kubernetes", "kubernetes": {"ray_cluster": plan.name, "namespace": plan.namespace}},
    }
    text = yaml.safe_dump(config, sort_keys=False)
    return text.replace(f"'{_PLACEHOLDER}'", _PLACEHOLDER)


def site_config_map(plan: Plan) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(plan, f"{plan.name}-site", "site"),
            "data": {"site.yaml": site_yaml(plan)}}


def peers_config_map(plan: Plan) -> dict[str, Any]:
    """The peers' addresses (site URL, channel host:ports, source CIDRs), for people and tools."""
    peers = {p.name: {"site": p.site, "channel": p.channel, "cidrs": list(p.cidrs)} for p in plan.peers}
    federation = yaml.safe_dump(plan.federation.model_dump(exclude_none=True), sort_keys=False)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(plan, f"{plan.name}-peers", "site"),
            "data": {"peers.yaml": yaml.safe_dump(peers, sort_keys=True), "federation.yaml": federation}}


def tls_secret(plan: Plan) -> dict[str, Any] | None:
    """The party's TLS Secret from a `fed certs` directory; None when values name an existing one."""
    if plan.tls_files is None:
        return None
    data = {TLS_FILES[k]: base64.b64encode(path.read_bytes()).decode() for k, path in plan.tls_files.items()}
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": meta(plan, plan.tls_secret, "tls"), "data": data}


def data_claim(plan: Plan) -> dict[str, Any] | None:
    """The SQLite database's volume; None with PostgreSQL."""
    db = plan.values.site.database
    if isinstance(db, PostgresDatabase):
        return None
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": db.size}}}
    if db.storage_class:
        spec["storageClassName"] = db.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": meta(plan, f"{plan.name}-site-data", "site"), "spec": spec}


def _database_env(plan: Plan) -> dict[str, Any]:
    db = plan.values.site.database
    if isinstance(db, PostgresDatabase):
        return {"name": DATABASE_ENV, "valueFrom": {"secretKeyRef": {"name": db.secret, "key": db.key}}}
    return {"name": DATABASE_ENV, "value": f"sqlite:///{DATA_DIR}/site.db"}


def _volumes(plan: Plan) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes = [
        {"name": "site", "emptyDir": {}},
        {"name": "template", "configMap": {"name": f"{plan.name}-site"}},
        {"name": "tls", "secret": {"secretName": plan.tls_secret, "defaultMode": 0o444}},
    ]
    mounts = [{"name": "site", "mountPath": SITE_DIR},
              {"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True}]
    if not isinstance(plan.values.site.database, PostgresDatabase):
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": f"{plan.name}-site-data"}})
        mounts.append({"name": "data", "mountPath": DATA_DIR})
    return volumes, mounts


def site_deployment(plan: Plan) -> dict[str, Any]:
    """One site replica (its database is its state); ``Recreate`` so two never share it."""
    labels = party_labels(plan.party, "site")
    port = plan.values.site.container_port
    volumes, mounts = _volumes(plan)
    image = {"image": plan.values.image, "imagePullPolicy": plan.values.image_pull_policy}
    init = {"name": "write-config", **image, "command": ["python", "-c", _WRITE_CONFIG],
            "env": [_database_env(plan)],
            "volumeMounts": [{"name": "site", "mountPath": SITE_DIR},
                             {"name": "template", "mountPath": TEMPLATE_DIR, "readOnly": True}]}
    site = {"name": "site", **image, "command": ["fed", "site", "start", SITE_DIR, "--log-level", "info"],
            "ports": [{"name": "https", "containerPort": port, "protocol": "TCP"}],
            "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 10},
            "volumeMounts": mounts}
    pod = {"metadata": {"labels": labels},
           "spec": {"serviceAccountName": f"{plan.name}-site", "initContainers": [init],
                    "containers": [site], "volumes": volumes}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(plan, f"{plan.name}-site", "site"),
            "spec": {"replicas": 1, "strategy": {"type": "Recreate"}, "selector": {"matchLabels": labels},
                     "template": pod}}


def site_service(plan: Plan) -> dict[str, Any]:
    """The site's HTTPS port at the port of its URL (TLS passes through to the site)."""
    selector = party_labels(plan.party, "site")
    ports = [("https", plan.site_port, plan.values.site.container_port)]
    return exposed_service(plan, f"{plan.name}-site", "site", plan.values.site.service, selector, ports)
