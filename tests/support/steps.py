"""Driving step-execute in tests: flows, admitted runs, step results and in-process workers.

harness = StepHarness(redis, clock, base_env, policy=fast_policy())
harness.store_flow(flow_document("f1", ["a", "b"], [("a", "b")]))
harness.admit("f1", "run-1", {"x": 1})
harness.run_workers({"a": fn_a, "b": fn_b})   # the real Worker code, events handled in-process
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from cloudevents.http import CloudEvent
from redis import Redis

from shared import keys
from shared.clock import FakeClock
from shared.events import FlowDocument
from shared.execution import runs
from shared.handlers.step_execute import SPEC, StepExecuteServices, build_services
from shared.model import flows
from shared.model.policy import Policy, TenantLimits
from shared.ports.queue import StepQueue
from shared.ports.step_message import Delivery, StepMessage
from shared.runtime.function import FunctionRuntime, Outcome
from shared.settings import Settings
from shared.worker.main import Worker, WorkerConfig
from tests.conftest import TEST_KEY
from tests.support.events import CapturingSender, cloudevent, internal
from tests.support.runtime import make_runtime

TENANT = "acme"
USER = "alice"


def fast_policy(**limits: Any) -> Policy:
    """Policy defaults for tests: high message rates unless a test lowers them."""
    values: dict[str, Any] = {
        "messages_per_second": 100_000.0,
        "step_retries": 2,
        "step_timeout_seconds": 30,
    }
    values.update(limits)
    return Policy(defaults=replace(TenantLimits(), **values))


def flow_document(
    flow_id: str,
    nodes: Iterable[str | Mapping[str, Any]],
    edges: Iterable[tuple[str, str] | tuple[str, str, Mapping[str, Any]]] = (),
    *,
    tenant: str = TENANT,
    owner: str = USER,
) -> dict[str, Any]:
    """A flow.starting document; a node is an id or a dict (`join: True` → nodeSettings)."""
    graph_nodes = []
    for node in nodes:
        spec = {"id": node} if isinstance(node, str) else dict(node)
        join = spec.pop("join", False)
        entry = {"componentId": "example-transform", "function": "process", **spec}
        if join:
            entry["nodeSettings"] = {"join": True}
        graph_nodes.append(entry)
    graph_edges = []
    for edge in edges:
        config = dict(edge[2]) if len(edge) == 3 else {}  # type: ignore[misc]
        graph_edges.append({"source": edge[0], "target": edge[1], "config": config})
    return {
        "id": flow_id,
        "tenant": tenant,
        "owners": [{"id": owner, "type": "user"}],
        "graph": {"nodes": graph_nodes, "edges": graph_edges},
    }


class RuntimeSender:
    """A worker's event sender that hands each event to step-execute in-process."""

    def __init__(self, runtime: FunctionRuntime[Any]) -> None:
        self.runtime = runtime

    def send(self, event: CloudEvent) -> None:
        self.runtime.handle(event)


class StepHarness:
    def __init__(
        self,
        redis: Redis,
        clock: FakeClock,
        env: Mapping[str, str],
        *,
        policy: Policy | None = None,
        services: StepExecuteServices | None = None,
    ) -> None:
        self.redis = redis
        self.clock = clock
        self.env = dict(env)
        settings = Settings.from_env(self.env)
        self.services = services or build_services(settings, clock, redis)
        self.runtime = make_runtime(
            SPEC, redis, clock, self.env, policy=policy or fast_policy(), services=self.services
        )
        sender = self.runtime.sender
        assert isinstance(sender, CapturingSender)
        self.sender = sender

    @property
    def queue(self) -> StepQueue:
        return self.services.queue

    # --- flows and runs ---------------------------------------------------------------------
    def store_flow(self, document: dict[str, Any]) -> None:
        flows.upsert(self.redis, FlowDocument.parse(document), self.clock.now())

    def admit(
        self,
        flow_id: str,
        run_id: str = "run-1",
        msg: Any = None,
        *,
        tenant: str = TENANT,
        user: str = USER,
        fencing: int = 7,
    ) -> Outcome:
        data = {
            "flowId": flow_id,
            "runId": run_id,
            "tenant": tenant,
            "user": user,
            "fencingToken": fencing,
            "scheduledFor": self.clock.now(),
            "trigger": "execute",
            "msg": {} if msg is None else msg,
        }
        return self.handle(
            internal(
                "flow.execution.admitted",
                data,
                key=TEST_KEY,
                clock=self.clock,
                sender="flow-start",
                source="/component-orchestrator/flow-start",
                event_id=f"admit-{run_id}",
            )
        )

    def handle(self, event: CloudEvent) -> Outcome:
        return self.runtime.handle(event)

    def tick(self) -> Outcome:
        return self.handle(cloudevent("orchestrator.tick", {}, source="/tests/clock"))

    def run(self, run_id: str = "run-1") -> runs.RunRecord:
        record = runs.get(self.redis, run_id)
        assert record is not None
        return record

    # --- queues -----------------------------------------------------------------------------
    def receive(self, flow_id: str, step: str, consumer: str = "tests") -> list[Delivery]:
        return self.queue.receive(
            keys.step_queue(flow_id, step), consumer, max_messages=10_000, wait_seconds=0
        )

    def messages(self, flow_id: str, step: str) -> list[StepMessage]:
        deliveries = self.receive(flow_id, step)
        self.queue.ack(keys.step_queue(flow_id, step), deliveries)
        return [d.message for d in deliveries if d.message is not None]

    def dead_letters(self) -> list[dict[str, str]]:
        return [
            {k.decode(): v.decode() for k, v in fields.items()}
            for _id, fields in self.redis.xrange(keys.dead_letters())
        ]

    # --- step results -----------------------------------------------------------------------
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

    def worker(self, flow_id: str, step: str, function: Callable[..., Any]) -> Worker:
        config = WorkerConfig(
            flow_id=flow_id,
            step_id=step,
            queue=keys.step_queue(flow_id, step),
            entrypoint="tests",
            tenant=TENANT,
        )
        return Worker(
            config,
            self.queue,
            RuntimeSender(self.runtime),
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
