"""Payloads as the real OIH services send them (tests/fixtures/oih/, each naming its source),
sent over HTTP into the real function apps: each is accepted and has its effect."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from redis import Redis

from shared import keys
from shared.clock import SystemClock
from shared.errors import InvalidEvent
from shared.events import PAYLOADS, ComponentRef, FlowDocument, FlowExecute, FlowRef, RunAdmitted
from shared.events import types as t
from shared.events.schemas import schema_of
from shared.model import flows
from shared.security.tokens import sign_internal
from tests.conftest import TEST_KEY
from tests.fakes.component_repo import FakeComponentRepo
from tests.support.apps import function_client
from tests.support.http_sink import HttpSink
from tests.support.oih import FIXTURES, fixture

NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))


FLOW = fixture("flow.starting")["data"]
TENANT = next(o["id"] for o in FLOW["owners"] if o["type"] == "tenant")


def app(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], function: str, sink: HttpSink) -> Any:
    return function_client(
        monkeypatch, env, function, K_SINK=sink.url, FLOW_START_WORK_THROUGH_SECONDS="0"
    )


def post(client: FlaskClient, event_type: str, data: Any, event_id: str) -> Any:
    attributes = {"type": event_type, "source": "/oih/event-bus", "id": event_id}
    if event_type not in t.CONTROL_TYPES:
        attributes["authtoken"] = sign_internal(
            TEST_KEY, "tests", SystemClock(), event_type=event_type
        )
    headers, body = to_binary(CloudEvent(attributes, data))
    return client.post("/", headers=headers, data=body)


# ------------------------------------------------------------------ the fixtures themselves
def test_there_is_a_fixture_for_every_event_oih_sends_us() -> None:
    assert NAMES == [
        "component.starting",
        "component.stopping",
        "flow.execute.scheduler",
        "flow.execute.webhooks",
        "flow.starting",
        "flow.stopping",
    ]


@pytest.mark.parametrize("name", NAMES)
def test_each_fixture_names_its_source_and_parses(name: str) -> None:
    loaded = fixture(name)
    source = loaded["oih"]
    assert source["repository"] == "openintegrationhub/openintegrationhub"
    assert source["file"].endswith(".js") and source["function"] and source["commit"]
    assert loaded["type"] == t.PREFIX + name.split(".execute")[0] + (
        ".execute" if ".execute" in name else ""
    )
    PAYLOADS[loaded["type"]].parse(copy.deepcopy(loaded["data"]))


def test_the_flow_document_takes_its_tenant_from_its_owners_and_keeps_started_by() -> None:
    flow = FlowDocument.parse(copy.deepcopy(FLOW))
    assert "tenant" not in FLOW
    assert flow.tenant == TENANT and flow.id == FLOW["id"]
    assert flow.started_by == FLOW["startedBy"]
    assert flow.user == FLOW["owners"][0]["id"]


@pytest.mark.parametrize(
    ("owners", "tenant"),
    [
        ([{"id": "u1", "type": "user"}, {"id": "t1", "type": "tenant"}], "t1"),
        ([{"id": "t2", "type": "TENANT"}], "t2"),  # webhooks upper-cases owner types
    ],
)
def test_the_tenant_owner_is_found_whatever_its_case(owners: list[Any], tenant: str) -> None:
    assert FlowDocument.parse({**copy.deepcopy(FLOW), "owners": owners}).tenant == tenant


def test_a_top_level_tenant_wins_over_the_owners() -> None:
    assert FlowDocument.parse({**copy.deepcopy(FLOW), "tenant": "acme"}).tenant == "acme"


def test_ids_are_read_from_underscore_id_wherever_id_is() -> None:
    doc = {**copy.deepcopy(FLOW), "_id": FLOW["id"]}
    del doc["id"]
    assert FlowDocument.parse(doc).id == FLOW["id"]
    assert FlowRef.parse({"_id": "f1"}).id == "f1"
    assert (
        ComponentRef.parse(fixture("component.starting")["data"]).id == "663a1f0c2b7e4a0012d4e009"
    )
    assert FlowRef.parse({"id": "ours", "_id": "theirs"}).id == "ours"


@pytest.mark.parametrize("name", ["flow.execute.webhooks", "flow.execute.scheduler"])
def test_flow_execute_reads_the_flow_id_from_the_flow(name: str) -> None:
    data = fixture(name)["data"]
    execute = FlowExecute.parse(copy.deepcopy(data))
    assert execute.flow_id == FLOW["id"] and execute.msg == data["msg"]
    assert execute.msg_opts == data.get("msgOpts", {})


def test_flow_execute_without_any_flow_id_names_both_ways() -> None:
    with pytest.raises(InvalidEvent) as caught:
        FlowExecute.parse({"flow": {"graph": {}}, "msg": {}})
    assert "flowId: required (or flow._id)" in caught.value.problems


# ------------------------------------------------------------------ over HTTP, with effects
def test_flow_starting_as_the_flow_repository_sends_it(
    monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str], redis: Redis, sink: HttpSink
) -> None:
    client = app(monkeypatch, base_env, "flow-start", sink)
    response = post(client, t.FLOW_STARTING, fixture("flow.starting")["data"], "oih-1")
    assert response.status_code == 200, response.get_data(as_text=True)
    stored = flows.get(redis, FLOW["id"])
    assert stored is not None
    assert stored.flow.tenant == TENANT and stored.flow.started_by == FLOW["startedBy"]
    assert flows.tenant_of(redis, FLOW["id"]) == TENANT
    assert redis.zscore(keys.schedule_due(), FLOW["id"]) is not None  # its cron is scheduled


def test_a_flow_with_neither_tenant_nor_tenant_owner_is_refused_naming_owners(
    monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str], redis: Redis, sink: HttpSink
) -> None:
    client = app(monkeypatch, base_env, "flow-start", sink)
    data = {**copy.deepcopy(FLOW), "owners": [{"id": "u1", "type": "user"}]}
    response = post(client, t.FLOW_STARTING, data, "oih-2")
    assert response.status_code == 400
    assert "owners" in response.get_data(as_text=True)
    assert flows.get(redis, FLOW["id"]) is None


@pytest.mark.parametrize("name", ["flow.execute.webhooks", "flow.execute.scheduler"])
def test_flow_execute_as_webhooks_and_the_scheduler_send_it(
    monkeypatch: pytest.MonkeyPatch,
    base_env: dict[str, str],
    redis: Redis,
    sink: HttpSink,
    name: str,
) -> None:
    client = app(monkeypatch, base_env, "flow-start", sink)
    data = fixture(name)["data"]
    answers = [
        post(client, t.FLOW_STARTING, fixture("flow.starting")["data"], "oih-1"),
        post(client, t.FLOW_STARTED, {"id": FLOW["id"]}, "oih-2"),
        post(client, t.FLOW_EXECUTE, data, "oih-3"),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200], [a.get_json() for a in answers]
    [request] = [r for r in sink.wait_for(1) if r.headers["ce-type"] == t.RUN_ADMITTED]
    assert request.headers["ce-tenant"] == TENANT and request.headers["ce-flowid"] == FLOW["id"]
    admitted = RunAdmitted.parse(request.json())
    assert admitted.trigger == "execute" and admitted.tenant == TENANT
    # the message goes on as OIH built it (data, metadata, attachments...), with its msgOpts
    # beside them (tests/interop/test_oih_messages.py: what the first step is given)
    opts = {"msgOpts": data["msgOpts"]} if "msgOpts" in data else {}
    assert admitted.msg == {**data["msg"], **opts}


def test_our_own_execute_shape_carries_a_full_message(
    monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str], redis: Redis, sink: HttpSink
) -> None:
    client = app(monkeypatch, base_env, "flow-start", sink)
    msg = {
        "data": {"a": 1},
        "metadata": {"source": {"name": "tests"}},
        "attachments": {"f.txt": {"url": "s3://b/f.txt"}},
        "passthrough": {"step_0": {"data": {"x": 1}}},
    }
    answers = [
        post(client, t.FLOW_STARTING, {**copy.deepcopy(FLOW), "tenant": "acme"}, "own-1"),
        post(client, t.FLOW_STARTED, {"id": FLOW["id"]}, "own-2"),
        post(client, t.FLOW_EXECUTE, {"flowId": FLOW["id"], "msg": msg}, "own-3"),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200]
    [request] = [r for r in sink.wait_for(1) if r.headers["ce-type"] == t.RUN_ADMITTED]
    assert RunAdmitted.parse(request.json()).msg == msg
    assert request.headers["ce-tenant"] == "acme"


def test_flow_stopping_as_the_flow_repository_sends_it(
    monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str], redis: Redis, sink: HttpSink
) -> None:
    client = app(monkeypatch, base_env, "flow-start", sink)
    assert post(client, t.FLOW_STARTING, fixture("flow.starting")["data"], "o-1").status_code == 200
    response = post(client, t.FLOW_STOPPING, fixture("flow.stopping")["data"], "o-2")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert flows.get(redis, FLOW["id"]) is None
    assert redis.zscore(keys.schedule_due(), FLOW["id"]) is None


def test_component_stopping_as_the_component_repository_sends_it(
    monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str], redis: Redis, sink: HttpSink
) -> None:
    client = app(monkeypatch, base_env, "deploy", sink)
    response = post(client, t.COMPONENT_STOPPING, fixture("component.stopping")["data"], "c-1")
    assert response.status_code == 200, response.get_data(as_text=True)
    [request] = sink.wait_for(1)
    assert request.headers["ce-type"] == t.COMPONENT_STOPPED
    assert request.json()["id"] == "663a1f0c2b7e4a0012d4e009"


def test_component_starting_as_the_component_repository_sends_it(
    monkeypatch: pytest.MonkeyPatch,
    base_env: dict[str, str],
    redis: Redis,
    sink: HttpSink,
    component_repo: FakeComponentRepo,
) -> None:
    """deploy looks the `_id` up in the Component Repository (a fake one, over HTTP, that does
    not know it): the id it asked for and the failure that comes back name the `_id`."""
    env = {**base_env, "COMPONENT_REPOSITORY_URL": component_repo.url}
    client = app(monkeypatch, env, "deploy", sink)
    response = post(client, t.COMPONENT_STARTING, fixture("component.starting")["data"], "c-2")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert component_repo.hits == {"663a1f0c2b7e4a0012d4e009": 1}
    [request] = sink.wait_for(1)
    assert request.headers["ce-type"] == t.COMPONENT_FAILED
    assert request.json()["id"] == "663a1f0c2b7e4a0012d4e009"


@pytest.mark.parametrize("name", NAMES)
def test_each_fixture_matches_the_published_schema_of_its_type(name: str) -> None:
    loaded = fixture(name)
    validator = Draft202012Validator(schema_of(loaded["type"]))
    assert [e.message for e in validator.iter_errors(loaded["data"])] == []
    without_ids = {k: v for k, v in loaded["data"].items() if k not in ("id", "_id", "flow")}
    assert not validator.is_valid(without_ids)
