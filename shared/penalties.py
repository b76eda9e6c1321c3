"""Reading penalty state at decision time (DESIGN §3): policy-check writes it, the others read.

The ladder is cumulative: `throttle` lowers rates, `deprioritize` also lowers the weight,
`suspend` stops admission and scales the subject's deployments to zero.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis

from shared import keys
from shared.policy import Penalties

STEPS = ("warn", "throttle", "deprioritize", "suspend")


def current_level(redis: Redis, level: str, subject_id: str) -> str | None:
    """The penalty step of one subject (`tenant`, `user` or `flow`), or None."""
    if not subject_id:
        return None
    value = redis.hget(keys.penalty(level, subject_id), "step")
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else str(value)
    return text if text in STEPS else None


@dataclass(frozen=True)
class Factors:
    """Multipliers for one run's subjects (tenant, user, flow) under their current penalties."""

    rate: float = 1.0
    weight: float = 1.0
    suspended: bool = False


def _rank(step: str | None) -> int:
    return STEPS.index(step) if step in STEPS else -1


def factors(
    redis: Redis, penalties: Penalties, *, tenant: str, user: str = "", flow: str = ""
) -> Factors:
    """The strongest penalty among tenant, user and flow decides (one pipeline round trip)."""
    pipe = redis.pipeline(transaction=False)
    subjects = [("tenant", tenant), ("user", user), ("flow", flow)]
    for level, subject_id in subjects:
        pipe.hget(keys.penalty(level, subject_id or "-"), "step")
    steps = [
        (v.decode() if isinstance(v, bytes) else v) if subject_id else None
        for v, (_, subject_id) in zip(pipe.execute(), subjects, strict=True)
    ]
    worst = max((_rank(step) for step in steps), default=-1)
    rate = penalties.throttle_factor if worst >= _rank("throttle") else 1.0
    weight = penalties.deprioritize_factor if worst >= _rank("deprioritize") else 1.0
    return Factors(rate=rate, weight=weight, suspended=worst >= _rank("suspend"))


def is_suspended(redis: Redis, *, tenant: str, user: str = "", flow: str = "") -> bool:
    return any(
        current_level(redis, level, subject_id) == "suspend"
        for level, subject_id in (("tenant", tenant), ("user", user), ("flow", flow))
        if subject_id
    )
