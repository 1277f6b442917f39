"""Names and pins shared by the renderer and the Kubernetes runner, so the RayJobs a site
creates point at the RayCluster that ``fed deploy render`` made."""
from __future__ import annotations

import hashlib
import re
from importlib.metadata import PackageNotFoundError, version

#: The KubeRay release whose CRD schemas live in fed/deploy/schemas/.
KUBERAY_VERSION = "v1.7.0"
#: The Kubernetes release whose core schemas (kubernetes-validate) the manifests must match.
KUBERNETES_VERSION = "1.31.0"
#: KubeRay refuses longer names (MaxRayClusterNameLength, MaxRayJobNameLength in v1.7.0).
MAX_CLUSTER_NAME = 53
MAX_RAYJOB_NAME = 47
#: Where every pod of the party finds its TLS Secret (the site and the Ray nodes alike).
TLS_MOUNT = "/etc/rayfed/tls"
TLS_FILES = {"cert": "tls.crt", "key": "tls.key", "ca_cert": "ca.crt"}
#: The label every object of one party carries (the NetworkPolicy selects on it).
PARTY_LABEL = "rayfed.io/party"
PART_OF = {"app.kubernetes.io/part-of": "rayfed"}
#: The label of a RayJob naming its rayfed job (``kubectl get rayjobs -l rayfed.io/job=ID``).
JOB_LABEL = "rayfed.io/job"

_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def ray_version() -> str:
    """The installed Ray's version: the RayCluster's ``rayVersion`` is pinned to it."""
    try:
        return version("ray")
    except PackageNotFoundError:  # pragma: no cover - ray is a dependency of rayfed
        return "2.60.0"


def rayfed_version() -> str:
    try:
        return version("rayfed")
    except PackageNotFoundError:
        return "0.1.0"


def dns_label(text: str, max_len: int = 63) -> str:
    """A DNS-1123 label from ``text``: lowercase, ``[a-z0-9-]``, at most ``max_len`` long.
    When anything had to change (case, characters, length) an 8-hex hash of the original
    ends the label, so two different texts never share a name."""
    clean = _NOT_DNS.sub("-", text.lower()).strip("-")
    if clean == text and len(clean) <= max_len:
        return clean
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    head = clean[: max_len - len(digest) - 1].rstrip("-")
    return f"{head}-{digest}" if head else f"x-{digest}"


def base_name(party: str) -> str:
    """``rayfed-<party>``: the prefix of every object of the party (and its RayCluster)."""
    return dns_label(f"rayfed-{party}", MAX_CLUSTER_NAME - 10)


def cluster_name(party: str) -> str:
    return base_name(party)


def rayjob_name(submission_id: str) -> str:
    """The RayJob of one submission: deterministic, so a second submit finds the first."""
    return dns_label(submission_id, MAX_RAYJOB_NAME)


def party_labels(party: str, component: str) -> dict[str, str]:
    return {**PART_OF, PARTY_LABEL: dns_label(party), "app.kubernetes.io/component": component}
