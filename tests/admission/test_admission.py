"""Fair admission (issue 4 §4, §5, §6): caps, start rate, slots, penalties, weighted fair order."""

from __future__ import annotations

from collections import Counter

import pytest
from redis import Redis

from shared.admission import queue as admission
from shared.clock import FakeClock
from shared.errors import OverCapacity
from tests.support.admission import Admission, penalize
from tests.support.flows import policy

pytestmark = pytest.mark.redis_cluster  # also on a real 3-master Redis Cluster


def reasons(adm: Admission) -> list[str]:
    return [e["data"]["reason"] for e in adm.outbox() if e["type"].endswith(".deferred")]


def test_the_tenant_cap_holds_runs_until_one_ends(redis: Redis, clock: FakeClock) -> None:
    adm = Admission(redis, clock, policy(defaults={"max_concurrent_runs": 2}))
    adm.deploy("f1", "f2")  # a flow belongs to one tenant
    assert [adm.submit("acme", "f1") for _ in range(3)] == ["admitted", "admitted", "deferred"]
    assert reasons(adm) == ["tenant_cap"]
    assert adm.submit("globex", "f2") == "admitted"  # another tenant is not held by acme's cap
    first = next(run_id for run_id, run in adm.running().items() if run["t"] == "acme")
    assert adm.release(first) == "released"
    assert admission.counts(redis).running_by_tenant == {"acme": 2, "globex": 1}


def test_the_start_rate_bucket_refills_with_time(redis: Redis, clock: FakeClock) -> None:
    adm = Admission(redis, clock, policy(defaults={"start_rate_per_minute": 2}))
    adm.deploy("f1")
    assert [adm.submit("acme", "f1") for _ in range(3)] == ["admitted", "admitted", "deferred"]
    assert reasons(adm) == ["start_rate"]
    clock.advance(10)
    assert adm.dispatch().admitted == 0
    clock.advance(20)  # 2 per minute: one token every 30 s
    assert adm.dispatch().admitted == 1


def test_a_throttled_tenant_starts_fewer_runs(redis: Redis, clock: FakeClock) -> None:
    adm = Admission(redis, clock, policy(defaults={"start_rate_per_minute": 8}))
    adm.deploy("f1")
    penalize(redis, "tenant", "acme", "throttle")  # x0.25: 2 per minute
    assert [adm.submit("acme", "f1") for _ in range(3)] == ["admitted", "admitted", "deferred"]


def test_global_slots_bound_all_tenants(redis: Redis, clock: FakeClock) -> None:
    adm = Admission(redis, clock, policy(slots=3))
    adm.deploy("f1", "f2")
    results = [adm.submit(t, f) for t, f in [("a", "f1"), ("b", "f2"), ("a", "f1"), ("b", "f2")]]
    assert results == ["admitted", "admitted", "admitted", "deferred"]
    assert reasons(adm) == ["slots"]


@pytest.mark.parametrize("level", ["tenant", "user", "flow"])
def test_a_suspended_subject_waits_and_runs_when_restored(
    redis: Redis, clock: FakeClock, level: str
) -> None:
    adm = Admission(redis, clock, policy())
    adm.deploy("f1")
    penalize(redis, level, {"tenant": "acme", "user": "u", "flow": "f1"}[level], "suspend")
    assert adm.submit("acme", "f1") == "deferred"
    assert reasons(adm) == ["suspended"]
    assert adm.dispatch().admitted == 0
    penalize(redis, level, {"tenant": "acme", "user": "u", "flow": "f1"}[level], None)
    assert adm.dispatch().admitted == 1


def test_the_waiting_cap_answers_over_capacity(redis: Redis, clock: FakeClock) -> None:
    adm = Admission(redis, clock, policy(slots=1, defaults={"max_waiting_runs": 2}))
    adm.deploy("f1")
    assert [adm.submit("acme", "f1") for _ in range(3)] == ["admitted", "deferred", "deferred"]
    with pytest.raises(OverCapacity):
        adm.submit("acme", "f1")
    assert adm.submit("globex", "f1") == "deferred"  # the cap is per tenant


def test_release_with_an_unknown_run_changes_nothing(redis: Redis, clock: FakeClock) -> None:
    adm = Admission(redis, clock, policy())
    adm.deploy("f1")
    adm.submit("acme", "f1")
    adm.tokens["ghost"] = 99
    assert adm.release("ghost") == "unknown"
    assert admission.counts(redis).running == 1


def test_runs_past_their_deadline_give_their_slot_back(redis: Redis, clock: FakeClock) -> None:
    adm = Admission(redis, clock, policy(slots=1))
    adm.deploy("f1")
    adm.submit("acme", "f1")
    adm.submit("acme", "f1")
    clock.advance(3600 + 30)
    assert adm.dispatch().reclaimed == 0  # the watchdog gets a grace period first
    clock.advance(60)
    assert adm.dispatch() == admission.Dispatched(reclaimed=1, admitted=1)


# --- fair order ------------------------------------------------------------------------------
def backlog(adm: Admission, spec: dict[tuple[str, str, str], int]) -> None:
    """Queues runs while no slot is free: {(tenant, user, flow): count}."""
    for (tenant, user, flow), count in spec.items():
        for _ in range(count):
            adm.submit(tenant, flow, user)


def serve(adm: Admission, n: int) -> list[dict[str, object]]:
    """Ends the oldest running run n times; returns what was admitted meanwhile, in order."""
    before = len(adm.admitted_order())
    for _ in range(n):
        running = sorted(adm.running())
        if not running:
            break
        adm.release(running[0])
    return adm.admitted_order()[before:]


def blocked(adm: Admission, *flows: str) -> None:
    adm.deploy(*flows)
    adm.submit("blocker", "blocker-flow")  # holds the only slot


@pytest.mark.parametrize(
    ("weights", "expected_share"),
    [({"a": 1, "b": 1}, {"a": 0.5, "b": 0.5}), ({"a": 3, "b": 1}, {"a": 0.75, "b": 0.25})],
    ids=["equal weights", "weight 3 to 1"],
)
def test_tenants_share_by_weight(
    redis: Redis, clock: FakeClock, weights: dict[str, int], expected_share: dict[str, float]
) -> None:
    adm = Admission(
        redis, clock, policy(slots=1, tenants={t: {"weight": w} for t, w in weights.items()})
    )
    blocked(adm, "fa", "fb", "blocker-flow")
    backlog(adm, {("a", "u", "fa"): 100, ("b", "u", "fb"): 100})
    served = Counter(str(d["tenant"]) for d in serve(adm, 80))
    for tenant, share in expected_share.items():
        assert served[tenant] == pytest.approx(80 * share, abs=1)


def test_users_share_within_a_tenant_and_flows_within_a_user(
    redis: Redis, clock: FakeClock
) -> None:
    adm = Admission(redis, clock, policy(slots=1))
    blocked(adm, "x1", "x2", "x3", "y1", "blocker-flow")
    backlog(adm, {("t", "x", "x1"): 40, ("t", "x", "x2"): 40, ("t", "x", "x3"): 40})
    backlog(adm, {("t", "y", "y1"): 40})
    served = serve(adm, 40)
    users = Counter(str(d["user"]) for d in served)
    assert users == {"x": 20, "y": 20}  # three flows do not triple x's share
    flows = Counter(str(d["flowId"]) for d in served if d["user"] == "x")
    assert max(flows.values()) - min(flows.values()) <= 1


def test_deprioritized_tenants_get_a_smaller_share_at_decision_time(
    redis: Redis, clock: FakeClock
) -> None:
    adm = Admission(redis, clock, policy(slots=1))
    blocked(adm, "fa", "fb", "blocker-flow")
    backlog(adm, {("a", "u", "fa"): 100, ("b", "u", "fb"): 100})
    penalize(redis, "tenant", "a", "deprioritize")  # weight x0.25: a gets 1 in 5
    served = Counter(str(d["tenant"]) for d in serve(adm, 50))
    assert served["a"] == pytest.approx(10, abs=1)
    penalize(redis, "tenant", "a", None)
    served = Counter(str(d["tenant"]) for d in serve(adm, 40))
    assert served["a"] == pytest.approx(20, abs=2)


def test_an_idle_tenant_banks_no_credit(redis: Redis, clock: FakeClock) -> None:
    adm = Admission(redis, clock, policy(slots=1))
    blocked(adm, "fa", "fb", "blocker-flow")
    backlog(adm, {("a", "u", "fa"): 60})
    serve(adm, 40)  # b was idle all along
    backlog(adm, {("b", "u", "fb"): 60})
    served = Counter(str(d["tenant"]) for d in serve(adm, 20))
    assert served["a"] == pytest.approx(10, abs=1)
