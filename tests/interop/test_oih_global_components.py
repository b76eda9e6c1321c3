"""Global components as the hub has them (the Component Repository's `isGlobal`, started and
stopped with component.starting / component.stopping from lib/component-repository/src/routes/
components/GlobalStart.js and GlobalStop.js; the original orchestrator's KubernetesDriver for
`restAPI`): one Deployment per global component, none per flow for the nodes that use it,
their messages on the component's one queue, served by the real worker.

The deploy function on the fake Kubernetes API over HTTP and the fake Component Repository,
the Redis queue user of the global worker on the real Redis, step-execute and the worker on
the same Redis; the payloads are the fixtures."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis

from shared import keys
from shared.adapters.redis_acl import RedisAcl
from shared.adapters.redis_streams import RedisStreamsQueue
from shared.clock import FakeClock
from shared.deployment.queue_credentials import RedisQueueCredentials, username
from shared.handlers.step_execute import SPEC as STEP_EXECUTE
from shared.model import flows
from shared.store import connect
from shared.worker.main import Worker, WorkerConfig
from tests.conftest import TEST_KEY
from tests.deploy_harness import DeployHarness
from tests.fakes.component_repo import FakeComponentRepo
from tests.fakes.kube_api import FakeKubeApi
from tests.support.apps import drop_queue_users
from tests.support.events import cloudevent
from tests.support.flows import fast_policy
from tests.support.function import FunctionHarness, _InProcessSender
from tests.support.oih import fixture

STARTING = fixture("component.starting")["data"]
STOPPING = fixture("component.stopping")["data"]
GLOBAL = STARTING["_id"]
FLOW = fixture("flow.starting")["data"]
TENANT = next(o["id"] for o in FLOW["owners"] if o["type"] == "tenant")
LOCAL_COMPONENT = FLOW["graph"]["nodes"][0]["componentId"]


def flow_using_the_global_component() -> dict[str, Any]:
    """The Flow Repository's flow whose second step uses the global component."""
    flow: dict[str, Any] = copy.deepcopy(FLOW)
    flow["graph"]["nodes"][1]["componentId"] = GLOBAL
    flow.pop("cron", None)
    return flow


@pytest.fixture
def deploy(
    redis: Redis, clock: FakeClock, kube_api: FakeKubeApi, component_repo: FakeComponentRepo
) -> Iterator[DeployHarness]:
    component_repo.add(LOCAL_COMPONENT, replicas=1)
    component_repo.add(GLOBAL, is_global=True, replicas=1, entrypoint="tests.interop.global_fns")
    kube_api.auto_ready = True
    harness = DeployHarness(redis, clock, kube_api, component_repo)
    harness.services.credentials = RedisQueueCredentials(
        redis, RedisAcl.for_client(redis), TEST_KEY, "redis://127.0.0.1:6379/0"
    )
    yield harness
    harness.close()
    drop_queue_users(redis)


def secret_env(kube: FakeKubeApi, selector: str) -> list[dict[str, str]]:
    return [
        {k: base64.b64decode(v).decode() for k, v in s["data"].items()}
        for s in kube.objects("secrets", selector)
    ]


FLOW_SELECTOR = f"orchestrator.openintegrationhub.org/flow={FLOW['id']}"
COMPONENT_SELECTOR = f"orchestrator.openintegrationhub.org/component={GLOBAL}"


def test_component_starting_drives_the_global_deployment_on_its_queue(
    deploy: DeployHarness, kube_api: FakeKubeApi, redis: Redis
) -> None:
    deploy.handle(cloudevent("component.starting", copy.deepcopy(STARTING)))
    [started] = deploy.events("component.started")
    assert started.data["id"] == GLOBAL
    [deployment] = kube_api.objects("deployments", COMPONENT_SELECTOR)
    assert deployment["spec"]["replicas"] == 1
    [env] = secret_env(kube_api, COMPONENT_SELECTOR)
    assert env["STEP_QUEUE"] == keys.global_step_queue(GLOBAL) and env["GLOBAL_COMPONENT"] == "1"
    # its own queue user: that queue only
    assert username("#" + GLOBAL) in env["REDIS_URL"].replace("%23", "#")
    rules = redis.acl_getuser(username("#" + GLOBAL))
    assert rules is not None and keys.global_step_queue(GLOBAL) in json.dumps(rules, default=str)
    deploy.handle(cloudevent("component.stopping", copy.deepcopy(STOPPING)))
    assert deploy.events("component.stopped")
    assert kube_api.objects("deployments", COMPONENT_SELECTOR) == []
    assert redis.acl_getuser(username("#" + GLOBAL)) is None


def test_a_flow_node_of_a_global_component_gets_no_deployment_of_its_own(
    deploy: DeployHarness, kube_api: FakeKubeApi, redis: Redis
) -> None:
    deploy.start(flow_using_the_global_component())
    assert deploy.events("flow.started")
    deployments = kube_api.objects("deployments", FLOW_SELECTOR)
    nodes = [d["metadata"]["annotations"]["orchestrator.openintegrationhub.org/node-id"]
             for d in deployments]  # fmt: skip
    assert nodes == ["step_1"]
    assert flows.global_nodes(redis, [FLOW["id"]]) == {
        FLOW["id"]: {"step_2": flows.GlobalNode(GLOBAL, "upsertPerson", '{"mode":"upsert"}')}
    }
    deploy.stop(FLOW["id"])
    assert flows.global_nodes(redis, [FLOW["id"]]) == {FLOW["id"]: {}}


def test_a_flow_that_uses_a_global_component_not_running_starts_it(
    deploy: DeployHarness, kube_api: FakeKubeApi, redis: Redis
) -> None:
    """The original orchestrator started a missing global component for the flow; ours does
    too, at the next tick (no component.starting was sent, and none is needed)."""
    deploy.start(flow_using_the_global_component())
    assert deploy.events("flow.started") and not deploy.events("component.started")
    deploy.tick()
    [started] = deploy.events("component.started")
    assert started.data["id"] == GLOBAL
    [deployment] = kube_api.objects("deployments", COMPONENT_SELECTOR)
    assert deployment["spec"]["replicas"] == 1
    [env] = secret_env(kube_api, COMPONENT_SELECTOR)
    assert env["STEP_QUEUE"] == keys.global_step_queue(GLOBAL)
    assert redis.acl_getuser(username("#" + GLOBAL)) is not None
    # a second flow using it, and the tick after: the one Deployment, announced once
    second = flow_using_the_global_component()
    second["id"] = "second-flow"
    deploy.start(second)
    deploy.tick()
    assert len(kube_api.objects("deployments", COMPONENT_SELECTOR)) == 1
    assert len(deploy.events("component.started")) == 1
    # stopped by the hub: gone until a flow that uses it starts again
    deploy.handle(cloudevent("component.stopping", copy.deepcopy(STOPPING)))
    assert kube_api.objects("deployments", COMPONENT_SELECTOR) == []
    deploy.tick()
    assert kube_api.objects("deployments", COMPONENT_SELECTOR) == []


def test_its_messages_go_to_the_global_queue_and_the_global_worker_runs_them(
    deploy: DeployHarness, kube_api: FakeKubeApi, redis: Redis, clock: FakeClock,
    base_env: dict[str, str],
) -> None:  # fmt: skip
    deploy.handle(cloudevent("component.starting", copy.deepcopy(STARTING)))
    deploy.start(flow_using_the_global_component())
    steps = FunctionHarness(STEP_EXECUTE, redis, clock, base_env, policy=fast_policy())
    steps.admit(FLOW["id"], "run-1", {"data": {"email": "ada@example.com"}}, tenant=TENANT)
    steps.run_workers(FLOW["id"], {"step_1": lambda msg, fields: msg["data"]})
    assert steps.messages(FLOW["id"], "step_2") == []  # nothing on a per-flow queue
    # the global worker, with the environment deploy gave it and its own queue user
    [env] = secret_env(kube_api, COMPONENT_SELECTOR)
    config = WorkerConfig.from_env({**env, "REDIS_URL": redis_url_of(redis, env["REDIS_URL"])})
    worker_redis = connect(config.redis_url or "")
    seen: list[tuple[str, Any, Any]] = []

    def functions(name: str) -> Any:
        def run(msg: dict[str, Any], fields: dict[str, Any]) -> Any:
            seen.append((name, fields, msg["data"]))
            return {"upserted": msg["data"]["email"]}

        return run

    worker = Worker(
        config,
        RedisStreamsQueue(worker_redis),
        _InProcessSender(steps.runtime),
        functions("unused"),
        clock=clock,
        functions=functions,
    )
    assert worker.run_once() == 1
    assert seen == [("upsertPerson", {"mode": "upsert"}, {"email": "ada@example.com"})]
    [completed] = steps.emitted("flow.execution.completed")
    assert completed["flowId"] == FLOW["id"]


def redis_url_of(redis: Redis, granted: str) -> str:
    """The granted URL (user and password) pointed at the test's Redis."""
    kwargs = redis.connection_pool.connection_kwargs
    credentials = granted.split("//", 1)[1].rsplit("@", 1)[0]
    return f"redis://{credentials}@{kwargs['host']}:{kwargs['port']}/0"


def test_a_component_declaring_rest_api_gets_its_service(
    deploy: DeployHarness, kube_api: FakeKubeApi, component_repo: FakeComponentRepo
) -> None:
    component_repo.components[GLOBAL]["descriptor"]["restAPI"] = True
    deploy.handle(cloudevent("component.starting", copy.deepcopy(STARTING)))
    [service] = kube_api.objects("services", COMPONENT_SELECTOR)
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"][0]["port"] == 3001
    [deployment] = kube_api.objects("deployments", COMPONENT_SELECTOR)
    assert (
        service["spec"]["selector"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    [policy] = kube_api.objects("networkpolicies", COMPONENT_SELECTOR)
    assert policy["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 3001}]}]
    [env] = secret_env(kube_api, COMPONENT_SELECTOR)
    assert env["ENABLE_REST_API"] == "true"
    deploy.handle(cloudevent("component.stopping", copy.deepcopy(STOPPING)))
    assert kube_api.objects("services", COMPONENT_SELECTOR) == []


def test_components_without_rest_api_get_no_service(
    deploy: DeployHarness, kube_api: FakeKubeApi
) -> None:
    deploy.handle(cloudevent("component.starting", copy.deepcopy(STARTING)))
    assert kube_api.objects("services") == []
    [policy] = kube_api.objects("networkpolicies", COMPONENT_SELECTOR)
    assert policy["spec"]["ingress"] == []
