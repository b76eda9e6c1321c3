"""deploy (docs/architecture.md §5): desired state → Kubernetes (or local processes), never twice.

- flow.starting / component.starting: compute the desired objects, apply them under the
  target's lock unless the same desired state is already applied, record `deploying` with
  the DEPLOY_READY_TIMEOUT deadline, wait briefly; `started` only once every replica is Ready.
  A component that does not exist or objects the API refuses → `failed` (objects removed).
- flow.stopping / component.stopping: delete exactly that target's objects, then `stopped`.
- tenant.* penalty events: reconcile the flows of the subject (suspension → 0 replicas).
- orchestrator.tick: reconcile the next TICK_PAGE_SIZE targets (drift, readiness, deadline),
  then look at the next page of our labelled objects and delete those that belong to no live
  target; never anything without our label. Cursors in Redis carry the walk to the next tick.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace

from shared import keys
from shared.deployment import records as deploy_records
from shared.deployment.desired_state import (
    DesiredState,
    component_desired_state,
    credential_id,
    desired_hash,
    flow_desired_state,
)
from shared.deployment.reconcile import (
    Deployer,
    HeldLock,
    commit_transition,
    selector,
    target_of,
)
from shared.deployment.records import TargetRecord
from shared.deployment.services import DeployServices
from shared.errors import Forbidden, PermanentError, TemporaryError
from shared.events import (
    ComponentRef,
    ComponentStatus,
    DeploymentStatus,
    FlowDocument,
    FlowRef,
    OutgoingEvent,
    PenaltyChanged,
)
from shared.events import types as t
from shared.model import flows
from shared.ports.components import Component, ComponentNotFound
from shared.ports.driver import KINDS, DriverRejected, ObservedObject
from shared.runtime import metrics, tick_cursor
from shared.runtime.flow_user import flow_user, speaks_for_others
from shared.runtime.function import Context, FunctionSpec, Handler
from shared.security.redact import redact_text
from shared.wiring.deploy import build_services

log = logging.getLogger(__name__)

Ctx = Context[DeployServices]


def _deployer(ctx: Ctx) -> Deployer:
    return Deployer(
        ctx.redis,
        ctx.services,
        ctx.clock,
        ctx.settings.deploy_ready_timeout,
        writable_root=ctx.policy.writable_root_components,
    )


# ---- events ----------------------------------------------------------------------------------
def _status_event(ctx: Ctx, record: TargetRecord, *, event_id: str | None = None) -> OutgoingEvent:
    started = record.status == "started"
    # Reasons quote the API and the pods' last words, which may carry a token: mask them.
    failure = redact_text(record.reason) or None
    if record.kind == "component":
        event_type = t.COMPONENT_STARTED if started else t.COMPONENT_FAILED
        payload = ComponentStatus(id=record.id, reason=None if started else failure)
        return ctx.new_event(event_type, payload, event_id=event_id)
    reason = failure
    if started and record.clamped:
        reason = "replicas clamped by tenant limits: " + ", ".join(record.clamped)
    status = DeploymentStatus(
        id=record.id,
        replicas=dict(record.replicas) if started else {},
        clamped=bool(record.clamped),
        reason=reason,
    )
    return ctx.new_event(
        t.FLOW_STARTED if started else t.FLOW_FAILED,
        status,
        tenant=record.tenant or None,
        flow_id=record.id,
        event_id=event_id,
    )


def _transition_id(record: TargetRecord) -> str:
    """The same id however often a tick (or several) reaches this transition."""
    return "dep-" + keys.digest(
        record.member, record.desired_hash, record.status, repr(record.since)
    )


# ---- start -----------------------------------------------------------------------------------
def _fail(
    ctx: Ctx, deployer: Deployer, kind: str, target_id: str, reason: str, tenant: str, user: str
) -> None:
    """The target cannot run: record `failed`, say so, then remove whatever it has."""
    record = TargetRecord(
        kind="flow" if kind == "flow" else "component",
        id=target_id,
        status="failed",
        desired_hash="",
        since=ctx.clock.now(),
        tenant=tenant,
        user=user,
        reason=redact_text(reason),
    )
    log.warning("%s %s failed: %s", kind, target_id, reason)
    ctx.commit(lambda pipe: deploy_records.write(pipe, record), [_status_event(ctx, record)])
    _remove_quietly(deployer, kind, target_id)


def _remove_quietly(deployer: Deployer, kind: str, target_id: str) -> None:
    """Removes a failed target's objects and its workers' queue user; if the API (or Redis) is
    down, the tick's collector will."""
    try:
        deployer.remove(kind, target_id)
        deployer.revoke(kind, target_id)
    except TemporaryError as exc:
        log.warning("could not remove the objects of %s %s yet: %s", kind, target_id, exc.message)


def _deploy(
    ctx: Ctx,
    deployer: Deployer,
    held: HeldLock | None,
    desired: DesiredState,
    existing: TargetRecord | None,
) -> None:
    same = _unchanged(existing, desired)
    if same and existing is not None:
        record = existing
    else:
        record = TargetRecord.deploying(
            desired, now=ctx.clock.now(), timeout=ctx.settings.deploy_ready_timeout
        )
    is_suspended = deployer.is_suspended(record)
    manifests = deployer.effective(record, is_suspended)
    wanted = desired_hash(manifests)
    if same and record.applied_hash == wanted:
        log.info("%s: desired state unchanged, nothing to apply", record.member)
        ctx.commit(None)
        return
    # Stored before any object exists, so the garbage collector never sees ours unowned.
    deploy_records.write(ctx.redis, replace(record, suspended=is_suspended))
    try:
        if existing is not None:  # an update may leave the objects of removed (or renamed)
            # steps behind: removed first, so a renamed step never runs under both names
            names = frozenset((m["kind"], m["metadata"]["name"]) for m in manifests)
            deployer.remove(record.kind, record.id, keep=names)
        deployer.apply(record, manifests, held)
    except DriverRejected as exc:
        _fail(ctx, deployer, record.kind, record.id, exc.message, record.tenant, record.user)
        return
    record = replace(record, applied_hash=wanted, suspended=is_suspended)
    events = []
    if record.status == "deploying" and not is_suspended and deployer.wait_ready(record, manifests):
        deploying_since = record.since
        record = record.with_status("started", now=ctx.clock.now())
        events.append(_status_event(ctx, record))
        metrics.observe_deploy("started", record.since - deploying_since)
    final = record
    ctx.commit(lambda pipe: deploy_records.write(pipe, final), events)


def on_flow_starting(ctx: Ctx, flow: FlowDocument) -> None:
    # Before anything is stored: a user the caller may not act for is a 403 with nothing done.
    user = flow_user(
        ctx.principal,
        flow,
        directory=ctx.services.users,
        service_accounts=ctx.settings.hub_service_accounts,
    )
    flow = flow.with_user(user)
    max_flows = ctx.policy.tenant(flow.tenant).max_flows
    if flows.upsert(ctx.redis, flow, ctx.event.time, max_flows=max_flows) == "stale":
        log.info("flow.starting for %s is older than what is stored: ignored", flow.id)
        ctx.commit(None)
        return
    deployer = _deployer(ctx)
    with deployer.locked("flow", flow.id) as held:
        existing = deploy_records.load(ctx.redis, "flow", flow.id)
        try:
            components = {
                cid: _usable(ctx.services.components.get(cid), cid, flow)
                for cid in sorted({node.component_id for node in flow.nodes})
            }
            credentials = ctx.services.credentials
            desired = _flow_desired(ctx, flow, components, credentials.generation(flow.id))
            if not _unchanged(existing, desired):
                # What runs changes: its workers get new queue credentials (the pods roll).
                desired = _flow_desired(ctx, flow, components, credentials.rotate(flow.id))
        except PermanentError as exc:
            _fail(ctx, deployer, "flow", flow.id, exc.message, flow.tenant, flow.user)
            return
        # Nodes of global components run in the component's Deployment: step-execute sends
        # their messages to its queue (written before anything runs, idempotent).
        flows.set_global_nodes(ctx.redis, flow.id, _global_nodes(flow, components))
        _want_globals(ctx, deployer, components)
        _deploy(ctx, deployer, held, desired, existing)


def _want_globals(ctx: Ctx, deployer: Deployer, components: dict[str, Component]) -> None:
    """A global component the flow uses that is not running (never started, or stopped since)
    is started as `component.starting` would start it: its record is written as deploying, so
    the next ticks apply its objects and announce `component.started` (reconcile); the flow's
    messages to it wait on its queue meanwhile, as the original orchestrator started it too
    (docs/oih.md, global components). The orchestrator acts here, not the caller: the flow
    may use the component (`_usable`), and no components.control is asked for."""
    for component_id, component in sorted(components.items()):
        if not component.is_global:
            continue
        with deployer.locked("component", component_id, wait=False) as held:
            if held is None:  # a component.starting or stopping works on it right now
                continue
            if deploy_records.load(ctx.redis, "component", component_id) is not None:
                continue
            desired = _component_desired(ctx, component_id, component, None)
            record = TargetRecord.deploying(
                desired, now=ctx.clock.now(), timeout=ctx.settings.deploy_ready_timeout
            )
            deploy_records.write(ctx.redis, record)
            log.info("global component %s is not running: started for its flows", component_id)


def _global_nodes(
    flow: FlowDocument, components: dict[str, Component]
) -> dict[str, flows.GlobalNode]:
    return {
        node.id: flows.GlobalNode(
            node.component_id,
            node.function,
            json.dumps(node.fields, sort_keys=True, separators=(",", ":")),
        )
        for node in flow.nodes
        if components[node.component_id].is_global
    }


def _usable(component: Component, component_id: str, flow: FlowDocument) -> Component:
    """A flow may use a public component or its tenant's own; another tenant's private one is
    answered as if it did not exist (the flow fails with that reason, nothing runs)."""
    if not component.usable_by(flow.tenant, flow.user):
        log.warning("flow %s: component %s is private to another tenant", flow.id, component_id)
        raise ComponentNotFound(component_id)
    return component


def _may_control(ctx: Ctx, component_id: str) -> None:
    """components.control is scoped by tenant: only admins (and the hub's service accounts,
    whose events the hub authorized) start or stop a component that is not the caller's
    tenant's own (docs/security.md). Raises Forbidden before anything is done."""
    principal = ctx.principal
    if principal.kind != "iam" or speaks_for_others(principal, ctx.settings.hub_service_accounts):
        return
    try:
        component = ctx.services.components.get(component_id)
    except ComponentNotFound:
        component = None
    if component is None or not component.owned_by(principal.tenant, principal.subject):
        raise Forbidden(f"component {component_id!r} does not belong to the caller's tenant")


def _unchanged(existing: TargetRecord | None, desired: DesiredState) -> bool:
    return existing is not None and existing.live and existing.desired_hash == desired.hash


def _flow_desired(
    ctx: Ctx, flow: FlowDocument, components: dict[str, Component], generation: int | None
) -> DesiredState:
    return flow_desired_state(
        flow,
        components,
        ctx.policy.tenant(flow.tenant),
        ctx.services.worker,
        replicas_elsewhere=deploy_records.replicas_elsewhere(ctx.redis, flow.tenant, flow.id),
        credentials_generation=generation,
        writable_root=ctx.policy.writable_root_components,
    )


def on_component_starting(ctx: Ctx, ref: ComponentRef) -> None:
    _may_control(ctx, ref.id)
    deployer = _deployer(ctx)
    with deployer.locked("component", ref.id) as held:
        existing = deploy_records.load(ctx.redis, "component", ref.id)
        try:
            component = ctx.services.components.get(ref.id)
            desired = _component_desired(ctx, ref.id, component, existing)
        except PermanentError as exc:
            _fail(ctx, deployer, "component", ref.id, exc.message, "", "")
            return
        _deploy(ctx, deployer, held, desired, existing)


def _component_desired(
    ctx: Ctx, component_id: str, component: Component, existing: TargetRecord | None
) -> DesiredState:
    """A global component's objects, with its own Redis queue user (the amqp backend has no
    global queue: docs/oih.md); new credentials when what runs changes (a new pod template)."""
    credentials = ctx.services.credentials
    who = credential_id("component", component_id)

    def desired_for(generation: int | None) -> DesiredState:
        return component_desired_state(
            component,
            ctx.policy.defaults,
            ctx.services.worker,
            writable_root=ctx.policy.writable_root_components,
            credentials_generation=generation,
        )

    redis_queue = ctx.settings.queue_backend == "redis"
    desired = desired_for(credentials.generation(who) if redis_queue else None)
    if redis_queue and not _unchanged(existing, desired):
        desired = desired_for(credentials.rotate(who))
    return desired


# ---- stop ------------------------------------------------------------------------------------
def _stop(ctx: Ctx, kind: str, target_id: str, event: OutgoingEvent | None) -> None:
    deployer = _deployer(ctx)
    with deployer.locked(kind, target_id):
        record = deploy_records.load(ctx.redis, kind, target_id)
        deployer.remove(kind, target_id)
        deployer.revoke(kind, target_id)
        if kind == "flow":
            ctx.services.tokens.revoke(target_id)
            flows.clear_global_nodes(ctx.redis, target_id)

        def forget(pipe: object) -> None:
            if record is not None:
                deploy_records.remove(pipe, record)  # type: ignore[arg-type]

        ctx.commit(forget, [event] if event is not None else [])


def on_flow_stopping(ctx: Ctx, ref: FlowRef) -> None:
    tenant = flows.tenant_of(ctx.redis, ref.id)
    ttl = ctx.settings.flow_tombstone_ttl_seconds
    if flows.tombstone(ctx.redis, ref.id, ctx.event.time, now=ctx.clock.now(), ttl_seconds=ttl) == (
        "stale"
    ):
        log.info("flow.stopping for %s is older than a newer start: ignored", ref.id)
        ctx.commit(None)
        return
    stopped = ctx.new_event(
        t.FLOW_STOPPED, DeploymentStatus(id=ref.id), tenant=tenant, flow_id=ref.id
    )
    _stop(ctx, "flow", ref.id, stopped)


def on_component_stopping(ctx: Ctx, ref: ComponentRef) -> None:
    _may_control(ctx, ref.id)
    _stop(ctx, "component", ref.id, ctx.new_event(t.COMPONENT_STOPPED, ComponentStatus(id=ref.id)))


# ---- reconcile -------------------------------------------------------------------------------
def _reconcile_one(
    ctx: Ctx,
    deployer: Deployer,
    kind: str,
    target_id: str,
    observed: Sequence[ObservedObject] | None,
    *,
    wait: bool,
    wanted_flows: set[str],
) -> None:
    with deployer.locked(kind, target_id, wait=wait) as held:
        if held is None:
            return  # an event is working on it; the next tick looks again
        record = deploy_records.load(ctx.redis, kind, target_id)
        if record is None or not record.live:
            return
        if record.kind == "flow" and record.id not in wanted_flows:
            # Stopped (tombstoned) before our flow.stopping arrived: it is not wanted.
            deployer.remove(kind, target_id)
            deployer.revoke(kind, target_id)
            deploy_records.remove(ctx.redis, record)
            return
        now = ctx.clock.now()
        try:
            # The listing too: an API failing past the deadline fails the target (below).
            record = deployer.upgraded(record)
            if observed is None:
                observed = deployer.driver.list_managed(selector(kind, target_id))
            after = deployer.reconcile(record, observed, held)
        except DriverRejected as exc:
            after = replace(record, applied_hash="").with_status(
                "failed", reason=exc.message, now=now
            )
        except TemporaryError as exc:
            if record.status != "deploying" or now < record.deadline:
                raise  # retried on the next tick
            reason = f"not deployed after {ctx.settings.deploy_ready_timeout:g}s: {exc.message}"
            after = replace(record, applied_hash="").with_status("failed", reason=reason, now=now)
        events = []
        if after.status != record.status:
            events.append(_status_event(ctx, after, event_id=_transition_id(after)))
        committed = after != record and commit_transition(ctx.redis, record, after, events)
        if committed and record.status == "deploying" and after.status != record.status:
            metrics.observe_deploy(after.status, now - record.since)
        if committed and after.status == "failed":
            _remove_quietly(deployer, kind, target_id)


def on_penalty(ctx: Ctx, change: PenaltyChanged) -> None:
    deployer = _deployer(ctx)
    records = deploy_records.of_subject(
        deploy_records.load_all(ctx.redis), change.subject.level, change.subject.id
    )
    wanted = flows.wanted_ids(ctx.redis)
    for record in records:
        _reconcile_one(ctx, deployer, record.kind, record.id, None, wait=True, wanted_flows=wanted)
    ctx.commit(None)


def on_tick(ctx: Ctx) -> None:
    """At most TICK_PAGE_SIZE targets reconciled and objects looked at per tick; the next
    tick goes on from the cursors (shared/runtime/tick_cursor.py)."""
    deployer = _deployer(ctx)
    size = ctx.settings.tick_page_size
    wanted = flows.wanted_ids(ctx.redis)
    members = [f"{kind}:{target_id}" for kind, target_id in deploy_records.members(ctx.redis)]
    for member in tick_cursor.page(ctx.redis, keys.DEPLOY, TARGETS_WALK, members, size):
        kind, _, target_id = member.partition(":")
        try:
            _reconcile_one(ctx, deployer, kind, target_id, None, wait=False, wanted_flows=wanted)
        except TemporaryError as exc:
            log.warning("reconcile of %s failed for now: %s", member, exc.message)
    _collect_page(ctx, deployer, size)


TARGETS_WALK = "targets"
OBJECTS_WALK = "objects"  # "<kind> <continue token>" of the garbage collector's listing


def _collect_page(ctx: Ctx, deployer: Deployer, size: int) -> None:
    """One page of our objects of one kind; those whose target has no live record are deleted.
    Objects first, records second: a record is always written before its objects, so an object
    listed here whose record is missing below truly has no owner."""
    # Deployments first: their pods stop before their Secrets and NetworkPolicies go.
    kinds = ("Deployment", *(kind for kind in KINDS if kind != "Deployment"))
    kind, _, token = tick_cursor.load(ctx.redis, keys.DEPLOY, OBJECTS_WALK).partition(" ")
    if kind not in kinds:
        kind, token = kinds[0], ""
    objects, token = deployer.driver.list_managed_page(kind, limit=size, token=token)
    if not token:  # this kind is done: the next tick lists the next one (or starts over)
        kind = kinds[(kinds.index(kind) + 1) % len(kinds)]
    tick_cursor.store(ctx.redis, keys.DEPLOY, OBJECTS_WALK, f"{kind} {token}")
    groups: dict[str, list[ObservedObject]] = defaultdict(list)
    for obj in objects:
        member = target_of(obj)
        if member is not None:
            groups[member].append(obj)
    for member in sorted(groups):
        target_kind, _, target_id = member.partition(":")
        with deployer.locked(target_kind, target_id, wait=False) as held:
            fresh = deploy_records.load(ctx.redis, target_kind, target_id)
            if held is None or (fresh is not None and fresh.live):
                continue  # owned, or a deploy of it has just begun
            try:
                deployer.remove(target_kind, target_id)
                deployer.revoke(target_kind, target_id)
            except TemporaryError as exc:
                log.warning("garbage collection of %s failed for now: %s", member, exc.message)


HANDLERS: dict[str, Handler[DeployServices]] = {
    t.FLOW_STARTING: on_flow_starting,
    t.FLOW_STOPPING: on_flow_stopping,
    t.COMPONENT_STARTING: on_component_starting,
    t.COMPONENT_STOPPING: on_component_stopping,
    t.TICK: on_tick,
    **dict.fromkeys(t.PENALTY_TYPES, on_penalty),
}

SPEC: FunctionSpec[DeployServices] = FunctionSpec(
    name="deploy", tag=keys.DEPLOY, handlers=HANDLERS, build_services=build_services
)
