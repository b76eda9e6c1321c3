"""What a step queue carries: one step message (runId, stepId, messageId, data, token, and for
a run's first steps the rest of the message the run was started with; docs/events.md).

A flow.execute's `msg` is OIH's message: `{data, metadata, attachments, passthrough}`, plus the
webhook keys when it came through a webhook (`method`, `headers`, `url`, ...). The first steps
get it as the original orchestrator built it (lib/component-orchestrator,
ComponentOrchestrator._executeStep, `newMessage`): `data` as the step's data, the other parts as
its `context`, and the flow.execute's `msgOpts` beside them. A `msg` without a `data` key is the
data itself (our earlier shape, still read).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.errors import PermanentError


class BadMessage(PermanentError):
    """A queue entry that is not a step message: acknowledged and dropped by the worker."""


# The parts of the message beside its data, each `{}` when missing (as `_executeStep` does).
MESSAGE_PARTS = ("attachments", "metadata", "passthrough")
# Kept only when the message came through a webhook (it has `method`), with these defaults.
WEBHOOK_PARTS: Mapping[str, Any] = {
    "method": "",
    "headers": {},
    "params": {},
    "query": {},
    "url": "",
    "originalUrl": "",
    "pathSuffix": "",
}
MSG_OPTS = "msgOpts"


def execute_message(msg: Any, msg_opts: Mapping[str, Any] | None) -> Any:
    """The message a flow.execute starts its run with: its `msg`, with its `msgOpts` kept
    beside the parts (a data-only `msg` becomes the `data` of a message)."""
    if not msg_opts:
        return msg
    if isinstance(msg, Mapping) and "data" in msg:
        return {**msg, MSG_OPTS: dict(msg_opts)}
    return {"data": {} if msg is None else msg, MSG_OPTS: dict(msg_opts)}


def from_scheduler(msg: Any) -> bool:
    """A message of the hub's scheduler service (services/scheduler/src/SchedulePublisher.js:
    `metadata.source.type` is `scheduler`)."""
    metadata = msg.get("metadata") if isinstance(msg, Mapping) else None
    source = metadata.get("source") if isinstance(metadata, Mapping) else None
    return isinstance(source, Mapping) and source.get("type") == "scheduler"


def scheduled_at(msg: Any) -> str | None:
    """The scheduler's `data.sheduledTimestamp` (sic), ISO 8601; None if it has none."""
    data = msg.get("data") if isinstance(msg, Mapping) else None
    stamp = data.get("sheduledTimestamp") if isinstance(data, Mapping) else None
    return stamp if isinstance(stamp, str) else None


def first_step_message(msg: Any) -> tuple[Any, dict[str, Any]]:
    """(data, context) of a run's first steps, from the message the run was started with."""
    if not isinstance(msg, Mapping) or "data" not in msg:
        return ({} if msg is None else msg), {}
    context: dict[str, Any] = {part: msg.get(part) or {} for part in MESSAGE_PARTS}
    if msg.get("method"):
        for part, default in WEBHOOK_PARTS.items():
            context[part] = msg.get(part) or default
    if isinstance(msg.get(MSG_OPTS), Mapping) and msg[MSG_OPTS]:
        context[MSG_OPTS] = dict(msg[MSG_OPTS])
    data = msg.get("data")
    return ({} if data is None else data), context


@dataclass(frozen=True)
class StepMessage:
    """`data_json` is kept as text so the data travels byte for byte as the step produced it."""

    run_id: str
    flow_id: str
    step_id: str
    message_id: str
    tenant: str
    attempt: int
    data_json: str
    token: str
    # The rest of the run's message for a first step (`first_step_message`), JSON text; ""
    # for every other message.
    context_json: str = field(default="")
    # For a global component's queue (it serves many flows' nodes): the node's function and
    # its fields (JSON object text); "" on a flow's own step queue.
    function: str = field(default="")
    fields_json: str = field(default="")

    @property
    def fields(self) -> dict[str, Any]:
        loaded = json.loads(self.fields_json) if self.fields_json else {}
        return loaded if isinstance(loaded, dict) else {}

    @property
    def data(self) -> Any:
        return json.loads(self.data_json)

    @property
    def context(self) -> dict[str, Any]:
        loaded = json.loads(self.context_json) if self.context_json else {}
        return loaded if isinstance(loaded, dict) else {}

    def component_message(self, metadata: Mapping[str, Any]) -> dict[str, Any]:
        """What the component function is called with: `{data, attachments, metadata,
        passthrough}` (+ the webhook keys of a webhook's message); `metadata` (ours: run,
        flow, step, ...) is laid over the message's own. `msgOpts` stays on the step message
        (transport options, not the component's)."""
        context = self.context
        message: dict[str, Any] = {
            key: value for key, value in context.items() if key not in (MSG_OPTS, "metadata")
        }
        own = context.get("metadata")
        message["data"] = self.data
        message.setdefault("attachments", [])
        message["metadata"] = {**(own if isinstance(own, Mapping) else {}), **metadata}
        message.setdefault("passthrough", {})
        return message

    def to_json(self) -> str:
        head = json.dumps(
            {
                "runId": self.run_id,
                "flowId": self.flow_id,
                "stepId": self.step_id,
                "messageId": self.message_id,
                "tenant": self.tenant,
                "attempt": self.attempt,
                "stepToken": self.token,
            },
            separators=(",", ":"),
        )
        tail = ',"context":' + self.context_json if self.context_json else ""
        if self.function:
            tail += ',"function":' + json.dumps(self.function)
            tail += ',"fields":' + (self.fields_json or "{}")
        return head[:-1] + ',"data":' + self.data_json + tail + "}"

    @classmethod
    def from_json(cls, text: str | bytes) -> StepMessage:
        try:
            raw = json.loads(text)
            return cls(
                run_id=str(raw["runId"]),
                flow_id=str(raw["flowId"]),
                step_id=str(raw["stepId"]),
                message_id=str(raw["messageId"]),
                tenant=str(raw.get("tenant", "")),
                attempt=int(raw.get("attempt", 0)),
                data_json=json.dumps(raw.get("data"), separators=(",", ":"), ensure_ascii=False),
                token=str(raw["stepToken"]),
                context_json=_context_json(raw.get("context")),
                function=str(raw.get("function") or ""),
                fields_json=_context_json(raw.get("fields")) if raw.get("function") else "",
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BadMessage(f"not a step message: {type(exc).__name__}") from exc

    def __repr__(self) -> str:  # never print the token
        return (
            f"StepMessage(run_id={self.run_id!r}, step_id={self.step_id!r}, "
            f"message_id={self.message_id!r}, attempt={self.attempt})"
        )


def _context_json(value: object) -> str:
    """A message of the previous release has no `context`: ""."""
    if not isinstance(value, dict) or not value:
        return ""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Delivery:
    """A message as one consumer received it; `receipt` acknowledges it (entry id / handle)."""

    message: StepMessage | None  # None: the entry was unreadable (acknowledge and drop it)
    receipt: str
    claim_check: str | None = None  # S3 key of the body, deleted after acknowledgement
