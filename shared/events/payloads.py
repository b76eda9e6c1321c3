"""One frozen dataclass per event payload (docs/events.md): its fields are its one declaration.

The reader, the writer and the JSON Schema all come from those fields (shared/events/fields.py);
`parse` checks every field and reports every problem at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from shared.errors import InvalidEvent
from shared.events import fields
from shared.events.fields import wire


class Payload:
    """Base: `parse(data)` builds the instance or raises InvalidEvent naming every bad field."""

    event_name: ClassVar[str] = "event"

    @classmethod
    def parse(cls, data: object) -> Self:
        problems = fields.Problems()
        instance: Self = fields.read(cls, data, problems)
        if problems.found:
            raise InvalidEvent(
                f"invalid {cls.event_name} payload: " + "; ".join(problems.found),
                problems=problems.found,
            )
        return instance

    def to_data(self) -> dict[str, Any]:
        return fields.to_data(self)

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        return fields.json_schema(cls)


@dataclass(frozen=True)
class Empty(Payload):
    """orchestrator.tick: no fields."""

    event_name: ClassVar[str] = "tick"


@dataclass(frozen=True)
class _IdRef(Payload):
    """A payload that only names something by its id (OIH's documents: `_id`)."""

    id: str = wire(aliases=("_id",))


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
    replicas: dict[str, int] = wire(
        default_factory=dict, minimum=0, description="replicas per flow node"
    )
    clamped: bool = wire(default=False, description="replicas were cut to the tenant's limit")
    reason: str | None = None


@dataclass(frozen=True)
class ComponentStatus(Payload):
    """component.started / stopped / failed."""

    event_name: ClassVar[str] = "component status"
    id: str
    reason: str | None = None


@dataclass(frozen=True)
class FlowPointer(Payload):
    """The flow in OIH's flow.execute (webhooks, scheduler): their stored copy; its id is read."""

    id: str = wire(aliases=("_id",))
    started_by: str | None = wire(
        "startedBy",
        default=None,
        description="read only from an admin or the hub's service account: the run's user, "
        "if the IAM confirms it belongs to the flow's tenant (else 403)",
    )
    due_execution: str | None = wire(
        "dueExecution",
        default=None,
        description="the scheduler's due time (ISO 8601): with CRON_OWNER=hub, the run's",
    )


@dataclass(frozen=True)
class FlowExecute(Payload):
    """flow.execute: a start with data (webhook, scheduler, by hand); never skipped.

    The run's user is the token's subject; for an admin or the hub's service account the
    `flow.startedBy` user (IAM-confirmed, else 403), or the flow's own user when it names none.
    An unknown flow answers 422, a tenant over its waiting cap 429.
    """

    event_name: ClassVar[str] = "flow.execute"
    flow_id: str = wire("flowId", default="", description="required unless `flow` names it")
    flow: FlowPointer | None = wire(
        default=None, description="OIH's webhooks and scheduler send the flow itself"
    )
    msg: Any = wire(
        default_factory=dict,
        description="OIH's message {data, metadata, attachments, passthrough} (+ webhook keys): "
        "the first steps get its data and its parts; without `data` it is the data itself",
    )
    msg_opts: dict[str, Any] = wire(
        "msgOpts", default_factory=dict, description="kept on the first step messages (`context`)"
    )

    def finish(self, data: Mapping[str, Any], problems: fields.Problems) -> Self:
        if self.flow_id.strip():
            return self
        if self.flow is not None and self.flow.id:
            return dataclasses.replace(self, flow_id=self.flow.id)
        problems.add("flowId", "required (or flow._id)")
        return self

    @classmethod
    def schema_rules(cls) -> list[dict[str, Any]]:
        return [{"anyOf": [{"required": ["flowId"]}, {"required": ["flow"]}]}]


TRIGGERS = ("cron", "execute")


@dataclass(frozen=True, kw_only=True)
class RunAdmitted(Payload):
    """flow.execution.admitted: a run was given a slot."""

    event_name: ClassVar[str] = "flow.execution.admitted"
    flow_id: str = wire("flowId")
    run_id: str = wire("runId")
    tenant: str = wire()
    user: str = wire(default="")
    fencing_token: int = wire("fencingToken", minimum=0, description="the slot's lease")
    scheduled_for: float = wire("scheduledFor", minimum=0, description="epoch seconds")
    trigger: str = wire(default="cron", choices=TRIGGERS)
    msg: Any = wire(default_factory=dict, description="flow.execute's msg, with its msgOpts")


@dataclass(frozen=True)
class RunNotStarted(Payload):
    """flow.execution.skipped / deferred / missed."""

    event_name: ClassVar[str] = "flow.execution.skipped/deferred/missed"
    flow_id: str = wire("flowId")
    scheduled_for: float = wire("scheduledFor", minimum=0, description="epoch seconds")
    reason: str = wire(
        description="skipped: overlap, not_deployed, queue_full, superseded, flow_stopped; "
        "deferred: slots, tenant_cap, not_deployed, suspended, ..."
    )
    run_id: str | None = wire("runId", default=None)
    tenant: str | None = wire(default=None)


@dataclass(frozen=True)
class StepResult(Payload):
    """step.completed / step.failed, sent by a component worker with its step token."""

    event_name: ClassVar[str] = "step result"
    run_id: str = wire("runId")
    step_id: str = wire("stepId")
    message_id: str = wire("messageId")
    seq: int = wire(default=0, minimum=0)
    final: bool = wire(default=True)
    data: Any = wire(default_factory=dict)
    attachments: list[Any] = wire(default_factory=list)
    error: str | None = wire(default=None)
    # Which delivery of the message this result answers (the worker copies it from the
    # message); step-execute ignores a late failure of an earlier attempt. None: unknown.
    attempt: int | None = wire(default=None, minimum=0, description="the delivery it answers")
    # True: this event carries no output, it only ends the message's outputs (a component
    # that emitted nothing); `data` is then ignored.
    empty: bool = wire(default=False, description="no output: only ends the message's outputs")


@dataclass(frozen=True)
class RunEnded(Payload):
    """flow.execution.completed / flow.execution.failed."""

    event_name: ClassVar[str] = "flow.execution.completed/failed"
    flow_id: str = wire("flowId")
    run_id: str = wire("runId")
    tenant: str = wire()
    fencing_token: int = wire("fencingToken", minimum=0)
    duration_ms: int = wire("durationMs", default=0, minimum=0)
    steps: int = wire(default=0, minimum=0)
    reason: str | None = wire(default=None, description="why it failed (`timeout`: the watchdog)")
    user: str | None = wire(default=None)


@dataclass(frozen=True)
class UsageReport(Payload):
    """usage.reported: what a run's steps used."""

    event_name: ClassVar[str] = "usage.reported"
    tenant: str = wire()
    user: str = wire(default="")
    flow_id: str = wire("flowId", default="")
    cpu_ms: float = wire("cpuMs", default=0.0, minimum=0)
    mem_mib_s: float = wire("memMiBs", default=0.0, minimum=0)
    net_bytes: float = wire("netBytes", default=0.0, minimum=0)
    messages: int = wire(default=0, minimum=0)
    bytes: int = wire(default=0, minimum=0)
    # time spent in steps (the step_seconds metric)
    step_ms: float = wire("stepMs", default=0.0, minimum=0, description="time spent in steps")


SUBJECT_LEVELS = ("tenant", "user", "flow")


@dataclass(frozen=True)
class Subject(Payload):
    """Who a rule or penalty is about."""

    event_name: ClassVar[str] = "subject"
    level: str = wire(choices=SUBJECT_LEVELS)
    id: str = wire()


@dataclass(frozen=True)
class PolicyViolation(Payload):
    """policy.violation: a rule's limit was passed."""

    event_name: ClassVar[str] = "policy.violation"
    subject: Subject
    rule: str
    measured: float
    limit: float
    window: str


@dataclass(frozen=True)
class PenaltyChanged(Payload):
    """tenant.throttled / deprioritized / suspended / restored."""

    event_name: ClassVar[str] = "tenant penalty"
    subject: Subject
    penalty: str
    until: float | None = wire(default=None, description="epoch seconds")
    rule: str | None = None


def to_data(payload: Payload | Mapping[str, Any]) -> dict[str, Any]:
    return payload.to_data() if isinstance(payload, Payload) else dict(payload)
