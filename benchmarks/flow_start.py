# ruff: noqa: E501  (the report table keeps one figure per line)
"""flow-start benchmarks (issue 4 §7). `make bench` runs `run(results_dir)`; alone:
`.venv/bin/python -m benchmarks.flow_start`.

1. one tick that admits 1,000 due among 1,000 and among 100,000 scheduled flows, beside a raw
   EVALSHA doing ZRANGEBYSCORE LIMIT 1000 + ZADD on a copy of the same sorted set;
2. admission decisions/s through the Python wrapper vs EVALSHA of the same script called raw;
3. Redis bytes per scheduled flow (`_redis.bytes_per_flow`, as benchmarks/peers.py measures it);
4. fairness: 10 tenants, one submitting 30x the others, slots short; Jain's index over
   share/weight and the worst tenant's share/weight, ours vs FIFO on the same submissions;
5. due time → admitted event at the sink, p50/p99, in the local runner's set-up (a tick every
   second over HTTP to the functions-framework app, events over HTTP to a sink), 1,000 flows
   due in one second.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from redis import Redis

from benchmarks._redis import bytes_per_flow, redis_server
from shared import keys
from shared.admission import cron as admission_cron
from shared.admission import queue as admission
from shared.clock import FakeClock
from shared.events import FlowDocument, OutgoingEvent
from shared.model.policy import parse_policy
from shared.scripts import load_script

SOURCE = "/component-orchestrator/flow-start"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a minute boundary
ROOMY = parse_policy(
    {
        "slots": 1_000_000,
        "defaults": {
            "max_concurrent_runs": 1_000_000,
            "start_rate_per_minute": 10_000_000,
            "max_waiting_runs": 1_000_000,
        },
    }
)
RAW_TICK = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, 1000)
for i = 1, #due, 2 do
  redis.call('ZADD', KEYS[1], tonumber(due[i + 1]) + 60, due[i])
end
return #due / 2
"""


def flow_document(flow_id: str, cron: str, tenant: str, **settings: Any) -> FlowDocument:
    flow_settings: dict[str, Any] = {"spread": False, **settings}
    return FlowDocument.parse(
        {
            "id": flow_id,
            "tenant": tenant,
            "owners": [{"id": f"user-{tenant}", "type": "user"}],
            "cron": cron,
            "graph": {"nodes": [{"id": "a", "componentId": "c", "function": "f"}]},
            "flowSettings": flow_settings,
        }
    )


def populate(redis: Redis, count: int, cron: str, *, prefix: str, now: float, **kw: Any) -> None:
    """`count` schedules stored by the real schedule script (pipelined), deployed."""
    script = load_script("flow_start_schedule")
    sha = redis.script_load(script.source)
    inputs = admission.read_inputs(redis, ROOMY)
    header = admission.header(inputs, now=now, source=SOURCE, once=None)
    script_keys = admission.script_keys(None)
    template = flow_document("template", cron, "tenant-0", **kw)
    args = admission_cron.schedule_args(template, now)
    pipe = redis.pipeline(transaction=False)
    for n in range(count):
        flow_id = f"{prefix}{n}"
        own = [flow_id, *args[1:4], f"tenant-{n % 100}", f"user-{n % 1000}", *args[6:]]
        pipe.evalsha(sha, len(script_keys), *script_keys, *header, *own)
        pipe.sadd(keys.deployed_flows(), flow_id)
        if len(pipe) >= 2000:
            pipe.execute()
    pipe.execute()


def median_of(samples: int, setup: Callable[[int], None], timed: Callable[[], Any]) -> float:
    times = []
    for i in range(samples):
        setup(i)
        start = time.perf_counter()
        timed()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- 1. tick ---------------------------------------------------------------------------------
def tick_case(redis: Redis, total: int) -> dict[str, float]:
    redis.flushall()
    populate(redis, 1000, "* * * * *", prefix="due-", now=T0 - 30, overlapPolicy="allow")
    if total > 1000:
        populate(redis, total - 1000, "30 * * * *", prefix="idle-", now=T0 - 30)
    inputs = admission.read_inputs(redis, ROOMY)
    clock = FakeClock(T0)

    def setup(i: int) -> None:
        clock.set(T0 + 60 * i)
        # the previous tick's runs end (as their flow.execution.* events would say), as in
        # benchmarks/peers.py: a tick meets the state a running system has, not 1,000 more
        # runs per sample; not timed
        redis.delete(
            keys.outbox(keys.ADMISSION),
            keys.admitted_runs(),
            keys.run_deadlines(),
            keys.admission_counts(),
            keys.charged_through(),
        )

    def tick() -> None:
        now = clock.now()
        report = admission_cron.fire_due(
            redis, inputs, ROOMY, now=now, source=SOURCE, dispatch=True
        )
        assert report.admitted == 1000, report

    raw_script = redis.register_script(RAW_TICK)

    raw_now = [T0]

    def raw_setup(i: int) -> None:
        raw_now[0] = T0 + 60 * i
        redis.delete("bench:due")
        redis.zunionstore("bench:due", [keys.schedule_due()])
        redis.zadd("bench:due", {f"due-{n}": raw_now[0] for n in range(1000)})

    def raw() -> None:
        assert raw_script(keys=["bench:due"], args=[raw_now[0]]) == 1000

    # alternated, a sample of each at a time: a change of the machine's load hits both alike
    ours_samples: list[float] = []
    raw_samples: list[float] = []
    for i in range(1, 16):
        for prepare, timed, samples in ((setup, tick, ours_samples), (raw_setup, raw, raw_samples)):
            prepare(i)
            started = time.perf_counter()
            timed()
            samples.append(time.perf_counter() - started)
    ours, raw_time = statistics.median(ours_samples), statistics.median(raw_samples)
    return {"flows": total, "tick_s": ours, "per_flow_us": ours / 1000 * 1e6, "raw_s": raw_time}


# --- 2. wrapper overhead -------------------------------------------------------------------
def decisions_case(redis: Redis, decisions: int = 5000) -> dict[str, float]:
    policy = parse_policy({"slots": 200, "defaults": {"max_waiting_runs": 1_000_000}})
    inputs = admission.read_inputs(redis, policy)
    runs = [
        admission.ExecuteRun(
            run_id=f"run-{n}",
            flow_id=f"flow-{n % 50}",
            tenant=f"tenant-{n % 10}",
            user=f"user-{n % 20}",
            limit_seconds=3600,
            msg_json='{"n":1}',
        )
        for n in range(decisions)
    ]

    def fresh(_: int) -> None:
        redis.flushall()
        redis.sadd(keys.deployed_flows(), *[f"flow-{n}" for n in range(50)])

    def wrapper() -> None:
        for run in runs:
            admission.execute(redis, inputs, None, run, now=T0, source=SOURCE)

    sha = redis.script_load(load_script("flow_start_execute").source)
    script_keys = admission.script_keys(None)
    header = admission.header(inputs, now=T0, source=SOURCE, once=None)
    raw_args = [
        [*script_keys, *header, r.run_id, r.flow_id, r.tenant, r.user, r.limit_seconds, r.msg_json]
        for r in runs
    ]

    def raw() -> None:
        for args in raw_args:
            redis.evalsha(sha, len(script_keys), *args)

    def with_inputs() -> None:
        for run in runs:
            admission.execute(
                redis, admission.read_inputs(redis, policy), None, run, now=T0, source=SOURCE
            )

    wrapped = median_of(3, fresh, wrapper)
    raw_time = median_of(3, fresh, raw)
    full = median_of(3, fresh, with_inputs)
    return {
        "decisions": decisions,
        "wrapper_per_s": decisions / wrapped,
        "raw_per_s": decisions / raw_time,
        "with_penalty_read_per_s": decisions / full,
    }


# --- 3. memory -----------------------------------------------------------------------------
def memory_case(redis: Redis, flows: int = 100_000) -> dict[str, Any]:
    """The one way every benchmark measures it (`_redis.bytes_per_flow`): the schedule hash,
    the due entry and the deployed-set member of each flow, from an empty database."""
    per_flow = bytes_per_flow(
        redis, lambda n: populate(redis, n, "*/5 * * * *", prefix="flow-", now=T0), flows
    )
    sample = admission_cron.stored_schedule(redis, "flow-1")
    return {"flows": flows, "bytes_per_flow": per_flow, "sample": sample}


# --- 4. fairness ---------------------------------------------------------------------------
TENANTS = [f"t{n}" for n in range(10)]
WEIGHTS = {"t0": 1, "t1": 2, **{t: 1 for t in TENANTS[2:]}}  # t0 floods; t1 weighs 2
SLOTS, RUN_STEPS, STEPS, WARMUP = 10, 5, 300, 50


def submissions(step: int) -> list[str]:
    return ["t0"] * 30 + TENANTS[1:]


def fairness_scores(admitted: Counter[str]) -> dict[str, float]:
    total = sum(admitted.values())
    weight_sum = sum(WEIGHTS.values())
    x = [(admitted[t] / total) / (WEIGHTS[t] / weight_sum) for t in TENANTS]
    jain = sum(x) ** 2 / (len(x) * sum(v * v for v in x))
    return {"jain": jain, "worst": min(x), "admitted": total}


def fairness_ours(redis: Redis) -> dict[str, float]:
    redis.flushall()
    policy = parse_policy(
        {
            "slots": SLOTS,
            "defaults": {"max_concurrent_runs": 1000, "start_rate_per_minute": 1_000_000,
                         "max_waiting_runs": 1_000_000},
            "tenants": {t: {"weight": w} for t, w in WEIGHTS.items()},
        }
    )  # fmt: skip
    redis.sadd(keys.deployed_flows(), *[f"flow-{t}" for t in TENANTS])
    tokens: dict[str, int] = {}
    ends: deque[tuple[int, str]] = deque()
    counted: Counter[str] = Counter()
    serial = 0
    for step in range(STEPS):
        now = T0 + step
        inputs = admission.read_inputs(redis, policy)
        while ends and ends[0][0] <= step:
            _, run_id = ends.popleft()
            admission.release(
                redis, inputs, None, run_id=run_id, token=tokens[run_id], now=now, source=SOURCE
            )
        for tenant in submissions(step):
            serial += 1
            run = admission.ExecuteRun(f"r{serial}", f"flow-{tenant}", tenant, "u", 3600, "{}")
            _, token = admission.execute(redis, inputs, None, run, now=now, source=SOURCE)
            tokens[run.run_id] = token or 0
        for raw in redis.lrange(keys.outbox(keys.ADMISSION), 0, -1):
            event = OutgoingEvent.from_json(raw)
            if event.type.endswith(".admitted"):
                ends.append((step + RUN_STEPS, event.data["runId"]))
                if step >= WARMUP:
                    counted[event.data["tenant"]] += 1
        redis.delete(keys.outbox(keys.ADMISSION))
    return fairness_scores(counted)


def fairness_fifo() -> dict[str, float]:
    queue: deque[str] = deque()
    ends: deque[int] = deque()
    counted: Counter[str] = Counter()
    for step in range(STEPS):
        while ends and ends[0] <= step:
            ends.popleft()
        queue.extend(submissions(step))
        while queue and len(ends) < SLOTS:
            tenant = queue.popleft()
            ends.append(step + RUN_STEPS)
            if step >= WARMUP:
                counted[tenant] += 1
    return fairness_scores(counted)


# --- 5. latency in the local runner's set-up ---------------------------------------------------
ARRIVALS = "bench:arrivals"


def serve_sink(port: int, redis_url: str) -> None:
    """The event sink, in its own process (it must not share the sender's interpreter lock):
    records arrival time, decision time (ce-time) and the admitted payload in Redis."""
    client = Redis.from_url(redis_url)

    class Arrivals(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            arrived = time.time()
            decided = datetime.fromisoformat(self.headers.get("ce-time", "")).timestamp()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            client.rpush(ARRIVALS, json.dumps([arrived, decided, json.loads(body)]))

    ThreadingHTTPServer(("127.0.0.1", port), Arrivals).serve_forever()


def latency_case(redis: Redis, flows: int = 1000) -> dict[str, float]:
    import multiprocessing
    import socket

    import functions_framework
    from werkzeug.serving import make_server

    from shared.local.clock import LocalClock
    from shared.local.embedded_redis import free_port

    redis.flushall()
    url = redis.connection_pool.connection_kwargs
    redis_url = f"redis://{url['host']}:{url['port']}/0"
    sink_port = free_port()
    sink = multiprocessing.get_context("spawn").Process(
        target=serve_sink, args=(sink_port, redis_url), daemon=True
    )
    sink.start()
    for _ in range(100):  # until the sink listens
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", sink_port)) == 0:
                break
        time.sleep(0.05)
    policy_file = Path(tempfile.mkdtemp()) / "policy.yaml"
    policy_file.write_text(
        "slots: 100000\ndefaults: {max_concurrent_runs: 100000, start_rate_per_minute: 1000000}\n"
    )
    os.environ.update(
        {
            "REDIS_URL": redis_url,
            "ORCHESTRATOR_KEY": "benchmark-orchestrator-key-0123456789",
            "ORCHESTRATOR_AUTH": "off",
            "ORCHESTRATOR_DEPLOY_DRIVER": "local",
            "K_SINK": f"http://127.0.0.1:{sink_port}/",
            "FLOW_START_WORK_THROUGH_SECONDS": "0",
            "ORCHESTRATOR_POLICY_FILE": str(policy_file),
        }
    )
    source = Path(__file__).resolve().parent.parent / "functions" / "flow_start" / "main.py"
    app = functions_framework.create_app(target="handle", source=str(source))
    logging.disable(logging.INFO)  # one log line per event would be the benchmark
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    now = time.time()
    populate(redis, flows, "* * * * *", prefix="lat-", now=now)
    due = math.ceil(now) + 3
    redis.zadd(keys.schedule_due(), {f"lat-{n}": due for n in range(flows)})
    clock = LocalClock(f"http://127.0.0.1:{server.server_port}/").start()
    deadline = time.time() + 60
    while redis.llen(ARRIVALS) < flows and time.time() < deadline:
        time.sleep(0.1)
    clock.stop()
    server.shutdown()
    sink.terminate()
    logging.disable(logging.NOTSET)
    seen = [json.loads(raw) for raw in redis.lrange(ARRIVALS, 0, -1)]
    admitted = [(a, d, body) for a, d, body in seen if "fencingToken" in body]
    delays = sorted(a - float(body["scheduledFor"]) for a, _, body in admitted)
    decided = sorted(d - float(body["scheduledFor"]) for _, d, body in admitted)
    if len(delays) < flows:
        return {"flows": flows, "arrived": len(delays), "p50_s": math.inf, "p99_s": math.inf,
                "decided_p99_s": math.inf}  # fmt: skip
    return {
        "flows": flows,
        "arrived": len(delays),
        "p50_s": delays[len(delays) // 2],
        "p99_s": delays[int(len(delays) * 0.99) - 1],
        "decided_p99_s": decided[int(len(decided) * 0.99) - 1],
    }


# --- report --------------------------------------------------------------------------------
def run(results_dir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"load_before": os.getloadavg()[0], "cpus": os.cpu_count()}
    with redis_server() as redis:
        small = tick_case(redis, 1000)
        large = tick_case(redis, 100_000)
        results["tick"] = {"n1000": small, "n100000": large}
        results["decisions"] = decisions_case(redis)
        results["memory"] = memory_case(redis)
        results["fairness"] = {"ours": fairness_ours(redis), "fifo": fairness_fifo()}
        results["latency"] = latency_case(redis)
    results["load_after"] = os.getloadavg()[0]
    rows = table(results)
    results["rows"] = rows
    results["command"] = "make bench (or .venv/bin/python -m benchmarks.flow_start)"
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "flow_start.json").write_text(json.dumps(results, indent=2, default=str))
    (results_dir / "flow_start.md").write_text(markdown(rows, results))
    print(f"load average {results['load_before']:.1f} -> {results['load_after']:.1f}")
    for row in rows:
        print(f"{row['figure']:<58} {row['value']:>14}   target {row['target']:<14} {row['ok']}")
    return results


def table(r: dict[str, Any]) -> list[dict[str, str]]:
    small, large = r["tick"]["n1000"], r["tick"]["n100000"]
    decisions, fair, latency = r["decisions"], r["fairness"], r["latency"]
    flat = large["tick_s"] / small["tick_s"]
    vs_raw = large["tick_s"] / large["raw_s"]
    ratio = decisions["wrapper_per_s"] / decisions["raw_per_s"]

    def row(figure: str, value: str, target: str, ok: bool | None) -> dict[str, str]:
        verdict = "-" if ok is None else ("met" if ok else "SHORT")
        return {"figure": figure, "value": value, "target": target, "ok": verdict}

    return [
        row("tick admitting 1,000 due of 1,000 flows", f"{small['tick_s'] * 1e3:.1f} ms", "", None),
        row("tick admitting 1,000 due of 100,000 flows", f"{large['tick_s'] * 1e3:.1f} ms", "", None),
        row("  per admitted flow (100,000)", f"{large['per_flow_us']:.1f} us", "", None),
        row("  100,000 / 1,000 (flat in N)", f"{flat:.2f}x", "<= 1.5x", flat <= 1.5),
        row("raw EVALSHA ZRANGEBYSCORE+ZADD 1,000 (100,000)", f"{large['raw_s'] * 1e3:.2f} ms", "", None),
        row("  tick / raw script", f"{vs_raw:.1f}x", "<= 10x", vs_raw <= 10),
        row("admission decisions/s, Python wrapper", f"{decisions['wrapper_per_s']:.0f}", "", None),
        row("admission decisions/s, raw EVALSHA", f"{decisions['raw_per_s']:.0f}", "", None),
        row("  wrapper / raw", f"{ratio:.2f}", ">= 0.5", ratio >= 0.5),
        row("  decisions/s incl. decision-time penalty read", f"{decisions['with_penalty_read_per_s']:.0f}", "", None),
        row("Redis bytes per scheduled flow", f"{r['memory']['bytes_per_flow']:.0f} B", "<= 600 B", r["memory"]["bytes_per_flow"] <= 600),
        row("fairness: Jain's index (share/weight), ours", f"{fair['ours']['jain']:.3f}", ">= 0.95", fair["ours"]["jain"] >= 0.95),
        row("fairness: worst tenant share/weight, ours", f"{fair['ours']['worst']:.3f}", ">= 0.9", fair["ours"]["worst"] >= 0.9),
        row("fairness: Jain's index, FIFO (same submissions)", f"{fair['fifo']['jain']:.3f}", "(baseline)", None),
        row("fairness: worst tenant share/weight, FIFO", f"{fair['fifo']['worst']:.3f}", "(baseline)", None),
        row("due -> admitted at sink, p50 (1,000 due in 1 s)", f"{latency['p50_s']:.3f} s", "~1 s", latency["p50_s"] <= 1.0),
        row("due -> admitted at sink, p99", f"{latency['p99_s']:.3f} s", "", None),
        row("  due -> admission decided (event time), p99", f"{latency['decided_p99_s']:.3f} s", "", None),
    ]  # fmt: skip


def markdown(rows: list[dict[str, str]], results: dict[str, Any]) -> str:
    lines = [
        "# flow-start benchmark (issue 4 §7)",
        "",
        "`make bench` (or `.venv/bin/python -m benchmarks.flow_start`); "
        f"{results['cpus']} CPUs, load average {results['load_before']:.1f} before and "
        f"{results['load_after']:.1f} after (timings scale with it; ratios much less).",
        "",
        "| figure | value | target | |",
        "|---|---:|---|---|",
    ]
    lines += [f"| {r['figure'].strip()} | {r['value']} | {r['target']} | {r['ok']} |" for r in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run(Path(__file__).resolve().parent / "results")
    sys.exit(0)
