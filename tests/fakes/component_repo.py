"""A fake Component Repository over real HTTP: GET /components/{id} in the hub's shape.

Tests add components (`add`), inject failures (`fail(status, times)`, `delay`) and count
requests (`hits`). Production code never imports this module.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from tests.fakes.kube_api import QuietServer

DEFAULT_IMAGE = "registry.example/components/step:1.0"


def hub_component(
    component_id: str,
    *,
    image: str = DEFAULT_IMAGE,
    is_global: bool = False,
    replicas: int | None = None,
    resources: dict[str, Any] | None = None,
    entrypoint: str = "",
    functions: tuple[str, ...] = ("run",),
    top_resources: dict[str, Any] | None = None,
    image_pull_policy: str | None = None,
    environment: Any = None,
    access: str | None = "public",
    tenant: str | None = None,
    owners: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """One component in the hub's shape (the `data` object). `resources` goes into the
    descriptor (this project's earlier reading), `top_resources` where the Component
    Repository's model keeps it (lib/component-repository/src/models/Component.js);
    `image_pull_policy` and `environment` (descriptor.environment.variables) where the
    original KubernetesDriver read them. `access` (None: left out, the repository's default
    `private`), `tenant` and `owners` ([{id, type}]) as the repository's model has them."""
    descriptor: dict[str, Any] = {}
    if image_pull_policy is not None:
        descriptor["imagePullPolicy"] = image_pull_policy
    if environment is not None:
        descriptor["environment"] = {"variables": environment}
    if replicas is not None:
        descriptor["replicas"] = replicas
    if resources is not None:
        descriptor["resources"] = resources
    if entrypoint:
        descriptor["entrypoint"] = entrypoint
    extra: dict[str, Any] = {} if top_resources is None else {"resources": top_resources}
    if access is not None:
        extra["access"] = access
    if tenant is not None:
        extra["tenant"] = tenant
    if owners is not None:
        extra["owners"] = owners
    return {
        **extra,
        "id": component_id,
        "name": component_id.replace("-", " ").title(),
        "distribution": {"type": "docker", "image": image},
        "isGlobal": is_global,
        "functions": [{"name": name} for name in functions],
        "descriptor": descriptor,
    }


class FakeComponentRepo:
    def __init__(self) -> None:
        self.components: dict[str, dict[str, Any]] = {}
        self.hits: dict[str, int] = {}
        self.auth_headers: list[str | None] = []
        self.delay = 0.0
        self._failures: list[tuple[int, int]] = []  # (status, times left)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def add(self, component_id: str, **options: Any) -> dict[str, Any]:
        component = hub_component(component_id, **options)
        self.components[component_id] = component
        return component

    def fail(self, status: int, times: int = 1) -> None:
        with self._lock:
            self._failures.append((status, times))

    def _next_failure(self) -> int | None:
        with self._lock:
            for i, (status, left) in enumerate(self._failures):
                if left > 0:
                    self._failures[i] = (status, left - 1)
                    return status
        return None

    def start(self) -> FakeComponentRepo:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                status, body = fake.answer(path, self.headers.get("Authorization"))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def answer(self, path: str, authorization: str | None) -> tuple[int, dict[str, Any]]:
        prefix = "/components/"
        component_id = unquote(path[len(prefix) :]) if path.startswith(prefix) else ""
        with self._lock:
            self.hits[component_id] = self.hits.get(component_id, 0) + 1
            self.auth_headers.append(authorization)
        if self.delay:
            time.sleep(self.delay)
        failure = self._next_failure()
        if failure is not None:
            return failure, {"errors": [{"message": "injected", "code": failure}]}
        component = self.components.get(component_id)
        if component is None:
            return 404, {"errors": [{"message": "Component not found", "code": 404}]}
        return 200, {"data": component}

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"


@pytest.fixture
def component_repo() -> Iterator[FakeComponentRepo]:
    fake = FakeComponentRepo().start()
    try:
        yield fake
    finally:
        fake.stop()
