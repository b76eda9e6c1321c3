"""Event type names (docs/architecture.md §4) and which function consumes and emits which."""

from __future__ import annotations

PREFIX = "org.openintegrationhub."

FLOW_STARTING = PREFIX + "flow.starting"
FLOW_STOPPING = PREFIX + "flow.stopping"
COMPONENT_STARTING = PREFIX + "component.starting"
COMPONENT_STOPPING = PREFIX + "component.stopping"
FLOW_STARTED = PREFIX + "flow.started"
FLOW_STOPPED = PREFIX + "flow.stopped"
FLOW_FAILED = PREFIX + "flow.failed"
COMPONENT_STARTED = PREFIX + "component.started"
COMPONENT_STOPPED = PREFIX + "component.stopped"
COMPONENT_FAILED = PREFIX + "component.failed"
TICK = PREFIX + "orchestrator.tick"
FLOW_EXECUTE = PREFIX + "flow.execute"
RUN_ADMITTED = PREFIX + "flow.execution.admitted"
RUN_SKIPPED = PREFIX + "flow.execution.skipped"
RUN_DEFERRED = PREFIX + "flow.execution.deferred"
RUN_MISSED = PREFIX + "flow.execution.missed"
STEP_COMPLETED = PREFIX + "step.completed"
STEP_FAILED = PREFIX + "step.failed"
RUN_COMPLETED = PREFIX + "flow.execution.completed"
RUN_FAILED = PREFIX + "flow.execution.failed"
USAGE_REPORTED = PREFIX + "usage.reported"
POLICY_VIOLATION = PREFIX + "policy.violation"
TENANT_THROTTLED = PREFIX + "tenant.throttled"
TENANT_DEPRIORITIZED = PREFIX + "tenant.deprioritized"
TENANT_SUSPENDED = PREFIX + "tenant.suspended"
TENANT_RESTORED = PREFIX + "tenant.restored"

PENALTY_TYPES = frozenset(
    {TENANT_THROTTLED, TENANT_DEPRIORITIZED, TENANT_SUSPENDED, TENANT_RESTORED}
)
DEPLOYMENT_STATUS_TYPES = frozenset({FLOW_STARTED, FLOW_STOPPED, FLOW_FAILED})
COMPONENT_STATUS_TYPES = frozenset({COMPONENT_STARTED, COMPONENT_STOPPED, COMPONENT_FAILED})
RUN_NOT_STARTED_TYPES = frozenset({RUN_SKIPPED, RUN_DEFERRED, RUN_MISSED})
RUN_ENDED_TYPES = frozenset({RUN_COMPLETED, RUN_FAILED})
STEP_RESULT_TYPES = frozenset({STEP_COMPLETED, STEP_FAILED})

# Control events come from outside the orchestrator and carry an IAM token
# (docs/architecture.md §8).
FLOW_CONTROL_TYPES = frozenset({FLOW_STARTING, FLOW_STOPPING, FLOW_EXECUTE})
COMPONENT_CONTROL_TYPES = frozenset({COMPONENT_STARTING, COMPONENT_STOPPING})
CONTROL_TYPES = FLOW_CONTROL_TYPES | COMPONENT_CONTROL_TYPES

FLOW_START = "flow-start"
DEPLOY = "deploy"
STEP_EXECUTE = "step-execute"
POLICY_CHECK = "policy-check"
FUNCTIONS = (FLOW_START, DEPLOY, STEP_EXECUTE, POLICY_CHECK)

CONSUMES: dict[str, frozenset[str]] = {
    FLOW_START: frozenset(
        {FLOW_STARTING, FLOW_STOPPING, FLOW_EXECUTE, TICK}
        | DEPLOYMENT_STATUS_TYPES
        | RUN_ENDED_TYPES
        | PENALTY_TYPES
    ),
    DEPLOY: frozenset(
        {FLOW_STARTING, FLOW_STOPPING, COMPONENT_STARTING, COMPONENT_STOPPING, TICK} | PENALTY_TYPES
    ),
    STEP_EXECUTE: frozenset(
        {FLOW_STOPPING, TICK, RUN_ADMITTED} | STEP_RESULT_TYPES | RUN_ENDED_TYPES
    ),
    POLICY_CHECK: frozenset(
        {TICK, RUN_ADMITTED, USAGE_REPORTED}
        | DEPLOYMENT_STATUS_TYPES
        | RUN_NOT_STARTED_TYPES
        | RUN_ENDED_TYPES
    ),
}

EMITS: dict[str, frozenset[str]] = {
    FLOW_START: frozenset({RUN_ADMITTED} | RUN_NOT_STARTED_TYPES),
    DEPLOY: frozenset(DEPLOYMENT_STATUS_TYPES | COMPONENT_STATUS_TYPES),
    STEP_EXECUTE: frozenset(RUN_ENDED_TYPES | {USAGE_REPORTED}),
    POLICY_CHECK: frozenset({POLICY_VIOLATION, RUN_FAILED} | PENALTY_TYPES),
}

# Who sends the types that come from outside the orchestrator (docs/events.md).
OUTSIDE_PRODUCERS: dict[str, str] = {
    FLOW_STARTING: "Flow Repository",
    FLOW_STOPPING: "Flow Repository",
    COMPONENT_STARTING: "Component Repository",
    COMPONENT_STOPPING: "Component Repository",
    FLOW_EXECUTE: "webhooks, scheduler, manual start",
    TICK: "PingSource (through an EventTransform) / local clock",
    STEP_COMPLETED: "component workers",
    STEP_FAILED: "component workers",
}

# Emitted types no function of ours consumes: they leave the system for the hub.
LEAVES_SYSTEM = frozenset(COMPONENT_STATUS_TYPES | {POLICY_VIOLATION})

ALL_TYPES = frozenset().union(*CONSUMES.values(), *EMITS.values(), {STEP_COMPLETED, STEP_FAILED})


# Where the JSON Schema of each payload is published (docs/schemas/, one file per type); the
# events we emit name it in their `dataschema` attribute.
SCHEMA_BASE = "https://openintegrationhub.github.io/component-orchestrator/schemas/"


def dataschema(event_type: str) -> str | None:
    """The `dataschema` URI of an event type of the catalogue (None for any other type)."""
    return f"{SCHEMA_BASE}{short(event_type)}.json" if event_type in ALL_TYPES else None


def short(event_type: str) -> str:
    """`org.openintegrationhub.flow.started` → `flow.started` (for logs)."""
    return event_type.removeprefix(PREFIX)
