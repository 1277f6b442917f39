"""Security settings and the pieces behind them, in-process (no Ray cluster).

Configuration (tls_config forms, egress, limits, allowlist opt-out), party identity
from real certificates, the egress check, the typed refusals, and `fed audit`.
"""
from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path

import pytest
from securitykit import der_of, issue_cert

from fed import serialization
from fed.audit import AuditLog, read_records
from fed.cli.certs import create_dev_pki
from fed.cli.main import main as fed_main
from fed.config import build_config
from fed.egress import EgressRequest, check_egress
from fed.errors import (
    FedConfigError,
    FedDeserializationRefused,
    FedEgressDenied,
    FedIdentityError,
    FedLimitError,
    FedRefusedError,
    refused_error,
)
from fed.transport.base import MessageKey
from fed.transport.identity import IdentityVerifier
from fed.transport.limits import ReceiverLimits, check_advertised

pytestmark = pytest.mark.timeout(60)

PARTIES = ["alice", "bob", "carol"]
ADDRESSES = {"alice": "127.0.0.1:1", "bob": "127.0.0.1:2", "carol": "127.0.0.1:3"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """One dev CA for alice, bob, carol, plus a rogue CA that issued a cert naming alice,
    a RayFed-style shared cert, a cert naming two parties and a CN-only cert."""
    root = tmp_path_factory.mktemp("pki")
    create_dev_pki(PARTIES, root / "main")
    create_dev_pki(["alice"], root / "rogue")  # carol's own CA, minting "alice"
    issue_cert(root / "main", root / "extra" / "shared", cn="rayfed", dns=["localhost"])
    issue_cert(root / "main", root / "extra" / "both", cn="x", dns=["alice", "bob"])
    issue_cert(root / "main", root / "extra" / "cn_bob", cn="bob", dns=["localhost"])
    return root


def init_config(tmp_path: Path, **kw):
    kw.setdefault("addresses", ADDRESSES)
    kw.setdefault("party", "alice")
    return build_config(cluster=None, config=kw.pop("config", None), tls_config=kw.pop("tls", None),
                        job_name="j", mode=None, **kw)


# ---- configuration --------------------------------------------------------------------------


def test_tls_config_forms_and_errors(pki: Path, tmp_path: Path, monkeypatch) -> None:
    main = pki / "main"
    base = {"cert": str(main / "alice.crt"), "key": str(main / "alice.key")}
    cfg = init_config(tmp_path, tls={**base, "ca_cert": str(main / "ca.crt")})
    assert cfg.tls.verify_party is True and not cfg.tls.per_party_ca  # on by default
    per_party = {"bob": str(main / "ca.crt"), "carol": str(pki / "rogue" / "ca.crt")}
    cfg = init_config(tmp_path, tls={**base, "ca_cert": per_party, "verify_party": True})
    assert cfg.tls.ca_for("carol").endswith("rogue/ca.crt") and cfg.tls.verify_party
    bad = [
        ({**base, "ca_cert": {"bob": per_party["bob"]}}, "no CA bundle for ['carol']"),
        ({**base, "ca_cert": {**per_party, "bbo": per_party["bob"]}}, "Did you mean 'bob'"),
        ({**base, "ca_cert": str(main / "nope.crt")}, "no such file"),
        ({**base, "ca_cert": per_party, "verify_party": "yes"},
         "tls_config['verify_party'] = 'yes' (str): expected a bool"),
        ({**base, "ca_cert": per_party, "verify_parties": True}, "Did you mean 'verify_party'"),
        (base, "needs 'ca_cert'"),
    ]
    for tls, message in bad:
        with pytest.raises(FedConfigError, match=re.escape(message)):
            init_config(tmp_path, tls=tls)
    # `fed run --tls` exports a `fed certs` directory: identity is then mandatory.
    monkeypatch.setenv("RAYFED_TLS_DIR", str(main))
    cfg = init_config(tmp_path)
    assert cfg.tls.verify_party is True and cfg.tls.cert == str(main / "alice.crt")


def test_shared_certificate_needs_the_explicit_opt_in(pki: Path, tmp_path: Path, caplog) -> None:
    """RayFed's tls_config (ca_cert, cert, key) with one certificate for all parties fails
    fed.init saying exactly what to add; a CN or DNS name alone does not name a party."""
    main, extra = pki / "main", pki / "extra"
    ca = str(main / "ca.crt")
    for cert, party in (("shared", "alice"), ("cn_bob", "bob"), ("both", "alice")):
        rayfed_form = {"ca_cert": ca, "cert": str(extra / f"{cert}.crt"), "key": str(extra / f"{cert}.key")}
        with pytest.raises(FedConfigError) as info:
            init_config(tmp_path, tls=rayfed_form, party=party)
        text = str(info.value)
        assert f"does not name party {party!r}" in text and "rayfed://party/" in text
        assert 'add "verify_party": False to tls_config' in text
        with caplog.at_level(logging.WARNING, logger="fed"):
            cfg = init_config(tmp_path, tls={**rayfed_form, "verify_party": False}, party=party)
        assert cfg.tls.verify_party is False
    warned = [r.getMessage() for r in caplog.records if "shared-certificate mode" in r.getMessage()]
    assert warned and "impersonate a party" in warned[0]
    # Another party's certificate is not this party's either.
    with pytest.raises(FedConfigError, match="does not name party 'alice'"):
        init_config(tmp_path, tls={"ca_cert": ca, "cert": str(main / "bob.crt"),
                                   "key": str(main / "bob.key")})


def test_egress_and_limit_config_validation(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    cfg = init_config(tmp_path, config={"egress": {
        "allowed_parties": ["bob"], "policy": lambda r: True, "audit_log": str(log)}})
    assert cfg.egress.allowed_parties == ("bob",) and cfg.egress.audit_log == str(log)
    assert log.exists(), "the audit log is created (checked writable) at fed.init"
    bad = [
        ({"egress": {"allowed_party": ["bob"]}}, "Did you mean 'allowed_parties'"),
        ({"egress": {"allowed_parties": ["bbo"]}}, "Did you mean 'bob'"),
        ({"egress": {"allowed_parties": "bob"}}, "list of party names"),
        ({"egress": {"policy": "deny"}}, "must be callable"),
        ({"egress": {"audit_log": str(tmp_path / "no" / "dir" / "a.jsonl")}}, "cannot append"),
        ({"egres": {}}, "Did you mean 'egress'"),
        ({"cross_silo_comm": {"max_buffered_bytes_per_peer": 0}}, "= 0 \\(int\\): expected a value > 0"),
        ({"cross_silo_comm": {"max_header_bytes": 100}}, "expected a value >= 4096"),
        ({"cross_silo_comm": {"max_frames_per_value": True}}, "= True \\(bool\\): expected an int"),
        ({"cross_silo_comm": {"max_frame_per_value": 5}}, "Did you mean 'max_frames_per_value'"),
        ({"cross_silo_comm": {"serializing_allowed_list": ["*"]}}, "serializing_allowed_list"),
    ]
    for config, message in bad:
        with pytest.raises(FedConfigError, match=message):
            init_config(tmp_path, config=config)
    cfg = init_config(tmp_path, config={"cross_silo_comm": {"max_buffered_bytes_per_peer": None}})
    assert cfg.comm.max_buffered_bytes_per_peer is None


def test_allow_everything_is_explicit_and_warned(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="fed"):
        init_config(tmp_path)
        init_config(tmp_path, config={"cross_silo_comm": {"serializing_allowed_list": {"collections": "*"}}})
    assert not [r for r in caplog.records if "serializing_allowed_list" in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger="fed"):
        init_config(tmp_path, config={"cross_silo_comm": {"serializing_allowed_list": "*"}})
    warnings = [r for r in caplog.records if "serializing_allowed_list='*'" in r.getMessage()]
    assert len(warnings) == 1 and "run code" in warnings[0].getMessage()


class Opaque:  # a type no allowlist admits by default
    def __init__(self, x):
        self.x = x


def test_refused_type_names_type_and_exact_config() -> None:
    data = pickle.dumps(Opaque(1), protocol=5)
    with pytest.raises(FedDeserializationRefused) as info:
        serialization.loads(data, [], serialization.default_allowlist())
    text = str(info.value)
    assert "test_security_config.Opaque" in text
    assert ('fed.init(config={"cross_silo_comm": {"serializing_allowed_list": '
            '["test_security_config.Opaque"]}})') in text
    # RayFed's dict form and the 'module.*' form admit it.
    for form in ({"test_security_config": ["Opaque"]}, ["test_security_config.*"]):
        value = serialization.loads(data, [], serialization.Allowlist.from_config(form))
        assert value.x == 1


# ---- identity from certificates ---------------------------------------------------------------


def verifier(pki: Path, *, ca=None, verify: bool = True, log=None) -> IdentityVerifier:
    from fed.config import TlsConfig

    main = pki / "main"
    tls = TlsConfig(cert=str(main / "bob.crt"), key=str(main / "bob.key"),
                    ca_cert=ca or str(main / "ca.crt"), verify_party=verify)
    return IdentityVerifier(tls, PARTIES, log or logging.LoggerAdapter(logging.getLogger("fed"), {}))


def test_certificate_names_bind_the_party(pki: Path) -> None:
    main, extra = pki / "main", pki / "extra"
    v = verifier(pki)  # the default: party verification on
    v.check(der_of(str(main / "alice.crt")), "alice", as_server=False)
    with pytest.raises(FedIdentityError, match=r"certificate of \['carol'\]"):
        v.check(der_of(str(main / "carol.crt")), "alice", as_server=False)
    with pytest.raises(FedIdentityError, match="the server at party 'carol'"):
        v.check(der_of(str(main / "alice.crt")), "carol", as_server=True)
    with pytest.raises(FedIdentityError, match="no certificate"):
        v.check(None, "alice", as_server=False)
    # A certificate naming the party only by CN or DNS SAN is not that party's, and a
    # certificate naming no party is refused, on both sides, with the opt-in spelled out.
    for cert, party in (("cn_bob", "bob"), ("both", "alice"), ("shared", "alice")):
        for as_server in (False, True):
            with pytest.raises(FedIdentityError, match="names no party") as info:
                v.check(der_of(str(extra / f"{cert}.crt")), party, as_server=as_server)
            assert 'add "verify_party": False to tls_config' in str(info.value)


def test_shared_certificate_mode_accepts_unnamed_certificates_with_a_warning(pki: Path, caplog) -> None:
    main, extra = pki / "main", pki / "extra"
    v = verifier(pki, verify=False)
    v.check(der_of(str(extra / "cn_bob.crt")), "bob", as_server=True)  # CN counts here
    with pytest.raises(FedIdentityError, match=r"certificate of \['bob'\]"):
        v.check(der_of(str(extra / "cn_bob.crt")), "alice", as_server=False)
    with pytest.raises(FedIdentityError, match=r"certificate of \['carol'\]"):
        v.check(der_of(str(main / "carol.crt")), "alice", as_server=False)
    with caplog.at_level(logging.WARNING, logger="fed"):
        for _ in range(3):
            v.check(der_of(str(extra / "shared.crt")), "alice", as_server=False)
            v.check(der_of(str(extra / "both.crt")), "bob", as_server=False)
    warned = [r.getMessage() for r in caplog.records if "cannot be told apart" in r.getMessage()]
    assert len(warned) == 1 and "can speak as any party" in warned[0]


def test_per_party_ca_attributes_certificates_by_issuer(pki: Path) -> None:
    main, rogue, extra = pki / "main", pki / "rogue", pki / "extra"
    ca = {"alice": str(main / "ca.crt"), "bob": str(main / "ca.crt"), "carol": str(rogue / "ca.crt")}
    v = verifier(pki, ca=ca)
    v.check(der_of(str(main / "alice.crt")), "alice", as_server=False)
    # carol's CA minted a certificate naming alice: it is carol's CA speaking, not alice.
    with pytest.raises(FedIdentityError, match=r"issued by the CA of \['carol'\]"):
        v.check(der_of(str(rogue / "alice.crt")), "alice", as_server=False)
    # The issuer alone does not name a party while verification is on.
    only_carol_ca = {"alice": str(rogue / "ca.crt"), "bob": str(rogue / "ca.crt"),
                     "carol": str(main / "ca.crt")}
    issued_by_main = der_of(str(extra / "shared.crt"))
    with pytest.raises(FedIdentityError, match="names no party"):
        verifier(pki, ca=only_carol_ca).check(issued_by_main, "carol", as_server=False)
    # A CA no party's bundle holds.
    only_main = {"alice": str(main / "ca.crt"), "bob": str(main / "ca.crt"), "carol": str(main / "ca.crt")}
    with pytest.raises(FedIdentityError, match="no party's CA bundle"):
        verifier(pki, ca=only_main).check(der_of(str(rogue / "alice.crt")), "alice", as_server=False)


# ---- egress, refusals, limits -------------------------------------------------------------------


def key(dst: str, src: str = "alice", call: str = "m.train") -> MessageKey:
    return MessageKey(job="j", src=src, dst=dst, ordinal=0, producer_seq=3, producer_index=0,
                      producer_call=call, consumer_seq=4, consumer_call="m.agg")


def test_egress_policy_vetoes_fail_closed_and_are_audited(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    seen: list[EgressRequest] = []

    def policy(request: EgressRequest):
        seen.append(request)
        if request.call == "m.boom":
            raise RuntimeError("policy bug")
        if request.call == "m.forgot":
            return None
        return not request.call.startswith("m.secret")

    cfg = init_config(tmp_path, config={"egress": {
        "allowed_parties": ["bob"], "policy": policy, "audit_log": str(log)}})
    check_egress(cfg, key("bob"))
    assert seen[0] == EgressRequest("j", "alice", "bob", "m.train", 3, "m.agg", 4)
    for k, message in [
        (key("carol"), "not in config\\['egress'\\]\\['allowed_parties'\\]"),
        (key("bob", call="m.secret_rows"), "policy returned False"),
        (key("bob", call="m.boom"), "policy raised RuntimeError: policy bug"),
        (key("bob", call="m.forgot"), "policy returned None"),
    ]:
        with pytest.raises(FedEgressDenied, match=message):
            check_egress(cfg, k)
    check_egress(cfg, key("carol", src="bob"))  # another party's send (simulation): not ours
    records = [r for _n, r, _raw in read_records(str(log))]
    assert [r["status"] for r in records] == ["denied"] * 4
    assert records[0]["dst"] == "carol" and records[1]["call"] == "m.secret_rows"


def test_refusals_are_typed_and_limits_advertised() -> None:
    assert isinstance(refused_error("identity", "x"), FedIdentityError)
    assert isinstance(refused_error("spoofed_source", "x"), FedIdentityError)
    assert isinstance(refused_error("too_large", "x"), FedLimitError)
    assert type(refused_error("job_not_running", "x")) is FedRefusedError
    limits = ReceiverLimits.from_comm({"messages_max_size_in_bytes": 1000, "max_header_bytes": 8192})
    advertised = limits.advertise()
    assert advertised["max_value_bytes"] == 1000 and "busy_after_s" not in advertised
    check_advertised(advertised, "bob", 100, [500, 500], 4096)
    for args, reason in [((100, [600, 500], 4096), "too_large"),
                         ((9000, [10], 4096), "header_too_large"),
                         ((100, [10] * 5, 1), "too_many_frames")]:
        with pytest.raises(FedLimitError) as info:
            check_advertised({**advertised, "max_frames_per_value": 4}, "bob", *args)
        assert info.value.reason == reason and "party 'bob'" in str(info.value)


def test_fed_audit_cli(tmp_path: Path, capsys) -> None:
    log = AuditLog(str(tmp_path / "a.jsonl"))
    for dst, status, nbytes in [("bob", "sent", 100), ("bob", "sent", 50), ("carol", "denied", 0),
                                ("bob", "refused", 7)]:
        log.record(job="j", src="alice", dst=dst, call="m.f", bytes=nbytes, sha256="ab" * 32,
                   status=status)
    assert fed_main(["audit", log.path]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["TIME", "JOB", "STATUS", "DST"] and len(table) == 5
    assert fed_main(["audit", log.path, "--summary"]) == 0
    summary = capsys.readouterr().out
    assert "bob" in summary and " 157 " in summary and "sent=2, refused=1" in summary
    assert fed_main(["audit", log.path, "--status", "denied", "--json"]) == 0
    (denied,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert denied["dst"] == "carol"
    with open(log.path, "a") as fh:
        fh.write("not json\n")
    assert fed_main(["audit", log.path, "--json"]) == 1
    assert "a.jsonl:5: not an audit record" in capsys.readouterr().err
    assert fed_main(["audit", str(tmp_path / "missing.jsonl")]) == 2
