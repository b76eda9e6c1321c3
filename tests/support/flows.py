"""Flow documents and policies for tests: one document builder, and the two presets the tests
use most (a cron flow for flow-start, a graph flow for step-execute)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from redis import Redis

from shared.events import FlowDocument
from shared.model import flows
from shared.model.policy import Policy, TenantLimits, parse_policy

TENANT = "acme"
USER = "alice"

Edge = tuple[str, str] | tuple[str, str, Mapping[str, Any]]


def flow_document(
    flow_id: str,
    nodes: Iterable[str | Mapping[str, Any]] = ("a",),
    edges: Iterable[Edge] = (),
    *,
    tenant: str = TENANT,
    owner: str = USER,
    component: str = "example-transform",
    function: str = "process",
    cron: str | None = None,
    timezone: str | None = None,
    **flow_settings: Any,
) -> dict[str, Any]:
    """A flow.starting document. A node is an id or a dict (`join: True` → nodeSettings);
    nodes run `component`/`function` unless they say otherwise; an edge may carry its
    JSONata (`jsonata`: condition, mapper)."""
    graph_nodes = []
    for node in nodes:
        spec = {"id": node} if isinstance(node, str) else dict(node)
        join = spec.pop("join", False)
        entry = {"componentId": component, "function": function, **spec}
        if join:
            entry["nodeSettings"] = {"join": True}
        graph_nodes.append(entry)
    graph_edges = []
    for edge in edges:
        expressions = dict(edge[2]) if len(edge) == 3 else {}
        graph_edges.append({"source": edge[0], "target": edge[1], "jsonata": expressions})
    document: dict[str, Any] = {
        "id": flow_id,
        "tenant": tenant,
        "owners": [{"id": owner, "type": "user"}],
        "graph": {"nodes": graph_nodes, "edges": graph_edges},
    }
    if cron is not None:
        document["cron"] = cron
    if timezone is not None:
        document["timezone"] = timezone
    if flow_settings:
        document["flowSettings"] = flow_settings
    return document


def flow_doc(
    flow_id: str = "f1",
    *,
    tenant: str = "acme",
    owner: str = "u1",
    cron: str | None = "* * * * *",
    timezone: str | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """A one-step flow run every minute (unless `cron` says otherwise), as flow-start sees it."""
    return flow_document(
        flow_id,
        tenant=tenant,
        owner=owner,
        component="c1",
        function="run",
        cron=cron,
        timezone=timezone,
        **settings,
    )


def store_flow(
    redis: Redis, flow_id: str = "f1", *, tenant: str = "acme", owner: str = "u1", **settings: Any
) -> None:
    """Stores a one-step flow as deploy / flow-start would (for functions that only read it)."""
    document = flow_doc(flow_id, tenant=tenant, owner=owner, cron=None, **settings)
    flows.upsert(redis, FlowDocument.parse(document), 1.0)


def policy(**document: Any) -> Policy:
    """A policy from keyword sections, e.g. policy(slots=5, defaults={"weight": 1})."""
    return parse_policy(document)


def fast_policy(**limits: Any) -> Policy:
    """Policy defaults for step tests: high message rates unless a test lowers them."""
    values: dict[str, Any] = {
        "messages_per_second": 100_000.0,
        "step_retries": 2,
        "step_timeout_seconds": 30,
    }
    values.update(limits)
    return Policy(defaults=replace(TenantLimits(), **values))
