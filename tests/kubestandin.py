"""A stand-in for the Kubernetes API server, KubeRay's operator and the Ray dashboard, for
the RayJob runner's tests: no cluster runs here, so the runner's HTTP boundary is all that
is replaced. Real HTTPS on loopback (a CA of its own, a bearer token), implementing only
what the runner calls: create / get / delete RayJob, and the dashboard's job stop and
logs. The API part validates each created RayJob against the KubeRay schema, as the API
server validates against the CRD. The operator's part is the test's hand:
:meth:`KubeStandIn.operator` sets a RayJob's status as KubeRay would.
"""
from __future__ import annotations

import json
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fed.cli.certs import create_dev_pki
from fed.deploy.errors import ManifestInvalid
from fed.deploy.validate import validate_document

_COLLECTION = re.compile(r"^/apis/ray\.io/v1/namespaces/([a-z0-9-]+)/rayjobs$")
_ITEM = re.compile(r"^/apis/ray\.io/v1/namespaces/([a-z0-9-]+)/rayjobs/([a-z0-9-]+)$")
_DASHBOARD = re.compile(r"^/api/jobs/([^/]+)/(stop|logs)$")


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
            "message": message}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")

    def _handle(self, method: str) -> None:
        standin = self.server.standin
        body = self._body() if method == "POST" else None
        if self.server.is_api and self.headers.get("Authorization") != f"Bearer {standin.token}":
            return self._send(401, _status(401, "Unauthorized", "bad or missing bearer token"))
        route = standin.api_route if self.server.is_api else standin.dashboard_route
        self._send(*route(method, self.path, body))

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, standin: KubeStandIn, is_api: bool) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.standin, self.is_api = standin, is_api


class KubeStandIn:
    """``url`` (HTTPS, the API), ``ca_file``, ``token``; ``dashboard`` is the
    ``host:port`` KubeRay would put in ``status.dashboardURL``."""

    def __init__(self, workdir: Path, api_port: int, dashboard_port: int, token: str = "sa-token") -> None:
        pki = create_dev_pki(["kubeapi"], workdir / "pki")["kubeapi"]
        self.ca_file, self.token = pki["ca_cert"], token
        self.rayjobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.creates = 0
        self.logs: dict[str, str] = {}  # Ray job id -> its output
        self._lock = threading.Lock()
        self._api = _Server(api_port, self, is_api=True)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki["cert"], pki["key"])
        self._api.socket = ctx.wrap_socket(self._api.socket, server_side=True)
        self._dash = _Server(dashboard_port, self, is_api=False)
        self.url = f"https://127.0.0.1:{api_port}"
        self.dashboard = f"127.0.0.1:{dashboard_port}"
        self._threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (self._api, self._dash)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        for server in (self._api, self._dash):
            server.shutdown()
            server.server_close()
        for t in self._threads:
            t.join(timeout=10)

    def operator(self, namespace: str, name: str, **status: str) -> None:
        """Set fields of a RayJob's status, as KubeRay's operator does."""
        with self._lock:
            obj = self.rayjobs[(namespace, name)]
            obj.setdefault("status", {}).update(status)

    def api_route(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if (m := _COLLECTION.match(path)) and method == "POST":
                return self._create(m.group(1), body)
            m = _ITEM.match(path)
            if m is None:
                return 404, _status(404, "NotFound", f"the stand-in does not serve {method} {path}")
            obj = self.rayjobs.get((m.group(1), m.group(2)))
            if obj is None:
                return 404, _status(404, "NotFound", f'rayjobs.ray.io "{m.group(2)}" not found')
            if method == "DELETE":
                del self.rayjobs[(m.group(1), m.group(2))]
                return 200, _status(200, "", "deleted") | {"status": "Success"}
            return 200, obj

    def _create(self, namespace: str, body: Any) -> tuple[int, dict[str, Any]]:
        try:
            validate_document(body)
        except ManifestInvalid as exc:
            return 422, _status(422, "Invalid", str(exc))
        name = body["metadata"]["name"]
        if body["metadata"].get("namespace", namespace) != namespace:
            return 400, _status(400, "BadRequest", "namespace of the body does not match the URL")
        if (namespace, name) in self.rayjobs:
            return 409, _status(409, "AlreadyExists", f'rayjobs.ray.io "{name}" already exists')
        self.creates += 1
        self.rayjobs[(namespace, name)] = body
        return 201, body

    def dashboard_route(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        m = _DASHBOARD.match(path)
        if m is None:
            return 404, {"error": f"no route {path}"}
        job_id, what = m.groups()
        with self._lock:
            obj = next((o for o in self.rayjobs.values() if o["spec"].get("jobId") == job_id), None)
            if obj is None:
                return 404, {"error": f"no job {job_id}"}
            if what == "logs" and method == "GET":
                return 200, {"logs": self.logs.get(job_id, "")}
            status = obj.setdefault("status", {})
            stopped = status.get("jobStatus") in ("PENDING", "RUNNING") and method == "POST"
            if stopped:
                status.update(jobStatus="STOPPED", jobDeploymentStatus="Complete")
            return 200, {"stopped": stopped}
