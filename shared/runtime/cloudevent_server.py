"""A small threaded HTTP server that accepts CloudEvents (structured or binary) and hands each
to a callback; used by the local broker and the event-bus bridge (the dead-letter sink runs on
functions-framework, functions/dead_letters/main.py).

Malformed requests are answered 400 with a JSON body that names the problem and never echoes
headers (they may carry tokens).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cloudevents import exceptions as ce_errors
from cloudevents.http import CloudEvent, from_http
from prometheus_client import CONTENT_TYPE_LATEST

from shared.runtime.metrics import exposition

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024

EventCallback = Callable[[CloudEvent], int]


class CloudEventServer:
    """POST a CloudEvent to any path → `on_event(event)` → its status; GET /healthz → 200."""

    def __init__(
        self, on_event: EventCallback, *, host: str = "127.0.0.1", port: int = 0, name: str
    ) -> None:
        self.name = name
        self._server = ThreadingHTTPServer((host, port), _handler_for(on_event, name))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._server.server_address[0])
        return f"http://{host}:{self.port}"

    def start(self) -> CloudEventServer:
        """Serves in a background thread."""
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"{self.name}-http",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def parse_request(headers: dict[str, str], body: bytes) -> CloudEvent:
    """The CloudEvent in an HTTP request, or ValueError naming what is wrong."""
    try:
        return from_http(headers, body)
    except ce_errors.MissingRequiredFields as exc:
        raise ValueError(f"missing CloudEvent attributes: {_first_line(exc)}") from exc
    except ce_errors.InvalidStructuredJSON as exc:
        raise ValueError("body: structured CloudEvent is not valid JSON") from exc
    except ce_errors.GenericException as exc:
        raise ValueError(f"not a CloudEvent: {type(exc).__name__}") from exc
    except (ValueError, TypeError) as exc:
        raise ValueError("not a CloudEvent: unreadable envelope") from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _handler_for(on_event: EventCallback, name: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"component-orchestrator-{name}"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the caller prints its own one-line log (without headers)."""

        def do_GET(self) -> None:
            if self.path.rstrip("/") in ("/healthz", "/readyz"):
                self._reply(HTTPStatus.OK, {"status": "ok"})
            elif self.path.split("?")[0] == "/metrics":
                self._metrics()
            else:
                self._reply(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "POST a CloudEvent"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "event too large"})
                return
            body = self.rfile.read(length) if length else b""
            try:
                event = parse_request(dict(self.headers.items()), body)
            except ValueError as exc:
                self._reply(
                    HTTPStatus.BAD_REQUEST,
                    {"error": "InvalidEvent", "message": str(exc), "problems": [str(exc)]},
                )
                return
            try:
                status = on_event(event)
            except Exception:
                log.exception("%s failed to accept an event", name)
                self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})
                return
            self._reply(HTTPStatus(status), None)

        def _metrics(self) -> None:
            data = exposition()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _reply(self, status: HTTPStatus, body: object) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data:
                self.wfile.write(data)

    return Handler
