"""Attack: a hostile component image uses its worker's credentials on a Redis Cluster.

ACL users live on each node; a cluster replicates keys, not users. Two flows are deployed
through the deploy function (fake Kubernetes API) onto the real 3-master cluster of the suite,
their queues chosen on different masters; the worker's REDIS_URL and REDIS_MODE are read back
from its applied Secret and used the way a hostile image would: through a cluster client (so
each command goes to the node that owns its slot) and through a plain client on every node."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, cast

import pytest
from redis import Redis
from redis.cluster import RedisCluster
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from shared import keys
from shared.adapters.redis_acl import RedisAcl
from shared.adapters.redis_streams import RedisStreamsQueue
from shared.clock import FakeClock
from shared.deployment.queue_credentials import RedisQueueCredentials, username
from shared.deployment.worker_settings import WorkerSettings
from shared.ports.step_message import StepMessage
from shared.store import connect
from tests.conftest import TEST_KEY
from tests.deploy_harness import DeployHarness, flow_doc, step
from tests.fakes.component_repo import FakeComponentRepo
from tests.fakes.kube_api import FakeKubeApi
from tests.support.event_sink import run_worker_for_one_event
from tests.support.system import RedisClusterServers, wait_for
from tests.worker.test_worker import BASE_ENV
from tests.worker.test_worker import message as step_message


def _drop_users(servers: RedisClusterServers) -> None:
    for node in servers.nodes:  # ACL users are per node and survive FLUSHALL
        admin = node.client()
        for name in admin.acl_users():
            user = name.decode() if isinstance(name, bytes) else str(name)
            if user != "default":
                admin.acl_deluser(user)
        admin.close()


@pytest.fixture
def cluster(redis_cluster_servers: RedisClusterServers) -> Iterator[RedisCluster]:
    client = redis_cluster_servers.client()
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    _drop_users(redis_cluster_servers)
    yield client
    _drop_users(redis_cluster_servers)
    client.close()


def _owner(cluster: RedisCluster, key: str) -> int:
    node = cluster.get_node_from_key(key)  # type: ignore[no-untyped-call]
    assert node is not None
    return int(node.port)


def _flows_on_different_masters(cluster: RedisCluster) -> tuple[str, str]:
    """Two flow ids whose queues live on different masters (ids are hash tags)."""
    own = "flow-a"
    for number in range(1000):
        other = f"flow-b{number}"
        if _owner(cluster, keys.step_queue(other, "a")) != _owner(
            cluster, keys.step_queue(own, "a")
        ):
            return own, other
    raise AssertionError("no two flows on different masters")


@pytest.fixture
def deploy(
    cluster: RedisCluster,
    redis_cluster_servers: RedisClusterServers,
    clock: FakeClock,
    kube_api: FakeKubeApi,
    component_repo: FakeComponentRepo,
) -> Iterator[DeployHarness]:
    component_repo.add("comp", replicas=1)
    kube_api.auto_ready = True
    store = cast(Redis, cluster)
    harness = DeployHarness(store, clock, kube_api, component_repo)
    harness.services.worker = WorkerSettings(
        redis_url=redis_cluster_servers.url, redis_mode="cluster", k_sink="http://sink.invalid"
    )
    harness.services.credentials = RedisQueueCredentials(
        store, RedisAcl.for_client(store), TEST_KEY, redis_cluster_servers.url, cluster=True
    )
    yield harness
    harness.close()


def secret_env(kube: FakeKubeApi, flow_id: str) -> dict[str, str]:
    secrets = kube.objects("secrets", f"orchestrator.openintegrationhub.org/flow={flow_id}")
    return {k: base64.b64decode(v).decode() for k, v in secrets[0]["data"].items()}


def message(flow_id: str) -> StepMessage:
    return StepMessage(
        run_id="r-1", flow_id=flow_id, step_id="a", message_id="m-1",
        tenant="acme", attempt=1, data_json='{"x": 1}', token="step-token",
    )  # fmt: skip


def _refused(attempt: Callable[[], Any]) -> bool:
    try:
        attempt()
    except NoPermissionError:
        return True
    return False


def _command(client: Redis, *args: str) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


NODE_ATTACKS: dict[str, Callable[[Redis], Any]] = {
    "SCAN": lambda r: r.scan(0, match="co:*"),
    "KEYS": lambda r: r.keys("*"),
    "CONFIG GET": lambda r: r.config_get("*"),
    "CONFIG SET": lambda r: r.config_set("maxmemory-policy", "allkeys-lru"),
    "FLUSHALL": lambda r: r.flushall(),
    "ACL LIST": lambda r: r.acl_list(),
    "EVAL": lambda r: r.eval("return redis.call('keys', '*')", 0),
    "CLUSTER NODES": lambda r: _command(r, "CLUSTER", "NODES"),
    "CLUSTER RESET": lambda r: _command(r, "CLUSTER", "RESET"),
    "CLUSTER FORGET": lambda r: _command(r, "CLUSTER", "FORGET", "0" * 40),
}
KEY_ATTEMPTS: dict[str, Callable[[Redis, str], Any]] = {
    "TYPE": lambda r, key: r.type(key),
    "GET": lambda r, key: r.get(key),
    "DEL": lambda r, key: r.delete(key),
    "XADD": lambda r, key: r.xadd(key, {"m": "forged"}),
    "XREADGROUP": lambda r, key: r.xreadgroup("workers", "pod", {key: ">"}),
}


def test_a_workers_credentials_work_on_its_own_slot_and_nowhere_else(
    deploy: DeployHarness, cluster: RedisCluster, redis_cluster_servers: RedisClusterServers
) -> None:
    own_flow, other_flow = _flows_on_different_masters(cluster)
    deploy.start(flow_doc(own_flow))
    deploy.start(flow_doc(other_flow, tenant="rival", owner="mallory"))
    env = secret_env(deploy.kube, own_flow)
    assert env["REDIS_MODE"] == "cluster"
    assert env["REDIS_URL"].startswith(f"redis://{username(own_flow)}:")
    name = username(own_flow)
    for node in redis_cluster_servers.nodes:  # every master holds the user
        assert node.client().acl_getuser(name), node.port

    # It works, on the node that owns its slot, through the cluster client a worker builds.
    worker = connect(env["REDIS_URL"], env["REDIS_MODE"])
    assert isinstance(worker, RedisCluster)
    own = keys.step_queue(own_flow, "a")
    RedisStreamsQueue(deploy.redis).publish(own, [message(own_flow)])
    queue = RedisStreamsQueue(worker)
    [delivery] = queue.receive(own, "pod-1", wait_seconds=0.1)
    assert delivery.message is not None and delivery.message.data == {"x": 1}
    queue.ack(own, [delivery])
    assert deploy.redis.xlen(own) == 0

    # The other flow's queue (on another master), every `co:{…}` key (wherever its slot is),
    # and the node-wide commands on every node: NOPERM, nothing else.
    other = keys.step_queue(other_flow, "a")
    RedisStreamsQueue(deploy.redis).publish(other, [message(other_flow)])
    allowed = []
    foreign = [
        other,
        *keys.outboxes(),
        keys.flow_document(other_flow),
        keys.penalty("user", "alice"),
        keys.queue_credentials(own_flow),
        keys.deploy_target("flow", other_flow),
        keys.run("r-1"),
        keys.event_log(),
    ]
    for key in foreign:
        for verb, attempt in KEY_ATTEMPTS.items():
            if not _refused(lambda: attempt(worker, key)):  # noqa: B023 (called at once)
                allowed.append(f"{verb} {key}")
    password = env["REDIS_URL"].split("@")[0].rsplit(":", 1)[1]
    for node in redis_cluster_servers.nodes:
        plain = Redis(port=node.port, username=name, password=password, socket_timeout=5)
        assert plain.ping()  # authenticated on this node too
        for attack_name, attack in NODE_ATTACKS.items():
            if not _refused(lambda: attack(plain)):  # noqa: B023
                allowed.append(f"{attack_name} on {node.port}")
        plain.close()
    assert allowed == []
    assert deploy.redis.xinfo_groups(other)[0]["pending"] == 0  # B's message untouched
    assert deploy.redis.exists(keys.deploy_target("flow", other_flow)) == 1  # nothing flushed


def test_reconcile_writes_the_user_again_on_the_node_that_lost_it(
    deploy: DeployHarness, cluster: RedisCluster, redis_cluster_servers: RedisClusterServers
) -> None:
    deploy.start(flow_doc("flow-a"))
    env = secret_env(deploy.kube, "flow-a")
    own = keys.step_queue("flow-a", "a")
    owner = _owner(cluster, own)
    (node,) = [n for n in redis_cluster_servers.nodes if n.port == owner]
    node.client().acl_deluser(username("flow-a"))  # restarted, replaced, promoted…
    worker = connect(env["REDIS_URL"], env["REDIS_MODE"])
    with pytest.raises((AuthenticationError, ResponseError)):
        worker.xreadgroup("workers", "pod", {own: ">"})
    worker.close()
    deploy.tick()
    assert node.client().acl_getuser(username("flow-a"))
    worker = connect(env["REDIS_URL"], env["REDIS_MODE"])
    RedisStreamsQueue(deploy.redis).publish(own, [message("flow-a")])
    assert len(RedisStreamsQueue(worker).receive(own, "pod-1", wait_seconds=0.1)) == 1
    deploy.stop("flow-a")
    assert all(not n.client().acl_getuser(username("flow-a")) for n in redis_cluster_servers.nodes)


@pytest.fixture(scope="module")
def replicated_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """3 masters with one replica each: the users must reach the replicas too."""
    servers = RedisClusterServers(tmp_path_factory.mktemp("acl-cluster"), replicas=1).start()
    yield servers
    servers.stop()


def _role(node: Redis) -> str:
    return str(node.info("replication")["role"])


def test_users_reach_every_replica_and_survive_a_failover(
    replicated_cluster: RedisClusterServers,
    clock: FakeClock,
    kube_api: FakeKubeApi,
    component_repo: FakeComponentRepo,
) -> None:
    component_repo.add("comp", replicas=1)
    kube_api.auto_ready = True
    store = cast(Redis, replicated_cluster.client())
    harness = DeployHarness(store, clock, kube_api, component_repo)
    harness.services.worker = WorkerSettings(
        redis_url=replicated_cluster.url, redis_mode="cluster", k_sink="http://sink.invalid"
    )
    harness.services.credentials = RedisQueueCredentials(
        store, RedisAcl.for_client(store), TEST_KEY, replicated_cluster.url, cluster=True
    )
    try:
        harness.start(flow_doc("flow-a"))
        name = username("flow-a")
        roles = sorted(_role(n.client()) for n in replicated_cluster.nodes)
        assert roles == ["master"] * 3 + ["slave"] * 3
        missing = [n.port for n in replicated_cluster.nodes if not n.client().acl_getuser(name)]
        assert missing == []

        # The replica of the queue's master takes over; the worker goes on consuming there.
        own = keys.step_queue("flow-a", "a")
        owner = _owner(cast(RedisCluster, store), own)
        (replica,) = [
            n for n in replicated_cluster.nodes
            if _role(n.client()) == "slave"
            and int(n.client().info("replication")["master_port"]) == owner
        ]  # fmt: skip
        synced = replica.client()
        wait_for(lambda: synced.info("replication")["master_link_status"] == "up", "in sync")
        _command(synced, "CLUSTER", "FAILOVER", "TAKEOVER")  # the promotion, without a vote
        wait_for(lambda: _role(replica.client()) == "master", "the replica promoted")
        env = secret_env(kube_api, "flow-a")
        worker = connect(env["REDIS_URL"], env["REDIS_MODE"])
        RedisStreamsQueue(store).publish(own, [message("flow-a")])
        assert _owner(cast(RedisCluster, worker), own) == replica.port
        [delivery] = RedisStreamsQueue(worker).receive(own, "pod-1", wait_seconds=0.1)
        assert delivery.message is not None
        worker.close()
    finally:
        harness.close()
        store.close()


def test_the_real_worker_consumes_on_the_cluster_with_its_own_credentials(
    deploy: DeployHarness, cluster: RedisCluster, redis_cluster_servers: RedisClusterServers
) -> None:
    """`python -m shared.worker` with the Secret's REDIS_URL and REDIS_MODE, for a flow whose
    queue lives on another master than the URL's node: its cluster client follows the slot
    and needs nothing the user is refused (CLUSTER SLOTS, COMMAND, the stream commands)."""
    url_node = redis_cluster_servers.nodes[0].port
    flow_id = next(
        f"flow-{n}"
        for n in range(1000)
        if _owner(cluster, keys.step_queue(f"flow-{n}", "step-a")) != url_node
    )
    queue = keys.step_queue(flow_id, "step-a")
    deploy.start(flow_doc(flow_id, [step("step-a")]))
    env = secret_env(deploy.kube, flow_id)
    own = replace(step_message({"value": 4}), flow_id=flow_id)
    RedisStreamsQueue(deploy.redis).publish(queue, [own])
    run = run_worker_for_one_event(
        {
            **BASE_ENV,
            "FLOW_ID": flow_id,
            "STEP_QUEUE": queue,
            "REDIS_URL": env["REDIS_URL"],
            "REDIS_MODE": env["REDIS_MODE"],
        }
    )
    event, code, output = run.event, run.exit_code, run.output
    assert code == 0, output
    assert "NOPERM" not in output and "no permissions" not in output, output
    data = event.get_data()
    assert isinstance(data, dict) and data["data"] == {"value": 12.0, "transformed": True}
    assert deploy.redis.xlen(queue) == 0  # acknowledged and deleted with the worker's user
