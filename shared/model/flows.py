"""Flow documents: the one idempotent upsert and read module (docs/architecture.md §5).

Newer `updatedAt` (else the event's `time`) wins; `flow.stopping` leaves a tombstone so that a
late redelivery of an old `flow.starting` cannot bring a stopped flow back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

from redis import Redis

from shared import keys
from shared.events import FlowDocument
from shared.scripts import load_script
from shared.store import as_text

UpsertResult = Literal["stale", "same", "stored"]
StopResult = Literal["stale", "unknown", "stopped"]


def content_hash(document: dict[str, object]) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class StoredFlow:
    flow: FlowDocument
    content_hash: str
    version: float
    stopped: bool


# Anyone allowed to control flows may stop an id nobody started yet; dated far in the future,
# that tombstone would make every later start of the id stale. Such stops are capped at now +.
MAX_CLOCK_SKEW_SECONDS = 300.0


def upsert(redis: Redis, flow: FlowDocument, event_time: float | None) -> UpsertResult:
    version = flow.updated_at if flow.updated_at is not None else (event_time or 0.0)
    result = load_script("flow_upsert")(
        redis,
        [keys.flow_document(flow.id), keys.flow_index()],
        [
            flow.id,
            json.dumps(flow.document, separators=(",", ":"), default=str),
            content_hash(flow.document),
            repr(version),
            flow.tenant,
        ],
    )
    return as_text(result)  # type: ignore[return-value]


def tombstone(
    redis: Redis, flow_id: str, event_time: float | None, *, now: float | None = None
) -> StopResult:
    bound = "" if now is None else repr(now + MAX_CLOCK_SKEW_SECONDS)
    result = load_script("flow_tombstone")(
        redis,
        [keys.flow_document(flow_id), keys.flow_index()],
        [flow_id, repr(event_time or 0.0), bound],
    )
    return as_text(result)  # type: ignore[return-value]


def get(redis: Redis, flow_id: str, *, include_stopped: bool = False) -> StoredFlow | None:
    raw = redis.hgetall(keys.flow_document(flow_id))
    if not raw or b"doc" not in raw:
        return None
    stopped = raw.get(b"stopped") == b"1"
    if stopped and not include_stopped:
        return None
    flow = FlowDocument.parse(json.loads(raw[b"doc"]))
    return StoredFlow(
        flow=flow,
        content_hash=as_text(raw.get(b"hash", b"")),
        version=float(raw.get(b"version", b"0")),
        stopped=stopped,
    )


def tenant_of(redis: Redis, flow_id: str) -> str | None:
    value = redis.hget(keys.flow_document(flow_id), "tenant")
    return None if value is None else as_text(value)


def wanted_ids(redis: Redis) -> set[str]:
    return {as_text(member) for member in redis.smembers(keys.flow_index())}
