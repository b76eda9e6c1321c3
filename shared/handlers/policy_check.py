"""policy-check (docs/architecture.md §5): the fairness police.

Every counted event goes into the ledger once (its dedupe key is set by the same script), then
the rules of the subjects it touched are evaluated and violations escalate penalties. The tick
runs the watchdog (run time accounting, timeouts), the metrics reader (kubernetes driver
only), the rules of every recently active subject, and the decay of penalties.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from redis import Redis

from shared import keys
from shared.errors import OrchestratorError
from shared.events.payloads import (
    DeploymentStatus,
    RunAdmitted,
    RunEnded,
    RunNotStarted,
    UsageReport,
)
from shared.events.types import (
    FLOW_FAILED,
    FLOW_STARTED,
    FLOW_STOPPED,
    RUN_ADMITTED,
    RUN_COMPLETED,
    RUN_DEFERRED,
    RUN_FAILED,
    RUN_MISSED,
    RUN_SKIPPED,
    TICK,
    USAGE_REPORTED,
)
from shared.model import flows, penalties
from shared.model.penalties import Evidence
from shared.model.policy import Policy
from shared.policing import ledger, metrics_reader, network, rules, watchdog
from shared.policing.ledger import Record, SubjectRef
from shared.policing.metrics_reader import PodUsageSource
from shared.runtime import tick_cursor
from shared.runtime.function import Context, FunctionSpec, Handler
from shared.runtime.idempotency import Once
from shared.wiring.policing import PolicyServices, build_services

log = logging.getLogger(__name__)

# usage.reported is high volume: its dedupe keys live a day (redeliveries come within minutes)
USAGE_DEDUPE_SECONDS = 24 * 3600
# a run ended by flow.stopping, or because its subject was suspended, is not the flow's fault
NOT_ERRORS = frozenset({"stopped", watchdog.SUSPENDED_REASON})


Ctx = Context[PolicyServices]


# ---------------------------------------------------------------- shared steps
def police(
    redis: Redis, policy: Policy, subjects: Sequence[SubjectRef], *, now: float, source: str
) -> list[penalties.Decision]:
    """Evaluates the subjects' rules; each violation escalates (or holds) its subject."""
    decisions = []
    for violation in rules.evaluate(redis, policy, subjects, now=now):
        decisions.append(
            penalties.escalate(
                redis,
                policy.penalties,
                level=violation.subject.level,
                subject_id=violation.subject.id,
                tenant=violation.subject.tenant,
                evidence=violation.evidence(),
                now=now,
                source=source,
            )
        )
    return decisions


def _count(ctx: Ctx, entry: Record) -> None:
    """Ledger write (once per event), then the rules of the subjects it touched."""
    now = ctx.clock.now()
    result = ledger.record(ctx.redis, entry, now=now, ring_windows=ledger.level_windows(ctx.policy))
    if result.duplicate:
        log.info("duplicate %s id=%s: already counted", ctx.event.type, ctx.event.id)
        return
    police(ctx.redis, ctx.policy, entry.subjects, now=now, source=ctx.source)


def _once(ctx: Ctx, ttl: int | None = None) -> Once:
    return replace(ctx.once, ttl_seconds=ttl) if ttl else ctx.once


def _owner(ctx: Ctx, flow_id: str) -> tuple[str, str]:
    """(tenant, user) of a flow from its stored document ('' when unknown)."""
    stored = flows.get(ctx.redis, flow_id, include_stopped=True) if flow_id else None
    return (stored.flow.tenant, stored.flow.user) if stored else ("", "")


# ---------------------------------------------------------------- handlers
def on_admitted(ctx: Ctx, run: RunAdmitted) -> None:
    stored = flows.get(ctx.redis, run.flow_id, include_stopped=True)
    limit = watchdog.limit_for(
        ctx.policy, run.tenant, stored.flow.settings.max_run_seconds if stored else None
    )
    op = watchdog.admit_op(run, now=ctx.clock.now(), limit=limit)
    subjects = ledger.subjects_of(run.tenant, run.user, run.flow_id)
    _count(ctx, Record(subjects, {"runs": 1}, run=op, once=_once(ctx)))


def on_ended(ctx: Ctx, ended: RunEnded) -> None:
    now = ctx.clock.now()
    known = watchdog.get(ctx.redis, ended.run_id)
    user = ended.user or (known.user if known else "") or _owner(ctx, ended.flow_id)[1]
    seconds = ended.duration_ms / 1000
    ended_at = min(now, known.admitted + seconds) if known and seconds > 0 else now
    failed = ctx.event.type == RUN_FAILED and (ended.reason or "") not in NOT_ERRORS
    op = watchdog.end_op(ended.run_id, ended_at=ended_at, unknown_seconds=seconds)
    subjects = ledger.subjects_of(ended.tenant, user, ended.flow_id)
    amounts = {"ended": 1.0, "errors": 1.0 if failed else 0.0}
    _count(ctx, Record(subjects, amounts, run=op, once=_once(ctx)))


def on_usage(ctx: Ctx, report: UsageReport) -> None:
    user = report.user or (_owner(ctx, report.flow_id)[1] if report.flow_id else "")
    amounts = {
        "cpu_seconds": report.cpu_ms / 1000,
        "memory_mib_seconds": report.mem_mib_s,
        "net_bytes": report.net_bytes,
        "messages": report.messages,
        "bytes": report.bytes,
        "step_seconds": report.step_ms / 1000,
    }
    subjects = ledger.subjects_of(report.tenant, user, report.flow_id)
    _count(ctx, Record(subjects, amounts, once=_once(ctx, USAGE_DEDUPE_SECONDS)))


def on_deployment(ctx: Ctx, status: DeploymentStatus) -> None:
    """flow.started / flow.failed count as deploys (the churn metric); flow.stopped does not."""
    if ctx.event.type == FLOW_STOPPED:
        return
    tenant, user = _owner(ctx, status.id)
    if not tenant:
        log.info("deploy status of unknown flow %s: not counted", status.id)
        return
    _count(
        ctx, Record(ledger.subjects_of(tenant, user, status.id), {"deploys": 1}, once=_once(ctx))
    )


def on_not_started(ctx: Ctx, event: RunNotStarted) -> None:
    """skipped and missed runs count as `skipped`; a deferred run is a run request that waits
    its turn: it counts in `runs` now (a flood of requests shows before any is admitted) and
    not again when admitted."""
    owner_tenant, user = _owner(ctx, event.flow_id)
    tenant = event.tenant or owner_tenant
    if not tenant:
        log.info("%s of unknown flow %s: not counted", ctx.event.type, event.flow_id)
        return
    subjects = ledger.subjects_of(tenant, user, event.flow_id)
    if ctx.event.type == RUN_DEFERRED:
        if event.run_id:
            op = watchdog.defer_op(event.run_id)
            _count(ctx, Record(subjects, {"runs": 1}, run=op, once=_once(ctx)))
        return
    _count(ctx, Record(subjects, {"skipped": 1}, once=_once(ctx)))


RUNS_WALK = "runs"
SUBJECTS_WALK = "subjects"
DECAY_WALK = "decay"


def tick(
    redis: Redis,
    policy: Policy,
    *,
    now: float,
    source: str,
    pod_usage: PodUsageSource | None = None,
    page_size: int = 200,
) -> list[penalties.Decision]:
    """One pass of the police, at most `page_size` runs and subjects (TICK_PAGE_SIZE): the
    overdue runs first (from the deadline index), then the next page of the watched runs
    (suspended subjects, run time) and of the active subjects (rules), from cursors kept in
    Redis; metrics; the decay of the next page of penalized subjects."""
    ring_windows = ledger.level_windows(policy)
    if not redis.exists(keys.policy_upgraded()):  # once: the previous release's keys
        moved = ledger.upgrade(redis, ring_windows)
        moved += penalties.upgrade(redis)
        log.info("penalty and ledger keys of users and flows now carry the tenant (%d)", moved)
    decisions = []
    overdue = watchdog.running(redis, watchdog.overdue_ids(redis, now=now, limit=page_size))
    timed_out = watchdog.timeouts(redis, overdue, now=now, ring_windows=ring_windows, source=source)
    for timeout in timed_out:
        decisions.append(
            penalties.escalate(
                redis,
                policy.penalties,
                level="flow",
                subject_id=timeout.run.flow,
                tenant=timeout.run.tenant,
                evidence=Evidence(
                    rule=watchdog.TIMEOUT_RULE,
                    measured=timeout.elapsed,
                    limit=timeout.run.limit,
                    window=f"{round(timeout.run.limit)}s",
                    window_seconds=timeout.run.limit,
                ),
                now=now,
                source=source,
            )
        )
    walked = tick_cursor.page(redis, keys.POLICY, RUNS_WALK, watchdog.watched_ids(redis), page_size)
    remaining = [run for run in watchdog.running(redis, walked) if run.deadline > now]
    stopped = {
        run.run_id
        for run in watchdog.suspended_runs(redis, remaining)
        if watchdog.end(
            redis,
            run,
            now=now,
            ring_windows=ring_windows,
            source=source,
            reason=watchdog.SUSPENDED_REASON,
        )
    }
    remaining = [run for run in remaining if run.run_id not in stopped]
    watchdog.accrue(redis, remaining, now=now, ring_windows=ring_windows)
    if pod_usage is not None:
        try:
            metrics_reader.read_once(redis, pod_usage, now=now, ring_windows=ring_windows)
        except OrchestratorError as exc:  # the rest of the tick must still happen
            log.warning("pod metrics not read: %s", exc)
    horizon = now - max(ledger.windows(policy))
    active = {s.member(): s for s in ledger.active_subjects(redis, since=horizon)}
    page = tick_cursor.page(redis, keys.POLICY, SUBJECTS_WALK, active, page_size)
    decisions += police(redis, policy, [active[m] for m in page], now=now, source=source)
    network.publish(redis, policy, list(active.values()), now=now)
    penalized = tick_cursor.page(
        redis, keys.POLICY, DECAY_WALK, penalties.penalized_members(redis), page_size
    )
    decisions += penalties.decay_all(
        redis, policy.penalties, now=now, source=source, members=penalized
    )
    ledger.forget_inactive(redis, before=horizon)
    return decisions


def on_tick(ctx: Ctx) -> None:
    tick(
        ctx.redis,
        ctx.policy,
        now=ctx.clock.now(),
        source=ctx.source,
        pod_usage=ctx.services.pod_usage,
        page_size=ctx.settings.tick_page_size,
    )


HANDLERS: dict[str, Handler[PolicyServices]] = {
    TICK: on_tick,
    RUN_ADMITTED: on_admitted,
    RUN_COMPLETED: on_ended,
    RUN_FAILED: on_ended,
    USAGE_REPORTED: on_usage,
    FLOW_STARTED: on_deployment,
    FLOW_FAILED: on_deployment,
    FLOW_STOPPED: on_deployment,
    RUN_SKIPPED: on_not_started,
    RUN_DEFERRED: on_not_started,
    RUN_MISSED: on_not_started,
}

SPEC: FunctionSpec[PolicyServices] = FunctionSpec(
    name="policy-check", tag=keys.POLICY, handlers=HANDLERS, build_services=build_services
)
