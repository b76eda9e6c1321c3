"""Driving the policy-check function in tests: events in (signed), emitted events out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis import Redis

from shared.clock import FakeClock
from shared.events import FlowDocument
from shared.handlers.policy_check import SPEC
from shared.model import flows
from shared.model.policy import Policy
from shared.wiring.policing import PolicyServices
from tests.support.function import FunctionHarness


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


class PolicyCheck(FunctionHarness[PolicyServices]):
    """policy-check in the generic harness (kept while callers move to FunctionHarness)."""

    def __init__(
        self,
        redis: Redis,
        clock: FakeClock,
        env: Mapping[str, str],
        *,
        policy: Policy | None = None,
        services: PolicyServices | None = None,
    ) -> None:
        super().__init__(
            SPEC,
            redis,
            clock,
            env,
            policy=policy or Policy(),
            services=services or PolicyServices(),
        )

    def admit(  # type: ignore[override]
        self, flow_id: str = "f1", *, token: int = 1, **kw: Any
    ) -> dict[str, Any]:
        return super().admit(flow_id, fencing=token, **kw)
