"""shared/store.py on the three topologies: one server, a real 3-master Redis Cluster and a
master + replica behind three Sentinels (all real redis-server processes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from redis.cluster import RedisCluster

from shared import keys, store
from shared.errors import PermanentError
from shared.store import EvictionPolicyError
from tests.support.system import RedisClusterServers, SentinelServers


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelServers]:
    servers = SentinelServers(tmp_path_factory.mktemp("sentinel")).start()
    yield servers
    servers.stop()


def test_a_cluster_url_gives_a_cluster_client_reaching_every_tag(
    redis_cluster_servers: RedisClusterServers,
) -> None:
    client = store.connect(redis_cluster_servers.url, "cluster")
    assert isinstance(client, RedisCluster)
    client.flushall()
    slots = set()
    for tag in keys.TAGS:
        key = keys.tick_lease(tag)
        client.set(key, tag)
        slots.add(client.cluster_keyslot(key))
        assert client.get(key) == tag.encode()
    nodes = {client.get_node_from_key(keys.tick_lease(tag)).name for tag in keys.TAGS}
    assert len(nodes) > 1, "the tags spread over several masters"
    assert store.check_eviction_policy(client) == "noeviction"


def test_an_evicting_cluster_node_is_refused(redis_cluster_servers: RedisClusterServers) -> None:
    node = redis_cluster_servers.nodes[1].client()
    node.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(EvictionPolicyError, match="noeviction"):
            store.check_eviction_policy(store.connect(redis_cluster_servers.url, "cluster"))
    finally:
        node.config_set("maxmemory-policy", "noeviction")


def test_a_sentinel_url_reaches_the_master_it_names(sentinel: SentinelServers) -> None:
    client = store.connect(sentinel.url)  # the scheme says sentinel
    client.set("co:{adm}:probe", "1")
    assert client.get("co:{adm}:probe") == b"1"
    master = Redis(port=sentinel.master_port())
    assert master.get("co:{adm}:probe") == b"1", "written on the master the Sentinels name"
    assert store.check_eviction_policy(client) == "noeviction"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://s1:26379", "names the service"),
        ("redis+sentinel://s1,s2:26379/svc", "not host:port"),
    ],
)
def test_a_bad_sentinel_url_is_refused_naming_it(url: str, problem: str) -> None:
    with pytest.raises(PermanentError, match=problem):
        store.connect(url)


def test_the_slot_client_of_a_cluster_is_the_node_of_that_slot(
    redis_cluster_servers: RedisClusterServers, tmp_path: Path
) -> None:
    client = store.connect(redis_cluster_servers.url, "cluster")
    key = keys.tick_lease(keys.POLICY)
    node = store.slot_client(client, key)
    assert isinstance(node, Redis) and not isinstance(node, RedisCluster)
    pipe = node.pipeline(transaction=False)
    pipe.set(key, "x")
    pipe.get(key)
    assert pipe.execute() == [True, b"x"]
    plain = Redis()
    assert store.slot_client(plain, key) is plain
