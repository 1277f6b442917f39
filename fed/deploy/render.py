"""All the documents of one party, in apply order, and writing them as a Kustomize base
(one file per document plus ``kustomization.yaml``), only after every one validated."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from fed.deploy import render_access, render_ray, render_site
from fed.deploy.plan import Plan

Document = dict[str, Any]

#: Builders in apply order (the namespace and access rules before what they govern).
_BUILDERS: tuple[Callable[[Plan], Document | None], ...] = (
    lambda plan: {"apiVersion": "v1", "kind": "Namespace",
                  "metadata": {"name": plan.namespace, "labels": {"app.kubernetes.io/part-of": "rayfed"}}},
    render_access.service_account,
    render_access.role,
    render_access.role_binding,
    render_access.network_policy,
    render_site.tls_secret,
    render_site.peers_config_map,
    render_site.site_config_map,
    render_site.data_claim,
    render_ray.ray_cluster,
    render_ray.channel_service,
    render_site.site_deployment,
    render_site.site_service,
)


def render(plan: Plan) -> list[Document]:
    """Every document of the party (the TLS Secret only when rendered from files, the
    volume only with SQLite)."""
    return [doc for build in _BUILDERS if (doc := build(plan)) is not None]


def file_name(index: int, doc: Document) -> str:
    return f"{index:02d}-{doc['kind'].lower()}-{doc['metadata']['name']}.yaml"


class _Dumper(yaml.SafeDumper):
    """Plain YAML for people and kubectl: no anchors, multi-line strings as blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _str)


def dump(doc: Document) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def kustomization(names: list[str]) -> str:
    return dump({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": names})


def write(docs: list[Document], out_dir: Path) -> list[Path]:
    """Write the documents and a kustomization.yaml; a Secret's file is readable only by
    its owner. Returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names, written = [], []
    for i, doc in enumerate(docs, start=1):
        name = file_name(i, doc)
        path = out_dir / name
        mode = 0o600 if doc["kind"] == "Secret" else 0o644
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as fh:
            fh.write(dump(doc))
        names.append(name)
        written.append(path)
    path = out_dir / "kustomization.yaml"
    path.write_text(kustomization(names))
    return [*written, path]
