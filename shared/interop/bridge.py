"""`orchestrator bridge`: the hub's RabbitMQ event bus to our broker and back (docs/oih.md).

- In: our queue `component-orchestrator` on the `event-bus` exchange, bound to the control
  events the hub sends (flow.starting, flow.stopping, flow.execute, component.starting,
  component.stopping). Each becomes a binary CloudEvent posted to the broker, with the hub
  service account's token (OIH's events carry none) and an id derived from the message, so a
  redelivered message is one event to our functions. Acknowledged once the broker took it;
  a broker that is down (5xx, no answer) gets the message back later; a refusal (4xx) is
  logged with its reason and acknowledged (the broker would refuse it again).
- Out: an HTTP endpoint the broker delivers our status events to (flow.started / stopped /
  failed, component.started / stopped / failed); each is checked to be ours (the internal
  token bound to its type) and published on the exchange under its OIH name, persistent and
  confirmed, before it is answered 202 (503 when the bus is down: the broker retries).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from shared.adapters.event_bus import EventBus
from shared.clock import Clock
from shared.errors import InvalidEvent, OrchestratorError, TemporaryError
from shared.events import types as t
from shared.events.envelope import EXT_AUTH_TOKEN
from shared.interop import event_bus as bus
from shared.runtime.cloudevent_server import CloudEventServer
from shared.security.redact import redact_text
from shared.security.tokens import verify_internal

log = logging.getLogger(__name__)

RETRY_PAUSE_SECONDS = 1.0  # before a message whose delivery failed goes back to the queue


@dataclass
class BridgeSettings:
    event_bus_url: str
    broker_url: str
    hub_token: str  # the hub service account's token, put on the events we bring in
    orchestrator_key: str  # checks that what goes out was sent by our functions
    host: str = "127.0.0.1"
    port: int = 0


class Bridge:
    def __init__(
        self,
        settings: BridgeSettings,
        clock: Clock,
        *,
        report: Callable[[str], None] = log.info,
        http: requests.Session | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.report = report
        self.http = http or requests.Session()
        self.incoming = EventBus(
            settings.event_bus_url, exchange=bus.EXCHANGE, queue=bus.SERVICE_NAME
        )
        self.outgoing = EventBus(
            settings.event_bus_url, exchange=bus.EXCHANGE, queue=bus.SERVICE_NAME
        )
        self.server = CloudEventServer(
            self.on_outbound, host=settings.host, port=settings.port, name="bridge"
        )
        self._consumer: threading.Thread | None = None

    # --- in: the bus to the broker ------------------------------------------------------------
    def on_inbound(self, routing_key: str, body: bytes) -> bool:
        try:
            message = bus.parse_message(routing_key, body)
        except InvalidEvent as exc:
            self.report(f"bus → broker: {routing_key[:80]}: refused, {exc.message}")
            return True  # a malformed message stays malformed: logged, not retried for ever
        event_type = bus.inbound_type(message)
        if event_type is None:
            return True  # the bus carries much that is not for us
        event = CloudEvent(
            {
                "type": event_type,
                "source": bus.SOURCE,
                "id": bus.inbound_id(message),
                "datacontenttype": "application/json",
                EXT_AUTH_TOKEN: self.settings.hub_token,
            },
            message.payload,
        )
        headers, data = to_binary(event)
        try:
            answer = self.http.post(
                self.settings.broker_url, headers=headers, data=data, timeout=10
            )
        except requests.RequestException as exc:
            self.report(
                f"bus → broker: {message.name} {event['id']}: broker unreachable "
                f"({type(exc).__name__}), later"
            )
            time.sleep(RETRY_PAUSE_SECONDS)
            return False
        if answer.status_code >= 500 or answer.status_code == 429:
            self.report(f"bus → broker: {message.name} {event['id']}: {answer.status_code}, later")
            time.sleep(RETRY_PAUSE_SECONDS)
            return False
        note = "" if answer.status_code < 300 else f": {redact_text(answer.text)[:200]}"
        self.report(f"bus → broker: {message.name} {event['id']} {answer.status_code}{note}")
        return True

    # --- out: the broker to the bus -----------------------------------------------------------
    def on_outbound(self, event: CloudEvent) -> int:
        event_type = str(event["type"])
        try:
            verify_internal(
                self.settings.orchestrator_key,
                str(event.get(EXT_AUTH_TOKEN) or ""),
                self.clock,
                event_type=event_type,
            )
        except OrchestratorError as exc:
            self.report(f"broker → bus: {t.short(event_type)}: refused, {exc.message}")
            return exc.status
        message = bus.outbound(event_type, event.get_data(), int(self.clock.now() * 1000))
        if message is None:
            return 202  # not something the hub listens to
        try:
            self.outgoing.publish(message.name, message.body())
        except TemporaryError as exc:
            self.report(f"broker → bus: {message.name}: {exc.message}, later")
            return 503
        self.report(f"broker → bus: {message.name} {event['id']}")
        return 202

    # --- running ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> Bridge:
        names = sorted(t.short(full) for full in bus.INBOUND)
        self._consumer = threading.Thread(
            target=self.incoming.consume, args=(names, self.on_inbound), name="bus-in", daemon=True
        )
        self._consumer.start()
        self.server.start()
        return self

    def stop(self) -> None:
        self.incoming.stop()
        self.outgoing.stop()
        self.server.stop()
        if self._consumer is not None:
            self._consumer.join(timeout=10)
