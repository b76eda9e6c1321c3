"""The event log: every event the functions announced, in the order the outbox sent them.

The outbox records each event here right after its send succeeded, so the log shows what the
broker was actually given (locally and in Knative alike). A capped Redis stream: old entries
fall off, nothing grows without bound. Data is redacted (shared.security.redact) before it is
stored; events never carry tokens (the outbox signs at send time), and the log never holds
one either.
`orchestrator events tail` and the demo read it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from redis import Redis
from redis.client import Pipeline

from shared import keys
from shared.clock import Clock
from shared.events import OutgoingEvent
from shared.security.redact import redact
from shared.store import as_text

MAXLEN = 10_000


@dataclass(frozen=True)
class LoggedEvent:
    entry_id: str  # the stream id: where to continue tailing from
    id: str
    type: str
    source: str
    time: float | None
    extensions: dict[str, str]
    data: Any

    def to_json(self) -> dict[str, Any]:
        return {
            "entry": self.entry_id,
            "id": self.id,
            "type": self.type,
            "source": self.source,
            "time": self.time,
            "extensions": self.extensions,
            "data": self.data,
        }


def record(redis: Redis | Pipeline, event: OutgoingEvent, maxlen: int = MAXLEN) -> None:
    """Appends one sent event (its data redacted) to the capped stream."""
    document = {
        "id": event.id,
        "type": event.type,
        "source": event.source,
        "time": event.time,
        "extensions": {k: str(v) for k, v in event.extensions.items()},
        "data": redact(event.data),
    }
    redis.xadd(
        keys.event_log(),
        {"event": json.dumps(document, default=str, separators=(",", ":"))},
        maxlen=maxlen,
        approximate=True,
    )


Entry = tuple[bytes, dict[bytes, bytes]]


def _entries(reply: object) -> list[Entry]:
    """redis-py types stream replies loosely; ours is a bytes client (no decode_responses)."""
    return cast(list[Entry], reply or [])


def _parse(entry_id: bytes | str, fields: dict[bytes, bytes]) -> LoggedEvent:
    document = json.loads(fields[b"event"])
    time = document.get("time")
    return LoggedEvent(
        entry_id=as_text(entry_id),
        id=str(document.get("id", "")),
        type=str(document.get("type", "")),
        source=str(document.get("source", "")),
        time=float(time) if isinstance(time, int | float) else None,
        extensions={str(k): str(v) for k, v in (document.get("extensions") or {}).items()},
        data=document.get("data"),
    )


def recent(redis: Redis, count: int = 20) -> list[LoggedEvent]:
    """The last `count` events, oldest first."""
    entries = _entries(redis.xrevrange(keys.event_log(), count=count))
    return [_parse(entry_id, fields) for entry_id, fields in reversed(entries)]


def after(redis: Redis, entry_id: str, count: int = 100) -> list[LoggedEvent]:
    """Events logged after `entry_id` (exclusive), oldest first."""
    entries = _entries(redis.xrange(keys.event_log(), min=f"({entry_id}", count=count))
    return [_parse(eid, fields) for eid, fields in entries]


def follow(
    redis: Redis, clock: Clock, *, start: str = "$", poll_seconds: float = 0.5
) -> Iterator[LoggedEvent]:
    """Events as they are logged, from after `start` (`$`: from now), until the caller stops."""
    last = start
    if last == "$":
        newest = _entries(redis.xrevrange(keys.event_log(), count=1))
        last = _parse(*newest[0]).entry_id if newest else "0-0"
    while True:
        batch = after(redis, last)
        yield from batch
        if batch:
            last = batch[-1].entry_id
        else:
            clock.sleep(poll_seconds)
