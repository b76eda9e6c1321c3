"""The policy-check function through its runtime: events in, ledger, penalties, events out."""

from __future__ import annotations

from typing import Any

import pytest
from redis import Redis

from shared import keys
from shared.adapters.kubernetes import KubernetesDriver, make_api_client
from shared.clock import FakeClock
from shared.events.types import CONSUMES
from shared.handlers.policy_check import SPEC
from shared.handlers.policy_check import SPEC as POLICY_CHECK
from shared.model import penalties
from shared.model.policy import Policy, Rule, parse_policy
from shared.policing import watchdog
from shared.settings import Settings
from shared.wiring.policing import PolicyServices, build_services
from tests.fakes.kube_api import FakeKubeApi
from tests.support.flows import store_flow
from tests.support.function import FunctionHarness

pytestmark = pytest.mark.redis_cluster  # also on a real 3-master Redis Cluster

ODD_FLOW = "Flow:With.A-Very-Long-Id-That-Does-Not-Fit-In-A-Kubernetes-Label-Value-At-All"

FAST = parse_policy(
    {
        "rules": [
            {
                "name": "chatty-flow",
                "metric": "messages",
                "subject": "flow",
                "window": "1m",
                "max": 6000,
            },
            {"name": "churn", "metric": "deploys", "subject": "tenant", "window": "1h", "max": 30},
            {
                "name": "error-storm",
                "metric": "error_ratio",
                "subject": "flow",
                "window": "15m",
                "max": 0.5,
                "min_runs": 20,
            },
            {"name": "skippy", "metric": "skipped", "subject": "flow", "window": "1h", "max": 3},
        ],
        "penalties": {"cooldown": "5m", "max_cooldown": "1h", "decay_after": "10m"},
    }
)


@pytest.fixture()
def pc(redis: Redis, clock: FakeClock, base_env: dict[str, str]) -> FunctionHarness[PolicyServices]:
    return FunctionHarness(POLICY_CHECK, redis, clock, base_env, policy=FAST)


def test_every_consumed_type_has_a_real_handler() -> None:
    assert set(SPEC.handlers) == set(CONSUMES["policy-check"])
    assert SPEC.tag == keys.POLICY


def test_a_redelivered_usage_report_is_counted_once(pc: FunctionHarness[PolicyServices]) -> None:
    first = pc.usage(messages=10, bytes=100, event_id="u-1")
    again = pc.usage(messages=10, bytes=100, event_id="u-1")
    pc.usage(messages=5, event_id="u-2")
    assert (first.duplicate, again.duplicate) == (False, True)
    assert pc.measured("flow", "f1", "messages") == 15
    assert pc.measured("tenant", "acme", "bytes") == 100


def test_usage_amounts_land_in_their_metrics(pc: FunctionHarness[PolicyServices]) -> None:
    pc.usage(cpuMs=1500, memMiBs=64, netBytes=2048, messages=3, bytes=10, stepMs=2500)
    measured = {
        m: pc.measured("tenant", "acme", m)
        for m in (
            "cpu_seconds",
            "memory_mib_seconds",
            "net_bytes",
            "messages",
            "bytes",
            "step_seconds",
        )
    }
    assert measured == {
        "cpu_seconds": 1.5,
        "memory_mib_seconds": 64,
        "net_bytes": 2048,
        "messages": 3,
        "bytes": 10,
        "step_seconds": 2.5,
    }


def test_a_usage_report_without_user_is_counted_against_the_flows_owner(
    pc: FunctionHarness[PolicyServices], redis: Redis
) -> None:
    store_flow(redis, "f1", owner="owner-7")
    pc.usage(user="", messages=4)
    assert pc.measured("user", "owner-7", "messages") == 4


def test_a_chatty_flow_is_warned_the_moment_it_reaches_the_limit(
    pc: FunctionHarness[PolicyServices],
) -> None:
    for _ in range(5):
        pc.usage(messages=1000)
    pc.usage(messages=999)
    assert pc.emitted("policy.violation") == []  # one below the limit
    pc.usage(messages=1)
    [violation] = pc.emitted("policy.violation")
    assert violation["subject"] == {"level": "flow", "id": "f1"}
    assert (violation["rule"], violation["measured"], violation["limit"], violation["window"]) == (
        "chatty-flow",
        6000,
        6000,
        "1m",
    )
    assert penalties.current_level(pc.redis, "flow", "f1", "acme") == "warn"
    assert pc.sender.of_type("policy.violation")[0].extensions == {"tenant": "acme", "flowid": "f1"}


def test_deploys_count_for_churn_stops_do_not(
    pc: FunctionHarness[PolicyServices], redis: Redis
) -> None:
    store_flow(redis, "f1")
    for _ in range(29):
        pc.send("flow.started", {"id": "f1"})
    pc.send("flow.stopped", {"id": "f1"})
    pc.send("flow.started", {"id": "unknown-flow"})
    assert pc.emitted("policy.violation") == []
    pc.send("flow.failed", {"id": "f1", "reason": "ImagePullBackOff"})
    [violation] = pc.emitted("policy.violation")
    assert (violation["rule"], violation["subject"]) == ("churn", {"level": "tenant", "id": "acme"})


def test_a_deferred_run_counts_as_a_request_once_even_when_admitted_later(
    pc: FunctionHarness[PolicyServices], redis: Redis, clock: FakeClock
) -> None:
    store_flow(redis, "f1")
    waiting = {"flowId": "f1", "runId": "r-9", "scheduledFor": clock.now(), "reason": "tenant_cap"}
    pc.send("flow.execution.deferred", waiting)
    pc.send("flow.execution.deferred", waiting)  # deferred again later: the same request
    assert pc.measured("flow", "f1", "runs") == 1
    run = {
        "flowId": "f1",
        "runId": "r-9",
        "tenant": "acme",
        "user": "u1",
        "fencingToken": 3,
        "scheduledFor": clock.now(),
        "trigger": "execute",
    }
    pc.send("flow.execution.admitted", run)
    assert pc.measured("flow", "f1", "runs") == 1
    assert [r.run_id for r in watchdog.running(redis)] == ["r-9"]  # watched once admitted
    pc.send("flow.execution.admitted", {**run, "runId": "r-10"})
    assert pc.measured("tenant", "acme", "runs") == 2


def test_skipped_and_missed_runs_count_deferred_ones_do_not(
    pc: FunctionHarness[PolicyServices], redis: Redis, clock: FakeClock
) -> None:
    store_flow(redis, "f1")
    base = {"flowId": "f1", "scheduledFor": clock.now()}
    pc.send("flow.execution.skipped", {**base, "reason": "overlap"})
    pc.send("flow.execution.deferred", {**base, "reason": "tenant_cap"})
    pc.send("flow.execution.missed", {**base, "reason": "catchup"})
    assert pc.measured("flow", "f1", "skipped") == 2
    assert pc.emitted("policy.violation") == []
    pc.send("flow.execution.skipped", {**base, "reason": "overlap", "tenant": "acme"})
    assert [v["rule"] for v in pc.emitted("policy.violation")] == ["skippy"]


def test_an_error_storm_needs_min_runs_finished(pc: FunctionHarness[PolicyServices]) -> None:
    for n in range(20):
        run = pc.admit("f1")
        pc.end(run, failed=True, reason="step failed")
        if n < 19:
            assert pc.emitted("policy.violation") == [], n
    [violation] = pc.emitted("policy.violation")
    assert (violation["rule"], violation["measured"]) == ("error-storm", 1.0)


def test_ticks_walk_a_penalty_down_and_announce_the_restore(
    pc: FunctionHarness[PolicyServices], clock: FakeClock
) -> None:
    for _ in range(7):
        pc.usage(messages=1000)
    assert penalties.current_level(pc.redis, "flow", "f1", "acme") == "warn"
    clock.advance(120)  # the window forgets the burst
    pc.tick()
    assert (
        penalties.current_level(pc.redis, "flow", "f1", "acme") == "warn"
    )  # cooldown + decay_after
    clock.advance(600)
    pc.tick()
    assert penalties.current_level(pc.redis, "flow", "f1", "acme") is None
    [restored] = pc.emitted("tenant.restored")
    assert restored["subject"] == {"level": "flow", "id": "f1"} and restored["penalty"] == "none"


def test_a_tick_finds_a_violation_that_grew_while_running(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    """Long runs show in run_seconds as they run: the tick's rule pass catches the tenant
    before any of its runs ends."""
    policy = Policy(rules=(Rule("long-runs", "run_seconds", "tenant", "15m", 1000),))
    pc = FunctionHarness(POLICY_CHECK, redis, clock, base_env, policy=policy)
    for _ in range(3):
        pc.admit("f1")
    clock.advance(300)
    pc.tick()
    assert pc.emitted("policy.violation") == []  # 900 run-seconds
    clock.advance(60)
    pc.tick()
    [violation] = pc.emitted("policy.violation")
    assert (violation["rule"], violation["measured"]) == ("long-runs", 1080)


def test_a_noisy_tenant_is_suspended_and_nobody_else_is_touched(
    pc: FunctionHarness[PolicyServices], clock: FakeClock
) -> None:
    for minute in range(40):
        pc.usage("loud-flow", tenant="noisy", user="n1", messages=7000)
        pc.usage("calm-flow", tenant="calm", user="c1", messages=100)
        clock.advance(60)
        pc.tick()
        if minute == 0:
            assert penalties.current_level(pc.redis, "flow", "loud-flow", "noisy") == "warn"
    assert penalties.current_level(pc.redis, "flow", "loud-flow", "noisy") == "suspend"
    assert penalties.is_suspended(pc.redis, tenant="noisy", flow="loud-flow")
    assert penalties.factors(
        pc.redis, FAST.penalties, tenant="calm", user="c1", flow="calm-flow"
    ) == (penalties.Factors())
    assert not penalties.is_suspended(pc.redis, tenant="noisy", flow="other-flow")
    assert FAST.tenant("calm") == FAST.tenant("noisy") == FAST.defaults
    assert {e["subject"]["id"] for e in pc.emitted("tenant.suspended")} == {"loud-flow"}


def test_the_metrics_reader_counts_pod_usage_over_time(
    redis: Redis, clock: FakeClock, base_env: dict[str, str], kube_api: FakeKubeApi
) -> None:
    store_flow(redis, ODD_FLOW, tenant="acme", owner="u9")
    from shared.deployment.object_names import FLOW_LABEL, TENANT_LABEL, USER_LABEL
    from shared.ports.driver import label_value

    labels = {
        "app.kubernetes.io/managed-by": "component-orchestrator",
        TENANT_LABEL: "acme",
        USER_LABEL: "u9",
        FLOW_LABEL: label_value(ODD_FLOW),
    }
    kube_api.put(_deployment("d1", labels, replicas=2))
    kube_api.put(
        _deployment("global-x", {"app.kubernetes.io/managed-by": "component-orchestrator"}, 1)
    )
    kube_api.set_usage("d1", cpu="250m", memory="128Mi")
    kube_api.set_usage("global-x", cpu="1", memory="1Gi")
    driver = KubernetesDriver(make_api_client(host=kube_api.url), "flows")
    pc = FunctionHarness(
        POLICY_CHECK, redis, clock, base_env, services=PolicyServices(pod_usage=driver)
    )
    pc.tick()  # the first read only marks the time
    assert pc.measured("tenant", "acme", "cpu_seconds") == 0
    clock.advance(60)
    pc.tick()
    assert pc.measured("flow", ODD_FLOW, "cpu_seconds") == pytest.approx(2 * 0.25 * 60)
    assert pc.measured("user", "u9", "memory_mib_seconds") == pytest.approx(2 * 128 * 60)
    clock.advance(1200)  # after an outage only MAX_INTERVAL (300 s) is counted
    pc.tick()
    assert pc.measured("tenant", "acme", "cpu_seconds") == pytest.approx(2 * 0.25 * (60 + 300))


def test_the_metrics_reader_is_only_built_for_the_kubernetes_driver(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    local = Settings.from_env(base_env)
    kube = Settings.from_env({**base_env, "ORCHESTRATOR_DEPLOY_DRIVER": "kubernetes"})
    assert build_services(local, clock, redis).pod_usage is None
    assert build_services(kube, clock, redis).pod_usage is not None  # built lazily, no I/O yet


def test_a_broken_metrics_api_does_not_stop_the_tick(
    redis: Redis, clock: FakeClock, base_env: dict[str, str], kube_api: FakeKubeApi
) -> None:
    kube_api.fail("list", "podmetrics", status=500)
    driver = KubernetesDriver(make_api_client(host=kube_api.url), "flows")
    pc = FunctionHarness(
        POLICY_CHECK, redis, clock, base_env, services=PolicyServices(pod_usage=driver)
    )
    run = pc.admit("f1", tenant="acme")
    clock.advance(3600)
    pc.tick()
    assert [e["runId"] for e in pc.emitted("flow.execution.failed")] == [run["runId"]]


def _deployment(name: str, labels: dict[str, str], replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": "x"}]},
            },
        },
    }
