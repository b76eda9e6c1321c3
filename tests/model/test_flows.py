"""Flow documents (DESIGN §3): newer wins, tombstones beat stale starts, reads."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis

from shared import keys
from shared.events import FlowDocument
from shared.model import flows

pytestmark = pytest.mark.redis_cluster  # also on a real 3-master Redis Cluster

_flow_ids = itertools.count()


def _flow(
    version: float | None = None, *, flow_id: str = "f1", tenant: str = "acme", step: str = "c"
) -> FlowDocument:
    document: dict[str, Any] = {
        "id": flow_id,
        "tenant": tenant,
        "owners": [{"id": "alice", "type": "user"}],
        "graph": {"nodes": [{"id": "a", "componentId": step}]},
    }
    if version is not None:
        document["updatedAt"] = f"2026-01-01T00:00:{int(version):02d}Z"
    return FlowDocument.parse(document)


BASE = 1767225600.0  # 2026-01-01T00:00:00Z


def test_a_new_flow_is_stored_and_read_back(redis: Redis) -> None:
    flow = _flow(1)
    assert flows.upsert(redis, flow, None) == "stored"
    stored = flows.get(redis, "f1")
    assert stored is not None and stored.flow == flow and not stored.stopped
    assert stored.version == BASE + 1
    assert stored.content_hash == flows.content_hash(flow.document)
    assert flows.tenant_of(redis, "f1") == "acme"
    assert flows.wanted_ids(redis) == {"f1"}


SEQUENCES = [
    # (operations, expected results, flow afterwards: None = absent/stopped, else its step)
    ([("up", 1, "c"), ("up", 2, "d")], ["stored", "stored"], "d"),
    ([("up", 2, "d"), ("up", 1, "c")], ["stored", "stale"], "d"),
    ([("up", 1, "c"), ("up", 1, "c")], ["stored", "same"], "c"),
    ([("up", 1, "c"), ("up", 3, "c")], ["stored", "stored"], "c"),
    ([("up", 1, "c"), ("stop", 2, "")], ["stored", "stopped"], None),
    ([("up", 3, "c"), ("stop", 2, "")], ["stored", "stale"], "c"),
    ([("stop", 2, ""), ("up", 1, "c")], ["unknown", "stale"], None),
    ([("stop", 2, ""), ("up", 2, "c")], ["unknown", "stale"], None),
    ([("up", 2, "c"), ("stop", 2, "")], ["stored", "stopped"], None),
    ([("up", 1, "c"), ("stop", 2, ""), ("up", 3, "c")], ["stored", "stopped", "stored"], "c"),
    ([("up", 1, "c"), ("stop", 2, ""), ("stop", 2, "")], ["stored", "stopped", "stopped"], None),
]


@pytest.mark.parametrize(
    ("operations", "results", "after"),
    SEQUENCES,
    ids=[
        "newer start replaces",
        "older start is stale",
        "same content is a no-op",
        "same content newer version keeps it",
        "newer stop tombstones",
        "older stop is stale",
        "tombstone beats a stale late start",
        "tombstone beats a start of the same version",
        "stop of the same version wins",
        "a newer start brings a stopped flow back",
        "stopping twice is harmless",
    ],
)
def test_newer_wins_and_tombstones_beat_stale_starts(
    redis: Redis, operations: list[tuple[str, int, str]], results: list[str], after: str | None
) -> None:
    seen: list[str] = []
    for kind, version, step in operations:
        if kind == "up":
            seen.append(flows.upsert(redis, _flow(version, step=step), None))
        else:
            seen.append(flows.tombstone(redis, "f1", BASE + version))
    assert seen == results
    stored = flows.get(redis, "f1")
    if after is None:
        assert stored is None
        assert "f1" not in flows.wanted_ids(redis)
    else:
        assert stored is not None and stored.flow.nodes[0].component_id == after
        assert flows.wanted_ids(redis) == {"f1"}


def test_the_event_time_orders_flows_without_updated_at(redis: Redis) -> None:
    assert flows.upsert(redis, _flow(step="new"), BASE + 10) == "stored"
    assert flows.upsert(redis, _flow(step="old"), BASE + 5) == "stale"
    assert flows.tombstone(redis, "f1", BASE + 7) == "stale"
    assert flows.tombstone(redis, "f1", BASE + 11) == "stopped"


def test_an_unchanged_resend_still_advances_the_version(redis: Redis) -> None:
    """Found by the property below: 'same' content must still record the newer version."""
    assert flows.upsert(redis, _flow(step="c"), BASE + 1) == "stored"
    assert flows.upsert(redis, _flow(step="c"), BASE + 4) == "same"
    assert flows.upsert(redis, _flow(step="d"), BASE + 3) == "stale"
    assert flows.tombstone(redis, "f1", BASE + 2) == "stale"
    stored = flows.get(redis, "f1")
    assert stored is not None and stored.version == BASE + 4


def test_a_stopped_flow_is_still_readable_on_request(redis: Redis) -> None:
    flows.upsert(redis, _flow(1), None)
    flows.tombstone(redis, "f1", BASE + 2)
    assert flows.get(redis, "f1") is None
    stopped = flows.get(redis, "f1", include_stopped=True)
    assert stopped is not None and stopped.stopped and stopped.version == BASE + 2


def test_unknown_flows_read_as_nothing(redis: Redis) -> None:
    assert flows.get(redis, "nope") is None and flows.tenant_of(redis, "nope") is None
    flows.tombstone(redis, "never-started", BASE)
    assert flows.get(redis, "never-started", include_stopped=True) is None


def test_the_document_lives_under_the_flows_tag(redis: Redis) -> None:
    flows.upsert(redis, _flow(1), None)
    assert redis.exists(keys.flow_document("f1"))
    assert keys.flow_document("f1").startswith("co:{flows}:")
    assert keys.flow_index().startswith("co:{flows}:")


operations = st.lists(
    st.tuples(st.sampled_from(["up", "stop"]), st.sampled_from(["c", "d", "e"])),
    min_size=1,
    max_size=6,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=operations, order=st.randoms(use_true_random=False))
def test_any_delivery_order_ends_in_the_state_of_the_newest_event(
    redis: Redis, ops: list[tuple[str, str]], order: Any
) -> None:
    """At-least-once delivery reorders events: the final state must not depend on it."""
    flow_id = f"p{next(_flow_ids)}"
    versioned = [(kind, step, BASE + index + 1) for index, (kind, step) in enumerate(ops)]
    delivered = [*versioned, order.choice(versioned)]  # plus a redelivery
    order.shuffle(delivered)
    for kind, step, version in delivered:
        if kind == "up":
            document = _flow(flow_id=flow_id, step=step).document
            document["updatedAt"] = None
            flows.upsert(redis, FlowDocument.parse(document), version)
        else:
            flows.tombstone(redis, flow_id, version)
    newest_kind, newest_step, _ = versioned[-1]
    stored = flows.get(redis, flow_id, include_stopped=True)
    if newest_kind == "stop":
        assert flows.get(redis, flow_id) is None
        assert flow_id not in flows.wanted_ids(redis)
    else:
        assert stored is not None and not stored.stopped
        assert stored.flow.nodes[0].component_id == newest_step
        assert flow_id in flows.wanted_ids(redis)


def test_a_stop_dated_in_the_future_cannot_block_the_flow_for_long(redis: Redis) -> None:
    """Anyone may name any event time: a far-future stop of a flow id nobody started yet
    must not make every later start of that id stale."""
    now = BASE
    flows.tombstone(redis, "squatted", now + 10 * 365 * 86400, now=now)
    later = now + flows.MAX_CLOCK_SKEW_SECONDS + 1
    assert flows.upsert(redis, _flow(flow_id="squatted", step="a"), later) == "stored"


def test_a_known_flow_keeps_the_order_of_its_own_events(redis: Redis) -> None:
    """The bound is for ids nobody started: a known flow's stop and restart keep their times."""
    now = BASE
    future = now + 3600  # e.g. event times from a clock ahead of ours
    assert flows.upsert(redis, _flow(flow_id="f9"), future) == "stored"
    assert flows.tombstone(redis, "f9", future + 1, now=now) == "stopped"
    assert flows.upsert(redis, _flow(flow_id="f9", step="b"), future + 2) == "stored"
