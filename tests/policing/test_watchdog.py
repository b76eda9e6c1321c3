"""The watchdog through the policy-check runtime: run time accounting and timeouts."""

from __future__ import annotations

import threading

import pytest
from redis import Redis

from shared import keys
from shared.clock import FakeClock
from shared.events import OutgoingEvent
from shared.handlers.policy_check import SPEC as POLICY_CHECK
from shared.model import audit
from shared.model.policy import Policy, TenantLimits
from shared.policing import ledger, watchdog
from shared.wiring.policing import PolicyServices
from tests.support.flows import store_flow
from tests.support.function import FunctionHarness

POLICY = Policy(tenants={"short": TenantLimits(max_run_seconds=300)})


@pytest.fixture()
def pc(redis: Redis, clock: FakeClock, base_env: dict[str, str]) -> FunctionHarness[PolicyServices]:
    return FunctionHarness(POLICY_CHECK, redis, clock, base_env, policy=POLICY)


@pytest.mark.parametrize(
    ("tenant", "flow_limit", "expected"),
    [
        ("acme", None, 3600),
        ("acme", 600, 600),
        ("short", 600, 300),
        ("short", 100, 100),
    ],
    ids=["tenant default", "flow tighter", "tenant tighter", "both set, flow tighter"],
)
def test_the_limit_is_the_smaller_of_flow_and_tenant(
    tenant: str, flow_limit: int | None, expected: int
) -> None:
    assert watchdog.limit_for(POLICY, tenant, flow_limit) == expected


def test_a_run_past_its_limit_is_failed_once_with_its_fencing_token(
    pc: FunctionHarness[PolicyServices], redis: Redis, clock: FakeClock
) -> None:
    store_flow(redis, "f1", maxRunSeconds=600)
    run = pc.admit("f1", fencing=7)
    clock.advance(599)
    pc.tick()
    assert pc.emitted("flow.execution.failed") == []
    clock.advance(1)
    pc.tick()
    pc.tick()
    [failed] = pc.sender.of_type("flow.execution.failed")
    assert failed.data["reason"] == "timeout"
    assert (failed.data["runId"], failed.data["fencingToken"], failed.data["tenant"]) == (
        run["runId"],
        7,
        "acme",
    )
    assert failed.data["durationMs"] == 600_000
    assert failed.extensions == {"tenant": "acme", "flowid": "f1", "runid": run["runId"]}
    [violation] = pc.emitted("policy.violation")
    assert violation["subject"] == {"level": "flow", "id": "f1"}
    assert (violation["rule"], violation["measured"], violation["limit"]) == (
        "max-run-seconds",
        600,
        600,
    )
    timeouts = [e for e in audit.read(redis) if e.get("action") == "timeout"]
    assert [(e.get("subject"), e.get("actor")) for e in timeouts] == [("f1", "watchdog")]
    assert watchdog.running(redis) == []


def test_run_time_is_counted_as_it_passes_and_once(
    pc: FunctionHarness[PolicyServices], clock: FakeClock
) -> None:
    run = pc.admit("f1")
    clock.advance(100)
    pc.tick()
    assert pc.measured("flow", "f1", "run_seconds") == 100  # visible before the run ends
    assert pc.measured("tenant", "acme", "run_seconds") == 100
    clock.advance(50)
    pc.end(run, duration_ms=150_000, event_id="end-1")
    pc.end(run, duration_ms=150_000, event_id="end-1")  # redelivered
    pc.end(run, duration_ms=150_000, event_id="end-2")  # a second terminal event of the run
    assert pc.measured("flow", "f1", "run_seconds") == 150
    assert pc.measured("flow", "f1", "ended") == 1
    assert pc.measured("flow", "f1", "runs") == 1
    assert pc.measured("user", "u1", "run_seconds") == 150


def test_the_watchdogs_own_failed_event_is_not_counted_again(
    pc: FunctionHarness[PolicyServices], redis: Redis, clock: FakeClock
) -> None:
    pc.admit("f1", tenant="short")
    clock.advance(300)
    pc.tick()
    [failed] = pc.sender.of_type("flow.execution.failed")
    pc.runtime.handle(
        OutgoingEvent.from_json(failed.to_json()).to_cloudevent(
            authtoken=_token(clock, failed.type)
        )
    )
    assert pc.measured("flow", "f1", "errors", tenant="short") == 1
    assert pc.measured("flow", "f1", "ended", tenant="short") == 1
    assert pc.measured("flow", "f1", "run_seconds", tenant="short") == 300


def test_a_run_that_ended_in_time_is_left_alone(
    pc: FunctionHarness[PolicyServices], clock: FakeClock
) -> None:
    run = pc.admit("f1")
    clock.advance(10)
    pc.end(run)
    clock.advance(100_000)
    pc.tick()
    assert pc.emitted("flow.execution.failed") == []


def test_the_end_of_a_run_never_seen_counts_its_whole_duration(
    pc: FunctionHarness[PolicyServices],
) -> None:
    pc.end(
        {"flowId": "f1", "runId": "ghost", "tenant": "acme", "fencingToken": 1},
        failed=True,
        duration_ms=42_000,
    )
    assert pc.measured("flow", "f1", "run_seconds") == 42
    assert pc.measured("flow", "f1", "errors") == 1


def test_a_run_stopped_by_flow_stopping_is_not_an_error(
    pc: FunctionHarness[PolicyServices],
) -> None:
    run = pc.admit("f1")
    pc.end(run, failed=True, reason="stopped")
    assert pc.measured("flow", "f1", "errors") == 0
    assert pc.measured("flow", "f1", "ended") == 1


def test_concurrent_ticks_end_an_overdue_run_once(
    pc: FunctionHarness[PolicyServices], redis: Redis, clock: FakeClock
) -> None:
    pc.admit("f1", tenant="short")
    clock.advance(1000)
    runs = watchdog.running(redis)
    windows = ledger.level_windows(POLICY)
    results: list[int] = []
    barrier = threading.Barrier(8)

    def sweep() -> None:
        barrier.wait()
        ended = watchdog.timeouts(redis, runs, now=clock.now(), ring_windows=windows, source="/t")
        results.append(len(ended))

    threads = [threading.Thread(target=sweep) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [0] * 7 + [1]
    outbox = [OutgoingEvent.from_json(raw) for raw in redis.lrange(keys.outbox(keys.POLICY), 0, -1)]
    assert [e.data["reason"] for e in outbox if e.type.endswith("flow.execution.failed")] == [
        "timeout"
    ]


def _token(clock: FakeClock, event_type: str) -> str:
    from shared.security.tokens import sign_internal
    from tests.conftest import TEST_KEY

    return sign_internal(TEST_KEY, "policy-check", clock, event_type=event_type)


@pytest.mark.parametrize("level", ["tenant", "user", "flow"])
def test_runs_of_a_suspended_subject_are_ended_and_free_their_slots(
    pc: FunctionHarness[PolicyServices], redis: Redis, clock: FakeClock, level: str
) -> None:
    """deploy scales a suspended subject to zero: its runs cannot finish, so the watchdog ends
    them at once (reason suspended, not an error, not a violation) instead of at the timeout."""
    bad = pc.admit("f1", user="u1", fencing=4)
    good = pc.admit("f2", user="u2")
    redis.hset(
        keys.penalty(level, {"tenant": "acme", "user": "u1", "flow": "f1"}[level]),
        "step",
        "suspend",
    )
    clock.advance(30)
    pc.tick()
    failed = pc.emitted("flow.execution.failed")
    expected = [bad["runId"], good["runId"]] if level == "tenant" else [bad["runId"]]
    assert sorted(f["runId"] for f in failed) == sorted(expected)
    assert {f["reason"] for f in failed} == {"suspended"}
    assert pc.emitted("policy.violation") == []
    assert pc.measured("flow", "f1", "errors") == 0
    assert pc.measured("flow", "f1", "run_seconds") == 30
    pc.tick()
    assert len(pc.emitted("flow.execution.failed")) == len(expected)  # once
