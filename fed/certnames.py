"""The names a party certificate carries, read with `cryptography`.

Used by `fed.init` (which checks this party's own certificate) and the transport
(which checks every peer's); `fed certs` writes the same party URI (fed.names).
"""
from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from fed.names import PARTY_URI_PREFIX


@dataclass(frozen=True)
class CertNames:
    """The identity-bearing names of one certificate."""

    uri_parties: tuple[str, ...]
    dns: tuple[str, ...]
    cn: str | None

    def parties(self, known: frozenset[str], *, uri_only: bool) -> frozenset[str]:
        """Party names the certificate asserts: its party URIs; unless `uri_only`
        (shared-certificate mode), else DNS SANs, else the CN, that are parties of the job."""
        if self.uri_parties or uri_only:
            return frozenset(self.uri_parties)
        dns = frozenset(d for d in self.dns if d in known)
        if dns:
            return dns
        return frozenset([self.cn]) if self.cn in known else frozenset()

    def describe(self) -> str:
        parts = [f"URI {PARTY_URI_PREFIX}{p}" for p in self.uri_parties]
        parts += [f"DNS {d}" for d in self.dns] + ([f"CN {self.cn}"] if self.cn else [])
        return ", ".join(parts) or "no names"


def read_names(cert: x509.Certificate) -> CertNames:
    """The party URIs, DNS SANs and subject CN of `cert`."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        dns = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        uris, dns = [], []
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = cns[0].value if cns else None
    return CertNames(
        uri_parties=tuple(u[len(PARTY_URI_PREFIX):] for u in uris if u.startswith(PARTY_URI_PREFIX)),
        dns=tuple(dns),
        cn=cn if isinstance(cn, str) else None,
    )


def read_names_from_file(path: str) -> CertNames:
    """The names of the first certificate in the PEM file `path`."""
    with open(path, "rb") as fh:
        return read_names(x509.load_pem_x509_certificate(fh.read()))
