"""Validate documents offline: KubeRay kinds against the JSON Schemas generated from the
pinned KubeRay release (fed/deploy/schemas/), core kinds against the Kubernetes schemas
kubernetes-validate ships, both strict (an unknown field is an error)."""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from fed.deploy.errors import ManifestInvalid
from fed.deploy.names import KUBERAY_VERSION, KUBERNETES_VERSION

SCHEMA_DIR = Path(__file__).parent / "schemas" / f"kuberay-{KUBERAY_VERSION}"
#: apiVersion/kind -> schema file of the pinned KubeRay release.
KUBERAY_KINDS = {("ray.io/v1", "RayCluster"): "raycluster_v1.json", ("ray.io/v1", "RayJob"): "rayjob_v1.json"}
_HINT = 'pip install -e ".[deploy]"'


@cache
def _kuberay_validator(file: str) -> Any:
    from jsonschema import Draft7Validator

    schema = json.loads((SCHEMA_DIR / file).read_text())
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def _where(path: Any) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "(top)"


def _validate_kuberay(doc: dict[str, Any], file: str) -> None:
    errors = sorted(_kuberay_validator(file).iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        detail = "; ".join(f"{_where(e.absolute_path)}: {e.message}" for e in errors[:5])
        raise ManifestInvalid(doc["kind"], _name(doc), f"{detail} (KubeRay {KUBERAY_VERSION} schema)")


def _validate_core(doc: dict[str, Any]) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        raise ManifestInvalid(doc.get("kind", "?"), _name(doc),
                              f"kubernetes-validate is not installed; install it with: {_HINT}") from None
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = _where(exc.path) if getattr(exc, "path", None) else "(top)"
        raise ManifestInvalid(doc["kind"], _name(doc), f"{where}: {exc.message} "
                              f"(Kubernetes {KUBERNETES_VERSION} schema)") from None
    except kubernetes_validate.SchemaNotFoundError:
        raise ManifestInvalid(doc["kind"], _name(doc), f"no schema for {doc.get('apiVersion')} {doc['kind']} "
                              f"in Kubernetes {KUBERNETES_VERSION}") from None


def _name(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata")
    return str(meta.get("name", "?")) if isinstance(meta, dict) else "?"


def validate_document(doc: Any) -> None:
    """Raise :class:`ManifestInvalid` unless ``doc`` matches its kind's schema."""
    if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str):
        raise ManifestInvalid("document", "?", "not a Kubernetes object (no kind)")
    file = KUBERAY_KINDS.get((doc.get("apiVersion"), doc["kind"]))
    if file is not None:
        _validate_kuberay(doc, file)
    else:
        _validate_core(doc)


def validate_all(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        validate_document(doc)
