"""``fed certs``: a throwaway development PKI for mutual TLS between parties.

One CA signs one certificate per party. A party certificate carries the URI SAN
``rayfed://party/<name>``: that is what the transport checks to know *which* party
is on the other end (not just that it holds some certificate from the CA). The
subject CN and a DNS SAN also hold the name, for people reading the certificate;
hosts are added as SANs so ordinary hostname verification also succeeds. Each
certificate is valid both as TLS server and TLS client, since every party is
both. Not for production: the CA key sits next to the certificates.
"""
from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fed.cli import UsageError
from fed.names import PARTY_URI_PREFIX, party_name_problem

#: File names inside a PKI directory (also what ``RAYFED_TLS_DIR`` points at).
CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")
DEFAULT_DAYS = 30

# Tolerate modest clock skew between parties.
_BACKDATE = datetime.timedelta(minutes=5)


def validate_parties(parties: Sequence[str]) -> list[str]:
    """Check party names follow fed.init's rule (also safe as file/DNS names) and are unique."""
    names = [p.strip() for p in parties]
    if not names or any(not n for n in names):
        raise UsageError("--parties needs a comma-separated list of party names, e.g. alice,bob")
    for n in names:
        problem = party_name_problem(n)
        if problem:
            raise UsageError(problem)
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise UsageError(f"duplicate party name(s): {', '.join(dups)}")
    return names


def split_list(value: str) -> list[str]:
    """Parse a comma-separated option value (``alice,bob``)."""
    return [item.strip() for item in value.split(",")] if value.strip() else []


def party_paths(out_dir: Path, party: str) -> tuple[Path, Path]:
    """Certificate and key file of ``party`` inside a PKI directory."""
    return out_dir / f"{party}.crt", out_dir / f"{party}.key"


def tls_config_for(out_dir: Path, party: str) -> dict[str, Any]:
    """The ``tls_config`` dict a party passes to ``fed.init`` for a PKI directory."""
    out_dir = Path(out_dir).resolve()
    cert, key = party_paths(out_dir, party)
    return {
        "ca_cert": str(out_dir / CA_CERT_FILE),
        "cert": str(cert),
        "key": str(key),
        "verify_party": True,
    }


def _write_private(path: Path, data: bytes) -> None:
    """Write a key readable by the owner only (0600), also when replacing a file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _san_entries(party: str, hosts: Sequence[str]) -> list[Any]:
    """SANs for a party: its name (DNS + rayfed URI) and every host."""
    from cryptography import x509

    entries: list[Any] = [x509.DNSName(party), x509.UniformResourceIdentifier(PARTY_URI_PREFIX + party)]
    seen_dns = {party.lower()}
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if host.lower() not in seen_dns:
                seen_dns.add(host.lower())
                entries.append(x509.DNSName(host))
    return entries


def create_dev_pki(
    parties: list[str],
    out_dir: Path,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = DEFAULT_DAYS,
) -> dict[str, dict]:
    """Create ``ca.crt``/``ca.key`` and ``<party>.crt``/``<party>.key`` in ``out_dir``.

    Returns ``{party: tls_config}`` with absolute paths, ready for ``fed.init``.
    Existing files of the same names are replaced (a fresh CA each time, so the
    set stays consistent). Raises :class:`UsageError` on bad input.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    parties = validate_parties(parties)
    hosts = [h.strip() for h in hosts if h.strip()]
    if days <= 0:
        raise UsageError(f"--days must be positive, got {days}")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    validity = (now - _BACKDATE, now + datetime.timedelta(days=days))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _ca_certificate(ca_key, validity)
    _write_private(out_dir / CA_KEY_FILE, _key_pem(ca_key))
    (out_dir / CA_CERT_FILE).write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    configs: dict[str, dict] = {}
    for party in parties:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _party_certificate(party, hosts, key, ca_key, ca_cert, validity)
        cert_path, key_path = party_paths(out_dir, party)
        _write_private(key_path, _key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        configs[party] = tls_config_for(out_dir, party)
    return configs


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _key_usage(*, ca: bool) -> Any:
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=not ca, key_cert_sign=ca,
        crl_sign=ca, encipher_only=False, decipher_only=False,
    )


def _ca_certificate(ca_key: Any, validity: tuple[datetime.datetime, datetime.datetime]) -> Any:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rayfed development"),
        x509.NameAttribute(NameOID.COMMON_NAME, "rayfed development CA"),
    ])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _party_certificate(party: str, hosts: Sequence[str], key: Any, ca_key: Any, ca_cert: Any,
                       validity: tuple[datetime.datetime, datetime.datetime]) -> Any:
    """A leaf for TLS server and client use naming `party` (URI SAN, DNS SAN and CN)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rayfed development"),
            x509.NameAttribute(NameOID.COMMON_NAME, party),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(eku, critical=False)
        .add_extension(x509.SubjectAlternativeName(_san_entries(party, hosts)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def format_tls_config(config: dict[str, Any]) -> str:
    """Render a tls_config as a Python dict literal (double-quoted like the docs)."""
    import json

    def lit(v: Any) -> str:
        return repr(v) if isinstance(v, bool) or v is None else json.dumps(v)

    return "{" + ", ".join(f"{json.dumps(k)}: {lit(v)}" for k, v in config.items()) + "}"


def _cmd_certs(args: argparse.Namespace) -> int:
    """Handler of ``fed certs``."""
    parties = validate_parties(split_list(args.parties))
    configs = create_dev_pki(parties, Path(args.out), split_list(args.hosts), args.days)
    out_dir = Path(args.out).resolve()
    print(f"Development PKI written to {out_dir} (valid {args.days} days; keys are mode 0600).")
    print(f"CA key {out_dir / CA_KEY_FILE} can sign new party certificates: keep it private.")
    print("Pass these to fed.init(..., tls_config=...) in each party:")
    for party, cfg in configs.items():
        print(f"  {party}: {format_tls_config(cfg)}")
    print(f"Or run with: fed run SCRIPT --parties {','.join(parties)} --tls --certs {out_dir}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``certs`` subcommand."""
    p = subparsers.add_parser(
        "certs",
        help="create a development CA and per-party TLS certificates",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Create a development certificate authority (ca.crt, ca.key) and, for each\n"
            "party, a private key (<party>.key, mode 0600) and a certificate (<party>.crt)\n"
            "signed by the CA. The certificate's subject CN is the party name; its\n"
            "SubjectAlternativeName holds the party name (DNS), the URI\n"
            "rayfed://party/<name> and each --hosts entry; it is valid for both TLS\n"
            "server and client authentication. Prints the tls_config to pass to\n"
            "fed.init in each party. For development and tests only: the CA key is\n"
            "stored next to the certificates."
        ),
        epilog=(
            "examples:\n"
            "  fed certs --parties alice,bob --out ./certs\n"
            "  fed certs --parties alice,bob --hosts 127.0.0.1,localhost,alice.example --days 7\n"
            "  fed run script.py --parties alice,bob --certs ./certs"
        ),
    )
    p.add_argument("--parties", required=True, help="comma-separated party names, e.g. alice,bob")
    p.add_argument("--out", default="rayfed-certs", metavar="DIR", help="output directory (default: %(default)s)")
    p.add_argument(
        "--hosts",
        default=",".join(DEFAULT_HOSTS),
        help="comma-separated host names / IP addresses added to every party certificate (default: %(default)s)",
    )
    p.add_argument("--days", type=int, default=DEFAULT_DAYS, help="validity in days (default: %(default)s)")
    p.set_defaults(handler=_cmd_certs)
