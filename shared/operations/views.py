"""What operators read: plain functions over (redis, policy, now), so the demo's live table
and `orchestrator flows | runs | tenants` show the same numbers. Every figure is read through
the module that owns it; nothing here writes."""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis

from shared.admission import cron as admission_cron
from shared.admission import lease
from shared.admission import queue as admission
from shared.deployment import records as deploy_records
from shared.execution import runs as run_records
from shared.model import flows
from shared.model import penalties as penalty_state
from shared.model.policy import Policy
from shared.policing import ledger


@dataclass(frozen=True)
class FlowRow:
    flow: str
    tenant: str
    user: str
    cron: str | None
    timezone: str
    deployment: str  # deploy's status: deploying / started / failed, or "-"
    next_run: float | None
    lease_run: str | None
    lease_token: int | None
    lease_expires: float | None
    running: int
    last_status: str | None
    last_reason: str | None
    last_ended: float | None


def flow_rows(
    redis: Redis, now: float, *, tenant: str | None = None, recent_limit: int = 1000
) -> list[FlowRow]:
    """Every wanted flow with its schedule, next run, lease, deployment and last result."""
    last: dict[str, run_records.RunRecord] = {}
    for record in run_records.recent(redis, limit=recent_limit):  # newest first
        last.setdefault(record.flow_id, record)
    rows = []
    for flow_id in sorted(flows.wanted_ids(redis)):
        stored = flows.get(redis, flow_id)
        if stored is None or (tenant and stored.flow.tenant != tenant):
            continue
        document = stored.flow
        held = lease.current(redis, flow_id, now)
        deployed = deploy_records.load(redis, "flow", flow_id)
        ended = last.get(flow_id)
        rows.append(
            FlowRow(
                flow=flow_id,
                tenant=document.tenant,
                user=document.user or "",
                cron=document.cron,
                timezone=document.timezone,
                deployment=deployed.status if deployed else "-",
                next_run=admission_cron.next_due(redis, flow_id),
                lease_run=held.run_id if held else None,
                lease_token=held.token if held else None,
                lease_expires=held.expires_at if held else None,
                running=len(run_records.running_of_flow(redis, flow_id)),
                last_status=ended.status if ended else None,
                last_reason=ended.reason if ended else None,
                last_ended=ended.ended_at if ended else None,
            )
        )
    rows.sort(key=lambda row: (row.tenant, row.flow))
    return rows


def run_rows(
    redis: Redis, *, limit: int = 20, tenant: str | None = None, flow: str | None = None
) -> tuple[list[run_records.RunRecord], list[run_records.RunRecord]]:
    """(running, recent) run records, filtered; running oldest first, recent newest first."""

    def wanted(record: run_records.RunRecord) -> bool:
        return (tenant is None or record.tenant == tenant) and (
            flow is None or record.flow_id == flow
        )

    # read more than shown so that filtering still finds `limit` rows in a busy system
    scan = limit if tenant is None and flow is None else max(limit * 50, 1000)
    running = [r for r in run_records.running(redis, limit=scan) if wanted(r)][:limit]
    recent = [r for r in run_records.recent(redis, limit=scan) if wanted(r)][:limit]
    return running, recent


@dataclass(frozen=True)
class TenantRow:
    tenant: str
    weight: float  # from the policy
    effective_weight: float  # lowered by a deprioritize penalty, 0 when suspended
    penalty: str | None
    running: int
    waiting: int
    slot_share: float  # running / slots
    weight_share: float  # effective weight / sum over tenants with running or waiting runs
    max_concurrent_runs: int
    start_rate_per_minute: float  # lowered by a throttle penalty
    max_waiting_runs: int
    usage_window: int
    usage: dict[str, float]


USAGE_SHOWN = ("runs", "run_seconds", "messages", "errors", "skipped")


def usage_window(policy: Policy) -> int:
    """The widest rule window: the usage the rules look at, as far back as any looks."""
    return max(ledger.windows(policy))


def known_tenants(redis: Redis, policy: Policy, counts: admission.Counts, now: float) -> set[str]:
    found = set(policy.tenants) | set(counts.running_by_tenant) | set(counts.waiting_by_tenant)
    for flow_id in flows.wanted_ids(redis):
        owner = flows.tenant_of(redis, flow_id)
        if owner:
            found.add(owner)
    found |= {
        entry.tenant or (entry.id if entry.level == "tenant" else "")
        for entry in penalty_state.current(redis)
    }
    since = now - usage_window(policy)
    found |= {s.tenant for s in ledger.active_subjects(redis, since=since)}
    return {t for t in found if t}


def tenant_rows(redis: Redis, policy: Policy, now: float) -> list[TenantRow]:
    counts = admission.counts(redis)
    names = sorted(known_tenants(redis, policy, counts, now))
    window = usage_window(policy)
    usage = ledger.usage_many(
        redis, [(ledger.SubjectRef("tenant", name, name), window) for name in names], now=now
    )
    effective: dict[str, float] = {}
    details: dict[str, tuple[str | None, penalty_state.Factors]] = {}
    for name in names:
        factors = penalty_state.factors(redis, policy.penalties, tenant=name)
        step = penalty_state.current_level(redis, "tenant", name)
        details[name] = (step, factors)
        weight = policy.tenant(name).weight * factors.weight
        effective[name] = 0.0 if factors.suspended else weight
    active = [
        n for n in names if counts.running_by_tenant.get(n, 0) or counts.waiting_by_tenant.get(n, 0)
    ]
    total_weight = sum(effective[n] for n in active)
    rows = []
    for name, used in zip(names, usage, strict=True):
        limits = policy.tenant(name)
        step, factors = details[name]
        running = counts.running_by_tenant.get(name, 0)
        rows.append(
            TenantRow(
                tenant=name,
                weight=limits.weight,
                effective_weight=effective[name],
                penalty=step,
                running=running,
                waiting=counts.waiting_by_tenant.get(name, 0),
                slot_share=running / policy.slots if policy.slots else 0.0,
                weight_share=(
                    effective[name] / total_weight if name in active and total_weight else 0.0
                ),
                max_concurrent_runs=limits.max_concurrent_runs,
                start_rate_per_minute=limits.start_rate_per_minute * factors.rate,
                max_waiting_runs=limits.max_waiting_runs,
                usage_window=window,
                usage={metric: used.get(metric, 0.0) for metric in USAGE_SHOWN},
            )
        )
    return rows
