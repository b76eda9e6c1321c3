"""Fair by usage (docs/architecture.md, fair admission): with every tenant backlogged, shares
of slot-seconds follow weights whatever the run lengths; estimates are corrected when a run
ends; idle leads fade; the aging bound holds; the previous release's stored forms still work.
All on the real scripts and Redis with the injected clock (tests/support/fair_sim.py)."""

from __future__ import annotations

import json
import random
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from redis import Redis

from shared import keys
from shared.admission import queue as admission
from shared.model.policy import Policy
from shared.policing import ledger, network
from tests.support.admission import Admission, penalize
from tests.support.fair_sim import Trial, flow_of, jain, share_over_weight
from tests.support.flows import policy

PROPERTY = settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ROOMY = {"max_concurrent_runs": 1000, "start_rate_per_minute": 1e6, "max_waiting_runs": 1000}


def usage_policy(slots: int, weights: dict[str, float], **fairness: Any) -> Policy:
    return policy(
        slots=slots,
        defaults=ROOMY,
        tenants={t: {"weight": w} for t, w in weights.items()},
        fairness={"cost": "slot_seconds", **fairness},
    )


def jittered(base: dict[str, float], seed: int) -> Any:
    """Each run lasts its tenant's base length x a factor in [0.5, 1.5] (seeded)."""
    rng = random.Random(seed)
    return lambda tenant, _n: base[tenant] * rng.uniform(0.5, 1.5)


@given(
    slots=st.integers(3, 5),
    tenants=st.lists(
        st.tuples(st.integers(1, 3), st.sampled_from([0.5, 1.0, 1.5, 2.0])),
        min_size=2,
        max_size=3,
    ),
    seed=st.integers(0, 1000),
)
@PROPERTY
def test_backlogged_tenants_hold_slot_seconds_in_proportion_to_weight(
    redis: Redis, slots: int, tenants: list[tuple[int, float]], seed: int
) -> None:
    redis.flushall()
    weights = {f"t{i}": float(w) for i, (w, _) in enumerate(tenants)}
    base = {f"t{i}": d for i, (_, d) in enumerate(tenants)}
    trial = Trial(
        redis, usage_policy(slots, weights), jittered(base, seed), dict.fromkeys(weights, 2)
    ).run(45)
    shares = trial.shares(10, 45)
    total = sum(weights.values())
    for tenant, weight in weights.items():
        assert shares[tenant] == pytest.approx(weight / total, rel=0.10), (shares, weights, base)


LONG_RUN = 10_000.0  # the long tenant's first run: still running when the trial ends


@given(
    slots=st.integers(4, 6),
    long_weight=st.sampled_from([1.0, 2.0, 3.0]),
    others=st.lists(
        st.tuples(st.sampled_from([1.0, 2.0]), st.sampled_from([2.0, 3.0, 5.0])),
        min_size=1,
        max_size=2,
    ),
    long_base=st.sampled_from([2.0, 3.0, 5.0]),
    seed=st.integers(0, 1000),
)
@PROPERTY
def test_a_tenant_with_a_very_long_run_is_held_to_its_share_while_it_runs(
    redis: Redis,
    slots: int,
    long_weight: float,
    others: list[tuple[float, float]],
    long_base: float,
    seed: int,
) -> None:
    """Charged as it runs (at every tick), not only when it ends: the tenant whose first run
    holds a slot for the whole trial gets that much less of the other slots, so its share of
    slot-seconds is its weight share while that run is still running."""
    weights = {"long": long_weight, **{f"t{i}": w for i, (w, _) in enumerate(others)}}
    fair = long_weight / sum(weights.values())
    assume(fair * slots >= 1.5)  # the one long run alone stays within its share
    redis.flushall()
    base = {"long": long_base, **{f"t{i}": d for i, (_, d) in enumerate(others)}}
    rng = random.Random(seed)

    def duration(tenant: str, n: int) -> float:
        return LONG_RUN if (tenant, n) == ("long", 0) else base[tenant] * rng.uniform(0.5, 1.5)

    trial = Trial(
        redis, usage_policy(slots, weights), duration, dict.fromkeys(weights, 2), tick_every=5.0
    ).run(240)
    assert any(r.ends > trial.clock.now() for r in trial.ran if r.tenant == "long")
    assert trial.shares(30, 240)["long"] == pytest.approx(fair, rel=0.10), (weights, base)


def test_charged_only_when_it_ends_the_long_run_tenant_gets_more(redis: Redis) -> None:
    """The trial above without ticks (nothing charges the long run before it ends): the tenant
    holds the long run's slot on top of half the others (so the property can fail)."""
    weights = {"long": 1.0, "t0": 1.0}

    def duration(tenant: str, n: int) -> float:
        return LONG_RUN if (tenant, n) == ("long", 0) else 3.0

    trial = Trial(redis, usage_policy(4, weights), duration, dict.fromkeys(weights, 2)).run(240)
    assert trial.shares(30, 240)["long"] > 0.5 * 1.15


@pytest.mark.parametrize("weight", [1.0, 4.0])
def test_a_running_run_is_charged_at_ticks_and_settled_for_the_rest(
    redis: Redis, weight: float
) -> None:
    """Each tick adds the slot-seconds since the run's last charge (beyond its estimate) to its
    tenant's tag; the end adds only what is left: charged once in all, whatever the ticks."""
    clock = _clock()
    adm = Admission(redis, clock, usage_policy(2, {"a": weight}, half_life="10000d"))
    adm.deploy(flow_of("a"))
    adm.submit("a", flow_of("a"))  # admitted at once: nothing charged yet
    (run_id,) = adm.running()
    assert _tag(redis, "a") == 0
    # at most once per 10 s: not at 5 s (since admission), nor at 26 s (since the last charge);
    # never beyond the run's limit (3600 s; its slot is reclaimed at 3660 s)
    ticks = [(5.0, 0.0), (25.0, 25.0), (26.0, 25.0), (70.0, 70.0), (3620.0, 3600.0), (3640, 3600)]
    for elapsed, charged_up_to in ticks:
        clock.set(_clock().now() + elapsed)
        adm.dispatch()
        assert _tag(redis, "a") == pytest.approx(charged_up_to / weight, abs=1e-3), elapsed
    clock.set(_clock().now() + 3650.0)
    assert adm.release(run_id) == "released"
    assert _tag(redis, "a") == pytest.approx(3600.0 / weight, abs=1e-3)
    assert redis.zcard(keys.charged_through()) == 0


SKEW = {"long": 2.0, "short": 0.5}  # the black-box trial: 4:1 run lengths, equal weights


@pytest.mark.parametrize(
    ("name", "durations", "backlog"),
    [
        ("4:1 duration skew", SKEW, {"long": 2, "short": 2}),
        (
            "30:1 flood",
            {"flood": 1.0, **{f"t{i}": 1.0 for i in range(9)}},
            {"flood": 30, **{f"t{i}": 1 for i in range(9)}},
        ),
    ],
)
def test_jain_and_worst_share_under_skew_and_flood(
    redis: Redis, name: str, durations: dict[str, float], backlog: dict[str, int]
) -> None:
    weights = dict.fromkeys(durations, 1.0)
    trial = Trial(redis, usage_policy(4, weights), jittered(durations, 7), backlog).run(60)
    ratios = share_over_weight(trial.shares(10, 60), weights)
    assert jain(list(ratios.values())) >= 0.95, ratios
    assert min(ratios.values()) >= 0.9, ratios


def test_count_mode_is_the_previous_behaviour_fair_in_runs_not_in_slot_seconds(
    redis: Redis,
) -> None:
    weights = dict.fromkeys(SKEW, 1.0)
    count = Trial(
        redis, usage_policy(4, weights, cost="count"), lambda t, _n: SKEW[t], dict.fromkeys(SKEW, 2)
    ).run(12)
    runs = {t: sum(1 for r in count.ran if r.tenant == t) for t in SKEW}
    assert abs(runs["long"] - runs["short"]) <= 1  # equal numbers of runs admitted
    assert count.shares(0, 12)["long"] > 0.75  # ... and the long one holds most of the slots


@given(
    slots=st.integers(2, 4),
    heavy=st.sampled_from([1.0, 2.0, 3.0]),
    light_weight=st.sampled_from([0.01, 0.05, 0.2]),
    every=st.sampled_from([7.0, 11.0, 13.0]),
    seed=st.integers(0, 1000),
)
@PROPERTY
def test_no_waiting_run_waits_past_the_aging_bound(
    redis: Redis, slots: int, heavy: float, light_weight: float, every: float, seed: int
) -> None:
    """A light, low-weight tenant's periodic runs (a cron flow) while heavy tenants flood: each
    waits at most the bound plus the longest run (the time until a slot frees). The bound is
    per backlogged tenant: none goes longer than it without a start."""
    redis.flushall()
    max_wait = 5.0
    weights = {"heavy0": 1.0, "heavy1": 1.0, "light": light_weight}
    durations = {"heavy0": heavy, "heavy1": heavy, "light": 0.5}
    trial = Trial(
        redis,
        usage_policy(slots, weights, max_wait=f"{max_wait}s"),
        jittered(durations, seed),
        {"heavy0": 20, "heavy1": 20},
        arrivals={"light": [every * n for n in range(1, 8)]},
    ).run(every * 8)
    longest = max(durations.values()) * 1.5
    assert max(trial.waits("light")) <= max_wait + longest + 1e-6, trial.waits("light")


def test_without_the_bound_the_light_tenant_waits_longer(redis: Redis) -> None:
    """The trial above is hard: with the bound out of reach, the light runs wait far longer
    (so the property can fail)."""
    weights = {"heavy0": 1.0, "heavy1": 1.0, "light": 0.01}
    trial = Trial(
        redis,
        usage_policy(2, weights, max_wait="1d"),
        lambda t, _n: 0.5 if t == "light" else 3.0,
        {"heavy0": 20, "heavy1": 20},
        arrivals={"light": [7.0 * n for n in range(1, 8)]},
    ).run(60)
    assert max(trial.waits("light")) > 5.0 + 4.5


def _heavy_with_a_light_flow(redis: Redis, max_wait: str, seed: int, every: float) -> Trial:
    """Tenant `heavy` (weight 0.2 of 2.2) takes slots with 1,000 s runs in the first seconds
    (before charging catches up: over its share, it never gets a turn in fair order again)
    and keeps more waiting; its flow `heavy/light` (a cron flow: a short run every `every` s)
    holds no slot while its run waits. The other two tenants take turns in what is left."""
    redis.flushall()
    weights = {"heavy": 0.2, "other0": 1.0, "other1": 1.0}
    durations = {"heavy": 1000.0, "heavy/light": 0.5, "other0": 3.0, "other1": 3.0}
    return Trial(
        redis,
        usage_policy(4, weights, max_wait=max_wait),
        jittered(durations, seed),
        {"heavy": 5, "other0": 20, "other1": 20},
        arrivals={"heavy/light": [every * n for n in range(1, 8)]},
        tick_every=5.0,
    ).run(every * 8)


@given(every=st.sampled_from([11.0, 13.0, 17.0]), seed=st.integers(0, 1000))
@PROPERTY
def test_a_light_flow_of_a_heavy_tenant_is_admitted_within_the_aging_bound(
    redis: Redis, every: float, seed: int
) -> None:
    """Aging per flow: a backlogged flow that holds no slot (and is light: one run at a time,
    further apart than the bound) waits at most the bound plus the time until its turn among
    those past the bound, oldest first (here the light flow and the two other tenants: three
    of the others' runs at most), whatever its tenant holds."""
    trial = _heavy_with_a_light_flow(redis, "5s", seed, every)
    assert any(r.tenant == "heavy" for r in trial.ran)  # the heavy tenant holds its slots
    waits = trial.waits("heavy/light")
    assert max(waits) <= 5.0 + 3 * 3.0 * 1.5 + 1e-6, waits


def test_without_the_bound_the_light_flow_of_the_heavy_tenant_waits_on(redis: Redis) -> None:
    """The trial above is hard: with the bound out of reach, the light flow waits as long as
    its tenant is ahead in fair order (so the property can fail)."""
    trial = _heavy_with_a_light_flow(redis, "1d", 7, 11.0)
    assert max(trial.waits("heavy/light")) > 30.0


def test_a_tenant_holding_slots_gets_no_aged_start(redis: Redis) -> None:
    """The bound guards against starvation, not around a share: the heavy tenant, whose long
    runs hold slots, is not served before fair order however long its other runs wait (it
    starts nothing after its first seconds in the trial above)."""
    trial = _heavy_with_a_light_flow(redis, "5s", 7, 11.0)
    assert [r for r in trial.ran if r.tenant == "heavy" and r.admitted > trial.start + 5] == []
    assert max(trial.waits("heavy")) > 30.0


def _tag(redis: Redis, tenant: str) -> float:
    """The tenant's start tag: in the rotation, or its idle finish tag (`finish@left`)."""
    score = redis.zscore(keys.fair_tenants(), tenant)
    if score is not None:
        return float(score)
    raw = redis.hget(keys.fair_clock(), f"t:{tenant}")
    return 0.0 if raw is None else float(cast(bytes, raw).decode().partition("@")[0])


@given(
    wrong=st.floats(0, 3000),
    actual=st.floats(0.1, 300),
    weight=st.sampled_from([0.5, 1.0, 3.0]),
)
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_a_wrong_estimate_is_corrected_when_its_run_ends(
    redis: Redis, wrong: float, actual: float, weight: float
) -> None:
    """Whatever the flow's estimate was, once its run ended the tenant is charged what the run
    held (its tag moved on by actual / weight), and the next estimate moved halfway there."""
    redis.flushall()
    adm = Admission(redis, _clock(), usage_policy(1, {"a": weight}, half_life="10000d"))
    adm.deploy(flow_of("a"), flow_of("b"))
    adm.submit("b", flow_of("b"))  # holds the one slot
    adm.submit("a", flow_of("a"))  # waits
    redis.hset(keys.run_costs(), flow_of("a"), wrong)
    adm.release(next(iter(adm.tokens)))  # b ends: a is admitted, charged min(wrong, limit)
    (run_a,) = [r for r in adm.running().values() if r["t"] == "a"]
    assert run_a["e"] == pytest.approx(max(0.001, min(wrong, 3600)))
    adm.clock.advance(actual)
    adm.release(run_a["id"])
    # (run records keep 14 digits: admission times to 1e-4 s; the idle lead decays a little
    # even with a half-life of 10000 days)
    assert _tag(redis, "a") == pytest.approx(actual / weight, abs=1e-3 + wrong / weight * 1e-6)
    mean = float(redis.hget(keys.run_costs(), flow_of("a")) or 0)
    assert mean == pytest.approx((wrong + actual) / 2, abs=1e-3)


def _clock() -> Any:
    from shared.clock import FakeClock

    return FakeClock(1_767_225_600.0)


@pytest.mark.parametrize("idle_half_lives", [0.0, 1.0, 2.0, 3.5])
def test_an_idle_tenants_lead_halves_every_half_life(redis: Redis, idle_half_lives: float) -> None:
    """Recent usage counts, old usage fades: a tenant that leaves 40 ahead of the virtual time
    comes back 40 x 2^-(idle / half-life) ahead; one behind comes back at the virtual time."""
    clock = _clock()
    adm = Admission(redis, clock, usage_policy(1, {"a": 1.0}, half_life="100s"))
    adm.deploy(flow_of("a"), flow_of("b"))
    adm.submit("b", flow_of("b"))  # b holds the slot, so a's run must wait (and join)
    redis.hset(keys.fair_clock(), mapping={"T": 10.0, "t:a": f"50@{clock.now()}"})
    clock.advance(100 * idle_half_lives)
    adm.submit("a", flow_of("a"))
    assert redis.zscore(keys.fair_tenants(), "a") == pytest.approx(10 + 40 * 2**-idle_half_lives)


def test_count_mode_keeps_the_lead(redis: Redis) -> None:
    clock = _clock()
    adm = Admission(redis, clock, usage_policy(1, {"a": 1.0}, cost="count", half_life="100s"))
    adm.deploy(flow_of("a"), flow_of("b"))
    adm.submit("b", flow_of("b"))
    redis.hset(keys.fair_clock(), mapping={"T": 10.0, "t:a": f"50@{clock.now()}"})
    clock.advance(1000)
    adm.submit("a", flow_of("a"))
    assert redis.zscore(keys.fair_tenants(), "a") == 50


def test_the_previous_releases_forms_still_work(redis: Redis) -> None:
    """Stored by the previous release: idle finish tags as plain numbers (read as they are:
    no decay) and admitted runs without `a`/`e` (released, charged nothing more)."""
    clock = _clock()
    adm = Admission(redis, clock, usage_policy(1, {"a": 1.0}, half_life="100s"))
    adm.deploy(flow_of("a"), flow_of("b"))
    old_run = {"id": "b-flow~old", "f": flow_of("b"), "t": "b", "u": "u", "c": "execute",
               "s": clock.now(), "k": 7, "l": 3600}  # fmt: skip
    redis.hset(keys.admitted_runs(), old_run["id"], json.dumps(old_run))
    redis.zadd(keys.run_deadlines(), {old_run["id"]: clock.now() + 3660})
    redis.hset(keys.admission_counts(), mapping={"*": 1, "t:b": 1})
    redis.hset(keys.fair_clock(), mapping={"T": 10.0, "t:a": "50", "t:b": "12.5"})
    clock.advance(1000)
    adm.submit("a", flow_of("a"))  # waits: the old run holds the slot
    assert redis.zscore(keys.fair_tenants(), "a") == 50  # the plain number, as it was
    adm.tokens[old_run["id"]] = 7
    assert adm.release(old_run["id"]) == "released"
    assert [r["t"] for r in adm.running().values()] == ["a"]
    assert redis.hget(keys.fair_clock(), "t:b") == b"12.5"  # nothing charged for the old run
    assert redis.hget(keys.admission_counts(), "f:b-flow") is None  # no running count below 0
    assert redis.hget(keys.run_costs(), flow_of("b")) is None


def test_penalty_factors_still_lower_a_tenants_share(redis: Redis) -> None:
    """A deprioritized tenant's weight is lowered on top of usage-based charging."""
    weights = {"a": 1.0, "b": 1.0}
    pol = usage_policy(4, weights)
    penalize(redis, "tenant", "a", "deprioritize")  # weight x 0.25
    trial = Trial(redis, pol, lambda t, _n: 1.0, dict.fromkeys(weights, 2)).run(40)
    factor = pol.penalties.deprioritize_factor
    assert trial.shares(10, 40)["a"] == pytest.approx(factor / (1 + factor), rel=0.1)


def test_dominant_mode_charges_the_dominant_share(redis: Redis) -> None:
    """Tenant `big` requests 4 CPUs per run on a 16-CPU, 8-slot cluster: its runs cost 2 slots'
    worth, so with equal weights it holds half the slot-seconds of `small`."""
    pol = policy(
        slots=8,
        defaults=ROOMY,
        tenants={"big": {"cpu": {"request": "4", "limit": "4"}}},
        fairness={"cost": "dominant", "capacity": {"cpu": "16", "memory": "64Gi"}},
    )
    assert admission.dominant_factor(pol, pol.tenant("big")) == pytest.approx(2.0)
    assert admission.dominant_factor(pol, pol.tenant("small")) == pytest.approx(1.0)
    trial = Trial(redis, pol, lambda t, _n: 1.0, {"big": 8, "small": 8}).run(40)
    shares = trial.shares(10, 40)
    assert shares["big"] == pytest.approx(1 / 3, rel=0.1)


def test_dominant_mode_counts_the_network_rate_usage_reports_carry(redis: Redis) -> None:
    """Tenant `chatty`'s usage reports carried 2.5 MiB per run-second (the ledger, as
    policy-check counts them) on a 10 MiB/s, 8-slot cluster: its runs' network share is a
    quarter, 2 slots' worth, so once policy-check's tick published the rate, `chatty` holds
    half the slot-seconds of `quiet` with equal weights."""
    pol = policy(
        slots=8,
        defaults=ROOMY,
        fairness={"cost": "dominant", "capacity": {"cpu": "64", "network": "10Mi"}},
    )
    clock = _clock()
    now = clock.now()
    report = {"net_bytes": 2.5 * 2**20 * 600, "run_seconds": 600.0}
    ring_windows = ledger.level_windows(pol)
    for tenant, amounts in (("chatty", report), ("quiet", {"run_seconds": 600.0})):
        subjects = ledger.subjects_of(tenant, "u", flow_of(tenant))
        ledger.record(redis, ledger.Record(subjects, amounts), now=now, ring_windows=ring_windows)
    active = ledger.active_subjects(redis, since=now - 3600)
    assert network.publish(redis, pol, active, now=now) == 1  # `quiet` sent nothing
    assert admission.read_network_rates(redis, pol) == {"chatty": pytest.approx(2.5 * 2**20)}
    assert admission.dominant_factor(pol, pol.tenant("chatty"), 2.5 * 2**20) == pytest.approx(2)
    trial = Trial(redis, pol, lambda t, _n: 1.0, {"chatty": 8, "quiet": 8}, clock=clock).run(40)
    assert trial.shares(10, 40)["chatty"] == pytest.approx(1 / 3, rel=0.1)


def test_network_rates_are_published_in_dominant_mode_with_a_network_capacity_only(
    redis: Redis,
) -> None:
    subjects = ledger.subjects_of("chatty", "u", "f")
    ledger.record(
        redis,
        ledger.Record(subjects, {"net_bytes": 1000.0, "run_seconds": 10.0}),
        now=1000.0,
        ring_windows=ledger.level_windows(Policy()),
    )
    without = policy(fairness={"cost": "dominant", "capacity": {"cpu": "64"}})
    assert network.publish(redis, without, subjects, now=1000.0) == 0
    assert admission.read_network_rates(redis, without) == {}
    assert not redis.exists(keys.network_rates())
