"""The amqp step transport through the real ferryman, beside the Redis Streams worker (`make
bench` runs `run(results_dir)`; alone: `.venv/bin/python -m benchmarks.ferryman`).

Both measure the same thing, end to end for one step with one replica: N messages published
as step-execute publishes them, the step's component emitting one output per message, and
the step events that come back (one output and one end per message), counted by what turns
them into CloudEvents. Messages per second = N / (first publish to the N-th message's end).

- ferryman: a real RabbitMQ (Debian's rabbitmq-server, as the tests start it), the real
  `@openintegrationhub/ferryman` (npm, the tests' cached `npm ci`) running the test connector's
  `echo` action, `RabbitMqStepQueue` publishing (a signed orchestratorToken per message, a
  transaction per 100), the backchannel (token check, seq counting in Redis) turning replies
  into events. Once with
  ferryman's defaults (OUTPUT_RATE_LIMIT 10 per 100 ms, prefetch 1: what a connector image
  runs with unless told otherwise) and once with ELASTICIO_OUTPUT_RATE_LIMIT=1000 and
  ELASTICIO_RABBITMQ_PREFETCH_SAILOR=10.
- Redis Streams: `RedisStreamsQueue` and the Python step worker (`shared.worker`) in process,
  the same one-output component, events to an in-memory sender.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloudevents.http import CloudEvent
from redis import Redis

from benchmarks._redis import redis_server
from shared.adapters.rabbitmq import (
    BackchannelConsumer,
    RabbitMqManagement,
    RabbitMqStepQueue,
    RabbitMqTopology,
    SignedMessage,
    vhost_of,
    with_credentials,
)
from shared.adapters.redis_streams import RedisStreamsQueue
from shared.clock import SystemClock
from shared.interop.backchannel import Backchannel
from shared.local.embedded_redis import free_port
from shared.ports import ferryman as names
from shared.ports.step_message import StepMessage
from shared.security import tokens
from shared.worker.main import Worker, WorkerConfig
from tests.support.ferryman import FerrymanLauncher, install_ferryman
from tests.support.rabbitmq import RabbitMq

KEY = "benchmark-orchestrator-key-0123456789abcdef"
N_FERRYMAN = 1_000
N_REDIS = 5_000
TIMEOUT_SECONDS = 600.0


def _message(flow: str, step: str, i: int) -> StepMessage:
    return StepMessage(
        run_id="run-1", flow_id=flow, step_id=step, message_id=f"m{i}", tenant="acme",
        attempt=0, data_json=json.dumps({"n": i}), token="t",
    )  # fmt: skip


def _signer(flow: str) -> Callable[[StepMessage], SignedMessage]:
    clock = SystemClock()

    def sign(message: StepMessage) -> SignedMessage:
        claims = {
            "flowId": flow, "stepId": message.step_id, "userId": "u", "tenant": "acme",
            "function": "echo", "fields": {}, "nodeSettings": {}, "apiKey": "flow-token",
            names.RUN_CLAIM: message.run_id, names.MESSAGE_CLAIM: message.message_id,
            names.ATTEMPT_CLAIM: 0,
        }  # fmt: skip
        return SignedMessage(
            tokens.sign_orchestrator_token(KEY, claims, ttl_seconds=3600, clock=clock), "u"
        )

    return sign


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.01)


def through_ferryman(
    server: RabbitMq, redis: Redis, modules: Path, logs: Path, n: int, extra: dict[str, str]
) -> dict[str, float]:
    amqp_url = server.url_for(server.new_vhost())
    flow, step = f"bench-{uuid.uuid4().hex[:6]}", "s1"
    RabbitMqTopology(amqp_url).ensure_flow(flow, [step])
    admin = RabbitMqManagement(
        f"http://guest:guest@127.0.0.1:{server.management_port}", vhost_of(amqp_url)
    )
    admin.set_user(names.user_name(flow), "pw", read=names.read_pattern(flow),
                   write=names.write_pattern(flow))  # fmt: skip
    env = names.step_environment(flow, step, "bench", {"API_URI": "http://127.0.0.1:9"})
    env[names.AMQP_URI_VARIABLE] = with_credentials(amqp_url, names.user_name(flow), "pw")
    env["LOG_LEVEL"] = "warn"  # ferryman logs a few lines per message at info
    env.update(extra)
    ends: list[float] = []
    lock = threading.Lock()

    def count(event: CloudEvent) -> None:
        data = event.get_data()
        if isinstance(data, dict) and data.get("final"):
            with lock:
                ends.append(time.perf_counter())

    backchannel = Backchannel(redis, KEY, SystemClock(), count)
    consumer = BackchannelConsumer(amqp_url)
    thread = threading.Thread(target=consumer.consume, args=(backchannel.handle,), daemon=True)
    thread.start()
    launcher = FerrymanLauncher(modules, logs)
    queue = RabbitMqStepQueue(amqp_url, _signer(flow))
    try:
        consumer.connected.wait(60)
        launcher.start(env)
        topology = RabbitMqTopology(amqp_url)
        _wait(lambda: topology.consumers(names.messages_queue(flow, step)) == 1, "ferryman")
        started = time.perf_counter()
        for start in range(0, n, 100):
            queue.publish("", [_message(flow, step, i) for i in range(start, min(n, start + 100))])
        published = time.perf_counter()
        _wait(lambda: len(ends) >= n, "every end")
    finally:
        queue.close()
        launcher.stop_all()
        consumer.stop()
        thread.join(timeout=10)
    last = max(ends)
    return {
        "messages": n,
        "per_s": n / (last - started),
        "publish_per_s": n / (published - started),
        "seconds": last - started,
        "ignored": float(sum(backchannel.ignored.values())),
    }


class _Counting:
    def __init__(self) -> None:
        self.ends: list[float] = []

    def send(self, event: CloudEvent) -> None:
        data = event.get_data()
        if isinstance(data, dict) and data.get("final"):
            self.ends.append(time.perf_counter())


def through_redis_streams(redis: Redis, n: int) -> dict[str, float]:
    queue = RedisStreamsQueue(redis)
    stream = "co:q:{bench}:s1"
    config = WorkerConfig(flow_id="bench", step_id="s1", queue=stream, entrypoint="bench")
    sender = _Counting()
    worker = Worker(config, queue, sender, lambda msg, _fields: msg["data"], batch_size=100)
    started = time.perf_counter()
    for start in range(0, n, 100):
        queue.publish(
            stream, [_message("bench", "s1", i) for i in range(start, min(n, start + 100))]
        )
    published = time.perf_counter()
    while len(sender.ends) < n:
        worker.run_once()
    last = max(sender.ends)
    return {
        "messages": n,
        "per_s": n / (last - started),
        "publish_per_s": n / (published - started),
        "seconds": last - started,
    }


def run(results_dir: Path) -> dict[str, Any]:
    modules = install_ferryman()
    folder = Path(tempfile.mkdtemp(prefix="co-bench-rabbitmq-"))
    server = RabbitMq(
        folder=folder, amqp_port=free_port(), dist_port=free_port(), epmd_port=free_port(),
        node=f"co-bench-{uuid.uuid4().hex[:8]}@localhost", management_port=free_port(),
    ).start()  # fmt: skip
    try:
        with redis_server() as redis:
            logs = folder / "ferryman-logs"
            default = through_ferryman(server, redis, modules, logs, N_FERRYMAN, {})
            tuned = through_ferryman(server, redis, modules, logs, N_FERRYMAN, {
                "ELASTICIO_OUTPUT_RATE_LIMIT": "1000",
                "ELASTICIO_RABBITMQ_PREFETCH_SAILOR": "10",
            })  # fmt: skip
            streams = through_redis_streams(redis, N_REDIS)
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    results = {
        "ferryman_default_per_s": default["per_s"],
        "ferryman_tuned_per_s": tuned["per_s"],
        "redis_streams_worker_per_s": streams["per_s"],
        "amqp_publish_per_s": default["publish_per_s"],
        "ignored_replies": default["ignored"] + tuned["ignored"],
        "messages_ferryman": N_FERRYMAN,
        "messages_redis": N_REDIS,
        "load_average_1m": os.getloadavg()[0],
        "cpus": os.cpu_count() or 0,
    }
    (results_dir / "ferryman.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = [
        ("ferryman 2.4.7, its defaults (10 outputs / 100 ms, prefetch 1)",
         default["per_s"], default["messages"]),
        ("ferryman, ELASTICIO_OUTPUT_RATE_LIMIT=1000, prefetch 10", tuned["per_s"],
         tuned["messages"]),
        ("Redis Streams + python -m shared.worker (in process)", streams["per_s"],
         streams["messages"]),
    ]  # fmt: skip
    lines = [
        "# One step end to end: ferryman (amqp) beside the Redis Streams worker",
        "",
        "benchmarks/ferryman.py: N messages published as step-execute publishes them, one",
        "replica, the component emitting one output per message, until every message's end",
        "came back as a step event (the backchannel's token check and seq counting included).",
        f"Machine: {os.cpu_count()} CPUs, 1-minute load {results['load_average_1m']:.1f} at the",
        "end (shared with other work: compare rows of one run, not runs).",
        "",
        "| path | messages/s | messages |",
        "|---|---|---|",
        *(f"| {name} | {per_s:,.0f} | {count:,} |" for name, per_s, count in rows),
        "",
        f"Publishing alone (RabbitMqStepQueue: a signed token per message, one AMQP "
        f"transaction per 100): {default['publish_per_s']:,.0f} messages/s. Ferryman itself is "
        "the bound: per message it fetches the step's snapshot over HTTP (here a refused "
        "connection to its default URL), and by default lets 10 outputs out per 100 ms. An "
        "end is held END_GRACE_SECONDS (1 s) before it counts, so the last message's time "
        "includes it.",
        "",
    ]
    (results_dir / "ferryman.md").write_text("\n".join(lines))
    return results


if __name__ == "__main__":
    from benchmarks.__main__ import RESULTS_DIR

    print(json.dumps(run(RESULTS_DIR), indent=2))
