"""deploy's tick bounded and paged (TICK_PAGE_SIZE): at most that many targets reconciled and
objects listed per tick, the walk carried on by cursors in Redis, against the fake Kubernetes
API over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis import Redis

from shared.clock import FakeClock
from shared.deployment.object_names import deployment_name
from tests.deploy_harness import DeployHarness, flow_doc, step
from tests.fakes.component_repo import FakeComponentRepo
from tests.fakes.kube_api import FakeKubeApi

pytestmark = pytest.mark.redis_cluster  # also on a real 3-master Redis Cluster

FLOWS = [f"f{i}" for i in range(5)]


@pytest.fixture
def deploy(
    redis: Redis, clock: FakeClock, kube_api: FakeKubeApi, component_repo: FakeComponentRepo
) -> Iterator[DeployHarness]:
    component_repo.add("comp", replicas=1)
    kube_api.auto_ready = True
    harness = DeployHarness(redis, clock, kube_api, component_repo, tick_page_size=2)
    for flow_id in FLOWS:
        harness.start(flow_doc(flow_id, [step("a")]))
    yield harness
    harness.close()


def _orphan(deploy: DeployHarness, flow_id: str) -> None:
    """The flow's record vanishes (stopped while deploy was away): its objects are garbage."""
    deploy.redis.delete(f"co:{{dep}}:target:flow:{flow_id}")
    deploy.redis.srem("co:{dep}:targets", f"flow:{flow_id}")


def test_each_tick_repairs_at_most_a_page_and_a_pass_repairs_all(deploy: DeployHarness) -> None:
    for flow_id in FLOWS:
        deploy.kube.remove("deployments", deployment_name(flow_id, "a"))
    applied = []
    for _ in range(3):
        deploy.kube.reset_log()
        deploy.tick()
        applied.append(deploy.kube.count("apply", "deployments"))
    assert applied == [2, 2, 1]
    assert deploy.kube.names("deployments") == {deployment_name(f, "a") for f in FLOWS}
    deploy.kube.reset_log()
    deploy.tick()  # the next pass: nothing left to do
    assert deploy.kube.writes(ok=None) == 0


def test_garbage_is_collected_a_listed_page_at_a_time(deploy: DeployHarness) -> None:
    for flow_id in FLOWS[:3]:
        _orphan(deploy, flow_id)
    kept = {deployment_name(f, "a") for f in FLOWS[3:]}
    for _ in range(10):
        deploy.kube.reset_log()
        deploy.tick()
        # one listing page of at most 2 objects; every other list is one target's own
        paged = [r for r in deploy.kube.requests if r.verb == "list" and "limit" in r.query]
        assert [r.query["limit"] for r in paged] == ["2"]
        if deploy.kube.names("deployments") == kept and deploy.kube.names("secrets") == kept:
            break
    assert deploy.kube.names("deployments") == kept
    assert deploy.kube.names("secrets") == kept


def test_an_expired_continue_token_starts_the_listing_again(deploy: DeployHarness) -> None:
    deploy.tick()  # the collector has listed the first page and holds a continue token
    assert deploy.redis.get("co:{dep}:tick-cursor:objects") not in (None, b"Deployment ")
    for flow_id in FLOWS:
        _orphan(deploy, flow_id)
    deploy.kube.expire_tokens()
    deploy.kube.reset_log()
    deploy.tick()  # raises if the 410 escapes
    assert [r.status for r in deploy.kube.requests if "continue" in r.query] == [410]
    for _ in range(10):
        deploy.tick()
    assert deploy.kube.names("deployments") == set()
    assert deploy.kube.names("secrets") == set()
