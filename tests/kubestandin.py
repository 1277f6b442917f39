"""A stand-in for the Kubernetes API server, for the RayJob runner's tests: no Kubernetes
cluster runs here, so the API server the runner talks to is the one thing replaced, at
its HTTP boundary. Real HTTPS on loopback (a CA of its own, a bearer token), implementing
only what the runner calls: create / get / delete RayJob. Each created RayJob is
validated against the KubeRay schema, as the API server validates against the CRD.

KubeRay's operator is played in one of two ways. With an ``operator``
(tests/kuberay_operator.py) it is done for real: every RayJob becomes a job on a real Ray
cluster, whose real dashboard the runner then stops and reads logs from. Without one,
the test's hand sets statuses (:meth:`KubeStandIn.set_status`), for fast tests of the
runner's mapping that need no Ray.
"""
from __future__ import annotations

import json
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fed.cli.certs import create_dev_pki
from fed.deploy.errors import ManifestInvalid
from fed.deploy.validate import validate_document

if TYPE_CHECKING:
    from kuberay_operator import RayOperator

_COLLECTION = re.compile(r"^/apis/ray\.io/v1/namespaces/([a-z0-9-]+)/rayjobs$")
_ITEM = re.compile(r"^/apis/ray\.io/v1/namespaces/([a-z0-9-]+)/rayjobs/([a-z0-9-]+)$")


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
        if self.headers.get("Authorization") != f"Bearer {standin.token}":
            return self._send(401, _status(401, "Unauthorized", "bad or missing bearer token"))
        self._send(*standin.api_route(method, self.path, body))

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, standin: KubeStandIn) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.standin = standin


class KubeStandIn:
    """``url`` (HTTPS, the API), ``ca_file``, ``token``; ``operator`` plays KubeRay's
    operator against a real Ray cluster (None: the test sets statuses)."""

    def __init__(self, workdir: Path, api_port: int, token: str = "sa-token",
                 operator: RayOperator | None = None) -> None:
        pki = create_dev_pki(["kubeapi"], workdir / "pki")["kubeapi"]
        self.ca_file, self.token, self.operator = pki["ca_cert"], token, operator
        self.rayjobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.creates = 0
        self._lock = threading.Lock()
        self._api = _Server(api_port, self)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki["cert"], pki["key"])
        self._api.socket = ctx.wrap_socket(self._api.socket, server_side=True)
        self.url = f"https://127.0.0.1:{api_port}"
        self._thread = threading.Thread(target=self._api.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._api.shutdown()
        self._api.server_close()
        self._thread.join(timeout=10)

    def set_status(self, namespace: str, name: str, **status: str) -> None:
        """Set fields of a RayJob's status by hand (the tests without an operator)."""
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
                if self.operator is not None:
                    self.operator.deleted(obj)
                return 200, _status(200, "", "deleted") | {"status": "Success"}
            if self.operator is not None:
                self.operator.observe(obj)
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
        if self.operator is not None:
            self.operator.created(body)
        return 201, body
