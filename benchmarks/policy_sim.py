"""Simulation benchmark of policy-check (issue 7 §7): a simulated day in seconds.

20 tenants share 40 execution slots. 18 behave: each wants about 2 concurrent runs of ~5 min
(Poisson arrivals: bursts above the fair 2 slots, so admission is contended at times).
From 02:00 to 18:00 two tenants misbehave: `flood` sends flow.execute every 10 s (runs of
30 s), `longrun` starts a run every minute that would take 50 min (the watchdog ends them at
the 30 min `max_run_seconds`). Everything goes through the real code on a real Redis:
flow-start's admission scripts (shared/admission/queue.py: fair order, caps, slots, penalty factors
read at decision time), policy-check's ledger, rules, penalties and watchdog (the functions
its handlers call, without the CloudEvent envelope); the watchdog's failed events are
released by admission as flow-start does. At 18:00 the two fix their flows (stop and
redeploy: their waiting runs are dropped) and behave from then on. A light tenant `cron` has
a flow due every minute (runs of 20 s); its waits from due time to admission are reported.
The day runs twice on the same arrivals and durations: admission charging per run (policy
`fairness.cost: count`, the previous behaviour) and by slot-seconds (the default).
Reported: per-tenant share of run-seconds before and after punishment against the fair
share (weighted max-min, minute by minute), time to detect and to restore, and the ledger's
ingestion rate in events/s (pipelined, and through the full function runtime).

`run(results_dir)` writes policy_sim.{json,md,png}. `python -m benchmarks.policy_sim` runs it.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis

from shared import keys
from shared.admission import queue as admission
from shared.errors import OverCapacity
from shared.events import OutgoingEvent
from shared.events.payloads import RunAdmitted, RunNotStarted
from shared.events.types import PREFIX, RUN_ADMITTED, RUN_DEFERRED, RUN_FAILED
from shared.handlers.policy_check import police, tick
from shared.local.demo.board import fair_shares as max_min_shares
from shared.local.embedded_redis import EmbeddedRedis
from shared.model.policy import Policy, parse_policy
from shared.policing import ledger, watchdog
from shared.policing.ledger import Record
from shared.runtime.idempotency import Once

HOUR = 3600.0
DAY = 24 * HOUR
STEP = 10.0  # simulated seconds per step
TICK = 60.0  # policy-check and flow-start ticks (Knative's PingSource: once a minute)
TENANTS = [f"t{i:02d}" for i in range(18)] + ["cron", "flood", "longrun"]
BAD = ("flood", "longrun")
CRON_EVERY, CRON_RUN = 60.0, 20.0
MODES = ("count", "slot_seconds")
MISBEHAVE = (2 * HOUR, 18 * HOUR)
GOOD_RUN = 300.0
GOOD_CONCURRENCY = 2.0
SOURCE = "/component-orchestrator/policy-check"
FS_SOURCE = "/component-orchestrator/flow-start"
USAGE_EVENTS = int(os.environ.get("POLICY_SIM_USAGE_EVENTS", "100000"))
RUNTIME_EVENTS = int(os.environ.get("POLICY_SIM_RUNTIME_EVENTS", "5000"))

POLICY_DOC: dict[str, Any] = {
    "slots": 40,
    "defaults": {
        "max_concurrent_runs": 10,
        "start_rate_per_minute": 60,
        "max_waiting_runs": 200,
        "max_run_seconds": 1800,
    },
    "rules": [
        {"name": "flood", "metric": "runs", "subject": "tenant", "window": "5m", "max": 15},
        {
            "name": "long-runs",
            "metric": "run_seconds",
            "subject": "tenant",
            "window": "15m",
            "max": 5400,
        },
    ],
    "penalties": {"cooldown": "5m", "max_cooldown": "2h", "decay_after": "30m"},
}


@dataclass
class Run:
    run_id: str
    tenant: str
    flow: str
    user: str
    token: int
    start: float
    end: float


@dataclass
class Sim:
    redis: Redis
    policy: Policy
    rng: random.Random
    now: float
    start: float
    running: dict[str, Run] = field(default_factory=dict)
    planned: dict[str, float] = field(default_factory=dict)  # run id → intended duration
    due: dict[str, float] = field(default_factory=dict)  # cron run id → its due time
    cron_waits: list[float] = field(default_factory=list)
    run_seconds: dict[int, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    steps: dict[int, dict[str, str]] = field(default_factory=dict)  # minute → tenant → step
    eligible: dict[int, dict[str, float]] = field(default_factory=dict)  # minute → weights
    events: list[tuple[float, str, str, str]] = field(default_factory=list)  # t, type, subj, step
    rejected: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    submitted: int = 0
    admitted: int = 0
    next_id: int = 0
    inputs: admission.Inputs | None = None  # policy x penalties, read once per step
    dirty: bool = False  # admission may have emitted events since the last drain
    demand: dict[int, dict[str, int]] = field(default_factory=dict)  # minute → running+waiting

    def admission_inputs(self) -> admission.Inputs:
        if self.inputs is None:
            self.inputs = admission.read_inputs(self.redis, self.policy)
        return self.inputs

    @property
    def elapsed(self) -> float:
        return self.now - self.start

    def windows(self) -> dict[str, tuple[int, ...]]:
        return ledger.level_windows(self.policy)


def misbehaving(sim: Sim) -> bool:
    return MISBEHAVE[0] <= sim.elapsed < MISBEHAVE[1]


# ---------------------------------------------------------------- flow-start's side
def submit(sim: Sim, tenant: str, duration: float) -> None:
    sim.next_id += 1
    run_id = f"run-{sim.next_id}"
    if tenant == "cron":
        sim.due[run_id] = sim.now
    flow = f"{tenant}-flow"
    sim.submitted += 1
    sim.planned[run_id] = duration
    sim.dirty = True
    try:
        admission.execute(
            sim.redis,
            sim.admission_inputs(),
            None,
            admission.ExecuteRun(run_id, flow, tenant, f"{tenant}-user", 1800, "{}"),
            now=sim.now,
            source=FS_SOURCE,
        )
    except OverCapacity:  # the broker would retry later; the simulation drops it
        sim.rejected[tenant] += 1


def drain(redis: Redis, tag: str) -> list[OutgoingEvent]:
    pipe = redis.pipeline(transaction=True)
    pipe.lrange(keys.outbox(tag), 0, -1)
    pipe.delete(keys.outbox(tag))
    raw, _ = pipe.execute()
    return [OutgoingEvent.from_json(item) for item in raw]


def on_admitted(sim: Sim) -> None:
    """flow.execution.admitted reaches policy-check (ledger + watchdog index + rules)."""
    if not sim.dirty:
        return
    sim.dirty = False
    for event in drain(sim.redis, keys.ADMISSION):
        if event.type == RUN_DEFERRED:
            waiting = RunNotStarted.parse(event.data)
            if waiting.run_id and waiting.tenant:
                subjects = ledger.subjects_of(
                    waiting.tenant, f"{waiting.tenant}-user", waiting.flow_id
                )
                entry = Record(subjects, {"runs": 1}, run=watchdog.defer_op(waiting.run_id))
                ledger.record(sim.redis, entry, now=sim.now, ring_windows=sim.windows())
                police(sim.redis, sim.policy, subjects, now=sim.now, source=SOURCE)
            continue
        if event.type != RUN_ADMITTED:
            continue
        run = RunAdmitted.parse(event.data)
        sim.admitted += 1
        duration = sim.planned.pop(run.run_id, GOOD_RUN)
        if run.run_id in sim.due:
            sim.cron_waits.append(sim.now - sim.due.pop(run.run_id))
        sim.running[run.run_id] = Run(
            run.run_id,
            run.tenant,
            run.flow_id,
            run.user,
            run.fencing_token,
            sim.now,
            sim.now + duration,
        )
        limit = watchdog.limit_for(sim.policy, run.tenant, None)
        entry = Record(
            ledger.subjects_of(run.tenant, run.user, run.flow_id),
            {"runs": 1},
            run=watchdog.admit_op(run, now=sim.now, limit=limit),
        )
        ledger.record(sim.redis, entry, now=sim.now, ring_windows=sim.windows())
        police(sim.redis, sim.policy, entry.subjects, now=sim.now, source=SOURCE)


def end_run(sim: Sim, run: Run, *, failed: bool) -> None:
    """flow.execution.completed/failed: flow-start releases, policy-check counts."""
    sim.running.pop(run.run_id, None)
    admission.release(
        sim.redis,
        sim.admission_inputs(),
        None,
        run_id=run.run_id,
        token=run.token,
        now=sim.now,
        source=FS_SOURCE,
    )
    subjects = ledger.subjects_of(run.tenant, run.user, run.flow)
    op = watchdog.end_op(run.run_id, ended_at=sim.now, unknown_seconds=sim.now - run.start)
    # the run's end and its usage report, counted in one ledger write
    amounts = {
        "ended": 1.0,
        "errors": 1.0 if failed else 0.0,
        "messages": 20,
        "bytes": 20_000,
        "cpu_seconds": (sim.now - run.start) * 0.1,
    }
    ledger.record(
        sim.redis, Record(subjects, amounts, run=op), now=sim.now, ring_windows=sim.windows()
    )
    police(sim.redis, sim.policy, subjects, now=sim.now, source=SOURCE)
    sim.dirty = True


def policy_tick(sim: Sim) -> None:
    tick(sim.redis, sim.policy, now=sim.now, source=SOURCE)
    for event in drain(sim.redis, keys.POLICY):
        data = event.data
        if event.type == RUN_FAILED:  # the watchdog: flow-start releases, step-execute stops
            run = sim.running.get(str(data["runId"]))
            if run is not None:
                sim.running.pop(run.run_id)
                admission.release(
                    sim.redis,
                    sim.admission_inputs(),
                    None,
                    run_id=run.run_id,
                    token=run.token,
                    now=sim.now,
                    source=FS_SOURCE,
                )
                sim.dirty = True
            continue
        subject = data.get("subject") or {}
        sim.events.append(
            (
                sim.elapsed,
                event.type.removeprefix(PREFIX),
                f"{subject.get('level')}:{subject.get('id')}",
                str(data.get("penalty", "")),
            )
        )
    admission.dispatch(sim.redis, sim.admission_inputs(), now=sim.now, source=FS_SOURCE)
    sim.dirty = True
    minute = int(sim.elapsed // TICK)
    pipe = sim.redis.pipeline(transaction=False)
    for tenant in TENANTS:  # a bad citizen may be punished as a tenant or as its one flow
        pipe.hget(keys.penalty("tenant", tenant), "step")
        pipe.hget(keys.penalty("flow", f"{tenant}-flow", tenant), "step")
    raw = pipe.execute()
    rank = {None: 0, "warn": 1, "throttle": 2, "deprioritize": 3, "suspend": 4}
    levels: dict[str, str | None] = {}
    for i, tenant in enumerate(TENANTS):
        found = [v.decode() if isinstance(v, bytes) else v for v in raw[2 * i : 2 * i + 2]]
        levels[tenant] = max(found, key=lambda s: rank.get(s, 0))
    sim.steps[minute] = {t: levels[t] or "none" for t in BAD}
    counts = admission.counts(sim.redis)
    weights, demand = {}, {}
    for tenant in TENANTS:
        wants = counts.running_by_tenant.get(tenant, 0) + counts.waiting_by_tenant.get(tenant, 0)
        if not wants or levels[tenant] == "suspend":
            continue
        factor = (
            sim.policy.penalties.deprioritize_factor if levels[tenant] == "deprioritize" else 1.0
        )
        weights[tenant] = sim.policy.tenant(tenant).weight * factor
        demand[tenant] = min(wants, sim.policy.tenant(tenant).max_concurrent_runs)
    sim.eligible[minute] = weights
    sim.demand[minute] = demand


def mend(sim: Sim) -> None:
    """At the end of the misbehaviour the bad citizens fix their flows and redeploy: flow.stopping
    drops the flow's waiting runs (flow-start), flow.started deploys it again."""
    for tenant in BAD:
        flow = f"{tenant}-flow"
        admission.drop_flow(
            sim.redis, sim.admission_inputs(), None, flow_id=flow, now=sim.now, source=FS_SOURCE
        )
        admission.set_deployment(
            sim.redis,
            sim.admission_inputs(),
            None,
            flow_id=flow,
            started=True,
            now=sim.now,
            source=FS_SOURCE,
        )


def step(sim: Sim, arrivals: dict[str, float]) -> None:
    sim.inputs = None  # penalties may have changed: read them again at decision time
    bad_now = misbehaving(sim)
    if MISBEHAVE[1] <= sim.elapsed < MISBEHAVE[1] + STEP:
        mend(sim)
    for tenant in TENANTS:
        if tenant == "cron":  # due every minute: flow-start submits it at its due time
            if sim.elapsed % CRON_EVERY < STEP:
                submit(sim, tenant, CRON_RUN)
            continue
        if tenant == "flood" and bad_now:
            submit(sim, tenant, 30.0)
            continue
        if tenant == "longrun" and bad_now:
            if sim.elapsed % 60 < STEP:
                submit(sim, tenant, 3000.0)
            continue
        while arrivals[tenant] <= sim.now:  # Poisson arrivals of ~5 min runs
            submit(sim, tenant, sim.rng.uniform(0.8, 1.2) * GOOD_RUN)
            arrivals[tenant] += sim.rng.expovariate(GOOD_CONCURRENCY / GOOD_RUN)
    on_admitted(sim)
    for run in [r for r in sim.running.values() if r.end <= sim.now]:
        end_run(sim, run, failed=False)
    on_admitted(sim)  # runs the releases admitted
    minute = int(sim.elapsed // TICK)
    bucket = sim.run_seconds[minute]
    for run in sim.running.values():
        bucket[run.tenant] = bucket.get(run.tenant, 0.0) + STEP
    if sim.elapsed % TICK < STEP:
        policy_tick(sim)
        sim.inputs = None


def simulate_day(redis: Redis, seed: int = 7, cost: str = "slot_seconds") -> Sim:
    redis.flushall()
    policy = parse_policy({**POLICY_DOC, "fairness": {"cost": cost}})
    start = 1_767_225_600.0
    sim = Sim(redis, policy, random.Random(seed), now=start, start=start)
    for tenant in TENANTS:
        admission.set_deployment(
            redis,
            admission.read_inputs(redis, policy),
            None,
            flow_id=f"{tenant}-flow",
            started=True,
            now=start,
            source=FS_SOURCE,
        )
    arrivals = {t: start + sim.rng.expovariate(GOOD_CONCURRENCY / GOOD_RUN) for t in TENANTS}
    while sim.elapsed < DAY:
        step(sim, arrivals)
        sim.now += STEP
    return sim


# ---------------------------------------------------------------- analysis
def shares(sim: Sim, lo: float, hi: float) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for minute, bucket in sim.run_seconds.items():
        if lo <= minute * TICK < hi:
            for tenant, seconds in bucket.items():
                totals[tenant] += seconds
    whole = sum(totals.values()) or 1.0
    return {t: totals.get(t, 0.0) / whole for t in TENANTS}


def water_fill(
    capacity: float, weights: dict[str, float], demand: dict[str, int]
) -> dict[str, float]:
    """Weighted max-min fair allocation of `capacity` slots (the demo board's rule, in slots)."""
    shares = max_min_shares({t: demand.get(t, 0) for t in weights}, weights, capacity)
    return {t: share * capacity for t, share in shares.items()}


def fair_shares(sim: Sim, lo: float, hi: float) -> dict[str, float]:
    """The share of run-seconds each tenant would have had under weighted max-min fairness,
    minute by minute (demand = its running + waiting runs; a suspended one has none)."""
    sums: dict[str, float] = defaultdict(float)
    for minute, weights in sim.eligible.items():
        if lo <= minute * TICK < hi and weights:
            allocation = water_fill(sim.policy.slots, weights, sim.demand.get(minute, {}))
            for tenant, slots in allocation.items():
                sums[tenant] += slots
    whole = sum(sums.values()) or 1.0
    return {t: sums.get(t, 0.0) / whole for t in TENANTS}


def first(sim: Sim, subject: str, kind: str, after: float = 0.0) -> float | None:
    for at, event_type, who, step_name in sim.events:
        if who == subject and at >= after and kind in (event_type, step_name):
            return at
    return None


def restored_at(sim: Sim, tenant: str) -> float | None:
    """The first minute after the misbehaviour ended from which the tenant stays unpenalized."""
    last_penalized = None
    for minute in sorted(sim.steps):
        if sim.steps[minute][tenant] != "none":
            last_penalized = minute
    if last_penalized is None:
        return None
    return (last_penalized + 1) * TICK


def analyse(sim: Sim) -> dict[str, Any]:
    onset, stop = MISBEHAVE
    good = [t for t in TENANTS if t not in BAD]

    def first_of(kinds: tuple[str, ...], t: str) -> float:
        return min(
            (first(sim, f"{lvl}:{s}", k, onset) or stop)
            for k in kinds
            for lvl, s in (("tenant", t), ("flow", f"{t}-flow"))
        )

    punished_from = min(first_of(("throttle", "deprioritize", "suspend"), t) for t in BAD)
    contained_from = max(first_of(("deprioritize", "suspend"), t) for t in BAD)
    periods = {
        "baseline (00:00-02:00)": (0.0, onset),
        "before punishment": (onset, punished_from),
        "contained": (contained_from, stop),
        "after restore": (max(restored_at(sim, t) or stop for t in BAD), DAY),
    }
    table = {}
    for name, (lo, hi) in periods.items():
        got, fair = shares(sim, lo, hi), fair_shares(sim, lo, hi)
        deviations = [abs(got[t] / fair[t] - 1) for t in good if fair[t] > 0]
        table[name] = {
            "from_h": round(lo / HOUR, 2),
            "to_h": round(hi / HOUR, 2),
            "share": {t: round(got[t], 4) for t in TENANTS},
            "fair": {t: round(fair[t], 4) for t in TENANTS},
            "good_max_deviation_from_fair": round(max(deviations, default=0.0), 4),
            "good_mean_share": round(sum(got[t] for t in good) / len(good), 4),
            "bad_share": {t: round(got[t], 4) for t in BAD},
        }
    detection = {}
    for t in BAD:
        detected = first_of(("policy.violation",), t)
        suspended = first_of(("suspend",), t)
        restored = restored_at(sim, t)
        detection[t] = {
            "misbehaviour_starts_h": onset / HOUR,
            "detected_after_s": None if detected >= stop else round(detected - onset),
            "limits_lowered_after_s": round(
                first_of(("throttle", "deprioritize", "suspend"), t) - onset
            ),
            "suspended_after_s": None if suspended >= stop else round(suspended - onset),
            "misbehaviour_ends_h": stop / HOUR,
            "restored_after_s": None if restored is None else round(restored - stop),
            "penalty_events": sum(
                1 for _, _, who, _ in sim.events if who in (f"tenant:{t}", f"flow:{t}-flow")
            ),
        }
    for t in BAD:  # each bad citizen's share from its onset until its limits were lowered
        lowered = first_of(("throttle", "deprioritize", "suspend"), t)
        got, fair = shares(sim, onset, lowered), fair_shares(sim, onset, lowered)
        detection[t]["share_before_punishment"] = round(got[t], 4)
        detection[t]["fair_before_punishment"] = round(fair[t], 4)
    good_events = [
        (who, kind, step) for _, kind, who, step in sim.events if not any(b in who for b in BAD)
    ]
    warned = sorted({who for who, kind, _ in good_events if kind == "policy.violation"})
    false_positives = sorted(
        {who for who, kind, step in good_events if step in ("throttle", "deprioritize", "suspend")}
    )
    return {
        "periods": table,
        "bad_citizens": detection,
        "good_tenants_warned": warned,
        "good_tenants_punished": false_positives,
    }


# ---------------------------------------------------------------- ingestion rate
def ingestion_rate(redis: Redis, count: int) -> dict[str, Any]:
    """usage.reported amounts for 20 tenants x 5 flows through ledger.record_many (pipelined,
    one ledger_record script per event, dedupe keys included), default policy rings."""
    redis.flushall()
    windows = ledger.level_windows(Policy())
    start = 1_767_225_600.0

    def entries() -> Iterator[tuple[Record, float]]:
        for n in range(count):
            tenant = f"t{n % 20}"
            subjects = ledger.subjects_of(tenant, f"{tenant}-u{n % 2}", f"{tenant}-f{n % 5}")
            amounts = {"messages": 1 + n % 7, "bytes": 500, "cpu_seconds": 0.02}
            once = Once(redis, keys.POLICY, "/bench", str(n), ttl_seconds=3600)
            yield Record(subjects, amounts, once=once), start + n * 0.01

    began = time.perf_counter()
    results = ledger.record_many(redis, entries(), ring_windows=windows)
    seconds = time.perf_counter() - began
    counted = sum(1 for r in results if r.counted)
    return {
        "events": count,
        "counted": counted,
        "seconds": round(seconds, 2),
        "events_per_second": round(count / seconds),
        "extrapolated_seconds_for_1M": round(1_000_000 / (count / seconds), 1),
    }


def runtime_rate(redis: Redis, count: int) -> dict[str, Any]:
    """The same events as signed CloudEvents through FunctionRuntime.handle (parse, verify the
    internal token, dedupe, ledger, rules): what one policy-check instance sustains."""
    from cloudevents.http import CloudEvent

    from shared.clock import FakeClock
    from shared.handlers.policy_check import SPEC
    from shared.runtime.auth import Authorizer
    from shared.runtime.function import FunctionRuntime
    from shared.runtime.outbox import NullSender
    from shared.security.tokens import sign_internal
    from shared.settings import Settings
    from shared.wiring.policing import PolicyServices

    redis.flushall()
    key = "bench-orchestrator-key-0123456789abcdef"
    url = "redis://{}:{}/0".format(
        redis.connection_pool.connection_kwargs["host"],
        redis.connection_pool.connection_kwargs["port"],
    )
    settings = Settings.from_env(
        {
            "REDIS_URL": url,
            "ORCHESTRATOR_KEY": key,
            "ORCHESTRATOR_AUTH": "off",
            "ORCHESTRATOR_DEPLOY_DRIVER": "local",
        }
    )
    clock = FakeClock()
    runtime = FunctionRuntime(
        SPEC,
        settings=settings,
        redis=redis,
        clock=clock,
        policy=Policy(),
        sender=NullSender(),
        authorizer=Authorizer(settings, clock, flow_tenant=lambda _: None),
        services=PolicyServices(),
    )
    token = sign_internal(key, "step-execute", clock, event_type=PREFIX + "usage.reported")
    events = []
    for n in range(count):
        tenant = f"t{n % 20}"
        events.append(
            CloudEvent(
                {
                    "type": PREFIX + "usage.reported",
                    "source": "/bench",
                    "id": f"u-{n}",
                    "authtoken": token,
                },
                {
                    "tenant": tenant,
                    "user": f"{tenant}-u{n % 2}",
                    "flowId": f"{tenant}-f{n % 5}",
                    "messages": 3,
                },
            )
        )
    began = time.perf_counter()
    for event in events:
        runtime.handle(event)
        clock.advance(0.01)
    seconds = time.perf_counter() - began
    return {
        "events": count,
        "seconds": round(seconds, 2),
        "events_per_second": round(count / seconds),
    }


# ---------------------------------------------------------------- output
def plot(sim: Sim, analysis: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = 15  # minutes per point
    minutes = sorted(sim.run_seconds)
    xs: list[float] = []
    series: dict[str, list[float]] = {t: [] for t in TENANTS}
    for lo in range(0, (minutes[-1] if minutes else 0) + 1, window):
        totals: dict[str, float] = defaultdict(float)
        for m in range(lo, lo + window):
            for tenant, seconds in sim.run_seconds.get(m, {}).items():
                totals[tenant] += seconds
        whole = sum(totals.values()) or 1.0
        xs.append((lo + window / 2) / 60)
        for tenant in TENANTS:
            series[tenant].append(100 * totals.get(tenant, 0.0) / whole)
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    for tenant in TENANTS:
        if tenant in BAD:
            continue
        top.plot(xs, series[tenant], color="0.7", linewidth=0.8)
    top.plot([], [], color="0.7", label="18 good tenants (each)")
    top.plot(xs, series["flood"], color="tab:red", linewidth=2, label="flood (floods executions)")
    top.plot(xs, series["longrun"], color="tab:orange", linewidth=2, label="longrun (runs long)")
    top.axhline(
        100 / 20, color="tab:blue", linestyle="--", linewidth=1, label="fair share, 20 tenants"
    )
    top.axhline(
        100 / 18, color="tab:green", linestyle=":", linewidth=1, label="fair share, 18 tenants"
    )
    for edge in MISBEHAVE:
        top.axvline(edge / HOUR, color="k", linewidth=0.6)
    top.set_ylabel("share of run-seconds (%)")
    top.set_title("policy-check simulation: share of execution slots per tenant (15 min means)")
    top.legend(loc="upper right", fontsize=8)
    rank = {"none": 0, "warn": 1, "throttle": 2, "deprioritize": 3, "suspend": 4}
    for tenant, color in (("flood", "tab:red"), ("longrun", "tab:orange")):
        steps = sorted(sim.steps.items())
        bottom.step(
            [m / 60 for m, _ in steps],
            [rank[s[tenant]] for _, s in steps],
            where="post",
            color=color,
            label=tenant,
        )
    bottom.set_yticks(list(rank.values()), list(rank))
    bottom.set_xlabel("simulated hour")
    bottom.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(value: float, digits: int = 2) -> str:
    return f"{100 * value:.{digits}f} %"


def markdown(result: dict[str, Any]) -> str:
    lines = ["# policy-check simulation", "", result["setup"], ""]
    lines += [
        "| period | hours | good: mean share | good: worst vs fair | flood | longrun |",
        "|---|---|---|---|---|---|",
    ]
    for name, period in result["periods"].items():
        lines.append(
            f"| {name} | {period['from_h']}-{period['to_h']} "
            f"| {_pct(period['good_mean_share'])} "
            f"| {_pct(period['good_max_deviation_from_fair'], 1)} "
            f"| {_pct(period['bad_share']['flood'])} | {_pct(period['bad_share']['longrun'])} |"
        )
    lines += [
        "",
        "| bad citizen | share before punishment (fair) | detected | limits lowered | suspended "
        "| restored after it stopped | penalty events |",
        "|---|---|---|---|---|---|---|",
    ]
    for tenant, d in result["bad_citizens"].items():
        lines.append(
            f"| {tenant} | {_pct(d['share_before_punishment'], 1)} "
            f"({_pct(d['fair_before_punishment'], 1)}) | {d['detected_after_s']} s "
            f"| {d['limits_lowered_after_s']} s | {d['suspended_after_s']} s "
            f"| {d['restored_after_s']} s | {d['penalty_events']} |"
        )
    warned = ", ".join(result["good_tenants_warned"]) or "none"
    punished = ", ".join(result["good_tenants_punished"]) or "none"
    ing, rt, sim = result["ingestion"], result["runtime_ingestion"], result["simulation"]
    deviation = result["periods"]["contained"]["good_max_deviation_from_fair"]
    lines += [
        "",
        f"Good tenants only warned: {warned}; good tenants whose limits were lowered: {punished}.",
        "",
        f"Ledger ingestion: {ing['events']:,} usage events in {ing['seconds']} s = "
        f"**{ing['events_per_second']:,} events/s** (pipelined `ledger_record` calls with dedupe "
        f"keys; 1,000,000 events take about {ing['extrapolated_seconds_for_1M']} s at this rate).",
        "Through the full function runtime (signed CloudEvent: parse, verify, dedupe, ledger, "
        f"rules): {rt['events']:,} events at **{rt['events_per_second']:,} events/s** "
        "per instance.",
        "",
        f"Simulated day: {sim['wall_seconds']} s wall, {sim['submitted']:,} runs submitted, "
        f"{sim['admitted']:,} admitted.",
        "",
        "Target: bad citizens contained and the others' shares within 10 % of fair "
        f"(contained period: worst good tenant {_pct(deviation, 1)} from fair): "
        f"**{'met' if result['targets_met'] else 'NOT met'}**.",
    ]
    lines += comparison_markdown(result)
    return "\n".join(lines) + "\n"


def comparison_markdown(result: dict[str, Any]) -> list[str]:
    compared = result["count_vs_usage"]
    count, usage = compared["count"], compared["slot_seconds"]
    lines = [
        "",
        "## Count-based beside usage-based admission (same arrivals and durations)",
        "",
        "| figure | count (`fairness.cost: count`) | usage (`slot_seconds`, default) |",
        "|---|---:|---:|",
    ]

    def row(figure: str, a: str, b: str) -> None:
        lines.append(f"| {figure} | {a} | {b} |")

    for name in count["periods"]:
        c, u = count["periods"][name], usage["periods"][name]
        row(f"{name}: good mean share", _pct(c["good_mean_share"]), _pct(u["good_mean_share"]))
        row(
            f"{name}: worst good tenant vs fair",
            _pct(c["good_max_deviation_from_fair"], 1),
            _pct(u["good_max_deviation_from_fair"], 1),
        )
        for t in BAD:
            row(f"{name}: {t} share", _pct(c["bad_share"][t]), _pct(u["bad_share"][t]))
    for t in BAD:
        row(
            f"{t}: share in its first hour of misbehaviour (fair)",
            f"{_pct(count['first_hour_share'][t], 1)} ({_pct(count['first_hour_fair'][t], 1)})",
            f"{_pct(usage['first_hour_share'][t], 1)} ({_pct(usage['first_hour_fair'][t], 1)})",
        )
        cb, ub = count["bad_citizens"][t], usage["bad_citizens"][t]
        row(
            f"{t}: share before punishment (fair)",
            f"{_pct(cb['share_before_punishment'], 1)} ({_pct(cb['fair_before_punishment'], 1)})",
            f"{_pct(ub['share_before_punishment'], 1)} ({_pct(ub['fair_before_punishment'], 1)})",
        )
        row(
            f"{t}: limits lowered after",
            f"{cb['limits_lowered_after_s']} s",
            f"{ub['limits_lowered_after_s']} s",
        )
        row(
            f"{t}: share over the whole misbehaviour",
            _pct(count["misbehaviour_share"][t], 1),
            _pct(usage["misbehaviour_share"][t], 1),
        )
    for key in ("p50_s", "p99_s", "max_s"):
        row(
            f"cron: wait from due time, {key[:-2]}",
            f"{count['cron_waits'][key]:.0f} s",
            f"{usage['cron_waits'][key]:.0f} s",
        )
    row("runs admitted", f"{count['admitted']:,}", f"{usage['admitted']:,}")
    lines += [
        "",
        "Shares are of run-seconds (slots held); waits are measured in the simulation's "
        f"{STEP:.0f} s steps. Target: the long-running tenant held to its fair share from the "
        "start (first hour within 10 % of fair) with cron waits (p99) no worse than count-based: "
        f"**{'met' if result['usage_targets_met'] else 'NOT met'}**.",
    ]
    return lines


@contextmanager
def redis_for_benchmark() -> Iterator[Redis]:
    url = os.environ.get("BENCH_REDIS_URL")
    if url:
        client = Redis.from_url(url)
        client.flushall()
        yield client
        return
    server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="policy-sim-")), persist=False).start()
    try:
        yield Redis.from_url(server.url)
    finally:
        server.stop()


def waits_summary(waits: list[float]) -> dict[str, float]:
    ordered = sorted(waits) or [0.0]
    return {
        "runs": len(waits),
        "p50_s": ordered[len(ordered) // 2],
        "p99_s": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max_s": ordered[-1],
    }


def side_by_side(sims: dict[str, Sim], analyses: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Count-based beside usage-based, on the same arrivals and durations."""
    out: dict[str, Any] = {}
    for mode, analysis in analyses.items():
        sim = sims[mode]
        onset, stop = MISBEHAVE
        out[mode] = {
            "periods": {
                name: {
                    "good_mean_share": p["good_mean_share"],
                    "good_max_deviation_from_fair": p["good_max_deviation_from_fair"],
                    "bad_share": p["bad_share"],
                    "fair_bad": {t: p["fair"][t] for t in BAD},
                }
                for name, p in analysis["periods"].items()
            },
            "misbehaviour_share": {t: round(shares(sim, onset, stop)[t], 4) for t in BAD},
            "first_hour_share": {t: round(shares(sim, onset, onset + HOUR)[t], 4) for t in BAD},
            "first_hour_fair": {t: round(fair_shares(sim, onset, onset + HOUR)[t], 4) for t in BAD},
            "bad_citizens": {
                t: {
                    k: d[k]
                    for k in (
                        "share_before_punishment",
                        "fair_before_punishment",
                        "detected_after_s",
                        "limits_lowered_after_s",
                    )
                }
                for t, d in analysis["bad_citizens"].items()
            },
            "cron_waits": waits_summary(sim.cron_waits),
            "good_tenants_punished": analysis["good_tenants_punished"],
            "admitted": sim.admitted,
        }
    return out


def run(results_dir: str | Path) -> dict[str, Any]:
    results = Path(results_dir)
    results.mkdir(parents=True, exist_ok=True)
    sims: dict[str, Sim] = {}
    analyses: dict[str, dict[str, Any]] = {}
    walls: dict[str, float] = {}
    with redis_for_benchmark() as redis:
        for mode in MODES:
            began = time.perf_counter()
            sims[mode] = simulate_day(redis, cost=mode)
            walls[mode] = time.perf_counter() - began
            analyses[mode] = analyse(sims[mode])
        ingestion = ingestion_rate(redis, USAGE_EVENTS)
        runtime_ingestion = runtime_rate(redis, RUNTIME_EVENTS)
    sim, analysis, wall = sims["slot_seconds"], analyses["slot_seconds"], walls["slot_seconds"]
    compared = side_by_side(sims, analyses)
    contained = analysis["periods"]["contained"]
    targets_met = (
        contained["good_max_deviation_from_fair"] <= 0.10
        and all(contained["bad_share"][t] < 1 / 20 for t in BAD)
        and not analysis["good_tenants_punished"]
    )
    usage, count = compared["slot_seconds"], compared["count"]
    usage_targets_met = (
        usage["first_hour_share"]["longrun"] <= usage["first_hour_fair"]["longrun"] * 1.10
        and usage["cron_waits"]["p99_s"] <= count["cron_waits"]["p99_s"]
    )
    result: dict[str, Any] = {
        "setup": (
            f"21 tenants (18 good, `cron`, `flood`, `longrun`), {POLICY_DOC['slots']} slots, "
            f"simulated day in {STEP:.0f} s steps, misbehaviour {MISBEHAVE[0] / HOUR:.0f}:00-"
            f"{MISBEHAVE[1] / HOUR:.0f}:00; rules: flood = run requests per tenant >= 15 / 5 min, "
            "long-runs = run-seconds per tenant >= 5400 / 15 min (3 x fair), max_run_seconds "
            "1800; penalties: cooldown 5m (doubling, max 2h), decay_after 30m; `cron` due every "
            "minute, runs of 20 s. Admission by slot-seconds (the default) unless stated."
        ),
        "simulation": {
            "wall_seconds": round(wall, 1),
            "submitted": sim.submitted,
            "admitted": sim.admitted,
            "rejected_429": dict(sim.rejected),
        },
        **analysis,
        "count_vs_usage": compared,
        "ingestion": ingestion,
        "runtime_ingestion": runtime_ingestion,
        "targets_met": targets_met,
        "usage_targets_met": usage_targets_met,
    }
    (results / "policy_sim.json").write_text(json.dumps(result, indent=2))
    (results / "policy_sim.md").write_text(markdown(result))
    plot(sim, analysis, results / "policy_sim.png")
    print(markdown(result))
    return result


if __name__ == "__main__":
    run(Path(__file__).resolve().parent / "results")
