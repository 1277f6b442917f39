"""TLS credentials for the cross-party channel: mutual authentication with the parties' CAs.

Which *party* a verified certificate belongs to is decided by
:mod:`fed.transport.identity`; this module only builds the contexts.
"""
from __future__ import annotations

import ssl

from fed.config import TlsConfig


def server_context(tls: TlsConfig | None) -> ssl.SSLContext | None:
    """The receiver's context: present our certificate, require one from every peer.

    With one CA bundle per party, all of them are trusted here; the identity check
    then attributes the peer's certificate to the party whose CA issued it.
    """
    if tls is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert, tls.key)
    for bundle in tls.all_cas():
        ctx.load_verify_locations(cafile=bundle)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(tls: TlsConfig | None, peer: str) -> ssl.SSLContext | None:
    """The sender's context for reaching `peer`: trust only the CA bundle of `peer`.

    Host names are not checked: parties are often addressed by IP; the identity check
    (fed.transport.identity) verifies instead that the certificate names `peer` (its
    URI SAN rayfed://party/<peer>, unless shared-certificate mode was chosen).
    """
    if tls is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert, tls.key)
    ctx.load_verify_locations(cafile=tls.ca_for(peer))
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
