"""Step tokens (DESIGN §4): step.completed / step.failed without a valid token change nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from redis import Redis

from shared import keys
from shared.clock import FakeClock
from shared.errors import Forbidden, InvalidEvent, Unauthorized
from shared.events import types as t
from shared.handlers.step_execute import SPEC as STEP_EXECUTE
from shared.ports.step_message import StepMessage
from shared.security import tokens
from tests.conftest import TEST_KEY
from tests.support.flows import TENANT, fast_policy, flow_document
from tests.support.function import FunctionHarness

OTHER_KEY = "another-orchestrator-key-0123456789abcdef"


def step_token(message: StepMessage, clock: FakeClock, key: str = TEST_KEY, **claims: Any) -> str:
    values = {
        "run_id": message.run_id,
        "step_id": message.step_id,
        "tenant": TENANT,
        "flow_id": message.flow_id,
        "ttl_seconds": 60,
        **claims,
    }
    return tokens.sign_step_token(key, clock=clock, **values)


# (case id, how the token is made, what the event says, expected error)
CASES: list[tuple[str, Callable[[StepMessage, FakeClock], str | None], dict[str, Any], type]] = [
    ("missing token", lambda m, c: "", {}, Unauthorized),
    ("forged: signed with another key", lambda m, c: step_token(m, c, OTHER_KEY), {}, Unauthorized),
    ("not a JWT at all", lambda m, c: "not.a.jwt", {}, Unauthorized),
    ("expired", lambda m, c: step_token(m, c, ttl_seconds=-1), {}, Unauthorized),
    ("another run's token", lambda m, c: step_token(m, c, run_id="run-2"), {}, Forbidden),
    ("another step's token", lambda m, c: step_token(m, c, step_id="b"), {}, Forbidden),
    ("valid token, event names another run", lambda m, c: m.token, {"runId": "run-2"}, Forbidden),
    ("another tenant's token", lambda m, c: step_token(m, c, tenant="evil"), {}, Forbidden),
    (
        "valid token for step b, message of step a",
        lambda m, c: step_token(m, c, step_id="b"),
        {"stepId": "b"},
        Forbidden,
    ),
    (
        "an internal token instead",
        lambda m, c: tokens.sign_internal(TEST_KEY, "x", c, event_type=t.STEP_COMPLETED),
        {},
        Unauthorized,
    ),
]


def state(redis: Redis) -> dict[str, Any]:
    return {
        "run": redis.hgetall(keys.run("run-1")),
        "seen": redis.smembers(keys.run_seen("run-1")),
        "due": redis.zrange(keys.step_due(), 0, -1),
        "queue_b": redis.xlen(keys.step_queue("pair", "b")),
        "dead": redis.xlen(keys.dead_letters()),
    }


@pytest.mark.parametrize("kind", ["step.completed", "step.failed"])
@pytest.mark.parametrize(
    ("case", "make_token", "overrides", "error"), CASES, ids=[c[0] for c in CASES]
)
def test_a_step_result_without_a_valid_token_is_refused_and_changes_nothing(
    redis: Redis,
    clock: FakeClock,
    base_env: dict[str, str],
    kind: str,
    case: str,
    make_token: Callable[[StepMessage, FakeClock], str | None],
    overrides: dict[str, Any],
    error: type,
) -> None:
    harness = FunctionHarness(STEP_EXECUTE, redis, clock, base_env, policy=fast_policy())
    harness.store_flow(flow_document("pair", ["a", "b"], [("a", "b")]))
    harness.admit("pair")
    (message,) = harness.messages("pair", "a")
    before = state(redis)
    sent_before = len(harness.sender.events)

    event = harness.result(
        message,
        {"x": 1},
        token=make_token(message, clock) or "",
        failed="boom" if kind == "step.failed" else None,
        **overrides,
    )
    if not event.get("steptoken"):
        del event["steptoken"]
    with pytest.raises(error):
        harness.handle(event)

    assert state(redis) == before
    assert len(harness.sender.events) == sent_before
    # the real result still goes through afterwards: nothing was marked as handled
    harness.handle(harness.result(message, {"x": 1}))
    assert redis.xlen(keys.step_queue("pair", "b")) == 1


def test_a_step_result_naming_no_run_is_invalid(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    harness = FunctionHarness(STEP_EXECUTE, redis, clock, base_env, policy=fast_policy())
    harness.store_flow(flow_document("pair", ["a", "b"], [("a", "b")]))
    harness.admit("pair")
    (message,) = harness.messages("pair", "a")
    with pytest.raises(InvalidEvent):
        harness.handle(harness.result(message, {"x": 1}, runId=""))
