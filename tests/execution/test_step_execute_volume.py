"""10,000 messages through Redis Streams without loss or hang, driving `shared` directly.

The source fans out to SINKS steps, so its OUTPUTS outputs make 10,000 step messages; each is
published by the publisher, consumed from its stream, and completed with the same script call
the step.completed handler makes (pipelined a batch at a time, which runs them one by one on
the server); the run completes once, nothing is lost or doubled.
"""

from __future__ import annotations

from redis import Redis

from shared import keys
from shared.adapters.redis_streams import RedisStreamsQueue
from shared.clock import FakeClock
from shared.events import FlowDocument, RunAdmitted, StepResult
from shared.execution import runs
from shared.execution.publisher import Publisher
from shared.execution.routing import Graph, route
from shared.runtime.idempotency import Once
from shared.scripts import ScriptCall
from tests.conftest import TEST_KEY
from tests.support.flows import TENANT, USER, fast_policy, flow_document

SINKS = 20
OUTPUTS = 500
COUNT = SINKS * OUTPUTS  # 10,000 step messages
SOURCE = "/component-orchestrator/step-execute"


def output_call(
    redis: Redis,
    clock: FakeClock,
    run: runs.RunGraph,
    step: str,
    message_id: str,
    seq: int,
    final: bool,
    data: object,
) -> ScriptCall:
    """One step output as the step.completed handler records it (routing + script call)."""
    result = StepResult(
        run_id="run-v",
        step_id=step,
        message_id=message_id,
        seq=seq,
        final=final,
        data=data,
        empty=data is None,
    )
    return runs.output_call(
        Once.keyed(redis, keys.EXECUTION, "volume", message_id, str(seq)),
        run=run,
        result=result,
        routes=[] if data is None else route(run.graph, step, data),
        now=clock.now(),
        retention_seconds=3600,
        source=SOURCE,
    )


def test_ten_thousand_messages_flow_through_redis_streams_count_in_equals_count_out(
    redis: Redis, clock: FakeClock
) -> None:
    policy = fast_policy(messages_per_second=1e9)
    sinks = [f"b{i}" for i in range(SINKS)]
    flow = FlowDocument.parse(
        flow_document("volume", ["a", *sinks], [("a", sink) for sink in sinks])
    )
    graph = Graph.from_flow(flow)
    admitted = RunAdmitted(
        flow_id="volume",
        run_id="run-v",
        tenant=TENANT,
        user=USER,
        fencing_token=1,
        scheduled_for=0,
        trigger="execute",
    )
    queue = RedisStreamsQueue(redis, maxlen=COUNT * 2)
    publisher = Publisher(redis, queue, clock, TEST_KEY)
    started = runs.start(
        redis,
        Once.keyed(redis, keys.EXECUTION, "volume", "start"),
        admitted=admitted,
        graph=graph,
        messages=runs.start_messages("run-v", graph, "{}"),
        limits=policy.tenant(TENANT),
        now=clock.now(),
    )
    assert started == "started"
    assert publisher.drain(policy) == 1
    (start,) = queue.receive(keys.step_queue("volume", "a"), "w", wait_seconds=0)
    assert start.message is not None
    run = runs.load(redis, "run-v")
    assert run is not None

    # the source emits OUTPUTS outputs, each fanned out to every sink
    calls = [
        output_call(
            redis, clock, run, "a", start.message.message_id, seq, seq == OUTPUTS - 1, {"n": seq}
        )
        for seq in range(OUTPUTS)
    ]
    assert set(runs.run_calls(redis, calls)) == {"routed"}
    queue.ack(keys.step_queue("volume", "a"), [start])
    assert publisher.drain(policy, limit=COUNT * 2) == COUNT

    # every sink consumes its stream in batches and emits nothing
    seen: list[tuple[str, int]] = []
    outcomes: dict[str, int] = {}
    for _ in range(COUNT):  # bounded: a hang fails instead of spinning forever
        received = 0
        for sink in sinks:
            sink_queue = keys.step_queue("volume", sink)
            deliveries = queue.receive(sink_queue, "w", max_messages=500, wait_seconds=0)
            batch = []
            for delivery in deliveries:
                message = delivery.message
                assert message is not None
                seen.append((message.step_id, message.data["n"]))
                batch.append(
                    output_call(redis, clock, run, sink, message.message_id, 0, True, None)
                )
            for outcome in runs.run_calls(redis, batch):
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
            queue.ack(sink_queue, deliveries)
            received += len(deliveries)
        if not received:
            break

    # count in = count out: every (sink, output) exactly once
    assert len(seen) == COUNT
    assert set(seen) == {(sink, n) for sink in sinks for n in range(OUTPUTS)}
    assert outcomes == {"routed": COUNT - 1, "completed": 1}
    record = runs.get(redis, "run-v")
    assert record is not None and record.status == "completed"
    assert record.messages == COUNT + 1 and record.steps == COUNT + 1
    assert all(queue.depth(keys.step_queue("volume", sink)) == 0 for sink in sinks)
    assert redis.zcard(keys.step_due()) == 0
    outbox = redis.lrange(keys.outbox(keys.EXECUTION), 0, -1)
    assert sum(b"flow.execution.completed" in entry for entry in outbox) == 1
