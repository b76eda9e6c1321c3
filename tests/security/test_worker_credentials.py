"""Attack: a hostile component image reads the state store with its worker's credentials.

A flow's workers run the tenant's code, so the Secret deploy gives them is the tenant's. Here
two flows (tenants acme and rival) are deployed through the deploy function onto the fake
Kubernetes API, against a real password-protected Redis with a replica; each worker's
REDIS_URL is read back from its applied Secret and used the way a hostile image would."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from redis import Redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from shared import keys
from shared.adapters.redis_acl import RedisAcl
from shared.adapters.redis_streams import RedisStreamsQueue
from shared.clock import FakeClock
from shared.deployment import records as deploy_records
from shared.deployment.desired_state import desired_hash
from shared.deployment.queue_credentials import RedisQueueCredentials, username
from shared.ports.step_message import StepMessage
from shared.store import connect
from tests.conftest import TEST_KEY
from tests.deploy_harness import DeployHarness, flow_doc, step
from tests.fakes.component_repo import FakeComponentRepo
from tests.fakes.kube_api import FakeKubeApi
from tests.support.acl_redis import ADMIN_PASSWORD, Node, primary_with_replica
from tests.support.event_sink import run_worker_for_one_event
from tests.worker.test_worker import BASE_ENV, QUEUE, published
from tests.worker.test_worker import message as step_message


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Node]]:
    with primary_with_replica(tmp_path_factory.mktemp("acl-redis")) as pair:
        yield pair


@pytest.fixture
def store(nodes: tuple[Node, Node]) -> Iterator[Redis]:
    client = nodes[0].client()
    client.flushall()
    yield client
    for node in nodes:  # ACL users are per node and survive FLUSHALL
        admin = node.client()
        for name in admin.acl_users():
            user = name.decode() if isinstance(name, bytes) else str(name)
            if user != "default":
                admin.acl_deluser(user)


@pytest.fixture
def deploy(
    store: Redis,
    nodes: tuple[Node, Node],
    clock: FakeClock,
    kube_api: FakeKubeApi,
    component_repo: FakeComponentRepo,
) -> Iterator[DeployHarness]:
    component_repo.add("comp", replicas=1)
    kube_api.auto_ready = True
    harness = DeployHarness(store, clock, kube_api, component_repo)
    harness.services.credentials = RedisQueueCredentials(
        store, RedisAcl.for_client(store), TEST_KEY, nodes[0].url
    )
    yield harness
    harness.close()


def secret_env(kube: FakeKubeApi, flow_id: str) -> list[dict[str, str]]:
    secrets = kube.objects("secrets", f"orchestrator.openintegrationhub.org/flow={flow_id}")
    return [{k: base64.b64decode(v).decode() for k, v in s["data"].items()} for s in secrets]


def worker_client(kube: FakeKubeApi, flow_id: str) -> tuple[Redis, dict[str, str]]:
    [env] = secret_env(kube, flow_id)[:1]
    return connect(env["REDIS_URL"]), env


def message(flow_id: str, step_id: str = "a") -> StepMessage:
    return StepMessage(
        run_id="r-1", flow_id=flow_id, step_id=step_id, message_id="m-1",
        tenant="acme", attempt=1, data_json='{"x": 1}', token="step-token",
    )  # fmt: skip


# Every `co:{…}` key family, and the other flow's queue: nothing but NOPERM for the worker.
def _foreign_keys() -> list[str]:
    return [
        keys.step_queue("flow-b", "a"),
        *keys.outboxes(),
        keys.penalty("user", "alice"),
        keys.ledger("user", "alice", 60),
        keys.flow_document("flow-b"),
        keys.flow_token("flow-a"),
        keys.deploy_target("flow", "flow-a"),
        keys.queue_credentials("flow-a"),
        keys.run("r-1"),
        keys.step_usage("messages"),
        keys.waiting_runs(),
        keys.event_log(),
    ]


KEY_ATTEMPTS: dict[str, Callable[[Redis, str], Any]] = {
    "TYPE": lambda r, key: r.type(key),
    "GET": lambda r, key: r.get(key),
    "DEL": lambda r, key: r.delete(key),
    "XADD": lambda r, key: r.xadd(key, {"m": "forged"}),
    "XREADGROUP": lambda r, key: r.xreadgroup("workers", "pod", {key: ">"}),
}
ATTACKS: dict[str, Callable[[Redis], Any]] = {
    "SCAN": lambda r: r.scan(0, match="co:*"),
    "KEYS": lambda r: r.keys("*"),
    "CONFIG GET": lambda r: r.config_get("*"),
    "CONFIG SET": lambda r: r.config_set("maxmemory-policy", "allkeys-lru"),
    "FLUSHALL": lambda r: r.flushall(),
    "ACL LIST": lambda r: r.acl_list(),
    "EVAL": lambda r: r.eval("return redis.call('keys', '*')", 0),
    "INFO": lambda r: r.info(),
    "CLIENT LIST": lambda r: r.client_list(),
    "XADD own queue": lambda r: r.xadd(keys.step_queue("flow-a", "a"), {"m": "forged"}),
    "XRANGE own queue": lambda r: r.xrange(keys.step_queue("flow-a", "a")),
    "DEL own queue": lambda r: r.delete(keys.step_queue("flow-a", "a")),
}


def test_a_workers_credentials_work_on_its_own_queue_only(deploy: DeployHarness) -> None:
    deploy.start(flow_doc("flow-a"))
    deploy.start(flow_doc("flow-b", tenant="rival", owner="mallory"))
    worker, env = worker_client(deploy.kube, "flow-a")
    assert ADMIN_PASSWORD not in env["REDIS_URL"]
    assert env["REDIS_URL"].startswith(f"redis://{username('flow-a')}:")

    # It works: step-execute publishes with the store's client, the worker receives and acks.
    own = keys.step_queue("flow-a", "a")
    RedisStreamsQueue(deploy.redis).publish(own, [message("flow-a")])
    queue = RedisStreamsQueue(worker)
    [delivery] = queue.receive(own, "pod-1", wait_seconds=0.1)
    assert delivery.message is not None and delivery.message.data == {"x": 1}
    queue.ack(own, [delivery])
    assert deploy.redis.xlen(own) == 0

    # B's queue, with the commands a worker may use: refused on the key.
    other = keys.step_queue("flow-b", "a")
    RedisStreamsQueue(deploy.redis).publish(other, [message("flow-b")])
    with pytest.raises(NoPermissionError):
        worker.xreadgroup("workers", "pod-1", {other: ">"}, count=10)
    with pytest.raises(NoPermissionError):
        worker.xgroup_create(other, "mine", id="0")
    assert deploy.redis.xinfo_groups(other)[0]["pending"] == 0  # B's message untouched


def _refused(attempt: Callable[[], Any]) -> bool:
    try:
        attempt()
    except NoPermissionError:
        return True
    return False


def test_every_store_key_and_store_wide_command_is_refused(deploy: DeployHarness) -> None:
    """One deploy, the whole table: every attempt must get NOPERM (the list names any that
    did not)."""
    deploy.start(flow_doc("flow-a"))
    deploy.start(flow_doc("flow-b", tenant="rival", owner="mallory"))
    worker, _ = worker_client(deploy.kube, "flow-a")
    allowed = []
    for key in _foreign_keys():
        for verb, attempt in KEY_ATTEMPTS.items():
            if not _refused(lambda: attempt(worker, key)):  # noqa: B023 (called at once)
                allowed.append(f"{verb} {key}")
    for name, attack in sorted(ATTACKS.items()):
        if not _refused(lambda: attack(worker)):  # noqa: B023
            allowed.append(name)
    assert allowed == []
    assert deploy.redis.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    assert deploy.redis.exists(keys.deploy_target("flow", "flow-b")) == 1  # nothing flushed


def test_users_reach_every_node_and_reconcile_writes_them_again(
    deploy: DeployHarness, nodes: tuple[Node, Node]
) -> None:
    primary, replica = nodes
    deploy.start(flow_doc("flow-a"))
    name = username("flow-a")
    assert primary.client().acl_getuser(name) and replica.client().acl_getuser(name)
    replica.client().acl_deluser(name)  # a node that missed it (restarted, promoted…)
    deploy.tick()
    assert replica.client().acl_getuser(name)
    _, env = worker_client(deploy.kube, "flow-a")
    on_replica = connect(env["REDIS_URL"].replace(str(primary.port), str(replica.port)))
    assert on_replica.ping()


def test_passwords_are_never_stored(deploy: DeployHarness) -> None:
    deploy.start(flow_doc("flow-a"))
    _, env = worker_client(deploy.kube, "flow-a")
    password = env["REDIS_URL"].split("@")[0].rsplit(":", 1)[1]
    dumped = []
    for key in deploy.redis.scan_iter("*"):
        dumped.append(repr(deploy.redis.dump(key)))
    assert dumped and not any(password in d for d in dumped)
    record = deploy_records.load(deploy.redis, "flow", "flow-a")
    assert record is not None and password not in json.dumps(record.to_redis())


def test_a_changed_flow_rotates_and_stop_deletes(deploy: DeployHarness) -> None:
    deploy.start(flow_doc("flow-a"))
    first = secret_env(deploy.kube, "flow-a")[0]["REDIS_URL"]
    deploy.start(flow_doc("flow-a"))  # the same flow again: no rotation
    assert secret_env(deploy.kube, "flow-a")[0]["REDIS_URL"] == first
    deploy.start(flow_doc("flow-a", [step("a"), step("b")]))
    second = secret_env(deploy.kube, "flow-a")[0]["REDIS_URL"]
    assert second != first
    assert connect(first).ping() and connect(second).ping()  # pods still rolling keep going
    assert {e["STEP_QUEUE"] for e in secret_env(deploy.kube, "flow-a")} == {
        keys.step_queue("flow-a", "a"),
        keys.step_queue("flow-a", "b"),
    }
    deploy.start(flow_doc("flow-a"))
    with pytest.raises(AuthenticationError):
        connect(first).ping()  # two generations back: gone
    deploy.stop("flow-a")
    with pytest.raises((AuthenticationError, ResponseError)):
        connect(second).ping()
    assert deploy.redis.exists(keys.queue_credentials("flow-a")) == 0


def test_records_of_the_previous_release_are_upgraded_by_the_tick(deploy: DeployHarness) -> None:
    """State written the old way: the stored Secret holds the orchestrator's REDIS_URL."""
    deploy.start(flow_doc("flow-a"))
    record = deploy_records.load(deploy.redis, "flow", "flow-a")
    assert record is not None
    old_url = base64.b64encode(deploy.services.worker.redis_url.encode()).decode()
    legacy = []
    for manifest in record.manifests:
        manifest = json.loads(json.dumps(manifest))
        if manifest["kind"] == "Secret":
            manifest["data"].pop("QUEUE_CREDENTIALS_GENERATION")
            manifest["data"]["REDIS_URL"] = old_url
        legacy.append(manifest)
    old = replace(record, manifests=tuple(legacy), desired_hash=desired_hash(legacy))
    deploy_records.write(deploy.redis, replace(old, applied_hash=old.desired_hash))
    deploy.redis.delete(keys.queue_credentials("flow-a"))
    assert deploy.driver is not None
    for manifest in legacy:  # what the old release applied
        deploy.driver.apply(manifest)
    assert secret_env(deploy.kube, "flow-a")[0]["REDIS_URL"] == deploy.services.worker.redis_url
    deploy.tick()
    env = secret_env(deploy.kube, "flow-a")[0]
    assert env["REDIS_URL"].startswith(f"redis://{username('flow-a')}:")
    assert connect(env["REDIS_URL"]).ping()
    upgraded = deploy_records.load(deploy.redis, "flow", "flow-a")
    assert upgraded is not None
    assert all("REDIS_URL" not in m.get("data", {}) for m in upgraded.manifests)
    deploy.tick()  # and only once
    assert secret_env(deploy.kube, "flow-a")[0]["REDIS_URL"] == env["REDIS_URL"]


def test_the_real_worker_consumes_with_its_own_credentials(deploy: DeployHarness) -> None:
    """The command list is enough for `python -m shared.worker` (nothing it needs is refused)."""
    deploy.start(flow_doc("flow-1", [step("step-a")]))
    [secret] = secret_env(deploy.kube, "flow-1")
    published(deploy.redis, step_message({"value": 4}))
    run = run_worker_for_one_event({**BASE_ENV, "REDIS_URL": secret["REDIS_URL"]})
    event, code, output = run.event, run.exit_code, run.output
    assert code == 0, output
    assert "NOPERM" not in output and "no permissions" not in output, output
    data = event.get_data()
    assert isinstance(data, dict) and data["data"] == {"value": 12.0, "transformed": True}
    assert deploy.redis.xlen(QUEUE) == 0  # acknowledged and deleted with the worker's user
