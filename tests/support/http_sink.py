"""A real HTTP server that records every request and answers from a script.

with HttpSink() as sink:                      # answers 200 to everything
    sink.answer(503, 503, 200)                # the next three answers, then the default
    sink.answer((429, {"Retry-After": "2"}))  # a status with headers
    sink.default = 200
    ... sink.requests[0].headers["ce-type"] ...
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    truncated: bool = False  # shorter than its Content-Length: the client died mid-send

    def json(self) -> Any:
        return json.loads(self.body)


Answer = int | tuple[int, dict[str, str]]


class HttpSink:
    def __init__(self, default: int = 200) -> None:
        self.default = default
        self.requests: list[Request] = []
        self._script: deque[Answer] = deque()
        self._stalls: deque[float] = deque()
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def answer(self, *answers: Answer) -> None:
        with self._lock:
            self._script.extend(answers)

    def stall(self, *seconds: float) -> None:
        """The next requests answer only after these delays (to provoke client timeouts)."""
        with self._lock:
            self._stalls.extend(seconds)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Request]:
        """Blocks until at least `count` requests arrived (or the timeout passed)."""
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.requests) >= count, timeout)
            return list(self.requests)

    def __enter__(self) -> HttpSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next(self) -> tuple[int, dict[str, str]]:
        answer: Answer = self._script.popleft() if self._script else self.default
        return answer if isinstance(answer, tuple) else (answer, {})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                request = Request(self.path, headers, body, truncated=len(body) < length)
                with sink._arrived:
                    status, headers = sink._next()
                    stall = sink._stalls.popleft() if sink._stalls else 0.0
                    sink.requests.append(request)
                    sink._arrived.notify_all()
                sink.gate.wait(30)
                if stall:
                    time.sleep(stall)
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a timeout test)

        return Handler
