"""Attacks of tenant A (acme) on what belongs to tenant B (rival), item 7 of the isolation issue:
another tenant's private component, its global components (`components.control`), telling
which flow ids exist elsewhere, made-up ids whose tombstones stayed for ever, and more flows
than a tenant's budget.

Through the real deploy and flow-start apps (functions-framework, HTTP requests), auth on,
against the embedded IAM (JWKS, token and user APIs over HTTP), the fake Kubernetes API, the
fake Component Repository over HTTP and a real Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudevents.conversion import to_binary
from flask.testing import FlaskClient
from redis import Redis

from shared import keys
from shared.clock import FakeClock
from shared.deployment import records as deploy_records
from shared.events import FlowDocument
from shared.model import flows
from tests.deploy_harness import flow_doc, step
from tests.fakes.component_repo import FakeComponentRepo
from tests.fakes.iam import FakeIam
from tests.fakes.kube_api import FakeKubeApi
from tests.support.apps import deployed_functions
from tests.support.events import cloudevent
from tests.support.http_sink import HttpSink

TOMBSTONE_TTL = 3600
MAX_FLOWS = 2


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
    component_repo.add("comp", replicas=1)  # public
    component_repo.add("rival-private", access="private", tenant="rival", image="rival/secret:1")
    component_repo.add("acme-private", access="private", tenant="acme", image="acme/own:1")
    component_repo.add(
        "alice-owned", access="private", owners=[{"id": "alice", "type": "user"}], image="a/o:1"
    )
    component_repo.add("unmarked", access=None, image="who/knows:1")  # the model's default
    component_repo.add("rival-global", is_global=True, access="private", tenant="rival")
    component_repo.add("acme-global", is_global=True, access="private", tenant="acme")
    iam.add_user("alice", "acme")
    iam.add_user("bob", "rival")
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"defaults:\n  max_flows: {MAX_FLOWS}\n")
    with HttpSink() as sink:
        env = {
            **base_env,
            **iam.env(),
            "ORCHESTRATOR_POLICY_FILE": str(policy),
            "K_SINK": sink.url,
            "FLOW_TOMBSTONE_TTL_SECONDS": str(TOMBSTONE_TTL),
        }
        with deployed_functions(
            monkeypatch, tmp_path, redis, clock, kube_api, component_repo, env
        ) as client:
            yield client


def post(client: FlaskClient, event_type: str, data: Any, token: str | None = None) -> Any:
    extensions = {"authtoken": token} if token else {}
    headers, body = to_binary(cloudevent(event_type, data, **extensions))
    return client.post("/", headers=headers, data=body)


def alice(iam: FakeIam, *permissions: str) -> str:
    return iam.token(tenant="acme", sub="alice", permissions=permissions or ("flows.control",))


def bob(iam: FakeIam, *permissions: str) -> str:
    return iam.token(tenant="rival", sub="bob", permissions=permissions or ("flows.control",))


def admin(iam: FakeIam) -> str:
    return iam.token(tenant=None, sub="root", roles=("ADMIN",), permissions=())


def start(apps: Callable[[str], FlaskClient], document: dict[str, Any], token: str) -> list[int]:
    return [
        post(apps(function), "flow.starting", document, token).status_code
        for function in ("deploy", "flow-start")
    ]


def images(kube: FakeKubeApi) -> set[str]:
    return {
        container["image"]
        for deployment in kube.objects("deployments")
        for container in deployment["spec"]["template"]["spec"]["containers"]
    }


# --- a flow may use a component only if it is public or its tenant's own -----------------------
def test_a_flow_cannot_use_another_tenants_private_component(
    apps: Callable[[str], FlaskClient], iam: FakeIam, kube_api: FakeKubeApi, redis: Redis
) -> None:
    """alice's flow names rival's private component: the flow fails exactly as for a component
    that does not exist, and rival's image never runs."""
    token = alice(iam)
    for flow_id, component in (("f-theirs", "rival-private"), ("f-none", "no-such-thing")):
        document = flow_doc(flow_id, [step("a", component)])
        assert start(apps, document, token) == [200, 200]
    theirs = deploy_records.load(redis, "flow", "f-theirs")
    none = deploy_records.load(redis, "flow", "f-none")
    assert theirs is not None and none is not None
    assert (theirs.status, none.status) == ("failed", "failed")
    assert theirs.reason.replace("rival-private", "X") == none.reason.replace("no-such-thing", "X")
    assert "rival/secret:1" not in images(kube_api)
    assert kube_api.objects("deployments") == []


@pytest.mark.parametrize(
    "component",
    ["comp", "acme-private", "alice-owned"],
    ids=["a public one", "its tenant's private one", "one its user owns"],
)
def test_a_flow_uses_a_public_or_its_own_component(
    apps: Callable[[str], FlaskClient], iam: FakeIam, redis: Redis, component: str
) -> None:
    assert start(apps, flow_doc("f1", [step("a", component)]), alice(iam)) == [200, 200]
    record = deploy_records.load(redis, "flow", "f1")
    assert record is not None and record.status == "started", record


def test_a_component_without_access_is_private_as_in_the_repository(
    apps: Callable[[str], FlaskClient], iam: FakeIam, redis: Redis
) -> None:
    assert start(apps, flow_doc("f1", [step("a", "unmarked")]), alice(iam)) == [200, 200]
    record = deploy_records.load(redis, "flow", "f1")
    assert record is not None and record.status == "failed"


# --- components.control is scoped by tenant (admins aside) ----------------------------------
def test_components_control_reaches_only_the_callers_tenants_components(
    apps: Callable[[str], FlaskClient], iam: FakeIam, kube_api: FakeKubeApi, redis: Redis
) -> None:
    deploy = apps("deploy")
    mallory = alice(iam, "components.control")
    # A starts B's global component: refused, nothing applied
    response = post(deploy, "component.starting", {"id": "rival-global"}, mallory)
    assert response.status_code == 403, response.get_data(as_text=True)
    assert kube_api.objects("deployments") == []
    assert deploy_records.load(redis, "component", "rival-global") is None
    # an admin starts it; A cannot stop it
    assert post(deploy, "component.starting", {"id": "rival-global"}, admin(iam)).status_code == 200
    assert len(kube_api.objects("deployments")) == 1
    response = post(deploy, "component.stopping", {"id": "rival-global"}, mallory)
    assert response.status_code == 403, response.get_data(as_text=True)
    assert len(kube_api.objects("deployments")) == 1
    record = deploy_records.load(redis, "component", "rival-global")
    assert record is not None and record.live
    # B controls its own; A its own
    rival = bob(iam, "components.control")
    assert post(deploy, "component.stopping", {"id": "rival-global"}, rival).status_code == 200
    assert kube_api.objects("deployments") == []
    assert post(deploy, "component.starting", {"id": "acme-global"}, mallory).status_code == 200
    assert len(kube_api.objects("deployments")) == 1


# --- unknown and foreign flow ids get the same answer ---------------------------------------
def _shape(response: Any, flow_id: str) -> tuple[int, str]:
    return response.status_code, response.get_data(as_text=True).replace(flow_id, "<id>")


def test_another_tenants_flow_id_is_answered_as_an_unknown_one(
    apps: Callable[[str], FlaskClient], iam: FakeIam, kube_api: FakeKubeApi, redis: Redis
) -> None:
    """A probes ids: B's flow and an id nobody has get the same status and the same body, for
    flow.execute and for flow.stopping; and B's flow is untouched."""
    assert start(apps, {**flow_doc("b1", tenant="rival", owner="bob")}, bob(iam)) == [200, 200]
    flow_start, token = apps("flow-start"), alice(iam)
    foreign = post(flow_start, "flow.execute", {"flowId": "b1", "msg": {}}, token)
    unknown = post(flow_start, "flow.execute", {"flowId": "zz", "msg": {}}, token)
    assert _shape(foreign, "b1") == _shape(unknown, "zz")
    assert foreign.status_code == 422
    for function in ("deploy", "flow-start"):
        foreign = post(apps(function), "flow.stopping", {"id": "b1"}, token)
        unknown = post(apps(function), "flow.stopping", {"id": "zz"}, token)
        assert _shape(foreign, "b1") == _shape(unknown, "zz")
        assert foreign.status_code == 200
    stored = flows.get(redis, "b1")
    assert stored is not None and stored.flow.tenant == "rival"
    record = deploy_records.load(redis, "flow", "b1")
    assert record is not None and record.status == "started"
    assert len(kube_api.objects("deployments")) == 1
    # B still runs its flow (its execute reaches admission; not deployed yet here is fine)
    assert post(flow_start, "flow.execute", {"flowId": "b1", "msg": {}}, bob(iam)).status_code in (
        200,
        202,
    )


# --- tombstones expire ------------------------------------------------------------------------
def test_tombstones_of_made_up_flow_ids_expire(
    apps: Callable[[str], FlaskClient], iam: FakeIam, redis: Redis
) -> None:
    token = alice(iam)
    made_up = [f"made-up-{n}" for n in range(5)]
    for flow_id in made_up:
        for function in ("deploy", "flow-start"):
            assert post(apps(function), "flow.stopping", {"id": flow_id}, token).status_code == 200
    for flow_id in made_up:
        assert redis.exists(keys.flow_document(flow_id))  # the tombstone guards late starts
        assert 0 < redis.ttl(keys.flow_document(flow_id)) <= TOMBSTONE_TTL
    # a stopped flow's tombstone expires too; starting it again makes it permanent again
    assert start(apps, flow_doc("f1"), token) == [200, 200]
    assert redis.ttl(keys.flow_document("f1")) == -1
    for function in ("deploy", "flow-start"):
        assert post(apps(function), "flow.stopping", {"id": "f1"}, token).status_code == 200
    assert 0 < redis.ttl(keys.flow_document("f1")) <= TOMBSTONE_TTL
    restarted = {**flow_doc("f1"), "updatedAt": "2030-01-01T00:00:00Z"}  # newer than the stop
    assert start(apps, restarted, token) == [200, 200]
    assert redis.ttl(keys.flow_document("f1")) == -1


def test_state_of_the_previous_release_is_upgraded_by_a_tick(
    apps: Callable[[str], FlaskClient], iam: FakeIam, redis: Redis
) -> None:
    """Written the old way: tombstones without expiry, wanted flows in no tenant flow set.
    The first flow-start tick gives the tombstones a TTL and counts the flows."""
    redis.hset(keys.flow_document("old-stop"), mapping={"stopped": "1", "version": "5"})
    for n in range(MAX_FLOWS):
        flow = FlowDocument.parse(flow_doc(f"old-{n}"))
        flows.upsert(redis, flow, None)
    redis.delete(keys.tenant_flows("acme"))  # as the previous release left them
    assert redis.ttl(keys.flow_document("old-stop")) == -1
    tick = {"time": "2026-01-01T00:00:00Z"}
    assert post(apps("flow-start"), "orchestrator.tick", tick).status_code == 200
    assert 0 < redis.ttl(keys.flow_document("old-stop")) <= TOMBSTONE_TTL
    assert redis.smembers(keys.tenant_flows("acme")) == {b"old-0", b"old-1"}
    # so the old flows count against the budget
    assert start(apps, flow_doc("new"), alice(iam))[1] == 429


# --- at most max_flows flows per tenant ------------------------------------------------------
def test_a_tenant_over_max_flows_gets_429_and_nobody_else_notices(
    apps: Callable[[str], FlaskClient], iam: FakeIam, kube_api: FakeKubeApi, redis: Redis
) -> None:
    token = alice(iam)
    for n in range(MAX_FLOWS):
        assert start(apps, flow_doc(f"f{n}"), token) == [200, 200]
    for function in ("deploy", "flow-start"):
        response = post(apps(function), "flow.starting", flow_doc("one-too-many"), token)
        assert response.status_code == 429, response.get_data(as_text=True)
        body = response.get_json()
        assert body["budget"] == "max_flows" and "max_flows" in body["message"]
        assert response.headers["Retry-After"]
    # nothing was stored or deployed for it
    assert flows.get(redis, "one-too-many", include_stopped=True) is None
    assert deploy_records.load(redis, "flow", "one-too-many") is None
    assert not redis.exists(keys.schedule("one-too-many"))
    assert len(kube_api.objects("deployments")) == MAX_FLOWS
    # A may still update its flows; B is not affected at all
    assert start(apps, flow_doc("f0"), token) == [200, 200]
    assert start(apps, flow_doc("b1", tenant="rival", owner="bob"), bob(iam)) == [200, 200]
    # a stop frees a place
    for function in ("deploy", "flow-start"):
        assert post(apps(function), "flow.stopping", {"id": "f0"}, token).status_code == 200
    assert start(apps, flow_doc("one-too-many"), token) == [200, 200]
