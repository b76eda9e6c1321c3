"""Flow documents: the one idempotent upsert and read module (docs/architecture.md §5).

Newer `updatedAt` (else the event's `time`) wins; `flow.stopping` leaves a tombstone so that a
late redelivery of an old `flow.starting` cannot bring a stopped flow back. Tombstones expire
(FLOW_TOMBSTONE_TTL_SECONDS), so stops of made-up ids do not fill Redis. A tenant has at most
its `max_flows` wanted flows: one more is refused before anything is stored (`FlowBudget`, 429).
A flow of another tenant is answered like an unknown one (`unknown_flow`), so a caller cannot
tell which ids exist elsewhere.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, cast

from redis import Redis

from shared import keys
from shared.errors import OverBudget, Unprocessable
from shared.events import FlowDocument
from shared.events.flow_document import edges_of_the_previous_release
from shared.scripts import load_script
from shared.store import as_text

UpsertResult = Literal["stale", "same", "stored", "over"]
# The form a document is stored in (hash field `form`): 2 reads our edge expressions from
# `edges[].jsonata` and leaves OIH's `edges[].config` alone. A document without it was stored
# by the previous release, which read them from `edges[].config`: read as moved there
# (`edges_of_the_previous_release`) until `upgrade` rewrote it or a flow.starting replaced it.
FORM = "2"
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


# How long a tombstone is kept when the caller does not say (FLOW_TOMBSTONE_TTL_SECONDS).
DEFAULT_TOMBSTONE_TTL_SECONDS = 7 * 86400.0


def unknown_flow(flow_id: str) -> Unprocessable:
    """The answer for a flow that is not known, or not to this caller: the same either way."""
    return Unprocessable(f"flowId: unknown flow {flow_id!r}")


class FlowBudget(OverBudget):
    """The tenant already has its `max_flows` wanted flows: nothing was stored."""

    def __init__(self, tenant: str, limit: int) -> None:
        super().__init__("max_flows", f"tenant {tenant!r} has its {limit} flows (max_flows)")


def upsert(
    redis: Redis, flow: FlowDocument, event_time: float | None, *, max_flows: int | None = None
) -> UpsertResult:
    """Stores the document unless older than what is stored; raises FlowBudget when it would
    be one more than `max_flows` wanted flows of its tenant (checked in the same script)."""
    version = flow.updated_at if flow.updated_at is not None else (event_time or 0.0)
    result = load_script("flow_upsert")(
        redis,
        [keys.flow_document(flow.id), keys.flow_index(), keys.tenant_flows_family()],
        [
            flow.id,
            json.dumps(flow.document, separators=(",", ":"), default=str),
            content_hash(flow.document),
            repr(version),
            flow.tenant,
            "" if max_flows is None else str(max_flows),
            FORM,
        ],
    )
    answer = as_text(result)
    if answer == "over":
        raise FlowBudget(flow.tenant, max_flows or 0)
    return answer  # type: ignore[return-value]


def tombstone(
    redis: Redis,
    flow_id: str,
    event_time: float | None,
    *,
    now: float | None = None,
    ttl_seconds: float = DEFAULT_TOMBSTONE_TTL_SECONDS,
) -> StopResult:
    bound = "" if now is None else repr(now + MAX_CLOCK_SKEW_SECONDS)
    result = load_script("flow_tombstone")(
        redis,
        [keys.flow_document(flow_id), keys.flow_index(), keys.tenant_flows_family()],
        [flow_id, repr(event_time or 0.0), bound, repr(float(ttl_seconds))],
    )
    return as_text(result)  # type: ignore[return-value]


def visible_to(tenant: str | None, caller_tenant: str | None, *, sees_all: bool) -> bool:
    """Whether a caller may learn that a flow of `tenant` exists: its own tenant's, or anyone
    who sees every tenant (admins, our functions, auth off)."""
    return sees_all or tenant is None or tenant == caller_tenant


def upgrade(
    redis: Redis, *, ttl_seconds: float = DEFAULT_TOMBSTONE_TTL_SECONDS, batch: int = 500
) -> int:
    """Once per store: the flow documents of the previous release get what this one keeps
    beside them (CHANGELOG.md): tombstones without an expiry get one, wanted flows join their
    tenant's flow set, edge expressions move from `edges[].config` to `edges[].jsonata` (form
    2). Returns the documents changed (0 once done)."""
    if redis.exists(keys.flows_upgraded()):
        return 0
    changed = 0
    pattern = keys.flow_document("*")
    for names in _batches(redis.scan_iter(match=pattern, count=batch), batch):
        pipe = redis.pipeline(transaction=False)
        for name in names:
            pipe.hmget(name, "stopped", "tenant", "form", "doc")
            pipe.ttl(name)
        replies = pipe.execute()
        writes = redis.pipeline(transaction=False)
        for index, name in enumerate(names):
            (stopped, tenant, form, doc), ttl = replies[2 * index], replies[2 * index + 1]
            flow_id = as_text(name)[len(keys.flow_document("")) :]
            if doc is not None and form != FORM.encode():
                # the edge expressions move to edges[].jsonata; the content hash is kept, so a
                # re-sent identical document is still the same one (and marks it form 2)
                moved = edges_of_the_previous_release(json.loads(doc))
                text = json.dumps(moved, separators=(",", ":"), default=str)
                writes.hset(name, mapping={"doc": text, "form": FORM})
                changed += 1
            if stopped == b"1" and ttl == -1 and ttl_seconds > 0:
                writes.expire(name, max(1, round(ttl_seconds)))
                changed += 1
            elif stopped == b"0" and tenant is not None:
                writes.sadd(keys.tenant_flows(as_text(tenant)), flow_id)
                changed += 1
        writes.execute()
    redis.set(keys.flows_upgraded(), "1")
    return changed


def _batches(items: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def get(redis: Redis, flow_id: str, *, include_stopped: bool = False) -> StoredFlow | None:
    raw = cast(dict[bytes, bytes], redis.hgetall(keys.flow_document(flow_id)))
    return from_record(raw, include_stopped=include_stopped)


def from_record(raw: dict[bytes, bytes], *, include_stopped: bool = False) -> StoredFlow | None:
    """The stored flow of a `flow_document` hash as HGETALL read it (None: none, or stopped)."""
    if not raw or b"doc" not in raw:
        return None
    stopped = raw.get(b"stopped") == b"1"
    if stopped and not include_stopped:
        return None
    document = json.loads(raw[b"doc"])
    if raw.get(b"form") != FORM.encode():
        document = edges_of_the_previous_release(document)
    flow = FlowDocument.parse(document)
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


# --- global components ---------------------------------------------------------------------------
@dataclass(frozen=True)
class GlobalNode:
    """A flow node whose component is global: its messages go to the component's queue, with
    the node's function and fields (the global worker serves every flow's nodes)."""

    component_id: str
    function: str
    fields_json: str


def set_global_nodes(redis: Redis, flow_id: str, nodes: dict[str, GlobalNode]) -> None:
    """What deploy decided for the flow (written before its objects are applied)."""
    key = keys.flow_global_nodes(flow_id)
    pipe = redis.pipeline(transaction=True)
    pipe.delete(key)
    if nodes:
        pipe.hset(
            key,
            mapping={
                node: json.dumps(
                    {"component": n.component_id, "function": n.function, "fields": n.fields_json},
                    separators=(",", ":"),
                )
                for node, n in nodes.items()
            },
        )
    pipe.execute()


def clear_global_nodes(redis: Redis, flow_id: str) -> None:
    redis.delete(keys.flow_global_nodes(flow_id))


def global_nodes(redis: Redis, flow_ids: Iterable[str]) -> dict[str, dict[str, GlobalNode]]:
    """Each flow's global nodes (a flow without any: {}), in one round trip."""
    ids = sorted(set(flow_ids))
    pipe = redis.pipeline(transaction=False)
    for flow_id in ids:
        pipe.hgetall(keys.flow_global_nodes(flow_id))
    found: dict[str, dict[str, GlobalNode]] = {}
    for flow_id, raw in zip(ids, pipe.execute(), strict=True):
        nodes = {}
        for node, value in (raw or {}).items():
            entry = json.loads(value)
            nodes[as_text(node)] = GlobalNode(
                str(entry["component"]), str(entry["function"]), str(entry["fields"])
            )
        found[flow_id] = nodes
    return found
