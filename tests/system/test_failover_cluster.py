"""A Redis Cluster failover during admissions and ticks, over real HTTP into flow-start.

Three masters with a replica each (redis-server in cluster mode, cluster-node-timeout 2 s);
flow-start (functions-framework) with REDIS_MODE=cluster and REDIS_WAIT_REPLICAS=1, so an event
is answered 200 only once the replica of its slot's master holds its writes. The master of the
`{adm}` slot (all of flow-start's state) is SIGKILLed while executes and ticks arrive; the
sender retries like the broker does (same event, until 2xx). Expected: 503s while the cluster
promotes that master's replica, then 200s again; afterwards every event answered 200 has its
run (none lost), and a full redelivery adds nothing (none doubled).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from shared import keys
from shared.events import types as t
from tests.conftest import TEST_KEY
from tests.support.events import cloudevent
from tests.support.flows import flow_doc
from tests.support.http_sink import HttpSink
from tests.support.system import (
    BrokerTraffic,
    FunctionProcess,
    RedisClusterServers,
    RedisNode,
    wait_for,
)

pytestmark = pytest.mark.faults

EXECUTES = 24
KILL_AFTER = 8  # acked executes before the master dies
FLOWS = ["cf-0", "cf-1", "cf-2", "cf-3"]


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(tmp_path / "redis", masters=3, replicas=1).start()
    wait_for(lambda: _replicas_online(servers) == 3, "every master's replica in sync", 60)
    yield servers
    servers.stop()


@pytest.fixture()
def flow_start(cluster: RedisClusterServers, tmp_path: Path) -> Iterator[FunctionProcess]:
    sink = HttpSink().__enter__()
    env = {
        "K_SINK": sink.url,
        "REDIS_URL": cluster.url,
        "REDIS_MODE": "cluster",
        "REDIS_WAIT_REPLICAS": "1",
        "ORCHESTRATOR_KEY": TEST_KEY,
        "ORCHESTRATOR_AUTH": "off",
        "FLOW_START_WORK_THROUGH_SECONDS": "0",
    }
    process = FunctionProcess("flow-start", env, tmp_path).start()
    yield process
    process.stop()
    sink.__exit__(None, None, None)


def _replicas_online(cluster: RedisClusterServers) -> int:
    """Masters whose replica is connected and online."""
    online = 0
    for node in cluster.nodes:
        info = node.client().info("replication")
        if info.get("role") == "master" and "online" in str(info.get("slave0", "")):
            online += 1
    return online


def _client(cluster: RedisClusterServers, alive: RedisNode) -> RedisCluster:
    return RedisCluster(host="127.0.0.1", port=alive.port, socket_timeout=5)


def _master_of(client: RedisCluster, key: str) -> int:
    node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
    assert node is not None
    return int(node.port)


def _runs(client: RedisCluster) -> set[str]:
    ids = set(client.hkeys(keys.admitted_runs())) | set(client.hkeys(keys.waiting_runs()))
    return {i.decode() if isinstance(i, bytes) else str(i) for i in ids}


@pytest.mark.timeout(300)
def test_the_admission_slots_master_killed_mid_traffic_answers_503_then_recovers(
    cluster: RedisClusterServers, flow_start: FunctionProcess
) -> None:
    for flow_id in FLOWS:
        reply = flow_start.post(cloudevent(t.FLOW_STARTING, flow_doc(flow_id, cron=None)))
        assert reply.status_code == 200, reply.text
    probe = cluster.client()
    first_master = _master_of(probe, keys.admitted_runs())
    probe.close()
    doomed = next(node for node in cluster.nodes if node.port == first_master)
    survivor = next(node for node in cluster.nodes if node.port != first_master)
    events = [
        cloudevent(t.FLOW_EXECUTE, {"flowId": FLOWS[i % len(FLOWS)]}, event_id=f"cexe-{i}")
        for i in range(EXECUTES)
    ]

    def promoted() -> bool:
        client = _client(cluster, survivor)
        try:
            return _master_of(client, keys.admitted_runs()) != first_master
        finally:
            client.close()

    traffic = BrokerTraffic(flow_start, events, "cluster").start()
    statuses, acked = traffic.statuses, traffic.acked
    try:
        wait_for(lambda: len(acked) >= KILL_AFTER, "the first executes acked", 60)
        doomed.kill()
        wait_for(lambda: any(s != 200 for s in statuses[KILL_AFTER:]), "a refusal", 60)
        wait_for(promoted, "the replica promoted", 60)
        doomed.start()  # the old master comes back and becomes the new one's replica
        traffic.wait_until_sent()
    finally:
        traffic.stop()

    refused = [s for s in statuses if s != 200]
    assert set(refused) <= {503}, f"refusals are 503 (the broker retries): {refused}"
    failed_at = statuses.index(503)
    assert 200 in statuses[failed_at:], "answered again after the failover"

    client = _client(cluster, survivor)
    try:
        runs = _runs(client)
        assert len(acked) == EXECUTES
        assert len(runs) == EXECUTES, "one run per execute: none lost, none doubled"
        assert {run.split("~", 1)[0] for run in runs} == set(FLOWS)
        for event in events:  # a full redelivery (the broker replaying) changes nothing
            assert flow_start.post(event).status_code == 200
        assert _runs(client) == runs
    finally:
        client.close()
