"""End to end: policy-check's own decisions reach flow-start and deploy through its events.

A noisy tenant floods messages; the real policy-check escalates it step by step; the
penalty events it emits are delivered (signed, like the broker would) to the real flow-start
and deploy functions. While suspended: admission stops and its Deployments have 0 replicas;
the other tenant is untouched. Clean behaviour walks it back: both come back.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis import Redis

from shared.clock import FakeClock
from shared.deployment.object_names import flow_selector
from shared.events.types import CONSUMES, PENALTY_TYPES
from shared.handlers.flow_start import SPEC as FLOW_START
from shared.handlers.flow_start import Services as FlowStartServices
from shared.handlers.policy_check import SPEC as POLICY_CHECK
from shared.model import penalties
from shared.model.policy import parse_policy
from shared.security.tokens import sign_internal
from shared.wiring.policing import PolicyServices
from tests.conftest import TEST_KEY
from tests.deploy_harness import DeployHarness, step
from tests.deploy_harness import flow_doc as deploy_doc
from tests.fakes.component_repo import FakeComponentRepo
from tests.fakes.kube_api import FakeKubeApi
from tests.support.flows import flow_doc as start_doc
from tests.support.flows import store_flow
from tests.support.function import FunctionHarness

POLICY = parse_policy(
    {
        "rules": [
            {
                "name": "flood",
                "metric": "messages",
                "subject": "tenant",
                "window": "1m",
                "max": 6000,
            }
        ],
        "penalties": {"cooldown": "5m", "max_cooldown": "1h", "decay_after": "10m"},
    }
)


@pytest.fixture()
def deploy(
    redis: Redis, clock: FakeClock, kube_api: FakeKubeApi, component_repo: FakeComponentRepo
) -> Iterator[DeployHarness]:
    component_repo.add("comp", replicas=1)
    kube_api.auto_ready = True
    harness = DeployHarness(redis, clock, kube_api, component_repo, policy=POLICY)
    yield harness
    harness.close()


def deliver(
    pc: FunctionHarness[PolicyServices],
    flow_start: FunctionHarness[FlowStartServices],
    deploy: DeployHarness,
    clock: FakeClock,
) -> list[str]:
    """What policy-check sent, to every consumer the Triggers would route it to."""
    routed = []
    for event in pc.sender.events:
        if event.type not in PENALTY_TYPES:
            continue
        assert event.type in CONSUMES["flow-start"] and event.type in CONSUMES["deploy"]
        token = sign_internal(TEST_KEY, "policy-check", clock, event_type=event.type)
        flow_start.runtime.handle(event.to_cloudevent(authtoken=token))
        deploy.handle(event.to_cloudevent(authtoken=token))
        routed.append(event.type.rsplit(".", 1)[-1])
    pc.clear()
    return routed


def test_suspension_reaches_admission_and_deployments_and_restore_brings_both_back(
    redis: Redis, clock: FakeClock, base_env: dict[str, str], deploy: DeployHarness
) -> None:
    pc = FunctionHarness(POLICY_CHECK, redis, clock, base_env, policy=POLICY)
    flow_start = FunctionHarness(FLOW_START, redis, clock, base_env, policy=POLICY)
    for flow_id, tenant, owner in (("f1", "acme", "alice"), ("f2", "globex", "bob")):
        deploy.start(deploy_doc(flow_id, [step("a", replicas=2)], tenant=tenant, owner=owner))
        flow_start.start_flow(start_doc(flow_id, tenant=tenant, owner=owner, cron=None))
        store_flow(redis, flow_id, tenant=tenant, owner=owner)

    routed: list[str] = []
    for _ in range(60):  # the flood, minute by minute, until acme is suspended
        pc.usage("f1", tenant="acme", user="alice", messages=7000)
        pc.usage("f2", tenant="globex", user="bob", messages=100)
        clock.advance(60)
        pc.tick()
        routed += deliver(pc, flow_start, deploy, clock)
        if penalties.current_level(redis, "tenant", "acme") == "suspend":
            break
    assert routed == ["throttled", "deprioritized", "suspended"]

    assert deploy.replicas(flow_selector("f1")) == {"a": 0}
    assert deploy.replicas(flow_selector("f2")) == {"a": 2}
    flow_start.clear()
    flow_start.execute("f1")
    flow_start.execute("f2")
    assert [run["flowId"] for run in flow_start.admitted()] == ["f2"]
    assert flow_start.reasons("flow.execution.deferred") == ["suspended"]

    routed = []
    for _ in range(240):  # quiet now: the penalty decays step by step
        clock.advance(60)
        pc.tick()
        routed += deliver(pc, flow_start, deploy, clock)
        if penalties.current_level(redis, "tenant", "acme") is None:
            break
    assert routed == ["deprioritized", "throttled", "restored", "restored"]
    assert deploy.replicas(flow_selector("f1")) == {"a": 2}
    assert [run["flowId"] for run in flow_start.admitted()] == ["f2", "f1"]  # the waiting run ran
    assert penalties.factors(redis, POLICY.penalties, tenant="acme") == penalties.Factors()
