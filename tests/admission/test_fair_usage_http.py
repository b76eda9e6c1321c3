"""The black-box trial of fair admission, over HTTP into the real flow-start app: two tenants
of equal weight, both with runs waiting the whole time, 4 slots; a's runs take 2.0 s, b's
0.5 s; 12 s. Events in (flow.execute, flow.execution.completed), admitted events out at a real
HTTP sink; only the clock is injected (the app's SystemClock), so no assertion is timed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from redis import Redis

from shared.clock import FakeClock
from shared.events import types as t
from shared.security.tokens import sign_internal
from tests.conftest import TEST_KEY
from tests.support.apps import function_client
from tests.support.flows import flow_doc
from tests.support.http_sink import HttpSink

DURATION = {"a": 2.0, "b": 0.5}
WINDOW = 12.0


def trial(
    monkeypatch: pytest.MonkeyPatch,
    base_env: dict[str, str],
    sink: HttpSink,
    tmp_path: Path,
    cost: str,
) -> dict[str, float]:
    """Slot-seconds per tenant over the window, from the admitted events the sink received."""
    clock = FakeClock(float(int(time.time())))
    monkeypatch.setattr("shared.runtime.function.SystemClock", lambda: clock)
    policy_file = tmp_path / f"policy-{cost}.yaml"
    policy_file.write_text(
        "slots: 4\ndefaults: {max_concurrent_runs: 100, start_rate_per_minute: 100000}\n"
        f"fairness: {{cost: {cost}}}\n"
    )
    app = function_client(
        monkeypatch,
        base_env,
        "flow-start",
        K_SINK=sink.url,
        FLOW_START_WORK_THROUGH_SECONDS="0",
        ORCHESTRATOR_POLICY_FILE=str(policy_file),
    )
    ids = iter(range(1, 1_000_000))

    def post(event_type: str, data: Any) -> None:
        attributes = {"type": event_type, "source": "/tests", "id": f"{cost}-{next(ids)}"}
        if event_type not in t.CONTROL_TYPES:
            attributes["authtoken"] = sign_internal(TEST_KEY, "tests", clock, event_type=event_type)
        headers, body = to_binary(CloudEvent(attributes, data))
        response = app.post("/", headers=headers, data=body)
        assert response.status_code == 200, response.get_data(as_text=True)

    for tenant in DURATION:
        post(t.FLOW_STARTING, flow_doc(f"{cost}-{tenant}", tenant=tenant, cron=None))
        post(t.FLOW_STARTED, {"id": f"{cost}-{tenant}"})
    start = clock.now()
    seen = len(sink.requests)
    waiting = dict.fromkeys(DURATION, 0)
    ends: list[tuple[float, dict[str, Any]]] = []  # (end time, admitted data)
    held = dict.fromkeys(DURATION, 0.0)

    def take_in() -> None:
        nonlocal seen
        for request in sink.requests[seen:]:
            if request.headers["ce-type"] == t.RUN_ADMITTED:
                data = request.json()["data"] if "data" in request.json() else request.json()
                tenant = str(data["tenant"])
                waiting[tenant] -= 1
                ends.append((clock.now() + DURATION[tenant], data))
        seen = len(sink.requests)

    while True:
        for tenant in DURATION:  # both keep two runs waiting the whole time
            while waiting[tenant] < 2:
                waiting[tenant] += 1
                post(t.FLOW_EXECUTE, {"flowId": f"{cost}-{tenant}", "msg": {}})
                take_in()
        ends.sort(key=lambda end: end[0])
        at, data = ends.pop(0)
        if at > start + WINDOW:
            break
        clock.set(at)
        held[str(data["tenant"])] += DURATION[str(data["tenant"])]
        post(
            t.RUN_COMPLETED,
            {
                "flowId": data["flowId"],
                "runId": data["runId"],
                "tenant": data["tenant"],
                "fencingToken": data["fencingToken"],
            },
        )
        take_in()
    for end_at, data in ends:  # runs still holding a slot at the window's end
        tenant = str(data["tenant"])
        held[tenant] += max(0.0, start + WINDOW - (end_at - DURATION[tenant]))
    total = sum(held.values())
    return {tenant: seconds / total for tenant, seconds in held.items()}


def test_equal_weights_hold_equal_slot_seconds_whatever_their_run_lengths(
    monkeypatch: pytest.MonkeyPatch,
    base_env: dict[str, str],
    redis: Redis,
    sink: HttpSink,
    tmp_path: Path,
) -> None:
    usage = trial(monkeypatch, base_env, sink, tmp_path, "slot_seconds")
    assert usage["a"] == pytest.approx(0.5, abs=0.05), usage


def test_counting_runs_gives_the_long_runs_most_of_the_slots(
    monkeypatch: pytest.MonkeyPatch,
    base_env: dict[str, str],
    redis: Redis,
    sink: HttpSink,
    tmp_path: Path,
) -> None:
    """The issue's finding, reproduced through the same path (cost mode count)."""
    count = trial(monkeypatch, base_env, sink, tmp_path, "count")
    assert count["a"] > 0.75, count
