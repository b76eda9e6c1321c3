"""The audit stream: every penalty decision with its evidence (docs/architecture.md §5,
policy-check).

A Redis stream capped at about `MAX_ENTRIES` (XADD MAXLEN ~). The penalty scripts append to it
in the same atomic step as the decision; `append` is for decisions made outside a script.
Entries carry: time, action (escalate, hold, decay, restore, lift, timeout), level, subject,
tenant, rule, measured, limit, window, penalty (the step after the decision), previous, until,
actor. Never a token or a secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from redis import Redis

from shared import keys
from shared.store import as_text

MAX_ENTRIES = 10_000
FIELDS = (
    "time",
    "action",
    "level",
    "subject",
    "tenant",
    "rule",
    "measured",
    "limit",
    "window",
    "penalty",
    "previous",
    "until",
    "actor",
)


@dataclass(frozen=True)
class AuditEntry:
    id: str
    fields: Mapping[str, str]

    def get(self, name: str, default: str = "") -> str:
        return self.fields.get(name, default)

    @property
    def time(self) -> float:
        return float(self.get("time", "0") or 0)

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, **self.fields}


def append(redis: Redis, fields: Mapping[str, object]) -> str:
    """Adds one entry (unknown field names are refused: the schema is fixed above)."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown audit fields: {sorted(unknown)}")
    values = {k: "" if v is None else str(v) for k, v in fields.items()}
    entry_id = redis.xadd(keys.audit(), values, maxlen=MAX_ENTRIES, approximate=True)  # type: ignore[arg-type]
    return as_text(entry_id)


def read(
    redis: Redis, *, count: int = 100, level: str | None = None, subject: str | None = None
) -> list[AuditEntry]:
    """The newest `count` entries (oldest first), optionally of one subject."""
    entries: list[AuditEntry] = []
    last = "+"
    while len(entries) < count:
        batch = redis.xrevrange(keys.audit(), max=last, min="-", count=max(count, 100))
        if not batch:
            break
        for entry_id, raw in batch:
            fields = {as_text(k): as_text(v) for k, v in (raw or {}).items()}
            if subject is not None and fields.get("subject") != subject:
                continue
            if level is not None and fields.get("level") != level:
                continue
            entries.append(AuditEntry(as_text(entry_id), fields))
            if len(entries) >= count:
                break
        last = "(" + as_text(batch[-1][0])
        if len(batch) < max(count, 100):
            break
    return list(reversed(entries))


def length(redis: Redis) -> int:
    return int(redis.xlen(keys.audit()))
