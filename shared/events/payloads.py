"""One frozen dataclass per event payload (docs/events.md); each validates every field at once."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from shared.errors import InvalidEvent
from shared.events.fields import FieldReader


def _json(name: str) -> Any:
    return field(metadata={"json": name})


def _json_default(name: str, default: Any) -> Any:
    return field(default=default, metadata={"json": name})


class Payload:
    """Base: `parse(data)` builds the instance or raises InvalidEvent naming every bad field."""

    event_name: ClassVar[str] = "event"

    @classmethod
    def parse(cls, data: object) -> Self:
        reader = FieldReader(data)
        instance = cls.read(reader)
        if reader.problems:
            raise InvalidEvent(
                f"invalid {cls.event_name} payload: " + "; ".join(reader.problems),
                problems=reader.problems,
            )
        return instance

    @classmethod
    def read(cls, reader: FieldReader) -> Self:
        raise NotImplementedError

    def to_data(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            name = f.metadata.get("json", f.name)
            value = getattr(self, f.name)
            if value is None:
                continue
            out[name] = value.to_data() if isinstance(value, Payload) else value
        return out


@dataclass(frozen=True)
class Empty(Payload):
    event_name: ClassVar[str] = "tick"

    @classmethod
    def read(cls, reader: FieldReader) -> Self:
        return cls()


@dataclass(frozen=True)
class _IdRef(Payload):
    """A payload that only names something by its id."""

    id: str

    @classmethod
    def read(cls, reader: FieldReader) -> Self:
        return cls(id=reader.string("id"))


@dataclass(frozen=True)
class FlowRef(_IdRef):
    """flow.stopping: {id}."""

    event_name: ClassVar[str] = "flow.stopping"


@dataclass(frozen=True)
class ComponentRef(_IdRef):
    """component.starting / component.stopping: {id} of a global component."""

    event_name: ClassVar[str] = "component"


@dataclass(frozen=True)
class DeploymentStatus(Payload):
    """flow.started / flow.stopped / flow.failed."""

    event_name: ClassVar[str] = "flow deployment status"
    id: str
    replicas: dict[str, int] = field(default_factory=dict)
    clamped: bool = False
    reason: str | None = None

    @classmethod
    def read(cls, reader: FieldReader) -> Self:
        replicas = reader.mapping("replicas")
        for node, count in replicas.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                reader.problem(f"replicas.{node}", f"must be a non-negative integer, got {count!r}")
        return cls(
            id=reader.string("id"),
            replicas={k: v for k, v in replicas.items() if isinstance(v, int)},
            clamped=reader.boolean("clamped"),
            reason=reader.optional_string("reason"),
        )


@dataclass(frozen=True)
class ComponentStatus(Payload):
    """component.started / stopped / failed."""

    event_name: ClassVar[str] = "component status"
    id: str
    reason: str | None = None

    @classmethod
    def read(cls, reader: FieldReader) -> Self:
        return cls(id=reader.string("id"), reason=reader.optional_string("reason"))


@dataclass(frozen=True)
class FlowExecute(Payload):
    """flow.execute: a webhook or manual start carrying data; never skipped."""

    event_name: ClassVar[str] = "flow.execute"
    flow_id: str = _json("flowId")
    msg: Any = _json_default("msg", None)
    msg_opts: dict[str, Any] = _json_default("msgOpts", None)

    @classmethod
    def read(cls, reader: FieldReader) -> Self:
        return cls(
            flow_id=reader.string("flowId"),
            msg=reader.raw("msg", {}),
            msg_opts=reader.mapping("msgOpts"),
        )


TRIGGERS = ("cron", "execute")


@dataclass(frozen=True)
class RunAdmitted(Payload):
    event_name: ClassVar[str] = "flow.execution.admitted"
    flow_id: str = _json("flowId")
    run_id: str = _json("runId")
    tenant: str = _json("tenant")
    user: str = _json("user")
    fencing_token: int = _json("fencingToken")
    scheduled_for: float = _json("scheduledFor")
    trigger: str = _json("trigger")
    msg: Any = _json_default("msg", None)

    @classmethod
    def read(cls, reader: FieldReader) -> Self:
        return cls(
            flow_id=reader.string("flowId"),
            run_id=reader.string("runId"),
            tenant=reader.string("tenant"),
            user=reader.string("user", required=False),
            fencing_token=reader.integer("fencingToken", minimum=0),
            scheduled_for=reader.number("scheduledFor", minimum=0),
            trigger=reader.choice("trigger", TRIGGERS) or "cron",
            msg=reader.raw("msg", {}),
        )


@dataclass(frozen=True)
class RunNotStarted(Payload):
    """flow.execution.skipped / deferred / missed."""

    event_name: ClassVar[str] = "flow.execution.skipped/deferred/missed"
    flow_id: str = _json("flowId")
    scheduled_for: float = _json("scheduledFor")
    reason: str = _json("reason")
    run_id: str | None = _json_default("runId", None)
    tenant: str | None = _json_default("tenant", None)

    @classmethod
    def read(cls, reader: FieldReader) -> Self:
        return cls(
            flow_id=reader.string("flowId"),
            scheduled_for=reader.number("scheduledFor", minimum=0),
            reason=reader.string("reason"),
            run_id=reader.optional_string("runId"),
            tenant=reader.optional_string("tenant"),
        )


@dataclass(frozen=True)
class StepResult(Payload):
    """step.completed / step.failed, sent by a component worker with its step token."""

    event_name: ClassVar[str] = "step result"
    run_id: str = _json("runId")
    step_id: str = _json("stepId")
    message_id: str = _json("messageId")
    seq: int = _json_default("seq", 0)
    final: bool = _json_default("final", True)
    data: Any = _json_default("data", None)
    attachments: list[Any] = _json_default("attachments", None)
    error: str | None = _json_default("error", None)
    # Which delivery of the message this result answers (the worker copies it from the
    # message); step-execute ignores a late failure of an earlier attempt. None: unknown.
    attempt: int | None = _json_default("attempt", None)
    # True: this event carries no output, it only ends the message's outputs (a component
    # that emitted nothing); `data` is then ignored.
    empty: bool = _json_default("empty", False)

    @classmethod
    def read(cls, reader: FieldReader) -> Self:
        attachments = reader.raw("attachments", [])
        if not isinstance(attachments, list):
            reader.problem("attachments", "must be a list")
            attachments = []
        return cls(
            run_id=reader.string("runId"),
            step_id=reader.string("stepId"),
            message_id=reader.string("messageId"),
            seq=reader.integer("seq", required=False, minimum=0),
            final=reader.boolean("final", default=True),
            data=reader.raw("data", {}),
            attachments=attachments,
            error=reader.optional_string("error"),
            attempt=_optional_count(reader, "attempt"),
            empty=reader.boolean("empty"),
        )


def _optional_count(reader: FieldReader, key: str) -> int | None:
    value = reader.integer(key, required=False, default=-1, minimum=0)
    return None if value < 0 else value


@dataclass(frozen=True)
class RunEnded(Payload):
    """flow.execution.completed / flow.execution.failed."""

    event_name: ClassVar[str] = "flow.execution.completed/failed"
    flow_id: str = _json("flowId")
    run_id: str = _json("runId")
    tenant: str = _json("tenant")
    fencing_token: int = _json("fencingToken")
    duration_ms: int = _json_default("durationMs", 0)
    steps: int = _json_default("steps", 0)
    reason: str | None = _json_default("reason", None)
    user: str | None = _json_default("user", None)

    @classmethod
    def read(cls, reader: FieldReader) -> Self:
        return cls(
            flow_id=reader.string("flowId"),
            run_id=reader.string("runId"),
            tenant=reader.string("tenant"),
            fencing_token=reader.integer("fencingToken", minimum=0),
            duration_ms=reader.integer("durationMs", required=False, minimum=0),
            steps=reader.integer("steps", required=False, minimum=0),
            reason=reader.optional_string("reason"),
            user=reader.optional_string("user"),
        )


@dataclass(frozen=True)
class UsageReport(Payload):
    event_name: ClassVar[str] = "usage.reported"
    tenant: str = _json("tenant")
    user: str = _json_default("user", "")
    flow_id: str = _json_default("flowId", "")
    cpu_ms: float = _json_default("cpuMs", 0.0)
    mem_mib_s: float = _json_default("memMiBs", 0.0)
    net_bytes: float = _json_default("netBytes", 0.0)
    messages: int = _json_default("messages", 0)
    bytes: int = _json_default("bytes", 0)
    step_ms: float = _json_default("stepMs", 0.0)  # time spent in steps (the step_seconds metric)

    @classmethod
    def read(cls, reader: FieldReader) -> Self:
        return cls(
            tenant=reader.string("tenant"),
            user=reader.string("user", required=False),
            flow_id=reader.string("flowId", required=False),
            cpu_ms=reader.number("cpuMs", required=False, minimum=0),
            mem_mib_s=reader.number("memMiBs", required=False, minimum=0),
            net_bytes=reader.number("netBytes", required=False, minimum=0),
            messages=reader.integer("messages", required=False, minimum=0),
            bytes=reader.integer("bytes", required=False, minimum=0),
            step_ms=reader.number("stepMs", required=False, minimum=0),
        )


SUBJECT_LEVELS = ("tenant", "user", "flow")


@dataclass(frozen=True)
class Subject(Payload):
    event_name: ClassVar[str] = "subject"
    level: str
    id: str

    @classmethod
    def read(cls, reader: FieldReader) -> Self:
        return cls(level=reader.choice("level", SUBJECT_LEVELS) or "", id=reader.string("id"))

    @classmethod
    def from_mapping(cls, reader: FieldReader, key: str) -> Subject:
        child = reader.child(key, required=True)
        if "level" not in child.data:
            child.problem("level", "required")
        return Subject.read(child)


@dataclass(frozen=True)
class PolicyViolation(Payload):
    event_name: ClassVar[str] = "policy.violation"
    subject: Subject
    rule: str
    measured: float
    limit: float
    window: str

    @classmethod
    def read(cls, reader: FieldReader) -> Self:
        return cls(
            subject=Subject.from_mapping(reader, "subject"),
            rule=reader.string("rule"),
            measured=reader.number("measured"),
            limit=reader.number("limit"),
            window=reader.string("window"),
        )


@dataclass(frozen=True)
class PenaltyChanged(Payload):
    """tenant.throttled / deprioritized / suspended / restored."""

    event_name: ClassVar[str] = "tenant penalty"
    subject: Subject
    penalty: str
    until: float | None = None
    rule: str | None = None

    @classmethod
    def read(cls, reader: FieldReader) -> Self:
        until = reader.number("until", required=False, default=-1.0)
        return cls(
            subject=Subject.from_mapping(reader, "subject"),
            penalty=reader.string("penalty"),
            until=None if until < 0 else until,
            rule=reader.optional_string("rule"),
        )


def to_data(payload: Payload | Mapping[str, Any]) -> dict[str, Any]:
    return payload.to_data() if isinstance(payload, Payload) else dict(payload)
