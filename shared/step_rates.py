"""Fair message rates (DESIGN §3, issue 6 §6): a token bucket per tenant and one per flow.

A tenant's bucket fills at its `messages_per_second` times the rate factor of the tenant's (and
its users') penalties; a flow's bucket at the same base rate times the factor of the flow's own
(and its first owner's) penalties, so one throttled flow slows alone while the tenant's total
stays capped. A message over either rate is re-scheduled to when a token will be there: it
waits, it is never dropped. Buckets hold at most one second of tokens (small bursts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis import Redis

from shared import keys, penalties
from shared.policy import Policy
from shared.scripts import load_script

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


def tenant_rate(redis: Redis, policy: Policy, tenant: str) -> BucketRate:
    base = policy.tenant(tenant).messages_per_second
    factor = penalties.factors(redis, policy.penalties, tenant=tenant).rate
    return _bucket(base * factor)


def flow_rate(redis: Redis, policy: Policy, tenant: str, user: str, flow: str) -> BucketRate:
    base = policy.tenant(tenant).messages_per_second
    factor = penalties.factors(redis, policy.penalties, tenant="", user=user, flow=flow).rate
    return _bucket(base * factor)


def _bucket(rate: float) -> BucketRate:
    rate = max(rate, MIN_RATE)
    return BucketRate(rate=rate, burst=max(rate, 1.0))


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
    bucket_keys: list[str] = []
    bucket_args: list[float] = []
    index: dict[str, int] = {}

    def bucket(key: str, rate: BucketRate) -> int:
        if key not in index:
            bucket_keys.append(key)
            bucket_args.extend((rate.rate, rate.burst))
            index[key] = len(bucket_keys)
        return index[key]

    message_args: list[str | int] = []
    for message in due:
        tenant_key = keys.step_rate("tenant", message.tenant)
        flow_key = keys.step_rate("flow", message.flow)
        t = index.get(tenant_key) or bucket(tenant_key, tenant_rate(redis, policy, message.tenant))
        f = index.get(flow_key) or bucket(
            flow_key, flow_rate(redis, policy, message.tenant, message.user, message.flow)
        )
        message_args.extend((message.message_id, t, f))
    result = load_script("step_claim")(
        redis,
        [keys.step_due(), *bucket_keys],
        [repr(now), repr(lease_seconds), len(bucket_keys), *map(repr, bucket_args),
         *message_args],
    )  # fmt: skip
    return [item.decode() if isinstance(item, bytes) else str(item) for item in result]
