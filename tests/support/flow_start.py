"""Driving the flow-start function in tests: flow documents, events in, events out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis import Redis

from shared.clock import FakeClock
from shared.handlers.flow_start import SPEC, Services
from shared.model.policy import Policy, parse_policy
from tests.support.function import FunctionHarness


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


class FlowStart(FunctionHarness[Services]):
    """flow-start in the generic harness (kept while callers move to FunctionHarness)."""

    def __init__(
        self,
        redis: Redis,
        clock: FakeClock,
        env: Mapping[str, str],
        *,
        policy: Policy | None = None,
        services: Services | None = None,
    ) -> None:
        super().__init__(SPEC, redis, clock, env, policy=policy, services=services or Services())
