"""Attack: tenant A's component emits big outputs, each one more step message in A's queues;
with `noeviction`, A filling Redis stops every tenant. Now a tenant has at most
`max_queued_bytes` (policy key, default 256 MiB) in its step queues: step-execute's tick
measures what Redis holds for each tenant's queues (MEMORY USAGE, page by page, the gauge
replaced whole at the end of each pass: recomputed, never counted), and an output that would
create messages while A's gauge is over the budget is answered 429 naming the budget, before
anything is stored; A's steps that only work off their queue go on; tenant B notices nothing;
once A's queue was worked off and re-measured, A is accepted again (nothing to drift).

Through the real step-execute app over HTTP (outputs and ticks), a real Redis."""

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
from shared.execution import queued_bytes
from shared.handlers.step_execute import SPEC as STEP_EXECUTE
from shared.ports.step_message import StepMessage
from tests.support.apps import function_client
from tests.support.events import cloudevent
from tests.support.flows import fast_policy, flow_document
from tests.support.function import FunctionHarness
from tests.support.http_sink import HttpSink

BUDGET = 16 * 1024
PAD = "x" * 4000  # six outputs of this put ~24 KiB into A's queue of `b`


def post(
    client: FlaskClient, harness: FunctionHarness[Any], message: StepMessage, seq: int,
    data: Any, **kw: Any,
) -> Any:  # fmt: skip
    event = harness.result(message, data, seq=seq, event_id=f"{message.run_id}-{seq}", **kw)
    headers, body = to_binary(event)
    return client.post("/", headers=headers, data=body)


def measuring_pass(client: FlaskClient, redis: Redis) -> int:
    """Ticks over HTTP until one whole pass of the gauge ended (TICK_PAGE_SIZE=1: one queue a
    tick); returns how many ticks it took."""
    assert redis.get(keys.tick_cursor(keys.EXECUTION, queued_bytes.WALK)) is None  # at a start
    measured_at = redis.hget(keys.tenant_queued_bytes(), keys.QUEUED_BYTES_MEASURED_AT)
    for ticks in range(1, 51):
        headers, body = to_binary(cloudevent("orchestrator.tick", {}))
        assert client.post("/", headers=headers, data=body).status_code == 200
        if redis.hget(keys.tenant_queued_bytes(), keys.QUEUED_BYTES_MEASURED_AT) != measured_at:
            return ticks
    raise AssertionError("no whole pass of the queued-bytes gauge in 50 ticks")


@pytest.mark.redis_cluster
def test_a_tenant_over_its_queued_bytes_gets_429_and_nobody_else_notices(
    redis: Redis,
    base_env: dict[str, str],
    sink: HttpSink,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    policy = fast_policy(max_queued_bytes=BUDGET)
    harness = FunctionHarness(STEP_EXECUTE, redis, FakeClock(time.time()), base_env, policy=policy)
    for flow_id, tenant in (("flood", "acme"), ("calm", "rival")):
        harness.store_flow(flow_document(flow_id, ["a", "b"], [("a", "b")], tenant=tenant))
    harness.admit("flood", "run-flood")
    harness.admit("calm", "run-calm", tenant="rival")
    (flood,) = harness.messages("flood", "a")
    (calm,) = harness.messages("calm", "a")
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(
        f"defaults: {{max_queued_bytes: {BUDGET}, messages_per_second: 100000}}\n"
    )
    client = function_client(
        monkeypatch, base_env, "step-execute", K_SINK=sink.url,
        ORCHESTRATOR_POLICY_FILE=str(policy_file), TICK_PAGE_SIZE="1",
        STEP_TICK_WORK_SECONDS="0",
    )  # fmt: skip

    # A fills its queue of `b` past the budget: not measured yet, so every output is taken
    for seq in range(6):
        assert post(client, harness, flood, seq, {"pad": PAD}, final=False).status_code == 200
    assert redis.xlen(keys.step_queue("flood", "b")) == 6
    queues = redis.scard(keys.step_queues())  # flood's a and b, calm's a
    assert measuring_pass(client, redis) == queues  # one page of one queue a tick
    assert queued_bytes.gauge(redis, "acme") > BUDGET
    assert queued_bytes.gauge(redis, "rival") < BUDGET

    # A's next outputs: 429 naming the budget, nothing stored
    before = redis.dbsize()
    pending = harness.run("run-flood").pending
    for seq in range(6, 10):
        response = post(client, harness, flood, seq, {"n": seq}, final=False)
        assert response.status_code == 429, response.get_data(as_text=True)
        assert response.get_json()["budget"] == "max_queued_bytes"
        assert response.headers["Retry-After"]
    assert redis.dbsize() == before  # not one key more
    assert harness.run("run-flood").pending == pending
    assert redis.xlen(keys.step_queue("flood", "b")) == 6

    # B's run beside it goes on
    assert post(client, harness, calm, 0, {"n": 0}, final=False).status_code == 200
    assert harness.run("run-calm").pending == 2

    # A's workers take its queue of `b` and finish those messages: an output that creates no
    # message is taken even while A is over the budget
    for message in harness.messages("flood", "b"):
        assert post(client, harness, message, 0, {"done": True}).status_code == 200
    assert redis.xlen(keys.step_queue("flood", "b")) == 0

    # re-measured: A is under its budget again, and the same output (the worker's retry) is taken
    measuring_pass(client, redis)
    assert queued_bytes.gauge(redis, "acme") < BUDGET
    assert post(client, harness, flood, 6, {"n": 6}, final=False).status_code == 200
    assert redis.xlen(keys.step_queue("flood", "b")) == 1
