"""Network rates for admission's dominant share (docs/architecture.md, fair admission).

In cost mode `dominant` with `fairness.capacity.network`, a run's network share is its
tenant's recent rate (the net_bytes its usage reports carried over the run-seconds of its
runs, in the tenant's shortest ledger window) over the capacity. Policy-check's tick
publishes the rates of the active tenants in one hash; flow-start reads it at decision time
(shared/admission/queue.py), as it reads penalties.
"""

from __future__ import annotations

from redis import Redis

from shared import keys
from shared.model.policy import Policy
from shared.policing import ledger
from shared.policing.ledger import SubjectRef


def wanted(policy: Policy) -> bool:
    fairness = policy.fairness
    return fairness.cost == "dominant" and fairness.capacity.network is not None


def rates(
    redis: Redis, policy: Policy, subjects: list[SubjectRef], *, now: float
) -> dict[str, float]:
    """Tenant → bytes per run-second over its shortest window (tenants without both: none)."""
    tenants = [s for s in subjects if s.level == "tenant"]
    window = min(ledger.level_windows(policy)["tenant"])
    sums = ledger.usage_many(redis, [(s, window) for s in tenants], now=now)
    return {
        subject.id: used["net_bytes"] / used["run_seconds"]
        for subject, used in zip(tenants, sums, strict=True)
        if used["run_seconds"] > 0 and used["net_bytes"] > 0
    }


def publish(redis: Redis, policy: Policy, subjects: list[SubjectRef], *, now: float) -> int:
    """Replaces the published rates (nothing in the other modes). Returns the tenants written."""
    if not wanted(policy):
        return 0
    table = rates(redis, policy, subjects, now=now)
    pipe = redis.pipeline(transaction=True)
    pipe.delete(keys.network_rates())
    if table:
        pipe.hset(keys.network_rates(), mapping={t: repr(r) for t, r in table.items()})
    pipe.execute()
    return len(table)
