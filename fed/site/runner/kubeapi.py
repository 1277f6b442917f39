"""A small client for the few Kubernetes API calls the RayJob runner makes, over HTTPS
with the pod's service account: the bearer token is read from its file on every request
(Kubernetes rotates projected tokens) and the API server is verified with the CA bundle
the service account ships."""
from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

from fed.site.config import KubernetesRunnerConfig
from fed.site.errors import SiteConfigError, SiteError


class KubernetesApiError(SiteError):
    """The Kubernetes API refused or failed a call (status code, reason and message)."""

    def __init__(self, what: str, status: int, detail: str) -> None:
        self.what, self.status, self.detail = what, status, detail
        super().__init__(f"Kubernetes API: {what}: HTTP {status}: {detail}")


def in_cluster(token_file: str) -> bool:
    """Whether this process runs in a Kubernetes pod with a service account."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and Path(token_file).is_file()


def api_url(config: KubernetesRunnerConfig) -> str:
    """The configured URL, else the in-cluster one from the service's environment."""
    if config.api_url:
        return config.api_url.rstrip("/")
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host or not Path(config.token_file).is_file():
        raise SiteConfigError("runner.kubernetes: not running inside Kubernetes (no KUBERNETES_SERVICE_HOST or "
                              f"no service account token at {config.token_file}); set runner.kubernetes.api_url "
                              "and token_file, or use runner.kind: local")
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise SiteConfigError(f"runner.kubernetes: cannot read the service account's {what} {path}: "
                              f"{exc.strerror}") from None


def namespace_of(config: KubernetesRunnerConfig) -> str:
    return config.namespace or _read(config.namespace_file, "namespace")


class KubeApi:
    """JSON in, JSON out; a 404 is ``None``; any other failure a :class:`KubernetesApiError`."""

    def __init__(self, base_url: str, token_file: str, ca_file: str, timeout_s: float = 15.0) -> None:
        import httpx

        _read(ca_file, "CA bundle")
        self._token_file = token_file
        self._client = httpx.Client(base_url=base_url, verify=ssl.create_default_context(cafile=ca_file),
                                    timeout=timeout_s)

    def close(self) -> None:
        self._client.close()

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any] | None:
        import httpx

        headers = {"Authorization": f"Bearer {_read(self._token_file, 'token')}", "Accept": "application/json"}
        try:
            resp = self._client.request(method, path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise KubernetesApiError(f"{method} {path}", 0, f"unreachable: {exc}") from None
        if resp.status_code == 404:
            return None
        if resp.status_code >= 400:
            raise KubernetesApiError(f"{method} {path}", resp.status_code, _message(resp))
        return resp.json() if resp.content else {}


def _message(resp: Any) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:300]
    return f"{data.get('reason', '')}: {data.get('message', '')}".strip(": ") if isinstance(data, dict) else str(data)
