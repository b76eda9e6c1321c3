"""A real HTTP event sink (K_SINK) for worker tests: parses binary CloudEvents, records them,
and optionally hands each to a handler (e.g. step-execute's runtime) whose errors become the
HTTP status, as the functions' adapters answer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from cloudevents.http import CloudEvent, from_http

from shared.errors import OrchestratorError
from tests.fakes.kube_api import QuietServer
from tests.support.apps import ROOT


class EventSink:
    def __init__(self, handler: Callable[[CloudEvent], Any] | None = None) -> None:
        self.handler = handler
        self.events: list[CloudEvent] = []
        self.statuses: list[int] = []  # answers to give first (then 200 or the handler's)
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self.url = ""

    def receive(self, headers: dict[str, str], body: bytes) -> int:
        with self._lock:
            self.headers.append(headers)
            if self.statuses:
                return self.statuses.pop(0)
        event = from_http(headers, body)
        status = 200
        if self.handler is not None:
            try:
                self.handler(event)
            except OrchestratorError as exc:
                status = exc.status
        with self._arrived:
            if status < 300:
                self.events.append(event)
            self._arrived.notify_all()
        return status

    def wait_for(self, count: int, timeout: float = 20.0) -> list[CloudEvent]:
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.events) >= count, timeout)
            return list(self.events)

    def of_type(self, suffix: str) -> list[CloudEvent]:
        with self._lock:
            return [e for e in self.events if str(e["type"]).endswith(suffix)]


@contextmanager
def running_sink(handler: Callable[[CloudEvent], Any] | None = None) -> Iterator[EventSink]:
    sink = EventSink(handler)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            status = sink.receive({k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = QuietServer(("127.0.0.1", 0), Handler)
    sink.url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class WorkerRun:
    event: CloudEvent  # the first event the worker emitted
    exit_code: int  # after SIGTERM
    output: str  # its stdout and stderr


def run_worker_for_one_event(environment: Mapping[str, str]) -> WorkerRun:
    """Runs the real `python -m shared.worker` (from the project's root) with `environment`
    plus PATH, PYTHONPATH and a K_SINK of its own until it emits one event, then stops it
    with SIGTERM as Kubernetes would."""
    with running_sink() as sink:
        env = {
            "PATH": os.environ["PATH"],
            **environment,
            "K_SINK": sink.url,
            "PYTHONPATH": str(ROOT),
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "shared.worker"], env=env, cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            (event,) = sink.wait_for(1, timeout=30)
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
        output = process.stdout.read().decode() if process.stdout else ""
    return WorkerRun(event, code, output)
