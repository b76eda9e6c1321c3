"""Real servers for the suite: a Redis server (flushed per test), plus helpers.

Fixtures for the other real parts live in their own plugins (tests/fakes/...)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from redis import Redis

from shared.clock import FakeClock
from shared.local.embedded_redis import EmbeddedRedis
from tests.support.system import RedisClusterServers

TEST_KEY = "test-orchestrator-key-0123456789abcdef"

pytest_plugins = [
    "tests.support.plugin",
    "tests.fakes.kube_api",
    "tests.fakes.component_repo",
    "tests.fakes.iam",
    "tests.fakes.aws",
    "tests.support.rabbitmq",
    "tests.support.ferryman",
]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    external = os.environ.get("TEST_REDIS_URL")
    if external:  # run the suite against a server you started yourself
        server = EmbeddedRedis(
            Path("."), port=Redis.from_url(external).connection_pool.connection_kwargs["port"]
        )
        yield server
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster_servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RedisClusterServers]:
    """A real 3-master Redis Cluster (cluster-enabled redis-server processes)."""
    servers = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster")).start()
    yield servers
    servers.stop()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked `redis_cluster` that use Redis run twice: on one server and on the
    3-master cluster, proving every key a script or transaction touches shares one slot."""
    marker = metafunc.definition.get_closest_marker("redis_cluster")
    if marker is None or marker.kwargs.get("standalone_only"):  # a reason to stay on one
        return
    if "redis_topology" in metafunc.fixturenames:
        metafunc.parametrize("redis_topology", ["standalone", "cluster"], indirect=True)


@pytest.fixture()
def redis_topology(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "standalone"))


@pytest.fixture()
def redis(request: pytest.FixtureRequest, redis_topology: str) -> Iterator[Redis]:
    if redis_topology == "cluster":
        servers: RedisClusterServers = request.getfixturevalue("redis_cluster_servers")
        client = cast(Redis, servers.client())
    else:
        server: EmbeddedRedis = request.getfixturevalue("redis_server")
        client = Redis.from_url(server.url)
    client.flushall()
    client.script_flush()
    yield client
    client.close()


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def base_env(request: pytest.FixtureRequest, redis_topology: str) -> dict[str, str]:
    """The environment of a function in tests that do not involve IAM (auth off); on the
    cluster when the test runs there."""
    if redis_topology == "cluster":
        servers: RedisClusterServers = request.getfixturevalue("redis_cluster_servers")
        return {
            "REDIS_URL": servers.url,
            "REDIS_MODE": "cluster",
            "ORCHESTRATOR_KEY": TEST_KEY,
            "ORCHESTRATOR_AUTH": "off",
            "ORCHESTRATOR_DEPLOY_DRIVER": "local",
        }
    server: EmbeddedRedis = request.getfixturevalue("redis_server")
    return {
        "REDIS_URL": server.url,
        "ORCHESTRATOR_KEY": TEST_KEY,
        "ORCHESTRATOR_AUTH": "off",
        "ORCHESTRATOR_DEPLOY_DRIVER": "local",
    }
