"""The queued-bytes gauge of each tenant (policy key `max_queued_bytes`, docs/security.md).

Measured, never counted: step-execute's tick walks the step queues it published to
(`keys.step_queues()`, at most TICK_PAGE_SIZE a tick, from a cursor kept in Redis) and adds
what Redis says each holds (`MEMORY USAGE <queue> SAMPLES 0`: every node of the stream, its
consumer group included) to its flow's tenant in the pass's hash. When the pass ends, that
hash replaces the gauge whole. No delete, ack, trim, expiry or stop path has to decrement
anything, so the gauge cannot drift: it is at most one pass old. A queue shared by the steps
of many flows (a global component's) belongs to no one tenant and is not counted.

`step_route.lua` reads the gauge: a tenant over its budget gets `over_queued_bytes` for an
output that would create messages, before anything is stored.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis
from redis.typing import EncodableT

from shared import keys
from shared.runtime import tick_cursor
from shared.store import as_text

WALK = "queued-bytes"


@dataclass(frozen=True)
class Measured:
    queues: int  # queues measured by this tick
    pass_ended: bool  # the gauge was replaced by this tick


def measure(redis: Redis, *, page_size: int, now: float) -> Measured:
    """Measures the next page of step queues; at the end of a pass the gauge is replaced."""
    starting = tick_cursor.load(redis, keys.EXECUTION, WALK) == ""
    names = [as_text(name) for name in redis.smembers(keys.step_queues())]
    page = tick_cursor.page(redis, keys.EXECUTION, WALK, names, page_size)
    pass_key = keys.tenant_queued_bytes_pass()
    if starting:
        redis.delete(pass_key)
    flow_ids = sorted({parsed[0] for name in page if (parsed := keys.parse_step_queue(name))})
    tenants = _tenants(redis, flow_ids)
    pipe = redis.pipeline(transaction=False)
    measured = [name for name in page if _tenant_of(name, tenants)]
    for name in measured:
        pipe.memory_usage(name, samples=0)
    sizes = pipe.execute() if measured else []
    totals: dict[str, int] = {}
    for name, size in zip(measured, sizes, strict=True):
        tenant = _tenant_of(name, tenants)
        totals[tenant] = totals.get(tenant, 0) + int(size or 0)  # None: the queue is gone
    if totals:
        pipe = redis.pipeline(transaction=False)
        for tenant, size in totals.items():
            pipe.hincrby(pass_key, tenant, size)
        pipe.execute()
    ended = tick_cursor.load(redis, keys.EXECUTION, WALK) == ""
    if ended:
        _replace_gauge(redis, now=now)
    return Measured(queues=len(measured), pass_ended=ended)


def _replace_gauge(redis: Redis, *, now: float) -> None:
    pass_key = keys.tenant_queued_bytes_pass()
    gauge: dict[EncodableT, EncodableT] = {k: v for k, v in redis.hgetall(pass_key).items()}
    gauge[keys.QUEUED_BYTES_MEASURED_AT] = repr(now)
    with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.tenant_queued_bytes())
        pipe.hset(keys.tenant_queued_bytes(), mapping=gauge)
        pipe.delete(pass_key)
        pipe.execute()


def _tenants(redis: Redis, flow_ids: list[str]) -> dict[str, str]:
    """flow id → its tenant, from the flow documents (flows without one are left out)."""
    if not flow_ids:
        return {}
    pipe = redis.pipeline(transaction=False)
    for flow_id in flow_ids:
        pipe.hget(keys.flow_document(flow_id), "tenant")
    return {
        flow_id: as_text(tenant)
        for flow_id, tenant in zip(flow_ids, pipe.execute(), strict=True)
        if tenant
    }


def _tenant_of(queue: str, tenants: dict[str, str]) -> str:
    parsed = keys.parse_step_queue(queue)
    return tenants.get(parsed[0], "") if parsed else ""


def gauge(redis: Redis, tenant: str) -> int:
    """The tenant's queued bytes as last measured (0 before the first pass)."""
    raw = redis.hget(keys.tenant_queued_bytes(), tenant)
    return int(as_text(raw)) if raw is not None else 0
