"""Attack: tenant A names someone else as the flow's user and gets a flow token for them.

Through the real deploy and flow-start apps (functions-framework, HTTP requests), auth on,
against the embedded IAM (JWKS, token and user APIs over HTTP), the fake Kubernetes API and a
real Redis. The flow's user is the caller; only an admin or the hub's service account may name
another (`startedBy`), and only one the IAM confirms belongs to the flow's tenant."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudevents.conversion import to_binary
from flask.testing import FlaskClient
from redis import Redis

from shared import keys
from shared.admission import cron
from shared.clock import FakeClock
from shared.deployment import records as deploy_records
from shared.deployment.object_names import USER_LABEL
from shared.events import types as t
from shared.model import flows
from shared.runtime import event_log
from tests.conftest import TEST_KEY
from tests.deploy_harness import flow_doc
from tests.fakes.component_repo import FakeComponentRepo
from tests.fakes.iam import FakeIam
from tests.fakes.kube_api import FakeKubeApi
from tests.support.apps import deployed_functions
from tests.support.events import cloudevent, internal
from tests.support.http_sink import HttpSink

HUB = "hub-event-bridge"  # the hub's service account (HUB_SERVICE_ACCOUNTS)


@pytest.fixture
def apps(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    base_env: dict[str, str],
    redis: Redis,
    kube_api: FakeKubeApi,
    component_repo: FakeComponentRepo,
    iam: FakeIam,
    clock: FakeClock,
) -> Iterator[Callable[[str], FlaskClient]]:
    component_repo.add("comp", replicas=1)
    iam.add_user("bob", "rival")  # another tenant's user
    iam.add_user("carol", "acme")  # a user of acme the caller is not
    with HttpSink() as sink:
        env = {**base_env, **iam.env(), "K_SINK": sink.url, "HUB_SERVICE_ACCOUNTS": HUB}
        with deployed_functions(
            monkeypatch, tmp_path, redis, clock, kube_api, component_repo, env
        ) as client:
            yield client


def post(client: FlaskClient, event_type: str, data: Any, token: str) -> Any:
    headers, body = to_binary(cloudevent(event_type, data, authtoken=token))
    return client.post("/", headers=headers, data=body)


def flow_token_subject(kube: FakeKubeApi, iam: FakeIam) -> str | None:
    [secret] = kube.objects("secrets")
    raw = secret["data"].get("FLOW_TOKEN")
    if raw is None:
        return None
    identity = iam.introspect(base64.b64decode(raw).decode())
    assert identity is not None
    return str(identity["sub"])


def doc(**fields: Any) -> dict[str, Any]:
    return {**flow_doc("f1", owner="bob"), "cron": "*/5 * * * *", **fields}


def test_a_tenant_naming_another_tenants_user_gets_a_token_for_itself(
    apps: Callable[[str], FlaskClient], iam: FakeIam, kube_api: FakeKubeApi, redis: Redis
) -> None:
    """alice (acme) names bob (rival) as owner and as startedBy: everything is alice's."""
    alice = iam.token(tenant="acme", sub="alice")
    for function in ("deploy", "flow-start"):
        response = post(apps(function), "flow.starting", doc(startedBy="bob"), alice)
        assert response.status_code == 200, response.get_data(as_text=True)
    assert flow_token_subject(kube_api, iam) == "alice"
    record = deploy_records.load(redis, "flow", "f1")
    assert record is not None and record.user == "alice"
    [deployment] = kube_api.objects("deployments")
    assert deployment["metadata"]["labels"][USER_LABEL] == "alice"
    assert cron.stored_schedule(redis, "f1")["u"] == "alice"  # type: ignore[index]  # cron runs count against alice
    stored = flows.get(redis, "f1")
    assert stored is not None and stored.flow.user == "alice"


@pytest.mark.parametrize(
    ("caller", "started_by", "status"),
    [
        pytest.param("admin", "bob", 403, id="admin names another tenant's user"),
        pytest.param("hub", "bob", 403, id="hub account names another tenant's user"),
        pytest.param("admin", "nobody", 403, id="admin names an unknown user"),
        pytest.param("admin", None, 400, id="admin names no user"),
    ],
)
def test_a_user_the_iam_does_not_confirm_gets_no_token_and_nothing_runs(
    apps: Callable[[str], FlaskClient],
    iam: FakeIam,
    kube_api: FakeKubeApi,
    redis: Redis,
    caller: str,
    started_by: str | None,
    status: int,
) -> None:
    token = caller_token(iam, caller)
    fields = {"startedBy": started_by} if started_by else {}
    for function in ("deploy", "flow-start"):
        response = post(apps(function), "flow.starting", doc(**fields), token)
        assert response.status_code == status, response.get_data(as_text=True)
        if status == 400:
            assert "startedBy" in response.get_data(as_text=True)
    assert iam.live_tokens() == []  # no flow token was created
    assert kube_api.objects("secrets") == [] and kube_api.objects("deployments") == []
    assert flows.get(redis, "f1") is None and cron.stored_schedule(redis, "f1") is None


@pytest.mark.parametrize("caller", ["admin", "hub"])
def test_an_admin_or_the_hub_starts_a_flow_for_a_confirmed_user(
    apps: Callable[[str], FlaskClient],
    iam: FakeIam,
    kube_api: FakeKubeApi,
    redis: Redis,
    caller: str,
) -> None:
    token = caller_token(iam, caller)
    for function in ("deploy", "flow-start"):
        response = post(apps(function), "flow.starting", doc(startedBy="carol"), token)
        assert response.status_code == 200, response.get_data(as_text=True)
    assert flow_token_subject(kube_api, iam) == "carol"
    assert cron.stored_schedule(redis, "f1")["u"] == "carol"  # type: ignore[index]
    record = deploy_records.load(redis, "flow", "f1")
    assert record is not None and record.user == "carol"


def caller_token(iam: FakeIam, caller: str) -> str:
    if caller == "admin":
        return iam.token(tenant=None, sub="root", roles=("ADMIN",))
    return iam.token(tenant="acme", sub=HUB)


# ---- flow.execute: the same rule for the runs it asks for ---------------------------------
def _started_for(
    redis: Redis, token: str, apps: Callable[[str], FlaskClient], clock: FakeClock
) -> None:
    """f1 started (flow-start) by the hub for carol, a confirmed user of acme, and deployed."""
    response = post(apps("flow-start"), "flow.starting", doc(startedBy="carol"), token)
    assert response.status_code == 200, response.get_data(as_text=True)
    started = internal("flow.started", {"id": "f1"}, key=TEST_KEY, clock=clock, sender="deploy")
    headers, body = to_binary(started)
    response = apps("flow-start").post("/", headers=headers, data=body)
    assert response.status_code == 200, response.get_data(as_text=True)


def _run_users(redis: Redis) -> list[str]:
    """The user of every run flow-start admitted or queued (its announced events)."""
    return [
        str(event.data["user"])
        for event in event_log.recent(redis, 100)
        if event.type == t.RUN_ADMITTED and isinstance(event.data, dict)
    ]


def execute(flow_started_by: str | None) -> dict[str, Any]:
    pointer: dict[str, Any] = {"_id": "f1"}
    if flow_started_by is not None:
        pointer["startedBy"] = flow_started_by
    return {"flow": pointer, "msg": {"data": {"x": 1}}}


@pytest.mark.parametrize(
    ("caller", "started_by"),
    [
        pytest.param("hub", "bob", id="hub account names another tenant's user"),
        pytest.param("admin", "bob", id="admin names another tenant's user"),
        pytest.param("hub", "nobody", id="hub account names an unknown user"),
    ],
)
def test_an_execute_naming_a_user_the_iam_does_not_confirm_is_403_and_nothing_runs(
    apps: Callable[[str], FlaskClient],
    iam: FakeIam,
    redis: Redis,
    clock: FakeClock,
    caller: str,
    started_by: str,
) -> None:
    _started_for(redis, caller_token(iam, "hub"), apps, clock)
    response = post(
        apps("flow-start"), "flow.execute", execute(started_by), caller_token(iam, caller)
    )
    assert response.status_code == 403, response.get_data(as_text=True)
    assert _run_users(redis) == []  # no run admitted or waiting, nothing announced
    assert not redis.exists(keys.waiting_runs())


@pytest.mark.parametrize(
    ("caller", "started_by", "user"),
    [
        pytest.param("hub", "dave", "dave", id="hub names another confirmed user of acme"),
        pytest.param("hub", "carol", "carol", id="hub names the flow's own user"),
        pytest.param("hub", None, "carol", id="hub names nobody: the flow's user"),
        pytest.param("alice", "bob", "alice", id="a tenant's caller naming anyone: the caller"),
    ],
)
def test_an_execute_runs_for_the_caller_or_the_confirmed_started_by(
    apps: Callable[[str], FlaskClient],
    iam: FakeIam,
    redis: Redis,
    clock: FakeClock,
    caller: str,
    started_by: str | None,
    user: str,
) -> None:
    iam.add_user("dave", "acme")
    _started_for(redis, caller_token(iam, "hub"), apps, clock)
    token = (
        iam.token(tenant="acme", sub="alice") if caller == "alice" else caller_token(iam, caller)
    )
    response = post(apps("flow-start"), "flow.execute", execute(started_by), token)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert _run_users(redis) == [user]
