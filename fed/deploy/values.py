"""The party's deployment values (``values.yaml``): what differs between one platform and
another. Parsed strictly (unknown keys and wrong types are errors with the field's path),
then checked against the federation file, so every problem is reported before anything
is written.
"""
from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fed.deploy.errors import DeployError
from fed.deploy.names import ray_version, rayfed_version
from fed.site.core.policy import ApprovalPolicy
from fed.site.core.validation import problems_from

_MODEL = ConfigDict(strict=True, extra="forbid", frozen=True)
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
Port = Annotated[int, Field(gt=0, lt=65536)]
ServiceType = Literal["LoadBalancer", "NodePort", "ClusterIP"]


def _quantity(value: Any) -> str:
    text = str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _QUANTITY.match(text):
        raise ValueError(f"not a Kubernetes quantity (e.g. 2, 500m, 4Gi): {value!r}")
    return text


class Resources(BaseModel):
    """CPU and memory of one Ray node (requests and limits alike)."""

    model_config = _MODEL
    cpu: str = "1"
    memory: str = "4Gi"

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _quantities(cls, value: Any) -> str:
        return _quantity(value)


class Workers(Resources):
    """The autoscaling worker group: the KubeRay autoscaler keeps it within min..max."""

    min_replicas: Annotated[int, Field(ge=0)] = 0
    max_replicas: Annotated[int, Field(ge=0)] = 4


class RayValues(BaseModel):
    model_config = _MODEL
    head: Resources = Resources()
    workers: Workers = Workers(cpu="2")


class ServiceValues(BaseModel):
    """How the port leaves the cluster: a LoadBalancer, node ports (the port the federation
    names, so it must lie in 30000-32767) or a ClusterIP behind the party's own ingress
    (TLS passed through, never terminated: the peers check this party's certificate)."""

    model_config = _MODEL
    type: ServiceType = "LoadBalancer"
    annotations: dict[str, str] = {}


class SqliteDatabase(BaseModel):
    model_config = _MODEL
    kind: Literal["sqlite"] = "sqlite"
    size: str = "1Gi"
    storage_class: str | None = None

    @field_validator("size", mode="before")
    @classmethod
    def _quantities(cls, value: Any) -> str:
        return _quantity(value)


class PostgresDatabase(BaseModel):
    """The database URL lives in a Secret the platform team creates; never in the values."""

    model_config = _MODEL
    kind: Literal["postgresql"]
    secret: str
    key: str = "url"


class SiteValues(BaseModel):
    model_config = _MODEL
    container_port: Port = 8443
    service: ServiceValues = ServiceValues()
    database: Annotated[SqliteDatabase | PostgresDatabase, Field(discriminator="kind")] = SqliteDatabase()
    #: Who may reach the site port besides the peers (people submitting jobs), as CIDRs.
    client_cidrs: list[str] = []
    approval: ApprovalPolicy = ApprovalPolicy()


class TlsValues(BaseModel):
    """The party's TLS material: an existing Secret (keys tls.crt, tls.key, ca.crt), or a
    `fed certs` directory from which the Secret is rendered."""

    model_config = _MODEL
    secret: str | None = None
    certs: str | None = None


class PeerValues(BaseModel):
    """Where a peer's connections come from, as CIDRs: the only sources the NetworkPolicy
    admits to the channel and site ports."""

    model_config = _MODEL
    cidrs: Annotated[list[str], Field(min_length=1)]


class Values(BaseModel):
    model_config = _MODEL
    namespace: str | None = None
    #: Where the KubeRay operator runs: it polls the head's dashboard for RayJob status.
    kuberay_namespace: str = "kuberay-system"
    image: str = Field(default_factory=lambda: f"rayfed:{rayfed_version()}-ray{ray_version()}")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    ray: RayValues = RayValues()
    channel: ServiceValues = ServiceValues()
    site: SiteValues = SiteValues()
    tls: TlsValues = TlsValues()
    peers: dict[str, PeerValues] = {}


_FIELDS = {f for m in (Resources, Workers, RayValues, ServiceValues, SqliteDatabase, PostgresDatabase,
                       SiteValues, TlsValues, PeerValues, Values, ApprovalPolicy) for f in m.model_fields}


def parse_values(data: Any, source: str = "values") -> Values:
    """Strictly parse a values mapping (``None`` -> every default)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DeployError([("", f"expected a mapping at the top, got {type(data).__name__}")], source)
    try:
        return Values.model_validate(data)
    except ValidationError as exc:
        raise DeployError(problems_from(exc, _FIELDS), source) from None


def load_values(path: Path | None) -> Values:
    """Read ``values.yaml``; no file means every default (which still needs ``tls`` and
    ``peers``, reported by :func:`fed.deploy.check.check`)."""
    if path is None:
        return parse_values({})
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise DeployError([("", f"cannot read {path}: {exc.strerror}")], str(path)) from None
    except yaml.YAMLError as exc:
        raise DeployError([("", f"not valid YAML: {exc}")], str(path)) from None
    return parse_values(data, str(path))


def cidr_problem(text: str) -> str | None:
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        return f"not a CIDR ({exc}); write e.g. 203.0.113.7/32"
    return None
