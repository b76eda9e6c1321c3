"""Failures: retry with backoff then dead letter, step timeouts, stop and watchdog mid-run."""

from __future__ import annotations

import pytest
from redis import Redis

from shared import keys
from shared.clock import FakeClock
from shared.execution import runs
from shared.handlers.step_execute import SPEC as STEP_EXECUTE
from shared.handlers.step_execute import StepExecuteServices
from tests.conftest import TEST_KEY
from tests.support.events import internal
from tests.support.flows import TENANT, fast_policy, flow_document
from tests.support.function import FunctionHarness


@pytest.fixture()
def harness(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> FunctionHarness[StepExecuteServices]:
    h = FunctionHarness(STEP_EXECUTE, redis, clock, base_env, policy=fast_policy(step_retries=2))
    h.store_flow(flow_document("pair", ["a", "b"], [("a", "b")]))
    return h


def wait_and_tick(harness: FunctionHarness[StepExecuteServices], seconds: float) -> None:
    harness.clock.advance(seconds)
    harness.tick()


def test_a_failing_step_is_retried_with_exponential_backoff_then_dead_lettered(
    harness: FunctionHarness[StepExecuteServices],
) -> None:
    harness.admit("pair", fencing=9)
    attempts = []
    for expected_attempt, backoff in [(0, 2.0), (1, 4.0)]:
        (message,) = harness.messages("pair", "a")
        attempts.append(message.attempt)
        assert message.attempt == expected_attempt
        harness.handle(harness.result(message, failed=f"boom {expected_attempt}"))
        wait_and_tick(harness, backoff - 0.5)
        assert harness.messages("pair", "a") == []  # not before its backoff
        wait_and_tick(harness, 0.5)
    (last,) = harness.messages("pair", "a")
    assert last.attempt == 2
    assert harness.sender.of_type("flow.execution.failed") == []
    harness.handle(harness.result(last, failed="boom 2"))

    (failed,) = harness.sender.of_type("flow.execution.failed")
    assert failed.data["reason"] == "step_failed" and failed.data["fencingToken"] == 9
    assert failed.data["durationMs"] == 6000  # the two backoffs, 2 s then 4 s
    (letter,) = harness.dead_letters()
    assert letter["messageId"] == last.message_id and letter["error"] == "boom 2"
    assert letter["attempt"] == "2" and letter["step"] == "a" and letter["tenant"] == TENANT
    record = harness.run()
    assert record.status == "failed" and record.failures == 3 and record.reason == "step_failed"


def test_a_late_failure_of_an_earlier_attempt_is_ignored(
    harness: FunctionHarness[StepExecuteServices],
) -> None:
    harness.admit("pair")
    (first,) = harness.messages("pair", "a")
    harness.handle(harness.result(first, failed="boom"))
    wait_and_tick(harness, 2)
    (second,) = harness.messages("pair", "a")
    # attempt 0 reports a failure again (another event): it is stale, attempt 1 is running
    harness.handle(harness.result(first, failed="late", event_id="late-failure"))
    assert harness.run().failures == 1
    harness.handle(harness.result(second, {"ok": True}))
    assert [m.data for m in harness.messages("pair", "b")] == [{"ok": True}]


def test_a_step_that_never_answers_times_out_is_retried_then_dead_lettered(
    harness: FunctionHarness[StepExecuteServices],
) -> None:
    harness.admit("pair", fencing=5)
    for attempt in range(3):
        (message,) = harness.messages("pair", "a")
        assert message.attempt == attempt
        wait_and_tick(harness, 29)
        assert harness.run().failures == attempt  # not before the step timeout (30 s)
        wait_and_tick(harness, 1)  # timed out: retried after its backoff
        wait_and_tick(harness, 2.0 * 2**attempt)
    (failed,) = harness.sender.of_type("flow.execution.failed")
    assert failed.data["reason"] == "step_timeout" and failed.data["fencingToken"] == 5
    (letter,) = harness.dead_letters()
    assert letter["reason"] == "step_timeout" and "timed out" in letter["error"]
    assert harness.redis.zcard(keys.step_deadlines()) == 0


def test_an_answer_in_time_stops_the_step_timeout(
    harness: FunctionHarness[StepExecuteServices],
) -> None:
    harness.admit("pair")
    (message,) = harness.messages("pair", "a")
    harness.handle(harness.result(message, {"x": 1}))
    wait_and_tick(harness, 29)
    (b,) = harness.messages("pair", "b")
    harness.handle(harness.result(b, None))
    wait_and_tick(harness, 60)
    assert harness.run().status == "completed" and harness.run().failures == 0


def fan_out(harness: FunctionHarness[StepExecuteServices], outputs: int = 3) -> None:
    harness.admit("pair", fencing=11)
    (start,) = harness.messages("pair", "a")
    for seq in range(outputs):
        harness.handle(harness.result(start, {"n": seq}, seq=seq, final=seq == outputs - 1))


def test_stopping_the_flow_mid_run_fails_the_run_and_dead_letters_its_messages(
    harness: FunctionHarness[StepExecuteServices],
) -> None:
    fan_out(harness)
    (received, *_rest) = harness.messages("pair", "b")
    harness.handle(
        internal(
            "flow.stopping",
            {"id": "pair"},
            key=TEST_KEY,
            clock=harness.clock,
            source="/flow-repository",
        )
    )
    (failed,) = harness.sender.of_type("flow.execution.failed")
    assert failed.data["reason"] == "stopped" and failed.data["fencingToken"] == 11
    letters = harness.dead_letters()
    assert len(letters) == 3 and {letter["reason"] for letter in letters} == {"stopped"}
    assert harness.run().status == "failed"
    assert runs.running_of_flow(harness.redis, "pair") == []
    assert harness.redis.exists(keys.step_queue("pair", "b")) == 0  # the flow's queues dropped
    # a result arriving after the stop changes nothing
    harness.handle(harness.result(received, {"late": True}))
    assert harness.run().status == "failed" and harness.redis.zcard(keys.step_due()) == 0
    assert len(harness.sender.of_type("flow.execution.failed")) == 1


def test_a_watchdog_timeout_ends_the_run_without_a_second_terminal_event(
    harness: FunctionHarness[StepExecuteServices],
) -> None:
    fan_out(harness)
    data = {
        "flowId": "pair",
        "runId": "run-1",
        "tenant": TENANT,
        "fencingToken": 11,
        "reason": "timeout",
    }
    watchdog = internal(
        "flow.execution.failed",
        data,
        key=TEST_KEY,
        clock=harness.clock,
        sender="policy-check",
        source="/component-orchestrator/policy-check",
    )
    harness.handle(watchdog)

    assert harness.sender.of_type("flow.execution.failed") == []  # the watchdog already said it
    record = harness.run()
    assert record.status == "failed" and record.reason == "timeout"
    letters = harness.dead_letters()
    assert len(letters) == 3 and {letter["reason"] for letter in letters} == {"timeout"}
    assert harness.redis.zcard(keys.step_due()) == 0
    # no further routing for the run's in-flight messages
    for message in harness.messages("pair", "b"):
        harness.handle(harness.result(message, {"late": True}))
    assert harness.sender.of_type("flow.execution.completed") == []


def test_a_watchdog_event_with_a_stale_fencing_token_is_ignored(
    harness: FunctionHarness[StepExecuteServices],
) -> None:
    fan_out(harness)
    data = {
        "flowId": "pair",
        "runId": "run-1",
        "tenant": TENANT,
        "fencingToken": 10,
        "reason": "timeout",
    }
    harness.handle(
        internal(
            "flow.execution.failed",
            data,
            key=TEST_KEY,
            clock=harness.clock,
            source="/component-orchestrator/policy-check",
        )
    )
    assert harness.run().status == "running"


def test_every_published_message_ends_acknowledged_retried_or_dead_lettered(
    harness: FunctionHarness[StepExecuteServices],
) -> None:
    fan_out(harness, outputs=4)
    messages = harness.messages("pair", "b")
    harness.handle(harness.result(messages[0], None))  # acknowledged (done)
    harness.handle(harness.result(messages[1], failed="x"))  # retried
    assert harness.run().pending == 3
    harness.clock.advance(30)
    harness.tick()  # messages 2 and 3 time out: retried too
    assert harness.run().failures == 3
    harness.handle(
        internal(
            "flow.stopping",
            {"id": "pair"},
            key=TEST_KEY,
            clock=harness.clock,
            source="/flow-repository",
        )
    )
    dead = {letter["messageId"] for letter in harness.dead_letters()}
    assert dead == {m.message_id for m in messages[1:]}
    assert harness.redis.exists(*[keys.step_message(m.message_id) for m in messages]) == 0


def test_a_tick_reclaims_messages_a_dead_worker_received_but_never_acknowledged(
    harness: FunctionHarness[StepExecuteServices],
) -> None:
    harness.services.reclaim_idle_seconds = 0
    harness.admit("pair")
    taken = harness.receive("pair", "a", consumer="died")
    assert len(taken) == 1 and harness.receive("pair", "a", consumer="alive") == []
    harness.tick()
    (again,) = harness.messages("pair", "a")
    assert taken[0].message is not None and again.message_id == taken[0].message.message_id
    harness.handle(harness.result(again, None))
    assert harness.run().status == "completed"
