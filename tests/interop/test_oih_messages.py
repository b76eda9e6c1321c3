"""OIH's flow.execute message reaches the first step as the original orchestrator built it
(lib/component-orchestrator/src/ComponentOrchestrator.js, `_executeStep`: `newMessage`):
`{data, metadata, attachments, passthrough}` plus the webhook keys, `msgOpts` beside it on the
step message. The fixtures (tests/fixtures/oih/flow.execute.*.json) go in as the webhooks and
scheduler services send them; the real worker runs the steps."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from redis import Redis

from shared.clock import FakeClock
from shared.handlers.flow_start import SPEC as FLOW_START
from shared.handlers.step_execute import SPEC as STEP_EXECUTE
from shared.ports.step_message import StepMessage, execute_message, first_step_message
from tests.support.flows import fast_policy
from tests.support.function import FunctionHarness
from tests.support.oih import fixture

FLOW = fixture("flow.starting")["data"]
TENANT = next(o["id"] for o in FLOW["owners"] if o["type"] == "tenant")
OURS = {"runId", "flowId", "stepId", "messageId", "attempt", "tenant"}


def run_execute(
    redis: Redis, clock: FakeClock, env: dict[str, str], execute: dict[str, Any]
) -> tuple[dict[str, list[dict[str, Any]]], FunctionHarness[Any]]:
    """flow-start takes the flow.starting and the flow.execute as OIH sends them; step-execute
    takes the admitted run; the real worker runs both steps, recording what each is given."""
    start = FunctionHarness(FLOW_START, redis, clock, env, policy=fast_policy())
    start.start_flow(copy.deepcopy(FLOW))
    assert not start.send("flow.execute", copy.deepcopy(execute)).duplicate
    [admitted] = start.admitted()
    steps = FunctionHarness(STEP_EXECUTE, redis, clock, env, policy=fast_policy())
    steps.send(
        "flow.execution.admitted",
        admitted,
        sender="flow-start",
        source="/component-orchestrator/flow-start",
        event_id="admitted-1",
    )
    seen: dict[str, list[dict[str, Any]]] = {"step_1": [], "step_2": []}

    def recorder(step: str) -> Any:
        def process(msg: dict[str, Any], fields: dict[str, Any]) -> Any:
            seen[step].append(copy.deepcopy(msg))
            return {"from": step, "got": msg["data"]}

        return process

    steps.run_workers(FLOW["id"], {step: recorder(step) for step in seen})
    return seen, steps


def test_a_webhook_message_reaches_the_first_step_as_the_original_built_it(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    execute = fixture("flow.execute.webhooks")["data"]
    msg = execute["msg"]
    seen, steps = run_execute(redis, clock, base_env, execute)
    [first] = seen["step_1"]
    assert first["data"] == msg["data"]
    assert first["attachments"] == msg["attachments"] and first["passthrough"] == {}
    # OIH's metadata kept, ours laid over it
    assert first["metadata"]["source"] == msg["metadata"]["source"]
    assert set(first["metadata"]) >= OURS and first["metadata"]["tenant"] == TENANT
    # the webhook keys, as _executeStep adds them when the message has a method
    for key in ("method", "headers", "params", "query", "url", "originalUrl", "pathSuffix"):
        assert first[key] == msg[key], key
    assert "msgOpts" not in first and "id" not in first  # transport options; not copied
    # the second step gets the first one's output, without the run's message parts
    [second] = seen["step_2"]
    assert second["data"] == {"from": "step_1", "got": msg["data"]}
    assert "method" not in second and second["attachments"] == []
    assert "source" not in second["metadata"]
    assert steps.emitted("flow.execution.completed")


def test_msg_opts_travel_on_the_first_step_message(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    execute = fixture("flow.execute.webhooks")["data"]
    start = FunctionHarness(FLOW_START, redis, clock, base_env, policy=fast_policy())
    start.start_flow(copy.deepcopy(FLOW))
    start.send("flow.execute", copy.deepcopy(execute))
    [admitted] = start.admitted()
    assert admitted["msg"]["msgOpts"] == execute["msgOpts"]
    steps = FunctionHarness(STEP_EXECUTE, redis, clock, base_env, policy=fast_policy())
    steps.send(
        "flow.execution.admitted",
        admitted,
        sender="flow-start",
        source="/component-orchestrator/flow-start",
        event_id="admitted-1",
    )
    [message] = steps.messages(FLOW["id"], "step_1")
    assert message.context["msgOpts"] == execute["msgOpts"]
    assert message.data == execute["msg"]["data"]
    assert json.loads(message.to_json())["context"]["metadata"] == execute["msg"]["metadata"]


def test_a_scheduler_message_has_its_parts_defaulted_and_no_webhook_keys(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    execute = fixture("flow.execute.scheduler")["data"]
    seen, steps = run_execute(redis, clock, base_env, execute)
    [first] = seen["step_1"]
    assert first["data"] == execute["msg"]["data"]
    assert first["attachments"] == {} and first["passthrough"] == {}
    assert first["metadata"]["source"]["name"] == "scheduler"
    assert "method" not in first and "headers" not in first
    assert steps.emitted("flow.execution.completed")


def test_our_data_only_msg_is_still_the_first_steps_data(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    seen, _ = run_execute(redis, clock, base_env, {"flowId": FLOW["id"], "msg": {"n": 1}})
    [first] = seen["step_1"]
    assert first["data"] == {"n": 1} and first["attachments"] == []
    assert set(first["metadata"]) == OURS


@pytest.mark.parametrize(
    ("msg", "opts", "data", "context"),
    [
        ({"n": 1}, {}, {"n": 1}, {}),
        (
            {"n": 1},
            {"headers": {"a": 1}},
            {"n": 1},
            {
                "attachments": {},
                "metadata": {},
                "passthrough": {},
                "msgOpts": {"headers": {"a": 1}},
            },
        ),
        (None, {}, {}, {}),
        (
            {"data": None, "metadata": {"m": 1}},
            {},
            {},
            {"attachments": {}, "metadata": {"m": 1}, "passthrough": {}},
        ),
    ],
    ids=["data only", "data only with msgOpts", "no msg", "a message with null data"],
)
def test_the_message_split(msg: Any, opts: Any, data: Any, context: dict[str, Any]) -> None:
    assert first_step_message(execute_message(msg, opts)) == (data, context)


def test_a_step_message_of_the_previous_release_has_no_context() -> None:
    old = json.dumps(
        {
            "runId": "r",
            "flowId": "f",
            "stepId": "s",
            "messageId": "m",
            "tenant": "acme",
            "attempt": 0,
            "stepToken": "t",
            "data": {"x": 1},
        }
    )
    message = StepMessage.from_json(old)
    assert message.context == {} and message.to_json() == old.replace(" ", "")
    assert message.component_message({"runId": "r"}) == {
        "data": {"x": 1},
        "attachments": [],
        "metadata": {"runId": "r"},
        "passthrough": {},
    }
