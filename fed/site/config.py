"""The site's configuration: ``DIR/site.yaml``, written by ``fed site init`` from the
federation file, read by every other ``fed site`` command.

Both files are parsed strictly (pydantic strict mode, unknown keys refused); every
error names the file and the field, e.g. ``site.yaml: tls.cert: no such file``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fed.certnames import read_names_from_file
from fed.names import PARTY_URI_PREFIX
from fed.site.core.policy import ApprovalPolicy
from fed.site.core.validation import (
    name_problem,
    normal_url,
    problems_from,
    site_url_problem,
)
from fed.site.errors import SiteConfigError

SITE_FILE = "site.yaml"
DB_FILE = "site.db"
_MODEL = ConfigDict(strict=True, extra="forbid", frozen=True)


class ChannelSpec(BaseModel):
    """Where a party's rayfed channels listen (used when its site runs tasks)."""

    model_config = _MODEL
    host: str
    ports: Annotated[str, Field(pattern=r"^\d{1,5}-\d{1,5}$")]


class FederationParty(BaseModel):
    model_config = _MODEL
    site: str
    channel: ChannelSpec | None = None


class Federation(BaseModel):
    """Every party of the federation and its site URL (``federation.yaml``)."""

    model_config = _MODEL
    parties: Annotated[dict[str, FederationParty], Field(min_length=1)]


class Listen(BaseModel):
    model_config = _MODEL
    host: str
    port: Annotated[int, Field(gt=0, lt=65536)]


class TlsFiles(BaseModel):
    """This party's certificate and key, and the CA bundle that verifies its peers."""

    model_config = _MODEL
    cert: str
    key: str
    ca_cert: str


class SyncSettings(BaseModel):
    """How often a site looks at its running jobs (see docs/sites.md, "Sync modes")."""

    model_config = _MODEL
    #: poll mode: the scheduler polls its parties, and the parties the scheduler, this often.
    poll_interval_s: Annotated[float, Field(gt=0)] = 2.0
    #: callback mode: the safety poll that catches a lost callback.
    safety_poll_s: Annotated[float, Field(gt=0)] = 15.0
    #: How often the site checks its own runs (runner status, timeouts) and its outbox.
    tick_s: Annotated[float, Field(gt=0)] = 0.5


#: Where a pod finds its Kubernetes service account (token, CA bundle, namespace).
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class KubernetesRunnerConfig(BaseModel):
    """How a site inside Kubernetes runs tasks: as RayJobs on the party's RayCluster,
    through the API server with the pod's service account (fed/site/runner/kubernetes.py)."""

    model_config = _MODEL
    ray_cluster: str
    #: Default: the service account's namespace (``namespace_file``).
    namespace: str | None = None
    #: Default: ``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``.
    api_url: str | None = None
    token_file: str = f"{SERVICE_ACCOUNT_DIR}/token"
    ca_file: str = f"{SERVICE_ACCOUNT_DIR}/ca.crt"
    namespace_file: str = f"{SERVICE_ACCOUNT_DIR}/namespace"


class RunnerConfig(BaseModel):
    """What runs this party's tasks. ``local``: jobs on the party's Ray cluster through
    its dashboard's Job Submission API at ``ray_address``; ``kubernetes``: RayJobs on the
    party's RayCluster (its subsection); ``none``: the site runs no tasks but schedules
    the jobs it is the scheduler of (a third party holding no data). Task output goes to
    ``<workdir>/<job_id>/<task>/`` (``workdir`` relative to the site directory)."""

    model_config = _MODEL
    kind: Literal["local", "kubernetes", "none"] = "local"
    #: The dashboard of the party's Ray cluster; None with kind ``local``: this site
    #: proposes and approves jobs but neither schedules nor runs them.
    ray_address: str | None = None
    #: The Ray cluster's token file when its token authentication is on (default: where
    #: Ray keeps it, RAY_AUTH_TOKEN or ~/.ray/auth_token).
    ray_token_file: str | None = None
    workdir: str = "runs"
    kubernetes: KubernetesRunnerConfig | None = None


def ray_address_problem(address: str) -> str | None:
    """Why ``address`` cannot be a Ray dashboard address, or None."""
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        return (f"bad Ray dashboard address {address!r}: write http://HOST:PORT "
                "(the dashboard of `ray start --head`, port 8265 by default)")
    return None


class SiteConfig(BaseModel):
    model_config = _MODEL
    party: str
    url: str
    listen: Listen
    database: str
    tls: TlsFiles
    federation: Federation
    approval: ApprovalPolicy = ApprovalPolicy()
    sync: SyncSettings = SyncSettings()
    runner: RunnerConfig = RunnerConfig()

    def site_of(self, party: str) -> str | None:
        entry = self.federation.parties.get(party)
        return normal_url(entry.site) if entry else None

    def task_dir(self, site_dir: Path, job_id: str, task: str) -> Path:
        """Where this party's run of ``task`` writes its output."""
        return (Path(site_dir) / self.runner.workdir / job_id / task).resolve()


_FIELDS = {f for m in (ChannelSpec, FederationParty, Federation, Listen, TlsFiles, SiteConfig, ApprovalPolicy,
                       RunnerConfig, KubernetesRunnerConfig, SyncSettings) for f in m.model_fields}


def _fail(source: str, problems: list[tuple[str, str]]) -> SiteConfigError:
    lines = "\n".join(f"  {path}: {what}" if path else f"  {what}" for path, what in problems)
    return SiteConfigError(f"invalid {source}:\n{lines}")


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SiteConfigError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SiteConfigError(f"{path} is not valid YAML: {exc}") from None


def _validate(model: type[BaseModel], data: Any, source: str) -> Any:
    if not isinstance(data, dict):
        raise _fail(source, [("", f"expected a mapping at the top, got {type(data).__name__}")])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _fail(source, problems_from(exc, _FIELDS)) from None


def federation_problems(fed: Federation) -> list[tuple[str, str]]:
    problems = []
    for name, entry in fed.parties.items():
        bad = name_problem(name, "party")
        if bad:
            problems.append((f"parties.{name}", bad))
        bad = site_url_problem(entry.site)
        if bad:
            problems.append((f"parties.{name}.site", bad))
    return problems


def load_federation(path: Path) -> Federation:
    """Read and check a federation file."""
    fed = _validate(Federation, _read_yaml(path), str(path))
    problems = federation_problems(fed)
    if problems:
        raise _fail(str(path), problems)
    return fed


def load_site(site_dir: Path) -> SiteConfig:
    """Read ``DIR/site.yaml`` and check the files it names exist."""
    path = Path(site_dir) / SITE_FILE
    if not path.is_file():
        raise SiteConfigError(f"{site_dir} is not a site directory (no {SITE_FILE}); create it with "
                              "`fed site init DIR --party NAME --federation federation.yaml`")
    config = _validate(SiteConfig, _read_yaml(path), str(path))
    problems = federation_problems(config.federation) + _tls_problems(config.tls, config.party, "tls")
    if config.party not in config.federation.parties:
        problems.append(("party", f"{config.party!r} is not a party of the federation"))
    if config.runner.kind == "kubernetes" and config.runner.kubernetes is None:
        problems.append(("runner.kubernetes", "kind 'kubernetes' needs this subsection (at least `ray_cluster: NAME`)"))
    bad = config.runner.ray_address and ray_address_problem(config.runner.ray_address)
    if bad:
        problems.append(("runner.ray_address", bad))
    if problems:
        raise _fail(str(path), problems)
    return config


def _tls_problems(tls: TlsFiles, party: str, prefix: str) -> list[tuple[str, str]]:
    problems = [(f"{prefix}.{k}", f"no such file: {v}") for k, v in tls.model_dump().items()
                if not Path(v).is_file()]
    if problems:
        return problems
    try:
        names = read_names_from_file(tls.cert)
    except ValueError as exc:
        return [(f"{prefix}.cert", f"not a PEM certificate: {exc}")]
    if party not in names.uri_parties:
        return [(f"{prefix}.cert", (f"the certificate ({names.describe()}) does not name party {party!r} "
                 f"with the URI SAN {PARTY_URI_PREFIX}{party}; `fed certs --parties ...` makes such certificates"))]
    return []


def build_site_config(site_dir: Path, party: str, federation: Federation, tls: TlsFiles,
                      database: str | None = None, policy: ApprovalPolicy | None = None,
                      runner: RunnerConfig | None = None) -> SiteConfig:
    """The configuration ``fed site init`` writes: listens where the federation says."""
    entry = federation.parties.get(party)
    if entry is None:
        raise SiteConfigError(f"party {party!r} is not in the federation "
                              f"(parties: {', '.join(federation.parties)})")
    problems = _tls_problems(tls, party, "tls")
    if problems:
        raise _fail("TLS files", problems)
    url = urlsplit(entry.site)
    listen = Listen(host=url.hostname or "127.0.0.1", port=url.port or 443)
    db = database or f"sqlite:///{Path(site_dir).resolve() / DB_FILE}"
    runner = runner or RunnerConfig()
    bad = runner.ray_address and ray_address_problem(runner.ray_address)
    if bad:
        raise _fail("the runner", [("runner.ray_address", bad)])
    return SiteConfig(party=party, url=normal_url(entry.site), listen=listen, database=db, tls=tls,
                      federation=federation, approval=policy or ApprovalPolicy(), runner=runner)


def write_site(site_dir: Path, config: SiteConfig, *, force: bool = False) -> Path:
    """Write ``DIR/site.yaml`` (mode 0600: it may hold a database password)."""
    import os

    import yaml

    path = Path(site_dir) / SITE_FILE
    if path.exists() and not force:
        raise SiteConfigError(f"{path} exists; pass --force to replace it")
    Path(site_dir).mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config.model_dump(exclude_none=True), sort_keys=False)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path
