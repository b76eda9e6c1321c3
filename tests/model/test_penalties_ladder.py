"""Graduated penalties on a real Redis with an injected clock: escalate, hold, decay, lift."""

from __future__ import annotations

import pytest
from redis import Redis

from shared import keys
from shared.clock import FakeClock
from shared.events import OutgoingEvent
from shared.events.payloads import PenaltyChanged, PolicyViolation
from shared.model import audit, penalties
from shared.model.policy import Penalties

pytestmark = pytest.mark.redis_cluster  # also on a real 3-master Redis Cluster

PEN = Penalties(cooldown="5m", max_cooldown="1h", decay_after="30m")
EVIDENCE = penalties.Evidence("chatty-flow", 6001, 6000, "1m", 60)
SOURCE = "/component-orchestrator/policy-check"


def escalate(
    redis: Redis,
    clock: FakeClock,
    subject: str = "noisy",
    level: str = "tenant",
    evidence: penalties.Evidence = EVIDENCE,
    pen: Penalties = PEN,
) -> penalties.Decision:
    return penalties.escalate(
        redis,
        pen,
        level=level,
        subject_id=subject,
        tenant="noisy" if level != "tenant" else subject,
        evidence=evidence,
        now=clock.now(),
        source=SOURCE,
    )


def decay(
    redis: Redis, clock: FakeClock, subject: str = "noisy", level: str = "tenant"
) -> penalties.Decision:
    return penalties.decay(
        redis, PEN, level=level, subject_id=subject, now=clock.now(), source=SOURCE
    )


def emitted(redis: Redis) -> list[OutgoingEvent]:
    return [OutgoingEvent.from_json(raw) for raw in redis.lrange(keys.outbox(keys.POLICY), 0, -1)]


def short_types(events: list[OutgoingEvent]) -> list[str]:
    return [e.type.removeprefix("org.openintegrationhub.") for e in events]


def test_the_ladder_climbs_on_fresh_evidence_each_step_holding_a_doubling_cooldown(
    redis: Redis, clock: FakeClock
) -> None:
    t0 = clock.now()
    expected = [  # (seconds after t0, decision, step, cooldown the step holds for)
        (0, "escalated", "warn", 300),
        (10, "held", "warn", None),  # the same misbehaviour is not punished twice at once
        (300, "escalated", "throttle", 600),
        (599, "held", "throttle", None),  # each step gets one base cooldown to work
        (600, "escalated", "deprioritize", 1200),
        (900, "escalated", "suspend", 2400),
        (1200, "escalated", "suspend", 3600),  # top of the ladder: again, capped at max_cooldown
    ]
    for offset, action, step, cooldown in expected:
        clock.set(t0 + offset)
        decision = escalate(redis, clock)
        assert (decision.action, decision.step) == (action, step), offset
        if cooldown is not None:
            assert decision.until == clock.now() + cooldown
        assert penalties.current_level(redis, "tenant", "noisy") == step
    assert short_types(emitted(redis)) == [
        "policy.violation",
        "policy.violation",
        "tenant.throttled",
        "policy.violation",
        "tenant.deprioritized",
        "policy.violation",
        "tenant.suspended",
        "policy.violation",
        "tenant.suspended",
    ]
    events = emitted(redis)
    assert len({e.id for e in events}) == len(events)
    violation = PolicyViolation.parse(events[0].data)
    assert (violation.subject.level, violation.subject.id, violation.rule) == (
        "tenant",
        "noisy",
        "chatty-flow",
    )
    assert (violation.measured, violation.limit, violation.window) == (6001, 6000, "1m")
    suspended = PenaltyChanged.parse(events[-1].data)
    assert suspended.penalty == "suspend" and suspended.until == t0 + 1200 + 3600
    clock.set(t0 + 1200 + 3599)
    assert decay(redis, clock).action == "held"  # a step holds for its whole cooldown
    assert all(e.extensions["tenant"] == "noisy" for e in events)


@pytest.mark.parametrize(
    ("step", "rate", "weight", "suspended"),
    [
        ("warn", 1.0, 1.0, False),
        ("throttle", 0.25, 1.0, False),
        ("deprioritize", 0.25, 0.25, False),
        ("suspend", 0.25, 0.25, True),
    ],
)
def test_each_step_is_what_the_readers_see(
    redis: Redis, clock: FakeClock, step: str, rate: float, weight: float, suspended: bool
) -> None:
    while penalties.current_level(redis, "tenant", "noisy") != step:
        escalate(redis, clock)
        clock.advance(3600)
    factors = penalties.factors(redis, PEN, tenant="noisy", user="u1", flow="f1")
    assert (factors.rate, factors.weight, factors.suspended) == (rate, weight, suspended)
    assert penalties.is_suspended(redis, tenant="noisy") == suspended


@pytest.mark.parametrize(
    ("repeats", "cooldown"),
    [(0, 300), (1, 600), (2, 1200), (3, 2400), (4, 3600), (5, 3600), (40, 3600)],
    ids=lambda v: str(v),
)
def test_cooldown_doubles_and_is_capped(repeats: int, cooldown: int) -> None:
    assert penalties.cooldown_for(PEN, repeats) == cooldown


def test_the_same_evidence_is_not_punished_twice(redis: Redis, clock: FakeClock) -> None:
    """A 15-minute window still holds the data of the first violation after 5 minutes: the
    next step needs a violation measured on data the first did not see."""
    wide = penalties.Evidence("long-runs", 40_000, 36_000, "15m", 900)
    t0 = clock.now()
    assert escalate(redis, clock, evidence=wide).step == "warn"
    for offset in (300, 899):
        clock.set(t0 + offset)
        assert escalate(redis, clock, evidence=wide).action == "held"
    clock.set(t0 + 900)
    assert escalate(redis, clock, evidence=wide).step == "throttle"


def _to_suspend(redis: Redis, clock: FakeClock) -> float:
    for _ in range(4):
        escalate(redis, clock)
        clock.advance(penalties.cooldown_for(PEN, 3))  # long enough for every step
    clock.advance(-penalties.cooldown_for(PEN, 3))
    assert penalties.current_level(redis, "tenant", "noisy") == "suspend"
    return clock.now()


def test_clean_behaviour_steps_down_one_level_at_a_time(redis: Redis, clock: FakeClock) -> None:
    suspended_at = _to_suspend(redis, clock)
    state = penalties.state(redis, "tenant", "noisy")
    assert state is not None and state.until == suspended_at + 2400
    redis.delete(keys.outbox(keys.POLICY))

    clock.set(state.until - 1)
    assert decay(redis, clock).action == "held"  # cooldown first
    steps = []
    clock.set(state.until)
    for _ in range(4):
        decision = decay(redis, clock)
        steps.append(decision.step)
        clock.advance(1799)
        if decision.step is not None:  # decay_after (30m) of clean behaviour per step
            assert decay(redis, clock).action == "held"
        clock.advance(1)
    assert steps == ["deprioritize", "throttle", "warn", None]
    assert penalties.current_level(redis, "tenant", "noisy") is None
    assert redis.zcard(keys.penalty_index()) == 0
    events = emitted(redis)
    assert short_types(events) == [
        "tenant.deprioritized",
        "tenant.throttled",
        "tenant.restored",
        "tenant.restored",
    ]
    assert [PenaltyChanged.parse(e.data).penalty for e in events] == [
        "deprioritize",
        "throttle",
        "warn",
        "none",
    ]
    assert penalties.factors(redis, PEN, tenant="noisy") == penalties.Factors()


def test_a_violation_during_the_penalty_delays_the_decay(redis: Redis, clock: FakeClock) -> None:
    escalate(redis, clock)  # warn, cooldown 5m
    clock.advance(200)
    assert escalate(redis, clock).action == "held"  # still violating: noted, not punished again
    violation_at = clock.now()
    clock.set(violation_at + 1799)
    assert decay(redis, clock).action == "held"
    clock.set(violation_at + 1800)
    assert decay(redis, clock).action == "restored"


def test_a_quick_relapse_keeps_doubling_a_long_clean_spell_starts_over(
    redis: Redis, clock: FakeClock
) -> None:
    escalate(redis, clock)
    clock.advance(1800)
    assert decay(redis, clock).action == "restored"
    clock.advance(60)  # relapse soon after: the doubling remembers
    relapse = escalate(redis, clock)
    assert relapse.step == "warn" and relapse.until == clock.now() + 600
    clock.advance(1800)
    decay(redis, clock)
    clock.advance(3600)  # clean for max_cooldown: forgotten
    fresh = escalate(redis, clock)
    assert fresh.until == clock.now() + 300


def test_an_operator_lift_is_immediate_audited_and_announced(
    redis: Redis, clock: FakeClock
) -> None:
    _to_suspend(redis, clock)
    redis.delete(keys.outbox(keys.POLICY))
    decision = penalties.lift(
        redis,
        PEN,
        level="tenant",
        subject_id="noisy",
        now=clock.now(),
        actor="operator:alice",
        source=SOURCE,
    )
    assert decision.action == "lifted"
    assert penalties.current_level(redis, "tenant", "noisy") is None
    assert not penalties.is_suspended(redis, tenant="noisy")
    [event] = emitted(redis)
    assert short_types([event]) == ["tenant.restored"]
    assert PenaltyChanged.parse(event.data).penalty == "none"
    last = audit.read(redis, count=1)[0]
    assert (last.get("action"), last.get("actor"), last.get("previous")) == (
        "lift",
        "operator:alice",
        "suspend",
    )
    clock.advance(3600)
    assert escalate(redis, clock).until == clock.now() + 300  # the doubling starts over
    again = penalties.lift(
        redis,
        PEN,
        level="tenant",
        subject_id="nobody",
        now=clock.now(),
        actor="operator:alice",
        source=SOURCE,
    )
    assert again.action == "none"


def test_every_decision_is_audited_with_its_evidence(redis: Redis, clock: FakeClock) -> None:
    escalate(redis, clock)
    clock.advance(300)
    escalate(redis, clock)
    entries = audit.read(redis, count=10)
    assert [(e.get("action"), e.get("previous"), e.get("penalty")) for e in entries] == [
        ("escalate", "", "warn"),
        ("escalate", "warn", "throttle"),
    ]
    first = entries[0]
    assert first.get("rule") == "chatty-flow" and first.get("window") == "1m"
    assert (float(first.get("measured")), float(first.get("limit"))) == (6001, 6000)
    assert float(first.get("until")) == entries[0].time + 300


def test_punishing_a_noisy_tenant_changes_nobody_else(redis: Redis, clock: FakeClock) -> None:
    before = {t: penalties.factors(redis, PEN, tenant=t, user="u", flow="f") for t in ("a", "b")}
    _to_suspend(redis, clock)
    after = {t: penalties.factors(redis, PEN, tenant=t, user="u", flow="f") for t in ("a", "b")}
    assert before == after == {"a": penalties.Factors(), "b": penalties.Factors()}
    written = {k.decode() for k in redis.scan_iter(match="co:{pol}:penalty:*")}
    assert written == {keys.penalty("tenant", "noisy")}


@pytest.mark.parametrize("level", ["flow", "user"])
def test_a_flow_or_user_suspension_stops_only_its_runs(
    redis: Redis, clock: FakeClock, level: str
) -> None:
    for _ in range(4):
        escalate(redis, clock, subject="bad", level=level)
        clock.advance(3600)
    bad = {"flow": "bad"} if level == "flow" else {"user": "bad"}
    assert penalties.is_suspended(redis, tenant="noisy", **bad)
    assert penalties.factors(redis, PEN, tenant="noisy", **bad).suspended
    assert not penalties.is_suspended(redis, tenant="noisy", user="good", flow="good")
    events = emitted(redis)
    if level == "flow":
        assert all(e.extensions.get("flowid") == "bad" for e in events)


def test_a_short_ladder_goes_from_warn_straight_to_suspend(redis: Redis, clock: FakeClock) -> None:
    short = Penalties(ladder=("warn", "suspend"), cooldown="5m", max_cooldown="1h")
    assert escalate(redis, clock, pen=short).step == "warn"
    clock.advance(300)
    assert escalate(redis, clock, pen=short).step == "suspend"


def test_the_audit_stream_stays_capped(
    redis: Redis, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit, "MAX_ENTRIES", 200)
    pipe = redis.pipeline(transaction=False)
    for n in range(1_000):
        audit.append(pipe, {"time": n, "action": "timeout", "subject": f"f{n}"})
    pipe.execute()
    for n in range(50):  # the penalty scripts trim it too
        escalate(redis, clock, subject=f"t{n}")
    # MAXLEN ~ trims whole stream nodes (100 entries each): never more than one node over
    assert 200 <= audit.length(redis) <= 300
    assert audit.read(redis, count=1)[0].get("subject") == "t49"  # the newest are kept
