"""Driving the flow-start function in tests: flow documents, events in, events out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis import Redis

from shared.clock import FakeClock
from shared.events.types import CONTROL_TYPES, PREFIX, TICK
from shared.handlers.flow_start import SPEC, Services
from shared.model.policy import Policy, parse_policy
from shared.runtime.function import FunctionRuntime, Outcome
from tests.conftest import TEST_KEY
from tests.support.events import CapturingSender, cloudevent, internal
from tests.support.runtime import make_runtime


def flow_doc(
    flow_id: str = "f1",
    *,
    tenant: str = "acme",
    owner: str = "u1",
    cron: str | None = "* * * * *",
    timezone: str | None = None,
    **settings: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": flow_id,
        "tenant": tenant,
        "owners": [{"id": owner, "type": "user"}],
        "graph": {"nodes": [{"id": "a", "componentId": "c1", "function": "run"}], "edges": []},
    }
    if cron is not None:
        doc["cron"] = cron
    if timezone is not None:
        doc["timezone"] = timezone
    if settings:
        doc["flowSettings"] = settings
    return doc


def policy(**document: Any) -> Policy:
    """A policy from keyword sections, e.g. policy(slots=5, defaults={"weight": 1})."""
    return parse_policy(document)


class FlowStart:
    """One flow-start runtime on the test's Redis and clock, with a CapturingSender."""

    def __init__(
        self,
        redis: Redis,
        clock: FakeClock,
        env: Mapping[str, str],
        *,
        policy: Policy | None = None,
        services: Services | None = None,
    ) -> None:
        self.redis = redis
        self.clock = clock
        self.sender = CapturingSender()
        self.runtime: FunctionRuntime[Services] = make_runtime(
            SPEC, redis, clock, env, self.sender, services or Services(), policy=policy
        )

    def send(self, type_suffix: str, data: Any = None, **kw: Any) -> Outcome:
        event_type = PREFIX + type_suffix
        if event_type in CONTROL_TYPES or event_type == TICK:
            return self.runtime.handle(cloudevent(event_type, data, **kw))
        return self.runtime.handle(internal(event_type, data, key=TEST_KEY, clock=self.clock, **kw))

    # --- the usual steps ----------------------------------------------------------------
    def start_flow(self, doc: dict[str, Any], *, deployed: bool = True) -> None:
        self.send("flow.starting", doc)
        if deployed:
            self.send("flow.started", {"id": doc["id"]})

    def tick(self) -> Outcome:
        return self.send("orchestrator.tick", {})

    def execute(self, flow_id: str, msg: Any = None, **kw: Any) -> Outcome:
        return self.send("flow.execute", {"flowId": flow_id, "msg": msg or {}}, **kw)

    def end(self, admitted: Mapping[str, Any], *, failed: bool = False, **kw: Any) -> Outcome:
        """Ends an admitted run as step-execute would (payload of its admitted event)."""
        return self.send(
            "flow.execution.failed" if failed else "flow.execution.completed",
            {
                "flowId": admitted["flowId"],
                "runId": admitted["runId"],
                "tenant": admitted["tenant"],
                "fencingToken": admitted["fencingToken"],
            },
            **kw,
        )

    # --- what came out ------------------------------------------------------------------
    def emitted(self, suffix: str) -> list[dict[str, Any]]:
        return [event.data for event in self.sender.of_type(suffix)]

    def admitted(self) -> list[dict[str, Any]]:
        return self.emitted("flow.execution.admitted")

    def reasons(self, suffix: str) -> list[str]:
        return [data["reason"] for data in self.emitted(suffix)]

    def clear(self) -> None:
        self.sender.events.clear()
