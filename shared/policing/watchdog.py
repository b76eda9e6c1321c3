"""The watchdog (docs/architecture.md §5, policy-check): runs past their time limit are ended on a
tick.

policy-check keeps its own index of running runs, fed by `flow.execution.admitted` and emptied
by `flow.execution.completed/failed` (it never reads other functions' keys): one hash per run
(flow, tenant, user, fencing token, admitted time, limit, time accounted so far) and a sorted
set of run ids by deadline. The limit is min(flowSettings.maxRunSeconds, the tenant's
`max_run_seconds`). On every tick the run time that passed is added to the ledger
(`run_seconds`, so long runs show before they end), and each run past its deadline is ended by
emitting `flow.execution.failed` (reason timeout, with the run's fencing token) in the same
atomic step that takes it out of the index, so two ticks never end it twice. flow-start
releases the run's lease and slot when it consumes that event; step-execute stops routing it.
Runs of a suspended subject are ended the same way (reason suspended): deploy has scaled their
workers to zero, so they cannot finish, and their slots would stay taken until the timeout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis

from shared import keys
from shared.events import make_event
from shared.events.payloads import RunAdmitted, RunEnded
from shared.events.types import RUN_FAILED
from shared.model import audit, penalties
from shared.model.policy import Policy
from shared.policing import ledger
from shared.policing.ledger import Record, RunOp, SubjectRef
from shared.store import as_text

TIMEOUT_REASON = "timeout"
SUSPENDED_REASON = "suspended"
TIMEOUT_RULE = "max-run-seconds"
ENDED_MARKER_SECONDS = 6 * 3600  # an ended run's marker: a late second terminal event is ignored
RUN_TTL_MARGIN_SECONDS = 24 * 3600  # a run never seen to end is forgotten this long after its limit
DEFERRED_MARKER_SECONDS = 7 * 24 * 3600  # a waiting run's marker (runs wait at most this long)


@dataclass(frozen=True)
class WatchedRun:
    run_id: str
    flow: str
    tenant: str
    user: str
    token: int
    admitted: float
    limit: float
    accounted: float
    ended: bool

    @property
    def deadline(self) -> float:
        return self.admitted + self.limit

    def subjects(self) -> list[SubjectRef]:
        return ledger.subjects_of(self.tenant, self.user, self.flow)


@dataclass(frozen=True)
class Timeout:
    run: WatchedRun
    elapsed: float


def limit_for(policy: Policy, tenant: str, flow_max_run_seconds: int | None) -> float:
    """min(flowSettings.maxRunSeconds, the tenant's max_run_seconds)."""
    tenant_limit = float(policy.tenant(tenant).max_run_seconds)
    if flow_max_run_seconds:
        return min(float(flow_max_run_seconds), tenant_limit)
    return tenant_limit


def admit_op(run: RunAdmitted, *, now: float, limit: float) -> RunOp:
    fields = ledger.run_fields(
        run_id=run.run_id,
        flow=run.flow_id,
        tenant=run.tenant,
        user=run.user,
        token=run.fencing_token,
        admitted=now,
        limit=limit,
    )
    ttl = round(limit) + RUN_TTL_MARGIN_SECONDS
    runs_field = str(ledger.FIELD["runs"])
    return RunOp("admit", run.run_id, (fields, repr(now + limit), str(ttl), runs_field))


def defer_op(run_id: str) -> RunOp:
    """A run request that waits for its turn: counted in `runs` now, not again when admitted."""
    return RunOp("defer", run_id, ("", "", str(DEFERRED_MARKER_SECONDS), ""))


def end_op(run_id: str, *, ended_at: float, unknown_seconds: float) -> RunOp:
    """Accounts the run time not yet counted; `unknown_seconds` when the run was never seen."""
    return RunOp(
        "end", run_id, (repr(ended_at), repr(unknown_seconds), str(ENDED_MARKER_SECONDS), "")
    )


def get(redis: Redis, run_id: str) -> WatchedRun | None:
    return _parse(run_id, redis.hgetall(keys.watched_run(run_id)))


def watched_ids(redis: Redis) -> list[str]:
    """The ids of every run in the index (names only: what a paged tick walks)."""
    return [as_text(m) for m in redis.zrange(keys.watched_runs(), 0, -1)]


def overdue_ids(redis: Redis, *, now: float, limit: int) -> list[str]:
    """At most `limit` runs past their deadline, the longest overdue first."""
    found = redis.zrangebyscore(keys.watched_runs(), "-inf", repr(now), start=0, num=limit)
    return [as_text(m) for m in found]


def running(redis: Redis, run_ids: Sequence[str] | None = None) -> list[WatchedRun]:
    """The runs of the index (admitted, not ended) among `run_ids` (default: all of them),
    soonest deadline first."""
    if run_ids is None:
        run_ids = watched_ids(redis)
    pipe = redis.pipeline(transaction=False)
    for run_id in run_ids:
        pipe.hgetall(keys.watched_run(run_id))
    runs = [_parse(run_id, raw) for run_id, raw in zip(run_ids, pipe.execute(), strict=True)]
    stale = [run_id for run_id, run in zip(run_ids, runs, strict=True) if run is None]
    if stale:  # the run's hash expired without an end: stop watching it
        redis.zrem(keys.watched_runs(), *stale)
    found = [run for run in runs if run is not None and not run.ended]
    return sorted(found, key=lambda run: (run.deadline, run.run_id))


def accrue(
    redis: Redis, runs: Sequence[WatchedRun], *, now: float, ring_windows: ledger.LevelWindows
) -> list[SubjectRef]:
    """Adds the run time passed since the last tick to each run's subjects; returns them."""
    entries = [
        (Record(run.subjects(), run=RunOp("accrue", run.run_id)), now)
        for run in runs
        if run.deadline > now
    ]
    ledger.record_many(redis, entries, ring_windows=ring_windows)
    return [subject for entry, _ in entries for subject in entry.subjects]


def timeouts(
    redis: Redis,
    runs: Sequence[WatchedRun],
    *,
    now: float,
    ring_windows: ledger.LevelWindows,
    source: str,
) -> list[Timeout]:
    """Ends every run past its deadline: failed event (reason timeout) + ledger, atomically."""
    overdue = [run for run in runs if run.deadline <= now]
    return [
        Timeout(run, now - run.admitted)
        for run in overdue
        if end(redis, run, now=now, ring_windows=ring_windows, source=source, reason=TIMEOUT_REASON)
    ]


def suspended_runs(redis: Redis, runs: Sequence[WatchedRun]) -> list[WatchedRun]:
    """The runs whose tenant, user or flow is suspended now (one round trip)."""

    def scoped(subject: ledger.SubjectRef) -> tuple[str, str, str]:
        return subject.level, subject.id, "" if subject.level == "tenant" else subject.tenant

    subjects = sorted({scoped(s) for run in runs for s in run.subjects()})
    steps = dict(zip(subjects, penalties.read_steps(redis, subjects), strict=True))
    suspended = {subject for subject, step in steps.items() if step == "suspend"}
    return [run for run in runs if any(scoped(s) in suspended for s in run.subjects())]


def end(
    redis: Redis,
    run: WatchedRun,
    *,
    now: float,
    ring_windows: ledger.LevelWindows,
    source: str,
    reason: str,
) -> bool:
    """Emits flow.execution.failed for the run (with its fencing token) and counts it, in one
    atomic step; False when the run already ended (another tick or its own end won)."""
    elapsed = now - run.admitted
    event = make_event(
        RUN_FAILED,
        RunEnded(
            flow_id=run.flow,
            run_id=run.run_id,
            tenant=run.tenant,
            fencing_token=run.token,
            duration_ms=round(elapsed * 1000),
            reason=reason,
            user=run.user or None,
        ),
        event_id=f"{reason}-" + keys.digest(run.run_id)[:24],
        source=source,
        time=now,
        tenant=run.tenant,
        flow_id=run.flow,
        run_id=run.run_id,
    )
    op = RunOp("timeout", run.run_id, ("", "", str(ENDED_MARKER_SECONDS), event.to_json()))
    errors = 1.0 if reason == TIMEOUT_REASON else 0.0  # a suspension is not the run's error
    entry = Record(run.subjects(), {"ended": 1, "errors": errors}, run=op)
    if not ledger.record(redis, entry, now=now, ring_windows=ring_windows).counted:
        return False
    audit.append(
        redis,
        {
            "time": now,
            "action": reason,
            "level": "flow",
            "subject": run.flow,
            "tenant": run.tenant,
            "rule": TIMEOUT_RULE if reason == TIMEOUT_REASON else "",
            "measured": elapsed,
            "limit": run.limit,
            "window": f"{round(run.limit)}s",
            "penalty": "" if reason == TIMEOUT_REASON else "suspend",
            "actor": "watchdog",
        },
    )
    return True


def _parse(run_id: str, raw: Mapping[Any, Any] | None) -> WatchedRun | None:
    if not raw:
        return None
    fields = {as_text(k): as_text(v) for k, v in raw.items()}
    try:
        return WatchedRun(
            run_id=run_id,
            flow=fields["flow"],
            tenant=fields["tenant"],
            user=fields.get("user", ""),
            token=int(float(fields.get("token", "0"))),
            admitted=float(fields["admitted"]),
            limit=float(fields["limit"]),
            accounted=float(fields.get("accounted", fields["admitted"])),
            ended=fields.get("ended") == "1",
        )
    except (KeyError, ValueError):
        return None
