"""The fault matrix of docs/reliability.md, one case per line, on real servers and processes.

`make test` runs each scaled down (a few seconds); `make test-faults` sets FAULTS_SCALE=full
and runs them at the sizes the matrix names. Assertions are on end states (counts, sets,
what is left in Redis), never on time.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from redis import Redis

from shared import keys
from shared.adapters.redis_streams import RedisStreamsQueue
from shared.events import types as t
from shared.ports.queue import CONSUMER_GROUP
from shared.ports.step_message import StepMessage
from tests.conftest import TEST_KEY
from tests.support.apps import function_client
from tests.support.events import cloudevent
from tests.support.flows import flow_doc
from tests.support.http_sink import HttpSink, Request
from tests.support.system import FunctionProcess, RedisNode

pytestmark = [
    pytest.mark.faults,
    pytest.mark.timeout(600 if os.environ.get("FAULTS_SCALE") == "full" else 300),
]

FULL = os.environ.get("FAULTS_SCALE") == "full"


def scale(small: int, full: int) -> int:
    return full if FULL else small


def _env(redis_url: str, sink: HttpSink) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "K_SINK": sink.url,
        "ORCHESTRATOR_KEY": TEST_KEY,
        "ORCHESTRATOR_AUTH": "off",
        "FLOW_START_WORK_THROUGH_SECONDS": "0",
    }


def _type_and_data(request: Request) -> tuple[str, dict[str, Any]]:
    body = request.json()
    if "ce-type" in request.headers:
        return request.headers["ce-type"], body
    return str(body.get("type")), dict(body.get("data") or {})


def _runs(redis: Redis) -> set[str]:
    ids = set(redis.hkeys(keys.admitted_runs())) | set(redis.hkeys(keys.waiting_runs()))
    return {i.decode() if isinstance(i, bytes) else str(i) for i in ids}


def _send_until_taken(process: FunctionProcess, event: Any, statuses: list[int]) -> None:
    """The broker's retry: the same event until a 2xx."""
    while True:
        try:
            status = process.post(event, timeout=30).status_code
        except requests.RequestException:
            status = 599
        statuses.append(status)
        if status == 200:
            return
        time.sleep(0.1)


# --- Redis restarted mid-run, AOF everysec and always ----------------------------------------
@pytest.mark.parametrize("appendfsync", ["everysec", "always"])
def test_redis_killed_and_restarted_mid_run_loses_and_doubles_no_answered_run(
    appendfsync: str, tmp_path: Path, sink: HttpSink
) -> None:
    """SIGKILL of the Redis process (not of the machine): with either policy every write
    Redis answered was already handed to the kernel, so the restart loads all of them; the
    window a machine crash can cost under everysec is stated in docs/reliability.md."""
    executes = scale(20, 300)
    node = RedisNode(tmp_path / "redis", appendfsync=appendfsync).start()
    process = FunctionProcess("flow-start", _env(node.url, sink), tmp_path).start()
    try:
        statuses: list[int] = []
        _send_until_taken(process, cloudevent(t.FLOW_STARTING, flow_doc("aof", cron=None)), [])
        events = [
            cloudevent(t.FLOW_EXECUTE, {"flowId": "aof"}, event_id=f"aof-{i}")
            for i in range(executes)
        ]
        for i, event in enumerate(events):
            if i == executes // 2:
                node.restart()  # SIGKILL + start on the same AOF
            _send_until_taken(process, event, statuses)
        assert len(_runs(node.client())) == executes, "every answered execute kept, once"
        for event in events:  # a full redelivery adds nothing
            assert process.post(event).status_code == 200
        assert len(_runs(node.client())) == executes
    finally:
        process.stop()
        node.stop()


# --- the broker delivering every event 3 times in random order -------------------------------
def test_every_event_delivered_three_times_in_random_order_ends_as_delivered_once(
    monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str], redis: Redis, sink: HttpSink
) -> None:
    flows = [f"x{i}" for i in range(scale(4, 50))]
    app = function_client(monkeypatch, base_env, "flow-start", K_SINK=sink.url,
                          FLOW_START_WORK_THROUGH_SECONDS="0")  # fmt: skip

    def deliver(event: Any) -> int:
        from cloudevents.conversion import to_binary

        headers, body = to_binary(event)
        return int(app.post("/", headers=headers, data=body).status_code)

    executes = [
        cloudevent(t.FLOW_EXECUTE, {"flowId": flows[i % len(flows)]}, event_id=f"rx-{i}")
        for i in range(scale(20, 1000))
    ]
    starts = [
        cloudevent(t.FLOW_STARTING, flow_doc(f, cron=None), event_id=f"st-{f}") for f in flows
    ]

    def end_state() -> tuple[set[str], int]:
        return _runs(redis), len(list(redis.scan_iter(match="co:{flows}:flow:*")))

    for event in starts + executes:
        assert deliver(event) == 200
    once = end_state()
    redis.flushall()

    rng = random.Random(16)
    copies = [e for e in executes for _ in range(3)]
    rng.shuffle(copies)
    starting = [e for e in starts for _ in range(3)]
    rng.shuffle(starting)
    for event in starting + copies:  # a flow exists before its executes (else 422, dropped)
        assert deliver(event) == 200
    assert end_state() == once
    assert len(once[0]) == len(executes)


# --- many flows due in one second, four flow-start processes ---------------------------------
def test_many_flows_due_at_once_with_four_flow_start_processes_fire_each_once(
    redis: Redis, redis_server: Any, tmp_path: Path, sink: HttpSink
) -> None:
    flows = [f"due-{i}" for i in range(scale(25, 1000))]
    processes = [
        FunctionProcess("flow-start", _env(redis_server.url, sink), tmp_path, index=i).start()
        for i in range(4)
    ]
    # Once a year: the next due time never falls inside the test (with "* * * * *", a test
    # that crossed a minute boundary saw a second, legitimate, due time skipped as overlap).
    yearly = "0 0 1 1 *"
    try:
        for flow_id in flows:
            reply = processes[0].post(cloudevent(t.FLOW_STARTING, flow_doc(flow_id, cron=yearly)))
            assert reply.status_code == 200
        now = time.time()
        redis.zadd(keys.schedule_due(), {f: now - 0.5 for f in flows})  # all due this second
        sink.requests.clear()
        barrier = threading.Barrier(len(processes) * 3)

        def tick(process: FunctionProcess, n: int) -> None:
            barrier.wait()
            process.post(cloudevent(t.TICK, {}, event_id=f"tick-{process.port}-{n}"))

        threads = [threading.Thread(target=tick, args=(p, n)) for p in processes for n in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for process in processes:  # one more round, after the burst
            process.post(cloudevent(t.TICK, {}))
        fired: Counter[tuple[str, float]] = Counter()
        for request in list(sink.requests):
            event_type, data = _type_and_data(request)
            if event_type in (t.RUN_ADMITTED, *t.RUN_NOT_STARTED_TYPES):
                fired[(str(data.get("flowId")), float(data.get("scheduledFor") or 0))] += 1
        assert {flow for flow, _ in fired} == set(flows), "every due time fired"
        doubled = {due: count for due, count in fired.items() if count != 1}
        assert not doubled, f"each (flow, due time) exactly once: {doubled}"
        assert len(fired) == len(flows), f"one due time per flow: {sorted(fired)}"
        due: Any = redis.zrange(keys.schedule_due(), 0, -1, withscores=True)
        assert all(float(score) > now for _, score in due), "every schedule moved on"
    finally:
        for process in processes:
            process.stop()


# --- a step consumer killed with messages pending --------------------------------------------
def test_a_step_consumer_killed_with_messages_pending_loses_and_doubles_none(
    redis: Redis,
) -> None:
    pending = scale(200, 1000)
    queue_name = keys.step_queue("killed-flow", "a")
    queue = RedisStreamsQueue(redis)
    messages = [
        StepMessage(
            message_id=f"m-{n}",
            run_id="r1",
            flow_id="killed-flow",
            step_id="a",
            tenant="acme",
            attempt=1,
            data_json=f'{{"n": {n}}}',
            token="t",
        )
        for n in range(pending)
    ]
    queue.publish(queue_name, messages)
    taken = 0
    while taken < pending:  # the consumer reads everything, then dies before any ack
        taken += len(queue.receive(queue_name, "doomed", max_messages=100, wait_seconds=0))
    assert redis.xpending(queue_name, CONSUMER_GROUP)["pending"] == pending

    reclaimed = 0
    while reclaimed < pending:
        moved = queue.reclaim(queue_name, min_idle_seconds=0)
        assert moved > 0, "the reclaim makes progress"
        reclaimed += moved
    seen: Counter[str] = Counter()
    while True:
        batch = queue.receive(queue_name, "survivor", max_messages=100, wait_seconds=0)
        if not batch:
            break
        seen.update(d.message.message_id for d in batch if d.message)
        queue.ack(queue_name, batch)
    assert set(seen) == {m.message_id for m in messages}, "none lost"
    assert set(seen.values()) == {1}, "none doubled"
    assert redis.xpending(queue_name, CONSUMER_GROUP)["pending"] == 0
    assert queue.depth(queue_name) == 0
