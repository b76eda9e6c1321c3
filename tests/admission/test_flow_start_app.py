"""flow-start through the real functions-framework app (functions/flow_start/main.py), with the
real handlers, a real Redis and a real HTTP sink: structured and binary mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from flask.testing import FlaskClient
from redis import Redis

from shared import keys
from shared.clock import SystemClock
from shared.events import RunAdmitted
from shared.events import types as t
from shared.security.tokens import sign_internal
from tests.conftest import TEST_KEY
from tests.support.apps import function_client
from tests.support.flows import flow_doc
from tests.support.http_sink import HttpSink


@pytest.fixture()
def app(
    monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str], redis: Redis, sink: HttpSink
) -> FlaskClient:
    return function_client(
        monkeypatch, base_env, "flow-start", K_SINK=sink.url, FLOW_START_WORK_THROUGH_SECONDS="0"
    )


def post(client: FlaskClient, event_type: str, data: Any, event_id: str, mode: str) -> Any:
    attributes = {"type": event_type, "source": "/tests", "id": event_id}
    if event_type not in t.CONTROL_TYPES and event_type != t.TICK:
        attributes["authtoken"] = sign_internal(
            TEST_KEY, "tests", SystemClock(), event_type=event_type
        )
    headers, body = (to_binary if mode == "binary" else to_structured)(CloudEvent(attributes, data))
    return client.post("/", headers=headers, data=body)


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_start_deploy_execute_over_http(
    app: FlaskClient, sink: HttpSink, redis: Redis, mode: str
) -> None:
    ok = [
        post(app, t.FLOW_STARTING, flow_doc("f1", cron="*/5 * * * *"), "e1", mode),
        post(app, t.FLOW_STARTED, {"id": "f1"}, "e2", mode),
        post(app, t.FLOW_EXECUTE, {"flowId": "f1", "msg": {"hello": [1, 2]}}, "e3", mode),
    ]
    assert [r.status_code for r in ok] == [200, 200, 200], [r.get_data(as_text=True) for r in ok]
    [request] = sink.wait_for(1)
    assert request.headers["ce-type"] == t.RUN_ADMITTED
    assert request.headers["ce-tenant"] == "acme" and request.headers["ce-flowid"] == "f1"
    assert "ce-authtoken" in request.headers  # signed for the receiving function
    admitted = RunAdmitted.parse(request.json())
    assert admitted.trigger == "execute" and admitted.msg == {"hello": [1, 2]}
    assert redis.zscore(keys.schedule_due(), "f1") is not None


@pytest.mark.parametrize(
    ("event_type", "data", "status"),
    [
        (t.FLOW_EXECUTE, {"flowId": "nope"}, 422),
        (t.FLOW_STARTING, flow_doc("f2", cron="0 0 31 2 *"), 400),
        (t.FLOW_STARTING, flow_doc("f2", timezone="Atlantis/Capital"), 400),
    ],
    ids=["execute of an unknown flow", "a cron that never fires", "an unknown zone"],
)
def test_refusals_answer_their_status(
    app: FlaskClient, event_type: str, data: dict[str, Any], status: int
) -> None:
    response = post(app, event_type, data, "e1", "binary")
    assert response.status_code == status
    assert response.get_json()["error"] in {"Unprocessable", "InvalidEvent"}


def test_over_the_waiting_cap_answers_429_with_retry_after(
    monkeypatch: pytest.MonkeyPatch,
    app: FlaskClient,
    tmp_path: Path,
    base_env: dict[str, str],
    sink: HttpSink,
) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("defaults: {max_waiting_runs: 1}\n")
    client = function_client(
        monkeypatch,
        base_env,
        "flow-start",
        K_SINK=sink.url,
        ORCHESTRATOR_POLICY_FILE=str(policy_file),
    )
    assert post(client, t.FLOW_STARTING, flow_doc("f1"), "e1", "binary").status_code == 200
    # not deployed: the first execution waits, the second is over the cap
    assert post(client, t.FLOW_EXECUTE, {"flowId": "f1"}, "e2", "binary").status_code == 200
    refused = post(client, t.FLOW_EXECUTE, {"flowId": "f1"}, "e3", "structured")
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0


def test_a_tick_over_http(app: FlaskClient, sink: HttpSink) -> None:
    assert post(app, t.TICK, {}, "tick-1", "binary").status_code == 200
