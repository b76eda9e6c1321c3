# ruff: noqa: E501  (the report table keeps one figure per line)
"""due → admitted with single-flight ticks (the tick lease) against the behaviour before it.
`make bench` runs `run(results_dir)`; alone: `.venv/bin/python -m benchmarks.tick_lease`.

flow-start's real runtime in this process (FunctionRuntime over a real Redis, the events
recorded as the sink would receive them), its tick handled by a pool of 8 worker threads as
functions-framework serves 2 CPUs. Time is scaled by 1/10: a PingSource tick every 6 s and
FLOW_START_WORK_THROUGH_SECONDS=5.5 (55 s and a minute in production). 300 flows come due at
random times over 30 s; 12 s in, 20 ticks arrive at once (a broker replaying), and meanwhile a
flow.execute every 0.2 s. Two modes, the same arrivals:
- `lease`: the code as it is (the first tick takes `co:{adm}:tick-lease`, the others answer);
- `before`: the same code with the lease bypassed (`tick_lease.single_flight` always yields
  True), which is what ticks did before it: every tick works through its window.
Figures: due → admitted event p50/p99/max, and how long a flow.execute waited for its answer
(p50/p99/max) while the burst was in flight.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cloudevents.http import CloudEvent
from redis import Redis

from benchmarks._redis import redis_server
from benchmarks.flow_start import ROOMY, populate
from shared import keys
from shared.clock import SystemClock
from shared.events import FlowDocument, OutgoingEvent
from shared.events import types as t
from shared.handlers import flow_start
from shared.model import flows
from shared.runtime import tick_lease
from shared.runtime.auth import Authorizer
from shared.runtime.function import FunctionRuntime
from shared.settings import Settings

SCALE = 0.1  # a minute is 6 s
TICK_EVERY = 60 * SCALE
WORK_THROUGH = 55 * SCALE
FLOWS = 300
WINDOW = 30.0  # flows come due over this many seconds
BURST_AT = 12.0
BURST = 20
THREADS = 8  # functions-framework: 4 threads per CPU, 2 CPUs
EXECUTE_EVERY = 0.2


class Recorder:
    """The sink: when each admitted event arrived (the outbox flush calls it)."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def send(self, event: OutgoingEvent) -> None:
        with self._lock:
            self.arrivals.append((time.time(), dict(event.data)))


@contextlib.contextmanager
def _always_holder(redis: Redis, tag: str, hold_seconds: float) -> Iterator[bool]:
    yield True


def _runtime(redis: Redis, recorder: Recorder) -> FunctionRuntime[Any]:
    connection = redis.connection_pool.connection_kwargs
    env = {
        "REDIS_URL": f"redis://{connection['host']}:{connection['port']}/0",
        "ORCHESTRATOR_KEY": "benchmark-orchestrator-key-0123456789",
        "ORCHESTRATOR_AUTH": "off",
        "ORCHESTRATOR_DEPLOY_DRIVER": "local",
        "FLOW_START_WORK_THROUGH_SECONDS": str(WORK_THROUGH),
    }
    settings = Settings.from_env(env)
    clock = SystemClock()
    return FunctionRuntime(
        flow_start.SPEC,
        settings=settings,
        redis=redis,
        clock=clock,
        policy=ROOMY,
        sender=recorder,
        authorizer=Authorizer(settings, clock, flow_tenant=lambda flow_id: "tenant-0"),
        services=flow_start.Services(work_through_seconds=WORK_THROUGH, sender=recorder),
    )


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0, "p50_s": float("nan"), "p99_s": float("nan"), "max_s": float("nan")}
    return {
        "n": len(ordered),
        "p50_s": ordered[len(ordered) // 2],
        "p99_s": ordered[max(0, int(len(ordered) * 0.99) - 1)],
        "max_s": ordered[-1],
    }


def one_mode(redis: Redis, mode: str, seed: int = 16) -> dict[str, Any]:
    redis.flushall()
    recorder = Recorder()
    runtime = _runtime(redis, recorder)
    start = time.time() + 2.0
    populate(redis, FLOWS, "0 0 1 1 *", prefix="tl-", now=time.time())
    rng = random.Random(seed)
    due = {f"tl-{n}": start + rng.uniform(0, WINDOW) for n in range(FLOWS)}
    redis.zadd(keys.schedule_due(), due)
    webhook = FlowDocument.parse(
        {"id": "hook", "tenant": "tenant-0", "owners": [{"id": "u", "type": "user"}],
         "graph": {"nodes": [{"id": "a", "componentId": "c", "function": "f"}], "edges": []}}
    )  # fmt: skip
    flows.upsert(redis, webhook, 1.0)
    redis.sadd(keys.deployed_flows(), "hook")
    pool = ThreadPoolExecutor(max_workers=THREADS)
    answered: list[float] = []
    lock = threading.Lock()

    def tick(n: int) -> None:
        runtime.handle(CloudEvent({"type": t.TICK, "source": "/bench/ping", "id": f"tick-{n}"}, {}))

    def execute(n: int, sent: float) -> None:
        runtime.handle(
            CloudEvent(
                {"type": t.FLOW_EXECUTE, "source": "/bench/hook", "id": f"exe-{n}"},
                {"flowId": "hook", "msg": {}},
            )
        )
        with lock:
            answered.append(time.time() - sent)

    original = tick_lease.single_flight
    if mode == "before":
        tick_lease.single_flight = _always_holder
    futures: list[Future[None]] = []
    try:
        while time.time() < start:
            time.sleep(0.01)
        end = start + WINDOW + TICK_EVERY
        next_tick, next_execute, ticks, executes, burst_done = start, start, 0, 0, False
        burst_executes: list[int] = []
        while time.time() < end:
            now = time.time()
            if now >= next_tick:
                futures.append(pool.submit(tick, ticks))
                ticks += 1
                next_tick += TICK_EVERY
            if not burst_done and now >= start + BURST_AT:
                for _ in range(BURST):
                    futures.append(pool.submit(tick, ticks))
                    ticks += 1
                burst_done = True
            if now >= next_execute:
                if burst_done and now < start + BURST_AT + WORK_THROUGH:
                    burst_executes.append(executes)
                futures.append(pool.submit(execute, executes, now))
                executes += 1
                next_execute += EXECUTE_EVERY
            time.sleep(0.005)
        for future in futures:
            future.result(timeout=120)
    finally:
        tick_lease.single_flight = original
        pool.shutdown(wait=True)
    delays = [
        arrived - float(data["scheduledFor"])
        for arrived, data in recorder.arrivals
        if data.get("flowId", "").startswith("tl-") and "fencingToken" in data
    ]
    fired = {
        data["flowId"]
        for _, data in recorder.arrivals
        if str(data.get("flowId", "")).startswith("tl-")
    }
    return {
        "mode": mode,
        "due_to_admitted": _percentiles(delays),
        "fired_flows": len(fired),
        "execute_answer": _percentiles(answered),
        "ticks_sent": ticks,
        "executes_sent": executes,
    }


def run(results_dir: Path) -> dict[str, Any]:
    logging.disable(logging.WARNING)  # one log line per event would be the benchmark
    results: dict[str, Any] = {"load_before": os.getloadavg()[0], "cpus": os.cpu_count()}
    try:
        with redis_server() as redis:
            # alternating, two runs each: the load of this shared box moves within minutes
            runs = [one_mode(redis, mode) for mode in ("lease", "before", "lease", "before")]
    finally:
        logging.disable(logging.NOTSET)
    results["runs"] = runs
    results["load_after"] = os.getloadavg()[0]
    results["command"] = "make bench (or .venv/bin/python -m benchmarks.tick_lease)"
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "tick_lease.json").write_text(json.dumps(results, indent=2, default=str))
    (results_dir / "tick_lease.md").write_text(markdown(results))
    print(markdown(results))
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# due → admitted: single-flight ticks (lease) against the behaviour before",
        "",
        "`.venv/bin/python -m benchmarks.tick_lease` (module docstring: the set-up). Time scaled",
        f"by 1/10 (a tick every {TICK_EVERY:g} s, work-through {WORK_THROUGH:g} s); {FLOWS} flows due at",
        f"random over {WINDOW:g} s, a burst of {BURST} ticks {BURST_AT:g} s in, a flow.execute every",
        f"{EXECUTE_EVERY:g} s, {THREADS} worker threads. {results['cpus']} CPUs, load average",
        f"{results['load_before']:.1f} before and {results['load_after']:.1f} after (a shared box).",
        "",
        "| run | mode | due→admitted p50 | p99 | max | flows fired | execute answered p50 | p99 | max |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, r in enumerate(results["runs"], 1):
        d, e = r["due_to_admitted"], r["execute_answer"]
        lines.append(
            f"| {n} | {r['mode']} | {d['p50_s']:.3f} s | {d['p99_s']:.3f} s | {d['max_s']:.3f} s "
            f"| {r['fired_flows']} / {FLOWS} | {e['p50_s']:.3f} s | {e['p99_s']:.3f} s | {e['max_s']:.3f} s |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run(Path(__file__).resolve().parent / "results")
