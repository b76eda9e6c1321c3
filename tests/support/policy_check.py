"""Driving the policy-check function in tests: events in (signed), emitted events out."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from redis import Redis

from shared.clock import FakeClock
from shared.events import FlowDocument
from shared.events.types import PREFIX, TICK
from shared.handlers.policy_check import SPEC, PolicyServices
from shared.model import flows
from shared.model.policy import Policy
from shared.policing import ledger
from shared.policing.ledger import SubjectRef
from shared.runtime.function import FunctionRuntime, Outcome
from tests.conftest import TEST_KEY
from tests.support.events import CapturingSender, cloudevent, internal
from tests.support.runtime import make_runtime

_runs = itertools.count(1)


def store_flow(
    redis: Redis, flow_id: str = "f1", *, tenant: str = "acme", owner: str = "u1", **settings: Any
) -> None:
    """Stores a flow document as deploy / flow-start would (policy-check only reads it)."""
    doc: dict[str, Any] = {
        "id": flow_id,
        "tenant": tenant,
        "owners": [{"id": owner, "type": "user"}],
        "graph": {"nodes": [{"id": "a", "componentId": "c1", "function": "run"}], "edges": []},
    }
    if settings:
        doc["flowSettings"] = settings
    flows.upsert(redis, FlowDocument.parse(doc), 1.0)


class PolicyCheck:
    def __init__(
        self,
        redis: Redis,
        clock: FakeClock,
        env: Mapping[str, str],
        *,
        policy: Policy | None = None,
        services: PolicyServices | None = None,
    ) -> None:
        self.redis = redis
        self.clock = clock
        self.sender = CapturingSender()
        self.policy = policy or Policy()
        self.runtime: FunctionRuntime[PolicyServices] = make_runtime(
            SPEC, redis, clock, env, self.sender, services or PolicyServices(), policy=self.policy
        )

    def send(self, type_suffix: str, data: Any = None, **kw: Any) -> Outcome:
        event_type = PREFIX + type_suffix
        if event_type == TICK:
            return self.runtime.handle(cloudevent(event_type, data or {}, **kw))
        return self.runtime.handle(internal(event_type, data, key=TEST_KEY, clock=self.clock, **kw))

    def tick(self) -> Outcome:
        return self.send("orchestrator.tick", {})

    def admit(
        self,
        flow_id: str = "f1",
        *,
        tenant: str = "acme",
        user: str = "u1",
        token: int = 1,
        **kw: Any,
    ) -> dict[str, Any]:
        run = {
            "flowId": flow_id,
            "runId": f"run-{next(_runs)}",
            "tenant": tenant,
            "user": user,
            "fencingToken": token,
            "scheduledFor": self.clock.now(),
            "trigger": "cron",
        }
        self.send("flow.execution.admitted", run, **kw)
        return run

    def end(
        self,
        run: Mapping[str, Any],
        *,
        failed: bool = False,
        reason: str | None = None,
        duration_ms: int = 0,
        **kw: Any,
    ) -> Outcome:
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

    # --- reading back ---------------------------------------------------------------------
    def measured(
        self,
        level: str,
        subject_id: str,
        metric: str,
        *,
        window: int | None = None,
        tenant: str = "acme",
    ) -> float:
        windows = ledger.level_windows(self.policy)[level]
        return ledger.usage(
            self.redis,
            SubjectRef(level, subject_id, tenant),
            window or windows[-1],
            now=self.clock.now(),
        )[metric]

    def emitted(self, suffix: str) -> list[dict[str, Any]]:
        return [event.data for event in self.sender.of_type(suffix)]

    def types(self) -> list[str]:
        return [event.type.removeprefix(PREFIX) for event in self.sender.events]

    def clear(self) -> None:
        self.sender.events.clear()
