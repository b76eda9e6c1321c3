"""Penalty state (docs/architecture.md §5): policy-check writes it, flow-start, step-execute and
deploy read it.

The ladder is cumulative: `throttle` lowers rates, `deprioritize` also lowers the weight,
`suspend` stops admission and scales the subject's deployments to zero.

Read side: `current_level`, `factors`, `is_suspended` (the hash field `step` is the contract).
Write side (policy-check only), one Lua script per decision, each writing the state, its audit
entry and its events together:
- `escalate`: a violation steps the subject one rung up, unless the evidence was already
  punished (the same rule fired less than one window ago) or the last step is younger than
  one base `cooldown`; the new step holds for its cooldown at least (no decay before
  `until`), and that cooldown doubles with every escalation, capped by `max_cooldown`;
- `decay`: after the cooldown and `decay_after` without a violation, one rung down; the last
  rung restores (the history is kept for `max_cooldown`, so a quick relapse still doubles);
- `lift`: an operator removes the penalty at once (audited; the doubling starts over).
Punishing one subject writes only that subject's hash: nobody else's limits change.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from redis import Redis

from shared import keys
from shared.events import types
from shared.model import audit
from shared.model.policy import Penalties
from shared.scripts import load_script
from shared.store import as_text

STEPS = ("warn", "throttle", "deprioritize", "suspend")


def _step_of(value: object) -> str | None:
    text = None if value is None else as_text(value)
    return text if text in STEPS else None


def subject_keys(level: str, subject_id: str, tenant: str) -> list[str]:
    """The penalty hashes to read for one subject, the current form first; a user's and a
    flow's also in the previous release's form (read for one release: a subject suspended
    before the upgrade stays suspended until policy-check's tick upgraded its key)."""
    if level == "tenant" or not tenant:
        return [keys.penalty(level, subject_id)]
    return [keys.penalty(level, subject_id, tenant), keys.penalty(level, subject_id)]


def read_steps(redis: Redis, subjects: Sequence[tuple[str, str, str]]) -> list[str | None]:
    """The penalty step of each (level, id, tenant) (one round trip); an old-form user or
    flow hash counts only when it names the same tenant (or none)."""
    pipe = redis.pipeline(transaction=False)
    for level, subject_id, tenant in subjects:
        for key in subject_keys(level, subject_id, tenant):
            pipe.hmget(key, "step", "tenant")
    replies = iter(pipe.execute())
    steps: list[str | None] = []
    for level, subject_id, tenant in subjects:
        found = None
        for index, _ in enumerate(subject_keys(level, subject_id, tenant)):
            step, owner = next(replies)
            if found is None and step is not None:
                old_form = index > 0
                if not old_form or owner is None or as_text(owner) == tenant:
                    found = _step_of(step)
        steps.append(found if subject_id else None)
    return steps


def current_level(redis: Redis, level: str, subject_id: str, tenant: str = "") -> str | None:
    """The penalty step of one subject (`tenant`, or a `user` or `flow` of `tenant`), or None."""
    if not subject_id:
        return None
    return read_steps(redis, [(level, subject_id, tenant)])[0]


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
    steps = read_steps(
        redis, [("tenant", tenant, ""), ("user", user, tenant), ("flow", flow, tenant)]
    )
    worst = max((_rank(step) for step in steps), default=-1)
    rate = penalties.throttle_factor if worst >= _rank("throttle") else 1.0
    weight = penalties.deprioritize_factor if worst >= _rank("deprioritize") else 1.0
    return Factors(rate=rate, weight=weight, suspended=worst >= _rank("suspend"))


def is_suspended(redis: Redis, *, tenant: str, user: str = "", flow: str = "") -> bool:
    subjects = [("tenant", tenant, ""), ("user", user, tenant), ("flow", flow, tenant)]
    return "suspend" in read_steps(redis, subjects)


# ---------------------------------------------------------------- write side (policy-check)
@dataclass(frozen=True)
class Evidence:
    """Why a subject is punished: the rule, what was measured, the limit and the window."""

    rule: str
    measured: float
    limit: float
    window: str
    window_seconds: float


@dataclass(frozen=True)
class Decision:
    action: str  # escalated | held | decayed | restored | lifted | none
    level: str
    subject_id: str
    step: str | None
    until: float | None

    @property
    def changed(self) -> bool:
        return self.action in ("escalated", "decayed", "restored", "lifted")


def _event_base(level: str, subject_id: str, tenant: str = "") -> str:
    if level != "tenant" and tenant:
        return "pen-" + keys.digest(level, subject_id, tenant)[:20]
    return "pen-" + keys.digest(level, subject_id)[:20]


def _flow_extension(level: str, subject_id: str) -> str:
    return subject_id if level == "flow" else ""


def _script_keys(level: str, subject_id: str, tenant: str) -> list[str]:
    return [
        keys.penalty(level, subject_id, tenant),
        keys.penalty_index(),
        keys.audit(),
        keys.outbox(keys.POLICY),
    ]


# The events the penalty scripts announce (penalty_common.lua): one per step, restored, violation.
EVENT_TYPES_JSON = json.dumps(
    {
        "steps": {
            "throttle": types.TENANT_THROTTLED,
            "deprioritize": types.TENANT_DEPRIORITIZED,
            "suspend": types.TENANT_SUSPENDED,
        },
        "restored": types.TENANT_RESTORED,
        "violation": types.POLICY_VIOLATION,
    },
    separators=(",", ":"),
)


def history_ttl(penalties: Penalties) -> int:
    """How long a restored subject's history (repeats, evidence) is kept."""
    return max(1, round(max(penalties.max_cooldown_seconds, penalties.decay_after_seconds)))


def cooldown_for(penalties: Penalties, repeats: int) -> float:
    """The cooldown of the escalation after `repeats` earlier ones: doubled each time, capped."""
    return float(min(penalties.cooldown_seconds * 2**repeats, penalties.max_cooldown_seconds))


def escalate(
    redis: Redis,
    penalties: Penalties,
    *,
    level: str,
    subject_id: str,
    tenant: str,
    evidence: Evidence,
    now: float,
    source: str,
    action: str = "escalate",
) -> Decision:
    reply = load_script("penalty_escalate")(
        redis,
        _script_keys(level, subject_id, tenant),
        [
            repr(float(now)),
            level,
            subject_id,
            tenant,
            evidence.rule,
            repr(float(evidence.measured)),
            repr(float(evidence.limit)),
            evidence.window,
            repr(float(evidence.window_seconds)),
            ",".join(penalties.ladder),
            repr(penalties.cooldown_seconds),
            repr(penalties.max_cooldown_seconds),
            repr(penalties.max_cooldown_seconds),
            _event_base(level, subject_id, tenant),
            source,
            EVENT_TYPES_JSON,
            str(audit.MAX_ENTRIES),
            _flow_extension(level, subject_id),
            action,
            keys.penalty_member(level, subject_id, tenant),
        ],
    )
    decision, step, until = (as_text(v) for v in reply)
    return Decision(decision, level, subject_id, step or None, float(until) if step else None)


def decay(
    redis: Redis,
    penalties: Penalties,
    *,
    level: str,
    subject_id: str,
    now: float,
    source: str,
    tenant: str = "",
) -> Decision:
    reply = load_script("penalty_decay")(
        redis,
        _script_keys(level, subject_id, tenant),
        [
            repr(float(now)),
            ",".join(penalties.ladder),
            repr(penalties.decay_after_seconds),
            str(history_ttl(penalties)),
            _event_base(level, subject_id, tenant),
            source,
            EVENT_TYPES_JSON,
            str(audit.MAX_ENTRIES),
            _flow_extension(level, subject_id),
            keys.penalty_member(level, subject_id, tenant),
        ],
    )
    decision, step, until = (as_text(v) for v in reply)
    return Decision(decision, level, subject_id, step or None, float(until) if step else None)


def penalized_members(redis: Redis) -> list[str]:
    """Every penalized subject, as keys.penalty_member names it (one read)."""
    return [as_text(member) for member in redis.zrange(keys.penalty_index(), 0, -1)]


def decay_all(
    redis: Redis,
    penalties: Penalties,
    *,
    now: float,
    source: str,
    members: Iterable[str] | None = None,
) -> list[Decision]:
    """One decay check for each of `members` (default: every penalized subject); the tick
    passes a page of them (TICK_PAGE_SIZE)."""
    decisions = []
    for member in penalized_members(redis) if members is None else members:
        level, subject_id, tenant = keys.parse_penalty_member(member)
        decisions.append(
            decay(
                redis,
                penalties,
                level=level,
                subject_id=subject_id,
                tenant=tenant,
                now=now,
                source=source,
            )
        )
    return decisions


def lift(
    redis: Redis,
    penalties: Penalties,
    *,
    level: str,
    subject_id: str,
    now: float,
    actor: str,
    source: str,
    tenant: str = "",
) -> Decision:
    """An operator lifts the penalty (audited, announced with tenant.restored)."""
    lifted = as_text(
        load_script("penalty_lift")(
            redis,
            _script_keys(level, subject_id, tenant),
            [
                repr(float(now)),
                actor,
                str(history_ttl(penalties)),
                _event_base(level, subject_id, tenant),
                source,
                EVENT_TYPES_JSON,
                str(audit.MAX_ENTRIES),
                _flow_extension(level, subject_id),
                keys.penalty_member(level, subject_id, tenant),
                level,
                subject_id,
            ],
        )
    )
    return Decision("lifted" if lifted else "none", level, subject_id, None, None)


@dataclass(frozen=True)
class PenaltyState:
    """A current penalty with its evidence (for the operator CLI and the simulation)."""

    level: str
    id: str
    tenant: str
    step: str
    until: float
    since: float
    rule: str
    measured: float
    limit: float
    window: str
    repeats: int

    def to_dict(self) -> dict[str, object]:
        return {
            "subject": f"{self.level}:{self.id}",
            "level": self.level,
            "id": self.id,
            "tenant": self.tenant,
            "penalty": self.step,
            "until": self.until,
            "since": self.since,
            "rule": self.rule,
            "measured": self.measured,
            "limit": self.limit,
            "window": self.window,
            "repeats": self.repeats,
        }


def state(redis: Redis, level: str, subject_id: str, tenant: str = "") -> PenaltyState | None:
    raw = {
        as_text(k): as_text(v)
        for k, v in redis.hgetall(keys.penalty(level, subject_id, tenant)).items()
    }
    if raw.get("step") not in STEPS:
        return None

    def number(name: str) -> float:
        try:
            return float(raw.get(name) or 0)
        except ValueError:
            return 0.0

    return PenaltyState(
        level=level,
        id=subject_id,
        tenant=raw.get("tenant", ""),
        step=raw["step"],
        until=number("until"),
        since=number("since"),
        rule=raw.get("rule", ""),
        measured=number("measured"),
        limit=number("limit"),
        window=raw.get("window", ""),
        repeats=int(number("repeats")),
    )


def current(redis: Redis) -> list[PenaltyState]:
    """Every subject with a penalty now, most recently changed first."""
    found = []
    for member in redis.zrevrange(keys.penalty_index(), 0, -1):
        level, subject_id, tenant = keys.parse_penalty_member(as_text(member))
        entry = state(redis, level, subject_id, tenant)
        if entry is not None:
            found.append(entry)
    return found


def upgrade(redis: Redis) -> int:
    """Once per store: the previous release's user and flow penalty hashes (keyed without the
    tenant; the hash names it) move to the tenant's key and index member. A subject punished
    under both forms keeps the new one. Returns the subjects moved (0 once done)."""
    if redis.exists(keys.policy_upgraded()):
        return 0
    moved = 0
    entries: list[tuple[bytes, float]] = redis.zrange(  # type: ignore[assignment]
        keys.penalty_index(), 0, -1, withscores=True
    )
    for raw_member, score in entries:
        member = as_text(raw_member)
        level, subject_id, tenant = keys.parse_penalty_member(member)
        if level == "tenant" or tenant:
            continue
        old = keys.penalty(level, subject_id)
        owner = redis.hget(old, "tenant")
        if owner is None:
            continue  # no tenant to move it under: read as the old form
        new = keys.penalty(level, subject_id, as_text(owner))
        pipe = redis.pipeline(transaction=True)
        if redis.exists(new):
            pipe.delete(old)
        else:
            pipe.rename(old, new)
        pipe.zrem(keys.penalty_index(), member)
        pipe.zadd(
            keys.penalty_index(), {keys.penalty_member(level, subject_id, as_text(owner)): score}
        )
        pipe.execute()
        moved += 1
    redis.set(keys.policy_upgraded(), "1")
    return moved
