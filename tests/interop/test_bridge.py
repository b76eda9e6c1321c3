"""`orchestrator bridge` against a real RabbitMQ: OIH's event bus into the broker (an HTTP sink
here) and our status events back onto the bus, as the hub's own services publish them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pika
import pytest
import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from shared.clock import FakeClock
from shared.events import types as t
from shared.interop import event_bus as bus
from shared.interop.bridge import Bridge, BridgeSettings
from shared.security.tokens import sign_internal
from tests.conftest import TEST_KEY
from tests.support.http_sink import HttpSink

HUB_TOKEN = "hub-service-account-token"
# flow.starting as the Flow Repository publishes it (services/flow-repository: no tenant at
# the top, the tenant among the owners, startedBy)
FLOW_STARTING = {
    "id": "5f6e7d8c9b0a1f2e3d4c5b6a",
    "graph": {
        "nodes": [{"id": "step_1", "componentId": "c1", "function": "getPersons"}],
        "edges": [],
    },
    "owners": [{"id": "u-1", "type": "user"}, {"id": "t-1", "type": "tenant"}],
    "startedBy": "u-1",
}


def hub_message(name: str, payload: Any, created_at: int = 1_700_000_000_000) -> bytes:
    """The body the hub's lib/event-bus RabbitMqTransport publishes."""
    return json.dumps(
        {"headers": {"name": name, "createdAt": created_at}, "payload": payload}
    ).encode()


class HubBus:
    """A hub service on the bus: publishes like one, and listens on a queue of its own."""

    def __init__(self, url: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.channel.exchange_declare(bus.EXCHANGE, exchange_type="topic")
        self.listening = self.channel.queue_declare("", exclusive=True).method.queue
        for name in ("flow.started", "flow.stopped", "flow.failed", "component.started"):
            self.channel.queue_bind(self.listening, bus.EXCHANGE, routing_key=name)

    def publish(self, name: str, body: bytes) -> None:
        self.channel.basic_publish(bus.EXCHANGE, name, body)

    def received(self, count: int, timeout: float = 20.0) -> list[tuple[str, dict[str, Any]]]:
        got: list[tuple[str, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            method, _, body = self.channel.basic_get(self.listening, auto_ack=True)
            if method is None:
                self.connection.sleep(0.1)
                continue
            got.append((method.routing_key, json.loads(body)))
        return got


@pytest.fixture()
def broker() -> Iterator[HttpSink]:
    with HttpSink(default=202) as sink:
        yield sink


@pytest.fixture()
def bridge(amqp_vhost: str, broker: HttpSink) -> Iterator[Bridge]:
    settings = BridgeSettings(
        event_bus_url=amqp_vhost, broker_url=broker.url, hub_token=HUB_TOKEN,
        orchestrator_key=TEST_KEY,
    )  # fmt: skip
    running = Bridge(settings, FakeClock(), report=lambda line: None).start()
    yield running
    running.stop()


@pytest.fixture()
def hub(amqp_vhost: str, bridge: Bridge) -> Iterator[HubBus]:
    deadline = time.monotonic() + 20  # until the bridge has bound its queue
    connection = pika.BlockingConnection(pika.URLParameters(amqp_vhost))
    channel = connection.channel()
    while True:
        try:
            channel.queue_declare(bus.SERVICE_NAME, passive=True)
            break
        except pika.exceptions.ChannelClosedByBroker:
            assert time.monotonic() < deadline, "the bridge never declared its queue"
            channel = connection.channel()
            time.sleep(0.2)
    connection.close()
    service = HubBus(amqp_vhost)
    yield service
    service.connection.close()


def test_a_flow_repository_flow_starting_reaches_the_broker_as_a_cloudevent(
    hub: HubBus, broker: HttpSink
) -> None:
    hub.publish("flow.starting", hub_message("flow.starting", FLOW_STARTING))
    (request,) = broker.wait_for(1, timeout=20)
    assert request.headers["ce-type"] == t.FLOW_STARTING
    assert request.headers["ce-source"] == bus.SOURCE
    assert request.headers["ce-authtoken"] == HUB_TOKEN  # the hub service account's
    assert request.json() == FLOW_STARTING


def test_a_redelivered_message_is_the_same_event(hub: HubBus, broker: HttpSink) -> None:
    body = hub_message("flow.stopping", {"id": "f-1"})
    hub.publish("flow.stopping", body)
    hub.publish("flow.stopping", body)  # the hub's at-least-once: the same message again
    hub.publish("flow.stopping", hub_message("flow.stopping", {"id": "f-1"}, created_at=1))
    first, second, third = broker.wait_for(3, timeout=20)
    assert first.headers["ce-id"] == second.headers["ce-id"] != third.headers["ce-id"]


def test_a_broker_that_is_down_gets_the_message_again_later(hub: HubBus, broker: HttpSink) -> None:
    broker.answer((503, {}), (503, {}))
    hub.publish("flow.execute", hub_message("flow.execute", {"flow": {"_id": "f-1"}, "msg": {}}))
    attempts = broker.wait_for(3, timeout=30)
    assert [a.headers["ce-type"] for a in attempts] == [t.FLOW_EXECUTE] * 3
    assert len({a.headers["ce-id"] for a in attempts}) == 1


@pytest.mark.parametrize(
    ("name", "body"),
    [
        pytest.param("secret.created", hub_message("secret.created", {"id": "s"}), id="not for us"),
        pytest.param("flow.starting", b"{not json", id="malformed"),
        pytest.param("flow.starting", b'["a list"]', id="not an object"),
    ],
)
def test_what_is_not_ours_or_malformed_is_not_forwarded_and_does_not_block(
    hub: HubBus, broker: HttpSink, name: str, body: bytes
) -> None:
    hub.publish(name, body)
    hub.publish("component.starting", hub_message("component.starting", {"_id": "c-1"}))
    (request,) = broker.wait_for(1, timeout=20)  # the next message went through
    assert request.headers["ce-type"] == t.COMPONENT_STARTING
    time.sleep(0.5)
    assert len(broker.requests) == 1


def post(bridge: Bridge, event_type: str, data: Any, token: str | None) -> int:
    attributes = {"type": event_type, "source": "/component-orchestrator/deploy", "id": "e-1"}
    if token is not None:
        attributes["authtoken"] = token
    headers, body = to_binary(CloudEvent(attributes, data))
    return requests.post(bridge.url, headers=headers, data=body, timeout=10).status_code


def test_our_flow_started_goes_back_on_the_bus_under_its_oih_name(
    hub: HubBus, bridge: Bridge
) -> None:
    token = sign_internal(TEST_KEY, "deploy", FakeClock(), event_type=t.FLOW_STARTED)
    assert post(bridge, t.FLOW_STARTED, {"id": "f-1"}, token) == 202
    ((key, message),) = hub.received(1)
    assert key == "flow.started"
    assert message["payload"] == {"id": "f-1"}
    assert message["headers"]["name"] == "flow.started"
    assert message["headers"]["serviceName"] == bus.SERVICE_NAME


@pytest.mark.parametrize(
    ("token", "status"),
    [
        pytest.param(None, 401, id="no token"),
        pytest.param("forged", 401, id="not ours"),
        pytest.param(
            sign_internal(TEST_KEY, "deploy", FakeClock(), event_type=t.FLOW_STOPPED),
            403,
            id="ours, for another type",
        ),
    ],
)
def test_nothing_reaches_the_bus_that_our_functions_did_not_send(
    hub: HubBus, bridge: Bridge, token: str | None, status: int
) -> None:
    assert post(bridge, t.FLOW_STARTED, {"id": "f-1"}, token) == status
    assert hub.received(1, timeout=1.5) == []
