"""The demo's scoreboard: what happened per tenant, read from the system itself.

Counts come from the event log (shared.runtime.event_log: every event the functions sent), the
per-second shares and penalties from the operator views (shared.operations.views: the numbers
`orchestrator tenants` shows). At the end: a summary (text and JSON) and a PNG of each
tenant's share of the slots over time.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis
from rich.table import Table

from shared.events import types as t
from shared.local.demo.scenario import BAD_TENANT, FLOWS, SLOW_FLOW, TENANTS
from shared.model import penalties as penalty_state
from shared.model.policy import Policy
from shared.operations import views
from shared.runtime import event_log

LADDER_RANK = {step: rank for rank, step in enumerate(penalty_state.STEPS, start=1)}
RULE = (
    "the slots are shared by weight among the tenants that want them; a tenant that wants "
    "fewer than its share keeps what it wants and the rest goes to the others"
)
COUNTED = {
    t.RUN_ADMITTED: "admitted",
    t.RUN_SKIPPED: "skipped",
    t.RUN_DEFERRED: "deferred",
    t.RUN_MISSED: "missed",
    t.RUN_COMPLETED: "completed",
    t.RUN_FAILED: "failed",
}


def fair_shares(
    demand: Mapping[str, float], weights: Mapping[str, float], slots: float
) -> dict[str, float]:
    """Each tenant's fair share of the slots (weighted max-min, "water-filling"): slots go out
    by weight among the tenants that want more; one that wants less than its part keeps what
    it wants, and what it leaves is shared again among the rest. Shares are fractions of
    `slots`; they add up to at most 1 (less when nobody wants the rest)."""
    if slots <= 0:
        return dict.fromkeys(demand, 0.0)
    given = dict.fromkeys(demand, 0.0)
    wanting = {n for n, d in demand.items() if d > 0 and weights.get(n, 0) > 0}
    left = float(slots)
    while wanting and left > 1e-9:
        total = sum(weights[n] for n in wanting)
        part = {n: left * weights[n] / total for n in wanting}
        capped = {n for n in wanting if given[n] + part[n] >= demand[n]}
        if not capped:
            for n in wanting:
                given[n] += part[n]
            break
        for n in capped:
            left -= demand[n] - given[n]
            given[n] = float(demand[n])
        wanting -= capped
    return {n: given[n] / slots for n in demand}


@dataclass
class Sample:
    at: float  # seconds since the demo started
    running: dict[str, int]
    slot_share: dict[str, float]
    weight_share: dict[str, float]
    penalty: dict[str, str | None]
    waiting: dict[str, int] = field(default_factory=dict)
    fair_share: dict[str, float] = field(default_factory=dict)

    def demand(self, tenant: str) -> int:
        """Runs the tenant wants to run now: running, plus waiting for a slot."""
        return self.running.get(tenant, 0) + self.waiting.get(tenant, 0)


@dataclass
class Board:
    redis: Redis
    policy: Policy
    started_at: float
    tenants: tuple[str, ...] = tuple(TENANTS)
    counts: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    flow_counts: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    reasons: dict[tuple[str, str], Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter)
    )  # (flow, skipped | failed) → reason → count
    penalty_events: list[dict[str, Any]] = field(default_factory=list)
    violations: Counter[str] = field(default_factory=Counter)
    waits: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    samples: list[Sample] = field(default_factory=list)
    slot_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # so far
    last_entry: str = "0-0"
    deployed: set[str] = field(default_factory=set)  # flows deploy reported started
    seen_ids: set[str] = field(default_factory=set)  # an event resent (at-least-once) counts once
    notes: list[str] = field(default_factory=list)
    policy_note: str = ""

    # --- reading --------------------------------------------------------------------------
    def start_from_now(self) -> None:
        """Counts only what happens from now on (an event log may hold an earlier session)."""
        newest = event_log.recent(self.redis, count=1)
        self.last_entry = newest[-1].entry_id if newest else "0-0"

    def poll(self) -> int:
        """Takes in the events logged since the last poll."""
        seen = 0
        while True:
            batch = event_log.after(self.redis, self.last_entry, count=1000)
            for event in batch:
                self._count(event)
            seen += len(batch)
            if len(batch) < 1000:
                return seen
            self.last_entry = batch[-1].entry_id

    def _count(self, event: event_log.LoggedEvent) -> None:
        self.last_entry = event.entry_id
        if event.id in self.seen_ids:
            return
        self.seen_ids.add(event.id)
        tenant = event.extensions.get("tenant", "")
        flow = event.extensions.get("flowid", "")
        data = event.data if isinstance(event.data, dict) else {}
        name = COUNTED.get(event.type)
        if name:
            self.counts[tenant][name] += 1
            self.flow_counts[flow][name] += 1
            if event.type in (t.RUN_SKIPPED, t.RUN_FAILED):
                self.reasons[(flow, name)][str(data.get("reason", ""))] += 1
            due = data.get("scheduledFor")
            if event.type == t.RUN_ADMITTED and isinstance(due, int | float) and event.time:
                self.waits[tenant].append(max(0.0, event.time - due))  # due (or asked) → admitted
        elif event.type in t.PENALTY_TYPES:
            subject = data.get("subject") or {}
            self.penalty_events.append(
                {
                    "at": round((event.time or self.started_at) - self.started_at, 1),
                    "tenant": tenant,
                    "subject": f"{subject.get('level')}:{subject.get('id')}",
                    "event": t.short(event.type),
                    "penalty": data.get("penalty"),
                    "rule": data.get("rule"),
                }
            )
        elif event.type == t.POLICY_VIOLATION:
            self.violations[tenant] += 1
        elif event.type == t.FLOW_STARTED:
            self.deployed.add(str(data.get("id") or flow))
        elif event.type in (t.FLOW_FAILED, t.FLOW_STOPPED):
            self.deployed.discard(str(data.get("id") or flow))

    def sample(self, now: float) -> Sample:
        rows = {row.tenant: row for row in views.tenant_rows(self.redis, self.policy, now)}
        worst = self.worst_penalties()
        running = {n: rows[n].running if n in rows else 0 for n in self.tenants}
        waiting = {n: rows[n].waiting if n in rows else 0 for n in self.tenants}
        weights = {
            n: rows[n].effective_weight if n in rows else self.policy.tenant(n).weight
            for n in self.tenants
        }
        demand = {n: running[n] + waiting[n] for n in self.tenants}
        sample = Sample(
            at=round(now - self.started_at, 1),
            running=running,
            slot_share={n: rows[n].slot_share if n in rows else 0.0 for n in self.tenants},
            weight_share={n: rows[n].weight_share if n in rows else 0.0 for n in self.tenants},
            penalty={n: worst.get(n) for n in self.tenants},
            waiting=waiting,
            fair_share=fair_shares(demand, weights, self.policy.slots),
        )
        if self.samples:  # the slots held since the last sample
            held_for = sample.at - self.samples[-1].at
            for tenant, held in self.samples[-1].running.items():
                self.slot_seconds[tenant] += held * held_for
        self.samples.append(sample)
        return sample

    def slot_seconds_share(self, tenant: str) -> float:
        """The tenant's share of the slot-seconds held so far (what fair admission divides)."""
        total = sum(self.slot_seconds.values())
        return self.slot_seconds.get(tenant, 0.0) / total if total else 0.0

    def worst_penalties(self) -> dict[str, str | None]:
        """Per tenant, its worst current penalty (on the tenant, a user or a flow of it)."""
        worst: dict[str, str | None] = {}
        for entry in penalty_state.current(self.redis):
            tenant = entry.tenant or (entry.id if entry.level == "tenant" else "")
            previous = worst.get(tenant)
            if previous is None or LADDER_RANK[entry.step] > LADDER_RANK.get(previous, 0):
                worst[tenant] = entry.step
        return worst

    # --- showing --------------------------------------------------------------------------
    def table(self, elapsed: float, status: str = "") -> Table:
        latest = self.samples[-1] if self.samples else None
        title = f"component-orchestrator demo: {elapsed:.0f}s, {self.policy.slots} slots"
        caption = f"fair share: {RULE}" + (f"\n{status}" if status else "")
        table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
        for column in ("tenant", "weight", "demand", "admitted", "mean wait", "skipped",
                       "deferred", "slot share", "slot-s share", "fair share", "weight share",
                       "penalty",
                       "story"):  # fmt: skip
            table.add_column(column, justify="left" if column in ("tenant", "story") else "right")
        for tenant in self.tenants:
            counts = self.counts.get(tenant, Counter())
            penalty = latest.penalty.get(tenant) if latest else None
            demand = (
                f"{latest.running.get(tenant, 0)} + {latest.waiting.get(tenant, 0)} waiting"
                if latest
                else "-"
            )
            table.add_row(
                tenant,
                f"{self.policy.tenant(tenant).weight:g}",
                demand,
                str(counts["admitted"]),
                f"{self.mean_wait(tenant):.1f}s",
                str(counts["skipped"]),
                str(counts["deferred"]),
                f"{latest.slot_share.get(tenant, 0):.0%}" if latest else "-",
                f"{self.slot_seconds_share(tenant):.0%}",
                f"{latest.fair_share.get(tenant, 0):.0%}" if latest else "-",
                f"{latest.weight_share.get(tenant, 0):.0%}" if latest else "-",
                penalty or "-",
                TENANTS.get(tenant, ""),
            )
        return table

    def mean_wait(self, tenant: str) -> float:
        waits = self.waits.get(tenant) or []
        return sum(waits) / len(waits) if waits else 0.0

    # --- the end --------------------------------------------------------------------------
    def summary(self, seconds: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        tenants: dict[str, Any] = {}
        for tenant in self.tenants:
            counts = self.counts.get(tenant, Counter())
            shares = [s.slot_share.get(tenant, 0.0) for s in self.samples]
            weights = [s.weight_share[tenant] for s in self.samples if s.running.get(tenant)]
            events = [e for e in self.penalty_events if e["tenant"] == tenant]
            # warn comes with no event of its own: the samples see it
            reached = [e["penalty"] for e in events if e["penalty"] in LADDER_RANK]
            reached += [p for s in self.samples if (p := s.penalty.get(tenant)) in LADDER_RANK]
            now = self.samples[-1].penalty.get(tenant) if self.samples else None
            fair = [s.fair_share.get(tenant, 0.0) for s in self.samples]
            demands = [s.demand(tenant) for s in self.samples]
            tenants[tenant] = {
                **{name: counts[name] for name in COUNTED.values()},
                "weight": self.policy.tenant(tenant).weight,
                "meanDemand": round(sum(demands) / len(demands), 2) if demands else 0.0,
                "meanFairShare": round(sum(fair) / len(fair), 3) if fair else 0.0,
                "violations": self.violations[tenant],
                "meanWaitSeconds": round(self.mean_wait(tenant), 2),
                "maxWaitSeconds": round(max(self.waits.get(tenant) or [0.0]), 2),
                "meanSlotShare": round(sum(shares) / len(shares), 3) if shares else 0.0,
                "slotSecondsShare": round(self.slot_seconds_share(tenant), 3),
                "meanWeightShareWhileRunning": (
                    round(sum(weights) / len(weights), 3) if weights else 0.0
                ),
                "peakRunning": max((s.running.get(tenant, 0) for s in self.samples), default=0),
                "worstPenalty": max(reached, key=LADDER_RANK.__getitem__) if reached else None,
                "penaltyNow": now,
                # punished, and now free again (the last change was a restore to no penalty)
                "restored": bool(reached)
                and now is None
                and events[-1]["event"] == "tenant.restored",
            }
        flows = {
            flow.id: {
                "tenant": flow.tenant,
                **{name: self.flow_counts[flow.id][name] for name in COUNTED.values()},
                "skipReasons": dict(self.reasons[(flow.id, "skipped")]),
                "failReasons": dict(self.reasons[(flow.id, "failed")]),
            }
            for flow in FLOWS
        }
        return {
            "seconds": seconds,
            "slots": self.policy.slots,
            "rule": RULE,
            "tenants": tenants,
            "flows": flows,
            "penalties": self.penalty_events,
            "peakRunningAll": max((sum(s.running.values()) for s in self.samples), default=0),
            "slowFlow": {"id": SLOW_FLOW, "skipped": self.flow_counts[SLOW_FLOW]["skipped"]},
            "badTenant": {"id": BAD_TENANT, **tenants.get(BAD_TENANT, {})},
            "notes": list(self.notes),
            **(extra or {}),
        }


def summary_text(summary: dict[str, Any]) -> str:
    lines = [f"demo summary: {summary['seconds']:.0f} s, {summary['slots']} slots"]
    lines.append(
        f"{'tenant':<10} {'admitted':>8} {'mean wait':>9} {'skipped':>7} {'deferred':>8} "
        f"{'done':>5} {'failed':>6} {'slot share':>10} {'worst penalty':>14}  now"
    )
    for tenant, row in summary["tenants"].items():
        lines.append(
            f"{tenant:<10} {row['admitted']:>8} {row['meanWaitSeconds']:>8.1f}s "
            f"{row['skipped']:>7} {row['deferred']:>8} "
            f"{row['completed']:>5} {row['failed']:>6} {row['meanSlotShare']:>10.0%} "
            f"{row['worstPenalty'] or '-':>14}  {row['penaltyNow'] or '-'}"
        )
    lines.append(f"fair share: {summary.get('rule', RULE)}:")
    for tenant, row in summary["tenants"].items():
        lines.append(
            f"  {tenant} (weight {row.get('weight', 1):g}) wanted {row.get('meanDemand', 0):.1f} "
            f"slot(s) on average, held {row['meanSlotShare']:.0%} of the slots against a fair "
            f"share of {row.get('meanFairShare', 0):.0%}, and waited "
            f"{row['meanWaitSeconds']:.1f} s on average (at most {row['maxWaitSeconds']:.1f} s)"
        )
    slow = summary["slowFlow"]
    reasons = summary["flows"][slow["id"]]["skipReasons"]
    lines.append(f"slow flow {slow['id']}: {slow['skipped']} due time(s) skipped {reasons}")
    bad = summary["badTenant"]
    story = " → ".join(f"{e['penalty']}@{e['at']:.0f}s" for e in summary["penalties"]
                       if e["tenant"] == bad["id"])  # fmt: skip
    lines.append(
        f"bad tenant {bad['id']}: worst penalty {bad.get('worstPenalty') or 'none'}; "
        f"{'restored' if bad.get('restored') else 'not restored yet'} ({story or 'no penalty'})"
    )
    lines.extend(f"note: {note}" for note in summary.get("notes", []))
    return "\n".join(lines)


def write_outputs(board: Board, summary: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """summary.json, summary.txt and share.png under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "summary.json",
        "text": out_dir / "summary.txt",
        "png": out_dir / "share.png",
    }
    paths["json"].write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    paths["text"].write_text(summary_text(summary) + "\n")
    plot_shares(board, paths["png"])
    return paths


def plot_shares(board: Board, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(10, 5), dpi=100)
    times = [s.at for s in board.samples]
    for tenant in board.tenants:
        (line,) = axis.plot(
            times, [s.slot_share.get(tenant, 0) for s in board.samples], label=f"{tenant} held"
        )
        axis.plot(
            times,
            [s.fair_share.get(tenant, 0) for s in board.samples],
            linestyle="--",
            color=line.get_color(),
            alpha=0.7,
            label=f"{tenant} fair share",
        )
    for event in board.penalty_events:
        axis.axvline(event["at"], color="grey", alpha=0.3, linewidth=0.8)
        axis.annotate(
            f"{event['tenant']}: {event['penalty']}",
            (event["at"], 1.0),
            rotation=90,
            fontsize=7,
            va="top",
            color="grey",
        )
    axis.set_xlabel("seconds since the demo started")
    axis.set_ylabel("share of the execution slots")
    axis.set_ylim(0, 1.05)
    axis.set_title(f"per-tenant share of {board.policy.slots} slots (weights: " + ", ".join(
        f"{t} {board.policy.tenant(t).weight:g}" for t in board.tenants) + ")")  # fmt: skip
    axis.legend(loc="upper right", fontsize=7, ncol=2)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
