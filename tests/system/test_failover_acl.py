"""A flow's worker ACL user survives a Sentinel failover: the worker keeps consuming.

ACL users are per node, not replicated; deploy writes each flow's worker user to the master
and its replicas (shared/adapters/redis_acl.py). After the master is SIGKILLed and a replica
promoted, the worker authenticates with the same credentials on the new master and consumes
the messages published there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from redis import Redis
from redis.exceptions import RedisError

from shared import keys, store
from shared.adapters.redis_acl import RedisAcl
from shared.adapters.redis_streams import RedisStreamsQueue
from shared.deployment.queue_credentials import RedisQueueCredentials
from shared.errors import TemporaryError
from shared.ports.step_message import StepMessage
from tests.conftest import TEST_KEY
from tests.support.system import SentinelServers, wait_for

FLOW = "acl-flow"


@pytest.fixture()
def sentinel(tmp_path: Path) -> Iterator[SentinelServers]:
    servers = SentinelServers(tmp_path / "redis").start()
    yield servers
    servers.stop()


def _message(n: int) -> StepMessage:
    return StepMessage(
        run_id="r1", flow_id=FLOW, step_id="a", message_id=f"m-{n}", tenant="acme",
        attempt=1, data_json=f'{{"n": {n}}}', token="t",
    )  # fmt: skip


def _consume(port: int, user: str, password: str, queue: str) -> list[str]:
    worker = Redis(port=port, username=user, password=password, socket_timeout=5)
    try:
        streams = RedisStreamsQueue(worker)
        got = streams.receive(queue, "worker-1", wait_seconds=0)
        streams.ack(queue, got)
        return [d.message.message_id for d in got if d.message]
    finally:
        worker.close()


def _published(orchestrator: Redis, queue: str, n: int) -> bool:
    try:
        RedisStreamsQueue(orchestrator).publish(queue, [_message(n)])
        return True
    except (RedisError, TemporaryError):  # the adapter wraps Redis errors as TemporaryError
        return False


@pytest.mark.timeout(300)
def test_a_flows_worker_user_still_consumes_after_a_failover(sentinel: SentinelServers) -> None:
    orchestrator = store.connect(sentinel.url)
    queue = keys.step_queue(FLOW, "a")
    credentials = RedisQueueCredentials(
        orchestrator, RedisAcl.for_client(orchestrator), TEST_KEY, "redis://127.0.0.1:6379/0"
    )
    worker_url = urlparse(credentials.grant(FLOW, [queue], generation=1)["REDIS_URL"])
    user, password = str(worker_url.username), str(worker_url.password)

    assert _published(orchestrator, queue, 1)
    first = sentinel.master_port()
    assert _consume(first, user, password, queue) == ["m-1"]

    sentinel.master.kill()
    wait_for(lambda: sentinel.master_port() != first, "a promoted replica", 60)
    sentinel.master.start()  # back as the new master's replica
    wait_for(lambda: _published(orchestrator, queue, 2), "publishing on the new master", 60)

    second = sentinel.master_port()
    assert second != first
    assert _consume(second, user, password, queue) == ["m-2"], "same user, new master"
    with pytest.raises(RedisError):  # and the user is still only what deploy granted
        Redis(port=second, username=user, password=password).get(keys.flow_index())
