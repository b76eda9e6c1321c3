"""The packed admitted entry (docs/architecture.md §7): the admission scripts store a
flow.execution.admitted as the run record and its msg, and the outbox renders the event at
send time; the event is the one the previous release stored whole, and entries of that form
still waiting in an outbox are sent as they are."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis

from shared import keys
from shared.admission import queue as admission
from shared.events import OutgoingEvent
from shared.events.envelope import PACKED_ADMITTED
from shared.runtime import outbox
from tests.support.events import CapturingSender
from tests.support.flows import policy

SOURCE = "/component-orchestrator/flow-start"
ADMITTED = "org.openintegrationhub.flow.execution.admitted"
# what the previous release's flow_start_execute.lua stored for this run (captured from it)
PREVIOUS_FORM = (
    '{"data":{"fencingToken":1,"flowId":"flow-1","runId":"run-1","scheduledFor":1767225600.5,'
    '"tenant":"acme","trigger":"execute","user":"alice","msg":{"data":{"n":[],'
    '"big":12345678901234567890}}},"extensions":{"flowid":"flow-1","runid":"run-1",'
    '"tenant":"acme"},"id":"run-1-admitted","source":"\\/component-orchestrator\\/flow-start",'
    '"time":1767225600.5,"type":"org.openintegrationhub.flow.execution.admitted"}'
)
MSG = {"data": {"n": [], "big": 12345678901234567890}}


def admitted_event(
    run_id: str, flow: str, tenant: str, user: str, msg: Any, token: int, now: float
) -> OutgoingEvent:
    """The event as the previous release wrote it (whole, in the outbox)."""
    return OutgoingEvent(
        id=f"{run_id}-admitted",
        type=ADMITTED,
        source=SOURCE,
        data={
            "fencingToken": token,
            "flowId": flow,
            "runId": run_id,
            "scheduledFor": now,
            "tenant": tenant,
            "trigger": "execute",
            "user": user,
            "msg": msg,
        },
        extensions={"flowid": flow, "runid": run_id, "tenant": tenant},
        time=now,
    )


def execute(redis: Redis, run_id: str, flow: str, tenant: str, user: str, msg: Any,
            now: float) -> int:  # fmt: skip
    inputs = admission.read_inputs(redis, policy())
    admission.set_deployment(
        redis, inputs, None, flow_id=flow, started=True, now=now, source=SOURCE
    )
    run = admission.ExecuteRun(run_id, flow, tenant, user, 3600, json.dumps(msg))
    result, token = admission.execute(redis, inputs, None, run, now=now, source=SOURCE)
    assert result == "admitted" and token is not None
    return token


def admission_outbox(redis: Redis) -> list[bytes]:
    return cast(list[bytes], redis.lrange(keys.outbox(keys.ADMISSION), 0, -1))


ids = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=8,
)  # fmt: skip


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    run_id=ids, flow=ids, tenant=ids, user=ids,
    msg=st.dictionaries(st.text(max_size=6), json_values, max_size=4),
    now=st.floats(1e9, 4e9) | st.integers(10**9, 4 * 10**9).map(float),
)  # fmt: skip
def test_the_packed_entry_renders_the_event_the_previous_release_stored(
    redis: Redis, run_id: str, flow: str, tenant: str, user: str, msg: dict[str, Any], now: float
) -> None:
    redis.delete(keys.outbox(keys.ADMISSION), keys.admitted_runs(), keys.admission_counts())
    token = execute(redis, run_id, flow, tenant, user, msg, now)
    entries = admission_outbox(redis)
    packed = [e for e in entries if e.startswith(PACKED_ADMITTED)]
    assert len(packed) == 1, entries
    rendered = OutgoingEvent.from_json(packed[0])
    assert rendered == admitted_event(run_id, flow, tenant, user, msg, token, now)
    assert json.dumps(rendered.data["msg"]) == json.dumps(msg)  # ints stay ints, order kept


def test_the_previous_release_form_is_read_as_the_packed_form_is(redis: Redis) -> None:
    token = execute(redis, "run-1", "flow-1", "acme", "alice", MSG, 1767225600.5)
    [packed] = [e for e in admission_outbox(redis) if e.startswith(PACKED_ADMITTED)]
    assert OutgoingEvent.from_json(PREVIOUS_FORM) == OutgoingEvent.from_json(packed)
    assert token == 1
    assert len(packed) < len(PREVIOUS_FORM)  # what the admission script writes per run


def test_an_outbox_holding_both_forms_sends_each_once_in_order(redis: Redis) -> None:
    redis.rpush(keys.outbox(keys.ADMISSION), PREVIOUS_FORM)  # left by the previous release
    execute(redis, "run-2", "flow-1", "acme", "alice", MSG, 1767225660.0)
    sender = CapturingSender()
    sent = outbox.flush(redis, sender, [keys.ADMISSION])
    admitted = [e for e in sender.events if e.type == ADMITTED]
    assert [e.data["runId"] for e in admitted] == ["run-1", "run-2"]
    assert sent == len(sender.events)
    assert admitted[0] == OutgoingEvent.from_json(PREVIOUS_FORM)
    assert redis.llen(keys.outbox(keys.ADMISSION)) == 0
    assert redis.zcard(keys.outbox_in_flight(keys.ADMISSION)) == 0


@pytest.mark.parametrize("source", ["/a\x1fb", "\x1f"])
def test_a_source_holding_the_field_separator_is_refused(redis: Redis, source: str) -> None:
    inputs = admission.read_inputs(redis, policy())
    with pytest.raises(ValueError, match="x1f"):
        admission.header(inputs, now=1.0, source=source, once=None)
