"""Where a step's output goes next (docs/architecture.md §5, step-execute): pure functions over a
flow graph.

A run keeps a snapshot of its flow's graph (`Graph.to_json`), so a flow updated during a run
does not change the run's routing. Edge `condition`s and `mapper`s are JSONata (jsonata-python),
never Python eval; each evaluation is bounded in time, depth and the size of every value it
builds (the string builders check before building: `$pad("", 1e8)` never allocates), so a
runaway expression fails the run instead of the function or the store.

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

from jsonata import Jsonata, functions, timebox
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
# The largest value one evaluation may build on its way (JSONATA_MAX_VALUE_BYTES): a string of
# more characters, a list or object of more than a 16th as many entries, or a string builder
# ($pad, $join, $string, $replace, `&`) about to make a longer text fails the run, before the
# text exists. At least the largest input (the request body bound), so `$` itself passes.
MAX_VALUE_BYTES = 2 * 1024 * 1024


class RoutingError(PermanentError):
    """An edge's condition or mapper is invalid or failed on this data: the run fails."""


class ValueTooLarge(JException):  # type: ignore[misc]
    """Raised inside an evaluation when a value would pass the evaluation's byte bound."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__("D3001", -1)
        self.detail = f"{what} of {size} would pass the bound of {limit} bytes"

    def __str__(self) -> str:
        return self.detail


_bound = threading.local()  # the byte bound of the evaluation running in this thread


def _limit() -> int:
    return int(getattr(_bound, "limit", MAX_VALUE_BYTES))


def _check_text(what: str, size: int) -> None:
    if size > _limit():
        raise ValueTooLarge(what, size, _limit())


def _check_value(what: str, value: Any, limit: int | None = None) -> None:
    bound = _limit() if limit is None else limit
    if not within(value, bound):
        raise ValueTooLarge(what, bound + 1, bound)


class _BoundedFunctions(functions.Functions):  # type: ignore[misc]
    """The library's string builders, each checking the size it would build first."""

    @staticmethod
    def pad(string: str | None, width: int | None, char: str | None) -> str | None:
        if string is not None and isinstance(width, int | float) and not isinstance(width, bool):
            _check_text("$pad", max(len(string), abs(int(width))))
        return functions.Functions.pad(string, width, char)  # type: ignore[no-any-return]

    @staticmethod
    def join(strs: Any, separator: str | None) -> str | None:
        if isinstance(strs, list) and all(isinstance(item, str) for item in strs):
            gaps = len(separator or "") * max(0, len(strs) - 1)
            _check_text("$join", sum(len(item) for item in strs) + gaps)
        return functions.Functions.join(strs, separator)  # type: ignore[no-any-return]

    @staticmethod
    def string(arg: Any, prettify: bool | None) -> str | None:
        # indentation can multiply a deep value's text; an upper bound is kept for it
        _check_value("$string", arg, _limit() // (32 if prettify else 1))
        return functions.Functions.string(arg, prettify)  # type: ignore[no-any-return]

    @staticmethod
    def replace(string: str | None, pattern: Any, replacement: Any, limit: int | None) -> Any:
        if isinstance(string, str) and isinstance(replacement, str):
            # matches do not overlap: every `$n` adds at most the whole input once over all
            matches = string.count(pattern) if isinstance(pattern, str) and pattern else None
            if matches is None:
                matches = len(string) + 1
            if limit is not None:
                matches = min(matches, int(limit))
            dollars = replacement.count("$")
            _check_text(
                "$replace", len(string) + matches * len(replacement) + dollars * len(string)
            )
        elif isinstance(string, str) and callable(replacement):
            replacement = _counted(replacement)
        return functions.Functions.replace(string, pattern, replacement, limit)


def _counted(replacement: Any) -> Any:
    """A function replacement of $replace whose results, added up, stay within the bound."""
    total = [0]

    def call(*args: Any, **kwargs: Any) -> Any:
        result = replacement(*args, **kwargs)
        total[0] += len(result) if isinstance(result, str) else 0
        _check_text("$replace", total[0])
        return result

    return call


_BOUNDED = {
    name: Jsonata.JNativeFunction(name, signature, _BoundedFunctions, method)
    for name, signature, method in (
        ("pad", "<s-ns?:s>", "pad"),
        ("join", "<a<s>s?:s>", "join"),
        ("string", "<x-b?:s>", "string"),
        ("replace", "<s-(sf)(sf)n?:s>", "replace"),
    )
}


class _BoundedJsonata(Jsonata):  # type: ignore[misc]
    def evaluate_string_concat(self, lhs: Any, rhs: Any) -> str:
        for side in (lhs, rhs):
            if isinstance(side, str):
                _check_text("`&`", len(side))
            elif side is not None:
                _check_value("`&`", side)
        result = super().evaluate_string_concat(lhs, rhs)
        _check_text("`&`", len(result))
        return result  # type: ignore[no-any-return]


class _Bounds:
    """The library's Timebox (time, depth) plus the byte bound: every value an evaluation step
    returns is measured (strings by length, lists and objects by entries)."""

    def __init__(self, environment: Any, timeout_ms: int, max_depth: int) -> None:
        self.box = timebox.Timebox(environment, timeout_ms, max_depth)  # its callbacks: replaced
        environment.set_evaluate_entry_callback(self._entry)
        environment.set_evaluate_exit_callback(self._exit)

    def _entry(self, exp: Any, input: Any, env: Any) -> None:
        if env.is_parallel_call:
            return
        self.box.depth += 1
        self.box.check_runaway()

    def _exit(self, exp: Any, input: Any, env: Any, res: Any) -> None:
        if isinstance(res, str):
            _check_text("a text", len(res))
        elif isinstance(res, list | dict) and res is not input:
            _check_text(f"a list or object of {len(res)} entries (x16)", 16 * len(res))
        if env.is_parallel_call:
            return
        self.box.depth -= 1
        self.box.check_runaway()


class Expression:
    """One compiled JSONata expression; evaluations are serialised (the library keeps state)."""

    def __init__(self, text: str) -> None:
        self.text = text
        try:
            self._compiled = _BoundedJsonata(text)
        except JException as exc:
            raise RoutingError(f"invalid JSONata {text!r}: {exc}") from exc
        for name, function in _BOUNDED.items():
            self._compiled.register_function(name, function)
        self._lock = threading.Lock()

    def evaluate(self, data: Any, *, max_value_bytes: int = MAX_VALUE_BYTES) -> Any:
        with self._lock:
            # A fresh time box per call: the library's own one starts counting at compile time.
            _Bounds(self._compiled.environment, EVALUATION_TIMEOUT_MS, EVALUATION_MAX_DEPTH)
            _bound.limit = max_value_bytes
            try:
                return self._compiled.evaluate(data)
            except ValueTooLarge as exc:
                raise RoutingError(f"JSONata {self.text!r} failed: {exc}") from exc
            except (JException, RecursionError, TypeError, ValueError, MemoryError) as exc:
                raise RoutingError(f"JSONata {self.text!r} failed: {exc}") from exc
            finally:
                _bound.limit = MAX_VALUE_BYTES


@functools.lru_cache(maxsize=1024)
def compile_expression(text: str) -> Expression:
    return Expression(text)


def condition_holds(condition: str, data: Any, *, max_value_bytes: int = MAX_VALUE_BYTES) -> bool:
    expression = compile_expression(f"$boolean(({condition}))")
    return expression.evaluate(data, max_value_bytes=max_value_bytes) is True


def apply_mapper(mapper: Any, data: Any, *, max_value_bytes: int = MAX_VALUE_BYTES) -> Any:
    if mapper is None:
        return data
    if isinstance(mapper, str):
        return compile_expression(mapper).evaluate(data, max_value_bytes=max_value_bytes)
    if isinstance(mapper, Mapping):
        return {
            str(k): apply_mapper(v, data, max_value_bytes=max_value_bytes)
            for k, v in mapper.items()
        }
    if isinstance(mapper, list):
        return [apply_mapper(item, data, max_value_bytes=max_value_bytes) for item in mapper]
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
    graph: Graph,
    step_id: str,
    data: Any,
    *,
    max_bytes: int | None = MAX_MESSAGE_BYTES,
    max_value_bytes: int = MAX_VALUE_BYTES,
) -> list[Route]:
    """The routes of one output of `step_id`; raises RoutingError on a bad edge expression, a
    value above `max_value_bytes` built during an evaluation (refused before it is built), or
    a routed message above `max_bytes` (checked before it is encoded)."""
    routes: list[Route] = []
    for edge in graph.outgoing(step_id):
        bound = max_value_bytes
        if edge.condition and not condition_holds(edge.condition, data, max_value_bytes=bound):
            continue
        mapped = apply_mapper(edge.mapper, data, max_value_bytes=bound)
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
