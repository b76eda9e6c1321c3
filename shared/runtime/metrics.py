"""Prometheus series of each function, served on `/metrics`.

Observed in two central places, so no handler has to remember them: every handled event
(runtime) and every emitted event (outbox flush), whose payloads carry what the series need.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.events import OutgoingEvent
from shared.events import types as t

REGISTRY = CollectorRegistry(auto_describe=True)
# The standard process_*, python_gc_* and python_info series beside ours (memory, CPU, open fds
# and GC pauses of each function instance are what an operator looks at first).
for _collector in (PROCESS_COLLECTOR, GC_COLLECTOR, PLATFORM_COLLECTOR):
    REGISTRY.register(_collector)

EVENTS_HANDLED = Counter(
    "orchestrator_events_handled",
    "CloudEvents handled, by type and outcome",
    ["function", "type", "outcome"],
    registry=REGISTRY,
)
EVENTS_EMITTED = Counter(
    "orchestrator_events_emitted", "Events sent to the broker", ["type"], registry=REGISTRY
)
ADMISSIONS = Counter(
    "orchestrator_admissions", "Runs admitted", ["tenant", "trigger"], registry=REGISTRY
)
SKIPS = Counter("orchestrator_skips", "Cron runs skipped", ["tenant", "reason"], registry=REGISTRY)
DEFERRALS = Counter("orchestrator_deferrals", "Runs deferred", ["tenant"], registry=REGISTRY)
MISSED = Counter("orchestrator_missed", "Due times missed", ["tenant"], registry=REGISTRY)
PENALTIES = Counter(
    "orchestrator_penalties", "Penalty changes", ["level", "penalty"], registry=REGISTRY
)
RUNS_ENDED = Counter(
    "orchestrator_runs_ended", "Runs ended", ["tenant", "outcome"], registry=REGISTRY
)
DEPLOYMENTS = Counter(
    "orchestrator_deployments", "Deployment outcomes", ["outcome"], registry=REGISTRY
)
ADMISSION_WAIT = Histogram(
    "orchestrator_admission_wait_seconds",
    "From when a run was due or asked for until it was admitted, per tenant",
    ["tenant"],
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600),
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "orchestrator_dead_letters",
    "Events the broker gave up delivering, by type and subscriber",
    ["type", "subscriber"],
    registry=REGISTRY,
)
BACKCHANNEL_REPLIES = Counter(
    "orchestrator_backchannel_replies",
    "ferryman replies the backchannel read, by outcome (sent, ignored, refused, retried) and, for "
    "an ignored one, why (no_token, token_refused, token_incomplete, not_a_reply, not_json): "
    "ignored replies are forged or broken ones",
    ["outcome", "reason"],
    registry=REGISTRY,
)
SCHEDULE_LAG = Histogram(
    "orchestrator_schedule_lag_seconds",
    "Due time to admission",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900),
    registry=REGISTRY,
)
RUN_DURATION = Histogram(
    "orchestrator_run_duration_seconds",
    "Run duration from admission to completion",
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
    registry=REGISTRY,
)
DEPLOY_SECONDS = Histogram(
    "orchestrator_deploy_seconds",
    "From the first apply of a flow or global component until it is Ready (or failed)",
    ["outcome"],
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
HANDLE_SECONDS = Histogram(
    "orchestrator_handle_seconds",
    "Time to handle one event (step latency for step.* events, deploy time for flow.starting)",
    ["function", "type"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)


class OutboxBacklog(Collector):
    """`orchestrator_outbox_backlog{function}`: events committed but not yet sent, read from
    Redis at scrape time (a reader per function this process runs)."""

    def __init__(self) -> None:
        self._readers: dict[str, Callable[[], int]] = {}
        self._lock = threading.Lock()

    def watch(self, function: str, read: Callable[[], int]) -> None:
        with self._lock:
            self._readers[function] = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "orchestrator_outbox_backlog",
            "Events committed to the outbox and not yet sent to the broker",
            labels=["function"],
        )
        with self._lock:
            readers = dict(self._readers)
        for function, read in sorted(readers.items()):
            try:
                family.add_metric([function], float(read()))
            except Exception:  # Redis away: no sample this scrape, never a failed scrape
                continue
        yield family


OUTBOX_BACKLOG = OutboxBacklog()
REGISTRY.register(OUTBOX_BACKLOG)


BACKCHANNEL_OUTCOMES = frozenset({"sent", "ignored", "refused", "retried"})
BACKCHANNEL_REASONS = frozenset(
    {"", "no_token", "token_refused", "token_incomplete", "not_a_reply", "not_json"}
)


def observe_backchannel_reply(outcome: str, reason: str = "") -> None:
    """One reply the backchannel handled; the labels are of a fixed set (a component decides
    what it sends: its words never become a series)."""
    if outcome not in BACKCHANNEL_OUTCOMES or reason not in BACKCHANNEL_REASONS:
        raise ValueError(f"backchannel outcome {outcome!r}, reason {reason!r}: not ours")
    BACKCHANNEL_REPLIES.labels(outcome, reason).inc()


def observe_dead_letter(event_type: str, subscriber: str) -> None:
    """Counted by type for our catalogue's types only: a made-up type cannot grow the series."""
    name = t.short(event_type) if event_type in t.ALL_TYPES else "other"
    DEAD_LETTERS.labels(name, subscriber[:40] or "-").inc()


# Every type not in the catalogue is counted under this one label: anyone may send any
# `ce-type`, and one series per made-up type would grow /metrics without bound.
UNKNOWN_TYPE = "unknown"


def observe_handled(function: str, event_type: str, outcome: str, seconds: float) -> None:
    name = t.short(event_type) if event_type in t.ALL_TYPES else UNKNOWN_TYPE
    EVENTS_HANDLED.labels(function, name, outcome).inc()
    HANDLE_SECONDS.labels(function, name).observe(seconds)


def observe_deploy(outcome: str, seconds: float) -> None:
    DEPLOY_SECONDS.labels(outcome).observe(max(0.0, seconds))


def observe_emitted(event: OutgoingEvent) -> None:
    data = event.data
    tenant = str(data.get("tenant") or event.extensions.get("tenant") or "")
    EVENTS_EMITTED.labels(t.short(event.type)).inc()
    if event.type == t.RUN_ADMITTED:
        ADMISSIONS.labels(tenant, str(data.get("trigger", ""))).inc()
        scheduled = data.get("scheduledFor")
        if isinstance(scheduled, int | float) and event.time is not None:
            SCHEDULE_LAG.observe(max(0.0, event.time - scheduled))
            ADMISSION_WAIT.labels(tenant).observe(max(0.0, event.time - scheduled))
    elif event.type == t.RUN_SKIPPED:
        SKIPS.labels(tenant, str(data.get("reason", ""))).inc()
    elif event.type == t.RUN_DEFERRED:
        DEFERRALS.labels(tenant).inc()
    elif event.type == t.RUN_MISSED:
        MISSED.labels(tenant).inc()
    elif event.type in t.PENALTY_TYPES:
        subject = data.get("subject") or {}
        level = str(subject.get("level", "")) if isinstance(subject, dict) else ""
        PENALTIES.labels(level, str(data.get("penalty", ""))).inc()
    elif event.type in t.RUN_ENDED_TYPES:
        RUNS_ENDED.labels(tenant, t.short(event.type).rsplit(".", 1)[-1]).inc()
        duration = data.get("durationMs")
        if isinstance(duration, int | float) and event.type == t.RUN_COMPLETED:
            RUN_DURATION.observe(duration / 1000)
    elif event.type in t.DEPLOYMENT_STATUS_TYPES:
        DEPLOYMENTS.labels(t.short(event.type)).inc()


def exposition() -> bytes:
    return generate_latest(REGISTRY)
