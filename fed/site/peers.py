"""Calls from this site to another party's site: HTTPS with mutual TLS.

The peer's certificate must name the party we mean to reach (its URI SAN
``rayfed://party/<name>``, checked by the channel's own IdentityVerifier), and it is
checked right after the TLS handshake, before any request byte is sent: a job spec
never reaches a site that is not the party's, even one holding another certificate
of the same CA.
"""
from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterable
from typing import Any

import httpcore
import httpx

from fed.config import TlsConfig
from fed.errors import FedIdentityError
from fed.site.config import TlsFiles
from fed.site.errors import PeerSiteError
from fed.site.httpbase import OwnedHttpClient
from fed.transport.identity import IdentityVerifier
from fed.transport.tls import client_context

log = logging.getLogger("fed.site")
DEFAULT_TIMEOUT_S = 15.0
#: A live host completes TCP and TLS handshakes in milliseconds; a peer behind a firewall
#: that drops packets never does. The short bound keeps such a peer from holding the
#: site's worker for the whole read timeout on every retry.
CONNECT_TIMEOUT_S = 5.0
#: A peer that cannot be reached or spoke no HTTP (our transport raises httpcore's errors).
_UNREACHABLE = (httpx.HTTPError, httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError,
                ssl.SSLError, OSError)


class _CheckedStream(httpcore.NetworkStream):
    """A connection whose TLS upgrade is followed by the peer identity check."""

    def __init__(self, inner: httpcore.NetworkStream, check: Callable[[bytes | None], None]) -> None:
        self._inner, self._check = inner, check

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        stream = self._inner.start_tls(ssl_context, server_hostname, timeout)
        ssl_object = stream.get_extra_info("ssl_object")
        try:
            self._check(ssl_object.getpeercert(True) if ssl_object else None)
        except FedIdentityError:
            stream.close()
            raise
        return stream


class _CheckingBackend(httpcore.NetworkBackend):
    def __init__(self, check: Callable[[bytes | None], None]) -> None:
        self._inner, self._check = httpcore.SyncBackend(), check

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None, socket_options: Any = None) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _CheckedStream(stream, self._check)


class _PartyTransport(httpx.BaseTransport):
    """httpx over an httpcore pool whose connections check the peer's party."""

    def __init__(self, context: ssl.SSLContext, check: Callable[[bytes | None], None]) -> None:
        self._pool = httpcore.ConnectionPool(ssl_context=context, network_backend=_CheckingBackend(check))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw, content=request.read(), extensions=request.extensions,
        )
        with self._pool.stream(core.method, core.url, headers=core.headers, content=core.stream,
                               extensions=core.extensions) as resp:
            body = resp.read()
        return httpx.Response(resp.status, headers=resp.headers, content=body)

    def close(self) -> None:
        self._pool.close()


class PeerClient(OwnedHttpClient):
    """Calls to one peer party's site; JSON in, JSON out, errors as PeerSiteError."""

    def __init__(self, tls: TlsFiles, parties: Iterable[str], party: str, url: str,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.party, self.url = party, url.rstrip("/")
        config = TlsConfig(cert=tls.cert, key=tls.key, ca_cert=tls.ca_cert, verify_party=True)
        verifier = IdentityVerifier(config, parties, logging.LoggerAdapter(log, {}))
        context = client_context(config, party)
        self._client = httpx.Client(
            transport=_PartyTransport(context, lambda der: verifier.check(der, party, as_server=True)),
            timeout=httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)),
        )

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one request; a refusal (4xx/5xx) or a broken connection raises PeerSiteError."""
        try:
            resp = self._client.request(method, self.url + path, json=body)
        except FedIdentityError as exc:
            raise PeerSiteError(self.party, self.url, f"wrong site: {exc.detail}") from None
        except _UNREACHABLE as exc:
            raise PeerSiteError(self.party, self.url, f"unreachable ({type(exc).__name__}: {exc})") from None
        if resp.status_code >= 400:
            raise PeerSiteError(self.party, self.url, f"refused ({resp.status_code}): {_detail(resp)}")
        return resp.json()


def _detail(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("detail", resp.text))
    except ValueError:
        return resp.text[:500]
