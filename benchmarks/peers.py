# ruff: noqa: E501  (the report keeps one sentence per line)
"""Our tick beside three Redis-backed schedulers, in one run on one Redis (`make bench`; alone:
`.venv/bin/python -m benchmarks peers`). Needs the `bench` extra (`pip install -e '.[bench]'`).

Every system gets the same set-up: N scheduled flows (jobs, entries), 1,000 of them due at the
tick and the rest due next year; one tick must hand exactly those 1,000 on. Time per tick is
the median of 5 ticks at each N (25 for ours and the bound); before each tick (not timed) the 1,000 are made due again.
The systems' flows sit side by side in one database and are ticked round by round (each round
ticks every system once), so a change of the machine's load hits every system alike: on a
shared box the ratios hold where the absolute times do not.
Bytes per flow are measured the same way for every system (`_redis.bytes_per_flow`: INFO
used_memory of the empty database, then after writing N flows the way the system writes them,
every key it keeps per scheduled flow, delta / N).

The peers' own hand-off is replaced by a counter where it leaves Redis (APScheduler's executor,
celery's broker publish); rq-scheduler's hand-off is an RQ queue in the same Redis and is kept.
What each tick does and does not do is in PEER_NOTES (read from their sources).
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from redis import Redis

from benchmarks import flow_start
from benchmarks._redis import bytes_per_flow, redis_server
from shared import keys
from shared.admission import cron as admission_cron
from shared.admission import queue as admission
from shared.clock import FakeClock

SIZES = (1_000, 3_000, 10_000, 30_000, 100_000)
DUE = 1_000
SAMPLES = 5
FAST_REPEATS = 5  # ticks per round of ours and the bound (25 in all; the peers tick 5 times)
IDLE_DUE = datetime(2027, 6, 1, tzinfo=UTC)  # far from every tick of the run


def noop() -> None:
    """The job every peer schedules (never run: the ticks hand it on)."""


@dataclass
class System:
    """One scheduler under test: writes N flows, makes the due ones due again, ticks."""

    name: str
    label: str
    populate: Callable[[int], None]
    prepare: Callable[[int], None]
    tick: Callable[[], int]
    samples: list[float] = field(default_factory=list)
    repeats: int = 1  # ticks per round (the fast systems tick more often: a firmer median)


def _timed_tick(system: System, i: int) -> float:
    """One tick; Python's cycle collector runs before it (untimed) and not during it, for
    every system alike: the peers' objects share our process and would otherwise make a
    collection that falls into another system's tick cost tens of milliseconds."""
    system.prepare(i)
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        handed_on = system.tick()
        elapsed = time.perf_counter() - started
    finally:
        gc.enable()
    assert handed_on == DUE, (system.name, handed_on)
    return elapsed


def _median_ticks(systems: list[System]) -> dict[str, float]:
    """SAMPLES ticks of each system, round by round (each round ticks every system once, in
    turn), so a change of the machine's load during the run hits every system alike."""
    times: dict[str, list[float]] = {system.name: [] for system in systems}
    for i in range(SAMPLES):
        for repeat in range(max(system.repeats for system in systems)):
            for system in systems:
                if repeat < system.repeats:
                    times[system.name].append(_timed_tick(system, i * FAST_REPEATS + repeat))
    return {name: statistics.median(values) for name, values in times.items()}


# --- ours ----------------------------------------------------------------------------------------
def ours(redis: Redis, *, overlap: str) -> System:
    clock = FakeClock(flow_start.T0)
    inputs: list[admission.Inputs] = []

    def populate(n: int) -> None:
        due = min(n, DUE)
        flow_start.populate(
            redis, due, "* * * * *", prefix="due-", now=flow_start.T0 - 30, overlapPolicy=overlap
        )
        if n > due:
            flow_start.populate(redis, n - due, "0 0 1 6 *", prefix="idle-", now=flow_start.T0 - 30)
        inputs[:] = [admission.read_inputs(redis, flow_start.ROOMY)]

    def prepare(i: int) -> None:
        clock.set(flow_start.T0 + 60 * i)
        redis.delete(keys.outbox(keys.ADMISSION))
        # the previous tick's runs end (as their flow.execution.* events would say), so a
        # skip-if-running flow is free to run again; not timed
        redis.delete(
            keys.admitted_runs(),
            keys.run_deadlines(),
            keys.admission_counts(),
            keys.charged_through(),
        )
        redis.delete(*[keys.run_lease(f"due-{n}") for n in range(DUE)])

    def tick() -> int:
        now = clock.now()
        report = admission_cron.fire_due(  # as flow-start's tick: dispatch, then fire
            redis, inputs[0], flow_start.ROOMY, now=now, source=flow_start.SOURCE, dispatch=True
        )
        return report.admitted

    name = "ours" if overlap == "allow" else "ours-skip"
    label = (
        "ours: admission.dispatch + admission_cron.fire_due"
        if overlap == "allow"
        else "ours, overlap skip (a lease per run: skip-if-running)"
    )
    return System(name, label, populate, prepare, tick, repeats=FAST_REPEATS)


def lower_bound(redis: Redis) -> System:
    script = redis.register_script(flow_start.RAW_TICK)
    state = {"now": time.time()}

    def populate(n: int) -> None:
        due = min(n, DUE)
        with redis.pipeline(transaction=False) as pipe:
            for first in range(0, n, 5000):
                members = {
                    (f"due-{i}" if i < due else f"idle-{i}"): (
                        state["now"] if i < due else IDLE_DUE.timestamp()
                    )
                    for i in range(first, min(n, first + 5000))
                }
                pipe.zadd("bench:due", members)
            pipe.execute()

    def prepare(i: int) -> None:
        redis.zadd("bench:due", {f"due-{n}": state["now"] for n in range(DUE)})

    def tick() -> int:
        return int(script(keys=["bench:due"], args=[state["now"]]))

    return System(
        "bound",
        "lower bound: one EVALSHA (ZRANGEBYSCORE + ZADD, no cron)",
        populate,
        prepare,
        tick,
        repeats=FAST_REPEATS,
    )


# --- APScheduler 3.11 ------------------------------------------------------------------------------
def apscheduler(redis: Redis) -> System:
    from apscheduler.executors.base import BaseExecutor
    from apscheduler.job import Job
    from apscheduler.jobstores.redis import RedisJobStore
    from apscheduler.schedulers.base import BaseScheduler
    from apscheduler.triggers.cron import CronTrigger

    class CountingExecutor(BaseExecutor):  # type: ignore[misc]
        submitted = 0

        def _do_submit_job(self, job: Any, run_times: Any) -> None:
            self.submitted += 1

    class BenchScheduler(BaseScheduler):  # type: ignore[misc]
        def shutdown(self, wait: bool = True) -> None:
            super().shutdown(wait)

        def wakeup(self) -> None:
            pass

    connection = redis.connection_pool.connection_kwargs
    executor = CountingExecutor()
    scheduler = BenchScheduler(timezone=UTC)
    scheduler.add_executor(executor, "default")
    store = RedisJobStore(host=connection["host"], port=connection["port"])
    scheduler.add_jobstore(store, "default")
    scheduler.start()

    def state(job_id: str, cron: str, next_run: datetime) -> dict[str, Any]:
        job = Job(
            scheduler, id=job_id, func=noop, trigger=CronTrigger.from_crontab(cron, timezone=UTC),
            executor="default", args=(), kwargs={}, name="noop", misfire_grace_time=60,
            coalesce=True, max_instances=1, next_run_time=next_run,
        )  # fmt: skip
        return dict(job.__getstate__())

    def write(pipe: Any, job_state: dict[str, Any]) -> None:
        pipe.hset(store.jobs_key, job_state["id"], pickle.dumps(job_state, store.pickle_protocol))
        pipe.zadd(store.run_times_key, {job_state["id"]: job_state["next_run_time"].timestamp()})

    def populate(n: int) -> None:
        due = min(n, DUE)
        due_state = state("due", "* * * * *", datetime.now(UTC) - timedelta(seconds=1))
        idle_state = state("idle", "0 0 1 6 *", IDLE_DUE)
        with redis.pipeline(transaction=False) as pipe:
            for i in range(n):
                template = due_state if i < due else idle_state
                write(pipe, {**template, "id": f"{'due' if i < due else 'idle'}-{i}"})
                if len(pipe) >= 4000:
                    pipe.execute()
            pipe.execute()

    def prepare(i: int) -> None:
        executor._instances.clear()  # the previous tick's runs ended
        before = executor.submitted
        due_state = state("due", "* * * * *", datetime.now(UTC) - timedelta(seconds=1))
        with redis.pipeline(transaction=False) as pipe:
            for n in range(DUE):
                write(pipe, {**due_state, "id": f"due-{n}"})
            pipe.execute()
        executor.submitted = before

    def tick() -> int:
        before = executor.submitted
        scheduler._process_jobs()
        return executor.submitted - before

    return System("apscheduler", "APScheduler 3.11 `_process_jobs`", populate, prepare, tick)


# --- celery-redbeat 2.4 ----------------------------------------------------------------------------
def redbeat(redis: Redis) -> System:
    from celery import Celery
    from celery.schedules import crontab
    from redbeat.decoder import RedBeatJSONEncoder
    from redbeat.schedulers import RedBeatScheduler, acquire_distributed_beat_lock

    connection = redis.connection_pool.connection_kwargs
    app = Celery("bench", broker="memory://", set_as_current=False)
    app.conf.redbeat_redis_url = f"redis://{connection['host']}:{connection['port']}/0"
    app.conf.timezone = "UTC"
    sent = {"n": 0}

    class CountingScheduler(RedBeatScheduler):  # type: ignore[misc]
        def send_task(self, *args: Any, **kwargs: Any) -> None:
            sent["n"] += 1  # the broker publish, replaced by a counter

    scheduler = CountingScheduler(app=app)
    conf = app.redbeat_conf
    every_minute = crontab()
    yearly = crontab(minute=0, hour=0, day_of_month=1, month_of_year=6)

    def definition(name: str, schedule: Any) -> str:
        return json.dumps(
            {"name": name, "task": "bench.noop", "args": [], "kwargs": {}, "options": {},
             "schedule": schedule, "enabled": True},
            cls=RedBeatJSONEncoder,
        )  # fmt: skip

    def meta(last_run: datetime) -> str:
        return json.dumps({"last_run_at": last_run}, cls=RedBeatJSONEncoder)

    def make_due(pipe: Any, name: str, now: datetime) -> None:
        key = conf.key_prefix + name
        pipe.hset(key, "meta", meta(now - timedelta(minutes=1)))
        pipe.zadd(conf.schedule_key, {key: now.timestamp() - 1})

    def populate(n: int) -> None:
        due = min(n, DUE)
        now = datetime.now(UTC)
        with redis.pipeline(transaction=False) as pipe:
            for i in range(n):
                name = f"due-{i}" if i < due else f"idle-{i}"
                key = conf.key_prefix + name
                pipe.hset(key, "definition", definition(name, every_minute if i < due else yearly))
                if i < due:
                    make_due(pipe, name, now)
                else:
                    pipe.hset(key, "meta", meta(now))
                    pipe.zadd(conf.schedule_key, {key: IDLE_DUE.timestamp()})
                if len(pipe) >= 4000:
                    pipe.execute()
            pipe.execute()
        # the one beat's distributed lock (gone with the database), extended by every tick
        acquire_distributed_beat_lock(sender=types.SimpleNamespace(scheduler=scheduler))

    def prepare(i: int) -> None:
        now = datetime.now(UTC)
        with redis.pipeline(transaction=False) as pipe:
            for n in range(DUE):
                make_due(pipe, f"due-{n}", now)
            pipe.execute()

    def tick() -> int:
        before = sent["n"]
        scheduler.tick()
        return sent["n"] - before

    return System("redbeat", "celery-redbeat 2.4 `tick`", populate, prepare, tick)


# --- rq-scheduler 0.14 -----------------------------------------------------------------------------
def rq_scheduler(redis: Redis) -> System:
    from rq_scheduler import Scheduler

    # crontab's FutureWarning about its own defaults, once per job: noise in the report
    warnings.filterwarnings("ignore", category=FutureWarning)
    scheduler = Scheduler(connection=redis)
    queue_key = "rq:queue:default"

    def template(cron: str) -> dict[Any, Any]:
        job = scheduler.cron(cron, func=noop, id=f"template-{len(cron)}")
        fields = cast(dict[Any, Any], redis.hgetall(job.key))
        redis.delete(job.key)
        redis.zrem(scheduler.scheduled_jobs_key, job.id)
        return fields

    def populate(n: int) -> None:
        due = min(n, DUE)
        due_fields, idle_fields = template("* * * * *"), template("0 0 1 6 *")
        now = time.time()
        with redis.pipeline(transaction=False) as pipe:
            for i in range(n):
                job_id = f"due-{i}" if i < due else f"idle-{i}"
                pipe.hset(f"rq:job:{job_id}", mapping=due_fields if i < due else idle_fields)
                score = now - 1 if i < due else IDLE_DUE.timestamp()
                pipe.zadd(scheduler.scheduled_jobs_key, {job_id: score})
                if len(pipe) >= 4000:
                    pipe.execute()
            pipe.execute()

    def prepare(i: int) -> None:
        redis.delete(queue_key)
        redis.zadd(scheduler.scheduled_jobs_key, {f"due-{n}": time.time() - 1 for n in range(DUE)})

    def tick() -> int:
        scheduler.enqueue_jobs()
        return int(redis.llen(queue_key))

    return System("rq-scheduler", "rq-scheduler 0.14 `enqueue_jobs`", populate, prepare, tick)


PEER_NOTES = {
    "ours": "Reads the due entries (one script, at most 1,000 per call), plans each in Python (next due time, catch-up window), then one script claims every entry by compare-and-set on its score (so concurrent ticks and replicas fire each due time once), admits it through the fair queue (slots, tenant caps, start-rate buckets, penalties) and writes the run record, its deadline, the next due time and the admitted event into the outbox, all atomically. Sending the events is the outbox flush's job, after the tick. Here the due flows use overlap `allow` (no lease).",
    "ours-skip": "The same tick with the default overlap policy `skip`: each run also takes the flow's lease (skip-if-running across every replica, fenced by a token).",
    "bound": "No cron arithmetic, no admission, no events: ZRANGEBYSCORE LIMIT 1000 and one ZADD per entry inside one EVALSHA. What no scheduler on Redis can beat.",
    "apscheduler": "`RedisJobStore.get_due_jobs`: ZRANGEBYSCORE (no limit) + HMGET of the pickled jobs, unpickled one by one; per job the run times (coalesced), a submit to the executor, the next fire time and `update_job` = HEXISTS + a pipeline (HSET of the re-pickled job + ZADD): two round trips per job. No claim: two schedulers on one job store both run every job (its docs say not to share a job store); `max_instances` (skip-if-running) is counted in the executor's memory, per process; read, submit and update are separate, non-atomic steps.",
    "redbeat": "Extends the one distributed beat lock (a single beat runs; others wait for the lock: no claim per entry), ZRANGEBYSCORE of the due keys, then per entry a pipeline of two HGETs (definition, meta), JSON decode, `is_due` by celery's crontab, `reserve` = a pipeline (HSET meta + ZADD next time), then `send_task` to the broker (a counter here). No skip-if-running: beat sends whether or not the previous run still runs.",
    "rq-scheduler": "ZRANGEBYSCORE of every due job id (no limit), per job `Job.fetch` (HGETALL, unpickle), `queue.enqueue_job` (job saved + pushed onto the RQ queue in Redis), ZREM, croniter next time, ZADD: several round trips per job. `run()` wraps the tick in a scheduler-wide lock (SET NX EX; not timed here), but there is no claim per job (the ZREM after the enqueue is no compare-and-set) and no skip-if-running.",
}


def run(results_dir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"load_before": os.getloadavg()[0], "cpus": os.cpu_count(),
                               "sizes": list(SIZES), "due": DUE, "samples": SAMPLES}  # fmt: skip
    systems: dict[str, dict[str, Any]] = {}
    with redis_server() as redis:
        info = redis.info("server")
        results["redis"] = info["redis_version"]
        results["hiredis"] = _hiredis()
        makers = {"bound": lower_bound, "ours": lambda r: ours(r, overlap="allow"),
                  "ours-skip": lambda r: ours(r, overlap="skip"), "apscheduler": apscheduler,
                  "redbeat": redbeat, "rq-scheduler": rq_scheduler}  # fmt: skip
        made = {name: make(redis) for name, make in makers.items()}
        for name, system in made.items():
            systems[name] = {"label": system.label, "tick_s": {}, "bytes_per_flow": {}}
            # bytes: each system alone in the database, at the largest N
            systems[name]["bytes_per_flow"][SIZES[-1]] = bytes_per_flow(
                redis, system.populate, SIZES[-1]
            )
        # ticks: every system's flows side by side in one database (their keys are apart),
        # ticked round by round; ours-skip shares ours' keys, so it runs in a phase of its own
        phases = [[made[n] for n in made if n != "ours-skip"], [made["ours-skip"]]]
        for n in SIZES:
            for phase in phases:
                redis.flushall()
                for system in phase:
                    system.populate(n)
                for name, tick_s in _median_ticks(phase).items():
                    systems[name]["tick_s"][n] = tick_s
            print("  N=" + f"{n:,}: " + ", ".join(
                f"{name} {entry['tick_s'][n] * 1e3:.1f} ms" for name, entry in systems.items()
            ), flush=True)  # fmt: skip
        redis.flushall()
    results["systems"] = systems
    results["load_after"] = os.getloadavg()[0]
    results["goals"] = goals(systems)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "peers.json").write_text(json.dumps(results, indent=2, default=str))
    (results_dir / "peers.md").write_text(markdown(results))
    plot(results, results_dir / "peers.png")
    return {"goals": results["goals"], "tick_ms_100000": {
        name: round(entry["tick_s"][SIZES[-1]] * 1e3, 2) for name, entry in systems.items()}}  # fmt: skip


def _hiredis() -> str:
    try:
        import hiredis

        return str(hiredis.__version__)
    except ImportError:
        return "not installed"


def goals(systems: dict[str, dict[str, Any]]) -> dict[str, Any]:
    big, small = SIZES[-1], SIZES[0]
    ours_big = systems["ours"]["tick_s"][big]
    fastest_peer = min(
        systems[p]["tick_s"][big] for p in ("apscheduler", "redbeat", "rq-scheduler")
    )
    bound = systems["bound"]["tick_s"][big]
    flat = ours_big / systems["ours"]["tick_s"][small]
    per_flow = systems["ours"]["bytes_per_flow"][big]

    def goal(value: float, target: str, met: bool) -> dict[str, Any]:
        return {"value": round(value, 2), "target": target, "met": met}

    return {
        "tick / lower bound (100,000)": goal(ours_big / bound, "<= 8x", ours_big / bound <= 8),
        "fastest peer / tick (100,000)": goal(
            fastest_peer / ours_big, ">= 20x", fastest_peer / ours_big >= 20
        ),
        "tick 100,000 / 1,000 (flat in N)": goal(flat, "<= 1.5x", flat <= 1.5),
        "Redis bytes per scheduled flow": goal(per_flow, "<= 300 B", per_flow <= 300),
    }


def markdown(results: dict[str, Any]) -> str:
    systems = results["systems"]
    sizes = results["sizes"]
    head = " | ".join(f"{n:,} due of {n:,}" if n == DUE else f"of {n:,}" for n in sizes)
    lines = [
        "# Our tick beside the peers (one run, one Redis)",
        "",
        f"`make bench` (or `.venv/bin/python -m benchmarks peers`); Redis {results['redis']}, "
        f"hiredis {results['hiredis']}, {results['cpus']} CPUs, load average "
        f"{results['load_before']:.1f} before and {results['load_after']:.1f} after. One tick "
        f"hands on {DUE:,} due flows among N; median of {SAMPLES} ticks ({SAMPLES * FAST_REPEATS} for ours and the bound), the systems ticked round by "
        "round with their flows side by side in one database (a change of load hits all alike; "
        "ours with overlap skip shares ours' keys and runs apart). Bytes per flow: INFO "
        "used_memory delta / N after writing N flows, every key the system keeps per "
        "scheduled flow, measured the same way for every system (at the largest N).",
        "",
        f"| system | {head} | Redis bytes per flow |",
        "|---|" + "---:|" * (len(sizes) + 1),
    ]
    for entry in systems.values():
        times = " | ".join(f"{entry['tick_s'][n] * 1e3:,.1f} ms" for n in sizes)
        label = entry["label"]
        label = f"**{label}**" if label.startswith("ours:") else label
        lines.append(f"| {label} | {times} | {entry['bytes_per_flow'][sizes[-1]]:,.0f} |")
    lines += ["", "| goal | value | target | |", "|---|---:|---|---|"]
    for name, g in results["goals"].items():
        lines.append(
            f"| {name} | {g['value']} | {g['target']} | {'met' if g['met'] else 'SHORT'} |"
        )
    lines += ["", "## What each tick does and does not do (read from the sources)", ""]
    for name, note in PEER_NOTES.items():
        lines.append(f"- **{systems[name]['label']}**: {note}")
    lines += ["", "![time per tick against N](peers.png)", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    sizes = results["sizes"]
    for entry in results["systems"].values():
        axes.plot(
            sizes, [entry["tick_s"][n] * 1e3 for n in sizes], marker="o", label=entry["label"]
        )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("scheduled flows N (1,000 due at the tick)")
    axes.set_ylabel("time per tick (ms, median)")
    axes.set_title(f"One tick handing on 1,000 due flows (Redis {results['redis']})")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    print(json.dumps(run(Path(__file__).resolve().parent / "results"), indent=2))
    sys.exit(0)
