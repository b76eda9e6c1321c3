"""What a step queue carries: one step message (runId, stepId, messageId, data, token;
docs/events.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from shared.errors import PermanentError


class BadMessage(PermanentError):
    """A queue entry that is not a step message: acknowledged and dropped by the worker."""


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

    @property
    def data(self) -> Any:
        return json.loads(self.data_json)

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
        return head[:-1] + ',"data":' + self.data_json + "}"

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
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BadMessage(f"not a step message: {type(exc).__name__}") from exc

    def __repr__(self) -> str:  # never print the token
        return (
            f"StepMessage(run_id={self.run_id!r}, step_id={self.step_id!r}, "
            f"message_id={self.message_id!r}, attempt={self.attempt})"
        )


@dataclass(frozen=True)
class Delivery:
    """A message as one consumer received it; `receipt` acknowledges it (entry id / handle)."""

    message: StepMessage | None  # None: the entry was unreadable (acknowledge and drop it)
    receipt: str
    claim_check: str | None = None  # S3 key of the body, deleted after acknowledgement
