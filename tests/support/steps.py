"""Driving step-execute in tests: flows, admitted runs, step results and in-process workers.

harness = StepHarness(redis, clock, base_env, policy=fast_policy())
harness.store_flow(flow_document("f1", ["a", "b"], [("a", "b")]))
harness.admit("f1", "run-1", {"x": 1})
harness.run_workers({"a": fn_a, "b": fn_b})   # the real Worker code, events handled in-process
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from redis import Redis

from shared.clock import FakeClock
from shared.handlers.step_execute import SPEC, StepExecuteServices
from shared.model.policy import Policy, TenantLimits
from tests.support.function import FunctionHarness

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
        config = dict(edge[2]) if len(edge) == 3 else {}
        graph_edges.append({"source": edge[0], "target": edge[1], "config": config})
    return {
        "id": flow_id,
        "tenant": tenant,
        "owners": [{"id": owner, "type": "user"}],
        "graph": {"nodes": graph_nodes, "edges": graph_edges},
    }


class StepHarness(FunctionHarness[StepExecuteServices]):
    """step-execute in the generic harness (kept while callers move to FunctionHarness)."""

    def __init__(
        self,
        redis: Redis,
        clock: FakeClock,
        env: Mapping[str, str],
        *,
        policy: Policy | None = None,
        services: StepExecuteServices | None = None,
    ) -> None:
        super().__init__(SPEC, redis, clock, env, policy=policy or fast_policy(), services=services)

    def admit(  # type: ignore[override]
        self,
        flow_id: str,
        run_id: str = "run-1",
        msg: Any = None,
        *,
        tenant: str = TENANT,
        user: str = USER,
        fencing: int = 7,
    ) -> dict[str, Any]:
        return super().admit(
            flow_id,
            run_id,
            {} if msg is None else msg,
            tenant=tenant,
            user=user,
            fencing=fencing,
            trigger="execute",
        )
