"""`orchestrator penalties [--json]` and `orchestrator penalties lift SUBJECT` (audited).

Reads the penalty state policy-check writes (shared/model/penalties.py) and the audit stream. A lift
writes its audit entry and its `tenant.restored` event (to the {pol} outbox, sent by the next
tick of any function) in the same atomic step as the state change.
Redis comes from REDIS_URL, else from the running `make run` session in --state-dir.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from redis import Redis

from shared.cli.session import connect, environment
from shared.clock import Clock, SystemClock
from shared.model import audit, penalties
from shared.model.policy import SUBJECT_LEVELS, Policy

CLI_SOURCE = "/component-orchestrator/cli"


def parse_subject(text: str) -> tuple[str, str]:
    """`tenant:acme`, `user:u1`, `flow:f1` → (level, id)."""
    level, sep, subject_id = text.partition(":")
    if not sep or level not in SUBJECT_LEVELS or not subject_id:
        raise argparse.ArgumentTypeError(
            f"SUBJECT must be LEVEL:ID with LEVEL one of {', '.join(SUBJECT_LEVELS)}, got {text!r}"
        )
    return level, subject_id


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S") if seconds else "-"


def _number(value: float) -> str:
    return f"{value:.6g}"


def show(redis: Redis, *, as_json: bool, history: int, out: TextIO) -> int:
    """Current penalties with their evidence, and the subject's latest audit entries."""
    current = penalties.current(redis)
    histories = {
        (entry.level, entry.id): [
            e.to_dict()
            for e in audit.read(redis, count=history, level=entry.level, subject=entry.id)
        ]
        if history
        else []
        for entry in current
    }
    rows: list[dict[str, Any]] = [
        {**entry.to_dict(), "audit": histories[(entry.level, entry.id)]} for entry in current
    ]
    if as_json:
        json.dump({"penalties": rows}, out, indent=2)
        out.write("\n")
        return 0
    if not rows:
        out.write("no penalties\n")
        return 0
    header = f"{'SUBJECT':<28} {'PENALTY':<13} {'UNTIL (UTC)':<20} {'RULE':<18} EVIDENCE\n"
    out.write(header)
    for entry in current:
        evidence = (
            f"{_number(entry.measured)} > {_number(entry.limit)} over {entry.window}"
            if entry.window
            else ""
        )
        out.write(
            f"{entry.level + ':' + entry.id:<28} {entry.step:<13} {_when(entry.until):<20} "
            f"{entry.rule:<18} {evidence} (repeats {entry.repeats})\n"
        )
        for item in histories[(entry.level, entry.id)]:
            out.write(
                f"    {_when(float(item.get('time') or 0))} {item.get('action', ''):<9} "
                f"{item.get('previous') or 'none'} -> {item.get('penalty') or 'none'}"
                f" ({item.get('rule', '')}, by {item.get('actor', '')})\n"
            )
    return 0


def lift(
    redis: Redis,
    policy: Policy,
    clock: Clock,
    subject: tuple[str, str],
    *,
    actor: str,
    as_json: bool,
    out: TextIO,
) -> int:
    level, subject_id = subject
    # a user or flow is punished per tenant: lift it wherever it is (the first one shown)
    tenants = [
        entry.tenant
        for entry in penalties.current(redis)
        if (entry.level, entry.id) == (level, subject_id) and level != "tenant"
    ]
    tenants.append("")  # a subject of the previous release, not upgraded yet (or a tenant)
    before = penalties.state(redis, level, subject_id, tenants[0])
    lifted = False
    for tenant in tenants:
        decision = penalties.lift(
            redis,
            policy.penalties,
            level=level,
            subject_id=subject_id,
            tenant=tenant,
            now=clock.now(),
            actor=actor,
            source=CLI_SOURCE,
        )
        lifted = lifted or decision.action == "lifted"
    if as_json:
        json.dump(
            {
                "subject": f"{level}:{subject_id}",
                "lifted": lifted,
                "previous": before.step if before else None,
                "actor": actor,
            },
            out,
        )
        out.write("\n")
    elif lifted:
        out.write(
            f"lifted {before.step if before else 'penalty'} from {level}:{subject_id} "
            f"(audited as {actor}; tenant.restored is sent on the next tick)\n"
        )
    else:
        out.write(f"{level}:{subject_id} has no penalty\n")
    return 0 if lifted else 1


def cmd_penalties(args: argparse.Namespace) -> int:
    redis, policy = connect(environment(args.state_dir))
    try:
        if getattr(args, "penalties_command", None) == "lift":
            return lift(
                redis,
                policy,
                SystemClock(),
                args.subject,
                actor=args.actor,
                as_json=args.json,
                out=sys.stdout,
            )
        return show(redis, as_json=args.json, history=args.history, out=sys.stdout)
    finally:
        redis.close()


def _default_actor() -> str:
    try:
        return f"operator:{getpass.getuser()}"
    except (KeyError, OSError):
        return "operator"


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "penalties", help="current penalties with evidence; `lift SUBJECT` removes one"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--history", type=int, default=3, help="audit entries shown per subject (default 3)"
    )
    parser.add_argument("--state-dir", default=None, help="the `orchestrator run` state dir")
    commands = parser.add_subparsers(dest="penalties_command")
    lift_parser = commands.add_parser("lift", help="lift a penalty now (audited)")
    lift_parser.add_argument(
        "subject", type=parse_subject, help="LEVEL:ID, e.g. tenant:acme or flow:f1"
    )
    lift_parser.add_argument("--actor", default=_default_actor(), help="who lifts (audit)")
    lift_parser.add_argument(  # SUPPRESS: `penalties --json lift X` keeps the outer flag
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    parser.set_defaults(func=cmd_penalties)
