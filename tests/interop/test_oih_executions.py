"""The original orchestrator's HTTP reads (services/component-orchestrator/src/HttpApi.js):
`GET /executions?filter[flowId]=<id>` and `GET /executions/<execId>`, on step-execute's real
app with the IAM required (the fake IAM over HTTP): the same paths, query and answer shapes
(`{"data": ...}`, `{"error": ...}`), scoped by tenant, which the original was not."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from redis import Redis

from shared.clock import FakeClock
from shared.handlers.step_execute import SPEC as STEP_EXECUTE
from shared.runtime import function as runtime_function
from tests.fakes.iam import FakeIam
from tests.support.apps import function_client
from tests.support.flows import fast_policy, flow_doc
from tests.support.function import FunctionHarness


@pytest.fixture
def runs(redis: Redis, clock: FakeClock, base_env: dict[str, str]) -> FunctionHarness[Any]:
    """Two runs of acme's flow (one ended), one of rival's, as step-execute records them."""
    steps = FunctionHarness(STEP_EXECUTE, redis, clock, base_env, policy=fast_policy())
    steps.store_flow(flow_doc("acme-flow", tenant="acme", cron=None))
    steps.store_flow(flow_doc("rival-flow", tenant="rival", owner="u9", cron=None))
    steps.admit("acme-flow", "run-a1", {"data": {"n": 1}}, tenant="acme")
    clock.advance(5)
    steps.run_workers("acme-flow", {"a": lambda msg, fields: msg["data"]})  # run-a1 completes
    clock.advance(5)
    steps.admit("acme-flow", "run-a2", tenant="acme")
    steps.admit("rival-flow", "run-r1", tenant="rival")
    return steps


@pytest.fixture
def api(
    monkeypatch: pytest.MonkeyPatch,
    base_env: dict[str, str],
    iam: FakeIam,
    clock: FakeClock,
    runs: FunctionHarness[Any],
) -> Iterator[FlaskClient]:
    monkeypatch.setattr(runtime_function, "SystemClock", lambda: clock)  # the IAM's clock
    env = {**base_env, **iam.env(), "ORCHESTRATOR_AUTH": "required"}
    yield function_client(monkeypatch, env, "step-execute")


def get(api: FlaskClient, path: str, token: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = api.get(path, headers=headers)
    return answer.status_code, answer.get_json()


def reader(iam: FakeIam, tenant: str, *permissions: str) -> str:
    return iam.token(
        tenant=tenant, sub=f"{tenant}-user", permissions=permissions or ("flows.read",)
    )


def test_a_flows_executions_running_first_then_ended_in_the_originals_shape(
    api: FlaskClient, iam: FakeIam
) -> None:
    status, body = get(api, "/executions?filter[flowId]=acme-flow", reader(iam, "acme"))
    assert status == 200
    assert [(e["flowExecId"], e["status"]) for e in body["data"]] == [
        ("run-a2", "running"),
        ("run-a1", "completed"),
    ]
    running, ended = body["data"]
    assert running["flowId"] == "acme-flow" and running["tenant"] == "acme"
    assert ended["endedAt"] is not None and ended["updatedAt"] > ended["createdAt"]
    assert {"errors", "steps", "messages", "runId", "user", "trigger"} <= running.keys()
    status, body = get(api, "/executions/run-a1", reader(iam, "acme"))
    assert status == 200 and body["data"] == ended


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/executions", 400, "filter[flowId] is required."),
        ("/executions?filter[flowId]=", 400, "filter[flowId] is required."),
        ("/executions/run-nope", 404, "Execution not found"),
        ("/executions/run-r1", 404, "Execution not found"),  # rival's: as an unknown id
    ],
    ids=["no filter", "empty filter", "unknown id", "another tenant's id"],
)
def test_the_originals_refusals(
    api: FlaskClient, iam: FakeIam, path: str, status: int, error: str
) -> None:
    assert get(api, path, reader(iam, "acme")) == (status, {"error": error})


def test_another_tenants_flow_lists_nothing_and_an_admin_sees_it(
    api: FlaskClient, iam: FakeIam
) -> None:
    path = "/executions?filter[flowId]=rival-flow"
    assert get(api, path, reader(iam, "acme")) == (200, {"data": []})
    admin = iam.token(tenant=None, sub="root", permissions=("all",))
    status, body = get(api, path, admin)
    assert status == 200 and [e["flowExecId"] for e in body["data"]] == ["run-r1"]


@pytest.mark.parametrize(
    ("token", "status"),
    [(None, 401), ("not-a-token", 401), ("no-permission", 403)],
    ids=["no token", "a token the IAM does not know", "without flows.read"],
)
def test_the_caller_must_hold_a_token_with_flows_read(
    api: FlaskClient, iam: FakeIam, token: str | None, status: int
) -> None:
    if token == "no-permission":
        token = reader(iam, "acme", "flows.control")
    code, body = get(api, "/executions?filter[flowId]=acme-flow", token)
    assert code == status and "error" in body and "data" not in body


def test_a_post_to_executions_is_not_a_read(api: FlaskClient) -> None:
    """Any POST is a CloudEvent to the function: without an envelope, 400 naming it."""
    answer = api.post("/executions", data=b"{}")
    assert answer.status_code == 400 and answer.get_json()["error"] == "InvalidEvent"
