"""The usage ledger on a real Redis: sliding windows, redelivery, bounded memory."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis

from shared import keys
from shared.clock import FakeClock
from shared.model.policy import Policy, Rule, TenantLimits
from shared.policing import ledger
from shared.policing.ledger import SLOTS, Record, SubjectRef
from shared.runtime.idempotency import Once

pytestmark = pytest.mark.redis_cluster  # also on a real 3-master Redis Cluster

WINDOW = 60
WIDTH = WINDOW / SLOTS
WINDOWS = {"tenant": (WINDOW,), "user": (WINDOW,), "flow": (WINDOW,)}
T0 = math.floor(1_767_225_600 / WIDTH) * WIDTH  # the start of a bucket
FLOW = SubjectRef("flow", "f1", "acme")


def add(
    redis: Redis, now: float, amount: float, *, metric: str = "messages", **kw: Any
) -> ledger.Recorded:
    subjects = ledger.subjects_of("acme", "u1", "f1")
    return ledger.record(
        redis, Record(subjects, {metric: amount}, **kw), now=now, ring_windows=WINDOWS
    )


def test_every_subject_of_an_event_is_counted(redis: Redis) -> None:
    add(redis, T0, 5)
    for level, subject_id in (("tenant", "acme"), ("user", "u1"), ("flow", "f1")):
        totals = ledger.usage(redis, SubjectRef(level, subject_id, "acme"), WINDOW, now=T0)
        assert totals["messages"] == 5
        assert totals["runs"] == 0


def test_an_empty_user_or_flow_is_left_out() -> None:
    assert [s.level for s in ledger.subjects_of("acme", "", "f1")] == ["tenant", "flow"]
    assert ledger.subjects_of("", "u", "f") == []


@pytest.mark.parametrize(
    ("buckets_later", "counted"),
    [
        (0, True),
        (SLOTS - 1, True),  # the oldest bucket still in the window
        (SLOTS, False),  # slid out
        (SLOTS * 5, False),
    ],
    ids=["same bucket", "eleven buckets later still counts", "twelve later is out", "long after"],
)
def test_the_window_slides_bucket_by_bucket(
    redis: Redis, buckets_later: int, counted: bool
) -> None:
    add(redis, T0 + 0.5, 7)
    totals = ledger.usage(redis, FLOW, WINDOW, now=T0 + buckets_later * WIDTH + 0.5)
    assert totals["messages"] == (7 if counted else 0)


def test_a_reused_slot_forgets_its_old_bucket(redis: Redis) -> None:
    add(redis, T0, 7)
    add(redis, T0 + SLOTS * WIDTH, 2)  # same slot, one full ring later
    assert ledger.usage(redis, FLOW, WINDOW, now=T0 + SLOTS * WIDTH)["messages"] == 2


def test_a_write_older_than_the_ring_is_dropped(redis: Redis) -> None:
    add(redis, T0 + SLOTS * WIDTH, 2)
    add(redis, T0, 7)  # a late write for the bucket the slot held one ring ago
    assert ledger.usage(redis, FLOW, WINDOW, now=T0 + SLOTS * WIDTH)["messages"] == 2


def test_sums_add_up_across_buckets(redis: Redis) -> None:
    for i in range(SLOTS):
        add(redis, T0 + i * WIDTH, 1)
    assert ledger.usage(redis, FLOW, WINDOW, now=T0 + (SLOTS - 1) * WIDTH)["messages"] == SLOTS
    assert ledger.usage(redis, FLOW, WINDOW, now=T0 + SLOTS * WIDTH)["messages"] == SLOTS - 1


def test_a_redelivered_event_is_counted_once(redis: Redis) -> None:
    once = Once(redis, keys.POLICY, "/tests", "event-1", ttl_seconds=60)
    first = add(redis, T0, 5, once=once)
    again = add(redis, T0 + 1, 5, once=once)
    other = add(
        redis, T0 + 2, 5, once=Once(redis, keys.POLICY, "/tests", "event-2", ttl_seconds=60)
    )
    assert (first.counted, again.duplicate, other.counted) == (True, True, True)
    assert ledger.usage(redis, FLOW, WINDOW, now=T0 + 2)["messages"] == 10


def test_unknown_metrics_are_refused(redis: Redis) -> None:
    with pytest.raises(ValueError, match="error_ratio"):
        add(redis, T0, 1, metric="error_ratio")


def test_windows_come_from_every_rule_including_tenant_rules() -> None:
    policy = Policy(
        rules=(Rule("a", "messages", "flow", "1m", 10),),
        tenants={"acme": TenantLimits(rules=(Rule("b", "runs", "tenant", "2h", 5),))},
    )
    assert ledger.windows(policy) == (60, 7200)
    assert ledger.windows(Policy(rules=())) == ledger.DEFAULT_WINDOWS


def test_each_level_keeps_the_rings_its_rules_need() -> None:
    """Default rules: tenant 15m + 1h, flow 1m + 15m; users have no rule and keep the widest;
    tenants always keep the widest (the usage an operator sees)."""
    assert ledger.level_windows(Policy()) == {
        "tenant": (900, 3600),
        "user": (3600,),
        "flow": (60, 900),
    }


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    writes=st.lists(
        st.tuples(st.integers(min_value=0, max_value=40), st.integers(min_value=1, max_value=50)),
        min_size=1,
        max_size=30,
    )
)
def test_the_window_equals_the_sum_of_its_last_buckets(
    redis: Redis, writes: list[tuple[int, int]]
) -> None:
    """Property: whatever the write times (in order), a read sums exactly the writes whose
    bucket is one of the last SLOTS buckets."""
    redis.flushall()
    writes.sort()
    for bucket, amount in writes:
        add(redis, T0 + bucket * WIDTH, amount)
    last = writes[-1][0]
    for now_bucket in (last, last + 3, last + SLOTS):
        expected = sum(a for b, a in writes if now_bucket - SLOTS < b <= now_bucket)
        got = ledger.usage(redis, FLOW, WINDOW, now=T0 + now_bucket * WIDTH)["messages"]
        assert got == expected


def _ledger_footprint(redis: Redis) -> tuple[int, int]:
    names = list(redis.scan_iter(match="co:{pol}:ledger*", count=1000))
    return len(names), sum(int(redis.memory_usage(name) or 0) for name in names)


@pytest.mark.timeout(900)  # ~20 s on a quiet machine; a loaded CI box took over 120 s
@pytest.mark.redis_cluster(standalone_only="a volume test; the slot rule is proven by the others")
def test_memory_stays_bounded_after_100000_usage_events(redis: Redis) -> None:
    """100,000 usage events of 20 tenants (2 users, 5 flows each) over ~7 simulated hours
    (every ring wraps around several times), default rules: the ledger's key count and bytes
    stop growing once every ring is full; they do not grow with the number of events."""
    clock = FakeClock()
    ring_windows = ledger.level_windows(Policy())
    tenants = [f"t{i}" for i in range(20)]

    def events(count: int, start: int) -> list[tuple[Record, float]]:
        out = []
        for n in range(start, start + count):
            tenant = tenants[n % 20]
            flow = f"{tenant}-f{(n // 20) % 5}"
            user = f"{tenant}-u{(n // 20) % 2}"
            amounts = {"messages": 1 + n % 7, "bytes": 100 + n % 300, "cpu_seconds": 0.01}
            out.append(
                (Record(ledger.subjects_of(tenant, user, flow), amounts), clock.now() + n / 4)
            )
        return out

    ledger.record_many(redis, events(20_000, 0), ring_windows=ring_windows)
    keys_at_20k, bytes_at_20k = _ledger_footprint(redis)
    ledger.record_many(redis, events(80_000, 20_000), ring_windows=ring_windows)
    keys_at_100k, bytes_at_100k = _ledger_footprint(redis)

    rings = 20 * len(ring_windows["tenant"]) + 40 * len(ring_windows["user"])
    rings += 100 * len(ring_windows["flow"])
    assert keys_at_100k == keys_at_20k == rings + 1  # + the active-subject index
    assert bytes_at_100k <= bytes_at_20k * 1.10
    assert bytes_at_100k / keys_at_100k < 4096  # every ring stays a small hash
    print(f"\nledger after 100k events: {keys_at_100k} keys, {bytes_at_100k} bytes")
