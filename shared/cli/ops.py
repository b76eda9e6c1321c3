"""Operator commands: `orchestrator flows | runs | tenants | events tail`, each with `--json`.

Every figure is read through the module that owns it (docs/architecture.md §5): flow documents from
shared.model.flows, schedules and leases from shared.admission, deploy status from
shared.deployment.records, run records from shared.execution.runs, usage from
shared.policing.ledger, penalties from shared.model.penalties, events from
shared.runtime.event_log (through shared.operations.views). Nothing here writes.
Redis comes from REDIS_URL, else from the running `make run` session in --state-dir; the
policy from ORCHESTRATOR_POLICY_FILE (or that session's), else the built-in defaults.

The views (`flow_rows`, `run_rows`, `tenant_rows`) are plain functions over (redis, policy,
now) so the demo's live table shows the same numbers as `orchestrator tenants`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from redis import Redis
from rich.console import Console
from rich.table import Table

from shared.admission import queue as admission
from shared.cli.session import connect, environment
from shared.clock import Clock, SystemClock
from shared.events.types import short
from shared.execution import runs as run_records
from shared.model.policy import Policy
from shared.operations.views import USAGE_SHOWN, flow_rows, run_rows, tenant_rows, usage_window
from shared.runtime import event_log

# --------------------------------------------------------------------------- connection


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
    """Registers flows, runs, tenants and events (called by shared/cli/main.py)."""
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

    from shared.local.demo import runner as demo
    from shared.local.demo.board import summary_text
    from shared.local.session import DEFAULT_STATE_DIR, RunSession

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
