"""The four functions over HTTP, through functions-framework's own app (structured and binary).

The handlers are replaced by recording ones (their owners test the real logic); what is tested
here is the adapter: parse, authorize, dedupe, dispatch, and the HTTP answer of every error.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from flask.testing import FlaskClient
from redis import Redis

from shared.clock import SystemClock
from shared.errors import OverCapacity, TemporaryError, Unprocessable
from shared.events import types as t
from shared.runtime.function import Context, Handler
from shared.security.tokens import sign_internal
from tests.conftest import TEST_KEY
from tests.support.apps import app_client
from tests.support.runtime import TAG_OF, recorded, recording_spec

ROOT = Path(__file__).resolve().parents[2]


def _secret(event_type: str) -> str:
    return sign_internal(TEST_KEY, "tests", SystemClock(), event_type=event_type)


SECRET = _secret(t.TICK)

# One consumed, internally signed event per function, with valid data.
CONSUMED: dict[str, tuple[str, dict[str, Any]]] = {
    "flow-start": (
        t.RUN_COMPLETED,
        {"flowId": "f", "runId": "r", "tenant": "acme", "fencingToken": 1},
    ),
    "deploy": (
        t.TENANT_THROTTLED,
        {"subject": {"level": "tenant", "id": "acme"}, "penalty": "throttle"},
    ),
    "step-execute": (
        t.RUN_ADMITTED,
        {
            "flowId": "f",
            "runId": "r",
            "tenant": "acme",
            "user": "u",
            "fencingToken": 1,
            "scheduledFor": 1767225600,
            "trigger": "cron",
        },
    ),
    "policy-check": (t.USAGE_REPORTED, {"tenant": "acme", "messages": 3}),
}
# A type each function does not consume.
NOT_CONSUMED = {
    "flow-start": t.STEP_COMPLETED,
    "deploy": t.RUN_ADMITTED,
    "step-execute": t.USAGE_REPORTED,
    "policy-check": t.FLOW_STARTING,
}

Client = Callable[..., FlaskClient]


@pytest.fixture()
def client(
    monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str], redis: Redis
) -> Callable[..., FlaskClient]:
    """`client(function, handler=None)`: the function's real main.py, with a recording SPEC."""

    def make(function: str, handler: Handler[Any] | None = None) -> FlaskClient:
        for name, value in base_env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("K_SINK", raising=False)
        package = function.replace("-", "_")
        handlers = importlib.import_module(f"shared.handlers.{package}")
        monkeypatch.setattr(handlers, "SPEC", recording_spec(function, handler))
        source = ROOT / "functions" / package / "main.py"
        return app_client(source)

    return make


def _event(event_type: str, data: Any, **attributes: Any) -> CloudEvent:
    base = {"type": event_type, "source": "/tests", "id": "evt-1", "authtoken": _secret(event_type)}
    base.update(attributes)
    return CloudEvent(base, data)


def post(client: FlaskClient, event: CloudEvent, mode: str = "binary") -> Any:
    headers, body = (to_binary if mode == "binary" else to_structured)(event)
    return client.post("/", headers=headers, data=body)


def assert_no_token_echoed(response: Any) -> None:
    text = response.get_data(as_text=True)
    assert SECRET not in text and "eyJ" not in text  # no token, nor any JWT-looking text


# --------------------------------------------------------------------------- happy paths
@pytest.mark.parametrize("mode", ["binary", "structured"])
@pytest.mark.parametrize("function", t.FUNCTIONS)
def test_a_consumed_event_reaches_the_handler(
    client: Client, redis: Redis, function: str, mode: str
) -> None:
    event_type, data = CONSUMED[function]
    response = post(client(function), _event(event_type, data), mode)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert recorded(redis, TAG_OF[function]) == [
        {"type": event_type, "id": "evt-1", "source": "/tests"}
    ]


@pytest.mark.parametrize("function", t.FUNCTIONS)
def test_a_tick_needs_no_token(client: Client, redis: Redis, function: str) -> None:
    tick = CloudEvent({"type": t.TICK, "source": "/clock", "id": "tick-1"}, {})
    assert post(client(function), tick).status_code == 200
    assert recorded(redis, TAG_OF[function])[0]["type"] == t.TICK


def test_a_redelivered_event_is_handled_once(client: Client, redis: Redis) -> None:
    app = client("policy-check")
    event_type, data = CONSUMED["policy-check"]
    for _ in range(3):
        assert post(app, _event(event_type, data)).status_code == 200
    assert len(recorded(redis, TAG_OF["policy-check"])) == 1


@pytest.mark.parametrize("function", t.FUNCTIONS)
def test_every_real_handler_table_covers_exactly_what_the_function_consumes(
    function: str,
) -> None:
    handlers = importlib.import_module(f"shared.handlers.{function.replace('-', '_')}")
    assert set(handlers.SPEC.handlers) == t.CONSUMES[function]
    assert handlers.SPEC.name == function and handlers.SPEC.tag == TAG_OF[function]


# --------------------------------------------------------------------------- refusals
def _binary_without(name: str) -> tuple[dict[str, str], bytes]:
    headers, body = to_binary(_event(*CONSUMED["deploy"]))
    return {k: v for k, v in headers.items() if k != f"ce-{name}"}, body


MALFORMED: list[tuple[str, Callable[[], tuple[dict[str, str], bytes]], str]] = [
    ("binary without id", lambda: _binary_without("id"), "id"),
    ("binary without type", lambda: _binary_without("type"), "type"),
    ("binary without source", lambda: _binary_without("source"), "source"),
    (
        "binary body not JSON",
        lambda: (to_binary(_event(*CONSUMED["deploy"]))[0], b"{not json"),
        "data",
    ),
    (
        "structured body not JSON",
        lambda: ({"content-type": "application/cloudevents+json", "ce-authtoken": SECRET}, b"{x"),
        "JSON",
    ),
    (
        "structured without id",
        lambda: (
            {"content-type": "application/cloudevents+json"},
            json.dumps(
                {"specversion": "1.0", "type": t.TICK, "source": "/s", "authtoken": SECRET}
            ).encode(),
        ),
        "id",
    ),
]


@pytest.mark.parametrize(
    ("build", "field"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_a_malformed_request_is_400_naming_the_field_without_echoing_tokens(
    client: Client, build: Callable[[], tuple[dict[str, str], bytes]], field: str
) -> None:
    headers, body = build()
    response = client("deploy").post("/", headers=headers, data=body)
    assert response.status_code == 400
    payload = response.get_json()
    assert field in payload["message"], payload
    assert_no_token_echoed(response)


PAYLOAD_PROBLEMS = [
    ("wrong field type", {"subject": {"level": "tenant", "id": 7}, "penalty": "x"}, "subject.id"),
    ("missing field", {"subject": {"level": "tenant", "id": "acme"}}, "penalty"),
    ("not an object", ["a"], "data"),
]


@pytest.mark.parametrize("mode", ["binary", "structured"])
@pytest.mark.parametrize(
    ("data", "field"), [p[1:] for p in PAYLOAD_PROBLEMS], ids=[p[0] for p in PAYLOAD_PROBLEMS]
)
def test_a_bad_payload_is_400_naming_the_field(
    client: Client, redis: Redis, data: Any, field: str, mode: str
) -> None:
    response = post(client("deploy"), _event(t.TENANT_THROTTLED, data), mode)
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "InvalidEvent"
    assert any(p.startswith(field) for p in body["problems"]), body
    assert_no_token_echoed(response)
    assert recorded(redis, TAG_OF["deploy"]) == []


@pytest.mark.parametrize("function", t.FUNCTIONS)
def test_an_event_type_the_function_does_not_consume_is_400(client: Client, function: str) -> None:
    response = post(client(function), _event(NOT_CONSUMED[function], {"id": "x"}))
    assert response.status_code == 400
    assert "type" in response.get_json()["message"]
    assert_no_token_echoed(response)


def test_an_unknown_event_type_is_400(client: Client) -> None:
    response = post(client("flow-start"), _event(t.PREFIX + "flow.exploded", {}))
    assert response.status_code == 400 and "type" in response.get_json()["message"]


@pytest.mark.parametrize(
    ("token", "status"),
    [
        (None, 401),
        ("not-a-jwt", 401),
        (sign_internal("x" * 40, "intruder", SystemClock(), event_type=t.RUN_ADMITTED), 401),
    ],
    ids=["no token", "malformed token", "token signed with another key"],
)
def test_our_own_events_need_our_signature(
    client: Client, redis: Redis, token: str | None, status: int
) -> None:
    event_type, data = CONSUMED["step-execute"]
    event = _event(event_type, data)
    if token is None:
        del event["authtoken"]
    else:
        event["authtoken"] = token
    response = post(client("step-execute"), event)
    assert response.status_code == status
    assert token is None or token not in response.get_data(as_text=True)
    assert recorded(redis, TAG_OF["step-execute"]) == []


def test_get_is_not_an_event(client: Client) -> None:
    assert client("deploy").get("/").status_code == 405


# --------------------------------------------------------------------------- handler errors
def _raising(error: Exception) -> Handler[Any]:
    def handler(ctx: Context[Any]) -> None:
        raise error

    return handler


@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        (TemporaryError("redis busy", retry_after=7), 503, "7"),
        (TemporaryError("no sink"), 503, None),
        (OverCapacity("tenant acme over its queue cap", retry_after=30), 429, "30"),
        (Unprocessable("unknown flow f"), 422, None),
        (RuntimeError("a bug"), 500, None),
    ],
    ids=["temporary", "temporary without retry-after", "over capacity", "unprocessable", "bug"],
)
def test_handler_errors_map_to_knative_statuses(
    client: Client, error: Exception, status: int, retry_after: str | None
) -> None:
    event_type, data = CONSUMED["flow-start"]
    response = post(client("flow-start", _raising(error)), _event(event_type, data))
    assert response.status_code == status
    assert response.headers.get("Retry-After") == retry_after
    body = response.get_json()
    assert body["error"] in (type(error).__name__, "InternalError")
    if status == 500:
        assert "a bug" not in json.dumps(body)  # internals stay in the log
    assert_no_token_echoed(response)


def test_a_failed_handler_leaves_no_dedupe_key_so_the_retry_runs(
    client: Client, redis: Redis
) -> None:
    attempts: list[int] = []

    def flaky(ctx: Context[Any]) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise TemporaryError("first attempt fails")
        from tests.support.runtime import record

        record(ctx)

    app = client("flow-start", flaky)
    event_type, data = CONSUMED["flow-start"]
    assert post(app, _event(event_type, data)).status_code == 503
    assert post(app, _event(event_type, data)).status_code == 200
    assert len(recorded(redis, TAG_OF["flow-start"])) == 1


def test_an_error_body_never_carries_a_token() -> None:
    from shared.errors import TemporaryError
    from shared.runtime.http import as_http_exception

    leaked = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl"
    exception = as_http_exception(TemporaryError(f"IAM said: bad token {leaked}"))
    assert exception.response is not None
    body = exception.get_response().get_data(as_text=True)
    assert leaked not in body and "IAM said" in body
