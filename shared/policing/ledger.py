"""The usage ledger (docs/architecture.md §5 policy-check, §10 metrics): sliding windows per
tenant, user, flow.

Each (subject, window) has one ring: a Redis hash of `SLOTS` buckets of `window / SLOTS`
seconds each. A write clears a slot that still holds an older bucket before adding, so a ring
never holds more than `SLOTS` buckets whatever the event rate (bounded memory), and rings of
subjects that go quiet expire (TTL = one window). A window's value is the sum of the buckets
whose number lies in the last `SLOTS` buckets: it covers between (SLOTS-1)/SLOTS of the window
and the whole window.

Every write goes through `ledger_record.lua`, which also sets the event's dedupe key (a
redelivered event is not counted twice) and keeps the watchdog's run bookkeeping (run time is
accounted as it passes, so a long run shows in `run_seconds` before it ends).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from shared import keys
from shared.model.policy import SUBJECT_LEVELS, Policy, Rule
from shared.runtime.idempotency import Once, script_dedupe
from shared.scripts import ScriptCall, load_script, run_pipelined
from shared.store import as_text

SLOTS = 12
# Stored per bucket. `error_ratio` is derived (errors / ended); `ended` counts finished runs.
STORED_METRICS = (
    "runs",
    "run_seconds",
    "step_seconds",
    "messages",
    "bytes",
    "errors",
    "deploys",
    "skipped",
    "cpu_seconds",
    "memory_mib_seconds",
    "net_bytes",
    "ended",
)
FIELD = {metric: index for index, metric in enumerate(STORED_METRICS)}
DEFAULT_WINDOWS = (3600,)
SCRIPT = "ledger_record"
_SEP = "\x1f"


@dataclass(frozen=True)
class SubjectRef:
    """One subject of the ledger and the tenant whose rules apply to it."""

    level: str  # tenant | user | flow
    id: str
    tenant: str

    def member(self) -> str:
        return _SEP.join((self.level, self.id, self.tenant))

    @classmethod
    def from_member(cls, member: str | bytes) -> SubjectRef:
        text = member.decode() if isinstance(member, bytes) else member
        level, subject_id, tenant = text.split(_SEP, 2)
        return cls(level, subject_id, tenant)


def subjects_of(tenant: str, user: str = "", flow: str = "") -> list[SubjectRef]:
    """The subjects one event is counted against; an empty id is left out."""
    pairs = (("tenant", tenant), ("user", user), ("flow", flow))
    return [SubjectRef(level, value, tenant) for level, value in pairs if value and tenant]


LevelWindows = Mapping[str, Sequence[int]]


def _all_rules(policy: Policy) -> list[Rule]:
    rules = list(policy.rules) + [r for limits in policy.tenants.values() for r in limits.rules]
    return rules + list(policy.defaults.rules)


def windows(policy: Policy) -> tuple[int, ...]:
    """Every distinct rule window (global and per tenant), in whole seconds."""
    found = sorted({max(1, round(rule.window_seconds)) for rule in _all_rules(policy)})
    return tuple(found) or DEFAULT_WINDOWS


def level_windows(policy: Policy) -> dict[str, tuple[int, ...]]:
    """The rings each subject level keeps: the windows of its rules; a level without rules
    keeps the widest window, and tenants always keep it too (the usage an operator sees)."""
    widest = max(windows(policy))
    found: dict[str, set[int]] = {level: set() for level in SUBJECT_LEVELS}
    for rule in _all_rules(policy):
        found[rule.subject].add(max(1, round(rule.window_seconds)))
    found["tenant"].add(widest)
    return {level: tuple(sorted(ws or {widest})) for level, ws in found.items()}


def width(window_seconds: int) -> float:
    return window_seconds / SLOTS


@dataclass(frozen=True)
class RunOp:
    """The watchdog bookkeeping done in the same atomic step as the ledger write."""

    kind: str = "none"  # none | admit | end | accrue | timeout
    run_id: str = ""
    args: tuple[str, str, str, str] = ("", "", "", "")


@dataclass(frozen=True)
class Record:
    """One ledger write: amounts per metric for a set of subjects."""

    subjects: Sequence[SubjectRef]
    amounts: Mapping[str, float] = field(default_factory=dict)
    once: Once | None = None  # None: no dedupe (tick accrual is idempotent by its timestamps)
    run: RunOp = RunOp()


@dataclass(frozen=True)
class Recorded:
    status: int  # 1 recorded, 0 duplicate event, 2 nothing to count
    run_seconds: float

    @property
    def duplicate(self) -> bool:
        return self.status == 0

    @property
    def counted(self) -> bool:
        return self.status == 1


def _keys_and_args(
    record: Record, now: float, ring_windows: LevelWindows
) -> tuple[list[str], list[str]]:
    unknown = [m for m in record.amounts if m not in FIELD]
    if unknown:
        raise ValueError(f"not ledger metrics: {unknown}")
    dedupe_key, ttl = script_dedupe(record.once, keys.POLICY)
    run_id = record.run.run_id or "-"
    script_keys = [
        dedupe_key,
        keys.outbox(keys.POLICY),
        keys.watched_run(run_id),
        keys.watched_runs(),
        keys.ledger_active(),
    ]
    script_keys += [
        keys.ledger(s.level, s.id, window, s.tenant)
        for s in record.subjects
        for window in ring_windows[s.level]
    ]
    amounts = [(FIELD[m], float(v)) for m, v in record.amounts.items() if v]
    args: list[str] = [
        str(ttl),
        repr(float(now)),
        str(SLOTS),
        str(len(STORED_METRICS)),
        record.run.kind,
        *record.run.args,
        str(FIELD["run_seconds"]),
        str(len(amounts)),
    ]
    for index, amount in amounts:
        args += [str(index), repr(amount)]
    args.append(str(len(record.subjects)))
    for subject in record.subjects:
        shapes = ring_windows[subject.level]
        args += [subject.member(), str(len(shapes))]
        for window in shapes:
            args += [repr(width(window)), str(window + math.ceil(width(window)))]
    return script_keys, args


def _recorded(reply: Any) -> Recorded:
    status, seconds = reply
    return Recorded(int(status), float(as_text(seconds)))


def record(redis: Redis, entry: Record, *, now: float, ring_windows: LevelWindows) -> Recorded:
    """Writes one entry atomically (dedupe key, rings, run bookkeeping, outbox)."""
    script_keys, args = _keys_and_args(entry, now, ring_windows)
    return _recorded(load_script(SCRIPT)(redis, script_keys, args))


def record_many(
    redis: Redis,
    entries: Iterable[tuple[Record, float]],
    *,
    ring_windows: LevelWindows,
    batch: int = 500,
) -> list[Recorded]:
    """Writes many (entry, now) pairs through one pipeline per `batch` (bulk ingestion)."""
    calls = (
        ScriptCall(SCRIPT, *_keys_and_args(entry, now, ring_windows)) for entry, now in entries
    )
    return [_recorded(reply) for reply in run_pipelined(redis, calls, batch=batch)]


# ---------------------------------------------------------------- reading
def usage(redis: Redis, subject: SubjectRef, window: int, *, now: float) -> dict[str, float]:
    """Sums per stored metric over the window ending now (a missing ring reads as zeros)."""
    return usage_many(redis, [(subject, window)], now=now)[0]


def usage_many(
    redis: Redis, wanted: Sequence[tuple[SubjectRef, int]], *, now: float
) -> list[dict[str, float]]:
    """`usage` for many (subject, window) pairs in one round trip (summed inside Redis)."""
    if not wanted:
        return []
    reply = load_script("ledger_read")(
        redis,
        [
            keys.ledger(subject.level, subject.id, window, subject.tenant)
            for subject, window in wanted
        ],
        [
            repr(float(now)),
            str(SLOTS),
            str(len(STORED_METRICS)),
            *(repr(width(window)) for _, window in wanted),
        ],
    )
    return [
        {metric: float(as_text(value)) for metric, value in zip(STORED_METRICS, sums, strict=True)}
        for sums in reply
    ]


def active_subjects(redis: Redis, *, since: float) -> list[SubjectRef]:
    """Subjects written to since `since` (the ones whose rules may fire)."""
    members = redis.zrangebyscore(keys.ledger_active(), since, "+inf")
    return [SubjectRef.from_member(as_text(m)) for m in members]


def forget_inactive(redis: Redis, *, before: float) -> int:
    """Drops subjects not written to since `before` from the active index (bounded memory)."""
    return int(redis.zremrangebyscore(keys.ledger_active(), "-inf", f"({before!r}"))


def run_fields(
    *,
    run_id: str,
    flow: str,
    tenant: str,
    user: str,
    token: int,
    admitted: float,
    limit: float,
) -> str:
    """The JSON the `admit` run operation stores (never a secret: the fencing token is a number)."""
    return json.dumps(
        {
            "runId": run_id,
            "flow": flow,
            "tenant": tenant,
            "user": user,
            "token": token,
            "admitted": admitted,
            "limit": limit,
        }
    )


def upgrade(redis: Redis, ring_windows: LevelWindows) -> int:
    """The previous release's rings of users and flows (keyed without the tenant) of every
    active subject move to the tenant's key (a ring already written under the new key keeps
    it: at most the minute before this tick is lost). Returns the rings moved."""
    moved = 0
    for member in redis.zrange(keys.ledger_active(), 0, -1):
        subject = SubjectRef.from_member(as_text(member))
        if subject.level == "tenant" or not subject.tenant:
            continue
        for window in ring_windows.get(subject.level, ()):
            old = keys.ledger(subject.level, subject.id, window)
            if not redis.exists(old):
                continue
            new = keys.ledger(subject.level, subject.id, window, subject.tenant)
            if redis.exists(new):
                redis.delete(old)
            else:
                redis.rename(old, new)
            moved += 1
    return moved
