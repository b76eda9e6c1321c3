"""policy-check's tick bounded and paged (TICK_PAGE_SIZE): at most that many overdue runs, watched
runs and active subjects per tick, the walk carried on by cursors in Redis."""

from __future__ import annotations

import pytest
from redis import Redis

from shared import keys
from shared.clock import FakeClock
from shared.handlers.policy_check import SPEC as POLICY_CHECK
from shared.model.policy import Policy, TenantLimits
from shared.policing import watchdog
from shared.wiring.policing import PolicyServices
from tests.support.admission import penalize
from tests.support.function import FunctionHarness

pytestmark = pytest.mark.redis_cluster  # also on a real 3-master Redis Cluster

FLOWS = [f"f{i}" for i in range(5)]


@pytest.fixture()
def pc(redis: Redis, clock: FakeClock, base_env: dict[str, str]) -> FunctionHarness[PolicyServices]:
    env = {**base_env, "TICK_PAGE_SIZE": "2"}
    policy = Policy(defaults=TenantLimits(max_run_seconds=300))
    return FunctionHarness(POLICY_CHECK, redis, clock, env, policy=policy)


def test_overdue_runs_are_ended_at_most_a_page_per_tick_and_each_once(
    pc: FunctionHarness[PolicyServices], redis: Redis, clock: FakeClock
) -> None:
    for flow_id in FLOWS:
        pc.admit(flow_id)
    clock.advance(300)
    ended = []
    for _ in range(4):
        pc.tick()
        ended.append(len(pc.emitted("flow.execution.failed")))
    assert ended == [2, 4, 5, 5]
    assert sorted(e["flowId"] for e in pc.emitted("flow.execution.failed")) == FLOWS
    assert watchdog.running(redis) == []


def test_run_time_of_every_run_is_counted_over_a_pass(
    pc: FunctionHarness[PolicyServices], clock: FakeClock
) -> None:
    for flow_id in FLOWS:
        pc.admit(flow_id)
    clock.advance(100)
    pc.tick()
    counted = [pc.measured("flow", f, "run_seconds") for f in FLOWS]
    assert sorted(counted) == [0, 0, 0, 100, 100]  # one page of two runs
    pc.tick()
    pc.tick()
    assert [pc.measured("flow", f, "run_seconds") for f in FLOWS] == [100] * 5
    clock.advance(50)
    for _ in range(3):  # the next pass counts what passed since, once
        pc.tick()
    assert [pc.measured("flow", f, "run_seconds") for f in FLOWS] == [150] * 5


def test_penalties_decay_a_page_per_tick_and_each_subject_once_a_pass(
    pc: FunctionHarness[PolicyServices], redis: Redis, clock: FakeClock
) -> None:
    subjects = [("tenant", f"t{i}", f"t{i}") for i in range(3)] + [
        ("user", "bob", "acme"), ("flow", "f1", "acme")
    ]  # fmt: skip
    for level, subject_id, tenant in subjects:
        penalize(redis, level, subject_id, "warn", tenant=tenant)  # the last rung: restored
    clock.advance(3600)
    restored = []
    for _ in range(4):
        pc.tick()
        restored.append(len(pc.emitted("tenant.restored")))
    assert restored == [2, 4, 5, 5]  # TICK_PAGE_SIZE 2: three ticks for five subjects
    assert all(
        redis.hget(keys.penalty(level, subject_id, tenant), "step") is None
        for level, subject_id, tenant in subjects
    )
    assert redis.zcard(keys.penalty_index()) == 0
