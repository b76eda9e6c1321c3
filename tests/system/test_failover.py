"""A Sentinel failover during admissions and ticks, over real HTTP into flow-start.

A master with one replica behind three Sentinels; flow-start (functions-framework) on the
`redis+sentinel://` URL with REDIS_WAIT_REPLICAS=1, so an event is answered 200 only once the
replica holds its writes. The master is SIGKILLed while executes and ticks arrive; the sender
retries like the broker does (same event, until 2xx). Expected, in this order: 503s while the
Sentinels fail over, then 200s again from the promoted replica; afterwards every event answered
200 has its run (none lost), and a full redelivery adds nothing (none doubled).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from shared import keys
from shared.events import types as t
from tests.conftest import TEST_KEY
from tests.support.events import cloudevent
from tests.support.flows import flow_doc
from tests.support.http_sink import HttpSink
from tests.support.system import BrokerTraffic, FunctionProcess, SentinelServers, wait_for

EXECUTES = 24
KILL_AFTER = 8  # acked executes before the master dies
FLOWS = ["fo-0", "fo-1", "fo-2", "fo-3"]


@pytest.fixture()
def sentinel(tmp_path: Path) -> Iterator[SentinelServers]:
    servers = SentinelServers(tmp_path / "redis").start()
    yield servers
    servers.stop()


@pytest.fixture()
def flow_start(sentinel: SentinelServers, tmp_path: Path) -> Iterator[FunctionProcess]:
    sink = HttpSink().__enter__()
    env = {
        "K_SINK": sink.url,
        "REDIS_URL": sentinel.url,
        "REDIS_WAIT_REPLICAS": "1",
        "ORCHESTRATOR_KEY": TEST_KEY,
        "ORCHESTRATOR_AUTH": "off",
        "FLOW_START_WORK_THROUGH_SECONDS": "0",
    }
    process = FunctionProcess("flow-start", env, tmp_path).start()
    yield process
    process.stop()
    sink.__exit__(None, None, None)


def _runs(redis: Redis) -> set[str]:
    ids = set(redis.hkeys(keys.admitted_runs())) | set(redis.hkeys(keys.waiting_runs()))
    return {i.decode() if isinstance(i, bytes) else str(i) for i in ids}


@pytest.mark.timeout(300)
def test_a_master_killed_mid_traffic_answers_503_then_recovers_none_lost_none_doubled(
    sentinel: SentinelServers, flow_start: FunctionProcess
) -> None:
    for flow_id in FLOWS:
        reply = flow_start.post(cloudevent(t.FLOW_STARTING, flow_doc(flow_id, cron=None)))
        assert reply.status_code == 200, reply.text
    first_master = sentinel.master_port()
    events = [
        cloudevent(t.FLOW_EXECUTE, {"flowId": FLOWS[i % len(FLOWS)]}, event_id=f"exe-{i}")
        for i in range(EXECUTES)
    ]
    traffic = BrokerTraffic(flow_start, events, "sentinel").start()
    statuses, acked, tick_statuses = traffic.statuses, traffic.acked, traffic.tick_statuses
    try:
        wait_for(lambda: len(acked) >= KILL_AFTER, "the first executes acked", 60)
        sentinel.master.kill()
        wait_for(lambda: 503 in statuses[KILL_AFTER:], "a 503 while failing over", 60)
        wait_for(lambda: sentinel.master_port() != first_master, "a promoted replica", 60)
        sentinel.master.start()  # the old master comes back and becomes the new replica
        traffic.wait_until_sent()
    finally:
        traffic.stop()

    failed_at = statuses.index(503)
    assert 200 in statuses[failed_at:], "answered again after the failover"
    assert 503 in tick_statuses and 200 in tick_statuses[tick_statuses.index(503) :]

    new_master = Redis(port=sentinel.master_port())
    runs = _runs(new_master)
    flow_of_run = {run.split("~", 1)[0] for run in runs}
    assert len(acked) == EXECUTES
    assert len(runs) == EXECUTES, "one run per execute: none lost, none doubled"
    assert flow_of_run == set(FLOWS)

    for event in events:  # a full redelivery (the broker replaying) changes nothing
        assert flow_start.post(event).status_code == 200
    assert _runs(new_master) == runs
