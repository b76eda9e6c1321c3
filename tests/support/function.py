"""One harness for every function: its real FunctionRuntime (make_runtime) on the test's Redis
and clock, events sent in as their real senders send them, the emitted events captured, and
the state the test reads back through the modules that own it.

from shared.handlers.step_execute import SPEC as STEP_EXECUTE
from tests.support.flows import fast_policy, flow_document

harness = FunctionHarness(STEP_EXECUTE, redis, clock, base_env, policy=fast_policy())
harness.store_flow(flow_document("f1", ["a", "b"], [("a", "b")]))
harness.admit("f1", "run-1", {"x": 1})
harness.run_workers("f1", {"a": fn_a, "b": fn_b})   # the real Worker code, events in-process
assert harness.emitted("flow.execution.completed")

harness = FunctionHarness(FLOW_START, redis, clock, base_env, policy=policy(slots=1))
harness.start_flow(flow_doc("f1"))   # flow.starting, then deploy's flow.started
harness.tick()
assert harness.admitted()

How events come in: control events (flow.starting/stopping/execute, component.*) and the tick
as from outside (pass `authtoken=` for an IAM token), step results with the `steptoken` the
caller gives (see `result`), everything else as one of our functions sends it (signed with
the test key, bound to its type). Services are built by the spec's own `build_services`, as
in production, except that a flow-start tick does one round (FLOW_START_WORK_THROUGH_SECONDS
defaults to 0 here); pass `services=` to choose them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar, cast

from cloudevents.http import CloudEvent
from redis import Redis

from shared import keys
from shared.clock import FakeClock
from shared.events import FlowDocument
from shared.events.types import CONTROL_TYPES, PREFIX, STEP_RESULT_TYPES, TICK
from shared.execution import runs
from shared.model import flows
from shared.model.policy import Policy
from shared.policing import ledger
from shared.policing.ledger import SubjectRef
from shared.ports.queue import StepQueue
from shared.ports.step_message import Delivery, StepMessage
from shared.runtime.function import FunctionRuntime, FunctionSpec, Outcome
from shared.wiring.queues import make_queue
from shared.worker.main import Worker, WorkerConfig
from tests.conftest import TEST_KEY
from tests.support.events import CapturingSender, cloudevent, internal
from tests.support.runtime import make_runtime

S = TypeVar("S")

UNSIGNED_TYPES = CONTROL_TYPES | STEP_RESULT_TYPES | {TICK}
TEST_DEFAULTS = {"FLOW_START_WORK_THROUGH_SECONDS": "0"}


class FunctionHarness(Generic[S]):
    """One function under test; see the module docstring."""

    def __init__(
        self,
        spec: FunctionSpec[S],
        redis: Redis,
        clock: FakeClock,
        env: Mapping[str, str],
        *,
        policy: Policy | None = None,
        services: S | None = None,
    ) -> None:
        self.spec = spec
        self.redis = redis
        self.clock = clock
        self.env = {**TEST_DEFAULTS, **env}
        self.sender = CapturingSender()
        self.runtime: FunctionRuntime[S] = make_runtime(
            spec, redis, clock, self.env, self.sender, services, policy=policy
        )
        self._runs = itertools.count(1)
        self._queue: StepQueue | None = None

    @property
    def services(self) -> S:
        return self.runtime.services

    @property
    def policy(self) -> Policy:
        return self.runtime.policy

    # --- events in --------------------------------------------------------------------------
    def handle(self, event: CloudEvent) -> Outcome:
        return self.runtime.handle(event)

    def send(self, type_suffix: str, data: Any = None, **kw: Any) -> Outcome:
        """`type_suffix` without `org.openintegrationhub.`; `kw`: attributes and extensions
        (`event_id`, `source`, `authtoken`, `steptoken`, ...) and, for our own events, the
        signing function (`sender`)."""
        event_type = type_suffix if type_suffix.startswith(PREFIX) else PREFIX + type_suffix
        if event_type in UNSIGNED_TYPES:
            return self.handle(cloudevent(event_type, data, **kw))
        return self.handle(internal(event_type, data, key=TEST_KEY, clock=self.clock, **kw))

    def tick(self, **kw: Any) -> Outcome:
        return self.send("orchestrator.tick", {}, **kw)

    # --- the catalogue's usual events -------------------------------------------------------
    def store_flow(self, document: Mapping[str, Any]) -> None:
        """Stores a flow document as deploy and flow-start do (for functions that only read)."""
        flows.upsert(self.redis, FlowDocument.parse(dict(document)), self.clock.now())

    def start_flow(self, document: Mapping[str, Any], *, deployed: bool = True) -> None:
        """flow.starting, then (unless `deployed=False`) deploy's flow.started."""
        self.send("flow.starting", dict(document))
        if deployed:
            self.send("flow.started", {"id": document["id"]})

    def execute(self, flow_id: str, msg: Any = None, **kw: Any) -> Outcome:
        return self.send("flow.execute", {"flowId": flow_id, "msg": msg or {}}, **kw)

    def admit(
        self,
        flow_id: str = "f1",
        run_id: str | None = None,
        msg: Any = None,
        *,
        tenant: str = "acme",
        user: str | None = None,
        fencing: int = 1,
        trigger: str = "cron",
        event_id: str | None = None,
        **kw: Any,
    ) -> dict[str, Any]:
        """flow.execution.admitted as flow-start sends it; returns its payload (for `end`).
        The run id defaults to run-1, run-2, ... of this harness; the user to the stored
        flow's owner (else u1); the event id is derived from the run id, so admitting the same
        run twice is one event delivered twice."""
        if user is None:
            stored = flows.get(self.redis, flow_id)
            user = stored.flow.user if stored is not None else "u1"
        data: dict[str, Any] = {
            "flowId": flow_id,
            "runId": run_id or f"run-{next(self._runs)}",
            "tenant": tenant,
            "user": user,
            "fencingToken": fencing,
            "scheduledFor": self.clock.now(),
            "trigger": trigger,
        }
        if msg is not None:
            data["msg"] = msg
        self.send(
            "flow.execution.admitted",
            data,
            sender="flow-start",
            source="/component-orchestrator/flow-start",
            event_id=event_id or f"admit-{data['runId']}",
            **kw,
        )
        return data

    def end(
        self,
        run: Mapping[str, Any],
        *,
        failed: bool = False,
        reason: str | None = None,
        duration_ms: int = 0,
        **kw: Any,
    ) -> Outcome:
        """Ends an admitted run (the payload `admit` returned, or an emitted admitted event's)
        as step-execute would."""
        data: dict[str, Any] = {
            "flowId": run["flowId"],
            "runId": run["runId"],
            "tenant": run["tenant"],
            "fencingToken": run["fencingToken"],
            "durationMs": duration_ms,
        }
        if reason:
            data["reason"] = reason
        suffix = "flow.execution.failed" if failed else "flow.execution.completed"
        return self.send(suffix, data, **kw)

    def usage(
        self,
        flow_id: str = "f1",
        *,
        tenant: str = "acme",
        user: str = "u1",
        event_id: str | None = None,
        **amounts: Any,
    ) -> Outcome:
        data = {"tenant": tenant, "user": user, "flowId": flow_id, **amounts}
        return self.send("usage.reported", data, **({"event_id": event_id} if event_id else {}))

    # --- events out -------------------------------------------------------------------------
    def emitted(self, suffix: str) -> list[dict[str, Any]]:
        return [event.data for event in self.sender.of_type(suffix)]

    def admitted(self) -> list[dict[str, Any]]:
        return self.emitted("flow.execution.admitted")

    def reasons(self, suffix: str) -> list[str]:
        return [data["reason"] for data in self.emitted(suffix)]

    def types(self) -> list[str]:
        return [event.type.removeprefix(PREFIX) for event in self.sender.events]

    def clear(self) -> None:
        self.sender.events.clear()

    # --- state read back --------------------------------------------------------------------
    def run(self, run_id: str = "run-1") -> runs.RunRecord:
        record = runs.get(self.redis, run_id)
        assert record is not None, f"no run record {run_id}"
        return record

    def dead_letters(self) -> list[dict[str, str]]:
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]], self.redis.xrange(keys.dead_letters())
        )
        return [{k.decode(): v.decode() for k, v in fields.items()} for _id, fields in entries]

    def measured(
        self,
        level: str,
        subject_id: str,
        metric: str,
        *,
        window: int | None = None,
        tenant: str = "acme",
    ) -> float:
        """What the ledger counted for a subject (the level's longest window by default)."""
        windows = ledger.level_windows(self.policy)[level]
        return ledger.usage(
            self.redis,
            SubjectRef(level, subject_id, tenant),
            window or windows[-1],
            now=self.clock.now(),
        )[metric]

    # --- step queues and in-process workers -------------------------------------------------
    @property
    def queue(self) -> StepQueue:
        """The function's step queue backend, or the one the settings name."""
        queue: StepQueue | None = getattr(self.services, "queue", None)
        if queue is not None:
            return queue
        if self._queue is None:
            settings = self.runtime.settings
            self._queue = make_queue(
                settings.queue_backend,
                redis=self.redis,
                aws_endpoint_url=settings.aws_endpoint_url,
                claim_check_bucket=settings.claim_check_bucket,
            )
        return self._queue

    def receive(self, flow_id: str, step: str, consumer: str = "tests") -> list[Delivery]:
        return self.queue.receive(
            keys.step_queue(flow_id, step), consumer, max_messages=10_000, wait_seconds=0
        )

    def messages(self, flow_id: str, step: str) -> list[StepMessage]:
        """Takes (and acknowledges) every message waiting in a step's queue."""
        deliveries = self.receive(flow_id, step)
        self.queue.ack(keys.step_queue(flow_id, step), deliveries)
        return [d.message for d in deliveries if d.message is not None]

    def result(
        self,
        message: StepMessage,
        data: Any = None,
        *,
        seq: int = 0,
        final: bool = True,
        failed: str | None = None,
        token: str | None = None,
        event_id: str | None = None,
        **payload: Any,
    ) -> CloudEvent:
        """The step.completed (or, with `failed=`, step.failed) a worker sends for `message`."""
        body: dict[str, Any] = {
            "runId": message.run_id,
            "stepId": message.step_id,
            "messageId": message.message_id,
            "seq": seq,
            "final": final,
            "data": data,
            "attempt": message.attempt,
            **payload,
        }
        if data is None and failed is None:
            body["empty"] = True  # no output: only ends the message
        if failed is not None:
            body["error"] = failed
        kind = "step.failed" if failed is not None else "step.completed"
        return cloudevent(
            kind,
            body,
            source=f"/component-orchestrator/worker/{message.flow_id}/{message.step_id}",
            event_id=event_id or f"{message.message_id}-{message.attempt}-{seq}-{kind}",
            steptoken=message.token if token is None else token,
        )

    def worker(
        self, flow_id: str, step: str, function: Callable[..., Any], *, tenant: str = "acme"
    ) -> Worker:
        """The real Worker for one step, its events handed to this function in-process."""
        config = WorkerConfig(
            flow_id=flow_id,
            step_id=step,
            queue=keys.step_queue(flow_id, step),
            entrypoint="tests",
            tenant=tenant,
        )
        return Worker(
            config,
            self.queue,
            _InProcessSender(self.runtime),
            function,
            consumer=f"worker-{step}",
            clock=self.clock,
            batch_size=1000,
        )

    def run_workers(
        self, flow_id: str, functions: Mapping[str, Callable[..., Any]], rounds: int = 50
    ) -> int:
        """Runs the real Worker code for each step until no queue has anything left."""
        workers = [self.worker(flow_id, step, fn) for step, fn in functions.items()]
        handled = 0
        for _ in range(rounds):
            done = sum(worker.run_once() for worker in workers)
            handled += done
            if done == 0:
                return handled
        raise AssertionError(f"queues still busy after {rounds} rounds")


class _InProcessSender:
    """A worker's event sender that hands each event to the function in-process."""

    def __init__(self, runtime: FunctionRuntime[Any]) -> None:
        self.runtime = runtime

    def send(self, event: CloudEvent) -> None:
        self.runtime.handle(event)
