"""The tenants' queued-bytes gauge (shared/execution/queued_bytes.py) on a real Redis: measured
page by page, replaced whole at the end of a pass, so a queue that went away by any path (ack,
drop on stop, a DEL) leaves nothing behind to drift."""

from __future__ import annotations

from typing import cast

import pytest
from redis import Redis

from shared import keys
from shared.events.flow_document import FlowDocument
from shared.execution import queued_bytes
from shared.model import flows
from shared.store import as_text
from tests.support.flows import flow_document

pytestmark = pytest.mark.redis_cluster  # also on a real 3-master Redis Cluster


def fill(redis: Redis, queue: str, entries: int, size: int) -> None:
    for _ in range(entries):
        redis.xadd(queue, {"data": "x" * size})
    redis.sadd(keys.step_queues(), queue)


def whole_pass(redis: Redis, *, page_size: int, now: float) -> int:
    for ticks in range(1, 100):
        if queued_bytes.measure(redis, page_size=page_size, now=now).pass_ended:
            return ticks
    raise AssertionError("the pass never ended")


def test_a_pass_measures_each_tenants_queues_and_replaces_the_gauge_only_when_it_ends(
    redis: Redis,
) -> None:
    for flow_id, tenant in (("f1", "acme"), ("f2", "acme"), ("g1", "rival")):
        document = flow_document(flow_id, ["a", "b"], [("a", "b")], tenant=tenant)
        flows.upsert(redis, FlowDocument.parse(document), 1.0)
    fill(redis, keys.step_queue("f1", "a"), 20, 1000)
    fill(redis, keys.step_queue("f1", "b"), 5, 1000)
    fill(redis, keys.step_queue("f2", "a"), 10, 1000)
    fill(redis, keys.step_queue("g1", "a"), 2, 100)
    fill(redis, keys.global_step_queue("shared-component"), 50, 1000)  # no one tenant's
    redis.hset(keys.tenant_queued_bytes(), mapping={"acme": 1, "gone": 99})  # a previous pass

    # 5 queues, 2 a page: the gauge stays as it was until the third tick ends the pass
    assert not queued_bytes.measure(redis, page_size=2, now=10.0).pass_ended
    assert not queued_bytes.measure(redis, page_size=2, now=11.0).pass_ended
    assert queued_bytes.gauge(redis, "acme") == 1
    assert queued_bytes.measure(redis, page_size=2, now=12.0).pass_ended

    acme = sum(
        int(redis.memory_usage(keys.step_queue(f, n), samples=0) or 0)
        for f, n in (("f1", "a"), ("f1", "b"), ("f2", "a"))
    )
    assert queued_bytes.gauge(redis, "acme") == acme > 35 * 1000
    assert queued_bytes.gauge(redis, "rival") == redis.memory_usage(
        keys.step_queue("g1", "a"), samples=0
    )
    gauge = {as_text(k): as_text(v) for k, v in redis.hgetall(keys.tenant_queued_bytes()).items()}
    assert set(gauge) == {"acme", "rival", keys.QUEUED_BYTES_MEASURED_AT}  # `gone` is gone
    assert gauge[keys.QUEUED_BYTES_MEASURED_AT] == "12.0"
    assert not redis.exists(keys.tenant_queued_bytes_pass())


def test_queues_emptied_or_deleted_by_any_path_leave_nothing_counted(redis: Redis) -> None:
    document = flow_document("f1", ["a", "b"], [("a", "b")], tenant="acme")
    flows.upsert(redis, FlowDocument.parse(document), 1.0)
    fill(redis, keys.step_queue("f1", "a"), 30, 2000)
    fill(redis, keys.step_queue("f1", "b"), 30, 2000)
    assert whole_pass(redis, page_size=1, now=1.0) == 2
    assert queued_bytes.gauge(redis, "acme") > 100 * 1000

    # `a` consumed (XDEL on ack), `b` gone without a word (dropped, DEL, ...): nothing decremented
    queue_a = keys.step_queue("f1", "a")
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], redis.xrange(queue_a))
    ids = [entry_id for entry_id, _ in entries]
    redis.xdel(queue_a, *ids)
    redis.delete(keys.step_queue("f1", "b"))
    whole_pass(redis, page_size=1, now=2.0)
    assert queued_bytes.gauge(redis, "acme") < 2000  # an empty stream's own bytes
    assert queued_bytes.gauge(redis, "acme") == int(redis.memory_usage(queue_a, samples=0) or 0)
