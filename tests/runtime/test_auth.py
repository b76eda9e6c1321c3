"""The authorization seam by event type (DESIGN §4): control, step, tick and internal events."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from shared.clock import FakeClock
from shared.errors import Forbidden, InvalidEvent, Unauthorized, Unprocessable
from shared.events import ComponentRef, FlowExecute, FlowRef, StepResult
from shared.events import types as t
from shared.runtime.auth import AnsweredAsUnknown, Authorizer
from shared.security import tokens
from shared.settings import Settings
from tests.conftest import TEST_KEY
from tests.fakes.iam import FakeIam
from tests.support.events import cloudevent, internal

FLOWS = {"f-acme": "acme", "f-globex": "globex"}
OTHER_KEY = "another-orchestrator-key-0123456789abcdef"


def settings(fake: FakeIam | None, auth: str = "required") -> Settings:
    return Settings(
        redis_url="redis://127.0.0.1:1/0",
        orchestrator_key=TEST_KEY,
        iam_jwks_url=fake.jwks_url if fake else None,
        iam_issuer=fake.issuer if fake else None,
        iam_audience=fake.audience if fake else None,
        auth=auth,
    )


@pytest.fixture
def auth(iam: FakeIam, clock: FakeClock) -> Authorizer:
    return Authorizer(settings(iam), clock, flow_tenant=FLOWS.get)


def flow_doc(flow_id: str, tenant: str) -> dict[str, Any]:
    return {
        "id": flow_id,
        "tenant": tenant,
        "owners": [{"id": "alice", "type": "user"}],
        "graph": {"nodes": [{"id": "a", "componentId": "c", "function": "run"}], "edges": []},
    }


# --- control events ----------------------------------------------------------------------------
CONTROL_CASES = [
    # (id, event type, payload, token claims, expected)
    ("start own tenant's new flow", "flow.starting", {"id": "f-new", "tenant": "acme"}, {}, "ok"),
    (
        "start a flow for another tenant",
        "flow.starting",
        {"id": "f-new", "tenant": "globex"},
        {},
        403,
    ),
    (
        "take over another tenant's flow by re-sending it under one's own tenant",
        "flow.starting",
        {"id": "f-globex", "tenant": "acme"},
        {},
        403,
    ),
    ("stop own flow", "flow.stopping", {"id": "f-acme"}, {}, "ok"),
    # another tenant's flow is answered as an unknown one (tests/security/test_tenant_scope.py)
    ("stop another tenant's flow", "flow.stopping", {"id": "f-globex"}, {}, "as unknown"),
    ("stop an unknown flow (nothing to stop)", "flow.stopping", {"id": "f-nope"}, {}, "ok"),
    ("execute own flow", "flow.execute", {"flowId": "f-acme"}, {}, "ok"),
    ("execute another tenant's flow", "flow.execute", {"flowId": "f-globex"}, {}, 422),
    (
        "execute an unknown flow (handler answers 422)",
        "flow.execute",
        {"flowId": "f-nope"},
        {},
        "ok",
    ),
    (
        "flows need flows.control",
        "flow.execute",
        {"flowId": "f-acme"},
        {"permissions": ("components.control",)},
        403,
    ),
    (
        "ADMIN stops any tenant's flow",
        "flow.stopping",
        {"id": "f-globex"},
        {"roles": ("ADMIN",), "permissions": ()},
        "ok",
    ),
    (
        "component.starting with components.control",
        "component.starting",
        {"id": "c1"},
        {"permissions": ("components.control",)},
        "ok",
    ),
    (
        "component.stopping without components.control",
        "component.stopping",
        {"id": "c1"},
        {"permissions": ("flows.control",)},
        403,
    ),
    (
        "ADMIN starts a global component",
        "component.starting",
        {"id": "c1"},
        {"roles": ("ADMIN",), "permissions": ()},
        "ok",
    ),
]


@pytest.mark.parametrize(
    ("event_type", "data", "claims", "expected"),
    [c[1:] for c in CONTROL_CASES],
    ids=[c[0] for c in CONTROL_CASES],
)
def test_control_events(
    auth: Authorizer,
    iam: FakeIam,
    event_type: str,
    data: dict[str, Any],
    claims: dict[str, Any],
    expected: object,
) -> None:
    token = iam.token(**claims)
    payload: Any = data
    if event_type == "flow.starting":
        payload = flow_doc(data["id"], data["tenant"])
    event = cloudevent(event_type, payload, authtoken=token)
    if expected == "ok":
        principal = auth.authorize(event, payload)
        assert (principal.kind, principal.subject, principal.tenant) == ("iam", "alice", "acme")
    elif expected == "as unknown":
        with pytest.raises(AnsweredAsUnknown):
            auth.authorize(event, payload)
    elif expected == 422:
        with pytest.raises(Unprocessable):
            auth.authorize(event, payload)
    else:
        with pytest.raises(Forbidden):
            auth.authorize(event, payload)


def test_payload_dataclasses_are_read_too(auth: Authorizer, iam: FakeIam) -> None:
    token = iam.token()
    execute = FlowExecute.parse({"flowId": "f-globex"})
    with pytest.raises(Unprocessable):
        auth.authorize(cloudevent("flow.execute", {"flowId": "f-globex"}, authtoken=token), execute)
    stop = FlowRef.parse({"id": "f-acme"})
    assert auth.authorize(cloudevent("flow.stopping", {"id": "f-acme"}, authtoken=token), stop)
    ref = ComponentRef.parse({"id": "c1"})
    with pytest.raises(Forbidden):
        auth.authorize(cloudevent("component.starting", {"id": "c1"}, authtoken=token), ref)


@pytest.mark.parametrize(
    "event_type", ["flow.starting", "flow.stopping", "flow.execute", "component.starting"]
)
def test_control_events_without_a_token_are_401(auth: Authorizer, event_type: str) -> None:
    data = {"id": "f-acme", "tenant": "acme", "flowId": "f-acme"}
    with pytest.raises(Unauthorized):
        auth.authorize(cloudevent(event_type, data), data)


def test_our_own_signed_token_is_no_iam_token(auth: Authorizer, clock: FakeClock) -> None:
    token = tokens.sign_internal(TEST_KEY, "deploy", clock, event_type=t.FLOW_EXECUTE)
    with pytest.raises(Unauthorized):
        auth.authorize(
            cloudevent("flow.execute", {"flowId": "f-acme"}, authtoken=token), {"flowId": "f-acme"}
        )


# --- auth off ----------------------------------------------------------------------------------
def test_auth_off_skips_only_iam_checks_and_says_so_once(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="shared.runtime.auth"):
        auth = Authorizer(settings(None, auth="off"), clock, flow_tenant=FLOWS.get)
        principal = auth.authorize(
            cloudevent("flow.execute", {"flowId": "f-globex"}), {"flowId": "f-globex"}
        )
        auth.authorize(cloudevent("flow.stopping", {"id": "f-acme"}), {"id": "f-acme"})
    assert principal.kind == "auth-off"
    assert sum("ORCHESTRATOR_AUTH=off" in r.getMessage() for r in caplog.records) == 1
    # step tokens and internal signatures are still checked
    with pytest.raises(Unauthorized):
        auth.authorize(
            cloudevent("step.completed", {"runId": "r", "stepId": "s"}),
            {"runId": "r", "stepId": "s"},
        )
    with pytest.raises(Unauthorized):
        auth.authorize(cloudevent("flow.started", {"id": "f-acme"}), {"id": "f-acme"})


def test_auth_required_without_iam_settings_refuses_to_start(clock: FakeClock) -> None:
    with pytest.raises(Exception, match="IAM_JWKS_URL"):
        Authorizer(settings(None), clock, flow_tenant=FLOWS.get)


def test_jwks_without_issuer_or_audience_refuses_to_start(iam: FakeIam, clock: FakeClock) -> None:
    incomplete = Settings(
        redis_url="redis://x:1/0", orchestrator_key=TEST_KEY, iam_jwks_url=iam.jwks_url
    )
    with pytest.raises(Exception, match=r"IAM_ISSUER.*IAM_AUDIENCE"):
        Authorizer(incomplete, clock, flow_tenant=FLOWS.get)


# --- step results ------------------------------------------------------------------------------
def step_token(
    clock: FakeClock, *, key: str = TEST_KEY, run: str = "r1", step: str = "s1", ttl: float = 600
) -> str:
    return tokens.sign_step_token(
        key, run_id=run, step_id=step, tenant="acme", flow_id="f-acme", ttl_seconds=ttl, clock=clock
    )


STEP_CASES = [
    ("valid step token", lambda c: step_token(c), "ok"),
    ("token of another run", lambda c: step_token(c, run="r2"), 403),
    ("token of another step", lambda c: step_token(c, step="s2"), 403),
    ("forged: signed with another key", lambda c: step_token(c, key=OTHER_KEY), 401),
    ("expired", lambda c: step_token(c, ttl=-1), 401),
    (
        "an internal token instead of a step token",
        lambda c: tokens.sign_internal(TEST_KEY, "x", c, event_type=t.STEP_COMPLETED),
        401,
    ),
    ("garbage", lambda c: "eyJhbGciOi.x.y", 401),
]


@pytest.mark.parametrize(
    ("make", "expected"), [c[1:] for c in STEP_CASES], ids=[c[0] for c in STEP_CASES]
)
@pytest.mark.parametrize("event_type", ["step.completed", "step.failed"])
def test_step_results(
    auth: Authorizer, clock: FakeClock, event_type: str, make: Any, expected: object
) -> None:
    data = {"runId": "r1", "stepId": "s1", "messageId": "m1"}
    event = cloudevent(event_type, data, steptoken=make(clock))
    payload = StepResult.parse(data)
    if expected == "ok":
        principal = auth.authorize(event, payload)
        assert (principal.kind, principal.subject, principal.tenant) == ("step", "r1/s1", "acme")
    else:
        with pytest.raises(Forbidden if expected == 403 else Unauthorized):
            auth.authorize(event, payload)


def test_step_result_without_steptoken_is_401_even_with_an_authtoken(
    auth: Authorizer, clock: FakeClock
) -> None:
    data = {"runId": "r1", "stepId": "s1", "messageId": "m1"}
    token = tokens.sign_internal(TEST_KEY, "x", clock, event_type=t.STEP_COMPLETED)
    event = cloudevent("step.completed", data, authtoken=token)
    with pytest.raises(Unauthorized):
        auth.authorize(event, data)


def test_step_result_naming_no_run_is_invalid(auth: Authorizer, clock: FakeClock) -> None:
    with pytest.raises(InvalidEvent):
        auth.authorize(cloudevent("step.completed", {}, steptoken=step_token(clock)), {})


# --- ticks and internal events -----------------------------------------------------------------
def test_tick_needs_nothing(auth: Authorizer) -> None:
    assert auth.authorize(cloudevent("orchestrator.tick", {}), {}).kind == "anonymous"


INTERNAL_CASES = [
    (
        "signed by our key",
        lambda c, ty: tokens.sign_internal(TEST_KEY, "flow-start", c, event_type=ty),
        "ok",
    ),
    (
        "forged with another key",
        lambda c, ty: tokens.sign_internal(OTHER_KEY, "flow-start", c, event_type=ty),
        401,
    ),
    (
        "signed for another type",
        lambda c, ty: tokens.sign_internal(TEST_KEY, "flow-start", c, event_type=t.TENANT_RESTORED),
        403,
    ),
    ("a step token", lambda c, ty: step_token(c), 401),
    ("missing", lambda c, ty: None, 401),
]


@pytest.mark.parametrize(
    ("make", "expected"), [c[1:] for c in INTERNAL_CASES], ids=[c[0] for c in INTERNAL_CASES]
)
@pytest.mark.parametrize(
    "event_type",
    ["flow.started", "flow.execution.admitted", "tenant.suspended", "flow.execution.failed"],
)
def test_internal_events(
    auth: Authorizer, clock: FakeClock, event_type: str, make: Any, expected: object
) -> None:
    token = make(clock, t.PREFIX + event_type)
    event = cloudevent(event_type, {"id": "f-acme"}, **({"authtoken": token} if token else {}))
    if expected == "ok":
        principal = auth.authorize(event, {"id": "f-acme"})
        assert (principal.kind, principal.subject) == ("internal", "flow-start")
    else:
        with pytest.raises(Forbidden if expected == 403 else Unauthorized):
            auth.authorize(event, {"id": "f-acme"})


def test_internal_tokens_expire_after_five_minutes(auth: Authorizer, clock: FakeClock) -> None:
    event = internal("flow.started", {"id": "f-acme"}, key=TEST_KEY, clock=clock)
    clock.advance(301)
    with pytest.raises(Unauthorized):
        auth.authorize(event, {"id": "f-acme"})


def test_an_iam_token_is_no_internal_token(auth: Authorizer, iam: FakeIam) -> None:
    event = cloudevent("flow.started", {"id": "f-acme"}, authtoken=iam.token(roles=("ADMIN",)))
    with pytest.raises(Unauthorized):
        auth.authorize(event, {"id": "f-acme"})
