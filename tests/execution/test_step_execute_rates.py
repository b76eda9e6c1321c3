"""Fair message rates: over the rate a message waits for a later tick; nothing is dropped."""

from __future__ import annotations

from typing import cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis

from shared import keys
from shared.clock import FakeClock
from shared.execution import step_rates
from shared.handlers.step_execute import SPEC as STEP_EXECUTE
from shared.handlers.step_execute import StepExecuteServices
from tests.support.flows import TENANT, USER, fast_policy, flow_document
from tests.support.function import FunctionHarness


def flood(harness: FunctionHarness[StepExecuteServices], flow_id: str, outputs: int) -> None:
    """Step a of `flow_id` emits `outputs` messages for step b."""
    harness.admit(flow_id, f"run-{flow_id}")
    (start,) = harness.messages(flow_id, "a")
    for seq in range(outputs):
        harness.handle(harness.result(start, {"n": seq}, seq=seq, final=seq == outputs - 1))


def test_messages_over_the_tenant_rate_are_delayed_and_none_is_lost(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    harness = FunctionHarness(
        STEP_EXECUTE, redis, clock, base_env, policy=fast_policy(messages_per_second=5)
    )
    harness.store_flow(flow_document("busy", ["a", "b"], [("a", "b")]))
    flood(harness, "busy", 50)

    published = [m.data["n"] for m in harness.messages("busy", "b")]
    assert len(published) <= 5  # one second's burst; the rest waits
    for _ in range(15):
        clock.advance(1)
        harness.tick()
        batch = [m.data["n"] for m in harness.messages("busy", "b")]
        assert len(batch) <= 5 + 1  # never faster than the rate
        published += batch
    assert sorted(published) == list(range(50))  # count in = count out, each once
    assert redis.zcard(keys.step_due()) == 0


def test_a_throttled_tenant_gets_its_rate_times_the_throttle_factor(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    harness = FunctionHarness(
        STEP_EXECUTE, redis, clock, base_env, policy=fast_policy(messages_per_second=8)
    )
    harness.store_flow(flow_document("busy", ["a", "b"], [("a", "b")]))
    redis.hset(keys.penalty("tenant", TENANT), "step", "throttle")  # factor 0.25: 2/s
    flood(harness, "busy", 20)
    assert len(harness.messages("busy", "b")) <= 2
    clock.advance(1)
    harness.tick()
    assert len(harness.messages("busy", "b")) == 2


def test_a_throttled_flow_slows_alone(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    harness = FunctionHarness(
        STEP_EXECUTE, redis, clock, base_env, policy=fast_policy(messages_per_second=100)
    )
    for flow_id in ("noisy", "quiet"):
        harness.store_flow(flow_document(flow_id, ["a", "b"], [("a", "b")]))
    redis.hset(keys.penalty("flow", "noisy"), "step", "throttle")  # noisy: 25/s
    flood(harness, "noisy", 40)
    flood(harness, "quiet", 40)
    assert len(harness.messages("noisy", "b")) <= 25
    assert len(harness.messages("quiet", "b")) == 40  # the tenant's 100/s still has room


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    rate=st.sampled_from([1.0, 3.0, 10.0]),
    arrivals=st.lists(st.integers(min_value=0, max_value=12), min_size=1, max_size=8),
    step=st.sampled_from([0.25, 0.5, 1.0]),
)
def test_claims_never_exceed_the_bucket_and_every_message_is_claimed_once(
    redis: Redis, rate: float, arrivals: list[int], step: float
) -> None:
    """Messages arrive in bursts; claimed never exceed burst + rate * elapsed; none lost."""
    from shared.model.policy import Policy, TenantLimits

    redis.flushall()
    policy = Policy(defaults=TenantLimits(messages_per_second=rate))
    now = 1000.0
    claimed: list[str] = []
    waiting: list[str] = []
    for burst_index, count in enumerate(arrivals):
        for i in range(count):
            message_id = f"m{burst_index}-{i}"
            redis.zadd(keys.step_due(), {message_id: now})
            waiting.append(message_id)
        claimed += _claim_due(redis, policy, now)
        now += step
    start = 1000.0
    while len(claimed) < len(waiting) and now < start + 1000:
        claimed += _claim_due(redis, policy, now)
        now += step
        assert len(claimed) <= max(rate, 1.0) + rate * (now - start) + 1e-6
    assert sorted(claimed) == sorted(waiting)


def _claim_due(redis: Redis, policy: object, now: float) -> list[str]:
    due_ids = cast(list[bytes], redis.zrangebyscore(keys.step_due(), "-inf", now))
    ids = [i.decode() for i in due_ids]
    due = [step_rates.DueMessage(i, TENANT, USER, "flow") for i in ids]
    result = step_rates.claim(redis, policy, due, now=now, lease_seconds=1e9)  # type: ignore[arg-type]
    redis.zrem(keys.step_due(), *result) if result else None
    return result
