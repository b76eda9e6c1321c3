"""The outbox (DESIGN §1): stored with the state change, sent later, never lost, sent once."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis

from shared import keys
from shared.clock import FakeClock
from shared.errors import TemporaryError
from shared.events import OutgoingEvent, types
from shared.runtime import outbox
from shared.runtime.function import Context
from shared.runtime.http import as_http_exception
from shared.runtime.outbox import HttpSender, NullSender
from shared.security.tokens import keyed_event_id, sign_internal, verify_internal
from tests.conftest import TEST_KEY
from tests.support.events import CapturingSender, cloudevent, internal
from tests.support.http_sink import HttpSink
from tests.support.runtime import make_runtime, recording_spec

pytestmark = pytest.mark.redis_cluster  # also on a real 3-master Redis Cluster


def _event(number: int, tag: str = "x") -> OutgoingEvent:
    return OutgoingEvent(
        id=f"{tag}-{number}",
        type=types.RUN_COMPLETED,
        source="/component-orchestrator/step-execute",
        data={"flowId": "f", "runId": f"r{number}", "tenant": "acme", "fencingToken": number},
        extensions={"tenant": "acme", "flowid": "f"},
        time=1767225600.0 + number,
    )


def _stage(redis: Redis, tag: str, events: list[OutgoingEvent]) -> None:
    with redis.pipeline(transaction=True) as pipe:
        outbox.stage(pipe, tag, events)
        pipe.execute()


class FailingAfter(CapturingSender):
    """Accepts `budget` sends, then fails until `budget` is raised again."""

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.budget = budget

    def send(self, event: OutgoingEvent) -> None:
        if self.budget <= 0:
            raise TemporaryError("sink down (test)")
        self.budget -= 1
        super().send(event)


def test_flush_sends_oldest_first_and_empties_the_outbox(redis: Redis) -> None:
    events = [_event(n) for n in range(5)]
    _stage(redis, keys.EXECUTION, events)
    sender = CapturingSender()
    assert outbox.flush(redis, sender) == 5
    assert sender.events == events
    assert outbox.pending(redis) == 0


def test_a_down_sink_keeps_every_event_and_a_later_flush_sends_each_once(redis: Redis) -> None:
    events = [_event(n) for n in range(5)]
    _stage(redis, keys.EXECUTION, events)
    sender = FailingAfter(2)
    with pytest.raises(TemporaryError):
        outbox.flush(redis, sender)
    assert outbox.pending(redis) == 3
    with pytest.raises(TemporaryError):
        outbox.flush(redis, sender)  # still down: nothing sent, nothing lost
    assert outbox.pending(redis) == 3
    sender.budget = 100
    assert outbox.flush(redis, sender) == 3
    assert sender.events == events  # each once, in order
    assert outbox.flush(redis, sender) == 0


def test_flush_drains_every_tag_and_only_the_given_ones(redis: Redis) -> None:
    for tag in keys.TAGS:
        _stage(redis, tag, [_event(1, tag)])
    sender = CapturingSender()
    assert outbox.flush(redis, sender, [keys.DEPLOY]) == 1
    assert [e.id for e in sender.events] == [f"{keys.DEPLOY}-1"]
    assert outbox.flush(redis, sender) == len(keys.TAGS) - 1
    assert outbox.pending(redis) == 0


def test_flush_stops_at_its_limit(redis: Redis) -> None:
    _stage(redis, keys.POLICY, [_event(n) for n in range(10)])
    assert outbox.flush(redis, CapturingSender(), limit=4) == 4
    assert outbox.pending(redis) == 6


def test_no_sink_configured_keeps_the_events(redis: Redis) -> None:
    _stage(redis, keys.POLICY, [_event(1)])
    with pytest.raises(TemporaryError, match="K_SINK"):
        outbox.flush(redis, NullSender())
    assert outbox.pending(redis) == 1


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(st.tuples(st.integers(0, 3), st.booleans(), st.integers(0, 4)), max_size=12))
def test_whatever_fails_every_staged_event_arrives_exactly_once_in_order(
    redis: Redis, steps: list[tuple[int, bool, int]]
) -> None:
    """Any interleaving of staging, flushes that fail part way, and a final healthy flush."""
    redis.delete(keys.outbox(keys.EXECUTION))
    sender = FailingAfter(0)
    staged: list[OutgoingEvent] = []
    for stage_count, up, budget in steps:
        new = [_event(len(staged) + n) for n in range(stage_count)]
        _stage(redis, keys.EXECUTION, new)
        staged += new
        sender.budget = 1000 if up else budget
        with contextlib.suppress(TemporaryError):
            outbox.flush(redis, sender, [keys.EXECUTION])
    sender.budget = 10_000
    outbox.flush(redis, sender, [keys.EXECUTION])
    assert sender.events == staged


# --------------------------------------------------------------------------- over HTTP
def test_http_sender_posts_binary_cloudevents_with_a_signed_authtoken(clock: FakeClock) -> None:
    event = _event(7)
    with HttpSink() as sink:
        sender = HttpSender(sink.url, key=TEST_KEY, sender_name="step-execute", clock=clock)
        sender.send(event)
        [request] = sink.wait_for(1)
    headers = request.headers
    assert headers["content-type"].startswith("application/json")  # binary mode
    assert headers["ce-id"] == keyed_event_id(TEST_KEY, event.source, "x-7")
    assert headers["ce-type"] == types.RUN_COMPLETED
    assert headers["ce-source"] == event.source and headers["ce-specversion"] == "1.0"
    assert headers["ce-tenant"] == "acme" and headers["ce-flowid"] == "f"
    assert headers["ce-time"].startswith("2026-01-01T00:00:07")
    assert request.json() == event.data
    assert (
        verify_internal(
            TEST_KEY,
            headers["ce-authtoken"],
            clock,
            event_type=types.RUN_COMPLETED,
            accept_untyped=False,
        )
        == "step-execute"
    )


@pytest.mark.parametrize("status", [404, 429, 500, 503, 302])
def test_http_sender_refusals_are_temporary(clock: FakeClock, status: int) -> None:
    with HttpSink(default=status) as sink:
        sender = HttpSender(sink.url, key=TEST_KEY, sender_name="deploy", clock=clock)
        with pytest.raises(TemporaryError, match=str(status)):
            sender.send(_event(1))


def test_http_sender_unreachable_sink_is_temporary(clock: FakeClock) -> None:
    with HttpSink() as sink:
        url = sink.url
    sender = HttpSender(url, key=TEST_KEY, sender_name="deploy", clock=clock, timeout=1)
    with pytest.raises(TemporaryError, match="unreachable"):
        sender.send(_event(1))


def _announce(ctx: Context[Any]) -> None:
    events = [
        ctx.new_event(types.USAGE_REPORTED, {"tenant": "acme", "messages": n}, tenant="acme")
        for n in range(3)
    ]
    ctx.commit(None, events)


def _run_ended(clock: FakeClock, event_id: str = "evt-1") -> Any:
    data = {"flowId": "f", "runId": "r", "tenant": "acme", "fencingToken": 1}
    return internal("flow.execution.completed", data, key=TEST_KEY, clock=clock, event_id=event_id)


def test_a_function_whose_sink_is_down_answers_503_and_keeps_its_events(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    with HttpSink(default=503) as sink:
        sender = HttpSender(sink.url, key=TEST_KEY, sender_name="step-execute", clock=clock)
        runtime = make_runtime(
            recording_spec("step-execute", _announce), redis, clock, base_env, sender
        )
        with pytest.raises(TemporaryError) as caught:
            runtime.handle(_run_ended(clock))
        assert as_http_exception(caught.value).code == 503
        assert outbox.pending(redis) == 3

        refused = len(sink.requests)  # the batch is posted concurrently: all three tried
        assert refused == 3
        sink.default = 200
        outcome = runtime.handle(_run_ended(clock))  # the broker redelivers the same event
        assert outcome.duplicate and outcome.flushed == 3
        accepted = sink.requests[refused:]
        assert sorted(r.json()["messages"] for r in accepted) == [0, 1, 2]
        assert len({r.headers["ce-id"] for r in accepted}) == 3
        assert outbox.pending(redis) == 0


def test_a_tick_flushes_what_other_tags_left_behind(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    _stage(redis, keys.DEPLOY, [_event(1, "dep")])
    _stage(redis, keys.ADMISSION, [_event(1, "adm")])
    runtime = make_runtime(recording_spec("step-execute"), redis, clock, base_env)
    runtime.handle(_run_ended(clock))  # a normal event flushes only its own tag
    assert outbox.pending(redis) == 2
    outcome = runtime.handle(cloudevent("orchestrator.tick", {}))
    assert outcome.flushed == 2 and outbox.pending(redis) == 0


class SlowSender(CapturingSender):
    """Takes a moment per event, so concurrent flushers really overlap."""

    def send(self, event: OutgoingEvent) -> None:
        import time

        time.sleep(0.002)
        super().send(event)


@pytest.mark.parametrize("flushers", [2, 4], ids=["a request and a tick", "four functions"])
def test_concurrent_flushers_send_each_event_once(redis: Redis, flushers: int) -> None:
    import threading

    events = [_event(n) for n in range(200)]
    _stage(redis, keys.ADMISSION, events)
    sender = SlowSender()
    threads = [
        threading.Thread(target=outbox.flush, args=(redis, sender, [keys.ADMISSION]))
        for _ in range(flushers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sent = [event.id for event in sender.events]
    assert sorted(sent) == sorted(event.id for event in events)  # each exactly once
    assert redis.llen(keys.outbox(keys.ADMISSION)) == 0
    assert redis.zcard(keys.outbox_in_flight(keys.ADMISSION)) == 0


def test_a_flusher_that_dies_mid_send_leaves_its_events_to_the_next_after_the_lease(
    redis: Redis,
) -> None:
    events = [_event(n) for n in range(3)]
    _stage(redis, keys.DEPLOY, events)
    claimed = outbox.claim(redis, keys.DEPLOY, 10, now=1000.0)  # then the flusher dies
    assert len(claimed) == 3
    assert outbox.claim(redis, keys.DEPLOY, 10, now=1000.0 + 1) == []  # leased: not resent
    later = 1000.0 + outbox.CLAIM_LEASE_SECONDS + 1
    again = outbox.claim(redis, keys.DEPLOY, 10, now=later)
    assert [OutgoingEvent.from_json(e).id for e in again] == [e.id for e in events]


def test_a_failed_send_puts_the_rest_back_in_order(redis: Redis) -> None:
    events = [_event(n) for n in range(6)]
    _stage(redis, keys.POLICY, events)
    sender = FailingAfter(2)
    with pytest.raises(TemporaryError):
        outbox.flush(redis, sender, [keys.POLICY])
    waiting = [OutgoingEvent.from_json(e).id for e in redis.lrange(keys.outbox(keys.POLICY), 0, -1)]
    assert waiting == [e.id for e in events[2:]]
    assert redis.zcard(keys.outbox_in_flight(keys.POLICY)) == 0


# --------------------------------------------------------------------------- batches
def _typed(number: int, event_type: str) -> OutgoingEvent:
    return OutgoingEvent(
        id=f"b-{number}", type=event_type, source="/component-orchestrator/flow-start",
        data={"flowId": "f", "runId": f"r{number}", "tenant": "acme", "fencingToken": number},
        extensions={"tenant": "acme", "flowid": "f"}, time=1767225600.0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("types_in_batch", "tokens"),
    [
        ([types.RUN_COMPLETED] * 5, 1),
        ([types.RUN_COMPLETED, types.RUN_FAILED] * 3, 2),
        ([types.RUN_COMPLETED, types.RUN_FAILED, types.RUN_ADMITTED, types.RUN_COMPLETED], 3),
    ],
    ids=["one type", "two types", "three types"],
)
def test_a_flushed_batch_carries_one_token_per_event_type(
    redis: Redis,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    types_in_batch: list[str],
    tokens: int,
) -> None:
    events = [_typed(n, event_type) for n, event_type in enumerate(types_in_batch)]
    _stage(redis, keys.ADMISSION, events)
    signed: list[str] = []

    def counting_sign(key: str, sender: str, clock: FakeClock, *, event_type: str) -> str:
        signed.append(event_type)
        return sign_internal(key, sender, clock, event_type=event_type)

    monkeypatch.setattr(outbox, "sign_internal", counting_sign)  # a spy: the real signer
    with HttpSink() as sink:
        sender = HttpSender(sink.url, key=TEST_KEY, sender_name="flow-start", clock=clock)
        assert outbox.flush(redis, sender, [keys.ADMISSION]) == len(events)
        requests = sink.wait_for(len(events))
    by_type: dict[str, set[str]] = {}
    for request in requests:
        token = request.headers["ce-authtoken"]
        event_type = request.headers["ce-type"]
        assert verify_internal(TEST_KEY, token, clock, event_type=event_type, accept_untyped=False)
        by_type.setdefault(event_type, set()).add(token)
    assert len(by_type) == tokens
    assert all(len(tokens_seen) == 1 for tokens_seen in by_type.values())
    assert sorted(signed) == sorted(set(types_in_batch))  # signed once per (batch, type)


def test_a_batch_is_posted_concurrently_over_one_pool(redis: Redis, clock: FakeClock) -> None:
    """Held at the sink's gate, every event of the batch is in flight at once (a sender
    posting one after the other would have one request waiting there)."""
    events = [_typed(n, types.RUN_COMPLETED) for n in range(8)]
    _stage(redis, keys.ADMISSION, events)
    with HttpSink() as sink:
        sink.gate.clear()
        first = HttpSender(sink.url, key=TEST_KEY, sender_name="flow-start", clock=clock)
        second = HttpSender(sink.url, key=TEST_KEY, sender_name="deploy", clock=clock)
        assert first.session is second.session  # one connection pool per process
        flushing = ThreadPoolExecutor(max_workers=1).submit(
            outbox.flush, redis, first, [keys.ADMISSION]
        )
        assert len(sink.wait_for(len(events))) == len(events)  # all arrived, none answered
        sink.gate.set()
        assert flushing.result(timeout=30) == len(events)
    assert outbox.pending(redis, [keys.ADMISSION]) == 0
