"""Schedules stored by the previous release (one hash per flow, `co:{adm}:sched:<flow>`, its
buffered due time in field b) keep working for one release: ticks fire them, a buffered due
time starts after its predecessor, flow.stopping drops them, and the next flow.starting moves
them into the one `co:{adm}:schedules` hash (CHANGELOG.md, 0.2.0)."""

from __future__ import annotations

from typing import Any, cast

import pytest
from redis import Redis

from shared import keys
from shared.admission import cron
from shared.clock import FakeClock
from shared.handlers.flow_start import SPEC as FLOW_START
from shared.handlers.flow_start import Services as FlowStartServices
from tests.support.flows import flow_doc
from tests.support.function import FunctionHarness

pytestmark = pytest.mark.redis_cluster  # also on a real 3-master Redis Cluster


@pytest.fixture()
def fs(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> FunctionHarness[FlowStartServices]:
    return FunctionHarness(FLOW_START, redis, clock, base_env)


def minute_flow(**settings: Any) -> dict[str, Any]:
    return flow_doc("f1", cron="* * * * *", spread=False, **settings)


def tick_minutes(fs: FunctionHarness[FlowStartServices], clock: FakeClock, minutes: int) -> None:
    for _ in range(minutes):
        clock.advance(60.0)
        fs.tick()


def to_previous_form(redis: Redis, flow_id: str) -> dict[str, str]:
    """Rewrites a flow's schedule the way the previous release stored it (flow_start_schedule:
    HSET c z o t u, and p w m where set; a buffered due time in b of the same hash)."""
    stored = cron.stored_schedule(redis, flow_id)
    assert stored is not None
    buffered = redis.hget(keys.schedule_buffered(), flow_id)
    redis.hdel(keys.schedules(), flow_id)
    redis.hdel(keys.schedule_buffered(), flow_id)
    fields: dict[str, str] = {"o": "0", **stored}
    if buffered is not None:
        fields["b"] = cast(bytes, buffered).decode()
    for name, value in fields.items():
        redis.hset(keys.schedule(flow_id), name, value)
    return stored


def test_a_previous_release_schedule_fires_and_the_next_store_moves_it(
    fs: FunctionHarness[FlowStartServices], redis: Redis, clock: FakeClock
) -> None:
    fs.start_flow(minute_flow(overlapPolicy="allow", maxRunSeconds=120))
    stored = to_previous_form(redis, "f1")
    assert stored["p"] == "allow" and stored["m"] == "120" and stored["u"] == "u1"
    assert cron.stored_schedule(redis, "f1") == stored  # read in the old form
    due = redis.zscore(keys.schedule_due(), "f1")
    tick_minutes(fs, clock, 2)
    admitted = fs.admitted()
    assert [(a["tenant"], a["user"]) for a in admitted] == [("acme", "u1")] * 2  # allow
    assert not redis.exists(keys.schedule("f1"))  # moved by the tick's read
    assert cron.stored_schedule(redis, "f1") == stored
    moved_due = redis.zscore(keys.schedule_due(), "f1")
    assert moved_due != due


def test_the_next_flow_starting_moves_a_previous_release_schedule_and_keeps_its_due_time(
    fs: FunctionHarness[FlowStartServices], redis: Redis, clock: FakeClock
) -> None:
    fs.start_flow(minute_flow(overlapPolicy="buffer_one"))
    tick_minutes(fs, clock, 2)  # one running, one buffered
    stored = to_previous_form(redis, "f1")
    buffered = redis.hget(keys.schedule("f1"), "b")
    due = redis.zscore(keys.schedule_due(), "f1")
    fs.start_flow(minute_flow(overlapPolicy="buffer_one"))
    assert not redis.exists(keys.schedule("f1"))
    assert cron.stored_schedule(redis, "f1") == stored
    assert redis.hget(keys.schedule_buffered(), "f1") == buffered is not None
    assert redis.zscore(keys.schedule_due(), "f1") == due  # kept, not re-planned


def test_a_previous_release_buffered_due_time_starts_after_its_predecessor(
    fs: FunctionHarness[FlowStartServices], redis: Redis, clock: FakeClock
) -> None:
    fs.start_flow(minute_flow(overlapPolicy="buffer_one"))
    tick_minutes(fs, clock, 2)
    assert fs.reasons("flow.execution.deferred") == ["buffered"]
    buffered_for = fs.emitted("flow.execution.deferred")[0]["scheduledFor"]
    to_previous_form(redis, "f1")
    assert redis.hexists(keys.schedule("f1"), "b")
    tick_minutes(fs, clock, 1)  # still running: the old form's buffer is full, nothing more
    assert fs.reasons("flow.execution.deferred") == ["buffered"]
    assert fs.reasons("flow.execution.skipped") == ["overlap"]
    fs.end(fs.admitted()[0])
    assert [a["scheduledFor"] for a in fs.admitted()[1:]] == [buffered_for]
    assert fs.admitted()[1]["user"] == "u1"
    assert not redis.hexists(keys.schedule("f1"), "b")


def test_stopping_a_previous_release_flow_drops_its_schedule_and_buffer(
    fs: FunctionHarness[FlowStartServices], redis: Redis, clock: FakeClock
) -> None:
    fs.start_flow(minute_flow(overlapPolicy="buffer_one"))
    tick_minutes(fs, clock, 2)
    to_previous_form(redis, "f1")
    fs.send("flow.stopping", {"id": "f1"})
    skipped = fs.emitted("flow.execution.skipped")
    assert [(s["reason"], s["tenant"]) for s in skipped] == [("flow_stopped", "acme")]
    assert not redis.exists(keys.schedule("f1"))
    assert cron.stored_schedule(redis, "f1") is None
    assert redis.zscore(keys.schedule_due(), "f1") is None
