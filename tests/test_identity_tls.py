"""Party identity over real TLS connections (real ReceiverProxy / SenderProxy actors):
by default a certificate must name its party with the URI SAN rayfed://party/<name>;
RayFed's one shared certificate works only in explicitly chosen shared-certificate mode."""
from __future__ import annotations

from pathlib import Path

import pytest
import ray
from multiparty import start_ray
from securitykit import MIB, Raw, issue_cert, msg_key, start_receiver, start_sender

from fed.cli.certs import create_dev_pki
from fed.config import TlsConfig
from fed.errors import FedIdentityError
from fed.transport import wire

PARTIES = ["alice", "bob"]
JOB = "identity"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", autouse=True)
def cluster():
    start_ray(num_cpus=1, object_store_memory=128 * MIB)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """`fed certs` certificates, a party-less shared one and CN/DNS-only ones, one CA."""
    root = tmp_path_factory.mktemp("pki")
    create_dev_pki(PARTIES, root)
    issue_cert(root, root / "shared", cn="rayfed", dns=["localhost"])
    issue_cert(root, root / "cn_alice", cn="alice")
    issue_cert(root, root / "cn_bob", cn="bob", dns=["bob"])
    return root


def tls(pki: Path, name: str, **kw) -> TlsConfig:
    return TlsConfig(cert=str(pki / f"{name}.crt"), key=str(pki / f"{name}.key"),
                     ca_cert=str(pki / "ca.crt"), **kw)


def hello(port: int, pki: Path, cert: str, src: str = "alice") -> tuple[int, dict]:
    with Raw(port, (str(pki / f"{cert}.crt"), str(pki / f"{cert}.key"), str(pki / "ca.crt"))) as c:
        return c.hello(src, JOB, "bob")


def test_receiver_refuses_party_less_and_cn_only_certificates_by_default(pki: Path) -> None:
    bob, port = start_receiver("bob", JOB, PARTIES, tls(pki, "bob"))
    for cert in ("shared", "cn_alice"):
        ftype, body = hello(port, pki, cert)
        assert ftype == wire.REFUSE and body["reason"] == "identity", body
        assert "names no party" in body["detail"] and '"verify_party": False' in body["detail"]
    assert hello(port, pki, "alice")[0] == wire.WELCOME
    assert ray.get(bob.stats.remote())["refusals_by_reason"] == {"identity": 2}


def test_sender_refuses_a_server_whose_certificate_names_no_party_by_default(pki: Path) -> None:
    key = msg_key(JOB, "alice", "bob", 0)
    for server_cert in ("shared", "cn_bob"):
        _srv, port = start_receiver("bob", JOB, PARTIES, tls(pki, server_cert, verify_party=False))
        alice = start_sender("alice", JOB, {"bob": port}, tls(pki, "alice"), timeout_in_ms=5000)
        with pytest.raises(FedIdentityError, match="names no party"):
            ray.get(alice.send.remote(key, [ray.put("secret")]))


def test_shared_certificate_mode_delivers_when_chosen_on_both_sides(pki: Path) -> None:
    shared = tls(pki, "shared", verify_party=False)
    bob, port = start_receiver("bob", JOB, PARTIES, shared)
    key = msg_key(JOB, "alice", "bob", 0)
    ray.get(start_sender("alice", JOB, {"bob": port}, shared).send.remote(key, [ray.put(41)]))
    assert ray.get(bob.get.remote(key)) == 41
    # A CN naming a party counts in this mode, and must name the right one.
    assert hello(port, pki, "cn_alice")[0] == wire.WELCOME
    ftype, body = hello(port, pki, "cn_bob")
    assert ftype == wire.REFUSE and "certificate of ['bob']" in body["detail"]
