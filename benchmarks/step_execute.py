"""step-execute benchmarks (issue 6 §9). `make bench` runs `run(results_dir)`; alone:
`.venv/bin/python -m benchmarks.step_execute`.

All on one embedded Redis, in the same run:
1. raw: XADD (pipelined) + XREADGROUP + XACK of N messages on one stream: messages/s;
2. routed through step-execute, driving `shared` directly: each step.completed output of step
   a is routed (JSONata-free edge) and recorded by the `step_route` script, then published to
   step b's stream by the publisher (claim under the rate buckets, token, XADD, deadline):
   messages/s, and the whole message life (publish, consume, complete) per second; once with
   one script call per output (as the handler makes it), once with 100 calls pipelined;
3. the same through the function runtime (`FunctionRuntime.handle`: CloudEvent parse, step
   token check, dedupe, handler, outbox flush), one step.completed at a time: messages/s and
   the latency from step.completed received to the next step's message in its stream (XADD
   done), p50 / p99.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from cloudevents.http import CloudEvent
from redis import Redis

from benchmarks._redis import redis_server
from shared import keys
from shared.adapters.redis_streams import RedisStreamsQueue
from shared.clock import SystemClock
from shared.events import FlowDocument, RunAdmitted, StepResult
from shared.events import types as t
from shared.execution import runs
from shared.execution.publisher import Publisher
from shared.execution.routing import Graph, route
from shared.handlers.step_execute import SPEC, build_services
from shared.model import flows
from shared.model.policy import Policy, TenantLimits
from shared.runtime.auth import Authorizer
from shared.runtime.function import FunctionRuntime
from shared.runtime.idempotency import Once
from shared.scripts import ScriptCall
from shared.settings import Settings

KEY = "benchmark-orchestrator-key-0123456789abcdef"
TENANT, USER = "acme", "alice"
N_DIRECT = 10_000
N_RUNTIME = 2_000
POLICY = Policy(defaults=replace(TenantLimits(), messages_per_second=1e9))
SOURCE = "/component-orchestrator/step-execute"


def flow(flow_id: str) -> FlowDocument:
    return FlowDocument.parse(
        {
            "id": flow_id,
            "tenant": TENANT,
            "owners": [{"id": USER, "type": "user"}],
            "graph": {
                "nodes": [{"id": "a", "componentId": "c"}, {"id": "b", "componentId": "c"}],
                "edges": [{"source": "a", "target": "b"}],
            },
        }
    )


# --- 1. raw streams ----------------------------------------------------------------------------
def raw_streams(redis: Redis, n: int) -> float:
    stream = "bench:raw"
    redis.delete(stream)
    redis.xgroup_create(stream, "workers", id="0", mkstream=True)
    body = json.dumps({"runId": "r", "stepId": "b", "messageId": "m", "data": {"n": 1}})
    started = time.perf_counter()
    for start in range(0, n, 100):
        with redis.pipeline(transaction=False) as pipe:
            for _ in range(min(100, n - start)):
                pipe.xadd(stream, {"m": body}, maxlen=100_000, approximate=True)
            pipe.execute()
    read = 0
    while read < n:
        reply = cast(
            list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]],
            redis.xreadgroup("workers", "c", {stream: ">"}, count=100),
        )
        entries = reply[0][1] if reply else []
        if not entries:
            break
        redis.xack(stream, "workers", *[entry_id for entry_id, _ in entries])
        read += len(entries)
    elapsed = time.perf_counter() - started
    assert read == n, (read, n)
    return n / elapsed


# --- 2. shared directly ------------------------------------------------------------------------
def start_run(redis: Redis, flow_id: str, run_id: str) -> tuple[runs.RunGraph, str]:
    document = flow(flow_id)
    flows.upsert(redis, document, 0)
    graph = Graph.from_flow(document)
    admitted = RunAdmitted(flow_id=flow_id, run_id=run_id, tenant=TENANT, user=USER,
                           fencing_token=1, scheduled_for=0, trigger="execute")  # fmt: skip
    runs.start(
        redis, Once.keyed(redis, keys.EXECUTION, "bench", run_id), admitted=admitted, graph=graph,
        messages=runs.start_messages(run_id, graph, "{}"), limits=POLICY.tenant(TENANT),
        now=time.time(),
    )  # fmt: skip
    run = runs.load(redis, run_id)
    assert run is not None
    return run, runs.start_messages(run_id, graph, "{}")[0].message_id


def routed_direct(redis: Redis, n: int, batch: int = 1) -> dict[str, float]:
    """`batch` 1: one script call per output, as the handler makes it; more: that many
    prepared calls pipelined in one round trip (`runs.run_calls`)."""
    clock = SystemClock()
    queue = RedisStreamsQueue(redis, maxlen=n * 2)
    publisher = Publisher(redis, queue, clock, KEY)
    flow_id, run_id = f"direct-{batch}", f"run-direct-{batch}"
    run, start = start_run(redis, flow_id, run_id)
    publisher.drain(POLICY)
    queue.receive(keys.step_queue(flow_id, "a"), "c", max_messages=10, wait_seconds=0)

    def call(step: str, message_id: str, seq: int, final: bool, data: Any) -> ScriptCall:
        result = StepResult(run_id=run_id, step_id=step, message_id=message_id, seq=seq,
                            final=final, data=data, empty=data is None)  # fmt: skip
        return runs.output_call(
            Once.keyed(redis, keys.EXECUTION, "bench", run_id, message_id, str(seq)),
            run=run, result=result,
            routes=[] if data is None else route(run.graph, step, data), now=clock.now(),
            retention_seconds=3600, source=SOURCE,
        )  # fmt: skip

    def record(calls: list[ScriptCall]) -> None:
        if batch == 1:
            for one in calls:
                runs.run_call(redis, one)
        else:
            runs.run_calls(redis, calls)

    started = time.perf_counter()
    for first in range(0, n, 100):
        record([call("a", start, seq, seq == n - 1, {"n": seq})
                for seq in range(first, min(n, first + 100))])  # fmt: skip
        publisher.drain(POLICY, limit=n)
    routed = time.perf_counter() - started
    b_queue = keys.step_queue(flow_id, "b")
    consumed = 0
    while True:
        deliveries = queue.receive(b_queue, "c", max_messages=100, wait_seconds=0)
        if not deliveries:
            break
        record([call("b", d.message.message_id, 0, True, None) for d in deliveries if d.message])
        queue.ack(b_queue, deliveries)
        consumed += len(deliveries)
    total = time.perf_counter() - started
    record_ = runs.get(redis, run_id)
    assert consumed == n and record_ is not None and record_.status == "completed", record_
    return {"routed_per_s": n / routed, "lifecycle_per_s": n / total}


# --- 3. through the function runtime ------------------------------------------------------------
class _Discard:
    """Emitted events are not part of the measurement: they are dropped."""

    def send(self, event: object) -> None:
        return None


def runtime(redis: Redis) -> FunctionRuntime[Any]:
    env = {"REDIS_URL": "redis://127.0.0.1:1/0", "ORCHESTRATOR_KEY": KEY,
           "ORCHESTRATOR_AUTH": "off"}  # fmt: skip
    settings = Settings.from_env(env)
    clock = SystemClock()
    return FunctionRuntime(
        SPEC, settings=settings, redis=redis, clock=clock, policy=POLICY, sender=_Discard(),
        authorizer=Authorizer(settings, clock, flow_tenant=lambda _: TENANT),
        services=build_services(settings, clock, redis),
    )  # fmt: skip


def routed_runtime(redis: Redis, n: int) -> dict[str, float]:
    rt = runtime(redis)
    _run, start = start_run(redis, "web", "run-web")
    rt.services.publisher.drain(POLICY)
    (delivery,) = rt.services.queue.receive(keys.step_queue("web", "a"), "c", wait_seconds=0)
    assert delivery.message is not None
    token = delivery.message.token
    b_queue = keys.step_queue("web", "b")
    latencies: list[float] = []
    started = time.perf_counter()
    for seq in range(n):
        event = CloudEvent(
            {"type": t.STEP_COMPLETED, "source": "/component-orchestrator/worker/web/a",
             "id": f"{start}-0-{seq}", "steptoken": token},
            {"runId": "run-web", "stepId": "a", "messageId": start, "seq": seq,
             "final": seq == n - 1, "data": {"n": seq}},
        )  # fmt: skip
        before = time.perf_counter()
        rt.handle(event)  # the handler publishes b's message before it returns
        latencies.append(time.perf_counter() - before)
    elapsed = time.perf_counter() - started
    assert rt.services.queue.depth(b_queue) == n
    latencies.sort()
    return {
        "per_s": n / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


def run(results_dir: Path) -> dict[str, Any]:
    with redis_server() as redis:
        raw = raw_streams(redis, N_DIRECT)
        direct = routed_direct(redis, N_DIRECT)
        batched = routed_direct(redis, N_DIRECT, batch=100)
        through = routed_runtime(redis, N_RUNTIME)
    results = {
        "raw_xadd_xreadgroup_per_s": raw,
        "routed_direct_per_s": direct["routed_per_s"],
        "lifecycle_direct_per_s": direct["lifecycle_per_s"],
        "routed_batched_per_s": batched["routed_per_s"],
        "lifecycle_batched_per_s": batched["lifecycle_per_s"],
        "routed_runtime_per_s": through["per_s"],
        "completed_to_published_p50_ms": through["p50_ms"],
        "completed_to_published_p99_ms": through["p99_ms"],
        "routed_direct_vs_raw": direct["routed_per_s"] / raw,
        "load_average_1m": os.getloadavg()[0],
        "messages_direct": N_DIRECT,
        "messages_runtime": N_RUNTIME,
    }
    rows = [
        ("raw XADD + XREADGROUP + XACK", f"{raw:,.0f} msg/s", ""),
        ("routed through step-execute (shared, route + script + publish)",
         f"{direct['routed_per_s']:,.0f} msg/s", ""),
        ("routed / raw", f"{results['routed_direct_vs_raw']:.2f}x", ""),
        ("whole message life (route, publish, consume, complete)",
         f"{direct['lifecycle_per_s']:,.0f} msg/s", ""),
        ("routed, 100 script calls pipelined per round trip",
         f"{batched['routed_per_s']:,.0f} msg/s", ""),
        ("whole message life, pipelined", f"{batched['lifecycle_per_s']:,.0f} msg/s", ""),
        ("routed through the function runtime, one event at a time",
         f"{through['per_s']:,.0f} msg/s", ""),
        ("step.completed -> next step published, p50", f"{through['p50_ms']:.2f} ms", ""),
        ("step.completed -> next step published, p99", f"{through['p99_ms']:.2f} ms",
         "< 50 ms"),
    ]  # fmt: skip
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "step_execute.json").write_text(json.dumps(results, indent=2))
    (results_dir / "step_execute.md").write_text(markdown(rows, results["load_average_1m"]))
    return results


def markdown(rows: list[tuple[str, str, str]], load: float) -> str:
    lines = [
        "# step-execute benchmark (issue 6 §9)",
        "",
        "`make bench` (or `.venv/bin/python -m benchmarks.step_execute`); "
        f"{N_DIRECT:,} messages direct, {N_RUNTIME:,} through the runtime, one embedded Redis "
        f"on the same machine (1-minute load average at the end: {load:.1f}; every figure is "
        "bound by round trips, so a busy machine lowers them all).",
        "",
        "| figure | value | target |",
        "|---|---:|---|",
    ]
    lines += [f"| {name} | {value} | {target} |" for name, value, target in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    figures = run(Path(__file__).resolve().parent / "results")
    json.dump(figures, sys.stdout, indent=2)
    print()
