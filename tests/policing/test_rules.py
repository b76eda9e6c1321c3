"""Rules against the real ledger: each fires exactly at its limit and above, never below."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis import Redis

from shared.model.policy import Policy, Rule, TenantLimits
from shared.policing import ledger, rules
from shared.policing.ledger import Record, SubjectRef

NOW = 1_767_225_600.0
POLICY = Policy()  # the rules of DESIGN §8


def feed(
    redis: Redis, amounts: dict[str, float], *, tenant: str = "acme", policy: Policy = POLICY
) -> None:
    subjects = ledger.subjects_of(tenant, "u1", "f1")
    ledger.record(
        redis, Record(subjects, amounts), now=NOW, ring_windows=ledger.level_windows(policy)
    )


def fired(redis: Redis, *, tenant: str = "acme", policy: Policy = POLICY) -> set[tuple[str, str]]:
    subjects = ledger.subjects_of(tenant, "u1", "f1")
    return {
        (v.rule.name, v.subject.level) for v in rules.evaluate(redis, policy, subjects, now=NOW)
    }


# (rule, amounts below, amounts exactly at the limit, amounts just above)
TABLE = [
    (
        "long-runs",
        "tenant",
        {"run_seconds": 35_999},
        {"run_seconds": 36_000},
        {"run_seconds": 36_000.5},
    ),
    ("chatty-flow", "flow", {"messages": 5_999}, {"messages": 6_000}, {"messages": 6_001}),
    ("churn", "tenant", {"deploys": 29}, {"deploys": 30}, {"deploys": 31}),
    (
        "error-storm",
        "flow",
        {"ended": 40, "errors": 19},
        {"ended": 40, "errors": 20},  # ratio 0.5 exactly
        {"ended": 40, "errors": 21},
    ),
]


@pytest.mark.parametrize(
    ("rule", "level", "below", "at", "above"), TABLE, ids=[row[0] for row in TABLE]
)
@pytest.mark.parametrize("side", ["below", "at", "above"])
def test_a_rule_fires_at_its_limit_and_not_below(
    redis: Redis,
    rule: str,
    level: str,
    below: dict[str, float],
    at: dict[str, float],
    above: dict[str, float],
    side: str,
) -> None:
    feed(redis, {"below": below, "at": at, "above": above}[side])
    assert ((rule, level) in fired(redis)) == (side != "below")


@pytest.mark.parametrize(
    ("ended", "errors", "fires"),
    [
        (19, 19, False),
        (20, 20, True),
        (20, 10, True),
        (20, 9, False),
        (25, 13, True),
        (0, 0, False),
    ],
    ids=[
        "all failed but fewer than min_runs: not yet",
        "min_runs reached, all failed: fires",
        "exactly half failed: at the limit, fires",
        "just under half failed: below the limit",
        "more than half failed: fires",
        "no runs: nothing to judge",
    ],
)
def test_error_ratio_waits_for_min_runs(redis: Redis, ended: int, errors: int, fires: bool) -> None:
    feed(redis, {"ended": ended, "errors": errors})
    assert (("error-storm", "flow") in fired(redis)) == fires


def test_a_rule_judges_only_subjects_of_its_level(redis: Redis) -> None:
    feed(redis, {"messages": 10_000})
    assert fired(redis) == {("chatty-flow", "flow")}  # not the tenant, not the user


def test_a_tenant_override_replaces_the_global_rule_for_that_tenant_only(redis: Redis) -> None:
    strict = Rule("chatty-flow", "messages", "flow", "1m", 100)
    policy = Policy(tenants={"strict": TenantLimits(rules=(strict,))})
    feed(redis, {"messages": 101}, tenant="strict", policy=policy)
    feed(redis, {"messages": 101}, tenant="acme", policy=policy)
    assert fired(redis, tenant="strict", policy=policy) == {("chatty-flow", "flow")}
    assert fired(redis, tenant="acme", policy=policy) == set()


def test_a_tenant_may_add_rules_of_its_own(redis: Redis) -> None:
    extra = Rule("many-runs", "runs", "user", "5m", 3)
    policy = Policy(tenants={"acme": TenantLimits(rules=(extra,))})
    feed(redis, {"runs": 4}, policy=policy)
    assert ("many-runs", "user") in fired(redis, policy=policy)


def test_the_worst_violation_comes_first(redis: Redis) -> None:
    feed(redis, {"messages": 6_001, "ended": 20, "errors": 20})
    found = rules.evaluate(redis, POLICY, ledger.subjects_of("acme", "u1", "f1"), now=NOW)
    assert [v.rule.name for v in found] == ["error-storm", "chatty-flow"]  # 2.0x before 1.0002x
    assert found[0].evidence().limit == 0.5 and found[0].evidence().window == "15m"


@given(
    limit=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    measured=st.floats(min_value=0, max_value=2e6, allow_nan=False),
)
def test_violation_means_reaching_the_limit(limit: float, measured: float) -> None:
    rule = Rule("r", "messages", "flow", "1m", limit)
    expected = measured > 0 and measured >= limit
    assert rules.violates(rule, rules.measure(rule, {"messages": measured})) == expected


def test_no_rules_no_reads(redis: Redis) -> None:
    policy = Policy(rules=())
    assert rules.evaluate(redis, policy, [SubjectRef("flow", "f1", "acme")], now=NOW) == []
