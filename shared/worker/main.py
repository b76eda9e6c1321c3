"""The component worker runtime (docs/architecture.md §2, `worker`): what a step's container runs,
like the hub's sailor.

Run as `python -m shared.worker` with the step's environment (the Secret deploy writes):
FLOW_ID, STEP_ID, TENANT, USER, COMPONENT_ID, COMPONENT_FUNCTION (default `process`),
COMPONENT_ENTRYPOINT (a Python module), STEP_FIELDS (JSON object), STEP_QUEUE, FLOW_TOKEN,
QUEUE_BACKEND, REDIS_URL, REDIS_MODE (`cluster` on a Redis Cluster), AWS_ENDPOINT_URL,
CLAIM_CHECK_BUCKET, K_SINK.

It consumes its step's queue and, for each message, calls `function(msg, fields)` where `msg`
is `{"data": ..., "attachments": [], "metadata": {runId, flowId, stepId, messageId, attempt,
tenant}}` and `fields` the node's fields. The return value is the step's output data; a list,
tuple or generator gives several outputs (sent with `seq`, `final` on the last; None items are
skipped); None gives no output (one final event marked `empty`). Each output becomes a
`step.completed` CloudEvent, an exception a `step.failed`, sent in binary mode to K_SINK with
the message's step token in the `steptoken` extension. The message is acknowledged once its
events are delivered; if they cannot be, it is left for redelivery. SIGTERM stops the worker
after the message in hand. FLOW_TOKEN stays in the environment for components that call the
hub; it is never logged.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from shared.clock import Clock, SystemClock
from shared.errors import OrchestratorError, PermanentError, TemporaryError
from shared.events import types as t
from shared.events.envelope import EXT_FLOW_ID, EXT_RUN_ID, EXT_STEP_TOKEN, EXT_TENANT
from shared.ports.driver import PARENT_PID_VARIABLE
from shared.ports.queue import StepQueue
from shared.ports.step_message import Delivery, StepMessage
from shared.security.redact import redact_text
from shared.settings import QUEUE_BACKENDS, SettingsError
from shared.wiring.queues import make_queue

log = logging.getLogger(__name__)

ComponentFunction = Callable[[dict[str, Any], dict[str, Any]], Any]
SEND_ATTEMPTS = 4
RETRYABLE_STATUS = frozenset({404, 408, 409, 429})  # Knative's retry table, plus 5xx


@dataclass(frozen=True)
class WorkerConfig:
    flow_id: str
    step_id: str
    queue: str
    entrypoint: str
    function: str = "process"
    tenant: str = ""
    user: str = ""
    component_id: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    queue_backend: str = "redis"
    redis_url: str | None = None
    redis_mode: str | None = None
    aws_endpoint_url: str | None = None
    claim_check_bucket: str | None = None
    k_sink: str | None = None
    global_component: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerConfig:
        problems: list[str] = []

        def text(name: str) -> str:
            return (env.get(name) or "").strip()

        global_component = text("GLOBAL_COMPONENT") == "1"
        fields: dict[str, Any] = {}
        try:
            raw = json.loads(text("STEP_FIELDS") or "{}")
            if not isinstance(raw, dict):
                raise ValueError
            fields = raw
        except ValueError:
            problems.append("STEP_FIELDS: must be a JSON object")
        backend = text("QUEUE_BACKEND") or "redis"
        if backend not in QUEUE_BACKENDS:
            problems.append(f"QUEUE_BACKEND: must be one of {', '.join(QUEUE_BACKENDS)}")
        elif backend == "amqp":  # docs/oih.md: there a step runs its image's own ferryman
            problems.append("QUEUE_BACKEND: amqp steps run ferryman, not python -m shared.worker")
        # K_SINK is checked where events are sent over HTTP (`main`): an in-process worker (the
        # headless demo) brings its own sender. A global component serves every flow's nodes
        # of it from one queue: each message names its flow, step, function and fields.
        required = ["STEP_QUEUE", "COMPONENT_ENTRYPOINT"]
        if not global_component:
            required = ["FLOW_ID", "STEP_ID", *required]
        required += ["REDIS_URL"] if backend == "redis" else ["CLAIM_CHECK_BUCKET"]
        problems.extend(f"{name}: required" for name in required if not text(name))
        if problems:
            message = "invalid worker settings: " + "; ".join(problems)
            raise SettingsError(message, problems=problems)
        return cls(
            flow_id=text("FLOW_ID"),
            step_id=text("STEP_ID"),
            queue=text("STEP_QUEUE"),
            entrypoint=text("COMPONENT_ENTRYPOINT"),
            function=text("COMPONENT_FUNCTION") or "process",
            tenant=text("TENANT"),
            user=text("USER"),
            component_id=text("COMPONENT_ID"),
            fields=fields,
            queue_backend=backend,
            redis_url=text("REDIS_URL") or None,
            redis_mode=text("REDIS_MODE") or None,
            aws_endpoint_url=text("AWS_ENDPOINT_URL") or None,
            claim_check_bucket=text("CLAIM_CHECK_BUCKET") or None,
            k_sink=text("K_SINK") or None,
            global_component=global_component,
        )

    @property
    def source(self) -> str:
        return f"/component-orchestrator/worker/{self.flow_id}/{self.step_id}"


def load_function(entrypoint: str, name: str) -> ComponentFunction:
    try:
        module = importlib.import_module(entrypoint)
    except ImportError as exc:
        raise PermanentError(f"COMPONENT_ENTRYPOINT: cannot import {entrypoint!r}: {exc}") from exc
    function = getattr(module, name, None)
    if not callable(function):
        raise PermanentError(f"COMPONENT_FUNCTION: {entrypoint!r} has no function {name!r}")
    return function  # type: ignore[no-any-return]


def unnamed_function(msg: dict[str, Any], fields: dict[str, Any]) -> Any:
    """A global component's message that names no function (the step fails)."""
    raise PermanentError("the message names no function of this global component")


def outputs(result: Any) -> Iterator[Any]:
    """A component's return value as its outputs (see the module docstring)."""
    if result is None:
        return
    if isinstance(result, list | tuple) or inspect.isgenerator(result):
        yield from (item for item in result if item is not None)
    else:
        yield result


class StepEventSender(Protocol):
    def send(self, event: CloudEvent) -> None:
        """Delivers one event; TemporaryError (try again) or PermanentError (never will)."""
        ...


class HttpStepSender:
    """Posts step events to K_SINK in binary mode (docs/events.md)."""

    def __init__(self, sink_url: str, *, timeout: float = 10.0) -> None:
        self.sink_url = sink_url
        self.session = requests.Session()
        self.timeout = timeout

    def send(self, event: CloudEvent) -> None:
        headers, body = to_binary(event)
        try:
            response = self.session.post(
                self.sink_url, headers=headers, data=body, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise TemporaryError(f"event sink unreachable: {type(exc).__name__}") from exc
        status = response.status_code
        if status < 300:
            return
        if status >= 500 or status in RETRYABLE_STATUS:
            raise TemporaryError(f"event sink answered {status}")
        raise PermanentError(f"event sink refused the event: {status}")


class Worker:
    def __init__(
        self,
        config: WorkerConfig,
        queue: StepQueue,
        sender: StepEventSender,
        function: ComponentFunction,
        *,
        consumer: str | None = None,
        clock: Clock | None = None,
        batch_size: int = 10,
        wait_seconds: float = 1.0,
        functions: Callable[[str], ComponentFunction] | None = None,
    ) -> None:
        self.config = config
        self.queue = queue
        self.sender = sender
        self.function = function
        # a global component's worker: the function each message names, by name
        self.functions = functions
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.clock = clock or SystemClock()
        self.batch_size = batch_size
        self.wait_seconds = wait_seconds
        self.processed = 0

    def run(self, stop: threading.Event) -> None:
        log.info("worker for step %s of flow %s consuming %s", self.config.step_id,
                 self.config.flow_id, self.config.queue)  # fmt: skip
        failures = 0
        while not stop.is_set():
            try:
                deliveries = self.queue.receive(
                    self.config.queue,
                    self.consumer,
                    max_messages=self.batch_size,
                    wait_seconds=self.wait_seconds,
                )
                failures = 0
            except OrchestratorError as exc:
                failures += 1
                log.warning("receiving from %s failed: %s", self.config.queue, exc.message)
                stop.wait(min(30.0, 0.5 * 2**failures))
                continue
            for delivery in deliveries:
                self.handle(delivery)
                if stop.is_set():
                    break  # the rest are redelivered (reclaimed) to another replica
        log.info("worker for step %s stopped after %d message(s)", self.config.step_id,
                 self.processed)  # fmt: skip

    def run_once(self) -> int:
        """Handles what one receive returns (tests and benchmarks); returns how many."""
        deliveries = self.queue.receive(
            self.config.queue, self.consumer, max_messages=self.batch_size, wait_seconds=0
        )
        for delivery in deliveries:
            self.handle(delivery)
        return len(deliveries)

    def handle(self, delivery: Delivery) -> bool:
        """Runs the component for one message; True if the message was acknowledged."""
        message = delivery.message
        if message is None:
            self.queue.ack(self.config.queue, [delivery])
            return True
        try:
            for event in self.events(message):
                self._send(event)
        except TemporaryError as exc:
            log.warning("message %s left for redelivery: %s", message.message_id, exc.message)
            return False
        except PermanentError as exc:
            log.error("message %s dropped: %s", message.message_id, exc.message)
        self.queue.ack(self.config.queue, [delivery])
        self.processed += 1
        return True

    def events(self, message: StepMessage) -> Iterator[CloudEvent]:
        """The step events for one message, produced as the component yields its outputs."""
        msg = message.component_message(
            {
                "runId": message.run_id,
                "flowId": message.flow_id,
                "stepId": message.step_id,
                "messageId": message.message_id,
                "attempt": message.attempt,
                "tenant": message.tenant,
            }
        )
        seq = 0
        held: list[Any] = []  # one output held back: the last one is sent with final = true
        function, fields = self.function, dict(self.config.fields)
        try:
            if message.function and self.functions is not None:  # a global component's message
                function, fields = self.functions(message.function), message.fields
            for output in outputs(function(msg, fields)):
                if held:
                    yield self._event(message, t.STEP_COMPLETED, seq, held.pop(), final=False)
                    seq += 1
                held.append(output)
        except Exception as exc:  # the component's failure, whatever it is, fails the step
            if held:
                yield self._event(message, t.STEP_COMPLETED, seq, held.pop(), final=False)
                seq += 1
            error = redact_text(f"{type(exc).__name__}: {exc}")[:1000]
            log.warning("step %s failed on message %s: %s", message.step_id,
                        message.message_id, error)  # fmt: skip
            yield self._event(message, t.STEP_FAILED, seq, None, final=True, error=error)
            return
        if held:
            yield self._event(message, t.STEP_COMPLETED, seq, held.pop(), final=True)
        else:
            yield self._event(message, t.STEP_COMPLETED, seq, None, final=True, empty=True)

    def _event(
        self,
        message: StepMessage,
        event_type: str,
        seq: int,
        data: Any,
        *,
        final: bool,
        error: str | None = None,
        empty: bool = False,
    ) -> CloudEvent:
        suffix = "failed" if event_type == t.STEP_FAILED else str(seq)
        payload: dict[str, Any] = {
            "runId": message.run_id,
            "stepId": message.step_id,
            "messageId": message.message_id,
            "seq": seq,
            "final": final,
            "attachments": [],
            "attempt": message.attempt,
        }
        if data is not None:
            payload["data"] = data
        if empty:
            payload["empty"] = True  # no output: this event only ends the message
        if error is not None:
            payload["error"] = error
        source = self.config.source
        if self.config.global_component:  # one worker for many flows: the message's step
            source = f"/component-orchestrator/worker/{message.flow_id}/{message.step_id}"
        attributes = {
            "type": event_type,
            "source": source,
            "id": f"{message.message_id}-{message.attempt}-{suffix}",
            "datacontenttype": "application/json",
            "dataschema": t.dataschema(event_type),
            EXT_TENANT: message.tenant,
            EXT_FLOW_ID: message.flow_id,
            EXT_RUN_ID: message.run_id,
            EXT_STEP_TOKEN: message.token,
        }
        return CloudEvent({k: v for k, v in attributes.items() if v}, payload)

    def _send(self, event: CloudEvent) -> None:
        for attempt in range(SEND_ATTEMPTS):
            try:
                self.sender.send(event)
                return
            except TemporaryError:
                if attempt == SEND_ATTEMPTS - 1:
                    raise
                self.clock.sleep(0.25 * 2**attempt)


def watch_parent(parent_pid: str | None, stop: threading.Event, interval: float = 1.0) -> None:
    """A local worker stops when the process that started it is gone, so that no worker
    outlives `make run` (in Kubernetes the variable is unset and the kubelet owns the pod)."""
    if not parent_pid or not parent_pid.isdigit():
        return
    expected = int(parent_pid)

    def watch() -> None:
        while not stop.wait(interval):
            if os.getppid() != expected:
                log.info("parent %d is gone: stopping", expected)
                stop.set()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(env: Mapping[str, str] | None = None) -> int:
    from shared.runtime.logs import configure_logging

    env = os.environ if env is None else env
    configure_logging("worker")
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping after the message in hand", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    watch_parent(env.get(PARENT_PID_VARIABLE), stop)
    try:
        config = WorkerConfig.from_env(env)
        if not config.k_sink:
            raise SettingsError("invalid worker settings: K_SINK: required", problems=["K_SINK"])
        functions = functools.cache(lambda name: load_function(config.entrypoint, name))
        function = unnamed_function if config.global_component else functions(config.function)
        redis = None
        if config.queue_backend == "redis":
            from shared.store import connect

            redis = connect(config.redis_url or "", config.redis_mode)
        queue = make_queue(
            config.queue_backend,
            redis=redis,
            aws_endpoint_url=config.aws_endpoint_url,
            claim_check_bucket=config.claim_check_bucket,
            worker=True,
        )
    except OrchestratorError as exc:
        log.error("worker cannot start: %s", exc.message)
        return 2
    sender = HttpStepSender(config.k_sink or "")
    Worker(config, queue, sender, function, functions=functions).run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
