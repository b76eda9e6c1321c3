"""The orchestrator against an IAM that behaves as the hub's (services/iam): opaque tokens
checked by introspection and answered as account documents, `all` as the admin permission,
and the token-create body exactly as services/iam/src/routes/tokens.js reads it (the fake
refuses what the real one cannot take, so the previous release's body cannot come back).

Over HTTP into the real deploy and flow-start apps, auth on, IAM_INTROSPECT_URL only (as in
an OIH deployment: no JWKS), the fake Kubernetes API, a real Redis; the flow.starting is the
Flow Repository's (tests/fixtures/oih/flow.starting.json)."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cloudevents.conversion import to_binary
from flask.testing import FlaskClient
from redis import Redis

from shared.adapters.iam import IamVerifier, identity_from_claims
from shared.clock import FakeClock
from shared.deployment import records as deploy_records
from shared.errors import Forbidden, Unauthorized, Unprocessable
from shared.events import types as t
from shared.model import flows
from shared.runtime.auth import Authorizer
from shared.settings import Settings
from tests.conftest import TEST_KEY
from tests.fakes.component_repo import FakeComponentRepo
from tests.fakes.iam import FakeIam
from tests.fakes.kube_api import FakeKubeApi
from tests.support.apps import deployed_functions
from tests.support.events import cloudevent
from tests.support.http_sink import HttpSink
from tests.support.oih import FIXTURES

FLOW: dict[str, Any] = json.loads((FIXTURES / "flow.starting.json").read_text())["data"]
TENANT = next(o["id"] for o in FLOW["owners"] if o["type"] == "tenant")
USER = FLOW["startedBy"]
HUB = "663a1f0c2b7e4a0012d4a0ff"  # the hub's service account (an ObjectId, as in the hub)
COMPONENTS = sorted({node["componentId"] for node in FLOW["graph"]["nodes"]})


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
    sink: HttpSink,
) -> Iterator[Callable[[str], FlaskClient]]:
    for component in COMPONENTS:
        component_repo.add(component, replicas=1)
    iam.add_user(USER, TENANT)
    env = {
        **base_env,
        "IAM_INTROSPECT_URL": iam.introspect_url,
        "IAM_URL": iam.url,
        "IAM_SERVICE_TOKEN": iam.service_token,
        "K_SINK": sink.url,
        "HUB_SERVICE_ACCOUNTS": HUB,
    }
    with deployed_functions(
        monkeypatch, tmp_path, redis, clock, kube_api, component_repo, env
    ) as client:
        yield client


def post(client: FlaskClient, event_type: str, data: Any, token: str) -> Any:
    headers, body = to_binary(cloudevent(event_type, data, authtoken=token))
    return client.post("/", headers=headers, data=body)


@pytest.mark.parametrize(
    "caller",
    ["service account", "admin by permission all", "admin by role ADMIN (deprecated)"],
)
def test_the_flow_repositorys_flow_starting_with_an_opaque_hub_token_deploys_for_started_by(
    apps: Callable[[str], FlaskClient],
    iam: FakeIam,
    kube_api: FakeKubeApi,
    redis: Redis,
    sink: HttpSink,
    caller: str,
) -> None:
    token = {
        "service account": lambda: iam.issue_opaque_token(
            TENANT, HUB, ["flows.control", "components.control"]
        ),
        "admin by permission all": lambda: iam.issue_opaque_token(None, "root", ["all"]),
        "admin by role ADMIN (deprecated)": lambda: iam.issue_opaque_token(
            None, "root", [], roles=["ADMIN"]
        ),
    }[caller]()
    assert "." not in token  # opaque: no JWKS could check it
    for function in ("deploy", "flow-start"):
        response = post(apps(function), t.FLOW_STARTING, copy.deepcopy(FLOW), token)
        assert response.status_code == 200, response.get_data(as_text=True)
    # the flow token: created for the startedBy user with the body the hub's IAM reads
    [body] = iam.token_bodies
    assert set(body) == {"accountId", "expiresIn", "description", "customPermissions", "new"}
    assert body["accountId"] == USER and body["new"] is True
    record = deploy_records.load(redis, "flow", FLOW["id"])
    assert record is not None and record.user == USER
    tokens = {s["data"]["FLOW_TOKEN"] for s in kube_api.objects("secrets")}  # one per step
    [flow_token] = [base64.b64decode(raw).decode() for raw in tokens]
    identity = iam.introspect(flow_token)
    assert identity is not None and (identity["sub"], identity["tenant"]) == (USER, TENANT)
    stored = flows.get(redis, FLOW["id"])
    assert stored is not None and stored.flow.user == USER
    # and the event that goes back to the hub
    started = [r for r in sink.wait_for(1) if r.headers["ce-type"] == t.FLOW_STARTED]
    assert started and started[0].json()["id"] == FLOW["id"]


def test_a_user_token_of_another_tenant_is_refused_and_nothing_is_deployed(
    apps: Callable[[str], FlaskClient], iam: FakeIam, kube_api: FakeKubeApi
) -> None:
    token = iam.issue_opaque_token("another-tenant", USER, ["flows.control"])
    response = post(apps("deploy"), t.FLOW_STARTING, copy.deepcopy(FLOW), token)
    assert response.status_code == 403
    assert kube_api.objects("secrets") == [] and iam.token_bodies == []


# ------------------------------------------------------------------ the fake refuses as the hub
PREVIOUS_BODY = {  # what the previous release sent: the hub errors inside its route on it
    "accountId": USER,
    "inquirer": "component-orchestrator",
    "expiresIn": -1,
    "description": "Created by component-orchestrator for flow f1",
    "purpose": "flow",
    "forceNew": True,
    "customPermissions": ["secrets.secret.readRaw"],
    "tenant": TENANT,
    "flowId": "f1",
}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({}, "forceNew"),
        ({"forceNew": None}, "inquirer"),
        ({"forceNew": None, "inquirer": None}, "flowId, tenant"),
        ({"forceNew": None, "inquirer": None, "tenant": None, "flowId": None, "new": "yes"}, "new"),
    ],
    ids=["forceNew", "inquirer not an ObjectId", "fields the hub does not read", "new not a bool"],
)
def test_the_fake_iam_refuses_token_bodies_the_hubs_cannot_take(
    iam: FakeIam, change: dict[str, Any], named: str
) -> None:
    body = {k: v for k, v in {**PREVIOUS_BODY, **change}.items() if v is not None}
    response = requests.post(
        iam.url + "/api/v1/tokens",
        json=body,
        headers={"Authorization": f"Bearer {iam.service_token}"},
        timeout=10,
    )
    assert response.status_code == 400 and named in response.json()["error"]
    assert iam.live_tokens() == []


def test_the_fake_iam_takes_an_object_id_inquirer(iam: FakeIam) -> None:
    iam.add_user(USER, TENANT)
    body = {"accountId": USER, "inquirer": HUB, "expiresIn": -1, "new": True}
    response = requests.post(
        iam.url + "/api/v1/tokens",
        json=body,
        headers={"Authorization": f"Bearer {iam.service_token}"},
        timeout=10,
    )
    assert response.status_code == 200 and response.json()["id"] in iam.live_tokens()


# ------------------------------------------------------------------ opaque vs JWT routing
def authorizer(iam: FakeIam, clock: FakeClock, *, jwks: bool) -> Authorizer:
    settings = Settings(
        redis_url="redis://127.0.0.1:1/0",
        orchestrator_key=TEST_KEY,
        iam_introspect_url=iam.introspect_url,
        iam_service_token=iam.service_token,
        iam_jwks_url=iam.jwks_url if jwks else None,
        iam_issuer=iam.issuer if jwks else None,
        iam_audience=iam.audience if jwks else None,
    )
    return Authorizer(settings, clock, flow_tenant={"f-acme": "acme"}.get)


def execute(token: str) -> Any:
    return cloudevent("flow.execute", {"flowId": "f-acme"}, authtoken=token)


def test_beside_a_jwks_a_jwt_is_checked_locally_and_an_opaque_token_introspected(
    iam: FakeIam, clock: FakeClock
) -> None:
    auth = authorizer(iam, clock, jwks=True)
    jwt_token = iam.token("acme", "alice", ("flows.control",))
    assert auth.authorize(execute(jwt_token), {"flowId": "f-acme"}).subject == "alice"
    assert iam.hits.get("/api/v1/tokens/introspect", 0) == 0 and iam.jwks_hits == 1
    opaque = iam.issue_opaque_token("acme", "bob", ["flows.control"])
    principal = auth.authorize(execute(opaque), {"flowId": "f-acme"})
    assert (principal.subject, principal.tenant) == ("bob", "acme")
    assert iam.hits["/api/v1/tokens/introspect"] == 1


def test_an_opaque_token_without_introspection_is_refused_without_asking(
    iam: FakeIam, clock: FakeClock
) -> None:
    verifier = IamVerifier(
        clock=clock, jwks_url=iam.jwks_url, issuer=iam.issuer, audience=iam.audience
    )
    with pytest.raises(Unauthorized):
        verifier.verify(iam.issue_opaque_token("acme", "bob", ["flows.control"]))
    assert iam.hits == {}


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda f: f.issue_opaque_token("acme", "u", ["flows.control"]), "acme"),
        (lambda f: f.issue_opaque_token("acme", "u", ["flows.control"], memberships=True), "acme"),
        (lambda f: f.issue_opaque_token("globex", "u", ["flows.control"]), 422),
        (lambda f: f.issue_opaque_token("globex", "root", ["all"]), "globex"),
        (lambda f: f.issue_opaque_token(None, "root", [], roles=["ADMIN"]), None),
        (lambda f: f.issue_opaque_token("acme", "u", []), 403),
        (lambda f: f.issue_opaque_token("acme", "u", ["flows.control"], expires_in=-1), 401),
    ],
    ids=[
        "tenant at the top",
        "tenant of the active membership",
        "another tenant",
        "permission all: admin",
        "role ADMIN: admin for one more release",
        "no permission",
        "expired",
    ],
)
def test_hub_account_answers_are_mapped(
    iam: FakeIam, clock: FakeClock, make: Any, expected: object
) -> None:
    auth = authorizer(iam, clock, jwks=False)
    event = execute(make(iam))
    if expected in (401, 403, 422):  # 422: another tenant's flow is an unknown one
        refusal = {401: Unauthorized, 403: Forbidden, 422: Unprocessable}[int(str(expected))]
        with pytest.raises(refusal):
            auth.authorize(event, {"flowId": "f-acme"})
    else:
        assert auth.authorize(event, {"flowId": "f-acme"}).tenant == expected


def test_a_populated_hub_role_grants_its_permissions() -> None:
    identity = identity_from_claims(
        {
            "_id": "u1",
            "tenant": "acme",
            "permissions": [],
            "roles": [{"name": "TENANT_ADMIN", "permissions": ["flows.control", "all"]}],
        }
    )
    assert identity.roles == {"TENANT_ADMIN"} and "flows.control" in identity.permissions
    assert identity.is_admin
