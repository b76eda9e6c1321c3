"""A flow's run lease (docs/architecture.md §5: overlap protection of cron runs).

The lease is `token|expiresAt|runId`, held until now + the run limit by the caller's clock,
so a crashed run's lease expires and the next due time runs (the key's own TTL only collects
it). Every acquire takes a new fencing token from one counter, so tokens only increase: a
stale run (its lease expired, a newer run acquired) can never release the newer run's lease.
The admission scripts use the same Lua helpers (flow_start_lease.lua); this module reads the
lease and offers acquire/release for tools and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis

from shared import keys
from shared.model.policy import TenantLimits
from shared.scripts import load_script
from shared.store import as_text


@dataclass(frozen=True)
class Lease:
    run_id: str
    token: int
    expires_at: float


def run_limit(flow_max_run_seconds: int | None, tenant: TenantLimits) -> int:
    """A run's time limit: min(flowSettings.maxRunSeconds, the tenant's max_run_seconds)."""
    if flow_max_run_seconds is None:
        return tenant.max_run_seconds
    return max(1, min(flow_max_run_seconds, tenant.max_run_seconds))


def current(redis: Redis, flow_id: str, now: float) -> Lease | None:
    """The run holding the flow's lease at `now`, or None (free or expired)."""
    value = redis.get(keys.run_lease(flow_id))
    if value is None:
        return None
    token, expires_at, run_id = as_text(value).split("|", 2)
    if float(expires_at) <= now:
        return None
    return Lease(run_id=run_id, token=int(token), expires_at=float(expires_at))


def acquire(redis: Redis, flow_id: str, run_id: str, ttl_seconds: float, now: float) -> int | None:
    """The new fencing token, or None when another run holds the lease."""
    token = load_script("flow_start_lease_acquire")(
        redis,
        [keys.run_lease(flow_id), keys.fencing_counter()],
        [run_id, repr(float(ttl_seconds)), repr(float(now))],
    )
    return None if token is None else int(token)


def release(redis: Redis, flow_id: str, token: int) -> bool:
    """True if released; False when the token is not the holder's (stale) or it expired."""
    return bool(load_script("flow_start_lease_release")(redis, [keys.run_lease(flow_id)], [token]))
