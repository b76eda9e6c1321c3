"""Run leases and overlap protection (issue 4 §2, §6): skip while running, run again after
completion, lease expiry after a crash, stale fencing tokens refused, buffer_one and allow."""

from __future__ import annotations

from typing import Any

import pytest
from redis import Redis

from shared import keys
from shared.admission import lease
from shared.admission import queue as admission
from shared.clock import FakeClock
from shared.handlers.flow_start import SPEC as FLOW_START
from shared.handlers.flow_start import Services as FlowStartServices
from shared.model.policy import TenantLimits
from tests.support.flows import flow_doc, policy
from tests.support.function import FunctionHarness

pytestmark = pytest.mark.redis_cluster  # also on a real 3-master Redis Cluster

MINUTE = 60.0


# --- the lease itself ----------------------------------------------------------------------
def test_a_held_lease_is_not_acquired_again(redis: Redis, clock: FakeClock) -> None:
    first = lease.acquire(redis, "f1", "run-1", 30, clock.now())
    assert first is not None
    assert lease.acquire(redis, "f1", "run-2", 30, clock.now()) is None
    held = lease.current(redis, "f1", clock.now())
    assert held is not None and (held.run_id, held.token) == ("run-1", first)


def test_fencing_tokens_increase_on_every_acquire(redis: Redis, clock: FakeClock) -> None:
    tokens = []
    for n in range(5):
        token = lease.acquire(redis, f"f{n % 2}", f"run-{n}", 10, clock.now())
        assert token is not None
        tokens.append(token)
        assert lease.release(redis, f"f{n % 2}", token)
    assert tokens == sorted(set(tokens))


def test_an_expired_lease_is_taken_by_the_next_run_and_the_stale_token_is_refused(
    redis: Redis, clock: FakeClock
) -> None:
    old = lease.acquire(redis, "f1", "run-1", 30, clock.now())
    clock.advance(31)
    assert lease.current(redis, "f1", clock.now()) is None
    new = lease.acquire(redis, "f1", "run-2", 30, clock.now())
    assert old is not None and new is not None and new > old
    assert not lease.release(redis, "f1", old)  # the crashed run comes back: refused
    held = lease.current(redis, "f1", clock.now())
    assert held is not None and held.run_id == "run-2"
    assert lease.release(redis, "f1", new)


@pytest.mark.parametrize(
    ("flow_max", "tenant_max", "expected"),
    [(None, 3600, 3600), (60, 3600, 60), (7200, 3600, 3600)],
    ids=["tenant default", "flow is shorter", "tenant caps the flow"],
)
def test_run_limit_is_the_smaller_of_flow_and_tenant(
    flow_max: int | None, tenant_max: int, expected: int
) -> None:
    assert lease.run_limit(flow_max, TenantLimits(max_run_seconds=tenant_max)) == expected


# --- overlap policies through the function ----------------------------------------------------
@pytest.fixture()
def fs(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> FunctionHarness[FlowStartServices]:
    return FunctionHarness(FLOW_START, redis, clock, base_env)


def minute_flow(**settings: Any) -> dict[str, Any]:
    return flow_doc("f1", cron="* * * * *", spread=False, **settings)


def run_minutes(fs: FunctionHarness[FlowStartServices], clock: FakeClock, minutes: int) -> None:
    for _ in range(minutes):
        clock.advance(MINUTE)
        fs.tick()


def test_skip_while_running_and_run_again_after_completion(
    fs: FunctionHarness[FlowStartServices], clock: FakeClock
) -> None:
    fs.start_flow(minute_flow())
    run_minutes(fs, clock, 3)
    assert len(fs.admitted()) == 1
    assert fs.reasons("flow.execution.skipped") == ["overlap", "overlap"]
    fs.end(fs.admitted()[0])
    run_minutes(fs, clock, 1)
    assert len(fs.admitted()) == 2
    assert fs.admitted()[1]["fencingToken"] > fs.admitted()[0]["fencingToken"]


def test_a_crashed_runs_lease_expires_and_the_next_due_time_runs(
    fs: FunctionHarness[FlowStartServices], clock: FakeClock
) -> None:
    fs.start_flow(minute_flow(maxRunSeconds=150))
    run_minutes(fs, clock, 1)
    first = fs.admitted()[0]
    run_minutes(fs, clock, 2)  # 2 and 3 minutes after: still within 150 s
    assert len(fs.admitted()) == 1
    run_minutes(fs, clock, 1)  # the lease of the crashed run expired
    assert len(fs.admitted()) == 2
    second = fs.admitted()[1]
    assert second["fencingToken"] > first["fencingToken"]
    fs.end(first)  # the crashed run reports late: frees its own slot, not the lease
    run_minutes(fs, clock, 1)
    assert len(fs.admitted()) == 2
    assert fs.reasons("flow.execution.skipped")[-1] == "overlap"


def test_a_stale_fencing_token_releases_nothing(
    fs: FunctionHarness[FlowStartServices], redis: Redis, clock: FakeClock
) -> None:
    fs.start_flow(minute_flow())
    run_minutes(fs, clock, 1)
    admitted = dict(fs.admitted()[0])
    fs.end({**admitted, "fencingToken": admitted["fencingToken"] - 1})
    assert admission.counts(redis).running == 1
    assert lease.current(redis, "f1", clock.now()) is not None
    fs.end(admitted)
    assert admission.counts(redis).running == 0
    assert lease.current(redis, "f1", clock.now()) is None


def test_the_watchdogs_timeout_failure_releases_like_any_other(
    fs: FunctionHarness[FlowStartServices], redis: Redis, clock: FakeClock
) -> None:
    fs.start_flow(minute_flow())
    run_minutes(fs, clock, 1)
    fs.send(
        "flow.execution.failed",
        {**{k: fs.admitted()[0][k] for k in ("flowId", "runId", "tenant", "fencingToken")}}
        | {"reason": "timeout"},
    )
    assert admission.counts(redis).running == 0
    run_minutes(fs, clock, 1)
    assert len(fs.admitted()) == 2


def test_buffer_one_keeps_one_due_time_and_starts_it_after_completion(
    fs: FunctionHarness[FlowStartServices], clock: FakeClock
) -> None:
    fs.start_flow(minute_flow(overlapPolicy="buffer_one"))
    run_minutes(fs, clock, 3)
    assert len(fs.admitted()) == 1
    assert fs.reasons("flow.execution.deferred") == ["buffered"]
    assert fs.reasons("flow.execution.skipped") == ["overlap"]
    buffered_for = fs.emitted("flow.execution.deferred")[0]["scheduledFor"]
    fs.end(fs.admitted()[0])
    assert len(fs.admitted()) == 2
    assert fs.admitted()[1]["scheduledFor"] == buffered_for


def test_allow_runs_overlap(fs: FunctionHarness[FlowStartServices], clock: FakeClock) -> None:
    fs.start_flow(minute_flow(overlapPolicy="allow"))
    run_minutes(fs, clock, 3)
    assert len(fs.admitted()) == 3
    tokens = [a["fencingToken"] for a in fs.admitted()]
    assert tokens == sorted(set(tokens))


def test_the_tenant_default_overlap_policy_applies_when_the_flow_has_none(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    fs = FunctionHarness(
        FLOW_START,
        redis,
        clock,
        base_env,
        policy=policy(tenants={"acme": {"overlap_policy": "allow"}}),
    )
    fs.start_flow(minute_flow())
    run_minutes(fs, clock, 2)
    assert len(fs.admitted()) == 2


def test_lease_keys_are_the_ones_keys_py_names(
    fs: FunctionHarness[FlowStartServices], redis: Redis, clock: FakeClock
) -> None:
    fs.start_flow(minute_flow())
    run_minutes(fs, clock, 1)
    run_id = fs.admitted()[0]["runId"]
    assert redis.exists(keys.run_lease("f1"), keys.fencing_counter(), keys.admitted_runs()) == 3
    assert redis.zscore(keys.run_deadlines(), run_id) is not None
    assert redis.hget(keys.admission_counts(), "t:acme") == b"1"


def test_a_waiting_cron_run_whose_lease_was_taken_over_is_skipped_not_run_alongside(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    fs = FunctionHarness(FLOW_START, redis, clock, base_env, policy=policy(slots=2))
    fs.start_flow(flow_doc("busy", cron=None))
    blockers = [fs.execute("busy"), fs.execute("busy")]
    assert len(blockers) == len(fs.admitted()) == 2  # every slot taken
    fs.start_flow(minute_flow(maxRunSeconds=90))
    run_minutes(fs, clock, 3)  # 1: waits holding the lease; 2: overlap; 3: lease expired
    assert fs.reasons("flow.execution.deferred") == ["slots", "slots"]
    assert fs.reasons("flow.execution.skipped") == ["overlap"]
    for admitted in list(fs.admitted()):
        fs.end(admitted)
    cron_runs = [a for a in fs.admitted() if a["flowId"] == "f1"]
    assert [a["scheduledFor"] for a in cron_runs] == [1_767_225_600 + 180]  # the lease holder
    assert fs.reasons("flow.execution.skipped") == ["overlap", "superseded"]
    assert admission.counts(redis).waiting_by_tenant == {}
    holder = lease.current(redis, "f1", clock.now())
    assert holder is not None and holder.run_id == cron_runs[0]["runId"]


def test_stopping_a_flow_frees_the_lease_of_its_waiting_cron_run(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    fs = FunctionHarness(FLOW_START, redis, clock, base_env, policy=policy(slots=1))
    fs.start_flow(flow_doc("busy", cron=None))
    fs.execute("busy")
    fs.start_flow(minute_flow())
    run_minutes(fs, clock, 1)
    assert fs.reasons("flow.execution.deferred") == ["slots"]  # waiting, holding the lease
    fs.send("flow.stopping", {"id": "f1"})
    assert lease.current(redis, "f1", clock.now()) is None
    fs.start_flow(minute_flow())  # restarted at once (an update)
    fs.end(fs.admitted()[0])
    run_minutes(fs, clock, 1)
    assert [a["flowId"] for a in fs.admitted()] == ["busy", "f1"]
    assert fs.reasons("flow.execution.skipped") == ["flow_stopped"]
