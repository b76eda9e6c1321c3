"""The component worker runtime: environment, outputs → step events, HTTP to K_SINK, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudevents.http import CloudEvent
from redis import Redis

from shared import keys
from shared.adapters.redis_streams import RedisStreamsQueue
from shared.clock import FakeClock
from shared.events import types as t
from shared.handlers.step_execute import SPEC as STEP_EXECUTE
from shared.ports.step_message import StepMessage
from shared.settings import SettingsError
from shared.worker.main import HttpStepSender, Worker, WorkerConfig, load_function, outputs
from tests.support.event_sink import running_sink
from tests.support.flows import fast_policy, flow_document
from tests.support.function import FunctionHarness

QUEUE = keys.step_queue("flow-1", "step-a")
ROOT = Path(__file__).resolve().parents[2]


def message(data: Any = None, attempt: int = 0) -> StepMessage:
    return StepMessage(
        run_id="run-1",
        flow_id="flow-1",
        step_id="step-a",
        message_id="m-1",
        tenant="acme",
        attempt=attempt,
        data_json=json.dumps({"n": 1} if data is None else data),
        token="step-token-value",
    )


def config(**changes: Any) -> WorkerConfig:
    values: dict[str, Any] = {
        "flow_id": "flow-1",
        "step_id": "step-a",
        "queue": QUEUE,
        "entrypoint": "tests",
        "tenant": "acme",
        "fields": {"factor": 3},
    }
    values.update(changes)
    return WorkerConfig(**values)


def generator(*items: Any) -> Iterator[Any]:
    yield from items


OUTPUTS = [
    ("none is no output", None, []),
    ("a dict is one output", {"a": 1}, [{"a": 1}]),
    ("a number is one output", 7, [7]),
    ("a list is several", [1, 2, 3], [1, 2, 3]),
    ("a tuple is several", (1, 2), [1, 2]),
    ("a generator is several", generator(1, 2), [1, 2]),
    ("none items are skipped", [1, None, 2], [1, 2]),
    ("an empty list is no output", [], []),
]


@pytest.mark.parametrize(("case", "result", "expected"), OUTPUTS, ids=[o[0] for o in OUTPUTS])
def test_a_component_return_value_becomes_its_outputs(
    case: str, result: Any, expected: list[Any]
) -> None:
    assert list(outputs(result)) == expected


def data_of(event: CloudEvent) -> dict[str, Any]:
    data = event.get_data()
    assert isinstance(data, dict), data
    return data


def events_for(function: Any, data: Any = None) -> list[dict[str, Any]]:
    worker = Worker(config(), queue=None, sender=None, function=function)  # type: ignore[arg-type]
    return [
        {
            "type": str(e["type"]).rsplit(".", 2)[-2] + "." + str(e["type"]).rsplit(".", 1)[-1],
            "id": e["id"],
            **data_of(e),
        }
        for e in worker.events(message(data))
    ]


def test_one_output_is_one_final_step_completed_with_the_step_token() -> None:
    worker = Worker(config(), queue=None, sender=None, function=lambda m, f: {"x": 1})  # type: ignore[arg-type]
    (event,) = list(worker.events(message()))
    assert event["type"] == "org.openintegrationhub.step.completed"
    assert event["source"] == "/component-orchestrator/worker/flow-1/step-a"
    assert event["id"] == "m-1-0-0"
    assert event["steptoken"] == "step-token-value"
    assert (event["tenant"], event["flowid"], event["runid"]) == ("acme", "flow-1", "run-1")
    assert event.get_data() == {
        "runId": "run-1",
        "stepId": "step-a",
        "messageId": "m-1",
        "seq": 0,
        "final": True,
        "attachments": [],
        "attempt": 0,
        "data": {"x": 1},
    }


def test_the_component_gets_the_message_data_metadata_and_the_step_fields() -> None:
    calls: list[Any] = []
    events_for(lambda msg, fields: calls.append((msg, fields)), {"in": True})
    msg, fields = calls[0]
    assert msg["data"] == {"in": True} and fields == {"factor": 3}
    assert msg["metadata"] == {
        "runId": "run-1",
        "flowId": "flow-1",
        "stepId": "step-a",
        "messageId": "m-1",
        "attempt": 0,
        "tenant": "acme",
    }


def failing_after_one(msg: Any, fields: Any) -> Iterator[int]:
    yield 1
    raise ValueError("broken record")


def raising(msg: Any, fields: Any) -> None:
    raise RuntimeError("token=abc.def.ghi and more")


SEQUENCES = [
    (
        "several outputs: final on the last",
        lambda m, f: [1, 2, 3],
        [
            ("step.completed", 0, False, 1),
            ("step.completed", 1, False, 2),
            ("step.completed", 2, True, 3),
        ],
    ),
    ("no output: one empty final event", lambda m, f: None, [("step.completed", 0, True, None)]),
    (
        "a failure after an output: the output, then step.failed",
        failing_after_one,
        [("step.completed", 0, False, 1), ("step.failed", 1, True, None)],
    ),
    ("an exception: step.failed", raising, [("step.failed", 0, True, None)]),
]


@pytest.mark.parametrize(("case", "function", "expected"), SEQUENCES, ids=[s[0] for s in SEQUENCES])
def test_outputs_become_a_sequence_of_step_events(
    case: str, function: Any, expected: list[tuple[str, int, bool, Any]]
) -> None:
    got = events_for(function)
    assert [(e["type"], e["seq"], e["final"], e.get("data")) for e in got] == expected
    assert len({e["id"] for e in got}) == len(got)
    for event in got:
        assert event.get("empty", False) == (
            event["type"] == "step.completed" and event.get("data") is None
        )
    failed = [e for e in got if e["type"] == "step.failed"]
    if failed:
        assert failed[0]["id"] == "m-1-0-failed"
        assert "abc.def.ghi" not in failed[0]["error"]  # secrets in errors are redacted


ENVIRONMENTS = [
    ("complete", {}, None),
    ("no queue", {"STEP_QUEUE": ""}, "STEP_QUEUE: required"),
    ("no entrypoint", {"COMPONENT_ENTRYPOINT": ""}, "COMPONENT_ENTRYPOINT: required"),
    ("bad fields", {"STEP_FIELDS": "[1]"}, "STEP_FIELDS: must be a JSON object"),
    ("bad backend", {"QUEUE_BACKEND": "kafka"}, "QUEUE_BACKEND: must be one of"),
    ("amqp: ferryman, not us", {"QUEUE_BACKEND": "amqp"}, "amqp steps run ferryman"),
    ("sqs without bucket", {"QUEUE_BACKEND": "sqs"}, "CLAIM_CHECK_BUCKET: required"),
    ("redis without url", {"REDIS_URL": ""}, "REDIS_URL: required"),
]
BASE_ENV = {
    "FLOW_ID": "flow-1",
    "STEP_ID": "step-a",
    "TENANT": "acme",
    "USER": "alice",
    "COMPONENT_ID": "example-transform",
    "COMPONENT_FUNCTION": "",
    "STEP_QUEUE": QUEUE,
    "COMPONENT_ENTRYPOINT": "examples.components.transform",
    "STEP_FIELDS": '{"factor": 3}',
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "K_SINK": "http://127.0.0.1:1/",
    "FLOW_TOKEN": "secret-flow-token",
}


@pytest.mark.parametrize(
    ("case", "change", "problem"), ENVIRONMENTS, ids=[e[0] for e in ENVIRONMENTS]
)
def test_the_worker_reads_its_environment(
    case: str, change: dict[str, str], problem: str | None
) -> None:
    env = {**BASE_ENV, **change}
    if problem is None:
        loaded = WorkerConfig.from_env(env)
        assert loaded.function == "process" and loaded.fields == {"factor": 3}
        assert loaded.queue == QUEUE and "secret-flow-token" not in repr(loaded)
        return
    with pytest.raises(SettingsError) as caught:
        WorkerConfig.from_env(env)
    assert problem in str(caught.value)


def test_a_global_component_needs_its_queue_but_no_flow_or_step() -> None:
    env = {
        "GLOBAL_COMPONENT": "1",
        "STEP_QUEUE": "co:q:{#c1}:global",
        "COMPONENT_ENTRYPOINT": "examples.components.transform",
        "REDIS_URL": "redis://127.0.0.1:1/0",
    }
    config = WorkerConfig.from_env(env)
    assert config.global_component and config.flow_id == "" and config.step_id == ""
    with pytest.raises(SettingsError, match="STEP_QUEUE"):
        WorkerConfig.from_env({k: v for k, v in env.items() if k != "STEP_QUEUE"})


def test_example_components_load_by_entrypoint() -> None:
    source = load_function("examples.components.source", "process")
    records = list(source({"metadata": {"runId": "r"}, "data": {}}, {"count": 2}))
    assert [r["index"] for r in records] == [0, 1]
    transform = load_function("examples.components.transform", "process")
    assert transform({"data": {"value": 5}}, {"factor": 3})["value"] == 15
    assert (
        load_function("examples.components.sink", "process")(
            {"data": {}, "metadata": {"stepId": "s"}}, {}
        )
        is None
    )
    from shared.errors import PermanentError

    with pytest.raises(PermanentError):
        load_function("examples.components.nope", "process")
    with pytest.raises(PermanentError):
        load_function("examples.components.sink", "missing")


# --- over real HTTP and a real Redis stream ---------------------------------------------------
def published(redis: Redis, *messages: StepMessage) -> RedisStreamsQueue:
    queue = RedisStreamsQueue(redis)
    queue.publish(QUEUE, list(messages))
    return queue


def test_events_go_to_k_sink_in_binary_mode_and_the_message_is_acknowledged(redis: Redis) -> None:
    queue = published(redis, message({"value": 2}))
    with running_sink() as sink:
        sink.statuses = [503]  # the broker hiccups once: the worker retries
        worker = Worker(
            config(),
            queue,
            HttpStepSender(sink.url),
            load_function("examples.components.transform", "process"),
            clock=FakeClock(),
        )
        assert worker.run_once() == 1
        (event,) = sink.wait_for(1)
    assert data_of(event)["data"] == {"value": 6.0, "transformed": True}
    assert "ce-steptoken" in sink.headers[-1] and "ce-type" in sink.headers[-1]  # binary mode
    assert redis.xpending(QUEUE, "workers")["pending"] == 0 and queue.depth(QUEUE) == 0


def test_a_message_whose_events_cannot_be_delivered_stays_for_redelivery(redis: Redis) -> None:
    queue = published(redis, message())
    with running_sink() as sink:
        sink.statuses = [503] * 10
        worker = Worker(
            config(), queue, HttpStepSender(sink.url), lambda m, f: 1, clock=FakeClock()
        )
        worker.run_once()
    assert redis.xpending(QUEUE, "workers")["pending"] == 1  # not acknowledged: reclaimed later


def test_a_refused_event_is_not_retried_and_the_message_is_dropped(redis: Redis) -> None:
    queue = published(redis, message())
    with running_sink() as sink:
        sink.statuses = [401]
        worker = Worker(
            config(), queue, HttpStepSender(sink.url), lambda m, f: 1, clock=FakeClock()
        )
        worker.run_once()
        assert len(sink.headers) == 1
    assert redis.xpending(QUEUE, "workers")["pending"] == 0


def test_the_demo_components_run_a_flow_end_to_end_over_http(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    harness = FunctionHarness(STEP_EXECUTE, redis, clock, base_env, policy=fast_policy())
    harness.store_flow(
        flow_document(
            "demo",
            [{"id": "source", "fields": {"count": 3}}, "transform", "sink"],
            [("source", "transform"), ("transform", "sink", {"condition": "value >= 10"})],
        )
    )
    harness.admit("demo", "run-demo")
    components = {step: f"examples.components.{step}" for step in ("source", "transform", "sink")}
    with running_sink(harness.handle) as sink:
        stop = threading.Event()
        threads = []
        for step, entrypoint in components.items():
            worker = Worker(
                config(
                    flow_id="demo",
                    step_id=step,
                    queue=keys.step_queue("demo", step),
                    fields={"count": 3} if step == "source" else {},
                ),
                RedisStreamsQueue(redis),
                HttpStepSender(sink.url),
                load_function(entrypoint, "process"),
                wait_seconds=0.05,
            )
            threads.append(threading.Thread(target=worker.run, args=(stop,), daemon=True))
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while harness.run("run-demo").status == "running" and time.monotonic() < deadline:
            harness.services.publisher.drain(harness.runtime.policy)
            time.sleep(0.05)
        stop.set()
        for thread in threads:
            thread.join(10)
    record = harness.run("run-demo")
    assert record.status == "completed"
    # source emits values 0, 10, 20; transform doubles them; the sink gets those >= 10
    assert record.messages == 1 + 3 + 2
    assert len(harness.sender.of_type("flow.execution.completed")) == 1


def test_python_m_shared_worker_consumes_and_stops_cleanly_on_sigterm(redis: Redis) -> None:
    queue = published(redis, message({"value": 4}))
    port = redis.connection_pool.connection_kwargs["port"]
    with running_sink() as sink:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("STEP_", "K_SINK"))},
            **BASE_ENV,
            "REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "K_SINK": sink.url,
            "PYTHONPATH": str(ROOT),
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "shared.worker"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            (event,) = sink.wait_for(1, timeout=30)
            assert data_of(event)["data"] == {"value": 12.0, "transformed": True}
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
        output = process.stdout.read().decode() if process.stdout else ""
    assert code == 0, output
    assert "secret-flow-token" not in output and "step-token-value" not in output
    assert redis.xpending(QUEUE, "workers")["pending"] == 0
    assert queue.depth(QUEUE) == 0


@pytest.mark.parametrize(
    ("change", "problem"),
    [({"STEP_QUEUE": ""}, b"STEP_QUEUE: required"), ({"K_SINK": ""}, b"K_SINK: required")],
)
def test_python_m_shared_worker_refuses_a_bad_environment(
    change: dict[str, str], problem: bytes
) -> None:
    env = {
        **{k: v for k, v in os.environ.items()},
        **BASE_ENV,
        **change,
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run(
        [sys.executable, "-m", "shared.worker"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert problem in result.stderr + result.stdout


def test_every_component_of_the_local_catalogue_loads_with_its_function_names() -> None:
    catalogue = json.loads((ROOT / "shared" / "data" / "catalogue.json").read_text())
    for component in catalogue["components"]:
        entrypoint = component["descriptor"]["entrypoint"]
        for function in component.get("functions", []):
            assert callable(load_function(entrypoint, function["name"])), component["id"]
        load_function(entrypoint, "process") if not component["isGlobal"] else None


@pytest.mark.parametrize("function", [lambda m, f: [1, 2], failing_after_one])
def test_step_events_name_their_schema(function: Any) -> None:
    worker = Worker(config(), queue=None, sender=None, function=function)  # type: ignore[arg-type]
    seen = {str(e["type"]): e["dataschema"] for e in worker.events(message())}
    assert seen and all(schema == t.dataschema(kind) for kind, schema in seen.items())
