"""Ticks (issue 4 §1, §3, §6): concurrent ticks fire each due time once, a tick claims only what
is due, and a minute tick works through its minute firing entries as they come due."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from redis import Redis

from shared import keys
from shared.admission import queue as admission
from shared.clock import FakeClock
from shared.errors import TemporaryError
from shared.handlers.flow_start import SPEC as FLOW_START
from shared.handlers.flow_start import Services
from shared.handlers.flow_start import Services as FlowStartServices
from tests.support.flows import flow_doc, policy
from tests.support.function import FunctionHarness

pytestmark = pytest.mark.redis_cluster  # also on a real 3-master Redis Cluster

ROOMY = policy(
    slots=10_000,
    defaults={
        "max_concurrent_runs": 10_000,
        "start_rate_per_minute": 100_000,
        "max_waiting_runs": 10_000,
    },
)


def tick_together(fs: FunctionHarness[FlowStartServices], threads: int) -> list[BaseException]:
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def tick() -> None:
        try:
            barrier.wait()
            fs.tick()
        except BaseException as exc:  # pragma: no cover - reported by the caller
            errors.append(exc)

    started = [threading.Thread(target=tick) for _ in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()
    return errors


def test_twenty_threads_ticking_at_once_fire_each_due_time_once(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    fs = FunctionHarness(FLOW_START, redis, clock, base_env, policy=ROOMY)
    flows = [f"f{n}" for n in range(150)]
    for flow in flows:
        fs.start_flow(flow_doc(flow, cron="* * * * *", spread=False, overlapPolicy="allow"))
    for minute in range(3):
        clock.advance(60)
        errors = tick_together(fs, threads=20)
        assert errors == []
        runs = Counter(data["runId"] for data in fs.admitted())
        assert len(runs) == len(flows) * (minute + 1)  # every due time fired ...
        assert int(redis.get(keys.fencing_counter()) or 0) == len(runs)  # ... and only once
    assert admission.counts(redis).running == 3 * len(flows)


def test_a_tick_claims_only_due_entries(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    fs = FunctionHarness(FLOW_START, redis, clock, base_env, policy=ROOMY)
    fs.start_flow(flow_doc("soon", cron="* * * * *", spread=False))
    fs.start_flow(flow_doc("later", cron="0 * * * *", spread=False))
    clock.advance(60)
    fs.tick()
    assert [data["flowId"] for data in fs.admitted()] == ["soon"]
    assert redis.zscore(keys.schedule_due(), "later") == 1_767_225_600 + 3600


def test_a_minute_tick_works_through_its_minute(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    fs = FunctionHarness(FLOW_START, redis, clock, base_env, policy=ROOMY)
    fs.runtime.services = Services(work_through_seconds=55.0, sender=fs.sender)
    flows = [f"flow-{n}" for n in range(40)]
    clock.set(1_767_225_600 + 30)  # stored after this minute's spread: first due next minute
    for flow in flows:
        fs.start_flow(flow_doc(flow, cron="* * * * *"))  # spread over the first 15 s
    clock.set(1_767_225_600 + 60)  # the PingSource's tick at the minute
    fs.tick()
    assert clock.now() < 1_767_225_600 + 120  # returned before the next tick
    admitted = fs.sender.of_type("flow.execution.admitted")
    assert sorted(event.data["flowId"] for event in admitted) == sorted(flows)
    scheduled = {event.data["scheduledFor"] for event in admitted}
    assert len(scheduled) > 5  # the spread is real ...
    for event in admitted:  # ... and each fired as it came due, not at the next tick
        assert event.time is not None
        assert 0 <= event.time - event.data["scheduledFor"] <= 1.0


def test_without_work_through_a_tick_returns_at_once(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    fs = FunctionHarness(FLOW_START, redis, clock, base_env, policy=ROOMY)
    fs.start_flow(flow_doc("f1", cron="* * * * *"))
    clock.set(1_767_225_600 + 60)
    fs.tick()
    assert clock.now() == 1_767_225_600 + 60


def test_a_tick_sends_its_events_in_parallel_and_keeps_what_failed(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    from shared.admission.outbox import flush_parallel
    from tests.support.events import CapturingSender

    fs = FunctionHarness(FLOW_START, redis, clock, base_env, policy=ROOMY)
    parallel = CapturingSender()
    fs.runtime.services = Services(sender=parallel)
    for n in range(60):
        fs.start_flow(flow_doc(f"f{n}", cron="* * * * *", spread=False))
    clock.advance(60)
    fs.tick()
    assert len(parallel.of_type("flow.execution.admitted")) == 60
    assert redis.llen(keys.outbox(keys.ADMISSION)) == 0
    fs.sender.down = True
    with pytest.raises(TemporaryError):  # stored, then the sink was down
        fs.execute("f1")
    down = CapturingSender()
    down.down = True
    assert flush_parallel(redis, down) == 0
    assert redis.llen(keys.outbox(keys.ADMISSION)) == 1  # nothing sent, nothing lost
    assert flush_parallel(redis, parallel) == 1
    assert redis.llen(keys.outbox(keys.ADMISSION)) == 0
