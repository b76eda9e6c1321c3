"""Each CloudEvent is handled once (DESIGN §1): dedupe key, state change and outbox together."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from redis import Redis
from redis.client import Pipeline

from shared import keys
from shared.clock import FakeClock
from shared.errors import TemporaryError
from shared.events import OutgoingEvent, types
from shared.runtime import outbox
from shared.runtime.auth import Principal
from shared.runtime.function import Context, FunctionRuntime
from shared.runtime.idempotency import DEDUPE_TTL_SECONDS, Once, script_dedupe
from tests.conftest import TEST_KEY
from tests.support.events import CapturingSender, cloudevent, internal
from tests.support.runtime import make_runtime, recorded, recording_spec

pytestmark = pytest.mark.redis_cluster  # also on a real 3-master Redis Cluster

EFFECT = "co:{exec}:test-effect"
# Who `internal(...)` events come from, as the runtime authenticates them.
SENDER = Principal("internal", "tests", None, frozenset(), frozenset()).scope


def count_and_emit(ctx: Context[Any]) -> None:
    """The effect: a counter; plus one event announcing it."""

    def write(pipe: Pipeline) -> None:
        pipe.incr(EFFECT)

    announced = ctx.new_event(
        types.USAGE_REPORTED, {"tenant": "acme", "messages": 1}, tenant="acme"
    )
    ctx.commit(write, [announced])


def _runtime(
    redis: Redis, clock: FakeClock, env: dict[str, str], handler: Any = count_and_emit
) -> FunctionRuntime[Any]:
    return make_runtime(recording_spec("step-execute", handler), redis, clock, env)


def _run_ended(clock: FakeClock, event_id: str = "evt-1", source: str = "/flow-start") -> Any:
    data = {"flowId": "f", "runId": "r", "tenant": "acme", "fencingToken": 1}
    return internal(
        "flow.execution.completed",
        data,
        key=TEST_KEY,
        clock=clock,
        event_id=event_id,
        source=source,
    )


def test_the_same_event_ten_times_has_one_effect(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    runtime = _runtime(redis, clock, base_env)
    outcomes = [runtime.handle(_run_ended(clock)) for _ in range(10)]
    assert int(redis.get(EFFECT) or 0) == 1
    assert [o.duplicate for o in outcomes] == [False] + [True] * 9
    sent = runtime.sender.events  # type: ignore[attr-defined]
    assert len(sent) == 1 and sent[0].type == types.USAGE_REPORTED


def test_twenty_concurrent_deliveries_have_one_effect(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    runtime = _runtime(redis, clock, base_env)
    start = threading.Barrier(20)
    errors: list[BaseException] = []

    def deliver() -> None:
        start.wait()
        try:
            runtime.handle(_run_ended(clock))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert int(redis.get(EFFECT) or 0) == 1
    # Concurrent flushers may both send the one event (receivers dedupe by id), never two.
    assert {e.id for e in runtime.sender.events} and len({e.id for e in runtime.sender.events}) == 1  # type: ignore[attr-defined]
    assert outbox.pending(redis) == 0


def test_a_crash_before_commit_leaves_nothing_and_redelivery_works(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    crashes = [True]

    def crashing(ctx: Context[Any]) -> None:
        if crashes and crashes.pop():
            redis.set("co:{exec}:half-done", 1)  # outside the transaction: not our state
            raise RuntimeError("process died mid-handler")
        count_and_emit(ctx)

    runtime = _runtime(redis, clock, base_env, crashing)
    with pytest.raises(RuntimeError):
        runtime.handle(_run_ended(clock))
    assert redis.get(EFFECT) is None
    assert outbox.pending(redis) == 0
    assert not Once(redis, keys.EXECUTION, "/flow-start", "evt-1", SENDER).done()

    outcome = runtime.handle(_run_ended(clock))  # the broker redelivers
    assert not outcome.duplicate and outcome.flushed == 1
    assert int(redis.get(EFFECT) or 0) == 1


def test_a_crash_between_commit_and_send_is_repaired_by_redelivery(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    sender = CapturingSender()
    sender.down = True
    runtime = make_runtime(
        recording_spec("step-execute", count_and_emit), redis, clock, base_env, sender
    )
    with pytest.raises(TemporaryError):
        runtime.handle(_run_ended(clock))
    assert int(redis.get(EFFECT) or 0) == 1 and outbox.pending(redis) == 1

    sender.down = False
    outcome = runtime.handle(_run_ended(clock))
    assert outcome.duplicate and outcome.flushed == 1
    assert int(redis.get(EFFECT) or 0) == 1
    assert len(sender.events) == 1


@pytest.mark.parametrize(
    ("first", "second", "effects"),
    [
        (("evt-1", "/a"), ("evt-1", "/a"), 1),
        (("evt-1", "/a"), ("evt-2", "/a"), 2),
        (("evt-1", "/a"), ("evt-1", "/b"), 2),
    ],
    ids=["same source and id", "another id", "same id from another source"],
)
def test_identity_is_source_plus_id(
    redis: Redis,
    clock: FakeClock,
    base_env: dict[str, str],
    first: tuple[str, str],
    second: tuple[str, str],
    effects: int,
) -> None:
    runtime = _runtime(redis, clock, base_env)
    for event_id, source in (first, second):
        runtime.handle(_run_ended(clock, event_id, source))
    assert int(redis.get(EFFECT) or 0) == effects


def test_each_function_dedupes_in_its_own_tag(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    """One event consumed by two functions has an effect in each."""
    event = _run_ended(clock)
    for function in ("step-execute", "flow-start", "policy-check"):
        make_runtime(recording_spec(function), redis, clock, base_env).handle(event)
    for tag in (keys.EXECUTION, keys.ADMISSION, keys.POLICY):
        assert len(recorded(redis, tag)) == 1


def test_ticks_are_never_deduplicated(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    """A tick only makes due work happen: every delivery runs the handler."""
    calls: list[str] = []
    runtime = _runtime(redis, clock, base_env, lambda ctx: calls.append(ctx.event.id))
    for _ in range(3):
        outcome = runtime.handle(cloudevent("orchestrator.tick", {}, event_id="tick-1"))
        assert not outcome.duplicate
    assert calls == ["tick-1"] * 3


def test_commit_writes_dedupe_key_with_ttl_and_outbox_atomically(redis: Redis) -> None:
    once = Once(redis, keys.EXECUTION, "/src", "id-1")
    event = OutgoingEvent(id="out-1", type=types.RUN_COMPLETED, source="/s", data={})

    def write(value: int) -> Callable[[Pipeline], None]:
        def apply(pipe: Pipeline) -> None:
            pipe.set("co:{exec}:x", value)

        return apply

    assert once.commit(write(1), [event])
    assert 0 < redis.ttl(once.dedupe_key) <= DEDUPE_TTL_SECONDS
    assert redis.lrange(once.outbox_key, 0, -1) == [event.to_json().encode()]
    assert not once.commit(write(2), [event])
    assert redis.get("co:{exec}:x") == b"1" and redis.llen(once.outbox_key) == 1


def test_a_failing_write_leaves_neither_dedupe_key_nor_outbox(redis: Redis) -> None:
    once = Once(redis, keys.EXECUTION, "/src", "id-1")
    event = OutgoingEvent(id="out-1", type=types.RUN_COMPLETED, source="/s", data={})

    def broken(pipe: Pipeline) -> None:
        pipe.set("co:{exec}:x", 1)
        raise ValueError("bug while building the writes")

    with pytest.raises(ValueError):
        once.commit(broken, [event])
    assert not once.done() and redis.get("co:{exec}:x") is None
    assert redis.llen(once.outbox_key) == 0


def test_ids_of_caused_events_are_stable_across_redeliveries(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    """A redelivery that runs the handler again (first attempt crashed) emits the same ids."""
    seen: list[str] = []

    def emit_only(ctx: Context[Any]) -> None:
        seen.append(ctx.new_event(types.RUN_COMPLETED, {}).id)
        if len(seen) == 1:
            raise RuntimeError("crash")
        ctx.commit(None)

    runtime = _runtime(redis, clock, base_env, emit_only)
    with pytest.raises(RuntimeError):
        runtime.handle(_run_ended(clock))
    runtime.handle(_run_ended(clock))
    assert len(seen) == 2 and seen[0] == seen[1]
    assert script_dedupe(Once(redis, keys.EXECUTION, "/flow-start", "evt-1"), keys.EXECUTION) == (
        keys.dedupe(keys.EXECUTION, "/flow-start", "evt-1"),
        DEDUPE_TTL_SECONDS,
    )
    no_dedupe_key, no_dedupe_ttl = script_dedupe(None, keys.EXECUTION)
    assert no_dedupe_ttl == 0 and no_dedupe_key.startswith("co:{exec}:")  # same slot, unused


# --- the dedupe key carries who sent the event; keys of the previous release still count ------
def test_the_same_source_and_id_from_another_sender_is_another_event(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    runtime = _runtime(redis, clock, base_env)
    first = runtime.handle(_run_ended(clock))
    other = internal(
        "flow.execution.completed",
        {"flowId": "f", "runId": "r", "tenant": "acme", "fencingToken": 1},
        key=TEST_KEY, clock=clock, event_id="evt-1", source="/flow-start", sender="deploy",
    )  # fmt: skip
    second = runtime.handle(other)
    assert not first.duplicate and not second.duplicate
    assert int(redis.get(EFFECT) or 0) == 2
    ids = [e.id for e in runtime.sender.events]  # type: ignore[attr-defined]
    assert len(set(ids)) == 2  # their caused events do not collide downstream either


def test_an_event_handled_by_the_previous_release_is_still_a_duplicate(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    """Upgrade: the previous release keyed dedupe by (source, id) only. An event it handled and
    the broker redelivers to this release must not be handled again."""
    old_form = keys.dedupe(keys.EXECUTION, "/flow-start", "evt-1")  # as it was written
    redis.set(old_form, b"1", ex=DEDUPE_TTL_SECONDS)
    runtime = _runtime(redis, clock, base_env)
    assert runtime.handle(_run_ended(clock)).duplicate
    assert redis.get(EFFECT) is None
    once = Once(redis, keys.EXECUTION, "/flow-start", "evt-1", SENDER)
    assert once.dedupe_key != old_form and once.done()

    def bump(pipe: Pipeline) -> None:
        pipe.incr(EFFECT)

    assert not once.commit(bump)  # the race path reads it too
    assert redis.get(EFFECT) is None
