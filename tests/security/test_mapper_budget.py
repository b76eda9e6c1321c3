"""The `$pad` attack (docs/security.md, "Bounded inputs"): a 3-edge flow whose mappers pad a
144-byte step output to megabytes. Each routed message used to be stored in Redis whole (~120
MiB per step.completed with 20,000,000), and with `noeviction` one tenant filling Redis stops
every tenant. Now a routed message above 256 KiB fails the run before it is encoded, and Redis
memory stays within budget."""

from __future__ import annotations

import time

import pytest
from cloudevents.conversion import to_binary
from redis import Redis

from shared import keys
from shared.clock import FakeClock
from shared.handlers.step_execute import SPEC as STEP_EXECUTE
from tests.support.apps import function_client
from tests.support.flows import fast_policy, flow_document
from tests.support.function import FunctionHarness
from tests.support.http_sink import HttpSink

PAD = '$pad("x", 2000000)'  # 2 MB per edge, 3 edges: 6 MB per event before the fix
BUDGET_BYTES = 1024 * 1024  # what one such event may add to Redis, at most


def _used_memory(redis: Redis) -> int:
    return int(redis.info("memory")["used_memory"])


def test_the_pad_mapper_attack_leaves_redis_memory_within_budget(
    redis: Redis, base_env: dict[str, str], sink: HttpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = FunctionHarness(
        STEP_EXECUTE, redis, FakeClock(time.time()), base_env, policy=fast_policy()
    )
    edges = [("a", target, {"mapper": PAD}) for target in ("b", "c", "d")]
    harness.store_flow(flow_document("pad", ["a", "b", "c", "d"], edges))
    harness.admit("pad", "run-pad")
    (message,) = harness.messages("pad", "a")
    client = function_client(monkeypatch, base_env, "step-execute", K_SINK=sink.url)
    before = _used_memory(redis)

    for n in range(3):  # the attacker repeats it; each event must stay within the budget
        event = harness.result(message, {"x": 1}, seq=n, final=False, event_id=f"pad-{n}")
        headers, body = to_binary(event)
        assert len(body) < 300
        assert client.post("/", headers=headers, data=body).status_code == 200

    assert _used_memory(redis) - before < BUDGET_BYTES
    for step in ("b", "c", "d"):
        assert redis.xlen(keys.step_queue("pad", step)) == 0
    run = harness.run("run-pad")
    assert run.status == "failed"
