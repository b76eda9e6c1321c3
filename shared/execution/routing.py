"""Where a step's output goes next (docs/architecture.md §5, step-execute): pure functions over a
flow graph.

A run keeps a snapshot of its flow's graph (`Graph.to_json`), so a flow updated during a run
does not change the run's routing. Edge `condition`s and `mapper`s are JSONata (jsonata-python),
never Python eval; each evaluation is bounded in time and depth so a runaway expression fails
the run instead of the function.

- start nodes: nodes without incoming edges get the run's first message;
- an output follows every outgoing edge whose condition holds (JSONata `$boolean`), mapped by
  the edge's mapper: a JSONata expression (string), or an object whose string leaves are
  expressions (quote literal text inside the expression: `"'text'"`);
- a join node (`nodeSettings.join: true`) gets one message once nothing upstream of it is
  pending: its data is an object keyed by source step, the value being the input data (a list
  when that source sent several);
- a step.completed with `empty: true` carries no output: it only ends the step's message (a
  component that emitted nothing); the handler routes nothing for it.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jsonata import Jsonata, timebox
from jsonata.jexception import JException

from shared import keys
from shared.errors import PermanentError
from shared.events import FlowDocument

EVALUATION_TIMEOUT_MS = 250
EVALUATION_MAX_DEPTH = 60
# The largest step message the Redis backend carries (docs/security.md): a routed output
# (mapped or not) above it fails the run before it is encoded or stored; backends with a
# claim check (SQS + S3) pass None and store big bodies aside.
MAX_MESSAGE_BYTES = 256 * 1024


class RoutingError(PermanentError):
    """An edge's condition or mapper is invalid or failed on this data: the run fails."""


class Expression:
    """One compiled JSONata expression; evaluations are serialised (the library keeps state)."""

    def __init__(self, text: str) -> None:
        self.text = text
        try:
            self._compiled = Jsonata(text)
        except JException as exc:
            raise RoutingError(f"invalid JSONata {text!r}: {exc}") from exc
        self._lock = threading.Lock()

    def evaluate(self, data: Any) -> Any:
        with self._lock:
            # A fresh time box per call: the library's own one starts counting at compile time.
            timebox.Timebox(self._compiled.environment, EVALUATION_TIMEOUT_MS, EVALUATION_MAX_DEPTH)
            try:
                return self._compiled.evaluate(data)
            except (JException, RecursionError, TypeError, ValueError) as exc:
                raise RoutingError(f"JSONata {self.text!r} failed: {exc}") from exc


@functools.lru_cache(maxsize=1024)
def compile_expression(text: str) -> Expression:
    return Expression(text)


def condition_holds(condition: str, data: Any) -> bool:
    return compile_expression(f"$boolean(({condition}))").evaluate(data) is True


def apply_mapper(mapper: Any, data: Any) -> Any:
    if mapper is None:
        return data
    if isinstance(mapper, str):
        return compile_expression(mapper).evaluate(data)
    if isinstance(mapper, Mapping):
        return {str(k): apply_mapper(v, data) for k, v in mapper.items()}
    if isinstance(mapper, list):
        return [apply_mapper(item, data) for item in mapper]
    return mapper  # numbers, booleans: literal values


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    condition: str | None = None
    mapper: Any = None


@dataclass(frozen=True)
class Graph:
    """The nodes and edges of one flow, as a run needs them for routing."""

    nodes: tuple[str, ...]
    edges: tuple[Edge, ...] = ()
    joins: frozenset[str] = frozenset()
    _outgoing: dict[str, tuple[Edge, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        outgoing: dict[str, list[Edge]] = {}
        for edge in self.edges:
            outgoing.setdefault(edge.source, []).append(edge)
        self._outgoing.update({k: tuple(v) for k, v in outgoing.items()})

    @classmethod
    def from_flow(cls, flow: FlowDocument) -> Graph:
        return cls(
            nodes=tuple(node.id for node in flow.nodes),
            edges=tuple(Edge(e.source, e.target, e.condition, e.mapper) for e in flow.edges),
            joins=frozenset(node.id for node in flow.nodes if node.join),
        )

    def outgoing(self, step_id: str) -> tuple[Edge, ...]:
        return self._outgoing.get(step_id, ())

    def start_nodes(self) -> list[str]:
        targets = {edge.target for edge in self.edges}
        return [node for node in self.nodes if node not in targets]

    def ancestors(self, node_id: str) -> list[str]:
        """Every node with a path to `node_id` (itself included only when on a cycle)."""
        incoming: dict[str, list[str]] = {}
        for edge in self.edges:
            incoming.setdefault(edge.target, []).append(edge.source)
        seen: set[str] = set()
        stack = list(incoming.get(node_id, []))
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack.extend(incoming.get(current, []))
        return sorted(seen)

    def to_json(self) -> str:
        return json.dumps(
            {
                "nodes": list(self.nodes),
                "joins": sorted(self.joins),
                "edges": [
                    {"source": e.source, "target": e.target, "condition": e.condition,
                     "mapper": e.mapper}
                    for e in self.edges
                ],
            },
            separators=(",", ":"),
            sort_keys=True,
        )  # fmt: skip

    @classmethod
    def from_json(cls, text: str | bytes) -> Graph:
        raw = json.loads(text)
        return cls(
            nodes=tuple(raw["nodes"]),
            edges=tuple(
                Edge(e["source"], e["target"], e.get("condition"), e.get("mapper"))
                for e in raw["edges"]
            ),
            joins=frozenset(raw.get("joins", ())),
        )


@dataclass(frozen=True)
class Route:
    """One output going to one target: a new message, or an input for a join node."""

    target: str
    data_json: str
    join: bool = False


def within(value: Any, limit: int) -> bool:
    """Whether `value` encodes to at most about `limit` bytes, found without encoding it:
    the walk stops as soon as the running size passes the limit (a 20 MB string from one
    `$pad` costs one len())."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) + 2
        elif isinstance(item, Mapping):
            total += 2 + len(item)
            for key, child in item.items():
                total += len(str(key)) + 3
                stack.append(child)
        elif isinstance(item, list | tuple):
            total += 2 + len(item)
            stack.extend(item)
        else:
            total += 24  # numbers, booleans, null
        if total > limit:
            return False
    return True


def encode(data: Any) -> str:
    try:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RoutingError(f"step output is not JSON: {exc}") from exc


def route(
    graph: Graph, step_id: str, data: Any, *, max_bytes: int | None = MAX_MESSAGE_BYTES
) -> list[Route]:
    """The routes of one output of `step_id`; raises RoutingError on a bad edge expression or
    a routed message above `max_bytes` (checked before it is encoded)."""
    routes: list[Route] = []
    for edge in graph.outgoing(step_id):
        if edge.condition and not condition_holds(edge.condition, data):
            continue
        mapped = apply_mapper(edge.mapper, data)
        if max_bytes is not None and not within(mapped, max_bytes):
            raise RoutingError(
                f"edge {edge.source}->{edge.target}: message larger than {max_bytes} bytes"
            )
        routes.append(Route(edge.target, encode({} if mapped is None else mapped),
                            edge.target in graph.joins))  # fmt: skip
    return routes


def message_id(run_id: str, *parts: str) -> str:
    """A step message id: deterministic, so a redelivered event creates the same messages."""
    return "m" + keys.digest(run_id, *parts)[:31]
