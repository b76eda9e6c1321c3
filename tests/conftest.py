"""Real servers for the suite: a Redis server (flushed per test), plus helpers.

Fixtures for the other real parts live in their own plugins (tests/fakes/...)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from shared.clock import FakeClock
from shared.local.embedded_redis import EmbeddedRedis

TEST_KEY = "test-orchestrator-key-0123456789abcdef"

pytest_plugins = [
    "tests.support.plugin",
    "tests.fakes.kube_api",
    "tests.fakes.component_repo",
    "tests.fakes.iam",
    "tests.fakes.aws",
    "tests.support.rabbitmq",
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


@pytest.fixture()
def redis(redis_server: EmbeddedRedis) -> Iterator[Redis]:
    client = Redis.from_url(redis_server.url)
    client.flushall()
    client.script_flush()
    yield client
    client.close()


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def base_env(redis_server: EmbeddedRedis) -> dict[str, str]:
    """The environment of a function in tests that do not involve IAM (auth off)."""
    return {
        "REDIS_URL": redis_server.url,
        "ORCHESTRATOR_KEY": TEST_KEY,
        "ORCHESTRATOR_AUTH": "off",
        "ORCHESTRATOR_DEPLOY_DRIVER": "local",
    }
