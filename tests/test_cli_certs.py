"""Tests of `fed certs` / `create_dev_pki`: files parse, chain verifies, names are right."""
from __future__ import annotations

import ast
import datetime
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parents[1]


def fed(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "fed.cli.main", *args], env=env, capture_output=True, text=True, timeout=45
    )


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def parse_configs(stdout: str) -> dict[str, dict]:
    """The `  party: {...}` lines must be valid Python dict literals."""
    configs = {}
    for line in stdout.splitlines():
        head, sep, rest = line.strip().partition(": ")
        if sep and rest.startswith("{"):
            configs[head] = ast.literal_eval(rest)
    return configs


@pytest.mark.timeout(60)
def test_certs_command_creates_a_valid_pki(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    res = fed("certs", "--parties", "alice,bob", "--out", str(out), "--hosts", "127.0.0.1,localhost,node1.example,::1", "--days", "7")
    assert res.returncode == 0, res.stderr
    configs = parse_configs(res.stdout)
    assert set(configs) == {"alice", "bob"}

    ca = load_cert(out / "ca.crt")
    ca_key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), password=None)
    assert ca.public_key().public_numbers() == ca_key.public_key().public_numbers()
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert (out / "ca.key").stat().st_mode & 0o777 == 0o600

    for party in ("alice", "bob"):
        cfg = configs[party]
        assert cfg == {
            "ca_cert": str((out / "ca.crt").resolve()),
            "cert": str((out / f"{party}.crt").resolve()),
            "key": str((out / f"{party}.key").resolve()),
            "verify_party": True,
        }
        cert = load_cert(Path(cfg["cert"]))
        key = serialization.load_pem_private_key(Path(cfg["key"]).read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert cert.public_key().public_numbers() == key.public_key().public_numbers()
        assert Path(cfg["key"]).stat().st_mode & 0o777 == 0o600

        # Signed by the CA: check the signature itself, then the issuer link.
        ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        cert.verify_directly_issued_by(ca)

        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == party
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert party in san.get_values_for_type(x509.DNSName)
        assert {"localhost", "node1.example"} <= set(san.get_values_for_type(x509.DNSName))
        assert f"rayfed://party/{party}" in san.get_values_for_type(x509.UniformResourceIdentifier)
        assert set(san.get_values_for_type(x509.IPAddress)) == {
            ipaddress.ip_address("127.0.0.1"),
            ipaddress.ip_address("::1"),
        }
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
        lifetime = cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
        assert datetime.timedelta(days=6) < lifetime <= datetime.timedelta(days=7)

    # Different parties, different keys.
    assert (out / "alice.key").read_bytes() != (out / "bob.key").read_bytes()


@pytest.mark.timeout(60)
def test_create_dev_pki_function_and_mutual_tls(tmp_path: Path) -> None:
    """The PKI works for a real mutual-TLS handshake, with party names checkable on both ends."""
    sys.path.insert(0, str(REPO))
    try:
        from fed.cli.certs import create_dev_pki
    finally:
        sys.path.remove(str(REPO))
    configs = create_dev_pki(["alice", "bob"], tmp_path / "pki", ["127.0.0.1", "localhost"], 1)
    assert set(configs) == {"alice", "bob"}
    alice, bob = configs["alice"], configs["bob"]

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(alice["cert"], alice["key"])
    server_ctx.load_verify_locations(alice["ca_cert"])
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=bob["ca_cert"])
    client_ctx.load_cert_chain(bob["cert"], bob["key"])

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: dict[str, object] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            seen["client"] = tls.getpeercert()
            tls.sendall(b"ok")

    try:
        # Hostname checks pass for the party name and for localhost.
        for server_hostname in ("alice", "localhost"):
            t = threading.Thread(target=serve, daemon=True)
            t.start()
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                    assert tls.recv(2) == b"ok"
                    server_cert = tls.getpeercert()
            t.join(10)
            assert ("DNS", "alice") in server_cert["subjectAltName"]
            assert ("URI", "rayfed://party/bob") in seen["client"]["subjectAltName"]
    finally:
        listener.close()


@pytest.mark.timeout(60)
def test_certs_rejects_wrong_input(tmp_path: Path) -> None:
    cases = [
        (["certs", "--parties", "alice,alice", "--out", str(tmp_path / "a")], "duplicate"),
        (["certs", "--parties", "", "--out", str(tmp_path / "b")], "--parties"),
        (["certs", "--parties", "a/b", "--out", str(tmp_path / "c")], "invalid party name"),
        (["certs", "--parties", "alice", "--days", "0", "--out", str(tmp_path / "d")], "--days"),
        (["certs", "--out", str(tmp_path / "e")], "--parties"),
    ]
    for args, message in cases:
        res = fed(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert message in res.stderr, (args, res.stderr)
    assert not any((tmp_path / d).exists() for d in "abcde")


@pytest.mark.timeout(60)
def test_rerun_replaces_files_and_keeps_key_private(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    out.mkdir()
    (out / "alice.key").write_text("old")
    os.chmod(out / "alice.key", 0o644)
    assert fed("certs", "--parties", "alice", "--out", str(out)).returncode == 0
    assert (out / "alice.key").stat().st_mode & 0o777 == 0o600
    load_cert(out / "alice.crt").verify_directly_issued_by(load_cert(out / "ca.crt"))
