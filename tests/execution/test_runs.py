"""Run records and their scripts: start once, joins, completion, retention, graph property."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis

from shared import keys
from shared.clock import FakeClock
from shared.events import FlowDocument, RunAdmitted
from shared.execution import runs
from shared.execution.routing import Graph
from shared.handlers.step_execute import SPEC as STEP_EXECUTE
from shared.model.policy import TenantLimits
from shared.runtime.idempotency import Once
from tests.support.flows import TENANT, USER, fast_policy, flow_document
from tests.support.function import FunctionHarness

pytestmark = pytest.mark.redis_cluster  # also on a real 3-master Redis Cluster

ADMITTED = RunAdmitted(
    flow_id="f",
    run_id="run-1",
    tenant=TENANT,
    user=USER,
    fencing_token=3,
    scheduled_for=0,
    trigger="cron",
)


def start(redis: Redis, graph: Graph, guard: str = "g1") -> str:
    return runs.start(
        redis,
        Once.keyed(redis, keys.EXECUTION, "tests", guard),
        admitted=ADMITTED,
        graph=graph,
        messages=runs.start_messages("run-1", graph, "{}"),
        limits=TenantLimits(),
        now=100.0,
    )


def test_a_run_starts_once(redis: Redis) -> None:
    graph = Graph(nodes=("a", "b"))
    assert start(redis, graph) == "started"
    assert start(redis, graph) == "duplicate"  # same event
    assert start(redis, graph, guard="g2") == "exists"  # another event for the same run
    record = runs.get(redis, "run-1")
    assert record is not None
    assert record.to_dict() == {
        "runId": "run-1",
        "flowId": "f",
        "tenant": TENANT,
        "user": USER,
        "fencingToken": 3,
        "status": "running",
        "startedAt": 100.0,
        "endedAt": None,
        "reason": None,
        "trigger": "cron",
        "pending": 2,
        "steps": 0,
        "messages": 2,
        "bytes": 4,
        "failures": 0,
    }
    assert redis.zcard(keys.step_due()) == 2
    assert runs.running_of_flow(redis, "f") == ["run-1"]
    assert runs.get(redis, "nope") is None


def test_ended_runs_expire_after_the_retention_and_leave_the_recent_index(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    harness = FunctionHarness(STEP_EXECUTE, redis, clock, base_env, policy=fast_policy())
    harness.services.retention_seconds = 600
    harness.store_flow(flow_document("f", ["a"]))
    harness.admit("f")
    (message,) = harness.messages("f", "a")
    harness.handle(harness.result(message, None))
    assert 0 < redis.ttl(keys.run("run-1")) <= 600
    assert 0 < redis.ttl(keys.run_seen("run-1")) <= 600
    assert [r.run_id for r in runs.recent(redis)] == ["run-1"]
    clock.advance(601)
    harness.tick()
    assert runs.recent(redis) == []


def test_a_join_collects_every_input_and_a_source_that_sent_several_gives_a_list(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    harness = FunctionHarness(STEP_EXECUTE, redis, clock, base_env, policy=fast_policy())
    harness.store_flow(
        flow_document(
            "f",
            ["a", "b", "c", {"id": "j", "join": True}],
            [("a", "b"), ("a", "c"), ("b", "j"), ("c", "j", {"condition": "keep"})],
        )
    )
    harness.admit("f")
    (a,) = harness.messages("f", "a")
    harness.handle(harness.result(a, {"x": 1}))
    (b,) = harness.messages("f", "b")
    (c,) = harness.messages("f", "c")
    harness.handle(harness.result(b, {"b": 1}, seq=0, final=False))
    harness.handle(harness.result(b, {"b": 2}, seq=1, final=True))
    assert harness.messages("f", "j") == []  # c is still pending upstream
    harness.handle(harness.result(c, {"keep": False}))  # its edge's condition is false
    (joined,) = harness.messages("f", "j")
    assert joined.data == {"b": [{"b": 1}, {"b": 2}]}  # fires without c's input
    harness.handle(harness.result(joined, None))
    assert harness.run().status == "completed"


@st.composite
def graphs(draw: st.DrawFn) -> tuple[list[Any], list[Any], dict[str, int]]:
    """A DAG (edges go from lower to higher index), some joins, outputs per node (0..2)."""
    size = draw(st.integers(min_value=1, max_value=5))
    names = [f"n{i}" for i in range(size)]
    edges = [
        (names[i], names[j]) for i in range(size) for j in range(i + 1, size) if draw(st.booleans())
    ]
    joins = {name for name in names if draw(st.booleans())}
    nodes = [{"id": n, "join": True} if n in joins else n for n in names]
    outputs = {name: draw(st.integers(min_value=0, max_value=2)) for name in names}
    return nodes, edges, outputs


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=graphs(), order=st.randoms(use_true_random=False))
def test_every_graph_run_completes_exactly_once_whatever_the_order_of_results(
    redis: Redis, clock: FakeClock, base_env: dict[str, str], spec: Any, order: Any
) -> None:
    nodes, edges, outputs = spec
    redis.flushall()
    harness = FunctionHarness(STEP_EXECUTE, redis, clock, base_env, policy=fast_policy())
    harness.store_flow(flow_document("g", nodes, edges))
    harness.admit("g")
    names = [n if isinstance(n, str) else n["id"] for n in nodes]
    joins = {n["id"] for n in nodes if not isinstance(n, str)}
    handled = 0
    received = dict.fromkeys(names, 0)
    for _ in range(200):
        inbox = [m for name in names for m in harness.messages("g", name)]
        if not inbox:
            break
        for message in inbox:
            received[message.step_id] += 1
        events = []
        for message in inbox:
            count = outputs[message.step_id]
            if count == 0:
                events.append(harness.result(message, None))
            for seq in range(count):
                events.append(
                    harness.result(message, {"seq": seq}, seq=seq, final=seq == count - 1)
                )
        order.shuffle(events)
        for event in events:
            harness.handle(event)
        handled += len(inbox)
    completed = harness.sender.of_type("flow.execution.completed")
    assert len(completed) == 1
    record = harness.run()
    assert record.status == "completed" and record.pending == 0
    assert record.steps == record.messages == handled
    # a join fires once, after everything upstream is done
    assert all(received[j] <= 1 for j in joins)
    leftovers = [keys.run_messages("run-1"), keys.run_step_counts("run-1")]
    leftovers += [keys.run_join("run-1", n) for n in names]
    assert redis.exists(*leftovers) == 0
    assert redis.zcard(keys.step_due()) == 0 and redis.zcard(keys.step_deadlines()) == 0


@pytest.mark.parametrize("reason", ["stopped", "timeout"])
def test_ending_a_run_twice_ends_it_once(redis: Redis, reason: str) -> None:
    graph = Graph(nodes=("a",))
    start(redis, graph)
    common: dict[str, Any] = {
        "run_id": "run-1",
        "flow_id": "f",
        "graph": graph,
        "mode": "end",
        "reason": reason,
        "now": 200.0,
        "retention_seconds": 3600,
        "source": "/tests",
    }
    first = Once.keyed(redis, keys.EXECUTION, "tests", "e1")
    second = Once.keyed(redis, keys.EXECUTION, "tests", "e2")
    assert runs.fail(redis, runs.Failure(first, **common)) == "failed"
    assert runs.fail(redis, runs.Failure(second, **common)) == "not_running"
    assert redis.xlen(keys.dead_letters()) == 1
    outbox = redis.lrange(keys.outbox(keys.EXECUTION), 0, -1)
    assert len(outbox) == 1 and reason.encode() in outbox[0]


def test_graph_snapshot_is_kept_while_running_only(redis: Redis) -> None:
    graph = Graph.from_flow(FlowDocument.parse(flow_document("f", ["a", "b"], [("a", "b")])))
    start(redis, graph)
    loaded = runs.load(redis, "run-1")
    assert loaded is not None and loaded.graph == graph and loaded.tenant == TENANT
    runs.fail(
        redis,
        runs.Failure(
            None,
            run_id="run-1",
            flow_id="f",
            graph=graph,
            mode="end",
            reason="stopped",
            now=1.0,
            retention_seconds=60,
            source="/tests",
        ),
    )
    assert runs.load(redis, "run-1") is None
