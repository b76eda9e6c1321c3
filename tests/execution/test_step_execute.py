"""step-execute end to end on real Redis: graphs run through queues with the real worker."""

from __future__ import annotations

from typing import Any

import pytest
from redis import Redis

from shared import keys
from shared.clock import FakeClock
from shared.errors import Unauthorized
from shared.handlers.step_execute import SPEC as STEP_EXECUTE
from shared.handlers.step_execute import StepExecuteServices
from tests.support.flows import TENANT, USER, fast_policy, flow_document
from tests.support.function import FunctionHarness

pytestmark = pytest.mark.redis_cluster  # also on a real 3-master Redis Cluster

FIVE_STEPS = flow_document(
    "five",
    ["a", "b", "c", {"id": "d", "join": True}, "e"],
    [
        ("a", "b", {"mapper": {"v": "v * 2", "from": "'b'"}}),
        ("a", "c", {"condition": "v > 10"}),
        ("b", "d"),
        ("c", "d"),
        ("d", "e"),
    ],
)


@pytest.fixture()
def harness(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> FunctionHarness[StepExecuteServices]:
    return FunctionHarness(STEP_EXECUTE, redis, clock, base_env, policy=fast_policy())


def source(msg: dict[str, Any], fields: dict[str, Any]) -> list[dict[str, int]]:
    return [{"v": 5}, {"v": 20}]


def identity(msg: dict[str, Any], fields: dict[str, Any]) -> Any:
    return msg["data"]


def test_a_five_step_graph_with_fan_out_a_condition_and_a_join_runs_to_completion(
    harness: FunctionHarness[StepExecuteServices],
) -> None:
    harness.store_flow(FIVE_STEPS)
    seen: dict[str, list[Any]] = {step: [] for step in "bcde"}

    def recorder(step: str) -> Any:
        def process(msg: dict[str, Any], fields: dict[str, Any]) -> Any:
            seen[step].append(msg["data"])
            return None if step == "e" else msg["data"]

        return process

    harness.admit("five", "run-1", {"start": True}, fencing=42)
    handled = harness.run_workers(
        "five", {"a": source, **{step: recorder(step) for step in "bcde"}}
    )

    # fan-out with a mapper to b, the condition lets only v > 10 through to c
    assert sorted(d["v"] for d in seen["b"]) == [10, 40]
    assert all(d["from"] == "b" for d in seen["b"])
    assert seen["c"] == [{"v": 20}]
    # the join waited for both branches: one message with every input, keyed by source
    assert len(seen["d"]) == 1
    joined = seen["d"][0]
    assert sorted(d["v"] for d in joined["b"]) == [10, 40]
    assert joined["c"] == {"v": 20}
    assert seen["e"] == [joined]
    assert handled == 6  # a, b twice, c, d, e

    completed = harness.sender.of_type("flow.execution.completed")
    assert len(completed) == 1
    data = completed[0].data
    assert data["fencingToken"] == 42
    assert data["runId"] == "run-1" and data["flowId"] == "five" and data["tenant"] == TENANT
    assert data["steps"] == 6 and data["user"] == USER
    assert completed[0].extensions == {"tenant": TENANT, "flowid": "five", "runid": "run-1"}
    record = harness.run("run-1")
    assert record.status == "completed" and record.pending == 0 and record.messages == 6
    assert harness.redis.ttl(keys.run("run-1")) > 0  # kept for the retention, then gone
    assert harness.redis.exists(keys.run_messages("run-1"), keys.run_step_counts("run-1")) == 0
    assert harness.redis.zcard(keys.step_due()) == 0
    assert harness.redis.zcard(keys.step_deadlines()) == 0


def two_steps(
    harness: FunctionHarness[StepExecuteServices], flow_id: str = "pair", **edge: Any
) -> None:
    harness.store_flow(flow_document(flow_id, ["a", "b"], [("a", "b", edge)]))


def test_a_redelivered_step_completed_does_not_route_twice(
    harness: FunctionHarness[StepExecuteServices],
) -> None:
    two_steps(harness)
    harness.admit("pair")
    (start,) = harness.messages("pair", "a")
    event = harness.result(start, {"n": 1}, seq=0, final=False)

    assert harness.handle(event).duplicate is False
    assert harness.handle(event).duplicate is True  # same CloudEvent: the runtime's dedupe
    # the same output again under another event id (a retried worker): dedupe by messageId:seq
    harness.handle(harness.result(start, {"n": 1}, seq=0, final=False, event_id="again"))

    assert [m.data for m in harness.messages("pair", "b")] == [{"n": 1}]
    assert harness.run().messages == 2 and harness.run().pending == 2


def test_the_message_ends_only_when_every_output_up_to_the_final_one_arrived(
    harness: FunctionHarness[StepExecuteServices],
) -> None:
    two_steps(harness)
    harness.admit("pair")
    (start,) = harness.messages("pair", "a")
    harness.handle(harness.result(start, {"n": 2}, seq=2, final=True))
    harness.handle(harness.result(start, {"n": 0}, seq=0, final=False))
    assert harness.run().pending == 3  # seq 1 is still missing: a stays pending

    harness.handle(harness.result(start, {"n": 1}, seq=1, final=False))
    outputs = harness.messages("pair", "b")
    assert sorted(m.data["n"] for m in outputs) == [0, 1, 2]
    assert harness.run().pending == 3  # the three b messages
    for message in outputs:
        harness.handle(harness.result(message, None))  # b emits nothing
    assert harness.run().status == "completed"
    assert len(harness.sender.of_type("flow.execution.completed")) == 1


def test_a_step_output_of_null_routes_nothing_and_ends_the_message(
    harness: FunctionHarness[StepExecuteServices],
) -> None:
    two_steps(harness)
    harness.admit("pair")
    (start,) = harness.messages("pair", "a")
    harness.handle(harness.result(start, None))
    assert harness.messages("pair", "b") == []
    assert harness.run().status == "completed"


def test_an_admitted_run_of_an_unknown_flow_fails_at_once(
    harness: FunctionHarness[StepExecuteServices],
) -> None:
    harness.admit("nowhere", "run-x", fencing=3)
    (failed,) = harness.sender.of_type("flow.execution.failed")
    assert failed.data["reason"] == "flow_not_found"
    assert failed.data["fencingToken"] == 3
    assert harness.run("run-x").status == "failed"
    # a redelivery of the admitted event changes nothing and emits nothing new
    harness.admit("nowhere", "run-x", fencing=3)
    assert len(harness.sender.of_type("flow.execution.failed")) == 1


def test_an_admitted_run_is_started_once(harness: FunctionHarness[StepExecuteServices]) -> None:
    two_steps(harness)
    harness.admit("pair", "run-1")
    harness.admit("pair", "run-1")  # same event: deduped by the runtime
    assert len(harness.messages("pair", "a")) == 1


def test_a_condition_that_fails_to_evaluate_fails_the_run(
    harness: FunctionHarness[StepExecuteServices],
) -> None:
    two_steps(harness, condition="$undefinedFunction(v)")
    harness.admit("pair")
    (start,) = harness.messages("pair", "a")
    harness.handle(harness.result(start, {"v": 1}))

    (failed,) = harness.sender.of_type("flow.execution.failed")
    assert failed.data["reason"] == "routing_error"
    (letter,) = harness.dead_letters()
    assert letter["messageId"] == start.message_id and letter["reason"] == "routing_error"
    assert "JSONata" in letter["error"]


def test_own_terminal_events_and_foreign_completions_are_ignored(
    harness: FunctionHarness[StepExecuteServices],
) -> None:
    two_steps(harness)
    harness.admit("pair")
    from tests.conftest import TEST_KEY
    from tests.support.events import internal

    data = {"flowId": "pair", "runId": "run-1", "tenant": TENANT, "fencingToken": 7}
    harness.handle(
        internal(
            "flow.execution.completed",
            data,
            key=TEST_KEY,
            clock=harness.clock,
            source="/component-orchestrator/policy-check",
        )
    )
    harness.handle(
        internal(
            "flow.execution.failed",
            {**data, "reason": "x"},
            key=TEST_KEY,
            clock=harness.clock,
            source="/component-orchestrator/step-execute",
        )
    )
    assert harness.run().status == "running"


def test_usage_is_reported_per_tenant_user_and_flow_on_tick(
    harness: FunctionHarness[StepExecuteServices],
) -> None:
    two_steps(harness)
    harness.admit("pair", msg={"hello": "world"})
    (start,) = harness.messages("pair", "a")
    harness.handle(harness.result(start, {"x": 1}))
    harness.tick()

    (usage,) = harness.sender.of_type("usage.reported")
    start_bytes = len('{"hello":"world"}')
    assert usage.data == {
        "tenant": TENANT,
        "user": USER,
        "flowId": "pair",
        "messages": 2,
        "bytes": start_bytes + len('{"x":1}'),
    }
    harness.tick()  # reported once: the counts start again from zero
    assert len(harness.sender.of_type("usage.reported")) == 1


def test_the_published_message_carries_run_step_message_data_and_a_step_token(
    harness: FunctionHarness[StepExecuteServices],
) -> None:
    from shared.security.tokens import verify_step_token
    from tests.conftest import TEST_KEY

    two_steps(harness)
    harness.admit("pair", msg={"k": [1, 2]})
    (message,) = harness.messages("pair", "a")
    assert (message.run_id, message.step_id, message.flow_id) == ("run-1", "a", "pair")
    assert message.data == {"k": [1, 2]} and message.attempt == 0
    claims = verify_step_token(TEST_KEY, message.token, harness.clock, run_id="run-1", step_id="a")
    assert (claims.tenant, claims.flow_id) == (TENANT, "pair")
    # the token lives step_timeout_seconds x (step_retries + 1) = 30 x 3
    harness.clock.advance(89)
    verify_step_token(TEST_KEY, message.token, harness.clock)
    harness.clock.advance(2)
    with pytest.raises(Unauthorized):  # and not longer
        verify_step_token(TEST_KEY, message.token, harness.clock)


def test_the_completed_event_says_how_long_the_run_took_and_how_many_steps_ran(
    harness: FunctionHarness[StepExecuteServices],
) -> None:
    two_steps(harness)
    harness.admit("pair")
    (start,) = harness.messages("pair", "a")
    harness.clock.advance(1.5)
    harness.handle(harness.result(start, {"x": 1}))
    (second,) = harness.messages("pair", "b")
    harness.clock.advance(2.25)
    harness.handle(harness.result(second, None))

    (completed,) = harness.sender.of_type("flow.execution.completed")
    assert completed.data["durationMs"] == 3750 and completed.data["steps"] == 2


def test_runs_are_listed_while_running_and_after_they_ended(
    harness: FunctionHarness[StepExecuteServices],
) -> None:
    from shared.execution import runs

    two_steps(harness)
    harness.admit("pair", "run-1")
    harness.admit("pair", "run-2")
    assert [r.run_id for r in runs.running(harness.redis)] == ["run-1", "run-2"]
    for message in harness.messages("pair", "a"):
        if message.run_id == "run-1":
            harness.handle(harness.result(message, None))
    assert [r.run_id for r in runs.running(harness.redis)] == ["run-2"]
    assert [r.run_id for r in runs.recent(harness.redis)] == ["run-1"]
    assert runs.recent(harness.redis)[0].to_dict()["status"] == "completed"


def test_default_policy_is_used_without_a_fast_policy(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    harness = FunctionHarness(
        STEP_EXECUTE, redis, clock, base_env, policy=fast_policy(messages_per_second=200)
    )
    two_steps(harness)
    harness.admit("pair")
    assert len(harness.messages("pair", "a")) == 1
