"""Properties of fair admission (issue 4 §6), on the real Redis with the injected clock:
never more running than slots, no waiting tenant starves, shares converge to weights."""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis

from shared import keys
from shared.admission import queue as admission
from shared.clock import FakeClock
from shared.errors import OverCapacity
from tests.support.admission import Admission, penalize
from tests.support.flows import policy

PROPERTY = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TENANTS = ["t0", "t1", "t2", "t3"]

operation = st.one_of(
    st.tuples(st.just("submit"), st.sampled_from(TENANTS), st.integers(0, 2), st.integers(0, 1)),
    st.tuples(st.just("release"), st.integers(0, 50)),
    st.tuples(st.just("advance"), st.integers(1, 90)),
    st.tuples(st.just("dispatch")),
    st.tuples(st.just("penalize"), st.sampled_from(TENANTS), st.sampled_from([None, "suspend"])),
)


@given(
    slots=st.integers(1, 6),
    cap=st.integers(1, 4),
    rate=st.integers(1, 30),
    ops=st.lists(operation, min_size=20, max_size=80),
)
@PROPERTY
def test_never_more_running_than_slots_or_caps(
    redis: Redis, slots: int, cap: int, rate: int, ops: list[tuple[object, ...]]
) -> None:
    redis.flushall()
    clock = FakeClock()
    adm = Admission(
        redis,
        clock,
        policy(
            slots=slots,
            defaults={
                "max_concurrent_runs": cap,
                "start_rate_per_minute": rate,
                "max_waiting_runs": 10,
            },
        ),
    )
    adm.deploy(*[f"{t}-f{n}" for t in TENANTS for n in range(3)])
    for op in ops:
        if op[0] == "submit":  # a flow belongs to one tenant
            with contextlib.suppress(OverCapacity):
                adm.submit(str(op[1]), f"{op[1]}-f{op[2]}", f"u{op[3]}")
        elif op[0] == "release":
            running = sorted(adm.running())
            if running:
                adm.release(running[int(str(op[1])) % len(running)])
        elif op[0] == "advance":
            clock.advance(float(str(op[1])))
        elif op[0] == "dispatch":
            adm.dispatch()
        else:
            penalize(redis, "tenant", str(op[1]), op[2] if op[2] is None else str(op[2]))
        counts = admission.counts(redis)
        admitted = adm.running()
        assert counts.running == len(admitted) <= slots
        per_tenant = Counter(str(run["t"]) for run in admitted.values())
        assert counts.running_by_tenant == dict(per_tenant)
        assert all(n <= cap for n in per_tenant.values())
        assert sum(counts.waiting_by_tenant.values()) == redis.hlen(keys.waiting_runs())


@given(weights=st.lists(st.integers(1, 5), min_size=2, max_size=4), slots=st.integers(1, 3))
@PROPERTY
def test_no_waiting_tenant_starves(redis: Redis, weights: list[int], slots: int) -> None:
    """Between two admissions of a backlogged tenant i, another tenant j gets at most
    ceil(w_j / w_i) + 1 admissions (start-time fair queuing's bound). Counted in runs, so in
    cost mode count: by usage the same bound holds in slot-seconds (test_fair_usage.py)."""
    redis.flushall()
    clock = FakeClock()
    names = [f"t{i}" for i in range(len(weights))]
    weight = dict(zip(names, weights, strict=True))
    adm = Admission(
        redis,
        clock,
        policy(
            slots=slots,
            tenants={n: {"weight": w} for n, w in weight.items()},
            fairness={"cost": "count"},
        ),
    )
    adm.deploy(*[f"f-{n}" for n in names])
    for round_ in range(12):
        for name in names:
            adm.submit(name, f"f-{name}")
        if round_ % 2:
            for run_id in sorted(adm.running())[:slots]:
                adm.release(run_id)
    for _ in range(60):
        running = sorted(adm.running())
        if not running:
            break
        adm.release(running[0])
    order = [str(d["tenant"]) for d in adm.admitted_order()]
    for i in names:
        positions = [p for p, tenant in enumerate(order) if tenant == i]
        for start, end in itertools.pairwise(positions):
            between = Counter(order[start + 1 : end])
            for j, count in between.items():
                assert count <= -(-weight[j] // weight[i]) + 1 + slots, (i, j, order)


@given(weights=st.lists(st.integers(1, 4), min_size=2, max_size=4))
@settings(PROPERTY, max_examples=8)
def test_shares_converge_to_weights(redis: Redis, weights: list[int]) -> None:
    """Runs of no length: counted in runs (cost mode count; by usage: test_fair_usage.py)."""
    redis.flushall()
    clock = FakeClock()
    names = [f"t{i}" for i in range(len(weights))]
    adm = Admission(
        redis,
        clock,
        policy(
            slots=1,
            tenants={n: {"weight": w} for n, w in zip(names, weights, strict=True)},
            fairness={"cost": "count"},
        ),
    )
    adm.deploy("blocker-flow", *[f"f-{n}" for n in names])
    adm.submit("blocker", "blocker-flow")
    total = 12 * sum(weights)
    for name in names:
        for _ in range(total):
            adm.submit(name, f"f-{name}")
    for _ in range(total):
        adm.release(sorted(adm.running())[0])
    served = Counter(str(d["tenant"]) for d in adm.admitted_order()[1:])
    for name, w in zip(names, weights, strict=True):
        fair = total * w / sum(weights)
        assert abs(served[name] - fair) <= 2, (served, weights)


@given(flow_suspended=st.booleans(), user_suspended=st.booleans())
@PROPERTY
def test_a_suspension_below_the_tenant_does_not_block_others(
    redis: Redis, flow_suspended: bool, user_suspended: bool
) -> None:
    redis.flushall()
    adm = Admission(redis, FakeClock(), policy(slots=1))
    adm.deploy("blocker-flow", "bad", "good")
    adm.submit("blocker", "blocker-flow")
    adm.submit("t", "bad", "a-mallory")  # first on a tie of start tags
    adm.submit("t", "good", "z-alice")
    penalize(redis, "flow", "bad", "suspend" if flow_suspended else None, tenant="t")
    penalize(redis, "user", "a-mallory", "suspend" if user_suspended else None, tenant="t")
    adm.release(sorted(adm.running())[0])
    [admitted] = adm.admitted_order()[1:]
    expected = "good" if (flow_suspended or user_suspended) else "bad"
    assert admitted["flowId"] == expected
