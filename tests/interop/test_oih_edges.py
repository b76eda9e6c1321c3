"""OIH's `edges[].config` ({condition, mapper}: services/flow-repository/app/models/schemas/
flow.js) is not ours: the original orchestrator never reads it, so we pass it through
untouched; our JSONata lives under `edges[].jsonata`. Flows stored by the previous release
(their JSONata under `config`) are read as moved, and the tick's upgrade moves them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from redis import Redis

from shared import keys
from shared.clock import FakeClock
from shared.events import FlowDocument
from shared.handlers.flow_start import SPEC as FLOW_START
from shared.handlers.step_execute import SPEC as STEP_EXECUTE
from shared.model import flows
from tests.support.flows import fast_policy, flow_document
from tests.support.function import FunctionHarness

ROOT = Path(__file__).resolve().parents[2]
FLOW: dict[str, Any] = json.loads((ROOT / "tests/fixtures/oih/flow.starting.json").read_text())[
    "data"
]


def oih_flow_with_edge_config() -> dict[str, Any]:
    """The Flow Repository's flow with an edge config as its UI writes one: a condition and
    an empty mapper (which, read as JSONata, turned every message into {})."""
    flow = copy.deepcopy(FLOW)
    flow["graph"]["edges"][0]["config"] = {"condition": "false", "mapper": {}}
    return flow


def run_two_steps(redis: Redis, clock: FakeClock, env: dict[str, str]) -> list[Any]:
    steps = FunctionHarness(STEP_EXECUTE, redis, clock, env, policy=fast_policy())
    steps.admit(FLOW["id"], "run-1", {"data": {"email": "ada@example.com"}}, tenant="t")
    seen: list[Any] = []

    def second(msg: dict[str, Any], fields: dict[str, Any]) -> None:
        seen.append(msg["data"])

    steps.run_workers(FLOW["id"], {"step_1": lambda msg, fields: msg["data"], "step_2": second})
    assert steps.emitted("flow.execution.completed")
    return seen


def test_oih_edge_config_is_passed_through_untouched_and_never_evaluated(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    start = FunctionHarness(FLOW_START, redis, clock, base_env)
    start.start_flow(oih_flow_with_edge_config())
    stored = flows.get(redis, FLOW["id"])
    assert stored is not None
    edge = stored.flow.edges[0]
    assert edge.config == {"condition": "false", "mapper": {}}  # kept as sent
    assert (edge.condition, edge.mapper) == (None, None)  # not ours
    assert stored.flow.to_data()["graph"]["edges"][0]["config"] == edge.config
    # the message goes on as the first step produced it: no condition, no mapper
    assert run_two_steps(redis, clock, base_env) == [{"email": "ada@example.com"}]


def test_our_expressions_under_jsonata_still_apply(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    flow = oih_flow_with_edge_config()
    flow["graph"]["edges"][0]["jsonata"] = {"mapper": {"who": "email"}}
    FunctionHarness(FLOW_START, redis, clock, base_env).start_flow(flow)
    assert run_two_steps(redis, clock, base_env) == [{"who": "ada@example.com"}]


def store_as_the_previous_release(redis: Redis, document: dict[str, Any]) -> None:
    """The hash the previous release's flow_upsert wrote: no `form` field."""
    redis.hset(
        keys.flow_document(document["id"]),
        mapping={
            "doc": json.dumps(document),
            "hash": flows.content_hash(document),
            "version": "1.0",
            "tenant": document["tenant"],
            "stopped": "0",
        },
    )
    redis.sadd(keys.flow_index(), document["id"])


def previous_release_flow() -> dict[str, Any]:
    document = flow_document("old", ["a", "b"], [("a", "b")])
    document["graph"]["edges"][0] = {
        "source": "a",
        "target": "b",
        "config": {"condition": "v > 1", "mapper": {"w": "v * 10"}},
    }
    return document


def test_a_flow_stored_by_the_previous_release_keeps_its_expressions(redis: Redis) -> None:
    store_as_the_previous_release(redis, previous_release_flow())
    stored = flows.get(redis, "old")
    assert stored is not None
    edge = stored.flow.edges[0]
    assert (edge.condition, edge.mapper) == ("v > 1", {"w": "v * 10"})
    assert edge.config == {"condition": "v > 1", "mapper": {"w": "v * 10"}}


def test_the_ticks_upgrade_moves_them_to_jsonata(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    store_as_the_previous_release(redis, previous_release_flow())
    FunctionHarness(FLOW_START, redis, clock, base_env).tick()
    raw = redis.hgetall(keys.flow_document("old"))
    assert raw[b"form"] == flows.FORM.encode()
    edge = json.loads(raw[b"doc"])["graph"]["edges"][0]
    assert edge["jsonata"] == {"condition": "v > 1", "mapper": {"w": "v * 10"}}
    assert edge["config"] == {"condition": "v > 1", "mapper": {"w": "v * 10"}}
    stored = flows.get(redis, "old")
    assert stored is not None and stored.flow.edges[0].mapper == {"w": "v * 10"}
    # a flow.starting of today's form replaces it: config is OIH's again
    today = previous_release_flow()
    today["updatedAt"] = "2030-01-01T00:00:00Z"
    FunctionHarness(FLOW_START, redis, clock, base_env).start_flow(today)
    stored = flows.get(redis, "old")
    assert stored is not None and stored.flow.edges[0].mapper is None


def test_the_run_of_a_previous_release_flow_applies_its_mapper(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    store_as_the_previous_release(redis, previous_release_flow())
    steps = FunctionHarness(STEP_EXECUTE, redis, clock, base_env, policy=fast_policy())
    steps.admit("old", "run-1", {"v": 5})
    seen: list[Any] = []
    steps.run_workers(
        "old", {"a": lambda msg, fields: msg["data"], "b": lambda m, f: seen.append(m["data"])}
    )
    assert seen == [{"w": 50}]


def test_the_example_flow_uses_the_new_key() -> None:
    example = json.loads((ROOT / "examples/steps-flow.json").read_text())
    flow = FlowDocument.parse(example)
    assert [e.condition for e in flow.edges] == ["value >= 10", None]
    assert all("config" not in e for e in example["graph"]["edges"])
