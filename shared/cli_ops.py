"""Operator commands: `orchestrator flows | runs | tenants | events tail`, each with `--json`.

Every figure is read through the module that owns it (DESIGN §3): flow documents from
shared.flows, schedules and leases from flow-start (admission_cron, lease, admission), deploy
status from deploy_records, run records from shared.runs, usage from shared.ledger, penalties
from shared.penalties, events from shared.event_log. Nothing here writes.
Redis comes from REDIS_URL, else from the running `make run` session in --state-dir; the
policy from ORCHESTRATOR_POLICY_FILE (or that session's), else the built-in defaults.

The views (`flow_rows`, `run_rows`, `tenant_rows`) are plain functions over (redis, policy,
now) so the demo's live table shows the same numbers as `orchestrator tenants`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from redis import Redis
from rich.console import Console
from rich.table import Table

from shared import admission, admission_cron, deploy_records, event_log, flows, lease, ledger
from shared import penalties as penalty_state
from shared import runs as run_records
from shared.clock import Clock, SystemClock
from shared.events.types import short
from shared.operator_session import connect, environment
from shared.policy import Policy

# --------------------------------------------------------------------------- connection


# --------------------------------------------------------------------------- views
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


# --------------------------------------------------------------------------- rendering
def when(seconds: float | None) -> str:
    if not seconds:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def relative(seconds: float | None, now: float) -> str:
    if seconds is None:
        return "-"
    delta = seconds - now
    return f"in {delta:.0f}s" if delta >= 0 else f"{-delta:.0f}s late"


def number(value: float) -> str:
    return f"{value:.4g}"


def _console(out: TextIO) -> Console:
    return Console(file=out, width=220, color_system=None, soft_wrap=True, highlight=False)


def _table(title: str, columns: Iterable[str], rows: Iterable[Iterable[str]]) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def _write_json(document: object, out: TextIO) -> None:
    json.dump(document, out, indent=2, sort_keys=True, default=str)
    out.write("\n")


def show_flows(
    redis: Redis, clock: Clock, *, as_json: bool, out: TextIO, tenant: str | None = None
) -> int:
    now = clock.now()
    rows = flow_rows(redis, now, tenant=tenant)
    if as_json:
        _write_json({"now": now, "flows": [asdict(row) for row in rows]}, out)
        return 0
    if not rows:
        out.write("no flows\n")
        return 0
    table = _table(
        "flows",
        ("FLOW", "TENANT", "SCHEDULE", "DEPLOYED", "NEXT RUN (UTC)", "LEASE", "RUNNING", "LAST"),
        (
            (
                row.flow,
                row.tenant,
                f"{row.cron} {row.timezone}" if row.cron else "(no cron)",
                row.deployment,
                f"{when(row.next_run)} ({relative(row.next_run, now)})" if row.next_run else "-",
                (
                    f"{row.lease_run} #{row.lease_token} (until {when(row.lease_expires)})"
                    if row.lease_run is not None
                    else "-"
                ),
                str(row.running),
                (
                    f"{row.last_status} {when(row.last_ended)}"
                    + (f" ({row.last_reason})" if row.last_reason else "")
                    if row.last_status
                    else "-"
                ),
            )
            for row in rows
        ),
    )
    _console(out).print(table)
    return 0


def _run_cells(record: run_records.RunRecord, now: float) -> tuple[str, ...]:
    end = record.ended_at if record.ended_at is not None else now
    return (
        record.run_id,
        record.flow_id,
        record.tenant,
        record.trigger or "-",
        record.status,
        when(record.started_at),
        f"{max(0.0, end - record.started_at):.1f}s",
        str(record.pending),
        str(record.steps),
        str(record.messages),
        record.reason or "",
    )


def show_runs(
    redis: Redis,
    clock: Clock,
    *,
    as_json: bool,
    out: TextIO,
    limit: int = 20,
    tenant: str | None = None,
    flow: str | None = None,
) -> int:
    now = clock.now()
    running, recent = run_rows(redis, limit=limit, tenant=tenant, flow=flow)
    if as_json:
        _write_json(
            {
                "now": now,
                "running": [r.to_dict() for r in running],
                "recent": [r.to_dict() for r in recent],
            },
            out,
        )
        return 0
    columns = (
        "RUN", "FLOW", "TENANT", "TRIGGER", "STATUS", "STARTED (UTC)", "DURATION",
        "PENDING", "STEPS", "MESSAGES", "REASON",
    )  # fmt: skip
    console = _console(out)
    for title, records in (("running", running), ("recent", recent)):
        if records:
            console.print(_table(title, columns, (_run_cells(r, now) for r in records)))
        else:
            out.write(f"{title}: none\n")
    return 0


def show_tenants(redis: Redis, policy: Policy, clock: Clock, *, as_json: bool, out: TextIO) -> int:
    now = clock.now()
    rows = tenant_rows(redis, policy, now)
    counts = admission.counts(redis)
    if as_json:
        _write_json(
            {
                "now": now,
                "slots": policy.slots,
                "running": counts.running,
                "usageWindowSeconds": usage_window(policy),
                "tenants": [asdict(row) for row in rows],
            },
            out,
        )
        return 0
    if not rows:
        out.write("no tenants\n")
        return 0
    window = usage_window(policy)
    table = _table(
        f"tenants: {counts.running} of {policy.slots} slots running; usage over {window}s",
        (
            "TENANT",
            "WEIGHT",
            "PENALTY",
            "RUNNING",
            "WAITING",
            "SLOT SHARE",
            "WEIGHT SHARE",
            "MAX RUNS",
            "STARTS/MIN",
            "MAX WAITING",
            "RUNS",
            "RUN SECONDS",
            "MESSAGES",
            "ERRORS",
            "SKIPPED",
        ),
        (
            (
                row.tenant,
                number(row.weight)
                + (
                    f" → {number(row.effective_weight)}"
                    if row.effective_weight != row.weight
                    else ""
                ),
                row.penalty or "-",
                str(row.running),
                str(row.waiting),
                f"{row.slot_share:.0%}",
                f"{row.weight_share:.0%}",
                str(row.max_concurrent_runs),
                number(row.start_rate_per_minute),
                str(row.max_waiting_runs),
                *(number(row.usage[metric]) for metric in USAGE_SHOWN),
            )
            for row in rows
        ),
    )
    _console(out).print(table)
    return 0


def event_line(event: event_log.LoggedEvent) -> str:
    ext = event.extensions
    data = event.data if isinstance(event.data, dict) else {}
    detail = " ".join(
        f"{name}={data[name]}"
        for name in ("reason", "penalty", "rule", "trigger", "scheduledFor")
        if data.get(name) not in (None, "")
    )
    subject = data.get("subject")
    if isinstance(subject, dict):
        detail = f"subject={subject.get('level')}:{subject.get('id')} {detail}"
    parts = [
        when(event.time),
        f"{short(event.type):<28}",
        f"tenant={ext.get('tenant', '-')}",
        f"flow={ext.get('flowid', '-')}",
    ]
    if ext.get("runid"):
        parts.append(f"run={ext['runid']}")
    if detail:
        parts.append(detail.strip())
    parts.append(f"id={event.id}")
    return " ".join(parts)


def _matches(event: event_log.LoggedEvent, types: list[str], tenant: str | None) -> bool:
    if types and not any(
        short(event.type) == t or short(event.type).startswith(t + ".") for t in types
    ):
        return False
    return tenant is None or event.extensions.get("tenant") == tenant


def show_events(
    redis: Redis,
    clock: Clock,
    *,
    as_json: bool,
    out: TextIO,
    count: int = 20,
    follow: bool = False,
    types: list[str] | None = None,
    tenant: str | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    """The last `count` events (JSON: one object per line), then new ones with --follow."""
    wanted = types or []

    def emit(event: event_log.LoggedEvent) -> None:
        if not _matches(event, wanted, tenant):
            return
        out.write(json.dumps(event.to_json(), default=str) if as_json else event_line(event))
        out.write("\n")
        out.flush()

    # (at least one, to know where --follow continues from; more when filters drop some)
    backlog = event_log.recent(redis, count=max(1, count if not (wanted or tenant) else 10 * count))
    shown = [e for e in backlog if _matches(e, wanted, tenant)][-count:] if count else []
    for event in shown:
        emit(event)
    if not follow:
        return 0
    start = backlog[-1].entry_id if backlog else "0-0"
    for event in event_log.follow(redis, clock, start=start):
        emit(event)
        if stop():
            break
    return 0


# --------------------------------------------------------------------------- commands
def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--state-dir", default=None, help="where `make run` keeps its session")


def cmd_flows(args: argparse.Namespace) -> int:
    redis, _ = connect(environment(args.state_dir))
    return show_flows(redis, SystemClock(), as_json=args.json, out=_stdout(), tenant=args.tenant)


def cmd_runs(args: argparse.Namespace) -> int:
    redis, _ = connect(environment(args.state_dir))
    return show_runs(
        redis,
        SystemClock(),
        as_json=args.json,
        out=_stdout(),
        limit=args.limit,
        tenant=args.tenant,
        flow=args.flow,
    )


def cmd_tenants(args: argparse.Namespace) -> int:
    redis, policy = connect(environment(args.state_dir))
    return show_tenants(redis, policy, SystemClock(), as_json=args.json, out=_stdout())


def cmd_events_tail(args: argparse.Namespace) -> int:
    redis, _ = connect(environment(args.state_dir))
    try:
        return show_events(
            redis,
            SystemClock(),
            as_json=args.json,
            out=_stdout(),
            count=args.lines,
            follow=args.follow,
            types=args.type,
            tenant=args.tenant,
        )
    except KeyboardInterrupt:
        return 0


def _stdout() -> TextIO:
    import sys

    return sys.stdout


def add_parser(subparsers: Any) -> None:
    """Registers flows, runs, tenants and events (called by shared/cli.py)."""
    flows_cmd = subparsers.add_parser(
        "flows", help="flows: schedule, next run, lease, deployment, last result"
    )
    _common(flows_cmd)
    flows_cmd.add_argument("--tenant", help="only this tenant's flows")
    flows_cmd.set_defaults(func=cmd_flows)

    runs_cmd = subparsers.add_parser("runs", help="running and recent runs")
    _common(runs_cmd)
    runs_cmd.add_argument("--limit", type=int, default=20, help="rows per list (default 20)")
    runs_cmd.add_argument("--tenant", help="only this tenant's runs")
    runs_cmd.add_argument("--flow", help="only this flow's runs")
    runs_cmd.set_defaults(func=cmd_runs)

    tenants_cmd = subparsers.add_parser(
        "tenants", help="tenants: usage, weight, limits, share of slots, penalty"
    )
    _common(tenants_cmd)
    tenants_cmd.set_defaults(func=cmd_tenants)

    events_cmd = subparsers.add_parser("events", help="the event log (what the functions sent)")
    events_sub = events_cmd.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    tail = events_sub.add_parser("tail", help="the latest events; --follow for new ones")
    _common(tail)
    tail.add_argument("-n", "--lines", type=int, default=20, help="how many (default 20)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    tail.add_argument(
        "--type",
        action="append",
        default=[],
        help="only this type or family, e.g. flow.execution or tenant.suspended (repeatable)",
    )
    tail.add_argument("--tenant", help="only this tenant's events")
    tail.set_defaults(func=cmd_events_tail)

    demo_cmd = subparsers.add_parser(
        "demo",
        help="the demo: live beside a running `orchestrator run`, or --headless (simulated time)",
    )
    demo_cmd.add_argument(
        "--headless",
        action="store_true",
        help="run the scenario through the four functions in this process, on simulated time",
    )
    demo_cmd.add_argument(
        "--seconds", type=int, default=None, help="simulated seconds (headless; default 150)"
    )
    demo_cmd.add_argument("--out", default=None, help="where summary.{txt,json} and share.png go")
    demo_cmd.add_argument("--json", action="store_true", help="print the summary as JSON")
    demo_cmd.add_argument("--state-dir", default=None, help="where `make run` keeps its session")
    demo_cmd.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    import threading

    from shared import demo
    from shared.demo_board import summary_text
    from shared.local_run import DEFAULT_STATE_DIR, RunSession

    if args.headless:
        seconds = args.seconds if args.seconds is not None else demo.DEFAULT_HEADLESS_SECONDS
        if seconds < 1:
            raise SystemExit("--seconds: must be at least 1")
        out_dir = Path(args.out) if args.out else demo.DEFAULT_OUT_DIR
        summary = demo.headless_in_own_redis(seconds, out_dir=out_dir)
        out = _stdout()
        if args.json:
            _write_json(summary, out)
        else:
            out.write(summary_text(summary) + "\n")
            files = summary.get("files", {})
            out.write(f"files: {files.get('text')}, {files.get('json')}, {files.get('png')}\n")
        return 0
    session = RunSession.load(Path(args.state_dir or DEFAULT_STATE_DIR))
    if session is None:
        raise SystemExit(
            "no running `orchestrator run` here: start one (make run, which shows the demo "
            "itself), or run `orchestrator demo --headless`"
        )
    stop = threading.Event()
    live_out = Path(args.out) if args.out else None
    worker = threading.Thread(target=demo.run, args=(session, stop), kwargs={"out_dir": live_out})
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.5)
    except KeyboardInterrupt:
        stop.set()
        worker.join()
    return 0


add_parsers = add_parser  # the name the packaging issue uses
