"""Fair message rates (docs/architecture.md §5, step-execute): a token bucket per tenant and one
per flow.

A tenant's bucket fills at its `messages_per_second` times the rate factor of the tenant's
penalty; a flow's bucket at the same base rate times the factor of the flow's own penalty or
its first owner's (a user), so a throttled flow or user slows alone while the tenant's total
stays capped. A message over either rate is re-scheduled to when a token will be there: it
waits, it is never dropped. Buckets hold at most one second of tokens (small bursts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis import Redis

from shared import keys
from shared.model import penalties
from shared.model.policy import Policy
from shared.scripts import load_script
from shared.store import as_text

MIN_RATE = 0.001  # messages/s: a rate never reaches zero, so a message always comes due


@dataclass(frozen=True)
class DueMessage:
    """A message waiting to be published, with the subjects whose rates apply to it."""

    message_id: str
    tenant: str
    user: str
    flow: str


@dataclass(frozen=True)
class BucketRate:
    rate: float
    burst: float


def _bucket(rate: float) -> BucketRate:
    rate = max(rate, MIN_RATE)
    return BucketRate(rate=rate, burst=max(rate, 1.0))


def _throttled(steps: list[str | None]) -> bool:
    """The ladder is cumulative: throttle and every step above it lower the rates."""
    throttle = penalties.STEPS.index("throttle")
    return any(step in penalties.STEPS and penalties.STEPS.index(step) >= throttle
               for step in steps)  # fmt: skip


def bucket_rates(redis: Redis, policy: Policy, due: Sequence[DueMessage]) -> dict[str, BucketRate]:
    """The rate of every tenant and flow bucket the messages need, penalties read now
    (one round trip: penalty state changes at any time, policy-check writes it)."""
    subjects = sorted(
        {("tenant", m.tenant, "") for m in due}
        | {("user", m.user, m.tenant) for m in due if m.user}
        | {("flow", m.flow, m.tenant) for m in due}
    )
    steps = dict(zip(subjects, penalties.read_steps(redis, subjects), strict=True))
    factor = policy.penalties.throttle_factor
    rates: dict[str, BucketRate] = {}
    for message in due:
        base = policy.tenant(message.tenant).messages_per_second
        tenant_steps = [steps.get(("tenant", message.tenant, ""))]
        flow_steps = [
            steps.get(("user", message.user, message.tenant)),
            steps.get(("flow", message.flow, message.tenant)),
        ]
        rates[keys.step_rate("tenant", message.tenant)] = _bucket(
            base * (factor if _throttled(tenant_steps) else 1.0)
        )
        rates[keys.step_rate("flow", message.flow)] = _bucket(
            base * (factor if _throttled(flow_steps) else 1.0)
        )
    return rates


def claim(
    redis: Redis,
    policy: Policy,
    due: Sequence[DueMessage],
    *,
    now: float,
    lease_seconds: float,
) -> list[str]:
    """Claims the due messages the rates allow now; re-schedules the others. Returns ids."""
    if not due:
        return []
    rates = bucket_rates(redis, policy, due)
    bucket_keys = list(rates)
    index = {key: position for position, key in enumerate(bucket_keys, start=1)}
    bucket_args = [value for rate in rates.values() for value in (rate.rate, rate.burst)]
    message_args: list[str | int] = []
    for message in due:
        message_args.extend(
            (
                message.message_id,
                index[keys.step_rate("tenant", message.tenant)],
                index[keys.step_rate("flow", message.flow)],
            )
        )
    result = load_script("step_claim")(
        redis,
        [keys.step_due(), *bucket_keys],
        [repr(now), repr(lease_seconds), len(bucket_keys), *map(repr, bucket_args),
         *message_args],
    )  # fmt: skip
    return [as_text(item) for item in result]
