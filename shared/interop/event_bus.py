"""The hub's event bus and our CloudEvents, one to the other (docs/oih.md).

OIH services publish on the RabbitMQ topic exchange `event-bus` with the event name as the
routing key and the body `{"headers": {"name", "createdAt", "serviceName"}, "payload"}`
(lib/event-bus of the hub). Inbound, the control events the hub sends the orchestrator become
CloudEvents of our catalogue; outbound, the status events the hub listens to go back under their
OIH names. Pure functions: the AMQP side is shared.adapters.event_bus, the process that runs
both directions shared.local.bridge.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from shared.errors import InvalidEvent
from shared.events import types as t

EXCHANGE = "event-bus"
SERVICE_NAME = "component-orchestrator"  # our queue on the bus, as OIH names its services'
SOURCE = "/oih/event-bus"
# what the hub sends us (the original orchestrator subscribes to exactly these)
INBOUND = frozenset(t.FLOW_CONTROL_TYPES | t.COMPONENT_CONTROL_TYPES)
# what the hub listens to from us (the original publishes these)
OUTBOUND = frozenset(t.DEPLOYMENT_STATUS_TYPES | t.COMPONENT_STATUS_TYPES)
MAX_MESSAGE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class BusEvent:
    """One message as it travels on the hub's bus."""

    name: str
    payload: Any
    created_at: int = 0  # milliseconds, as the hub's Event sets it
    service_name: str = ""

    def body(self) -> bytes:
        headers: dict[str, Any] = {"name": self.name, "createdAt": self.created_at}
        if self.service_name:
            headers["serviceName"] = self.service_name
        return json.dumps({"headers": headers, "payload": self.payload}).encode()


def parse_message(routing_key: str, body: bytes) -> BusEvent:
    """A message from the bus; InvalidEvent names what is wrong with it."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise InvalidEvent(f"body: {len(body)} bytes, more than {MAX_MESSAGE_BYTES}")
    try:
        document = json.loads(body)
    except json.JSONDecodeError as exc:
        raise InvalidEvent(f"body: not JSON ({exc.msg})") from exc
    except UnicodeDecodeError as exc:
        raise InvalidEvent("body: not UTF-8 JSON") from exc
    if not isinstance(document, dict):
        raise InvalidEvent("body: must be an object {headers, payload}")
    headers = document.get("headers")
    headers = headers if isinstance(headers, dict) else {}
    name = headers.get("name") or routing_key
    if not isinstance(name, str) or not name:
        raise InvalidEvent("headers.name: required")
    created = headers.get("createdAt")
    return BusEvent(
        name=name,
        payload=document.get("payload", {}),
        created_at=int(created) if isinstance(created, int | float) else 0,
        service_name=str(headers.get("serviceName") or ""),
    )


def inbound_type(event: BusEvent) -> str | None:
    """Our event type for a hub event we take, else None (not for us: acknowledged, skipped)."""
    full = t.PREFIX + event.name
    return full if full in INBOUND else None


def inbound_id(event: BusEvent) -> str:
    """The same message redelivered gets the same id, so our functions see it once. The hub's
    messages carry no id of their own: name, time and content make one."""
    content = json.dumps(event.payload, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(f"{event.name}\x1f{event.created_at}\x1f{content}".encode())
    return f"bus-{digest.hexdigest()[:32]}"


def outbound(event_type: str, data: Any, now_ms: int) -> BusEvent | None:
    """The bus message for one of our events the hub listens to, else None."""
    if event_type not in OUTBOUND:
        return None
    return BusEvent(t.short(event_type), data, now_ms, SERVICE_NAME)
