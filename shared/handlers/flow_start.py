"""flow-start (docs/architecture.md §5): cron scheduling, overlap protection and fair admission.

| event                                  | does                                                 |
|----------------------------------------|------------------------------------------------------|
| flow.starting                          | checks cron and zone (400, nothing stored), stores    |
|                                        | the flow and its schedule                             |
| flow.stopping                          | tombstone; drops schedule and waiting runs            |
| flow.execute                           | admits or queues the run (429 over the waiting cap,   |
|                                        | 422 for an unknown flow)                              |
| flow.started / failed / stopped        | deployment state: only deployed flows run             |
| flow.execution.completed / failed      | releases slot and lease (fencing token checked) and   |
|                                        | admits the next waiting runs                          |
| tenant.throttled/deprioritized/        | dispatch (the penalties themselves are read at every  |
| suspended/restored                     | decision)                                             |
| orchestrator.tick                      | reclaims expired slots, dispatches, fires due times;  |
|                                        | with `work_through_seconds` it keeps firing entries   |
|                                        | as they come due until then (Knative: 1 tick/min)     |
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass

from redis import Redis

from shared import keys
from shared.admission import cron as admission_cron
from shared.admission import lease, schedule
from shared.admission import outbox as admission_outbox
from shared.admission import queue as admission
from shared.clock import Clock
from shared.events import DeploymentStatus, FlowDocument, FlowExecute, FlowRef, RunEnded
from shared.events import types as t
from shared.model import flows
from shared.ports.step_message import execute_message, from_scheduler, scheduled_at
from shared.ports.users import UserDirectory
from shared.runtime.flow_user import flow_user, run_user, speaks_for_others
from shared.runtime.function import Context, FunctionSpec, Handler
from shared.runtime.outbox import EventSender, HttpSender
from shared.settings import Settings
from shared.wiring.users import make_user_directory

log = logging.getLogger(__name__)

MAX_NAP_SECONDS = 1.0  # look again at least this often (new schedules, freed slots)


@dataclass(frozen=True)
class Services:
    work_through_seconds: float = 0.0
    sender: EventSender | None = None  # sends a tick's events in parallel (and mid-minute)
    batch: int = admission_cron.BATCH
    users: UserDirectory | None = None  # confirms the `startedBy` user admins name


def build_services(settings: Settings, clock: Clock, redis: Redis) -> Services:
    work_through = settings.flow_start_work_through_seconds
    sender = None
    if settings.k_sink:  # sends a tick's events as they are decided (the process's one pool)
        sender = HttpSender(
            settings.k_sink, key=settings.orchestrator_key, sender_name="flow-start", clock=clock
        )
    return Services(
        work_through_seconds=work_through, sender=sender, users=make_user_directory(settings)
    )


def _inputs(ctx: Context[Services]) -> admission.Inputs:
    return admission.read_inputs(ctx.redis, ctx.policy)


# --- flows ---------------------------------------------------------------------------------
def on_flow_starting(ctx: Context[Services], flow: FlowDocument) -> None:
    hub_owns_cron = ctx.settings.cron_owner == "hub"
    if flow.cron is not None and not hub_owns_cron:  # the hub's scheduler reads it otherwise
        schedule.check(  # 400 naming it; nothing stored
            flow.cron,
            flow.timezone,
            min_interval_seconds=ctx.settings.cron_min_interval_seconds,
        )
    user = flow_user(
        ctx.principal,
        flow,
        directory=ctx.services.users,
        service_accounts=ctx.settings.hub_service_accounts,
    )
    flow = flow.with_user(user)  # the schedule's runs are this user's
    max_flows = ctx.policy.tenant(flow.tenant).max_flows
    if flows.upsert(ctx.redis, flow, ctx.event.time, max_flows=max_flows) == "stale":
        log.info("flow %s: older than the stored version, schedule unchanged", flow.id)
        ctx.commit(None)
        return
    # CRON_OWNER=hub: no schedule of ours (one stored before is dropped); the hub's scheduler
    # sends a flow.execute per due time (on_execute)
    scheduled = dataclasses.replace(flow, cron=None) if hub_owns_cron else flow
    result = admission_cron.store_schedule(
        ctx.redis, _inputs(ctx), ctx.once, scheduled, now=ctx.clock.now(), source=ctx.source
    )
    log.info("flow %s: schedule %s", flow.id, result)


def on_flow_stopping(ctx: Context[Services], ref: FlowRef) -> None:
    flows.tombstone(
        ctx.redis,
        ref.id,
        ctx.event.time,
        now=ctx.clock.now(),
        ttl_seconds=ctx.settings.flow_tombstone_ttl_seconds,
    )
    dropped = admission.drop_flow(
        ctx.redis, _inputs(ctx), ctx.once, flow_id=ref.id, now=ctx.clock.now(), source=ctx.source
    )
    log.info("flow %s stopped: schedule and %d waiting runs dropped", ref.id, dropped)


def on_deployment(ctx: Context[Services], status: DeploymentStatus) -> None:
    admission.set_deployment(
        ctx.redis,
        _inputs(ctx),
        ctx.once,
        flow_id=status.id,
        started=ctx.event.type == t.FLOW_STARTED,
        now=ctx.clock.now(),
        source=ctx.source,
    )


# --- runs ----------------------------------------------------------------------------------
def execute_run_id(ctx: Context[Services], flow_id: str) -> str:
    """Derived from the incoming event's identity: a redelivery names the same run."""
    return f"{flow_id}~{ctx.once.event_id_prefix[:20]}"


def _hub_cron_run(ctx: Context[Services], request: FlowExecute) -> bool:
    """With CRON_OWNER=hub, a flow.execute of the hub's scheduler is a cron run (skip,
    overlap, fairness as our ticks' runs), when it comes from the hub (its service account
    or an admin, or anyone with auth off); any other flow.execute is a start with data."""
    if ctx.settings.cron_owner != "hub" or not from_scheduler(request.msg):
        return False
    if ctx.principal.kind != "iam":
        return ctx.principal.kind == "auth-off"
    return speaks_for_others(ctx.principal, ctx.settings.hub_service_accounts)


def on_execute(ctx: Context[Services], request: FlowExecute) -> None:
    stored, inputs = admission.read_flow_and_inputs(ctx.redis, ctx.policy, request.flow_id)
    if stored is None:
        raise flows.unknown_flow(request.flow_id)
    flow = stored.flow
    # the caller; for an admin or the hub's service account the `startedBy` user it names,
    # once the IAM confirms it (403 before anything is stored), else the flow's user as
    # decided when it was started (shared/runtime/flow_user.py)
    started_by = request.flow.started_by if request.flow is not None else None
    user = run_user(
        ctx.principal,
        flow,
        started_by,
        directory=ctx.services.users,
        service_accounts=ctx.settings.hub_service_accounts,
    )
    if started_by is not None:  # the IAM may have been asked meanwhile: penalties read anew
        inputs = _inputs(ctx)
    limits = ctx.policy.tenant(flow.tenant)
    msg_json = json.dumps(execute_message(request.msg, request.msg_opts), separators=(",", ":"))
    if _hub_cron_run(ctx, request):
        due = schedule.parse_instant(request.flow.due_execution if request.flow else None)
        due = due or schedule.parse_instant(scheduled_at(request.msg)) or ctx.clock.now()
        hub_run = admission_cron.HubRun(
            flow_id=flow.id,
            due=due,
            limit_seconds=lease.run_limit(flow.settings.max_run_seconds, limits),
            overlap=flow.settings.overlap_policy or limits.overlap_policy,
            tenant=flow.tenant,
            user=user,
            msg_json=msg_json,
        )
        fired = admission_cron.fire_hub_run(
            ctx.redis, inputs, ctx.once, hub_run, now=ctx.clock.now(), source=ctx.source
        )
        log.info("flow %s: the hub scheduler's due time %d %s", flow.id, int(due), fired)
        return
    run = admission.ExecuteRun(
        run_id=execute_run_id(ctx, flow.id),
        flow_id=flow.id,
        tenant=flow.tenant,
        user=user,
        limit_seconds=lease.run_limit(flow.settings.max_run_seconds, limits),
        msg_json=msg_json,
    )
    result, _ = admission.execute(
        ctx.redis, inputs, ctx.once, run, now=ctx.clock.now(), source=ctx.source
    )
    log.info("flow %s run %s: %s", flow.id, run.run_id, result)


def on_run_ended(ctx: Context[Services], ended: RunEnded) -> None:
    result, admitted = admission.release(
        ctx.redis,
        _inputs(ctx),
        ctx.once,
        run_id=ended.run_id,
        token=ended.fencing_token,
        now=ctx.clock.now(),
        source=ctx.source,
    )
    level = logging.WARNING if result == "stale" else logging.INFO
    log.log(level, "run %s ended: %s, %d admitted", ended.run_id, result, admitted)


def on_penalty(ctx: Context[Services]) -> None:
    """Penalties are read at every decision; a change (restored above all) may free runs."""
    admission.dispatch(ctx.redis, _inputs(ctx), ctx.once, now=ctx.clock.now(), source=ctx.source)


# --- tick ----------------------------------------------------------------------------------
def tick_once(ctx: Context[Services]) -> admission_cron.FireReport:
    """One round: reclaim expired slots, dispatch, fire what is due now."""
    now = ctx.clock.now()
    inputs = _inputs(ctx)
    if ctx.settings.cron_owner == "hub":  # the hub's scheduler fires; we schedule nothing
        admission.dispatch(ctx.redis, inputs, None, now=now, source=ctx.source)
        return admission_cron.FireReport()
    return admission_cron.fire_due(  # dispatch first, in the round trip of the first read
        ctx.redis,
        inputs,
        ctx.policy,
        now=now,
        source=ctx.source,
        batch=ctx.services.batch,
        dispatch=True,
    )


def on_tick(ctx: Context[Services]) -> None:
    """Fires due entries; with work-through, keeps firing them as they come due until the
    end of the window, so due → admitted stays within about a second with minute ticks."""
    end = ctx.clock.now() + ctx.services.work_through_seconds
    # Once per store: tombstones and tenant flow sets of the previous release (CHANGELOG.md).
    flows.upgrade(ctx.redis, ttl_seconds=ctx.settings.flow_tombstone_ttl_seconds)
    while True:
        tick_once(ctx)
        if ctx.services.sender is not None:
            admission_outbox.flush_parallel(ctx.redis, ctx.services.sender)
        now = ctx.clock.now()
        if now >= end - MAX_NAP_SECONDS / 2:
            return
        upcoming = admission_cron.next_due_time(ctx.redis)
        wake = min(end, now + MAX_NAP_SECONDS, upcoming if upcoming is not None else end)
        if wake >= end:
            return
        ctx.clock.sleep(max(0.0, wake - now))


HANDLERS: dict[str, Handler[Services]] = {
    t.FLOW_STARTING: on_flow_starting,
    t.FLOW_STOPPING: on_flow_stopping,
    t.FLOW_EXECUTE: on_execute,
    t.TICK: on_tick,
    **dict.fromkeys(t.DEPLOYMENT_STATUS_TYPES, on_deployment),
    **dict.fromkeys(t.RUN_ENDED_TYPES, on_run_ended),
    **dict.fromkeys(t.PENALTY_TYPES, on_penalty),
}

SPEC: FunctionSpec[Services] = FunctionSpec(
    name="flow-start",
    tag=keys.ADMISSION,
    handlers=HANDLERS,
    build_services=build_services,
    tick_seconds=lambda settings: settings.flow_start_work_through_seconds,
)
