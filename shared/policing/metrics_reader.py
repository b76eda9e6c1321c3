"""Pod usage from metrics.k8s.io into the ledger (on tick, with the kubernetes driver only).

metrics-server reports current usage (cores, bytes) per pod. Usage over time is that rate times
the time since the last read: the read time is swapped atomically (SET ... GET), so two ticks
that overlap each count their own interval and nothing is counted twice. The interval is capped
(after an outage we do not extrapolate one sample over hours); the very first read only sets
the mark. Pods are attributed by the flow label deploy puts on them: label values may be
shortened or hashed, so the flow is found by recomputing the label of every wanted flow, and
its tenant and user come from the flow document (the tenant and user labels are the fallback).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from redis import Redis

from shared import keys
from shared.model import flows
from shared.policing import ledger
from shared.policing.ledger import Record, SubjectRef
from shared.ports.driver import LABEL_PREFIX, label_value
from shared.store import as_text

if TYPE_CHECKING:  # the kubernetes client is heavy to import; only the kubernetes driver needs it
    from shared.ports.driver import PodUsage

log = logging.getLogger(__name__)

MAX_INTERVAL_SECONDS = 300.0
TENANT_LABEL = LABEL_PREFIX + "tenant"
USER_LABEL = LABEL_PREFIX + "user"
FLOW_LABEL = LABEL_PREFIX + "flow"
MIB = 1024 * 1024


class PodUsageSource(Protocol):
    def pod_usage(self, selector: str | None = None) -> list[PodUsage]:
        """Current usage of our pods (the kubernetes driver implements this)."""
        ...


def interval(redis: Redis, *, now: float) -> float:
    """Seconds since the previous read (0 on the first one), marking this read atomically."""
    previous = redis.set(keys.metrics_last_read(), repr(now), get=True)
    if previous is None:
        return 0.0
    text = as_text(previous)
    return max(0.0, min(now - float(text), MAX_INTERVAL_SECONDS))


Owner = tuple[str, str, str]  # tenant, user, flow id


def flow_owners(redis: Redis) -> dict[str, Owner]:
    """Flow label value → (tenant, user, flow id) for every wanted flow."""

    owners: dict[str, Owner] = {}
    for flow_id in flows.wanted_ids(redis):
        stored = flows.get(redis, flow_id)
        if stored is not None:
            owners[label_value(flow_id)] = (stored.flow.tenant, stored.flow.user, flow_id)
    return owners


def usage_records(
    pods: Sequence[PodUsage], seconds: float, owners: dict[str, Owner] | None = None
) -> list[Record]:
    """One ledger record per (tenant, user, flow): cpu_seconds and memory_mib_seconds."""
    sums: dict[Owner, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for pod in pods:
        flow_label = pod.labels.get(FLOW_LABEL, "")
        owner = (owners or {}).get(flow_label) if flow_label else None
        if owner is None:
            tenant = pod.labels.get(TENANT_LABEL, "")
            if not tenant or not flow_label:
                continue  # a global component's pod: no flow to count it against
            owner = (tenant, pod.labels.get(USER_LABEL, ""), flow_label)
        sums[owner][0] += pod.cpu_cores * seconds
        sums[owner][1] += pod.memory_bytes / MIB * seconds
    return [
        Record(
            ledger.subjects_of(tenant, user, flow),
            {"cpu_seconds": cpu, "memory_mib_seconds": memory},
        )
        for (tenant, user, flow), (cpu, memory) in sorted(sums.items())
    ]


def read_once(
    redis: Redis, source: PodUsageSource, *, now: float, ring_windows: ledger.LevelWindows
) -> list[SubjectRef]:
    """Reads pod usage once and adds it to the ledger; returns the subjects counted."""
    pods = source.pod_usage()
    seconds = interval(redis, now=now)
    if seconds <= 0:
        return []
    records = usage_records(pods, seconds, flow_owners(redis))
    ledger.record_many(redis, [(r, now) for r in records], ring_windows=ring_windows)
    return [subject for record in records for subject in record.subjects]
