"""step-execute (docs/architecture.md §5): runs each admitted flow's graph through the step queues.

- `flow.execution.admitted`: create the run record and publish the start nodes' messages;
- `step.completed`: route the output along the edges (conditions, mappers, joins); complete
  the run when nothing is pending (`flow.execution.completed` with the fencing token);
- `step.failed` and step timeouts: retry with backoff, then dead-letter and fail the run;
- `flow.stopping`: running runs of the flow fail (reason `stopped`), their messages are
  dead-lettered, the flow's queues dropped;
- `flow.execution.failed` from elsewhere (the watchdog): the run ends the same way, without a
  second terminal event; our own terminal events coming back are ignored;
- tick: step timeouts, delayed publishes (rates, backoff), reclaim of unacknowledged queue
  entries, `usage.reported` for policy-check, the next page of the tenants' queued-bytes
  gauge (shared/execution/queued_bytes.py; read by `step.completed` for `max_queued_bytes`).
Publishing happens after the state change is stored (shared/execution/publisher.py); a publish
that fails is retried by the next event or tick, never lost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError

from shared import keys
from shared.clock import Clock
from shared.errors import Forbidden, OrchestratorError, OverBudget
from shared.events import RunAdmitted, RunEnded, StepResult
from shared.events import types as t
from shared.events.payloads import FlowRef
from shared.execution import queued_bytes, routing, runs, upkeep
from shared.execution.publisher import Publisher
from shared.execution.routing import Graph, RoutingError
from shared.model import flows
from shared.ports.queue import StepQueue
from shared.ports.step_message import first_step_message
from shared.runtime.function import Context, FunctionSpec, Handler
from shared.runtime.idempotency import Once
from shared.settings import Settings
from shared.wiring.queues import make_step_queue

log = logging.getLogger(__name__)

PUBLISH_LIMIT_PER_EVENT = 2_000


@dataclass
class StepExecuteServices:
    queue: StepQueue
    publisher: Publisher
    retention_seconds: float = runs.DEFAULT_RETENTION_SECONDS
    # Knative ticks once a minute: the tick handler keeps publishing delayed messages and
    # expiring timeouts for this long. 0 where the clock ticks every second (local, tests).
    tick_work_seconds: float = 0.0
    reclaim_idle_seconds: float = 120.0
    graphs: runs.RunGraphs = field(default_factory=runs.RunGraphs)


def build_services(settings: Settings, clock: Clock, redis: Redis) -> StepExecuteServices:
    queue = make_step_queue(settings, redis, clock)
    return StepExecuteServices(
        queue=queue,
        publisher=Publisher(redis, queue, clock, settings.orchestrator_key),
        retention_seconds=max(settings.run_retention_seconds, 60.0),
        tick_work_seconds=settings.step_tick_work_seconds,
        reclaim_idle_seconds=settings.step_reclaim_idle_seconds,
    )


Ctx = Context[StepExecuteServices]


def publish_due(ctx: Ctx) -> int:
    """Publishes due messages; a failure is logged and left to the next event or tick."""
    try:
        return ctx.services.publisher.drain(ctx.policy, limit=PUBLISH_LIMIT_PER_EVENT)
    except (OrchestratorError, RedisError) as exc:
        log.warning("step messages not published now (retried on tick): %s", exc)
        return 0


# --- flow.execution.admitted ------------------------------------------------------------------
def on_admitted(ctx: Ctx, admitted: RunAdmitted) -> None:
    stored = flows.get(ctx.redis, admitted.flow_id, include_stopped=True)
    reason: str | None = None
    graph: Graph | None = None
    if stored is None:
        reason = "flow_not_found"
    elif stored.stopped:
        reason = "stopped"
    else:
        graph = Graph.from_flow(stored.flow)
        if not graph.start_nodes():
            reason = "no_start_node"
    if reason is not None or graph is None:
        _not_started(ctx, admitted, reason or "flow_not_found")
        return
    data, context = first_step_message(admitted.msg)
    try:
        data_json = routing.encode(data)
        context_json = routing.encode(context) if context else ""
    except RoutingError as exc:
        _not_started(ctx, admitted, "bad_message")
        log.warning("run %s: %s", admitted.run_id, exc.message)
        return
    now = ctx.clock.now()
    outcome = runs.start(
        ctx.redis,
        ctx.once,
        admitted=admitted,
        graph=graph,
        messages=runs.start_messages(admitted.run_id, graph, data_json),
        limits=ctx.policy.tenant(admitted.tenant),
        now=now,
        context_json=context_json,
    )
    log.info("run %s of flow %s: %s", admitted.run_id, admitted.flow_id, outcome)
    publish_due(ctx)


def _not_started(ctx: Ctx, admitted: RunAdmitted, reason: str) -> None:
    """The run cannot start: it fails at once, so flow-start releases its lease and slot."""
    if runs.get(ctx.redis, admitted.run_id) is not None:
        ctx.commit(None)
        return
    now = ctx.clock.now()
    event = ctx.new_event(
        t.RUN_FAILED,
        RunEnded(
            flow_id=admitted.flow_id,
            run_id=admitted.run_id,
            tenant=admitted.tenant,
            fencing_token=admitted.fencing_token,
            reason=reason,
            user=admitted.user or None,
        ),
        tenant=admitted.tenant,
        flow_id=admitted.flow_id,
        run_id=admitted.run_id,
        event_id=f"run-end-{admitted.run_id}",
    )

    def write(pipe: Pipeline) -> None:
        runs.record_not_started(
            pipe,
            admitted,
            reason=reason,
            now=now,
            retention_seconds=ctx.services.retention_seconds,
        )

    ctx.commit(write, [event])
    log.warning("run %s of flow %s not started: %s", admitted.run_id, admitted.flow_id, reason)


# --- step.completed / step.failed -------------------------------------------------------------
def _running(ctx: Ctx, result: StepResult) -> runs.RunGraph | None:
    run = ctx.services.graphs.get(ctx.redis, result.run_id)
    if run is None:
        ctx.commit(None)  # the run ended (or never existed here): nothing to route
        log.info("step result for run %s ignored: not running", result.run_id)
        return None
    if ctx.principal.tenant is not None and ctx.principal.tenant != run.tenant:
        raise Forbidden("step token belongs to another tenant than the run")
    return run


def on_step_completed(ctx: Ctx, result: StepResult) -> None:
    run = _running(ctx, result)
    if run is None:
        return
    now = ctx.clock.now()
    try:
        # Without a claim check (Redis Streams) a step message is bounded; SQS stores big
        # bodies in S3.
        limit = None if ctx.settings.queue_backend == "sqs" else routing.MAX_MESSAGE_BYTES
        routes = (
            []
            if result.empty
            else routing.route(
                run.graph,
                result.step_id,
                result.data,
                max_bytes=limit,
                max_value_bytes=ctx.settings.jsonata_max_value_bytes,
            )
        )
    except RoutingError as exc:
        outcome = _fail(ctx, run, result, mode="abort", error=exc.message, reason="routing_error")
    else:
        outcome = runs.record_output(
            ctx.redis,
            ctx.once,
            run=run,
            result=result,
            routes=routes,
            now=now,
            retention_seconds=ctx.services.retention_seconds,
            source=ctx.source,
            max_pending=ctx.policy.tenant(run.tenant).max_pending_messages_per_run,
            max_queued_bytes=(
                ctx.policy.tenant(run.tenant).max_queued_bytes
                if ctx.settings.queue_backend == "redis"
                else None  # the queues are not in Redis: the gauge measures nothing
            ),
        )
    if outcome == "wrong_step":
        raise Forbidden("the message belongs to another step or run than the step token")
    if outcome == "over_budget":  # nothing changed: the worker sends it again later
        limit = ctx.policy.tenant(run.tenant).max_pending_messages_per_run
        raise OverBudget(
            "max_pending_messages_per_run",
            f"run {result.run_id!r} has {limit} pending messages (max_pending_messages_per_run)",
        )
    if outcome == "over_queued_bytes":  # nothing changed: the worker sends it again later
        limit = ctx.policy.tenant(run.tenant).max_queued_bytes
        raise OverBudget(
            "max_queued_bytes",
            f"tenant {run.tenant!r} has more than {limit} bytes queued (max_queued_bytes)",
        )
    if outcome in ("completed", "failed"):
        log.info("run %s %s", result.run_id, outcome)
    if outcome != "routed":
        return
    if run.graph.joins:
        publish_due(ctx)  # a join may have fired: read what is due
    elif routes:
        _publish_created(ctx, run, result, routes)
    # else nothing new is due: delayed messages wait for the tick


def _publish_created(
    ctx: Ctx, run: runs.RunGraph, result: StepResult, routes: list[routing.Route]
) -> None:
    """Publishes the messages this output just created, as the script stored them."""
    rows = {
        message.message_id: {
            "run": result.run_id, "flow": run.flow_id, "step": message.step_id,
            "tenant": run.tenant, "user": run.user, "attempt": "0", "data": message.data_json,
        }
        for message in runs.new_messages(result, routes)
    }  # fmt: skip
    try:
        ctx.services.publisher.publish_created(ctx.policy, rows)
    except (OrchestratorError, RedisError) as exc:
        log.warning("step messages not published now (retried on tick): %s", exc)


def on_step_failed(ctx: Ctx, result: StepResult) -> None:
    run = _running(ctx, result)
    if run is None:
        return
    outcome = _fail(
        ctx, run, result, mode="failed", error=result.error or "step failed", reason="step_failed"
    )
    if outcome == "wrong_step":
        raise Forbidden("the message belongs to another step or run than the step token")
    log.info("step %s of run %s failed: %s", result.step_id, result.run_id, outcome)
    # a retry is due after its backoff: the tick (or the next routing event) publishes it


def _fail(
    ctx: Ctx, run: runs.RunGraph, result: StepResult, *, mode: runs.FailMode, error: str,
    reason: str,
) -> str:  # fmt: skip
    return runs.fail(
        ctx.redis,
        runs.Failure(
            ctx.once,
            run_id=result.run_id,
            flow_id=run.flow_id,
            graph=run.graph,
            mode=mode,
            message=result.message_id,
            step=result.step_id,
            attempt=result.attempt,
            error=error,
            reason=reason,
            now=ctx.clock.now(),
            retention_seconds=ctx.services.retention_seconds,
            source=ctx.source,
        ),
    )


# --- flow.stopping and terminal events from elsewhere -----------------------------------------
def on_flow_stopping(ctx: Ctx, flow: FlowRef) -> None:
    ended = 0
    for run_id in runs.running_of_flow(ctx.redis, flow.id):
        run = runs.load(ctx.redis, run_id)
        once = Once.keyed(
            ctx.redis, keys.EXECUTION, "step-execute", ctx.event.source, ctx.event.id, run_id
        )
        outcome = runs.fail(
            ctx.redis,
            runs.Failure(
                once,
                run_id=run_id,
                flow_id=flow.id,
                graph=run.graph if run else None,
                mode="end",
                error="flow stopped",
                reason="stopped",
                emit=True,
                now=ctx.clock.now(),
                retention_seconds=ctx.services.retention_seconds,
                source=ctx.source,
            ),
        )
        ended += outcome == "failed"
    dropped = upkeep.drop_flow_queues(ctx.redis, ctx.services.queue, flow.id)
    ctx.commit(None)
    log.info("flow %s stopping: %d run(s) ended, %d queue(s) dropped", flow.id, ended, dropped)


def on_run_ended(ctx: Ctx, ended: RunEnded) -> None:
    if ctx.event.source == ctx.source or ctx.event.type != t.RUN_FAILED:
        ctx.commit(None)  # our own terminal events; only step-execute completes runs
        return
    run = runs.load(ctx.redis, ended.run_id)
    outcome = runs.fail(
        ctx.redis,
        runs.Failure(
            ctx.once,
            run_id=ended.run_id,
            flow_id=ended.flow_id,
            graph=run.graph if run else None,
            mode="end",
            error=f"ended by {ctx.event.source}",
            reason=ended.reason or "failed",
            emit=False,  # the sender (the watchdog) already emitted the terminal event
            fencing_token=ended.fencing_token,
            now=ctx.clock.now(),
            retention_seconds=ctx.services.retention_seconds,
            source=ctx.source,
        ),
    )
    log.info("run %s ended by %s (%s): %s", ended.run_id, ctx.event.source, ended.reason, outcome)


# --- tick -------------------------------------------------------------------------------------
def on_tick(ctx: Ctx) -> None:
    started = ctx.clock.now()
    upkeep.reclaim(ctx.redis, ctx.services.queue, idle_seconds=ctx.services.reclaim_idle_seconds)
    while True:
        upkeep.expire_timeouts(
            ctx.redis,
            now=ctx.clock.now(),
            retention_seconds=ctx.services.retention_seconds,
            source=ctx.source,
        )
        publish_due(ctx)
        remaining = ctx.services.tick_work_seconds - (ctx.clock.now() - started)
        wait = upkeep.next_work_in(ctx.redis, now=ctx.clock.now())
        if remaining <= 0 or wait is None or wait >= remaining:
            break
        ctx.clock.sleep(max(wait, 0.05))
    upkeep.report_usage(ctx.redis, now=ctx.clock.now(), source=ctx.source)
    if ctx.settings.queue_backend == "redis":  # the next page of the queued-bytes gauge
        queued_bytes.measure(ctx.redis, page_size=ctx.settings.tick_page_size, now=ctx.clock.now())
    runs.trim_recent(
        ctx.redis, now=ctx.clock.now(), retention_seconds=ctx.services.retention_seconds
    )


HANDLERS: dict[str, Handler[StepExecuteServices]] = {
    t.RUN_ADMITTED: on_admitted,
    t.STEP_COMPLETED: on_step_completed,
    t.STEP_FAILED: on_step_failed,
    t.FLOW_STOPPING: on_flow_stopping,
    t.RUN_COMPLETED: on_run_ended,
    t.RUN_FAILED: on_run_ended,
    t.TICK: on_tick,
}

SPEC: FunctionSpec[StepExecuteServices] = FunctionSpec(
    name=t.STEP_EXECUTE,
    tag=keys.EXECUTION,
    handlers=HANDLERS,
    build_services=build_services,
    tick_seconds=lambda settings: settings.step_tick_work_seconds,
)
