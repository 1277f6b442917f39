"""A Python client of a site's client API (what ``fed job`` uses): HTTPS, bearer token.

The site's certificate is verified against the given CA bundle, host name included
(``fed certs --hosts`` puts the site's host names in the certificates).
"""
from __future__ import annotations

import ssl
from typing import Any

import httpx

from fed.site.errors import SiteConfigError, SiteError
from fed.site.httpbase import OwnedHttpClient


class SiteRequestError(SiteError):
    """The site refused a request or could not be reached; the text says which and why."""

    def __init__(self, url: str, status: int | None, detail: str, problems: list | None = None) -> None:
        self.url, self.status, self.detail, self.problems = url, status, detail, problems or []
        where = f"site {url}" + (f" answered {status}" if status else "")
        super().__init__(f"{where}: {detail}")


class SiteClient(OwnedHttpClient):
    """Calls to one site with one token."""

    def __init__(self, url: str, token: str, ca_cert: str, timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        try:
            context = ssl.create_default_context(cafile=ca_cert)
        except (OSError, ssl.SSLError) as exc:
            raise SiteConfigError(f"cannot load the CA bundle {ca_cert!r} to verify the site: {exc}") from None
        self._client = httpx.Client(verify=context, timeout=timeout_s,
                                    headers={"Authorization": f"Bearer {token}"})

    def request(self, method: str, path: str, body: Any = None, params: dict | None = None,
                text: bool = False) -> Any:
        try:
            resp = self._client.request(method, self.url + path, json=body, params=params)
        except httpx.HTTPError as exc:
            raise SiteRequestError(self.url, None, f"unreachable ({type(exc).__name__}: {exc}); "
                                   "is the site running (`fed site start DIR`)?") from None
        if resp.status_code >= 400:
            try:
                data = resp.json()
            except ValueError:
                data = {"detail": resp.text[:500]}
            raise SiteRequestError(self.url, resp.status_code, str(data.get("detail")), data.get("problems"))
        return resp.text if text else resp.json()

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/v1/jobs", spec)

    def jobs(self, state: str | None = None) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/jobs", params={"state": state} if state else None)

    def job(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/jobs/{job_id}")

    def pending(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/jobs/pending")

    def decide(self, job_id: str, approve: bool, reason: str = "") -> dict[str, Any]:
        verb = "approve" if approve else "reject"
        return self.request("POST", f"/v1/jobs/{job_id}/{verb}", {"reason": reason})

    def stop(self, job_id: str, reason: str = "") -> dict[str, Any]:
        return self.request("POST", f"/v1/jobs/{job_id}/stop", {"reason": reason})

    def logs(self, job_id: str, task: str) -> str:
        """This party's own log tail of ``task`` (plain text)."""
        return self.request("GET", f"/v1/jobs/{job_id}/tasks/{task}/logs", text=True)

    def metrics(self, job_id: str) -> dict[str, Any]:
        """The job's metrics: this party's, and what partners share."""
        return self.request("GET", f"/v1/jobs/{job_id}/metrics")
