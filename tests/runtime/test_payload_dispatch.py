"""Handlers declare their payload type once (the annotation); the runtime checks it."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from cloudevents.http import CloudEvent
from redis import Redis

from shared.errors import InvalidEvent
from shared.events import PAYLOADS, FlowDocument, FlowRef, Payload, RunEnded
from shared.events import types as t
from shared.handlers import deploy, flow_start, policy_check, step_execute
from shared.runtime.function import Context, Dispatch, FunctionSpec, declared_payload
from shared.security.tokens import sign_internal
from tests.conftest import TEST_KEY
from tests.support.runtime import make_runtime

ROOT = Path(__file__).resolve().parents[2]
SPECS = [flow_start.SPEC, deploy.SPEC, step_execute.SPEC, policy_check.SPEC]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_every_handler_takes_the_payload_its_event_carries(spec: FunctionSpec[Any]) -> None:
    for event_type, dispatch in spec.dispatch.items():
        if dispatch.payload_type is not None:
            assert issubclass(PAYLOADS[event_type], dispatch.payload_type), event_type
    typed = {e for e, d in spec.dispatch.items() if d.payload_type is not None}
    # every event whose payload a handler reads is declared (ticks and penalties only wake up)
    assert typed, spec.name


@pytest.mark.parametrize("path", sorted((ROOT / "shared" / "handlers").glob("*.py")))
def test_no_handler_narrows_its_payload_itself(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id != "cast", f"{path.name}:{node.lineno}: cast"
        if isinstance(node, ast.Assert):
            assert not (
                isinstance(node.test, ast.Call)
                and isinstance(node.test.func, ast.Name)
                and node.test.func.id == "isinstance"
            ), f"{path.name}:{node.lineno}: assert isinstance"
        if isinstance(node, ast.Attribute) and node.attr == "payload":
            raise AssertionError(f"{path.name}:{node.lineno}: reads ctx.event.payload")


def _takes_flow(ctx: Context[Any], flow: FlowDocument) -> None:
    raise AssertionError("never called")


def _takes_base(ctx: Context[Any], payload: Payload) -> None:
    raise AssertionError("never called")


def _takes_none(ctx: Context[Any]) -> None:
    raise AssertionError("never called")


def _untyped(ctx: Context[Any], payload: dict[str, Any]) -> None:
    raise AssertionError("never called")


def test_a_handler_declaring_another_payload_is_refused_when_the_spec_is_built() -> None:
    with pytest.raises(TypeError, match=r"takes FlowDocument, but flow\.stopping carries FlowRef"):
        FunctionSpec(
            name="deploy",
            tag="d",
            handlers={t.FLOW_STOPPING: _takes_flow},
            build_services=lambda *_: None,
        )


def test_a_payload_parameter_must_name_a_payload_type() -> None:
    with pytest.raises(TypeError, match="needs a Payload type"):
        declared_payload(_untyped, t.FLOW_STOPPING)


@pytest.mark.parametrize(
    ("handler", "wanted"),
    [(_takes_flow, FlowDocument), (_takes_base, Payload), (_takes_none, None)],
)
def test_the_declared_type_is_read_from_the_annotation(handler: Any, wanted: Any) -> None:
    assert declared_payload(handler, t.FLOW_STARTING) is wanted


def test_a_payload_of_another_type_never_reaches_the_handler() -> None:
    """The catalogue and the check agree by construction; the check still refuses (400)."""
    dispatch: Dispatch[Any] = Dispatch(_takes_flow, FlowDocument)
    ctx: Any = type("Ctx", (), {"event": type("E", (), {"payload": FlowRef("f"), "type": "x"})})
    with pytest.raises(InvalidEvent, match="needs a FlowDocument payload"):
        dispatch(ctx)


def test_the_runtime_hands_the_parsed_payload_to_the_handler(
    redis: Redis, clock: Any, base_env: dict[str, str]
) -> None:
    seen: list[RunEnded] = []

    def on_ended(ctx: Context[Any], ended: RunEnded) -> None:
        seen.append(ended)
        ctx.commit(None)

    spec: FunctionSpec[Any] = FunctionSpec(
        name="flow-start",
        tag=flow_start.SPEC.tag,
        handlers={t.RUN_COMPLETED: on_ended},
        build_services=lambda *_: None,
    )
    runtime = make_runtime(spec, redis, clock, base_env)
    data = {"flowId": "f", "runId": "r", "tenant": "acme", "fencingToken": 4}
    event = CloudEvent(
        {
            "type": t.RUN_COMPLETED,
            "source": "/component-orchestrator/step-execute",
            "id": "e-1",
            "authtoken": sign_internal(TEST_KEY, "step-execute", clock, event_type=t.RUN_COMPLETED),
        },
        data,
    )
    runtime.handle(event)
    assert seen == [RunEnded.parse(data)]
    assert seen[0].fencing_token == 4
