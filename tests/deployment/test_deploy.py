"""The deploy function (issue 5 §8) against the fake Kubernetes API over real HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from redis import Redis

from shared.clock import FakeClock
from shared.deployment.object_names import deployment_name, flow_selector, global_name
from shared.errors import InvalidEvent, TemporaryError
from shared.model.policy import Policy
from tests.deploy_harness import DeployHarness, flow_doc, step
from tests.fakes.component_repo import FakeComponentRepo
from tests.fakes.kube_api import FakeKubeApi
from tests.support.events import cloudevent

pytestmark = pytest.mark.redis_cluster  # also on a real 3-master Redis Cluster


@pytest.fixture
def deploy(
    redis: Redis, clock: FakeClock, kube_api: FakeKubeApi, component_repo: FakeComponentRepo
) -> Iterator[DeployHarness]:
    component_repo.add("comp", replicas=1)
    component_repo.add("other", replicas=2)
    kube_api.auto_ready = True
    harness = DeployHarness(redis, clock, kube_api, component_repo)
    yield harness
    harness.close()


# ---- never twice -----------------------------------------------------------------------------
def test_fifty_concurrent_starts_apply_each_object_once(deploy: DeployHarness) -> None:
    doc = flow_doc(nodes=[step("a"), step("b"), step("c")])
    errors: list[BaseException] = []
    barrier = threading.Barrier(50)

    def send(i: int) -> None:
        barrier.wait()
        try:
            deploy.start(doc, event_id=f"start-{i}")
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert deploy.kube.count("apply", "deployments") == 3
    assert deploy.kube.count("apply", "secrets") == 3
    assert deploy.kube.count("apply", "networkpolicies") == 3
    assert deploy.kube.writes(ok=None) == 9  # not a single extra attempt
    assert len(deploy.events("flow.started")) == 1


def test_redeliveries_write_nothing(deploy: DeployHarness) -> None:
    doc = flow_doc(nodes=[step("a"), step("b")])
    for _ in range(11):
        deploy.start(doc, event_id="same-event")
    assert deploy.kube.writes() == 6  # a NetworkPolicy, a Secret and a Deployment per step
    assert len(deploy.events("flow.started")) == 1


def test_a_new_event_with_the_same_flow_writes_nothing(deploy: DeployHarness) -> None:
    doc = flow_doc()
    deploy.start(doc)
    deploy.start(doc)
    deploy.tick()
    assert deploy.kube.writes() == 3


def test_changed_flow_updates_the_same_objects(deploy: DeployHarness) -> None:
    deploy.start(flow_doc(nodes=[step("a"), step("b")]))
    names = deploy.kube.names("deployments")
    deploy.start(flow_doc(nodes=[step("a", replicas=3)]))
    assert deploy.kube.names("deployments") == {deployment_name("flow-1", "a")} < names
    assert deploy.replicas() == {"a": 3}
    assert deploy.kube.names("secrets") == {deployment_name("flow-1", "a")}
    assert len(deploy.events("flow.started")) == 2


def test_flow_token_goes_only_into_the_secret(deploy: DeployHarness) -> None:
    deploy.start(flow_doc())
    [secret] = deploy.kube.objects("secrets")
    assert "FLOW_TOKEN" in secret["data"]
    record = deploy.record("flow-1")
    assert record is not None and "token-of-flow-1" not in str(record.to_redis())
    assert all("token-of" not in e.to_json() for e in deploy.sender.events)


# ---- scaling ---------------------------------------------------------------------------------
def test_replicas_three_deploys_three(deploy: DeployHarness) -> None:
    deploy.start(flow_doc(nodes=[step("a", replicas=3), step("b", "other")]))
    assert deploy.replicas() == {"a": 3, "b": 2}
    [started] = deploy.events("flow.started")
    assert started.data["replicas"] == {"a": 3, "b": 2}
    assert started.data["clamped"] is False


@pytest.mark.parametrize(
    ("limits", "wanted", "expected"),
    [
        pytest.param({"max_replicas_per_step": 2}, [5, 1], {"a": 2, "b": 1}, id="per step"),
        pytest.param(
            {"max_replicas_per_step": 10, "max_replicas": 4}, [3, 3], {"a": 2, "b": 2}, id="total"
        ),
    ],
)
def test_replicas_are_clamped_to_the_tenant_max(
    deploy: DeployHarness, limits: dict[str, Any], wanted: list[int], expected: dict[str, int]
) -> None:
    deploy.runtime.policy = Policy(tenants={"acme": replace(Policy().defaults, **limits)})
    deploy.start(flow_doc(nodes=[step("a", replicas=wanted[0]), step("b", replicas=wanted[1])]))
    assert deploy.replicas() == expected
    [started] = deploy.events("flow.started")
    assert started.data["clamped"] is True and started.data["replicas"] == expected
    assert "clamped" in started.data["reason"]


def test_tenant_total_counts_its_other_flows(deploy: DeployHarness) -> None:
    deploy.runtime.policy = Policy(tenants={"acme": replace(Policy().defaults, max_replicas=4)})
    deploy.start(flow_doc("f1", [step("a", replicas=3)]))
    deploy.start(flow_doc("f2", [step("a", replicas=3)]))
    assert deploy.replicas(flow_selector("f2")) == {"a": 1}
    deploy.start(flow_doc("f3", [step("a")]))
    [failed] = deploy.events("flow.failed")
    assert failed.data["id"] == "f3" and "max_replicas" in failed.data["reason"]


# ---- readiness and failure -------------------------------------------------------------------
def test_started_only_once_every_replica_is_ready(deploy: DeployHarness) -> None:
    deploy.kube.auto_ready = False
    deploy.start(flow_doc(nodes=[step("a", replicas=2)]))
    name = deployment_name("flow-1", "a")
    assert deploy.events("flow.started") == []
    assert deploy.record("flow-1").status == "deploying"  # type: ignore[union-attr]
    deploy.kube.set_ready(name, 1)
    deploy.tick()
    assert deploy.events("flow.started") == []
    deploy.kube.set_ready(name, 2)
    deploy.tick()
    deploy.tick()
    assert len(deploy.events("flow.started")) == 1
    assert deploy.record("flow-1").status == "started"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("reason", "message", "state", "expected"),
    [
        pytest.param(
            "ImagePullBackOff",
            "no such image",
            "waiting",
            "ImagePullBackOff: no such image",
            id="image cannot be pulled",
        ),
        pytest.param(
            "Error", "boom at start", "terminated", "Error: boom at start", id="component crashes"
        ),
        pytest.param(None, "", "waiting", "0/1 replicas ready", id="simply never ready"),
    ],
)
def test_not_ready_by_the_deadline_fails_and_never_starts(
    deploy: DeployHarness, reason: str | None, message: str, state: str, expected: str
) -> None:
    deploy.kube.auto_ready = False
    deploy.start(flow_doc())
    if reason:
        deploy.kube.set_pod_error(deployment_name("flow-1", "a"), reason, message, state)
    deploy.clock.advance(299)
    deploy.tick()
    assert deploy.events("flow.failed") == []
    deploy.clock.advance(2)
    deploy.tick()
    deploy.tick()
    [failed] = deploy.events("flow.failed")
    assert expected in failed.data["reason"]
    assert deploy.events("flow.started") == []
    assert deploy.kube.objects("deployments") == [] and deploy.kube.objects("secrets") == []
    # becoming ready later changes nothing: failed is final until a new flow.starting
    deploy.kube.auto_ready = True
    deploy.tick()
    assert deploy.events("flow.started") == []


def test_the_pods_last_error_is_redacted_in_the_event(deploy: DeployHarness) -> None:
    """A crashing component may print its environment; its token must not reach the hub."""
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJmbG93LTEifQ.c2lnbmF0dXJlLXZhbHVl"
    deploy.kube.auto_ready = False
    deploy.start(flow_doc())
    crash = f"bad token {token} (Authorization: Bearer opaque-secret-value)"
    deploy.kube.set_pod_error(deployment_name("flow-1", "a"), "Error", crash, "terminated")
    deploy.clock.advance(301)
    deploy.tick()
    [failed] = deploy.events("flow.failed")
    assert "Error: bad token [REDACTED]" in failed.data["reason"]
    assert token not in failed.to_json() and "opaque-secret-value" not in failed.to_json()
    record = deploy.record("flow-1")
    assert record is not None and record.status == "failed"
    assert token not in record.reason and "opaque-secret-value" not in record.reason


def test_unknown_component_fails_the_flow_without_writes(deploy: DeployHarness) -> None:
    deploy.start(flow_doc(nodes=[step("a", "missing")]))
    [failed] = deploy.events("flow.failed")
    assert "missing" in failed.data["reason"] and "not found" in failed.data["reason"]
    assert deploy.kube.writes(ok=None) == 0
    assert deploy.events("flow.started") == []


def test_component_repository_down_is_retried(deploy: DeployHarness) -> None:
    deploy.repo.fail(503)
    with pytest.raises(TemporaryError):
        deploy.start(flow_doc(), event_id="e1")
    assert deploy.kube.writes(ok=None) == 0
    deploy.start(flow_doc(), event_id="e1")  # the broker's retry
    assert len(deploy.events("flow.started")) == 1


@pytest.mark.parametrize(
    ("status", "times", "outcome"),
    [
        pytest.param(409, 1, "started", id="a conflict is re-applied"),
        pytest.param(500, 1, "started", id="a 500 is answered 503 and the retry deploys"),
        pytest.param(422, 1, "failed", id="validation refusal fails the flow"),
    ],
)
def test_api_faults(deploy: DeployHarness, status: int, times: int, outcome: str) -> None:
    deploy.kube.fail("apply", "deployments", status, times=times, message="injected")
    try:
        deploy.start(flow_doc(), event_id="e1")
    except TemporaryError:
        assert status == 500
        deploy.start(flow_doc(), event_id="e1")  # the broker's retry of the same event
    assert len(deploy.events(f"flow.{outcome}")) == 1
    other = "failed" if outcome == "started" else "started"
    assert deploy.events(f"flow.{other}") == []


def test_persistent_api_failure_is_retried_by_ticks_then_fails(deploy: DeployHarness) -> None:
    deploy.kube.fail("apply", "*", 503, times=1000)
    with pytest.raises(TemporaryError):
        deploy.start(flow_doc())
    deploy.tick()
    attempts = deploy.kube.count("apply", ok=None)
    assert attempts >= 2 and deploy.events("flow.failed") == []
    deploy.clock.advance(301)
    deploy.tick()
    [failed] = deploy.events("flow.failed")
    assert "503" in failed.data["reason"]
    assert deploy.events("flow.started") == []


def test_slow_api_times_out_as_temporary(
    redis: Redis, clock: FakeClock, kube_api: FakeKubeApi, component_repo: FakeComponentRepo
) -> None:
    component_repo.add("comp", replicas=1)
    kube_api.auto_ready = True
    # a short client timeout, and answers slower than it by a wide margin
    deploy = DeployHarness(redis, clock, kube_api, component_repo, request_timeout=1.0)
    try:
        deploy.kube.fail("apply", "secrets", None, delay=4.0, times=5)
        with pytest.raises(TemporaryError):
            deploy.start(flow_doc(), event_id="e1")
        deploy.kube.clear_faults()
        deploy.start(flow_doc(), event_id="e1")
        assert len(deploy.events("flow.started")) == 1
    finally:
        deploy.close()


# ---- bad documents ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("nodes", "field"),
    [
        pytest.param([], "graph.nodes", id="no nodes"),
        pytest.param(
            [{"id": "a", "function": "run"}], "componentId", id="a node without componentId"
        ),
        pytest.param([step("a", replicas=-1)], "replicas", id="negative replicas"),
        pytest.param(
            [{"id": "a", "componentId": "comp", "nodeSettings": {"replicas": "3"}}],
            "replicas",
            id="replicas not a number",
        ),
    ],
)
def test_bad_documents_are_refused_naming_the_field(
    deploy: DeployHarness, nodes: list[dict[str, object]], field: str
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        deploy.start(flow_doc(nodes=nodes))
    assert caught.value.status == 400
    assert any(field in problem for problem in caught.value.problems)
    assert deploy.kube.requests == []
    assert deploy.sender.events == []


# ---- stop and reconcile ----------------------------------------------------------------------
def test_stop_removes_only_that_flows_objects(deploy: DeployHarness) -> None:
    deploy.start(flow_doc("f1", [step("a"), step("b")]))
    deploy.start(flow_doc("f2", [step("a")]))
    deploy.stop("f1")
    assert deploy.kube.names("deployments") == {deployment_name("f2", "a")}
    assert deploy.kube.names("secrets") == {deployment_name("f2", "a")}
    [stopped] = deploy.events("flow.stopped")
    assert stopped.data["id"] == "f1"
    assert deploy.tokens.revoked == ["f1"]
    assert deploy.record("f1") is None


def test_a_late_start_after_the_stop_is_ignored(deploy: DeployHarness) -> None:
    old = flow_doc("f1", updated=100)
    deploy.start(old)
    deploy.handle(cloudevent("flow.stopping", {"id": "f1"}, time="2026-01-01T01:00:00Z"))
    writes = deploy.kube.writes()
    deploy.start(old, event_id="late-redelivery")
    assert deploy.kube.writes() == writes
    assert deploy.kube.objects("deployments") == []


def test_reconcile_repairs_drift_and_leaves_unlabelled_objects_alone(deploy: DeployHarness) -> None:
    deploy.start(flow_doc(nodes=[step("a", replicas=2), step("b")]))
    foreign = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "not-ours", "labels": {"app": "x"}},
        "spec": {"replicas": 1},
    }
    deploy.kube.put(foreign)
    deploy.kube.put({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "not-ours-s"}})
    deploy.kube.remove("deployments", deployment_name("flow-1", "a"))
    deploy.kube.scale(deployment_name("flow-1", "b"), 7)
    deploy.kube.reset_log()
    deploy.tick()
    assert deploy.replicas(flow_selector("flow-1")) == {"a": 2, "b": 1}
    assert deploy.kube.count("apply") == 2  # exactly the two drifted Deployments
    assert "not-ours" in deploy.kube.names("deployments")
    assert "not-ours-s" in deploy.kube.names("secrets")
    assert deploy.kube.count("delete", ok=None) == 0
    deploy.kube.reset_log()
    deploy.tick()
    assert deploy.kube.writes(ok=None) == 0


def test_reconcile_deletes_our_objects_of_unwanted_flows(deploy: DeployHarness) -> None:
    deploy.start(flow_doc("f1"))
    deploy.start(flow_doc("f2"))
    # f1's record vanishes (e.g. stopped while deploy was away): its objects are garbage
    deploy.redis.delete("co:{dep}:target:flow:f1")
    deploy.redis.srem("co:{dep}:targets", "flow:f1")
    deploy.tick()
    assert deploy.kube.names("deployments") == {deployment_name("f2", "a")}
    assert deploy.kube.names("secrets") == {deployment_name("f2", "a")}


def test_a_flow_stopped_elsewhere_is_removed_by_the_tick(deploy: DeployHarness) -> None:
    from shared.model import flows

    deploy.start(flow_doc("f1"))
    flows.tombstone(deploy.redis, "f1", 10**10)  # flow-start saw flow.stopping first
    deploy.tick()
    assert deploy.kube.objects("deployments") == []
    assert deploy.record("f1") is None


# ---- suspension ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("level", "subject"),
    [
        pytest.param("tenant", "acme", id="tenant"),
        pytest.param("user", "alice", id="user (first owner)"),
        pytest.param("flow", "f1", id="flow"),
    ],
)
def test_suspension_scales_to_zero_and_back(
    deploy: DeployHarness, level: str, subject: str
) -> None:
    deploy.start(flow_doc("f1", [step("a", replicas=3)]))
    deploy.start(flow_doc("f2", [step("a", replicas=2)], tenant="globex", owner="bob"))
    deploy.penalty(level, subject, "suspend", "suspended")
    assert deploy.replicas(flow_selector("f1")) == {"a": 0}
    assert deploy.replicas(flow_selector("f2")) == {"a": 2}  # another tenant, user and flow
    deploy.tick()
    assert deploy.replicas(flow_selector("f1")) == {"a": 0}  # reconcile keeps it down
    deploy.penalty(level, subject, "deprioritize", "deprioritized")  # stepping down
    assert deploy.replicas(flow_selector("f1")) == {"a": 3}
    deploy.penalty(level, subject, None, "restored")
    assert deploy.replicas(flow_selector("f1")) == {"a": 3}
    assert deploy.events("flow.failed") == []


def test_suspended_at_deploy_time_starts_at_zero_and_is_not_judged(deploy: DeployHarness) -> None:
    deploy.redis.hset("co:{pol}:penalty:tenant:acme", "step", "suspend")
    deploy.kube.auto_ready = False
    deploy.start(flow_doc("f1", [step("a", replicas=2)]))
    assert deploy.replicas() == {"a": 0}
    deploy.clock.advance(1000)
    deploy.tick()
    assert deploy.events("flow.failed") == [] and deploy.events("flow.started") == []
    deploy.redis.delete("co:{pol}:penalty:tenant:acme")
    deploy.kube.auto_ready = True
    deploy.tick()
    assert deploy.replicas() == {"a": 2}
    assert len(deploy.events("flow.started")) == 1


# ---- global components -----------------------------------------------------------------------
def test_global_component_lifecycle(deploy: DeployHarness) -> None:
    deploy.repo.add("logger", is_global=True, replicas=2)
    deploy.start_component("logger")
    assert deploy.kube.names("deployments") == {global_name("logger")}
    [started] = deploy.events("component.started")
    assert started.data == {"id": "logger"}
    deploy.start_component("logger")
    assert deploy.kube.writes() == 3
    deploy.start(flow_doc("f1"))
    deploy.stop_component("logger")
    assert deploy.kube.names("deployments") == {deployment_name("f1", "a")}
    assert len(deploy.events("component.stopped")) == 1
    assert deploy.record("logger", "component") is None


def test_global_component_that_is_not_global_or_missing_fails(deploy: DeployHarness) -> None:
    deploy.start_component("comp")
    deploy.start_component("nowhere")
    failed = deploy.events("component.failed")
    assert [e.data["id"] for e in failed] == ["comp", "nowhere"]
    assert deploy.kube.writes(ok=None) == 0


# ---- the API calls of one 5-step flow start --------------------------------------------------
def test_api_calls_of_a_five_step_flow_start(deploy: DeployHarness) -> None:
    deploy.start(flow_doc(nodes=[step(f"s{i}") for i in range(5)]))
    calls = [(r.verb, r.kind) for r in deploy.kube.requests]
    # each object is read before it is written: never over another flow's object
    assert calls == [
        *[("get", "networkpolicies"), ("apply", "networkpolicies")] * 5,
        *[("get", "secrets"), ("apply", "secrets")] * 5,
        *[("get", "deployments"), ("apply", "deployments")] * 5,
        ("list", "deployments"),
    ]


def test_deploy_time_from_first_apply_to_ready_is_observed(deploy: DeployHarness) -> None:
    from shared.runtime.metrics import REGISTRY

    def count(outcome: str) -> float:
        value = REGISTRY.get_sample_value("orchestrator_deploy_seconds_count", {"outcome": outcome})
        return value or 0.0

    def total(outcome: str) -> float:
        value = REGISTRY.get_sample_value("orchestrator_deploy_seconds_sum", {"outcome": outcome})
        return value or 0.0

    started, seconds = count("started"), total("started")
    deploy.kube.auto_ready = False
    deploy.start(flow_doc())
    deploy.clock.advance(42)
    deploy.kube.auto_ready = True
    deploy.tick()
    assert len(deploy.events("flow.started")) == 1
    assert count("started") == started + 1
    assert total("started") - seconds == pytest.approx(42, abs=1)
