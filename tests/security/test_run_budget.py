"""Attack: tenant A's component emits output after output (non-final step.completed, each a
few bytes) and every one becomes a pending step message of the run: the run's pending
messages, and Redis with them, grow without bound. Now a run has at most
`max_pending_messages_per_run` (policy key, default 10,000): an output that would pass it is
answered 429 naming the budget, before anything is stored, and is accepted once the run's
steps have worked some off; tenant B's run beside it notices nothing.

Through the real step-execute app over HTTP, a real Redis."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from cloudevents.conversion import to_binary
from flask.testing import FlaskClient
from redis import Redis

from shared import keys
from shared.clock import FakeClock
from shared.handlers.step_execute import SPEC as STEP_EXECUTE
from shared.ports.step_message import StepMessage
from tests.support.apps import function_client
from tests.support.flows import fast_policy, flow_document
from tests.support.function import FunctionHarness
from tests.support.http_sink import HttpSink

MAX_PENDING = 5


def post(
    client: FlaskClient, harness: FunctionHarness[Any], message: StepMessage, seq: int, **kw: Any
) -> Any:
    event = harness.result(message, {"n": seq}, seq=seq, event_id=f"{message.run_id}-{seq}", **kw)
    headers, body = to_binary(event)
    return client.post("/", headers=headers, data=body)


def test_a_run_over_its_pending_messages_gets_429_and_nobody_else_notices(
    redis: Redis,
    base_env: dict[str, str],
    sink: HttpSink,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    policy = fast_policy(max_pending_messages_per_run=MAX_PENDING)
    harness = FunctionHarness(STEP_EXECUTE, redis, FakeClock(time.time()), base_env, policy=policy)
    for flow_id, tenant in (("flood", "acme"), ("calm", "rival")):
        harness.store_flow(flow_document(flow_id, ["a", "b"], [("a", "b")], tenant=tenant))
    harness.admit("flood", "run-flood")
    harness.admit("calm", "run-calm", tenant="rival")
    (flood,) = harness.messages("flood", "a")
    (calm,) = harness.messages("calm", "a")
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(
        f"defaults: {{max_pending_messages_per_run: {MAX_PENDING}, messages_per_second: 100000}}\n"
    )
    client = function_client(
        monkeypatch, base_env, "step-execute", K_SINK=sink.url,
        ORCHESTRATOR_POLICY_FILE=str(policy_file),
    )  # fmt: skip

    # the message of `a` itself is pending: four outputs fill the run to five
    for seq in range(MAX_PENDING - 1):
        assert post(client, harness, flood, seq, final=False).status_code == 200
    assert harness.run("run-flood").pending == MAX_PENDING
    before = redis.dbsize()
    for seq in range(MAX_PENDING - 1, MAX_PENDING + 20):
        response = post(client, harness, flood, seq, final=False)
        assert response.status_code == 429, response.get_data(as_text=True)
        assert response.get_json()["budget"] == "max_pending_messages_per_run"
        assert response.headers["Retry-After"]
    assert harness.run("run-flood").pending == MAX_PENDING  # nothing stored for them
    assert redis.dbsize() == before  # not one key more
    assert redis.xlen(keys.step_queue("flood", "b")) == MAX_PENDING - 1

    # B's run beside it goes on
    assert post(client, harness, calm, 0, final=False).status_code == 200
    assert harness.run("run-calm").pending == 2

    # once `b` has worked one off, the same output is accepted (the worker's retry)
    (first, *_rest) = harness.messages("flood", "b")
    assert post(client, harness, first, 0, final=True).status_code == 200
    assert post(client, harness, flood, MAX_PENDING - 1, final=False).status_code == 200
    assert harness.run("run-flood").pending == MAX_PENDING
