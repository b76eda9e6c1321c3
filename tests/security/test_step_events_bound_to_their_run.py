"""Attack: tenant A's worker, holding a valid step token for its own run and step `a`, reports
`step.completed` for tenant B's message of the same step name. The token names A's run, the
event names A's run too, only the messageId is B's: the message must be of the run the token
names, else 403 and nothing changes (docs/security.md, "Forged and pre-empted events")."""

from __future__ import annotations

import time
from typing import Any

import pytest
from cloudevents.conversion import to_binary
from flask.testing import FlaskClient
from redis import Redis

from shared import keys
from shared.clock import FakeClock
from shared.handlers.step_execute import SPEC as STEP_EXECUTE
from tests.support.apps import function_client
from tests.support.flows import fast_policy, flow_document
from tests.support.function import FunctionHarness


@pytest.fixture()
def live_clock() -> FakeClock:
    """The app checks tokens with the system clock: sign them at the real time."""
    return FakeClock(time.time())


def _post(client: FlaskClient, event: Any) -> int:
    headers, body = to_binary(event)
    return int(client.post("/", headers=headers, data=body).status_code)


@pytest.mark.parametrize("kind", ["step.completed", "step.failed"])
def test_a_step_token_of_one_run_cannot_end_another_runs_message_of_the_same_step(
    redis: Redis,
    live_clock: FakeClock,
    base_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    harness = FunctionHarness(STEP_EXECUTE, redis, live_clock, base_env, policy=fast_policy())
    harness.store_flow(flow_document("flow-a", ["a", "b"], [("a", "b")], tenant="tenant-a"))
    harness.store_flow(flow_document("flow-b", ["a", "b"], [("a", "b")], tenant="tenant-b"))
    harness.admit("flow-a", "run-a", tenant="tenant-a")
    harness.admit("flow-b", "run-b", tenant="tenant-b")
    (mine,) = harness.messages("flow-a", "a")
    (theirs,) = harness.messages("flow-b", "a")
    their_message = redis.hgetall(keys.step_message(theirs.message_id))
    assert their_message  # B's message waits for its worker

    client = function_client(monkeypatch, base_env, "step-execute")
    forged = harness.result(
        mine,
        {"stolen": True},
        failed="boom" if kind == "step.failed" else None,
        messageId=theirs.message_id,  # B's message, with A's own (valid) token and run
        event_id="forged-1",
    )
    assert _post(client, forged) == 403

    assert redis.hgetall(keys.step_message(theirs.message_id)) == their_message
    assert redis.xlen(keys.step_queue("flow-a", "b")) == 0  # nothing routed into A's run
    assert harness.dead_letters() == []
    # B's real result still goes through, and so does A's own
    harness.handle(harness.result(theirs, {"x": 1}))
    harness.handle(harness.result(mine, {"x": 1}))
    assert redis.xlen(keys.step_queue("flow-b", "b")) == 1
    assert redis.xlen(keys.step_queue("flow-a", "b")) == 1
