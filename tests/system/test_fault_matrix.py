"""The fault matrix of docs/reliability.md, one case per line, on real servers and processes.

`make test` runs each scaled down (a few seconds); `make test-faults` sets FAULTS_SCALE=full
and runs them at the sizes the matrix names. Assertions are on end states (counts, sets,
what is left in Redis), never on time.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, cast

import pytest
import requests
from redis import Redis

from shared import keys
from shared.adapters.redis_streams import RedisStreamsQueue
from shared.admission import lease
from shared.clock import FakeClock, SystemClock
from shared.errors import TemporaryError
from shared.events import types as t
from shared.ports.queue import CONSUMER_GROUP
from shared.ports.step_message import StepMessage
from tests.conftest import TEST_KEY
from tests.deploy_harness import DeployHarness
from tests.deploy_harness import flow_doc as deploy_flow_doc
from tests.fakes.component_repo import FakeComponentRepo
from tests.fakes.kube_api import FakeKubeApi
from tests.support.apps import function_client
from tests.support.events import cloudevent, internal
from tests.support.flows import flow_doc
from tests.support.http_sink import HttpSink, Request
from tests.support.system import FunctionProcess, RedisNode, wait_for

pytestmark = [
    pytest.mark.faults,
    pytest.mark.timeout(3600 if os.environ.get("FAULTS_SCALE") == "full" else 300),
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


def _events(sink: HttpSink) -> list[tuple[Request, str, dict[str, Any]]]:
    """(request, type, data) of every event the sink received. A post a SIGKILLed sender left
    half-sent (shorter than its Content-Length) is no event: a broker refuses it, and the
    event stays in the sender's outbox until another function sends it again."""
    return [(r, *_type_and_data(r)) for r in list(sink.requests) if not r.truncated]


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
        for _, event_type, data in _events(sink):
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


# --- a function SIGKILLed between taking a lease and emitting --------------------------------
def _started(flow_id: str, tenant: str) -> Any:
    """deploy's flow.started, signed as deploy signs it (flow-start admits deployed flows)."""
    data = {"id": flow_id, "replicas": {"a": 1}}
    return internal(
        t.FLOW_STARTED,
        data,
        key=TEST_KEY,
        clock=SystemClock(),
        sender="deploy",
        tenant=tenant,
        flowid=flow_id,
    )


def _admissions(sink: HttpSink) -> Counter[tuple[str, float, str]]:
    """(flow, due time, event id) of every flow.execution.admitted the sink received."""
    seen: Counter[tuple[str, float, str]] = Counter()
    for request, event_type, data in _events(sink):
        if event_type == t.RUN_ADMITTED:
            event_id = request.headers.get("ce-id") or str(request.json().get("id"))
            seen[(str(data["flowId"]), float(data["scheduledFor"]), event_id)] += 1
    return seen


def _fencing(sink: HttpSink) -> set[tuple[str, float, int]]:
    found = set()
    for _, event_type, data in _events(sink):
        if event_type == t.RUN_ADMITTED:
            found.add((str(data["flowId"]), float(data["scheduledFor"]), int(data["fencingToken"])))
    return found


def test_a_function_killed_between_lease_and_emit_runs_the_next_due_time_and_doubles_none(
    redis: Redis, redis_server: Any, tmp_path: Path, sink: HttpSink
) -> None:
    """flow-start takes each due flow's run lease and queues `admitted` in one script, then is
    SIGKILLed while sending it (the sink holds the request). The dead process's claims expire
    (small scale: the test ages its 15 s tick lease and 60 s outbox claim as time would; full
    scale waits for them), another process sends the queued events, the 1 s run leases expire
    on their own, and the next due time of every flow is admitted: one run per (flow, due time),
    one event id each, fencing tokens growing."""
    flows = [f"kill-{i}" for i in range(scale(5, 100))]
    victim = FunctionProcess("flow-start", _env(redis_server.url, sink), tmp_path, index=0).start()
    survivor = FunctionProcess("flow-start", _env(redis_server.url, sink), tmp_path, index=1)
    survivor.start()
    try:
        for i, flow_id in enumerate(flows):  # 10 flows a tenant: within its concurrent runs
            doc = flow_doc(flow_id, tenant=f"t{i // 10}", cron="0 0 1 1 *", maxRunSeconds=1)
            assert victim.post(cloudevent(t.FLOW_STARTING, doc)).status_code == 200
            assert victim.post(_started(flow_id, f"t{i // 10}")).status_code == 200
        first = time.time() - 0.5
        redis.zadd(keys.schedule_due(), {f: first for f in flows})
        sink.requests.clear()
        sink.gate.clear()  # every send hangs in the sink: the victim dies mid-emit
        ticking = threading.Thread(
            target=lambda: _post_quietly(victim, cloudevent(t.TICK, {})), daemon=True
        )
        ticking.start()
        sink.wait_for(1, timeout=60)
        victim.kill()
        sink.gate.set()
        ticking.join(timeout=60)
        leases = {f: lease.current(redis, f, time.time()) for f in flows}
        assert all(leases.values()), "every due flow's lease was taken before the kill"
        if not FULL:  # time passing for the dead holder's claims, without waiting 60 s
            redis.pexpire(keys.tick_lease(keys.ADMISSION), 1)
            in_flight = cast(
                list[bytes], redis.zrange(keys.outbox_in_flight(keys.ADMISSION), 0, -1)
            )
            if in_flight:
                redis.zadd(keys.outbox_in_flight(keys.ADMISSION), dict.fromkeys(in_flight, 0))
        wait_for(
            lambda: all(lease.current(redis, f, time.time()) is None for f in flows),
            "the run leases expire (1 s run limit)",
            timeout=120,
        )
        second = time.time() - 0.5
        redis.zadd(keys.schedule_due(), {f: second for f in flows})

        def everything_sent() -> bool:
            survivor.post(cloudevent(t.TICK, {}))
            dues = {(flow, due) for flow, due, _ in _admissions(sink)}
            return dues == {(f, d) for f in flows for d in (first, second)}

        wait_for(everything_sent, "both due times of every flow admitted", timeout=180, every=1)
        ids: dict[tuple[str, float], set[str]] = {}
        for flow, due, event_id in _admissions(sink):
            ids.setdefault((flow, due), set()).add(event_id)
        assert all(len(v) == 1 for v in ids.values()), f"one admission per due time: {ids}"
        runs = [json.loads(v) for v in redis.hvals(keys.admitted_runs())]
        runs += [json.loads(v) for v in redis.hvals(keys.waiting_runs())]
        per_due = Counter((r["f"], float(r["s"])) for r in runs)
        assert all(count == 1 for count in per_due.values()), f"no run doubled: {per_due}"
        tokens = {(f, due): token for f, due, token in _fencing(sink)}
        assert all(tokens[(f, second)] > tokens[(f, first)] for f in flows), "tokens grow"
        assert not victim.process.alive
    finally:
        sink.gate.set()
        victim.stop()
        survivor.stop()


def _post_quietly(process: FunctionProcess, event: Any) -> None:
    with contextlib.suppress(requests.RequestException):  # killed mid-request
        process.post(event, timeout=120)


# --- the Kubernetes API failing 30 % over many flow starts -----------------------------------
def test_flow_starts_against_a_kubernetes_api_failing_30_percent_all_end_started_or_failed(
    redis: Redis, clock: FakeClock, kube_api: FakeKubeApi, component_repo: FakeComponentRepo
) -> None:
    """deploy (its runtime, the real `kubernetes` client, the fake API over HTTP) while 30 % of
    the API's answers are 500, 409 or timeouts (drawn from a seeded generator). The broker
    delivers each flow.starting as knative/base says (retry 8, then dead letters: the record
    stored before any object carries it on); then a tick every 20 s of the fake
    clock (DEPLOY_READY_TIMEOUT 60 s) until none is deploying. End state: every flow started or
    failed, none deploying past its deadline (the deadline's 3 ticks, one more for slack), one
    status event per flow and outcome."""
    flows = [f"k8s-{i}" for i in range(scale(6, 100))]
    component_repo.add("comp", replicas=1)
    kube_api.auto_ready = True
    deploy = DeployHarness(
        redis,
        clock,
        kube_api,
        component_repo,
        ready_timeout=60,
        request_timeout=0.4,
        ready_wait=0.3,
    )
    try:
        faults = kube_api.flaky(0.3, seed=16, hang=0.8)  # a timeout: held past the client's 0.4 s
        attempts = Counter[str]()
        for flow_id in flows:
            event = cloudevent(t.FLOW_STARTING, deploy_flow_doc(flow_id), event_id=f"s-{flow_id}")
            for _ in range(1 + 8):  # the Broker (knative/base): retry 8, then dead letters
                attempts[flow_id] += 1
                try:
                    deploy.handle(event)
                    break
                except TemporaryError:
                    continue
        assert all(deploy.record(f) is not None for f in flows), "each start recorded"

        def statuses() -> dict[str, str]:
            return {f: getattr(deploy.record(f), "status", "none") for f in flows}

        ticks = 0
        while set(statuses().values()) - {"started", "failed"} and ticks < 50:
            clock.advance(20)  # a tick every 20 s of the fake clock (the deadline is 60 s)
            ticks += 1
            with contextlib.suppress(TemporaryError):  # the tick's own listing may fail
                deploy.tick()
        kube_api.flaky(0)
        ended = statuses()
        assert set(ended.values()) <= {"started", "failed"}, f"every flow ended: {ended}"
        assert ticks <= 4, f"none deploying past its deadline (60 s = 3 ticks): {ticks} ticks"
        said: dict[tuple[str, str], set[str]] = {}
        for sent in deploy.sender.events:
            outcome = sent.type.rsplit(".", 1)[-1]
            if sent.type.endswith(("flow.started", "flow.failed")):
                said.setdefault((str(sent.data["id"]), outcome), set()).add(sent.id)
        assert set(ended.items()) <= set(said), "each said how it ended"
        doubled = {key: ids for key, ids in said.items() if len(ids) != 1}
        assert not doubled, f"one event per flow and outcome: {doubled}"
        assert min(faults.injected.values()) > 0, f"every kind of fault: {faults.injected}"
    finally:
        deploy.close()


# --- a simulated soak of the demo's traffic --------------------------------------------------
def _persistent_keys(redis: Redis) -> list[str]:
    """Keys without a TTL: only our code removes them, so these are what could leak. (Keys with
    a TTL, dedupe keys and finished runs, are bounded by it; Redis counts it in wall-clock
    time, which a fake-clock soak does not advance.)"""
    return [str(k, "utf-8") for k in redis.scan_iter(count=1000) if redis.ttl(k) == -1]


LEFT_BEHIND = (
    "co:{adm}:lease:",  # a flow's run lease
    "co:{dep}:lock:",  # a target's deploy lock
    "co:{adm}:wq:",  # a flow's waiting queue
    "co:{adm}:wqu:",
    "co:{adm}:tick-lease",
    "co:{dep}:tick-lease",
    "co:{exec}:tick-lease",
    "co:{pol}:tick-lease",
)


def test_a_soak_of_the_demos_traffic_keeps_its_key_count_and_leaves_nothing_behind(
    redis: Redis,
) -> None:
    """The demo's scenario (shared/local/demo/scenario.py: crons, a flood, a chatty flow, long
    runs) through the four real functions (InProcessSystem) on a fake clock: two hours at full
    scale (40 s small), sampled every minute (5 s small) after a warm-up of ten minutes (15 s
    small). Then the Flow Repository stops every flow and the system runs on until its runs
    have ended: no lease, lock, waiting entry, admitted run or unsent event is left."""
    from shared.adapters.component_repository import CatalogueComponentRepository
    from shared.local.demo import runner as demo
    from shared.local.demo import scenario
    from shared.local.demo.system import InProcessSystem
    from shared.model.policy import load_policy
    from shared.settings import Settings

    seconds, warm_up, every = (7200, 600, 60) if FULL else (40, 15, 5)
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis://in-process.invalid/0",
            "ORCHESTRATOR_KEY": TEST_KEY,
            "ORCHESTRATOR_AUTH": "off",
            "ORCHESTRATOR_DEPLOY_DRIVER": "local",
            "ORCHESTRATOR_POLICY_FILE": str(demo.DEMO_POLICY),
            "K_SINK": "http://in-process.invalid/",
        }
    )
    clock = FakeClock(demo.HEADLESS_START)
    policy = load_policy(str(demo.DEMO_POLICY))
    system = InProcessSystem(redis, clock, policy, settings, CatalogueComponentRepository())

    def send(event_type: str, data: Any, *, tenant: str, user: str) -> None:
        system.send(event_type, data, source=scenario.SOURCE, tenant=tenant)

    scenario.seed(send)
    system.settle()
    samples: list[tuple[int, int]] = []
    leases_seen = 0
    for second in range(seconds):
        scenario.act(send, second)
        system.run_for(1)
        if second + 1 >= warm_up and (second + 1 - warm_up) % every == 0:
            samples.append((second + 1, len(_persistent_keys(redis))))
            leases_seen += len(list(redis.scan_iter(match="co:{adm}:lease:*")))
    level = samples[0][1]
    outside = [(s, n) for s, n in samples if abs(n - level) > 0.1 * level]
    assert not outside, f"key count within 10 % of {level} after warm-up: {samples}"

    assert leases_seen, "runs held leases while the traffic went on (the check below can fail)"
    for flow in scenario.FLOWS:  # traffic stops: no webhook, no flow left to schedule
        send(t.FLOW_STOPPING, {"id": flow.id}, tenant=flow.tenant, user=flow.user)
    system.settle()

    def left_behind() -> list[str]:
        everything = [str(k, "utf-8") for k in redis.scan_iter(count=1000)]  # with a TTL or not
        return [k for k in everything if k.startswith(LEFT_BEHIND)]

    for _ in range(30):  # at most 300 s: longer than any run's limit (maxRunSeconds 240)
        if not left_behind() and not redis.hlen(keys.admitted_runs()):
            break
        system.run_for(10)
    assert left_behind() == [], "nothing left behind"
    empty = {
        "waiting runs": redis.hlen(keys.waiting_runs()),
        "admitted runs": redis.hlen(keys.admitted_runs()),
        "running (step-execute)": redis.zcard(keys.runs_running()),
        "watched runs (policy-check)": redis.zcard(keys.watched_runs()),
        **{f"outbox {tag}": redis.llen(keys.outbox(tag)) for tag in keys.TAGS},
        **{f"in flight {tag}": redis.zcard(keys.outbox_in_flight(tag)) for tag in keys.TAGS},
    }
    assert set(empty.values()) == {0}, f"nothing waiting, running or unsent: {empty}"
