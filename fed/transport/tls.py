"""TLS credentials for the cross-party channel: mutual authentication with the parties' CA."""
from __future__ import annotations

import ssl
from typing import Any, Mapping, Optional


def server_context(tls: Optional[Mapping[str, Any]]) -> Optional[ssl.SSLContext]:
    """The receiver's context: present our certificate, require one from every peer."""
    if not tls:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls["cert"], tls["key"])
    ctx.load_verify_locations(cafile=tls["ca_cert"])
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(tls: Optional[Mapping[str, Any]]) -> Optional[ssl.SSLContext]:
    """The sender's context: present our certificate, verify the peer against the CA.

    Host names are not checked here: parties are often addressed by IP and RayFed
    setups share one certificate; the party identity check is done on the
    certificate's names by the channel itself.
    """
    if not tls:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls["cert"], tls["key"])
    ctx.load_verify_locations(cafile=tls["ca_cert"])
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
