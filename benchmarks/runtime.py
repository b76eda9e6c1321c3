"""Through the function runtime, one instance, beside a no-op function on the same runtime in
the same run (`make bench`; alone: `.venv/bin/python -m benchmarks runtime`).

For each of three event kinds, the same events go through `FunctionRuntime.handle` twice: once
with the real function (flow-start's `flow.execute` decision, step-execute's step.completed,
policy-check's usage.reported) and once with a no-op function: the same spec name, tag and
events, every handler replaced by one that does nothing. So both pay the same parse, token
check, dedupe check and outbox flush; the ratio is what the handler's own work costs. Goal: each
real rate >= 50 % of its no-op rate. Redis round trips per event are counted in a separate,
untimed pass (each send of a command or a pipeline to Redis is one).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from cloudevents.http import CloudEvent
from redis import Redis
from redis.connection import Connection

from benchmarks import step_execute
from benchmarks._redis import redis_server
from shared import keys
from shared.clock import FakeClock, SystemClock
from shared.events import FlowDocument
from shared.events import types as t
from shared.handlers import flow_start, policy_check
from shared.handlers import step_execute as step_handler
from shared.model import flows
from shared.model.policy import Policy, parse_policy
from shared.runtime.auth import Authorizer
from shared.runtime.function import FunctionRuntime, FunctionSpec
from shared.security.tokens import sign_internal
from shared.settings import Settings

KEY = step_execute.KEY
EVENTS = int(os.environ.get("RUNTIME_BENCH_EVENTS", "2000"))
COUNTED = 100  # events of the untimed pass that counts round trips
ROOMY = parse_policy(
    {
        "slots": 10_000_000,
        "defaults": {
            "max_concurrent_runs": 10_000_000,
            "start_rate_per_minute": 1e12,
            "max_waiting_runs": 10_000_000,
            "messages_per_second": 1e9,
        },
    }
)


class _Discard:
    """Emitted events are not part of the measurement."""

    def send(self, event: object) -> None:
        return None


def noop_spec(spec: FunctionSpec[Any]) -> FunctionSpec[Any]:
    """The same function with every handler doing nothing."""
    return replace(spec, handlers={name: (lambda ctx: None) for name in spec.handlers})


def make_runtime(
    spec: FunctionSpec[Any], redis: Redis, *, policy: Policy, clock: Any, tenant_of: Any
) -> FunctionRuntime[Any]:
    connection = redis.connection_pool.connection_kwargs
    env = {"REDIS_URL": f"redis://{connection['host']}:{connection['port']}/0",
           "ORCHESTRATOR_KEY": KEY, "ORCHESTRATOR_AUTH": "off",
           "ORCHESTRATOR_DEPLOY_DRIVER": "local"}  # fmt: skip
    settings = Settings.from_env(env)
    return FunctionRuntime(
        spec, settings=settings, redis=redis, clock=clock, policy=policy, sender=_Discard(),
        authorizer=Authorizer(settings, clock, flow_tenant=tenant_of),
        services=spec.build_services(settings, clock, redis),
    )  # fmt: skip


@contextmanager
def counting_round_trips() -> Iterator[list[int]]:
    """Counts what redis-py sends (one command or one pipeline = one round trip)."""
    count = [0]
    original: Any = Connection.send_packed_command

    def send(self: Any, command: Any, check_health: bool = True) -> None:
        count[0] += 1
        original(self, command, check_health)

    setattr(Connection, "send_packed_command", send)  # noqa: B010 (patched for the pass only)
    try:
        yield count
    finally:
        setattr(Connection, "send_packed_command", original)  # noqa: B010


def rate(
    runtime: FunctionRuntime[Any], events: list[CloudEvent], tick: Callable[[], None]
) -> float:
    started = time.perf_counter()
    for event in events:
        runtime.handle(event)
        tick()
    return len(events) / (time.perf_counter() - started)


def round_trips(runtime: FunctionRuntime[Any], events: list[CloudEvent]) -> float:
    with counting_round_trips() as count:
        for event in events:
            runtime.handle(event)
    return count[0] / len(events)


# --- flow.execute ---------------------------------------------------------------------------------
def flow_execute(redis: Redis) -> dict[str, float]:
    redis.flushall()
    clock = FakeClock(1_767_225_600.0)
    for n in range(10):
        document = FlowDocument.parse(
            {"id": f"flow-{n}", "tenant": f"tenant-{n % 5}",
             "owners": [{"id": f"user-{n}", "type": "user"}],
             "graph": {"nodes": [{"id": "a", "componentId": "c"}]}}
        )  # fmt: skip
        flows.upsert(redis, document, 0)
        redis.sadd(keys.deployed_flows(), document.id)

    def events(prefix: str, count: int) -> list[CloudEvent]:
        return [
            CloudEvent({"type": t.FLOW_EXECUTE, "source": "/bench/hub", "id": f"{prefix}-{n}"},
                       {"flowId": f"flow-{n % 10}", "msg": {"n": n}})
            for n in range(count)
        ]  # fmt: skip

    def tenant_of(flow_id: str) -> str | None:
        return flows.tenant_of(redis, flow_id)

    return compare(redis, flow_start.SPEC, events, clock, tenant_of, ROOMY)


# --- step-execute ---------------------------------------------------------------------------------
def step_events(redis: Redis) -> dict[str, float]:
    redis.flushall()
    clock = SystemClock()
    _run, start = step_execute.start_run(redis, "web", "run-web")
    probe = make_runtime(step_handler.SPEC, redis, policy=step_execute.POLICY, clock=clock,
                         tenant_of=lambda _: step_execute.TENANT)  # fmt: skip
    probe.services.publisher.drain(step_execute.POLICY)
    (delivery,) = probe.services.queue.receive(keys.step_queue("web", "a"), "c", wait_seconds=0)
    token = delivery.message.token
    serial = [0]

    def events(prefix: str, count: int) -> list[CloudEvent]:
        made = []
        for _ in range(count):
            serial[0] += 1
            made.append(CloudEvent(
                {"type": t.STEP_COMPLETED, "source": "/component-orchestrator/worker/web/a",
                 "id": f"{prefix}-{serial[0]}", "steptoken": token},
                {"runId": "run-web", "stepId": "a", "messageId": start, "seq": serial[0],
                 "final": False, "data": {"n": serial[0]}},
            ))  # fmt: skip
        return made

    return compare(redis, step_handler.SPEC, events, clock, lambda _: step_execute.TENANT,
                   step_execute.POLICY)  # fmt: skip


# --- policy-check usage ---------------------------------------------------------------------
def usage_events(redis: Redis) -> dict[str, float]:
    redis.flushall()
    clock = FakeClock(1_767_225_600.0)
    token = sign_internal(KEY, "step-execute", clock, event_type=t.USAGE_REPORTED)

    def events(prefix: str, count: int) -> list[CloudEvent]:
        made = []
        for n in range(count):
            tenant = f"t{n % 20}"
            made.append(CloudEvent(
                {"type": t.USAGE_REPORTED, "source": "/bench", "id": f"{prefix}-{n}",
                 "authtoken": token},
                {"tenant": tenant, "user": f"{tenant}-u{n % 2}", "flowId": f"{tenant}-f{n % 5}",
                 "messages": 3},
            ))  # fmt: skip
        return made

    return compare(redis, policy_check.SPEC, events, clock, lambda _: None, Policy())


def compare(
    redis: Redis,
    spec: FunctionSpec[Any],
    events: Callable[[str, int], list[CloudEvent]],
    clock: Any,
    tenant_of: Any,
    policy: Policy,
) -> dict[str, float]:
    real = make_runtime(spec, redis, policy=policy, clock=clock, tenant_of=tenant_of)
    noop = make_runtime(noop_spec(spec), redis, policy=policy, clock=clock, tenant_of=tenant_of)

    def advance() -> None:
        if isinstance(clock, FakeClock):
            clock.advance(0.001)

    rate(real, events("warm", 100), advance)  # scripts loaded, connections open
    rate(noop, events("warm-noop", 100), advance)
    # alternate halves, so a change of the machine's load hits both alike
    real_rates, noop_rates = [], []
    for half in range(2):
        noop_rates.append(rate(noop, events(f"noop-{half}", EVENTS // 2), advance))
        real_rates.append(rate(real, events(f"real-{half}", EVENTS // 2), advance))
    real_rate = sum(real_rates) / 2
    noop_rate = sum(noop_rates) / 2
    return {
        "events": EVENTS,
        "real_per_s": real_rate,
        "noop_per_s": noop_rate,
        "ratio": real_rate / noop_rate,
        "real_round_trips": round_trips(real, events("count", COUNTED)),
        "noop_round_trips": round_trips(noop, events("count-noop", COUNTED)),
    }


NAMES = {
    "flow_execute": "flow-start: flow.execute decisions",
    "step_completed": "step-execute: step.completed events",
    "usage_reported": "policy-check: usage.reported events",
}


def run(results_dir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"load_before": os.getloadavg()[0], "cpus": os.cpu_count()}
    with redis_server() as redis:
        results["flow_execute"] = flow_execute(redis)
        results["step_completed"] = step_events(redis)
        results["usage_reported"] = usage_events(redis)
    results["load_after"] = os.getloadavg()[0]
    lines = [
        "# Through the runtime, beside a no-op function (one instance, one run)",
        "",
        "`make bench` (or `.venv/bin/python -m benchmarks runtime`); "
        f"{EVENTS:,} events per figure, one embedded Redis, {results['cpus']} CPUs, load average "
        f"{results['load_before']:.1f} before and {results['load_after']:.1f} after. The no-op is "
        "the same function (name, tag, events) with handlers that do nothing: it pays the same "
        "parse, token check, dedupe check and outbox flush. Round trips: commands or pipelines "
        "sent to Redis per event (counted apart, untimed).",
        "",
        "| events | real events/s | no-op events/s | real / no-op | target | | Redis round "
        "trips per event (real / no-op) |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for key, name in NAMES.items():
        r = results[key]
        ok = "met" if r["ratio"] >= 0.5 else "SHORT"
        lines.append(
            f"| {name} | {r['real_per_s']:,.0f} | {r['noop_per_s']:,.0f} | {r['ratio']:.2f} | "
            f">= 0.50 | {ok} | {r['real_round_trips']:.1f} / {r['noop_round_trips']:.1f} |"
        )
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "runtime.json").write_text(json.dumps(results, indent=2))
    (results_dir / "runtime.md").write_text("\n".join(lines) + "\n")
    return {key: round(results[key]["ratio"], 2) for key in NAMES}


if __name__ == "__main__":
    print(json.dumps(run(Path(__file__).resolve().parent / "results"), indent=2))
    sys.exit(0)
