"""step-execute through the real functions-framework app and over SQS + S3 (real moto)."""

from __future__ import annotations

from typing import Any

import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from flask.testing import FlaskClient
from redis import Redis

from shared import keys
from shared.adapters.redis_streams import RedisStreamsQueue
from shared.adapters.sqs import SqsQueue
from shared.clock import FakeClock, SystemClock
from shared.events import types as t
from shared.handlers.step_execute import SPEC as STEP_EXECUTE
from shared.handlers.step_execute import StepExecuteServices, build_services
from shared.security.tokens import sign_internal
from shared.settings import Settings, SettingsError
from tests.conftest import TEST_KEY
from tests.fakes.aws import Aws
from tests.support.apps import function_client
from tests.support.flows import TENANT, USER, fast_policy, flow_document
from tests.support.function import FunctionHarness
from tests.support.http_sink import HttpSink


@pytest.fixture()
def app(
    monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str], redis: Redis, sink: HttpSink
) -> FlaskClient:
    return function_client(monkeypatch, base_env, "step-execute", K_SINK=sink.url)


def post(client: FlaskClient, event: CloudEvent, mode: str) -> Any:
    headers, body = (to_binary if mode == "binary" else to_structured)(event)
    return client.post("/", headers=headers, data=body)


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_a_run_over_http_from_admitted_to_completed(
    app: FlaskClient,
    redis: Redis,
    sink: HttpSink,
    clock: FakeClock,
    base_env: dict[str, str],
    mode: str,
) -> None:
    harness = FunctionHarness(
        STEP_EXECUTE, redis, clock, base_env, policy=fast_policy()
    )  # only to store the flow and read queues
    harness.store_flow(flow_document("web", ["a"]))
    admitted = CloudEvent(
        {
            "type": t.RUN_ADMITTED,
            "source": "/component-orchestrator/flow-start",
            "id": "adm-1",
            "authtoken": sign_internal(
                TEST_KEY, "flow-start", SystemClock(), event_type=t.RUN_ADMITTED
            ),
        },
        {
            "flowId": "web",
            "runId": "run-web",
            "tenant": TENANT,
            "user": USER,
            "fencingToken": 4,
            "scheduledFor": 1767225600,
            "trigger": "execute",
            "msg": {"q": 1},
        },
    )
    assert post(app, admitted, mode).status_code == 200

    queue = RedisStreamsQueue(redis)
    (delivery,) = queue.receive(keys.step_queue("web", "a"), "tests", wait_seconds=0)
    message = delivery.message
    assert message is not None and message.data == {"q": 1}
    completed = CloudEvent(
        {
            "type": t.STEP_COMPLETED,
            "source": "/component-orchestrator/worker/web/a",
            "id": "done-1",
            "steptoken": message.token,
        },
        {
            "runId": "run-web",
            "stepId": "a",
            "messageId": message.message_id,
            "final": True,
            "empty": True,
        },
    )
    assert post(app, completed, mode).status_code == 200
    assert post(app, completed, mode).status_code == 200  # redelivery: harmless

    requests = sink.wait_for(1)
    ended = [r for r in requests if r.headers.get("ce-type") == t.RUN_COMPLETED]
    assert len(ended) == 1
    assert ended[0].json()["fencingToken"] == 4
    assert ended[0].headers["ce-runid"] == "run-web" and "ce-authtoken" in ended[0].headers

    forged = CloudEvent(
        dict(completed.get_attributes(), id="forged", steptoken="x.y.z"), completed.get_data()
    )
    response = post(app, forged, mode)
    assert response.status_code == 401 and "x.y.z" not in response.get_data(as_text=True)


# --- SQS + S3 --------------------------------------------------------------------------------
def sqs_harness(
    redis: Redis, clock: FakeClock, base_env: dict[str, str], aws: Aws
) -> FunctionHarness[StepExecuteServices]:
    env = {
        **base_env,
        "QUEUE_BACKEND": "sqs",
        "AWS_ENDPOINT_URL": aws.endpoint_url,
        "CLAIM_CHECK_BUCKET": aws.bucket,
    }
    services = build_services(Settings.from_env(env), clock, redis)
    assert isinstance(services.queue, SqsQueue)
    return FunctionHarness(STEP_EXECUTE, redis, clock, env, services=services, policy=fast_policy())


def test_a_run_over_sqs_with_a_big_body_through_s3(
    redis: Redis, clock: FakeClock, base_env: dict[str, str], aws: Aws
) -> None:
    harness = sqs_harness(redis, clock, base_env, aws)
    harness.store_flow(flow_document("big", ["a", "b"], [("a", "b")]))
    harness.admit("big")
    blob = "z" * (1100 * 1024)  # over the 1 MiB queues SQS (and moto) create
    received: list[Any] = []

    def source(msg: dict[str, Any], fields: dict[str, Any]) -> dict[str, str]:
        return {"blob": blob}

    def sink(msg: dict[str, Any], fields: dict[str, Any]) -> None:
        received.append(msg["data"])
        assert aws.objects()  # while b works, its body waits in the claim-check bucket

    harness.run_workers("big", {"a": source, "b": sink})
    assert received == [{"blob": blob}]
    assert harness.run().status == "completed"
    assert aws.objects() == []  # deleted after consumption


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RUN_RETENTION_SECONDS", "-1"),
        ("STEP_TICK_WORK_SECONDS", "soon"),
        ("STEP_RECLAIM_IDLE_SECONDS", "x"),
        ("FLOW_START_WORK_THROUGH_SECONDS", "3600"),
    ],
)
def test_bad_tick_settings_stop_the_function_at_start(
    base_env: dict[str, str], name: str, value: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**base_env, name: value})
    assert name in str(caught.value)


def test_tick_settings_reach_the_services(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    env = {**base_env, "STEP_TICK_WORK_SECONDS": "7", "RUN_RETENTION_SECONDS": "600"}
    services = build_services(Settings.from_env(env), clock, redis)
    assert (services.tick_work_seconds, services.retention_seconds) == (7.0, 600.0)
