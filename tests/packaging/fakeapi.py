"""A Kubernetes API server for Helm's ``lookup`` while rendering, on loopback (no cluster can run on
this machine): discovery of the core and ``apps`` groups, and GET of the objects a test makes live;
404 (a Status object) for anything else. Helm's engine renders against it through the real client."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import helm_python as helm

from tests.packaging.support import CHART, NAMESPACE, RELEASE

DISCOVERY: dict[str, dict[str, Any]] = {
    "/api/v1": {
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {
                "name": "secrets",
                "singularName": "secret",
                "namespaced": True,
                "kind": "Secret",
                "verbs": ["get", "list"],
            }
        ],
    },
    "/apis": {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [
            {
                "name": "apps",
                "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
                "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"},
            }
        ],
    },
    "/apis/apps/v1": {
        "kind": "APIResourceList",
        "groupVersion": "apps/v1",
        "resources": [
            {
                "name": "deployments",
                "singularName": "deployment",
                "namespaced": True,
                "kind": "Deployment",
                "verbs": ["get", "list"],
            }
        ],
    },
}
NOT_FOUND = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}


def object_path(kind: str, name: str) -> str:
    """The path of a namespaced Secret or Deployment in the test namespace."""
    if kind == "Secret":
        return f"/api/v1/namespaces/{NAMESPACE}/secrets/{name}"
    if kind == "Deployment":
        return f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{name}"
    raise ValueError(kind)


class FakeApiServer:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                outer.requests.append(path)
                body = DISCOVERY.get(path) or outer.objects.get(path)
                status = 200 if body is not None else 404
                data = json.dumps(body if body is not None else NOT_FOUND).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def live(self, obj: dict[str, Any]) -> None:
        """Make ``obj`` (a Secret or a Deployment in the test namespace) live."""
        self.objects[object_path(obj["kind"], obj["metadata"]["name"])] = obj

    def render(self, values: dict[str, Any], *, upgrade: bool) -> dict[str, str]:
        """The chart rendered against this server, as ``helm upgrade`` (or ``install``) would."""
        config = helm.Config(kube_apiserver=self.url, kube_token="test", namespace=NAMESPACE)
        try:
            with helm.Chart.load(CHART) as chart:
                rendered: dict[str, str] = config.render(
                    chart,
                    values,
                    name=RELEASE,
                    namespace=NAMESPACE,
                    is_upgrade=upgrade,
                    is_install=not upgrade,
                )
                return rendered
        finally:
            config.close()


@contextmanager
def fake_api() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    # shutdown() waits for serve_forever's next poll: at its default 0.5 s that was ~0.35 s a test
    thread = threading.Thread(target=server.server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
