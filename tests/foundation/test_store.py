"""The Redis start-up check (DESIGN §5): locks and leases must never be evicted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from flask.testing import FlaskClient
from redis import Redis

from shared import store
from shared.errors import TemporaryError
from shared.events import types as t
from shared.local.embedded_redis import EmbeddedRedis, free_port
from shared.runtime.function import FunctionRuntime
from shared.store import EvictionPolicyError
from tests.support.apps import app_client
from tests.support.runtime import recording_spec


@pytest.fixture()
def eviction_policy(redis: Redis) -> Iterator[Redis]:
    """The test server, with its maxmemory-policy restored afterwards."""
    before = str(redis.config_get("maxmemory-policy")["maxmemory-policy"])
    yield redis
    redis.config_set("maxmemory-policy", before)


def test_noeviction_is_accepted(redis: Redis) -> None:
    assert store.check_eviction_policy(redis) == "noeviction"


@pytest.mark.parametrize(
    "policy",
    ["allkeys-lru", "volatile-lru", "allkeys-random", "volatile-ttl", "allkeys-lfu"],
)
def test_any_evicting_policy_is_refused(eviction_policy: Redis, policy: str) -> None:
    eviction_policy.config_set("maxmemory-policy", policy)
    with pytest.raises(EvictionPolicyError) as caught:
        store.check_eviction_policy(eviction_policy)
    assert "REDIS_URL" in caught.value.message and policy in caught.value.message


def test_a_function_refuses_to_start_on_an_evicting_redis(
    eviction_policy: Redis, base_env: dict[str, str]
) -> None:
    eviction_policy.config_set("maxmemory-policy", "allkeys-lru")
    with pytest.raises(EvictionPolicyError):
        FunctionRuntime.from_env(recording_spec("deploy"), base_env)


def test_a_forbidden_config_command_is_not_fatal(redis: Redis, redis_server: EmbeddedRedis) -> None:
    """Managed Redis often forbids CONFIG: the check warns and lets the function start."""
    redis.acl_setuser(
        "limited",
        enabled=True,
        passwords=["+limited-pass"],
        keys=["*"],
        commands=["+@all", "-config"],
    )
    try:
        limited = Redis(port=redis_server.port, username="limited", password="limited-pass")
        assert limited.ping()
        assert store.check_eviction_policy(limited) is None
    finally:
        redis.acl_deluser("limited")


def test_an_unreachable_redis_is_temporary() -> None:
    dead = store.connect(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(TemporaryError):
        store.check_eviction_policy(dead)


def test_connect_does_no_io() -> None:
    client = store.connect(f"redis://127.0.0.1:{free_port()}/0")  # nobody listens there
    assert client.connection_pool.connection_kwargs["port"] > 0


def test_the_embedded_server_is_noeviction_and_stops_cleanly(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "data", persist=True).start()
    process = server.process
    try:
        client = Redis.from_url(server.url)
        assert store.check_eviction_policy(client) == "noeviction"
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("dir")["dir"] == str(tmp_path / "data")
        client.close()
    finally:
        server.stop()
    assert process is not None and process.poll() is not None


# --------------------------------------------------------------------------- through a function
def _app(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> FlaskClient:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("K_SINK", raising=False)
    source = Path(__file__).resolve().parents[2] / "functions" / "deploy" / "main.py"
    return app_client(source)


def _tick(client: FlaskClient) -> int:
    headers, body = to_binary(CloudEvent({"type": t.TICK, "source": "/c", "id": "t-1"}, {}))
    return int(client.post("/", headers=headers, data=body).status_code)


def test_a_function_process_refuses_to_start_on_an_evicting_redis(
    monkeypatch: pytest.MonkeyPatch, eviction_policy: Redis, base_env: dict[str, str]
) -> None:
    eviction_policy.config_set("maxmemory-policy", "allkeys-lru")
    with pytest.raises(EvictionPolicyError, match="REDIS_URL"):
        _app(monkeypatch, base_env)


def test_an_evicting_redis_found_on_first_use_answers_503_so_nothing_is_dead_lettered(
    monkeypatch: pytest.MonkeyPatch, eviction_policy: Redis, base_env: dict[str, str]
) -> None:
    client = _app(monkeypatch, base_env)  # started on a good Redis, reconfigured since
    eviction_policy.config_set("maxmemory-policy", "volatile-lru")
    assert _tick(client) == 503
    eviction_policy.config_set("maxmemory-policy", "noeviction")
    assert _tick(client) == 200  # nothing cached: fixed Redis, working function


def test_an_unreachable_redis_at_start_does_not_stop_the_function(
    monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str]
) -> None:
    client = _app(monkeypatch, {**base_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert client.get("/healthz").status_code == 200
    assert _tick(client) == 503
