"""Typed configuration, parsed and validated once in `fed.init`.

Accepts both address forms RayFed users know (the seed README's ``cluster`` dict and
the newer ``addresses`` dict) and RayFed's ``config`` keys. Unknown keys are an
error with a did-you-mean, never silently ignored.
"""
from __future__ import annotations

import difflib
import ipaddress
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Annotated, Any

from pydantic import ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

from fed.errors import FedConfigError
from fed.names import (  # noqa: F401  (PARTY_NAME_RULE re-exported)
    ADDRESSES_ENV,
    MODE_ENV,
    PARTY_ENV,
    PARTY_NAME_RULE,
    PARTY_URI_PREFIX,
    TLS_DIR_ENV,
    party_name_problem,
)

MODES = ("production", "simulation")


@dataclass(frozen=True)
class Address:
    """A ``host:port`` pair; ``host`` may be an IPv6 literal (written ``[::1]:port``)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, what: str) -> Address:
        if not isinstance(text, str) or not text:
            raise FedConfigError(f"{what}: expected 'host:port', got {text!r}")
        raw = text
        for scheme in ("tcp://", "tls://", "http://", "https://", "grpc://"):
            if raw.startswith(scheme):
                raw = raw[len(scheme):]
        if raw.startswith("["):
            host, sep, port = raw[1:].partition("]:")
        else:
            host, sep, port = raw.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise FedConfigError(
                f"{what}: expected 'host:port' with a port in 1..65535, got {text!r}"
            )
        return cls(host, int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class PartyAddress:
    """Where peers reach a party, and where that party listens (defaults to the same)."""

    address: Address
    listen: Address


_STRICT = ConfigDict(strict=True, arbitrary_types_allowed=True)
_Positive = Annotated[float, Field(gt=0)]
_PositiveInt = Annotated[int, Field(gt=0)]


@pydantic_dataclass(config=_STRICT)
class CrossSiloCommConfig:
    """RayFed's ``config["cross_silo_comm"]`` keys, plus rayfed's own channel settings.

    Times are in milliseconds where RayFed used milliseconds, seconds otherwise. Types
    are strict (pydantic strict mode): ``"false"`` is not a bool and ``0.5`` is not an
    int, so a templated or YAML-quoted value fails `fed.init` instead of meaning True.
    """

    timeout_in_ms: _Positive = 60000
    messages_max_size_in_bytes: _PositiveInt | None = None
    exit_on_sending_failure: bool = False
    continue_waiting_for_data_sending_on_error: bool = False
    serializing_allowed_list: Any = None  # checked by fed.serialization.Allowlist
    expose_error_trace: bool = False
    max_concurrency: _PositiveInt | None = None
    send_resource_label: dict[str, float] | None = None
    recv_resource_label: dict[str, float] | None = None
    proxy_max_restarts: Annotated[int, Field(ge=0)] | None = None
    # RayFed keys that have no meaning for the TCP channel: accepted, documented as no-ops.
    use_global_proxy: bool | None = None
    http_header: dict | None = None
    grpc_channel_options: list | None = None
    grpc_retry_policy: dict | None = None
    # rayfed's own settings.
    chunk_size_in_bytes: _PositiveInt = 4 * 1024 * 1024
    connections_per_peer: Annotated[int, Field(ge=1)] = 4
    peer_timeout_s: _Positive = 10.0
    startup_timeout_s: _Positive = 60.0
    shutdown_flush_timeout_s: Annotated[float, Field(ge=0)] = 30.0
    listen_all_interfaces: bool = False
    # Receiver bounds (docs/security.md). A value larger than the per-peer buffer is
    # still admitted when nothing else from that peer is held, or when it is awaited.
    max_buffered_bytes_per_peer: _PositiveInt | None = 2 * 1024**3
    max_header_bytes: Annotated[int, Field(ge=4096)] = 1024 * 1024
    max_frames_per_value: _PositiveInt = 1_000_000
    # Where received torch tensors are placed (fed.codec.CodecOptions.torch_device).
    tensor_device: Annotated[str, Field(pattern=r"^(cpu|cuda|mps|xpu)(:[0-9]{1,3})?$")] = "cpu"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> CrossSiloCommConfig:
        where = "config['cross_silo_comm']"
        if data is not None and not isinstance(data, Mapping):
            raise FedConfigError(f"{where} must be a dict, got {data!r}")
        data = dict(data or {})
        _reject_unknown(data, [f.name for f in fields(cls)], where)
        cfg = _typed(cls, data, where)
        from fed.serialization import Allowlist

        Allowlist.from_config(cfg.serializing_allowed_list)  # bad entries fail in fed.init
        return cfg


def _typed(cls: type, data: dict[str, Any], where: str) -> Any:
    """``cls(**data)`` with pydantic's strict checks, as a FedConfigError naming the key,
    the value given and the type expected."""
    try:
        return cls(**data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = "".join(f"[{part!r}]" for part in err["loc"])
            given = err.get("input")
            problems.append(
                f"{where}{loc} = {given!r} ({type(given).__name__}): {_expected(err)}"
            )
        raise FedConfigError("; ".join(problems)) from None


def _expected(err: Mapping[str, Any]) -> str:
    """pydantic's message, reworded for the types users write in a config dict."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    for bound, sign in (("ge", ">="), ("gt", ">")):
        if bound in ctx:
            return f"expected a value {sign} {ctx[bound]}"
    names = {"bool_type": "expected a bool (True or False, not a string or number)",
             "int_type": "expected an int (not a float, bool or string)",
             "float_type": "expected a number (int or float, not a bool or string)",
             "dict_type": "expected a dict", "list_type": "expected a list",
             "string_pattern_mismatch": "expected a torch device such as 'cpu', 'cuda' or "
             "'cuda:1'", "string_type": "expected a string"}
    return names.get(kind, err["msg"].replace("Input should be", "expected a value"))


SHARED_CERT_FIX = (
    "To keep RayFed's one certificate shared by all parties, add \"verify_party\": False "
    "to tls_config (shared-certificate mode: any holder of a certificate the CA signed can "
    "then speak as any party, see docs/security.md)"
)


@dataclass(frozen=True)
class TlsConfig:
    """Mutual TLS between parties (``tls_config`` of `fed.init`).

    ``ca_cert`` is one CA bundle trusted for every peer, or ``{party: bundle}``: then a
    certificate is the party's whose CA bundle issued it, so parties need not share a
    CA. ``verify_party`` (default True): every certificate must name its party with the
    URI SAN ``rayfed://party/<name>``. False is RayFed's shared-certificate mode, only
    when given explicitly: certificates that name no party are accepted (with a warning).
    """

    cert: str
    key: str
    ca_cert: str | Mapping[str, str]
    verify_party: bool = True

    @property
    def per_party_ca(self) -> bool:
        return not isinstance(self.ca_cert, str)

    def ca_for(self, party: str) -> str:
        """The CA bundle that verifies `party`'s certificate."""
        return self.ca_cert if isinstance(self.ca_cert, str) else self.ca_cert[party]

    def all_cas(self) -> list[str]:
        return [self.ca_cert] if isinstance(self.ca_cert, str) else sorted(set(self.ca_cert.values()))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], parties: list[str], party: str) -> TlsConfig:
        if not isinstance(data, Mapping):
            raise FedConfigError(f"tls_config must be a dict, got {data!r}")
        _reject_unknown(data, ["ca_cert", "cert", "key", "verify_party"], "tls_config")
        for key in ("ca_cert", "cert", "key"):
            if not data.get(key):
                raise FedConfigError(
                    f"tls_config needs {key!r} (a file path); got keys {sorted(data)}. "
                    "`fed certs` creates a development set."
                )
        verify = data.get("verify_party", True)
        if not isinstance(verify, bool):
            raise FedConfigError(
                f"tls_config['verify_party'] = {verify!r} ({type(verify).__name__}): expected a "
                "bool (True or False, not a string or number)"
            )
        tls = cls(
            cert=_existing_file(data["cert"], "tls_config['cert']"),
            key=_existing_file(data["key"], "tls_config['key']"),
            ca_cert=_ca_bundles(data["ca_cert"], parties, party),
            verify_party=verify,
        )
        if verify:
            _check_own_certificate(tls.cert, party)
        return tls


def _ca_bundles(ca: Any, parties: list[str], party: str) -> str | dict[str, str]:
    """One CA bundle path, or ``{party: path}`` covering every peer."""
    if not isinstance(ca, Mapping):
        return _existing_file(ca, "tls_config['ca_cert']")
    _reject_unknown(ca, parties, "tls_config['ca_cert']")
    missing = [p for p in parties if p != party and p not in ca]
    if missing:
        raise FedConfigError(
            f"tls_config['ca_cert'] has no CA bundle for {missing}: with one CA per "
            "party every peer needs an entry (or pass one path for all)"
        )
    return {p: _existing_file(path, f"tls_config['ca_cert'][{p!r}]") for p, path in ca.items()}


def _check_own_certificate(cert: str, party: str) -> None:
    """With party verification on, peers accept only certificates naming their party
    by URI SAN: a certificate that does not name this party fails here, not at every peer."""
    from fed.certnames import read_names_from_file

    try:
        names = read_names_from_file(cert)
    except ValueError as exc:
        raise FedConfigError(f"tls_config['cert']: {cert!r} is not a PEM certificate: {exc}") from None
    if names.uri_parties == (party,):
        return
    raise FedConfigError(
        f"tls_config['cert'] {cert!r} does not name party {party!r} ({names.describe()}): with "
        f"party verification on (the default) each party's certificate must carry exactly the "
        f"URI SAN {PARTY_URI_PREFIX}{party} (`fed certs` issues such certificates). "
        + SHARED_CERT_FIX
    )


def _existing_file(path: Any, what: str) -> str:
    """An absolute path (proxy actors may run in another directory) to an existing file."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise FedConfigError(f"{what} must be a file path, got {path!r}")
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise FedConfigError(f"{what}: no such file {path!r}")
    return path


@dataclass(frozen=True)
class EgressConfig:
    """What may leave this party (``config["egress"]``, see docs/security.md).

    ``allowed_parties``: the peers values may be sent to (None: every party of the job).
    ``policy``: ``policy(request: fed.egress.EgressRequest) -> bool`` called in the driver
    before each send; False (or an exception) vetoes it. ``audit_log``: a JSON-lines file
    where every value that leaves is recorded (time, job, call, destination, bytes, sha256).
    """

    allowed_parties: tuple[str, ...] | None = None
    policy: Callable[[Any], bool] | None = None
    audit_log: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, parties: list[str]) -> EgressConfig:
        data = dict(data or {})
        _reject_unknown(data, ["allowed_parties", "policy", "audit_log"], "config['egress']")
        allowed = data.get("allowed_parties")
        if allowed is not None:
            if isinstance(allowed, str) or not isinstance(allowed, (list, tuple, set, frozenset)):
                raise FedConfigError(
                    f"config['egress']['allowed_parties'] must be a list of party names, got {allowed!r}"
                )
            for name in allowed:
                if name not in parties:
                    close = difflib.get_close_matches(str(name), parties, n=1)
                    hint = f" Did you mean {close[0]!r}?" if close else ""
                    raise FedConfigError(
                        f"config['egress']['allowed_parties']: {name!r} is not a party of this "
                        f"job {sorted(parties)}.{hint}"
                    )
            allowed = tuple(sorted(set(allowed)))
        policy = data.get("policy")
        if policy is not None and not callable(policy):
            raise FedConfigError(f"config['egress']['policy'] must be callable, got {policy!r}")
        audit = data.get("audit_log")
        if audit is not None:
            if not isinstance(audit, (str, os.PathLike)) or not os.fspath(audit):
                raise FedConfigError(f"config['egress']['audit_log'] must be a file path, got {audit!r}")
            audit = os.path.abspath(os.fspath(audit))
            from fed.audit import AuditLog

            try:  # created now: a log that cannot be written fails fed.init, not a send
                AuditLog(audit).check_writable()
            except OSError as exc:
                raise FedConfigError(
                    f"config['egress']['audit_log']: cannot append to {audit!r}: {exc.strerror or exc}"
                ) from None
        return cls(allowed_parties=allowed, policy=policy, audit_log=audit)


#: A job name travels in every HELLO, which a receiver reads only up to 4 KiB
#: (fed.transport.limits.SMALL_FRAME_BYTES): 512 characters are at most 2 KiB of UTF-8.
MAX_JOB_NAME_CHARS = 512
TOP_LEVEL_KEYS = ("cross_silo_comm", "barrier_on_initializing", "egress")


@dataclass
class FedConfig:
    """Everything `fed.init` decided, in one immutable-by-convention record."""

    party: str
    job_name: str
    parties: dict[str, PartyAddress]
    mode: str = "production"
    comm: CrossSiloCommConfig = field(default_factory=CrossSiloCommConfig)
    barrier_on_initializing: bool = False
    tls: TlsConfig | None = None
    egress: EgressConfig = field(default_factory=EgressConfig)

    @property
    def peers(self) -> list[str]:
        return [p for p in self.parties if p != self.party]


def _reject_unknown(data: Mapping[str, Any], known: list[str], where: str) -> None:
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise FedConfigError(
                f"unknown key {key!r} in {where}.{hint} Known keys: {', '.join(sorted(known))}."
            )


def _parse_party_entry(name: str, entry: Any, listen_all: bool) -> PartyAddress:
    if isinstance(entry, str):
        address, listen = entry, None
    elif isinstance(entry, Mapping):
        _reject_unknown(entry, ["address", "listen_addr"], f"cluster[{name!r}]")
        if "address" not in entry:
            raise FedConfigError(f"cluster[{name!r}] needs an 'address': 'host:port'")
        address, listen = entry["address"], entry.get("listen_addr")
    else:
        raise FedConfigError(
            f"the address of party {name!r} must be 'host:port' or "
            f"{{'address': 'host:port'}}, got {entry!r}"
        )
    addr = Address.parse(address, f"address of party {name!r}")
    if listen is not None:
        listen_addr = Address.parse(listen, f"listen_addr of party {name!r}")
    elif listen_all:
        listen_addr = Address("0.0.0.0", addr.port)
    else:
        listen_addr = Address(_listen_host_for(addr.host), addr.port)
    return PartyAddress(addr, listen_addr)


def _listen_host_for(host: str) -> str:
    """Listen on the configured address itself when it is local, never on all interfaces."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        return host  # a DNS name: bind to what it resolves to


def resolve_addresses(addresses: Any, cluster: Any) -> Mapping[str, Any]:
    """Pick the address map from the arguments, or from ``RAYFED_ADDRESSES`` set by `fed run`."""
    if addresses is not None and cluster is not None:
        raise FedConfigError("pass either addresses= or cluster= to fed.init, not both")
    chosen = addresses if addresses is not None else cluster
    if chosen is None:
        env = os.environ.get(ADDRESSES_ENV)
        if not env:
            raise FedConfigError(
                "fed.init needs the parties' addresses: pass addresses={'alice': "
                "'127.0.0.1:11010', ...} (or cluster=...), or start the script with "
                f"`fed run`, which sets {ADDRESSES_ENV}"
            )
        try:
            chosen = json.loads(env)
        except ValueError as exc:
            raise FedConfigError(f"{ADDRESSES_ENV} is not valid JSON: {exc}") from None
    if not isinstance(chosen, Mapping) or not chosen:
        raise FedConfigError(f"the parties' addresses must be a non-empty dict, got {chosen!r}")
    return chosen


def build_config(
    *,
    party: str | None,
    addresses: Any,
    cluster: Any,
    config: Mapping[str, Any] | None,
    tls_config: Mapping[str, Any] | None,
    job_name: str | None,
    mode: str | None,
) -> FedConfig:
    """Validate every argument of `fed.init` and return the typed result."""
    if config is not None and not isinstance(config, Mapping):
        raise FedConfigError(f"fed.init(config=...) must be a dict, got {config!r}")
    config = dict(config or {})
    _reject_unknown(config, list(TOP_LEVEL_KEYS), "fed.init(config=...)")
    comm = CrossSiloCommConfig.from_dict(config.get("cross_silo_comm"))
    barrier = config.get("barrier_on_initializing", False)
    if not isinstance(barrier, bool):
        raise FedConfigError(
            f"config['barrier_on_initializing'] = {barrier!r} ({type(barrier).__name__}): "
            "expected a bool (True or False, not a string or number)"
        )
    mode = mode or os.environ.get(MODE_ENV) or "production"
    if mode not in MODES:
        raise FedConfigError(f"mode must be one of {MODES}, got {mode!r}")
    parties = _parse_parties(resolve_addresses(addresses, cluster), comm.listen_all_interfaces)
    party = _this_party(party, parties)
    if job_name is None:
        job_name = "anonymous"
    if not isinstance(job_name, str) or not job_name or not job_name.isprintable():
        raise FedConfigError(f"job_name must be a non-empty printable string, got {job_name!r}")
    if len(job_name) > MAX_JOB_NAME_CHARS:  # it travels in every HELLO (at most 4 KiB)
        raise FedConfigError(f"job_name has {len(job_name)} characters; at most "
                             f"{MAX_JOB_NAME_CHARS} are allowed, got {job_name[:40]!r}...")
    raw_tls = tls_config if tls_config else _tls_from_env(party)
    tls = TlsConfig.from_dict(raw_tls, list(parties), party) if raw_tls is not None else None
    cfg = FedConfig(
        party=party,
        job_name=job_name,
        parties=parties,
        mode=mode,
        comm=comm,
        barrier_on_initializing=barrier,
        tls=tls,
        egress=EgressConfig.from_dict(config.get("egress"), list(parties)),
    )
    _warn_risky(cfg)
    return cfg


def _parse_parties(raw: Mapping[str, Any], listen_all: bool) -> dict[str, PartyAddress]:
    parties: dict[str, PartyAddress] = {}
    for name, entry in raw.items():
        problem = party_name_problem(name)
        if problem:
            raise FedConfigError(problem)
        parties[name] = _parse_party_entry(name, entry, listen_all)
    return parties


def _this_party(party: str | None, parties: Mapping[str, PartyAddress]) -> str:
    """`party`, else ``RAYFED_PARTY`` (set by `fed run`); one of `parties`."""
    if party is None:
        party = os.environ.get(PARTY_ENV)
    if not party:
        raise FedConfigError(f"fed.init needs party=, one of {sorted(parties)}")
    if party not in parties:
        close = difflib.get_close_matches(str(party), list(parties), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise FedConfigError(f"party {party!r} is not among the addresses {sorted(parties)}.{hint}")
    return party


def _tls_from_env(party: str) -> dict[str, Any] | None:
    """`fed run --tls`: a `fed certs` directory, whose certificates name their party."""
    tls_dir = os.environ.get(TLS_DIR_ENV)
    if not tls_dir:
        return None
    return {
        "ca_cert": os.path.join(tls_dir, "ca.crt"),
        "cert": os.path.join(tls_dir, f"{party}.crt"),
        "key": os.path.join(tls_dir, f"{party}.key"),
        "verify_party": True,
    }


def _warn_risky(cfg: FedConfig) -> None:
    """Settings that are valid but let peers do more than usual: said once, in fed.init."""
    from fed._log import party_logger

    log = party_logger(cfg.party, cfg.job_name)
    if cfg.tls is not None and not cfg.tls.verify_party:
        log.warning(
            "tls_config['verify_party']=False (shared-certificate mode): peers whose "
            "certificate names no party are accepted as any party, so anyone holding a "
            "certificate this CA signed can impersonate a party and receive its values. "
            "Give each party its own certificate (`fed certs`) and remove verify_party."
        )
    if cfg.comm.serializing_allowed_list == "*":
        log.warning(
            "serializing_allowed_list='*': values from other parties are unpickled without "
            "restriction, so any peer (or anyone reaching this party's port without TLS) can "
            "run code here. Use an allowlist unless every peer is fully trusted."
        )
