"""The local broker: Knative's routing, retry table, Retry-After and dead letters, over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from hypothesis import given
from hypothesis import strategies as st

from shared.events import types as t
from shared.local.broker import (
    Broker,
    DeliveryPolicy,
    Topology,
    Trigger,
    delivery_from_spec,
    is_retryable,
    load_topology,
    parse_duration,
    parse_retry_after,
    serve,
)
from shared.local.run import knative_dir
from shared.runtime.dead_letters import FileDeadLetters
from tests.support.http_sink import HttpSink

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ0ZXN0cyJ9.c2lnbmF0dXJlLXZhbHVl"
BASE_TOPOLOGY = load_topology(knative_dir())


# --------------------------------------------------------------------------- the retry table
@pytest.mark.parametrize(
    ("status", "retried"),
    [
        (None, True),  # timeout or connection refused
        (200, False),
        (202, False),
        (302, False),
        (400, False),
        (401, False),
        (403, False),
        (404, True),
        (408, True),
        (409, True),
        (410, False),
        (422, False),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
    ],
)
def test_knatives_retry_table(status: int | None, retried: bool) -> None:
    assert is_retryable(status) is retried


@given(st.integers(100, 599))
def test_retryable_means_404_408_409_429_or_5xx(status: int) -> None:
    assert is_retryable(status) == (status in (404, 408, 409, 429) or status >= 500)


@pytest.mark.parametrize(
    ("policy", "delays"),
    [
        (DeliveryPolicy(backoff_delay=0.5), [0.5, 1.0, 2.0, 4.0, 8.0]),
        (DeliveryPolicy(backoff_delay=0.2, backoff_policy="linear"), [0.2, 0.4, 0.6, 0.8, 1.0]),
    ],
    ids=["exponential", "linear"],
)
def test_backoff(policy: DeliveryPolicy, delays: list[float]) -> None:
    assert [policy.backoff(n) for n in range(1, 6)] == pytest.approx(delays)


@pytest.mark.parametrize(
    ("status", "retry_after", "delay"),
    [
        (429, 3.0, 3.0),  # Retry-After longer than the backoff wins
        (503, 3.0, 3.0),
        (429, 0.1, 1.0),  # the backoff when it is longer
        (429, 500.0, 60.0),  # capped by retry_after_max
        (500, 3.0, 1.0),  # only 429 and 503 carry a meaningful Retry-After
        (404, 3.0, 1.0),
        (429, None, 1.0),
    ],
)
def test_retry_after_is_honoured_for_429_and_503(
    status: int, retry_after: float | None, delay: float
) -> None:
    policy = DeliveryPolicy(backoff_delay=0.5, retry_after_max=60.0)
    assert policy.delay(2, status, retry_after) == delay


@pytest.mark.parametrize("status", [429, 503])
def test_without_retry_after_max_the_header_is_ignored_as_knative_does(status: int) -> None:
    assert DeliveryPolicy(backoff_delay=0.5).delay(2, status, 30.0) == 1.0
    spec = {"retryAfterMax": "PT10S"}
    assert delivery_from_spec(spec, DeliveryPolicy(backoff_delay=0.5)).delay(2, status, 30.0) == 10


def test_retry_after_as_seconds_or_http_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert parse_retry_after("5", now) == 5
    assert (
        parse_retry_after(
            format_datetime(datetime(2026, 1, 1, 0, 0, 9, tzinfo=UTC), usegmt=True), now
        )
        == 9
    )
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


@pytest.mark.parametrize(
    ("text", "seconds"), [("PT0.5S", 0.5), ("PT2M", 120), ("PT1H30M", 5400), ("PT1M5S", 65)]
)
def test_iso_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "P", "PT", "5s", "PT-1S", "P1D"])
def test_bad_iso_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_delivery_spec_of_the_base_broker() -> None:
    spec = BASE_TOPOLOGY.brokers["orchestrator"]
    assert spec["deadLetterSink"]["ref"]["name"] == "dead-letters"
    policy = delivery_from_spec(spec, DeliveryPolicy())
    assert (policy.retry, policy.backoff_policy, policy.backoff_delay) == (8, "exponential", 0.5)


# --------------------------------------------------------------------------- topology
def test_the_base_triggers_are_read_one_per_consumed_type_and_function() -> None:
    pairs = {(trigger.subscriber, trigger.filter["type"]) for trigger in BASE_TOPOLOGY.triggers}
    expected = {(fn, event_type) for fn in t.FUNCTIONS for event_type in t.CONSUMES[fn]}
    assert pairs == expected
    assert {trigger.broker for trigger in BASE_TOPOLOGY.triggers} == {"orchestrator"}


def _write(path: Path, documents: list[dict[str, Any]]) -> None:
    import yaml

    path.write_text(yaml.safe_dump_all(documents))


def _trigger_doc(name: str, spec_extra: dict[str, Any]) -> dict[str, Any]:
    spec = {"broker": "b", "subscriber": {"ref": {"kind": "Service", "name": "svc"}}}
    spec.update(spec_extra)
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": name},
        "spec": spec,
    }


@pytest.mark.parametrize(
    ("documents", "problem"),
    [
        ([_trigger_doc("a", {}), _trigger_doc("a", {})], "defined twice"),
        ([_trigger_doc("a", {"filters": [{"exact": {"type": "x"}}]})], "only `filter.attributes`"),
        ([_trigger_doc("a", {"subscriber": {}})], "no subscriber"),
    ],
    ids=["duplicate name", "new-style filters", "no subscriber"],
)
def test_unsupported_or_broken_triggers_are_refused(
    tmp_path: Path, documents: list[dict[str, Any]], problem: str
) -> None:
    _write(tmp_path / "t.yaml", documents)
    with pytest.raises(ValueError, match=problem):
        load_topology(tmp_path)


@given(
    attributes=st.dictionaries(st.sampled_from(["type", "source", "tenant"]), st.text(max_size=4)),
    wanted=st.dictionaries(st.sampled_from(["type", "source", "tenant"]), st.text(max_size=4)),
)
def test_a_filter_matches_when_every_listed_attribute_is_equal(
    attributes: dict[str, str], wanted: dict[str, str]
) -> None:
    trigger = Trigger("t", "b", "svc", filter=wanted)
    expected = all(attributes.get(k, "") == v for k, v in wanted.items())
    assert trigger.matches(attributes) is expected
    assert Trigger("all", "b", "svc").matches(attributes)


# --------------------------------------------------------------------------- delivery
class Waits:
    """The broker's wait: records each backoff instead of sleeping (no timing in tests)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> bool:
        self.delays.append(seconds)
        return False


@pytest.fixture()
def sinks() -> Iterator[dict[str, HttpSink]]:
    with ExitStack() as stack:
        yield {fn: stack.enter_context(HttpSink()) for fn in t.FUNCTIONS}


def _broker(
    sinks: dict[str, HttpSink],
    tmp_path: Path,
    *,
    waits: Waits | None = None,
    lines: list[str] | None = None,
    **policy: Any,
) -> Broker:
    return Broker(
        BASE_TOPOLOGY,
        {fn: sink.url for fn, sink in sinks.items()},
        FileDeadLetters(tmp_path / "dead.jsonl"),
        overrides={"retry": 3, "backoff_delay": 0.5, **policy},
        wait=waits or Waits(),
        report=(lines if lines is not None else []).append,
    )


def _event(event_type: str, data: Any = None, **attributes: Any) -> CloudEvent:
    base = {
        "type": event_type,
        "source": "/tests",
        "id": "e-1",
        "authtoken": TOKEN,
        "datacontenttype": "application/json",
    }
    base.update(attributes)
    return CloudEvent(base, {"id": "x"} if data is None else data)


@pytest.mark.parametrize("event_type", sorted(t.ALL_TYPES), ids=t.short)
def test_an_event_reaches_exactly_the_functions_that_consume_it(
    sinks: dict[str, HttpSink], tmp_path: Path, event_type: str
) -> None:
    broker = _broker(sinks, tmp_path)
    deliveries = [f.result(timeout=10) for f in broker.publish(_event(event_type))]
    broker.close()
    reached = {fn for fn, sink in sinks.items() if sink.requests}
    assert reached == {fn for fn in t.FUNCTIONS if event_type in t.CONSUMES[fn]}
    assert all(d.delivered and len(d.attempts) == 1 for d in deliveries)
    for fn in reached:
        [request] = sinks[fn].requests
        assert request.headers["ce-type"] == event_type  # binary mode, as Knative delivers
        assert request.headers["ce-authtoken"] == TOKEN  # passed through untouched
        assert request.json() == {"id": "x"}


@pytest.mark.parametrize("status", [404, 408, 409, 429, 500, 502, 503, 504])
def test_a_retryable_answer_is_retried_until_accepted(
    sinks: dict[str, HttpSink], tmp_path: Path, status: int
) -> None:
    sinks["deploy"].answer(status, status)
    waits = Waits()
    broker = _broker(sinks, tmp_path, waits=waits)
    [delivery] = [f.result(timeout=10) for f in broker.publish(_event(t.COMPONENT_STARTING))]
    assert delivery.delivered and [a.status for a in delivery.attempts] == [status, status, 200]
    assert waits.delays == [0.5, 1.0]
    assert len(sinks["deploy"].requests) == 3
    assert not (tmp_path / "dead.jsonl").exists()


@pytest.mark.parametrize("status", [400, 401, 403, 410, 422])
def test_a_permanent_refusal_is_not_retried_and_goes_to_the_dead_letters(
    sinks: dict[str, HttpSink], tmp_path: Path, status: int
) -> None:
    sinks["deploy"].default = status
    waits = Waits()
    lines: list[str] = []
    broker = _broker(sinks, tmp_path, waits=waits, lines=lines)
    [delivery] = [f.result(timeout=10) for f in broker.publish(_event(t.COMPONENT_STARTING))]
    assert not delivery.delivered and len(delivery.attempts) == 1 and waits.delays == []
    [letter] = FileDeadLetters(tmp_path / "dead.jsonl").read()
    assert (letter.subscriber, letter.status, letter.attempts) == ("deploy", status, 1)
    assert letter.attributes["type"] == t.COMPONENT_STARTING
    assert "authtoken" not in letter.attributes and letter.stripped == ["authtoken"]
    assert letter.data == {"id": "x"}
    assert TOKEN not in (tmp_path / "dead.jsonl").read_text()
    assert any(line.startswith("dead-letter component.starting") for line in lines)


def test_retries_are_bounded_then_the_event_is_dead_lettered(
    sinks: dict[str, HttpSink], tmp_path: Path
) -> None:
    sinks["policy-check"].default = 503
    waits = Waits()
    broker = _broker(sinks, tmp_path, waits=waits)
    [delivery] = [f.result(timeout=10) for f in broker.publish(_event(t.USAGE_REPORTED))]
    assert len(delivery.attempts) == 4  # the first try and 3 retries
    assert waits.delays == [0.5, 1.0, 2.0]
    [letter] = FileDeadLetters(tmp_path / "dead.jsonl").read()
    assert (letter.status, letter.attempts, letter.subscriber) == (503, 4, "policy-check")


def test_retry_after_of_the_subscriber_sets_the_wait(
    sinks: dict[str, HttpSink], tmp_path: Path
) -> None:
    sinks["flow-start"].answer((429, {"Retry-After": "7"}), (503, {"Retry-After": "9999"}))
    waits = Waits()
    broker = _broker(sinks, tmp_path, waits=waits, retry_after_max=30.0)
    [delivery] = [f.result(timeout=10) for f in broker.publish(_event(t.FLOW_EXECUTE))]
    assert delivery.delivered
    assert waits.delays == [7.0, 30.0]


def test_a_timeout_is_retried(sinks: dict[str, HttpSink], tmp_path: Path) -> None:
    sinks["deploy"].stall(2.0)
    broker = _broker(sinks, tmp_path, timeout=0.3)
    [delivery] = [f.result(timeout=10) for f in broker.publish(_event(t.COMPONENT_STOPPING))]
    assert [a.status for a in delivery.attempts] == [None, 200]
    assert delivery.attempts[0].reason == "timeout"


def test_an_unreachable_subscriber_is_retried_then_dead_lettered(
    sinks: dict[str, HttpSink], tmp_path: Path
) -> None:
    with HttpSink() as gone:
        url = gone.url
    broker = Broker(
        BASE_TOPOLOGY,
        {"deploy": url},
        FileDeadLetters(tmp_path / "dead.jsonl"),
        overrides={"retry": 2},
        wait=Waits(),
        report=list[str]().append,
    )
    [delivery] = [f.result(timeout=10) for f in broker.publish(_event(t.COMPONENT_STOPPING))]
    assert [a.reason for a in delivery.attempts] == ["connection refused"] * 3
    [letter] = FileDeadLetters(tmp_path / "dead.jsonl").read()
    assert letter.status is None and letter.attempts == 3


def test_stopping_ends_pending_retries_in_the_dead_letters(
    sinks: dict[str, HttpSink], tmp_path: Path
) -> None:
    sinks["deploy"].default = 503
    broker = Broker(
        BASE_TOPOLOGY,
        {"deploy": sinks["deploy"].url},
        FileDeadLetters(tmp_path / "dead.jsonl"),
        overrides={"retry": 5, "backoff_delay": 30.0},
        report=list[str]().append,
    )  # the real wait: interrupted by close()
    [future] = broker.publish(_event(t.COMPONENT_STOPPING))
    sinks["deploy"].wait_for(1)
    broker.close(wait=False)
    delivery = future.result(timeout=10)
    assert not delivery.delivered
    [letter] = FileDeadLetters(tmp_path / "dead.jsonl").read()
    assert letter.reason == "broker stopped before the next retry" and letter.attempts == 1


def test_the_live_log_names_type_target_and_status_never_the_token(
    sinks: dict[str, HttpSink], tmp_path: Path
) -> None:
    sinks["deploy"].answer(500)
    lines: list[str] = []
    broker = _broker(sinks, tmp_path, lines=lines)
    for future in broker.publish(_event(t.FLOW_STOPPING, id="stop-1")):
        future.result(timeout=10)
    for future in broker.publish(_event(t.TICK, {}, id="tick-1")):
        future.result(timeout=10)
    broker.publish(_event(t.COMPONENT_FAILED, id="nobody"))  # leaves the system: no trigger
    text = "\n".join(lines)
    assert TOKEN not in text
    deploy_lines = [line for line in lines if "→ deploy" in line and "stop-1" in line]
    assert ["500" in deploy_lines[0], "200" in deploy_lines[1]] == [True, True]
    assert sum("flow.stopping" in line for line in lines) == 4  # 3 consumers, one retry
    assert "tick-1" not in text  # delivered ticks are quiet (one a second)
    assert any(line.startswith("no trigger") and "nobody" in line for line in lines)


# --------------------------------------------------------------------------- HTTP ingress
@pytest.fixture()
def ingress(sinks: dict[str, HttpSink], tmp_path: Path) -> Iterator[tuple[str, Broker]]:
    broker = _broker(sinks, tmp_path)
    server = serve(broker, port=0).start()
    yield server.url, broker
    server.stop()
    broker.close(wait=False)


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_the_ingress_accepts_both_modes_with_202_then_delivers(
    ingress: tuple[str, Broker], sinks: dict[str, HttpSink], mode: str
) -> None:
    url, _ = ingress
    sinks["deploy"].gate.clear()  # the subscriber holds its answer...
    headers, body = (to_binary if mode == "binary" else to_structured)(_event(t.COMPONENT_STARTING))
    response = requests.post(url, headers=headers, data=body, timeout=5)
    assert response.status_code == 202  # ...yet the broker has already accepted
    [request] = sinks["deploy"].wait_for(1)
    sinks["deploy"].gate.set()
    assert request.headers["ce-id"] == "e-1" and request.headers["ce-authtoken"] == TOKEN
    assert request.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"content-type": "application/json", "ce-authtoken": TOKEN}, b"{}"),
        ({"content-type": "application/cloudevents+json", "ce-authtoken": TOKEN}, b"{oops"),
    ],
    ids=["binary without attributes", "structured not JSON"],
)
def test_the_ingress_refuses_what_is_not_a_cloudevent_without_echoing_tokens(
    ingress: tuple[str, Broker], headers: dict[str, str], body: bytes
) -> None:
    url, _ = ingress
    response = requests.post(url, headers=headers, data=body, timeout=5)
    assert response.status_code == 400
    assert response.json()["error"] == "InvalidEvent"
    assert TOKEN not in response.text


def test_the_ingress_answers_health_checks(ingress: tuple[str, Broker]) -> None:
    url, _ = ingress
    assert requests.get(url + "/healthz", timeout=5).json() == {"status": "ok"}


def test_routes_skip_subscribers_without_a_local_url(tmp_path: Path) -> None:
    broker = Broker(
        Topology(
            brokers={"b": {}},
            triggers=(
                Trigger("known", "b", "svc", {"type": "x"}),
                Trigger("unknown", "b", "other", {"type": "x"}),
                Trigger("uri", "b", "http://127.0.0.1:9/x", {"type": "x"}),
                Trigger("elsewhere", "other-broker", "svc", {"type": "x"}),
            ),
        ),
        {"svc": "http://127.0.0.1:9/"},
        FileDeadLetters(tmp_path / "d.jsonl"),
        report=list[str]().append,
    )
    assert [trigger.name for trigger, _, _ in broker.routes] == ["known", "uri"]
    broker.close()


def test_dead_letters_are_json_lines(tmp_path: Path, sinks: dict[str, HttpSink]) -> None:
    sinks["deploy"].default = 400
    broker = _broker(sinks, tmp_path)
    for event_id in ("a", "b"):
        for future in broker.publish(_event(t.COMPONENT_STARTING, id=event_id)):
            future.result(timeout=10)
    lines = (tmp_path / "dead.jsonl").read_text().splitlines()
    assert [json.loads(line)["attributes"]["id"] for line in lines] == ["a", "b"]


def test_retries_wait_on_the_timer_so_a_throttling_subscriber_keeps_its_pool_free(
    sinks: dict[str, HttpSink], tmp_path: Path
) -> None:
    """Twenty events answered 429 with Retry-After: 30 would hold every pool thread if retries
    slept in the pool; the twenty-first event must still get through at once."""
    throttled = [(429, {"Retry-After": "30"})] * 20
    sinks["deploy"].answer(*throttled)
    broker = Broker(
        BASE_TOPOLOGY,
        {"deploy": sinks["deploy"].url},
        FileDeadLetters(tmp_path / "dead.jsonl"),
        overrides={"retry": 3, "retry_after_max": 60.0},
        report=list[str]().append,
        workers_per_subscriber=2,
    )
    for number in range(20):
        broker.publish(_event(t.COMPONENT_STOPPING, id=f"throttled-{number}"))
    sinks["deploy"].wait_for(20)
    [future] = broker.publish(_event(t.COMPONENT_STOPPING, id="next"))
    delivery = future.result(timeout=10)  # would wait ~30 s if the pool were held
    broker.close(wait=False)
    assert delivery.delivered and len(delivery.attempts) == 1
