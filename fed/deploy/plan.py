"""Check a party's values against the federation file and resolve what the renderer needs
(names, ports, peers, TLS files) into one :class:`Plan`. Every problem is collected and
raised together as a :class:`~fed.deploy.errors.DeployError`, before anything is written.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from fed.certnames import read_names_from_file
from fed.deploy.errors import DeployError
from fed.deploy.names import base_name, dns_label
from fed.deploy.values import ServiceValues, Values, cidr_problem
from fed.names import PARTY_URI_PREFIX
from fed.site.config import Federation

NODE_PORTS = range(30000, 32768)
#: A Service lists each channel port; more than this is a typo, not a plan.
MAX_CHANNEL_PORTS = 64


@dataclass(frozen=True)
class Peer:
    name: str
    site: str
    channel: str  # "host:lo-hi", or "" when the federation gives none
    cidrs: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """Everything rendering needs, already checked."""

    party: str
    namespace: str
    name: str  # rayfed-<party>: prefix of every object, and the RayCluster's name
    values: Values
    federation: Federation
    site_url: str
    site_port: int  # the port of the site's URL: its Service's port
    channel_host: str
    channel_ports: tuple[int, ...]
    peers: tuple[Peer, ...]
    #: cert, key, ca_cert paths from a `fed certs` directory; None when values name a Secret.
    tls_files: dict[str, Path] | None
    tls_secret: str


def _port_range(text: str) -> tuple[int, int]:
    lo, hi = (int(p) for p in text.split("-"))
    return lo, hi


def _channel_problems(fed: Federation, party: str, values: Values) -> tuple[list, tuple[int, ...], str]:
    spec = fed.parties[party].channel
    if spec is None:
        return [("federation.parties." + party + ".channel",
                 "the party's channel is missing: add `channel: {host: PUBLIC_HOST, ports: 9401-9410}`")], (), ""
    lo, hi = _port_range(spec.ports)
    problems = []
    if not (0 < lo <= hi < 65536):
        problems.append((f"federation.parties.{party}.channel.ports",
                         f"invalid port range {spec.ports!r}: give LOW-HIGH with 1 <= LOW <= HIGH <= 65535"))
    elif hi - lo + 1 > MAX_CHANNEL_PORTS:
        problems.append((f"federation.parties.{party}.channel.ports",
                         f"{hi - lo + 1} ports; at most {MAX_CHANNEL_PORTS} (one per concurrent task)"))
    ports = tuple(range(lo, hi + 1)) if not problems else ()
    problems += _node_port_problems("channel.type", values.channel, ports)
    return problems, ports, spec.host


def _node_port_problems(path: str, service: ServiceValues, ports: tuple[int, ...]) -> list[tuple[str, str]]:
    if service.type != "NodePort":
        return []
    bad = [p for p in ports if p not in NODE_PORTS]
    if not bad:
        return []
    return [(path, (f"NodePort exposes the federation's port(s) {bad} as node ports, which must lie in "
             "30000-32767: change the ports in federation.yaml or use LoadBalancer/ClusterIP"))]


def _peer_problems(fed: Federation, party: str, values: Values) -> tuple[list, tuple[Peer, ...]]:
    problems, peers = [], []
    for name in values.peers:
        if name not in fed.parties:
            problems.append((f"peers.{name}", f"not a party of the federation (parties: {', '.join(fed.parties)})"))
        elif name == party:
            problems.append((f"peers.{name}", "this is the party itself, not a peer: remove it"))
    for name, entry in fed.parties.items():
        if name == party:
            continue
        given = values.peers.get(name)
        if given is None:
            problems.append((f"peers.{name}", "a peer without an address: give `peers: {" + name
                             + ": {cidrs: [ITS_EGRESS_IP/32]}}` (the NetworkPolicy admits only these)"))
            continue
        for i, cidr in enumerate(given.cidrs):
            bad = cidr_problem(cidr)
            if bad:
                problems.append((f"peers.{name}.cidrs[{i}]", bad))
        channel = f"{entry.channel.host}:{entry.channel.ports}" if entry.channel else ""
        peers.append(Peer(name, entry.site, channel, tuple(given.cidrs)))
    return problems, tuple(peers)


def _tls_problems(values: Values, party: str) -> tuple[list, dict[str, Path] | None]:
    tls = values.tls
    if (tls.secret is None) == (tls.certs is None):
        return [("tls", ("missing certificate: give exactly one of `tls.secret: NAME` (an existing Secret with "
                 "tls.crt, tls.key, ca.crt) or `tls.certs: DIR` (a `fed certs` directory)"))], None
    if tls.secret is not None:
        bad = [] if dns_label(tls.secret) == tls.secret else [("tls.secret", f"{tls.secret!r} is not a DNS-1123 name")]
        return bad, None
    d = Path(tls.certs).expanduser()
    files = {"cert": d / f"{party}.crt", "key": d / f"{party}.key", "ca_cert": d / "ca.crt"}
    missing = [("tls.certs", f"missing certificate file {p} (make it with `fed certs --parties ...`)")
               for p in files.values() if not p.is_file()]
    if missing:
        return missing, None
    try:
        names = read_names_from_file(str(files["cert"]))
    except ValueError as exc:
        return [("tls.certs", f"{files['cert']} is not a PEM certificate: {exc}")], None
    if party not in names.uri_parties:
        return [("tls.certs", (f"{files['cert']} ({names.describe()}) does not name party {party!r} with the "
                 f"URI SAN {PARTY_URI_PREFIX}{party}"))], None
    return [], files


def _site_port(fed: Federation, party: str, values: Values) -> tuple[list, int]:
    port = urlsplit(fed.parties[party].site).port or 443
    return _node_port_problems("site.service.type", values.site.service, (port,)), port


def make_plan(party: str, fed: Federation, values: Values, source: str = "values") -> Plan:
    """Check everything; raise one DeployError (naming ``source``) listing every problem."""
    if party not in fed.parties:
        raise DeployError([("party", f"{party!r} is not in the federation (parties: {', '.join(fed.parties)})")],
                          source)
    problems, ports, host = _channel_problems(fed, party, values)
    peer_problems, peers = _peer_problems(fed, party, values)
    tls_problems, tls_files = _tls_problems(values, party)
    site_problems, site_port = _site_port(fed, party, values)
    problems += peer_problems + tls_problems + site_problems
    problems += [(f"site.client_cidrs[{i}]", bad) for i, c in enumerate(values.site.client_cidrs)
                 if (bad := cidr_problem(c))]
    workers = values.ray.workers
    if workers.min_replicas > workers.max_replicas:
        problems.append(("ray.workers", f"min_replicas {workers.min_replicas} > max_replicas {workers.max_replicas}"))
    namespace = values.namespace or dns_label(f"rayfed-{party}")
    for field, value in (("namespace", namespace), ("kuberay_namespace", values.kuberay_namespace)):
        if dns_label(value) != value:
            problems.append((field, f"{value!r} is not a DNS-1123 label"))
    if problems:
        raise DeployError(problems, source)
    name = base_name(party)
    return Plan(party=party, namespace=namespace, name=name, values=values, federation=fed,
                site_url=fed.parties[party].site.rstrip("/"), site_port=site_port, channel_host=host,
                channel_ports=ports, peers=peers, tls_files=tls_files,
                tls_secret=values.tls.secret or f"{name}-tls")
