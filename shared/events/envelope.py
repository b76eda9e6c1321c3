"""CloudEvent ⇄ payload: the one place incoming events are parsed and outgoing ones are built."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cloudevents.http import CloudEvent

from shared.errors import InvalidEvent
from shared.events import payloads as p
from shared.events import types as t
from shared.events.flow_document import FlowDocument
from shared.events.payloads import Payload

PAYLOADS: dict[str, type[Payload]] = {
    t.FLOW_STARTING: FlowDocument,
    t.FLOW_STOPPING: p.FlowRef,
    t.COMPONENT_STARTING: p.ComponentRef,
    t.COMPONENT_STOPPING: p.ComponentRef,
    t.TICK: p.Empty,
    t.FLOW_EXECUTE: p.FlowExecute,
    t.RUN_ADMITTED: p.RunAdmitted,
    t.USAGE_REPORTED: p.UsageReport,
    t.POLICY_VIOLATION: p.PolicyViolation,
    **dict.fromkeys(t.DEPLOYMENT_STATUS_TYPES, p.DeploymentStatus),
    **dict.fromkeys(t.COMPONENT_STATUS_TYPES, p.ComponentStatus),
    **dict.fromkeys(t.RUN_NOT_STARTED_TYPES, p.RunNotStarted),
    **dict.fromkeys(t.STEP_RESULT_TYPES, p.StepResult),
    **dict.fromkeys(t.RUN_ENDED_TYPES, p.RunEnded),
    **dict.fromkeys(t.PENALTY_TYPES, p.PenaltyChanged),
}

# Extension attributes (docs/architecture.md §4, §8). CloudEvents allows only lower-case letters
# and digits.
EXT_TENANT = "tenant"
EXT_FLOW_ID = "flowid"
EXT_RUN_ID = "runid"
EXT_AUTH_TOKEN = "authtoken"
EXT_STEP_TOKEN = "steptoken"
SECRET_EXTENSIONS = frozenset({EXT_AUTH_TOKEN, EXT_STEP_TOKEN})


@dataclass(frozen=True)
class IncomingEvent:
    """A parsed, validated event: envelope attributes plus the typed payload."""

    type: str
    source: str
    id: str
    time: float | None
    payload: Payload
    extensions: dict[str, str] = field(default_factory=dict)

    def extension(self, name: str) -> str | None:
        return self.extensions.get(name)


def _event_time(value: object) -> float | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise InvalidEvent(f"time: not an RFC 3339 time: {value!r}", problems=["time"]) from exc


def _decode_data(raw: Any) -> Any:
    """A binary-mode event whose body is not JSON reaches us as raw bytes: refuse it here."""
    if isinstance(raw, bytes | bytearray):
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidEvent("data: body is not valid JSON", problems=["data: not JSON"]) from exc
    if isinstance(raw, str):
        try:
            return json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise InvalidEvent("data: body is not valid JSON", problems=["data: not JSON"]) from exc
    return {} if raw is None else raw


def parse_event(event: CloudEvent, consumes: frozenset[str] | None = None) -> IncomingEvent:
    """Validates the envelope and the payload; raises InvalidEvent listing every problem."""
    attributes = event.get_attributes()
    problems = [
        f"{name}: required" for name in ("id", "source", "type") if not attributes.get(name)
    ]
    if problems:
        raise InvalidEvent("invalid event: " + "; ".join(problems), problems=problems)
    event_type = str(attributes["type"])
    payload_class = PAYLOADS.get(event_type)
    if payload_class is None:
        raise InvalidEvent(f"type: unknown event type {event_type!r}", problems=["type: unknown"])
    if consumes is not None and event_type not in consumes:
        raise InvalidEvent(
            f"type: this function does not consume {event_type!r}", problems=["type: not consumed"]
        )
    payload = payload_class.parse(_decode_data(event.get_data()))
    standard = {"id", "source", "type", "specversion", "time", "datacontenttype", "subject"}
    standard |= {"dataschema"}
    extensions = {k: str(v) for k, v in attributes.items() if k not in standard}
    return IncomingEvent(
        type=event_type,
        source=str(attributes["source"]),
        id=str(attributes["id"]),
        time=_event_time(attributes.get("time")),
        payload=payload,
        extensions=extensions,
    )


@dataclass(frozen=True)
class OutgoingEvent:
    """An event to emit, as stored in the outbox (never with a token: signing is at send time)."""

    id: str
    type: str
    source: str
    data: dict[str, Any]
    extensions: dict[str, str] = field(default_factory=dict)
    time: float | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                "type": self.type,
                "source": self.source,
                "data": self.data,
                "extensions": self.extensions,
                "time": self.time,
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> OutgoingEvent:
        """An outbox entry: `to_json`'s JSON, or a packed admitted entry (`unpack_admitted`)."""
        if text[: len(PACKED_ADMITTED)] in (PACKED_ADMITTED, PACKED_ADMITTED_TEXT):
            return unpack_admitted(text)
        raw = json.loads(text)
        extensions = raw.get("extensions") or {}
        return cls(
            id=str(raw["id"]),
            type=str(raw["type"]),
            source=str(raw["source"]),
            data=raw.get("data") or {},
            extensions={k: str(v) for k, v in extensions.items()},
            time=raw.get("time"),
        )

    def to_cloudevent(self, authtoken: str | None = None) -> CloudEvent:
        attributes: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "source": self.source,
            "datacontenttype": "application/json",
        }
        if self.time is not None:
            attributes["time"] = datetime.fromtimestamp(self.time, UTC).isoformat()
        schema = t.dataschema(self.type)
        if schema is not None:
            attributes["dataschema"] = schema
        attributes.update({k: v for k, v in self.extensions.items() if v})
        if authtoken:
            attributes[EXT_AUTH_TOKEN] = authtoken
        return CloudEvent(attributes, self.data)


PACKED_ADMITTED = b"!admitted\x1f"
PACKED_ADMITTED_TEXT = PACKED_ADMITTED.decode()


def unpack_admitted(text: str | bytes) -> OutgoingEvent:
    """The flow.execution.admitted event of a packed outbox entry, as the admission scripts
    write it (flow_start_common.lua `emit_admitted`): `!admitted`, time, source, type,
    scheduledFor, the run record (K.runs' JSON: id, f flow, t tenant, u user, c trigger,
    k fencing token) and the run's msg, joined by \x1f; the msg comes last and may hold
    anything. The event is the one the previous release stored whole (docs/architecture.md §7)."""
    raw = text.decode() if isinstance(text, bytes) else text
    _, when, source, event_type, scheduled_for, record_json, msg = raw.split("\x1f", 6)
    record = json.loads(record_json)
    run_id, flow_id, tenant = str(record["id"]), str(record["f"]), str(record["t"])
    data = {
        "fencingToken": record["k"],
        "flowId": flow_id,
        "runId": run_id,
        "scheduledFor": json.loads(scheduled_for),
        "tenant": tenant,
        "trigger": record["c"],
        "user": record["u"],
        "msg": json.loads(msg),
    }
    extensions = {EXT_FLOW_ID: flow_id, EXT_RUN_ID: run_id, EXT_TENANT: tenant}
    return OutgoingEvent(
        id=f"{run_id}-admitted",
        type=event_type,
        source=source,
        data=data,
        extensions=extensions,
        time=float(when),
    )


def make_event(
    event_type: str,
    payload: Payload | dict[str, Any],
    *,
    event_id: str,
    source: str,
    time: float | None = None,
    tenant: str | None = None,
    flow_id: str | None = None,
    run_id: str | None = None,
) -> OutgoingEvent:
    """Builds an outgoing event with the extension attributes of docs/architecture.md §4."""
    data = payload.to_data() if isinstance(payload, Payload) else dict(payload)
    extensions = {
        name: value
        for name, value in ((EXT_TENANT, tenant), (EXT_FLOW_ID, flow_id), (EXT_RUN_ID, run_id))
        if value
    }
    return OutgoingEvent(
        id=event_id, type=event_type, source=source, data=data, extensions=extensions, time=time
    )
