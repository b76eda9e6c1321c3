"""The `$pad` attack, bounded during evaluation (docs/security.md, "Budgets"): tenant A's edge
mappers build hundreds of megabytes from a 144-byte step output (`$pad("", 100000000)`,
doubling a string 27 times, stringifying a 9-million-entry range, `$eval` of a `$pad`, a join or
replace that multiplies). Each
used to exist in the function's memory whole before the time box or the message bound looked
at it (`$pad(…, 3e8)` peaked at 881 MB); now every string builder checks the size it would build
first (JSONATA_MAX_VALUE_BYTES), the run fails with `routing_error`, Redis and the process's
memory stay within budget, and tenant B's run next to it completes as usual.

Through the real step-execute app over HTTP, a real Redis; process memory measured with
tracemalloc around each request."""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import pytest
from cloudevents.conversion import to_binary
from flask.testing import FlaskClient
from redis import Redis

from shared import keys
from shared.clock import FakeClock
from shared.handlers.step_execute import SPEC as STEP_EXECUTE
from shared.ports.step_message import StepMessage
from tests.support.apps import function_client
from tests.support.flows import fast_policy, flow_document
from tests.support.function import FunctionHarness
from tests.support.http_sink import HttpSink

ATTACKS = {
    "pad": '$pad("", 100000000)',
    "doubling": '$reduce([1..27], function($a, $i) { $a & $a }, "x")',
    "stringified range": "$string([1..9000000])",
    "shared references": '($s := $pad("", 2000000); $string([1..100].($s)))',
    "join separator": '$join([1..1000].("x"), $pad("", 200000))',
    "replace": '$replace($pad("", 100000, "a"), "a", $pad("", 1000, "b"))',
    "eval": "$eval('$pad(\"\", 100000000)')",
}
REDIS_BUDGET_BYTES = 1024 * 1024  # what one such event may add to Redis, at most
PROCESS_BUDGET_BYTES = 32 * 1024 * 1024  # what handling it may allocate at its peak


def _used_memory(redis: Redis) -> int:
    return int(redis.info("memory")["used_memory"])


def _post(client: FlaskClient, harness: FunctionHarness[Any], message: StepMessage, n: int) -> int:
    event = harness.result(message, {"x": 1}, seq=0, final=True, event_id=f"attack-{n}")
    headers, body = to_binary(event)
    assert len(body) < 400
    return client.post("/", headers=headers, data=body).status_code


@pytest.mark.parametrize("mapper", list(ATTACKS.values()), ids=list(ATTACKS))
def test_a_mapper_that_builds_megabytes_is_stopped_before_it_builds_them(
    redis: Redis,
    base_env: dict[str, str],
    sink: HttpSink,
    monkeypatch: pytest.MonkeyPatch,
    mapper: str,
) -> None:
    harness = FunctionHarness(
        STEP_EXECUTE, redis, FakeClock(time.time()), base_env, policy=fast_policy()
    )
    harness.store_flow(flow_document("pad", ["a", "b"], [("a", "b", {"mapper": mapper})]))
    harness.store_flow(flow_document("calm", ["a", "b"], [("a", "b")], tenant="rival"))
    harness.admit("pad", "run-pad")
    harness.admit("calm", "run-calm", tenant="rival")
    (attack,) = harness.messages("pad", "a")
    (calm,) = harness.messages("calm", "a")
    client = function_client(monkeypatch, base_env, "step-execute", K_SINK=sink.url)
    _post(client, harness, calm, 0)  # warm: first-request imports are not the attack's memory
    before = _used_memory(redis)

    tracemalloc.start()
    try:
        assert _post(client, harness, attack, 1) == 200
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert peak < PROCESS_BUDGET_BYTES, f"peak {peak / 1e6:.0f} MB"
    assert _used_memory(redis) - before < REDIS_BUDGET_BYTES
    assert redis.xlen(keys.step_queue("pad", "b")) == 0
    run = harness.run("run-pad")
    assert (run.status, run.reason) == ("failed", "routing_error")
    # tenant B's run went on as if nothing happened
    assert redis.xlen(keys.step_queue("calm", "b")) == 1
    assert harness.run("run-calm").status == "running"
