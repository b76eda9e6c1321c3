"""The event catalogue (DESIGN §2): every payload's validation, round trips, the envelope."""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any

import pytest
from cloudevents.http import CloudEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import InvalidEvent
from shared.events import (
    PAYLOADS,
    ComponentRef,
    ComponentStatus,
    DeploymentStatus,
    Empty,
    FlowDocument,
    FlowExecute,
    FlowRef,
    OutgoingEvent,
    Payload,
    PenaltyChanged,
    PolicyViolation,
    RunAdmitted,
    RunEnded,
    RunNotStarted,
    StepResult,
    UsageReport,
    make_event,
    parse_event,
)
from shared.events import types as t

FLOW: dict[str, Any] = {
    "id": "flow-1",
    "tenant": "acme",
    "owners": [{"id": "alice", "type": "user"}],
    "updatedAt": "2026-01-01T00:00:00Z",
    "cron": "*/5 * * * *",
    "timezone": "Europe/Berlin",
    "graph": {
        "nodes": [
            {"id": "a", "componentId": "c1", "function": "get", "nodeSettings": {"replicas": 2}},
            {"id": "b", "componentId": "c2", "function": "put", "nodeSettings": {"join": True}},
        ],
        "edges": [{"source": "a", "target": "b", "jsonata": {"condition": "x > 1", "mapper": {}}}],
    },
    "flowSettings": {
        "overlapPolicy": "buffer_one",
        "catchupWindowSeconds": 60,
        "maxRunSeconds": 90,
    },
}

VALID: dict[type[Payload], dict[str, Any]] = {
    FlowDocument: FLOW,
    FlowRef: {"id": "flow-1"},
    ComponentRef: {"id": "component-1"},
    DeploymentStatus: {"id": "flow-1", "replicas": {"a": 1}, "clamped": True, "reason": "r"},
    ComponentStatus: {"id": "component-1", "reason": "image pull"},
    FlowExecute: {"flowId": "flow-1", "msg": {"body": {"x": 1}}, "msgOpts": {"a": 1}},
    RunAdmitted: {
        "flowId": "flow-1",
        "runId": "run-1",
        "tenant": "acme",
        "user": "alice",
        "fencingToken": 3,
        "scheduledFor": 1767225600.0,
        "trigger": "cron",
        "msg": {},
    },
    RunNotStarted: {"flowId": "flow-1", "scheduledFor": 1767225600, "reason": "overlap"},
    StepResult: {"runId": "run-1", "stepId": "a", "messageId": "m-1", "seq": 0, "final": True},
    RunEnded: {"flowId": "flow-1", "runId": "run-1", "tenant": "acme", "fencingToken": 3},
    UsageReport: {"tenant": "acme", "user": "alice", "flowId": "flow-1", "cpuMs": 12.5},
    PolicyViolation: {
        "subject": {"level": "flow", "id": "flow-1"},
        "rule": "chatty-flow",
        "measured": 7000,
        "limit": 6000,
        "window": "1m",
    },
    PenaltyChanged: {
        "subject": {"level": "tenant", "id": "acme"},
        "penalty": "throttle",
        "until": 1767226000.0,
        "rule": "long-runs",
    },
    Empty: {},
}


def test_every_event_type_has_a_payload_with_a_valid_example() -> None:
    assert set(PAYLOADS) == t.ALL_TYPES
    assert set(PAYLOADS.values()) == set(VALID)


@pytest.mark.parametrize("cls", list(VALID), ids=lambda c: c.__name__)
def test_the_valid_example_parses(cls: type[Payload]) -> None:
    payload = cls.parse(copy.deepcopy(VALID[cls]))
    assert isinstance(payload, cls)


def _with(cls: type[Payload], path: str, value: Any) -> dict[str, Any]:
    """The valid example of `cls` with `path` (dots, [i] for lists) set, or removed (...)."""
    data = copy.deepcopy(VALID[cls])
    parts = path.replace("[", ".").replace("]", "").split(".")
    node: Any = data
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last: Any = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return data


INVALID = [
    # (payload, path changed, new value (... = removed), the problem must name)
    (FlowRef, "id", ..., "id: required"),
    (FlowRef, "id", 7, "id: must be a string"),
    (FlowRef, "id", "  ", "id: must not be empty"),
    (ComponentRef, "id", ..., "id: required"),
    (DeploymentStatus, "replicas", {"a": -1}, "replicas.a"),
    (DeploymentStatus, "replicas", [1], "replicas: must be an object"),
    (DeploymentStatus, "clamped", "yes", "clamped: must be true or false"),
    (ComponentStatus, "reason", 5, "reason: must be a string"),
    (FlowExecute, "flowId", ..., "flowId: required"),
    (FlowExecute, "msgOpts", "x", "msgOpts: must be an object"),
    (RunAdmitted, "fencingToken", "3", "fencingToken: must be an integer"),
    (RunAdmitted, "fencingToken", -1, "fencingToken: must be >= 0"),
    (RunAdmitted, "fencingToken", True, "fencingToken: must be an integer"),
    (RunAdmitted, "scheduledFor", "soon", "scheduledFor: must be a number"),
    (RunAdmitted, "trigger", "manual", "trigger: must be one of"),
    (RunAdmitted, "tenant", ..., "tenant: required"),
    (RunNotStarted, "reason", ..., "reason: required"),
    (RunNotStarted, "scheduledFor", -5, "scheduledFor: must be >= 0"),
    (StepResult, "messageId", ..., "messageId: required"),
    (StepResult, "seq", 1.5, "seq: must be an integer"),
    (StepResult, "final", "no", "final: must be true or false"),
    (StepResult, "attachments", {"a": 1}, "attachments: must be a list"),
    (RunEnded, "runId", None, "runId: required"),
    (RunEnded, "durationMs", -1, "durationMs: must be >= 0"),
    (UsageReport, "cpuMs", -0.5, "cpuMs: must be >= 0"),
    (UsageReport, "cpuMs", float("nan"), "cpuMs: must be a number"),
    (UsageReport, "messages", "many", "messages: must be an integer"),
    (PolicyViolation, "subject", ..., "subject: required"),
    (PolicyViolation, "subject.level", "planet", "subject.level: must be one of"),
    (PolicyViolation, "subject.level", ..., "subject.level: required"),
    (PolicyViolation, "measured", "lots", "measured: must be a number"),
    (PenaltyChanged, "penalty", ..., "penalty: required"),
    (PenaltyChanged, "subject.id", ..., "subject.id: required"),
    (FlowDocument, "id", "has space", "id: may hold only"),
    (FlowDocument, "tenant", ..., "tenant: required"),
    (FlowDocument, "graph", ..., "graph: required"),
    (FlowDocument, "graph.nodes", [], "graph.nodes: must hold at least one node"),
    (FlowDocument, "graph.nodes[1].id", "a", "graph.nodes[1].id: duplicate node id"),
    (FlowDocument, "graph.nodes[0].componentId", ..., "graph.nodes[0].componentId: required"),
    (FlowDocument, "graph.nodes[0].nodeSettings.replicas", -1, "nodeSettings.replicas"),
    (FlowDocument, "graph.edges[0].target", "zz", "graph.edges[0].target: names no node"),
    (FlowDocument, "cron", "every minute", "cron: not a valid cron expression"),
    (FlowDocument, "timezone", "Mars/Olympus", "timezone: unknown time zone"),
    (FlowDocument, "updatedAt", "yesterday", "updatedAt: not an ISO 8601 time"),
    (FlowDocument, "flowSettings.overlapPolicy", "queue", "flowSettings.overlapPolicy"),
    (FlowDocument, "flowSettings.maxRunSeconds", 0, "flowSettings.maxRunSeconds: must be >= 1"),
    (FlowDocument, "owners", "alice", "owners: must be a list"),
]


@pytest.mark.parametrize(
    ("cls", "path", "value", "problem"),
    INVALID,
    ids=[f"{c.__name__}.{p}={'removed' if v is ... else v!r}" for c, p, v, _ in INVALID],
)
def test_an_invalid_field_is_named(cls: type[Payload], path: str, value: Any, problem: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        cls.parse(_with(cls, path, value))
    assert any(problem in p for p in caught.value.problems), caught.value.problems
    assert problem.split(":")[0] in caught.value.message


@pytest.mark.parametrize("cls", [c for c in VALID if c is not Empty], ids=lambda c: c.__name__)
def test_not_an_object_is_refused(cls: type[Payload]) -> None:
    with pytest.raises(InvalidEvent) as caught:
        cls.parse(["not", "an", "object"])
    assert "data: must be an object" in caught.value.problems


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(InvalidEvent) as caught:
        RunAdmitted.parse({"fencingToken": "x", "trigger": "nope"})
    problems = caught.value.problems
    for name in ("flowId", "runId", "tenant", "fencingToken", "scheduledFor", "trigger"):
        assert any(p.startswith(name + ":") for p in problems), (name, problems)


def test_flow_document_reads_nodes_edges_and_settings() -> None:
    flow = FlowDocument.parse(copy.deepcopy(FLOW))
    assert flow.user == "alice"
    assert [n.id for n in flow.start_nodes()] == ["a"]
    assert flow.node("a").replicas == 2 and flow.node("b").join
    assert flow.edges[0].condition == "x > 1"
    assert flow.settings.overlap_policy == "buffer_one"
    assert flow.settings.max_run_seconds == 90
    assert flow.updated_at == 1767225600.0
    assert flow.to_data() == FLOW


# --------------------------------------------------------------------------- round trips
ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", fullmatch=True)
text = st.text(min_size=1, max_size=20).filter(lambda s: s.strip() != "")
counts = st.integers(min_value=0, max_value=2**53)
amounts = st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
maybe = st.none() | text


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


@st.composite
def flow_documents(draw: st.DrawFn) -> dict[str, Any]:
    node_ids = draw(st.lists(ids, min_size=1, max_size=4, unique=True))
    nodes = [
        {
            "id": node,
            "componentId": draw(ids),
            "function": draw(st.text(max_size=8)),
            "nodeSettings": _drop_none(
                {
                    "replicas": draw(st.none() | st.integers(0, 1000)),
                    "join": draw(st.booleans()),
                }
            ),
        }
        for node in node_ids
    ]
    edges = [
        {"source": draw(st.sampled_from(node_ids)), "target": draw(st.sampled_from(node_ids))}
        for _ in range(draw(st.integers(0, 3)))
    ]
    return _drop_none(
        {
            "id": draw(ids),
            "tenant": draw(text),
            "owners": [{"id": draw(text), "type": "user"}],
            "cron": draw(st.none() | st.sampled_from(["* * * * *", "0 3 * * 1-5", "*/15 * * * *"])),
            "timezone": draw(st.sampled_from(["UTC", "Europe/Berlin", "America/New_York"])),
            "updatedAt": draw(st.none() | st.sampled_from(["2026-03-29T01:30:00Z"])),
            "graph": {"nodes": nodes, "edges": edges},
            "flowSettings": _drop_none(
                {
                    "overlapPolicy": draw(st.none() | st.sampled_from(["skip", "allow"])),
                    "spread": draw(st.booleans()),
                    "maxRunSeconds": draw(st.none() | st.integers(1, 10**6)),
                }
            ),
        }
    )


subjects = st.fixed_dictionaries({"level": st.sampled_from(["tenant", "user", "flow"]), "id": text})

DATA: dict[type[Payload], st.SearchStrategy[dict[str, Any]]] = {
    FlowDocument: flow_documents(),
    FlowRef: st.fixed_dictionaries({"id": text}),
    ComponentRef: st.fixed_dictionaries({"id": text}),
    DeploymentStatus: st.fixed_dictionaries(
        {
            "id": text,
            "replicas": st.dictionaries(text, st.integers(0, 100), max_size=3),
            "clamped": st.booleans(),
        },
        optional={"reason": text},
    ),
    ComponentStatus: st.fixed_dictionaries({"id": text}, optional={"reason": text}),
    FlowExecute: st.fixed_dictionaries(
        {"flowId": text},
        optional={"msg": json_values, "msgOpts": st.dictionaries(text, json_values, max_size=2)},
    ),
    RunAdmitted: st.fixed_dictionaries(
        {
            "flowId": text,
            "runId": text,
            "tenant": text,
            "user": text,
            "fencingToken": counts,
            "scheduledFor": amounts,
            "trigger": st.sampled_from(["cron", "execute"]),
            "msg": json_values,
        }
    ),
    RunNotStarted: st.fixed_dictionaries(
        {"flowId": text, "scheduledFor": amounts, "reason": text},
        optional={"runId": text, "tenant": text},
    ),
    StepResult: st.fixed_dictionaries(
        {"runId": text, "stepId": text, "messageId": text},
        optional={
            "seq": counts,
            "final": st.booleans(),
            "data": json_values,
            "attachments": st.lists(json_values, max_size=2),
            "error": text,
        },
    ),
    RunEnded: st.fixed_dictionaries(
        {"flowId": text, "runId": text, "tenant": text, "fencingToken": counts},
        optional={"durationMs": counts, "steps": counts, "reason": text, "user": text},
    ),
    UsageReport: st.fixed_dictionaries(
        {"tenant": text},
        optional={
            "user": text,
            "flowId": text,
            "cpuMs": amounts,
            "memMiBs": amounts,
            "netBytes": amounts,
            "messages": counts,
            "bytes": counts,
        },
    ),
    PolicyViolation: st.fixed_dictionaries(
        {"subject": subjects, "rule": text, "measured": amounts, "limit": amounts, "window": text}
    ),
    PenaltyChanged: st.fixed_dictionaries(
        {"subject": subjects, "penalty": text}, optional={"until": amounts, "rule": text}
    ),
    Empty: st.just({}),
}


@pytest.mark.parametrize("cls", list(DATA), ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_to_data_then_parse_gives_the_same_payload(cls: type[Payload], data: st.DataObject) -> None:
    original = cls.parse(data.draw(DATA[cls]))
    over_the_wire = json.loads(json.dumps(original.to_data()))
    assert cls.parse(over_the_wire) == original


@settings(max_examples=50, deadline=None)
@given(data=json_values)
def test_arbitrary_json_never_crashes_a_parser(data: Any) -> None:
    """Any JSON either parses or raises InvalidEvent: never another exception."""
    for cls in VALID:
        with contextlib.suppress(InvalidEvent):
            cls.parse(data)


# --------------------------------------------------------------------------- the envelope
def _event(event_type: str = t.FLOW_STOPPING, data: Any = None, **attributes: Any) -> CloudEvent:
    base = {"type": event_type, "source": "/tests", "id": "e-1"}
    base.update(attributes)
    return CloudEvent(base, {"id": "flow-1"} if data is None else data)


def test_a_valid_event_is_parsed_with_its_extensions() -> None:
    event = _event(tenant="acme", flowid="flow-1", time="2026-01-01T00:00:00Z")
    parsed = parse_event(event, t.CONSUMES[t.DEPLOY])
    assert parsed.type == t.FLOW_STOPPING and parsed.id == "e-1" and parsed.source == "/tests"
    assert parsed.payload == FlowRef(id="flow-1")
    assert parsed.extension("tenant") == "acme" and parsed.extension("flowid") == "flow-1"
    assert "time" not in parsed.extensions and parsed.time == 1767225600.0


ENVELOPE_PROBLEMS = [
    ("missing id", {"id": ""}, None, "id: required"),
    ("missing source", {"source": ""}, None, "source: required"),
    ("unknown type", {"type": t.PREFIX + "flow.exploded"}, None, "type: unknown"),
    ("type not consumed", {"type": t.RUN_ADMITTED}, None, "type: not consumed"),
    ("bad JSON body", {}, b"{not json", "data: not JSON"),
    ("bad JSON text", {}, "{not json", "data: not JSON"),
    ("wrong field type", {}, {"id": 42}, "id: must be a string"),
    ("bad time", {"time": "half past nine"}, None, "time"),
]


@pytest.mark.parametrize(
    ("attributes", "data", "problem"),
    [case[1:] for case in ENVELOPE_PROBLEMS],
    ids=[case[0] for case in ENVELOPE_PROBLEMS],
)
def test_a_malformed_envelope_is_refused_naming_the_field(
    attributes: dict[str, Any], data: Any, problem: str
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(_event(data=data, **attributes), t.CONSUMES[t.DEPLOY])
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def test_an_empty_binary_body_is_an_empty_payload() -> None:
    assert parse_event(_event(t.TICK, data=b"")).payload == Empty()


def test_make_event_sets_the_extensions_and_survives_the_outbox() -> None:
    event = make_event(
        t.RUN_ADMITTED,
        RunAdmitted.parse(VALID[RunAdmitted]),
        event_id="x-1",
        source="/component-orchestrator/flow-start",
        time=1767225600.0,
        tenant="acme",
        flow_id="flow-1",
        run_id="run-1",
    )
    assert event.extensions == {"tenant": "acme", "flowid": "flow-1", "runid": "run-1"}
    assert OutgoingEvent.from_json(event.to_json()) == event
    cloud = event.to_cloudevent(authtoken="signed")
    assert cloud["authtoken"] == "signed" and cloud["tenant"] == "acme"
    assert "authtoken" not in event.to_json()  # tokens are added at send time, never stored
    reparsed = parse_event(cloud)
    assert reparsed.payload == RunAdmitted.parse(VALID[RunAdmitted])
    assert reparsed.time == 1767225600.0


@pytest.mark.parametrize("function", t.FUNCTIONS)
def test_what_a_function_emits_is_consumed_somewhere_or_leaves(function: str) -> None:
    consumed = set().union(*t.CONSUMES.values())
    for event_type in t.EMITS[function]:
        assert event_type in consumed or event_type in t.LEAVES_SYSTEM, event_type
