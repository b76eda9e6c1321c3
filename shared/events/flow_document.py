"""The flow document carried by flow.starting (docs/events.md), declared in its wire shape.

Nested objects are declared as they are sent (`nodeSettings`, `config`, `flowSettings`); the
properties give the flat view the rest of the code reads (`node.replicas`, `flow.nodes`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from shared.events.fields import Problems, wire
from shared.events.payloads import Payload

OVERLAP_POLICIES = ("skip", "buffer_one", "allow")
MAX_REPLICAS_PER_NODE = 1000
_ID = (
    r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}",
    "may hold only letters, digits, '.', '_', ':' and '-' (max 128)",
)


@dataclass(frozen=True)
class Owner(Payload):
    """An owner of the flow: a user, or the tenant (type `tenant`)."""

    id: str
    type: str = "user"


@dataclass(frozen=True)
class NodeSettings(Payload):
    """How a node is deployed and joined."""

    replicas: int | None = wire(default=None, minimum=0, maximum=MAX_REPLICAS_PER_NODE)
    join: bool = wire(default=False, description="wait for every input before running")


@dataclass(frozen=True)
class Node(Payload):
    """One step of the flow: a component's function."""

    id: str = wire(pattern=_ID)
    component_id: str = wire("componentId")
    function: str = ""
    credentials_id: str | None = None
    fields: dict[str, Any] = wire(default_factory=dict)
    node_settings: NodeSettings = wire("nodeSettings", default_factory=NodeSettings)

    @property
    def replicas(self) -> int | None:
        return self.node_settings.replicas

    @property
    def join(self) -> bool:
        return self.node_settings.join


# Our edge expressions live under this key of an edge; OIH's own `edges[].config`
# ({condition, mapper}, services/flow-repository/app/models/schemas/flow.js) means nothing to
# the original orchestrator, which never reads it: we pass it through untouched.
JSONATA_KEY = "jsonata"


@dataclass(frozen=True)
class EdgeExpressions(Payload):
    """What passes along an edge: our JSONata, under `edges[].jsonata`."""

    condition: str | None = wire(default=None, description="a JSONata condition")
    mapper: Any = wire(default=None, description="a JSONata mapper")


@dataclass(frozen=True)
class Edge(Payload):
    """From one node to the next."""

    source: str
    target: str
    jsonata: EdgeExpressions = wire(
        JSONATA_KEY,
        default_factory=EdgeExpressions,
        description="our condition and mapper (JSONata); OIH flows have none",
    )
    config: Any = wire(default=None, description="OIH's edge config: kept as sent, never evaluated")

    @property
    def condition(self) -> str | None:
        return self.jsonata.condition

    @property
    def mapper(self) -> Any:
        return self.jsonata.mapper


def edges_of_the_previous_release(document: Mapping[str, Any]) -> dict[str, Any]:
    """A flow document stored by the previous release, which read its JSONata from
    `edges[].config`: the same document with those expressions under `edges[].jsonata`
    (where an edge has none there yet), `config` kept as it was."""
    graph = document.get("graph")
    edges = graph.get("edges") if isinstance(graph, Mapping) else None
    if not isinstance(edges, list):
        return dict(document)
    moved = []
    for edge in edges:
        config = edge.get("config") if isinstance(edge, Mapping) else None
        if isinstance(config, Mapping) and JSONATA_KEY not in edge:
            expressions = {k: config[k] for k in ("condition", "mapper") if k in config}
            edge = {**edge, JSONATA_KEY: expressions} if expressions else edge
        moved.append(edge)
    return {**document, "graph": {**graph, "edges": moved}}  # type: ignore[dict-item]


MAX_FLOW_NODES = 100
MAX_FLOW_EDGES = 1000


@dataclass(frozen=True)
class Graph(Payload):
    """The flow's nodes and the edges between them."""

    nodes: tuple[Node, ...] = wire(min_items=(1, "must hold at least one node"))
    edges: tuple[Edge, ...] = wire(default=())

    def finish(self, data: Mapping[str, Any], problems: Problems) -> Self:
        # Bounded flows (docs/security.md): every node becomes a Deployment and a Secret.
        if len(self.nodes) > MAX_FLOW_NODES:
            problems.add("nodes", f"at most {MAX_FLOW_NODES} nodes, got {len(self.nodes)}")
            return self
        if len(self.edges) > MAX_FLOW_EDGES:
            problems.add("edges", f"at most {MAX_FLOW_EDGES} edges, got {len(self.edges)}")
            return self
        seen: set[str] = set()
        for index, node in enumerate(self.nodes):
            if node.id in seen:
                problems.add(f"nodes[{index}].id", f"duplicate node id {node.id!r}")
            seen.add(node.id)
        for index, edge in enumerate(self.edges):
            for end in ("source", "target"):
                name = getattr(edge, end)
                if name and name not in seen:
                    problems.add(f"edges[{index}].{end}", f"names no node: {name!r}")
        return self


@dataclass(frozen=True)
class FlowSettings(Payload):
    """How the orchestrator runs the flow."""

    overlap_policy: str | None = wire("overlapPolicy", default=None, choices=OVERLAP_POLICIES)
    catchup_window_seconds: int | None = wire("catchupWindowSeconds", default=None, minimum=0)
    spread: bool = wire(default=True, description="spread cron starts over the minute")
    max_run_seconds: int | None = wire("maxRunSeconds", default=None, minimum=1)


def _check_schedule(problems: Problems, cron: str | None, timezone: str) -> None:
    if cron is not None:
        try:  # 6 fields: seconds first, as OIH's cron-parser reads them
            valid = croniter.is_valid(cron, second_at_beginning=True)
        except Exception:  # croniter raises assorted errors on odd input
            valid = False
        if not valid:
            problems.add("cron", f"not a valid cron expression: {cron!r}")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.add("timezone", f"unknown time zone: {timezone!r}")


def _parse_time(problems: Problems, key: str, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        problems.add(key, f"not an ISO 8601 time: {value!r}")
        return None


@dataclass(frozen=True, kw_only=True)
class FlowDocument(Payload):
    """A flow as the Flow Repository sends it; `document` keeps the original JSON for storage."""

    event_name: ClassVar[str] = "flow.starting"
    id: str = wire(pattern=_ID, aliases=("_id",))
    tenant: str = wire(default="", description="absent: the id of the owner of type `tenant`")
    graph: Graph = wire()
    owners: tuple[Owner, ...] = wire(default=())
    cron: str | None = wire(default=None, description="a cron expression, read in `timezone`")
    timezone: str = wire(default="UTC", description="an IANA time zone")
    updated: str | None = wire("updatedAt", default=None, description="ISO 8601")
    flow_settings: FlowSettings = wire("flowSettings", default_factory=FlowSettings)
    # Who started the flow (the Flow Repository sets the caller's IAM id); the rule of which
    # user a flow's runs act for reads it (docs/security.md).
    started_by: str | None = wire("startedBy", default=None, description="the starting user")
    document: dict[str, Any] = wire(default_factory=dict, on_wire=False)
    updated_at: float | None = wire(default=None, on_wire=False)

    def finish(self, data: Mapping[str, Any], problems: Problems) -> Self:
        cron = self.cron.strip() if self.cron and self.cron.strip() else None
        timezone = self.timezone or "UTC"
        tenant = self.tenant.strip() and self.tenant
        if not tenant:
            owned = [o.id for o in self.owners if o.type.lower() == "tenant" and o.id]
            tenant = owned[0] if owned else ""
        if not tenant:
            problems.add("tenant", "required (or an owner of type 'tenant' in owners)")
        _check_schedule(problems, cron, timezone)
        return dataclasses.replace(
            self,
            cron=cron,
            timezone=timezone,
            tenant=tenant,
            document=dict(data),
            updated_at=_parse_time(problems, "updatedAt", self.updated),
        )

    @classmethod
    def schema_rules(cls) -> list[dict[str, Any]]:
        tenant_owner = {
            "type": "object",
            "properties": {"type": {"type": "string", "pattern": "^[Tt][Ee][Nn][Aa][Nn][Tt]$"}},
            "required": ["id", "type"],
        }
        return [
            {
                "anyOf": [
                    {"required": ["tenant"]},
                    {"required": ["owners"], "properties": {"owners": {"contains": tenant_owner}}},
                ]
            }
        ]

    @property
    def nodes(self) -> tuple[Node, ...]:
        return self.graph.nodes

    @property
    def edges(self) -> tuple[Edge, ...]:
        return self.graph.edges

    @property
    def settings(self) -> FlowSettings:
        return self.flow_settings

    @property
    def user(self) -> str:
        """The user its usage, penalties and flow token are for. Trusted only once a handler
        has decided it (shared/runtime/flow_user.py) and set it with `with_user`; the first
        owner where a document (auth off) names nobody."""
        if self.started_by:
            return self.started_by
        return self.owners[0].id if self.owners else ""

    def with_user(self, user: str) -> Self:
        """The same flow with its decided user (in `document` too: stored copies keep it)."""
        return dataclasses.replace(
            self, started_by=user, document={**self.document, "startedBy": user}
        )

    def node(self, node_id: str) -> Node:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def start_nodes(self) -> list[Node]:
        targets = {edge.target for edge in self.edges}
        return [node for node in self.nodes if node.id not in targets]

    def to_data(self) -> dict[str, Any]:
        return dict(self.document)
