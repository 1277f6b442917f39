"""Which party is on the other end of a TLS connection, read from its certificate.

TLS alone proves only that the peer holds *some* certificate the CA signed; with one
CA for a whole federation any party could then claim to be any other. Here the
certificate itself must name the party the connection claims (receiver side) or was
meant to reach (sender side):

* names: the URI SAN ``rayfed://party/<name>`` (what ``fed certs`` writes). Only in
  shared-certificate mode (``verify_party=False``, given explicitly) do DNS SANs or
  the subject CN that equal a party name count, and does a certificate that names no
  party pass (with a one-time warning): host names and CNs collide with party names
  under an organisation's CA;
* issuers (when ``tls_config["ca_cert"]`` is one bundle per party): the parties whose
  CA bundle directly issued the certificate. A certificate only carol's CA issued is
  carol's, whatever names it carries.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from cryptography import x509

from fed.certnames import CertNames, read_names
from fed.config import SHARED_CERT_FIX, TlsConfig
from fed.errors import FedIdentityError
from fed.names import PARTY_URI_PREFIX


def _load_bundle(path: str) -> list[x509.Certificate]:
    with open(path, "rb") as fh:
        return x509.load_pem_x509_certificates(fh.read())


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except Exception:  # InvalidSignature, ValueError, TypeError (unsupported key types)
        return False


class IdentityVerifier:
    """Binds a TLS peer to a party name. One per proxy actor (so the warning is once)."""

    def __init__(self, tls: TlsConfig, parties: Iterable[str], log: logging.LoggerAdapter) -> None:
        self._parties = frozenset(parties)
        self._verify_party = tls.verify_party
        self._log = log
        self._warned = False
        self._warn_lock = threading.Lock()
        # Per-party CA bundles: attribution by issuer (OpenSSL already verified the chain).
        self._issuers: dict[str, list[x509.Certificate]] | None = None
        if tls.per_party_ca:
            self._issuers = {p: _load_bundle(tls.ca_for(p)) for p in tls.ca_cert}

    def check(self, der: bytes | None, party: str, *, as_server: bool) -> None:
        """Raise FedIdentityError unless the certificate `der` may speak for `party`.

        ``as_server``: `der` is the certificate of the receiver we connected to (sender
        side); otherwise that of a sender claiming to be `party` (receiver side).
        """
        role = f"the server at party {party!r}'s address" if as_server else f"a peer claiming to be {party!r}"
        if not der:
            raise FedIdentityError("identity", f"{role} presented no certificate")
        cert = x509.load_der_x509_certificate(der)
        names = read_names(cert)
        named = names.parties(self._parties, uri_only=self._verify_party)
        candidates = named
        if self._issuers is not None:
            issuers = frozenset(p for p, cas in self._issuers.items() if any(_issued_by(cert, c) for c in cas))
            if not issuers:
                raise FedIdentityError(
                    "identity",
                    f"{role} presented a certificate ({names.describe()}) that no party's CA bundle "
                    "in tls_config['ca_cert'] issued directly; add the issuing (intermediate) CA "
                    "to that party's bundle",
                )
            candidates = issuers & named if (named or self._verify_party) else issuers
            if named and not candidates:
                raise FedIdentityError(
                    "identity",
                    f"{role} presented a certificate naming {sorted(named)} but issued by the CA "
                    f"of {sorted(issuers)}: a party's CA can only vouch for that party",
                )
        if candidates == {party}:
            return
        if candidates and party not in candidates:
            raise FedIdentityError(
                "identity",
                f"{role} presented the certificate of {sorted(candidates)} ({names.describe()}); "
                f"a party's certificate must name that party",
            )
        self._unidentified(role, names, candidates)

    def _unidentified(self, role: str, names: CertNames, candidates: frozenset[str]) -> None:
        why = (
            f"names several parties {sorted(candidates)}" if candidates
            else f"names no party of this job ({names.describe()})"
        )
        if self._verify_party:
            raise FedIdentityError(
                "identity",
                f"{role} presented a certificate that {why}; with party verification on (the "
                "default, tls_config['verify_party']) a party's certificate must carry the URI "
                f"SAN {PARTY_URI_PREFIX}<name> (`fed certs` issues them). {SHARED_CERT_FIX}",
            )
        with self._warn_lock:  # connection threads check identities concurrently
            first, self._warned = not self._warned, True
        if first:
            self._log.warning(
                "shared-certificate mode (tls_config['verify_party']=False): TLS peer "
                "certificate %s, so parties cannot be told apart: any holder of a certificate "
                "the CA signed can speak as any party and read values meant for one. Give each "
                "party its own certificate (`fed certs`) and drop verify_party=False. "
                "(Warned once.)", why,
            )
