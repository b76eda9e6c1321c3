"""Routing: JSONata conditions and mappers (never Python eval), start nodes, joins, snapshots."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.events import FlowDocument
from shared.execution.routing import (
    Edge,
    Graph,
    Route,
    RoutingError,
    apply_mapper,
    condition_holds,
    message_id,
    route,
)
from tests.support.flows import flow_document

CONDITIONS = [
    ("v > 10", {"v": 11}, True),
    ("v > 10", {"v": 10}, False),
    ("v > 10", {}, False),  # undefined is not true
    ("status = 'ok'", {"status": "ok"}, True),
    ("status = 'ok'", {"status": "OK"}, False),
    ("$count(items) >= 2", {"items": [1, 2]}, True),
    ("items[price > 5]", {"items": [{"price": 1}, {"price": 9}]}, True),  # truthy: a match
    ("items[price > 50]", {"items": [{"price": 1}]}, False),
    ("name", {"name": ""}, False),  # JSONata $boolean: empty string is false
    ("name", {"name": "x"}, True),
    ("$contains(tags, 'vip') or vip", {"tags": "a vip b"}, True),
    ("true", None, True),
]


@pytest.mark.parametrize(("condition", "data", "expected"), CONDITIONS)
def test_a_condition_holds_by_jsonata_truthiness(condition: str, data: Any, expected: bool) -> None:
    assert condition_holds(condition, data) is expected


MAPPERS: list[tuple[Any, Any, Any]] = [
    (None, {"a": 1}, {"a": 1}),
    ("a + 1", {"a": 1}, 2),
    ('{"total": a * b, "label": "\'fixed\'"}', {"a": 2, "b": 3}, {"total": 6, "label": "'fixed'"}),
    (
        {"total": "a * b", "label": "'fixed'", "n": 7},
        {"a": 2, "b": 3},
        {"total": 6, "label": "fixed", "n": 7},
    ),
    (
        {"nested": {"x": "a"}, "list": ["a", "b"]},
        {"a": 1, "b": 2},
        {"nested": {"x": 1}, "list": [1, 2]},
    ),
    ("$uppercase(name)", {"name": "ada"}, "ADA"),
    ("items.price", {"items": [{"price": 1}, {"price": 2}]}, [1, 2]),
]


@pytest.mark.parametrize(("mapper", "data", "expected"), MAPPERS)
def test_a_mapper_is_a_jsonata_expression_or_an_object_of_them(
    mapper: Any, data: Any, expected: Any
) -> None:
    assert apply_mapper(mapper, data) == expected


BROKEN: list[tuple[str, str, dict[str, Any]]] = [
    ("syntax error", "((", {}),
    ("unknown function", "$nope(1)", {}),
    ("type error", "'a' + 1", {}),
    ("runaway recursion", "($f := function($n){ $f($n + 1) }; $f(0))", {}),
    ("python eval is not jsonata", "__import__('os').system('true')", {}),
]


@pytest.mark.parametrize(("case", "expression", "data"), BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_expression_is_a_routing_error_not_a_crash(
    case: str, expression: str, data: Any
) -> None:
    with pytest.raises(RoutingError):
        apply_mapper(expression, data)
    with pytest.raises(RoutingError):
        condition_holds(expression, data)
    # the compiled expression still works for the next evaluation (bounds are per call)
    assert condition_holds("v > 1", {"v": 2}) is True


def test_an_output_that_is_not_json_is_a_routing_error() -> None:
    graph = Graph(nodes=("a", "b"), edges=(Edge("a", "b", mapper="function($x){ $x }"),))
    with pytest.raises(RoutingError):
        route(graph, "a", {"x": 1})


def graph_of(nodes: list[Any], edges: list[Any]) -> Graph:
    return Graph.from_flow(FlowDocument.parse(flow_document("f", nodes, edges)))


def test_route_follows_edges_whose_condition_holds_and_marks_join_inputs() -> None:
    graph = graph_of(
        ["a", "b", "c", {"id": "j", "join": True}],
        [("a", "b", {"condition": "v > 1"}), ("a", "c", {"mapper": {"w": "v"}}), ("a", "j")],
    )
    assert route(graph, "a", {"v": 1}) == [
        Route("c", '{"w":1}'),
        Route("j", '{"v":1}', join=True),
    ]
    assert [r.target for r in route(graph, "a", {"v": 2})] == ["b", "c", "j"]
    assert route(graph, "j", {"v": 2}) == []  # no outgoing edges
    assert route(graph, "a", {"v": 2, "t": "é"})[0].data_json == '{"v":2,"t":"é"}'


GRAPHS = [
    ("a single node", ["a"], [], ["a"], {}),
    ("a chain", ["a", "b", "c"], [("a", "b"), ("b", "c")], ["a"], {"c": ["a", "b"]}),
    (
        "a diamond",
        ["a", "b", "c", "d"],
        [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")],
        ["a"],
        {"d": ["a", "b", "c"], "b": ["a"]},
    ),
    ("two sources", ["a", "b", "c"], [("a", "c"), ("b", "c")], ["a", "b"], {"c": ["a", "b"]}),
    (
        "a cycle after a start",
        ["s", "x", "y"],
        [("s", "x"), ("x", "y"), ("y", "x")],
        ["s"],
        {"x": ["s", "x", "y"]},
    ),
]


@pytest.mark.parametrize(
    ("case", "nodes", "edges", "starts", "ancestors"), GRAPHS, ids=[g[0] for g in GRAPHS]
)
def test_start_nodes_and_ancestors(
    case: str, nodes: list[str], edges: list[Any], starts: list[str], ancestors: dict[str, Any]
) -> None:
    graph = graph_of(nodes, edges)
    assert graph.start_nodes() == starts
    for node, expected in ancestors.items():
        assert graph.ancestors(node) == expected


ids = st.text(alphabet="abcdefgh", min_size=1, max_size=3)


@given(
    nodes=st.lists(ids, min_size=1, max_size=6, unique=True),
    data=st.data(),
)
def test_a_graph_snapshot_round_trips(nodes: list[str], data: st.DataObject) -> None:
    edges = data.draw(
        st.lists(
            st.builds(
                Edge,
                st.sampled_from(nodes),
                st.sampled_from(nodes),
                st.none() | st.just("v > 1"),
                st.none() | st.just({"w": "v"}) | st.just("v"),
            ),
            max_size=8,
        )
    )
    joins = frozenset(data.draw(st.lists(st.sampled_from(nodes), max_size=2)))
    graph = Graph(nodes=tuple(nodes), edges=tuple(edges), joins=joins)
    again = Graph.from_json(graph.to_json())
    assert again == graph
    assert json.loads(again.to_json()) == json.loads(graph.to_json())
    assert all(again.outgoing(n) == graph.outgoing(n) for n in nodes)


def test_message_ids_are_deterministic_and_distinct() -> None:
    assert message_id("run", "start", "a") == message_id("run", "start", "a")
    made = {message_id("run", "m1", str(seq), target) for seq in range(50) for target in "abc"}
    assert len(made) == 150
    assert message_id("run-1", "x") != message_id("run-2", "x")
