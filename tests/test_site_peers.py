"""Calls from one site to a peer site that does not answer: how long they may hold the caller."""
from __future__ import annotations

import socket

import pytest
from sitekit import fed_cli

from fed.site.config import TlsFiles
from fed.site.errors import PeerSiteError
from fed.site.peers import PeerClient


@pytest.fixture(scope="module")
def alice_tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    out = tmp_path_factory.mktemp("pki")
    made = fed_cli("certs", "--parties", "alice,bob", "--out", str(out), "--hosts", "127.0.0.1")
    assert made.returncode == 0, made.stderr
    return TlsFiles(cert=str(out / "alice.crt"), key=str(out / "alice.key"), ca_cert=str(out / "ca.crt"))


@pytest.fixture()
def dropping_listener():
    """A port whose connections never complete: its accept queue is full, so the kernel
    drops further handshakes, as a firewall dropping packets does."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    queued = socket.create_connection(("127.0.0.1", port), timeout=5)  # fills the queue
    yield port
    queued.close()
    server.close()


@pytest.mark.timeout(60)
def test_a_peer_that_never_completes_the_handshake_is_unreachable_within_the_connect_bound(
        alice_tls: TlsFiles, dropping_listener: int) -> None:
    """The read timeout (here 300 s) is for a peer that is working on the answer; a peer
    that never accepts the connection is given up after the connect bound (5 s)."""
    with PeerClient(alice_tls, ["alice", "bob"], "bob", f"https://127.0.0.1:{dropping_listener}",
                    timeout_s=300) as bob, pytest.raises(PeerSiteError) as info:
        bob.call("GET", "/v1/interconnect/jobs/j1/runs")
    assert "unreachable" in str(info.value) and "ConnectTimeout" in str(info.value), str(info.value)
    assert info.value.party == "bob"

