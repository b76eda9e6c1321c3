"""Attacks on dedupe and on our own event sources (docs/security.md, "Forged and pre-empted
events"), over the real step-execute app with IAM on: tenant A holds a valid IAM token for its
own tenant and sends events chosen to make step-execute drop tenant B's next real event as a
duplicate."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from flask.testing import FlaskClient
from redis import Redis

from shared import keys
from shared.clock import FakeClock
from shared.handlers.step_execute import SPEC as STEP_EXECUTE
from shared.handlers.step_execute import StepExecuteServices
from shared.security.tokens import keyed_event_id
from tests.conftest import TEST_KEY
from tests.fakes.iam import FakeIam
from tests.support.apps import function_client
from tests.support.events import cloudevent, internal
from tests.support.flows import fast_policy, flow_document
from tests.support.function import FunctionHarness
from tests.support.http_sink import HttpSink

FLOW_START = "/component-orchestrator/flow-start"


@pytest.fixture()
def live_clock() -> FakeClock:
    """The app checks tokens with the system clock: sign them at the real time."""
    return FakeClock(time.time())


@pytest.fixture()
def live_iam(live_clock: FakeClock) -> Iterator[FakeIam]:
    fake = FakeIam(live_clock).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture()
def setup(
    redis: Redis,
    live_clock: FakeClock,
    live_iam: FakeIam,
    sink: HttpSink,
    base_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[FunctionHarness[StepExecuteServices], FlaskClient]:
    env = {**base_env, **live_iam.env(), "ORCHESTRATOR_AUTH": "required", "K_SINK": sink.url}
    harness = FunctionHarness(STEP_EXECUTE, redis, live_clock, base_env, policy=fast_policy())
    harness.store_flow(flow_document("flow-a", ["a"], tenant="tenant-a"))
    harness.store_flow(flow_document("flow-b", ["a"], tenant="tenant-b"))
    return harness, function_client(monkeypatch, env, "step-execute")


def _post(client: FlaskClient, event: CloudEvent) -> int:
    headers, body = to_binary(event)
    return int(client.post("/", headers=headers, data=body).status_code)


def _admission(clock: FakeClock, flow: str, run: str, tenant: str, event_id: str) -> CloudEvent:
    data: dict[str, Any] = {
        "flowId": flow, "runId": run, "tenant": tenant, "user": "u", "fencingToken": 1,
        "scheduledFor": clock.now(), "trigger": "cron", "msg": {},
    }  # fmt: skip
    return internal(
        "flow.execution.admitted", data, key=TEST_KEY, clock=clock, sender="flow-start",
        source=FLOW_START, event_id=event_id,
    )  # fmt: skip


def _status(redis: Redis, run: str) -> str | None:
    value = redis.hget(keys.run(run), "status")
    return cast(bytes, value).decode() if value else None


def test_a_control_event_claiming_our_source_is_refused_and_cannot_preempt_an_admission(
    setup: tuple[FunctionHarness[StepExecuteServices], FlaskClient], live_iam: FakeIam, redis: Redis
) -> None:
    harness, client = setup
    clock = harness.clock
    next_id = "flow-b@1767225600-admitted"  # B's next cron admission, as flow-start names it
    forged = cloudevent(
        "flow.stopping", {"id": "flow-a"}, source=FLOW_START, event_id=next_id,
        authtoken=live_iam.token(tenant="tenant-a", sub="mallory"),
    )  # fmt: skip
    assert _post(client, forged) == 403

    outcome = harness.handle(_admission(clock, "flow-b", "flow-b@1", "tenant-b", next_id))
    assert not outcome.duplicate
    assert _status(redis, "flow-b@1") == "running"


def test_the_same_source_and_id_from_another_caller_is_not_a_duplicate(
    setup: tuple[FunctionHarness[StepExecuteServices], FlaskClient], live_iam: FakeIam, redis: Redis
) -> None:
    """A sends first what B's hub will send next (same source, same id): B's stop still
    stops B's run, because the dedupe key carries who sent the event."""
    harness, client = setup
    harness.admit("flow-b", "run-b", tenant="tenant-b")
    assert _status(redis, "run-b") == "running"
    hub = {"source": "/hub/flow-repository", "event_id": "stop-0042"}
    mallory = live_iam.token(tenant="tenant-a", sub="mallory")
    assert (
        _post(client, cloudevent("flow.stopping", {"id": "flow-a"}, **hub, authtoken=mallory))
        == 200
    )

    bob = live_iam.token(tenant="tenant-b", sub="bob")
    assert _post(client, cloudevent("flow.stopping", {"id": "flow-b"}, **hub, authtoken=bob)) == 200
    assert _status(redis, "run-b") != "running"


@pytest.mark.parametrize("kind", ["step.completed", "step.failed"])
def test_a_step_result_claiming_a_function_source_is_refused(
    setup: tuple[FunctionHarness[StepExecuteServices], FlaskClient], kind: str
) -> None:
    harness, client = setup
    harness.admit("flow-a", "run-a", tenant="tenant-a")
    (message,) = harness.messages("flow-a", "a")
    event = harness.result(message, {"x": 1}, failed="boom" if kind == "step.failed" else None)
    event["source"] = FLOW_START
    assert _post(client, event) == 403
    event["source"] = "/component-orchestrator/worker/flow-a/a"  # the worker's own source
    assert _post(client, event) == 200


def test_emitted_ids_are_keyed_and_not_the_predictable_staged_ones() -> None:
    """An attacker who knows how we name an event (`<run>-admitted`, `run-end-<run>`) still
    cannot name it on the wire without ORCHESTRATOR_KEY."""
    staged = ["flow-b@1767225600-admitted", "run-end-flow-b@1767225600"]
    wire = [keyed_event_id(TEST_KEY, FLOW_START, i) for i in staged]
    assert all(w not in staged and i not in w for w, i in zip(wire, staged, strict=True))
    assert wire == [keyed_event_id(TEST_KEY, FLOW_START, i) for i in staged]  # stable on resend
    other_key = "another-orchestrator-key-0123456789abcdef"
    assert not set(wire) & {keyed_event_id(other_key, FLOW_START, i) for i in staged}
    assert keyed_event_id(TEST_KEY, "/elsewhere", staged[0]) != wire[0]


def test_an_internal_token_seen_on_one_event_type_cannot_carry_another(
    setup: tuple[FunctionHarness[StepExecuteServices], FlaskClient], redis: Redis
) -> None:
    """A token copied off a `flow.started` (a broker log, a dead letter) replayed onto a
    forged `flow.execution.admitted` for B's flow: refused, no run starts."""
    harness, client = setup
    seen = internal(
        "flow.started", {"id": "flow-b"}, key=TEST_KEY, clock=harness.clock, sender="deploy"
    )
    forged = _admission(harness.clock, "flow-b", "run-forged", "tenant-b", "forged-admit")
    forged["authtoken"] = seen["authtoken"]
    assert _post(client, forged) == 403
    assert _status(redis, "run-forged") is None
    forged["authtoken"] = _admission(harness.clock, "flow-b", "x", "tenant-b", "y")["authtoken"]
    assert _post(client, forged) == 200  # the same event with a token for its own type
    assert _status(redis, "run-forged") == "running"
