"""The flow document carried by flow.starting (docs/events.md), validated as a whole."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from shared.events.fields import FieldReader
from shared.events.payloads import Payload

OVERLAP_POLICIES = ("skip", "buffer_one", "allow")
MAX_REPLICAS_PER_NODE = 1000
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


@dataclass(frozen=True)
class Owner:
    id: str
    type: str


@dataclass(frozen=True)
class Node:
    id: str
    component_id: str
    function: str
    credentials_id: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    replicas: int | None = None
    join: bool = False


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    condition: str | None = None
    mapper: Any = None


@dataclass(frozen=True)
class FlowSettings:
    overlap_policy: str | None = None
    catchup_window_seconds: int | None = None
    spread: bool = True
    max_run_seconds: int | None = None


def _check_id(reader: FieldReader, key: str, value: str) -> None:
    if value and not _ID.match(value):
        reader.problem(key, "may hold only letters, digits, '.', '_', ':' and '-' (max 128)")


def _read_node(reader: FieldReader) -> Node:
    settings = reader.child("nodeSettings")
    node_id = reader.string("id")
    _check_id(reader, "id", node_id)
    component_id = reader.string("componentId")
    replicas = settings.integer(
        "replicas", required=False, default=-1, minimum=0, maximum=MAX_REPLICAS_PER_NODE
    )
    return Node(
        id=node_id,
        component_id=component_id,
        function=reader.string("function", required=False),
        credentials_id=reader.optional_string("credentials_id"),
        fields=reader.mapping("fields"),
        replicas=None if replicas < 0 else replicas,
        join=settings.boolean("join"),
    )


def _read_edge(reader: FieldReader) -> Edge:
    config = reader.child("config")
    return Edge(
        source=reader.string("source"),
        target=reader.string("target"),
        condition=config.optional_string("condition"),
        mapper=config.raw("mapper"),
    )


def _check_graph(graph: FieldReader, nodes: list[Node], edges: list[Edge]) -> None:
    if not nodes and "nodes" in graph.data:
        graph.problem("nodes", "must hold at least one node")
    seen: set[str] = set()
    for index, node in enumerate(nodes):
        if node.id in seen:
            graph.problem(f"nodes[{index}].id", f"duplicate node id {node.id!r}")
        seen.add(node.id)
    for index, edge in enumerate(edges):
        for end in ("source", "target"):
            name = getattr(edge, end)
            if name and name not in seen:
                graph.problem(f"edges[{index}].{end}", f"names no node: {name!r}")


def _check_schedule(reader: FieldReader, cron: str | None, timezone: str) -> None:
    if cron is not None:
        try:
            valid = croniter.is_valid(cron)
        except Exception:  # croniter raises assorted errors on odd input
            valid = False
        if not valid:
            reader.problem("cron", f"not a valid cron expression: {cron!r}")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        reader.problem("timezone", f"unknown time zone: {timezone!r}")


def _parse_time(reader: FieldReader, key: str, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        reader.problem(key, f"not an ISO 8601 time: {value!r}")
        return None


@dataclass(frozen=True)
class FlowDocument(Payload):
    """A flow as the Flow Repository sends it; `document` keeps the original JSON for storage."""

    event_name: ClassVar[str] = "flow.starting"
    id: str
    tenant: str
    owners: tuple[Owner, ...]
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    settings: FlowSettings
    document: dict[str, Any]
    cron: str | None = None
    timezone: str = "UTC"
    updated_at: float | None = None

    @property
    def user(self) -> str:
        """The flow's first owner: the user its usage and penalties are counted against."""
        return self.owners[0].id if self.owners else ""

    def node(self, node_id: str) -> Node:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def start_nodes(self) -> list[Node]:
        targets = {edge.target for edge in self.edges}
        return [node for node in self.nodes if node.id not in targets]

    @classmethod
    def read(cls, reader: FieldReader) -> Self:
        flow_id = reader.string("id")
        _check_id(reader, "id", flow_id)
        owners = tuple(
            Owner(id=o.string("id"), type=o.string("type", required=False, default="user"))
            for o in reader.items("owners")
        )
        graph = reader.child("graph", required=True)
        nodes = [_read_node(n) for n in graph.items("nodes", required=True)]
        edges = [_read_edge(e) for e in graph.items("edges")]
        _check_graph(graph, nodes, edges)
        cron = reader.optional_string("cron")
        cron = cron.strip() if cron and cron.strip() else None
        timezone = reader.string("timezone", required=False, default="UTC") or "UTC"
        _check_schedule(reader, cron, timezone)
        fs = reader.child("flowSettings")
        catchup = fs.integer("catchupWindowSeconds", required=False, default=-1, minimum=0)
        max_run = fs.integer("maxRunSeconds", required=False, default=-1, minimum=1)
        settings = FlowSettings(
            overlap_policy=fs.choice("overlapPolicy", OVERLAP_POLICIES),
            catchup_window_seconds=None if catchup < 0 else catchup,
            spread=fs.boolean("spread", default=True),
            max_run_seconds=None if max_run < 0 else max_run,
        )
        return cls(
            id=flow_id,
            tenant=reader.string("tenant"),
            owners=owners,
            nodes=tuple(nodes),
            edges=tuple(edges),
            settings=settings,
            document=dict(reader.data),
            cron=cron,
            timezone=timezone,
            updated_at=_parse_time(reader, "updatedAt", reader.optional_string("updatedAt")),
        )

    def to_data(self) -> dict[str, Any]:
        return dict(self.document)
