"""Our own HS256 tokens (shared/security/tokens.py): step tokens and inter-function tokens
(docs/architecture.md §8)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jose import jwt

from shared.clock import FakeClock
from shared.errors import Forbidden, Unauthorized
from shared.events.types import FLOW_STARTED, RUN_ADMITTED, RUN_COMPLETED, TENANT_SUSPENDED
from shared.security import tokens
from tests.conftest import TEST_KEY

OTHER_KEY = "another-orchestrator-key-0123456789abcdef"


def step(clock: FakeClock, **overrides: Any) -> str:
    options: dict[str, Any] = {
        "run_id": "r1",
        "step_id": "s1",
        "tenant": "acme",
        "flow_id": "f1",
        "ttl_seconds": 600,
    }
    options.update(overrides)
    return tokens.sign_step_token(TEST_KEY, clock=clock, **options)


def test_step_token_round_trip() -> None:
    clock = FakeClock()
    claims = tokens.verify_step_token(TEST_KEY, step(clock), clock, run_id="r1", step_id="s1")
    assert claims == tokens.StepClaims(run_id="r1", step_id="s1", tenant="acme", flow_id="f1")


def test_step_token_expires_after_its_ttl() -> None:
    clock = FakeClock()
    token = step(clock, ttl_seconds=600)
    clock.advance(599)
    tokens.verify_step_token(TEST_KEY, token, clock)
    clock.advance(1)
    with pytest.raises(Unauthorized, match="expired"):
        tokens.verify_step_token(TEST_KEY, token, clock)


def test_internal_token_round_trip_and_five_minute_life() -> None:
    clock = FakeClock()
    token = tokens.sign_internal(TEST_KEY, "deploy", clock, event_type=FLOW_STARTED)
    assert tokens.verify_internal(TEST_KEY, token, clock, event_type=FLOW_STARTED) == "deploy"
    claims = jwt.get_unverified_claims(token)
    assert claims["exp"] - claims["iat"] <= 300
    assert claims["iss"] == "component-orchestrator"
    assert claims[tokens.EVENT_TYPE_CLAIM] == FLOW_STARTED
    clock.advance(300)
    with pytest.raises(Unauthorized):
        tokens.verify_internal(TEST_KEY, token, clock, event_type=FLOW_STARTED)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(clock: FakeClock, **extra: Any) -> dict[str, Any]:
    now = int(clock.now())
    base = {
        "iss": tokens.ISSUER,
        "aud": tokens.INTERNAL_AUDIENCE,
        "sub": "deploy",
        "iat": now,
        "exp": now + 60,
    }
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


FORGED_INTERNAL = [
    ("signed with another key", lambda c: jwt.encode(_claims(c), OTHER_KEY, algorithm="HS256")),
    (
        "alg none",
        lambda c: (
            _b64(b'{"alg":"none","typ":"JWT"}') + "." + _b64(json.dumps(_claims(c)).encode()) + "."
        ),
    ),
    ("HS512 with our key", lambda c: jwt.encode(_claims(c), TEST_KEY, algorithm="HS512")),
    ("wrong issuer", lambda c: jwt.encode(_claims(c, iss="hub"), TEST_KEY, algorithm="HS256")),
    ("no issuer", lambda c: jwt.encode(_claims(c, iss=None), TEST_KEY, algorithm="HS256")),
    ("no audience", lambda c: jwt.encode(_claims(c, aud=None), TEST_KEY, algorithm="HS256")),
    (
        "step audience",
        lambda c: jwt.encode(_claims(c, aud=tokens.STEP_AUDIENCE), TEST_KEY, algorithm="HS256"),
    ),
    ("no expiry", lambda c: jwt.encode(_claims(c, exp=None), TEST_KEY, algorithm="HS256")),
    ("no sender", lambda c: jwt.encode(_claims(c, sub=None), TEST_KEY, algorithm="HS256")),
    (
        "not yet valid",
        lambda c: jwt.encode(_claims(c, nbf=int(c.now()) + 60), TEST_KEY, algorithm="HS256"),
    ),
    ("empty", lambda c: ""),
    ("garbage", lambda c: "a.b.c"),
]


@pytest.mark.parametrize(
    "make", [f[1] for f in FORGED_INTERNAL], ids=[f[0] for f in FORGED_INTERNAL]
)
def test_forged_internal_tokens_are_refused(make: Any) -> None:
    clock = FakeClock()
    with pytest.raises(Unauthorized):
        tokens.verify_internal(TEST_KEY, make(clock), clock, event_type=FLOW_STARTED)


def _step_claims(clock: FakeClock, **extra: Any) -> dict[str, Any]:
    now = int(clock.now())
    base = {
        "iss": tokens.ISSUER,
        "aud": tokens.STEP_AUDIENCE,
        "run": "r1",
        "step": "s1",
        "tenant": "acme",
        "flow": "f1",
        "iat": now,
        "exp": now + 60,
    }
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


FORGED_STEP = [
    (
        "signed with another key",
        lambda c: jwt.encode(_step_claims(c), OTHER_KEY, algorithm="HS256"),
        Unauthorized,
    ),
    (
        "internal audience",
        lambda c: tokens.sign_internal(TEST_KEY, "step-execute", c, event_type=FLOW_STARTED),
        Unauthorized,
    ),
    (
        "missing run claim",
        lambda c: jwt.encode(_step_claims(c, run=None), TEST_KEY, algorithm="HS256"),
        Unauthorized,
    ),
    (
        "another run",
        lambda c: jwt.encode(_step_claims(c, run="r2"), TEST_KEY, algorithm="HS256"),
        Forbidden,
    ),
    (
        "another step",
        lambda c: jwt.encode(_step_claims(c, step="s2"), TEST_KEY, algorithm="HS256"),
        Forbidden,
    ),
    (
        "expired",
        lambda c: jwt.encode(_step_claims(c, exp=int(c.now())), TEST_KEY, algorithm="HS256"),
        Unauthorized,
    ),
]


@pytest.mark.parametrize(
    ("make", "error"), [f[1:] for f in FORGED_STEP], ids=[f[0] for f in FORGED_STEP]
)
def test_forged_step_tokens_are_refused(make: Any, error: type[Exception]) -> None:
    clock = FakeClock()
    with pytest.raises(error):
        tokens.verify_step_token(TEST_KEY, make(clock), clock, run_id="r1", step_id="s1")


@settings(max_examples=60, deadline=None)
@given(position=st.integers(min_value=0), replacement=st.sampled_from("ABCxyz019-_"))
def test_any_one_character_change_is_refused(position: int, replacement: str) -> None:
    clock = FakeClock()
    token = step(clock)
    index = position % len(token)
    if token[index] == "." or token[index] == replacement:
        return
    tampered = token[:index] + replacement + token[index + 1 :]
    try:
        claims = tokens.verify_step_token(TEST_KEY, tampered, clock, run_id="r1", step_id="s1")
    except (Unauthorized, Forbidden):
        return
    # base64 padding bits can absorb a change of the last character: then nothing changed
    assert claims == tokens.verify_step_token(TEST_KEY, token, clock)


# --- internal tokens are bound to the event type they sign ---------------------------------
TYPES = [FLOW_STARTED, RUN_ADMITTED, TENANT_SUSPENDED, RUN_COMPLETED]


@given(signed=st.sampled_from(TYPES), carried=st.sampled_from(TYPES))
@settings(max_examples=40, deadline=None)
def test_an_internal_token_passes_only_on_the_type_it_was_signed_for(
    signed: str, carried: str
) -> None:
    clock = FakeClock()
    token = tokens.sign_internal(TEST_KEY, "flow-start", clock, event_type=signed)
    if signed == carried:
        assert tokens.verify_internal(TEST_KEY, token, clock, event_type=carried) == "flow-start"
    else:
        with pytest.raises(Forbidden, match="another event type"):
            tokens.verify_internal(TEST_KEY, token, clock, event_type=carried)


def test_a_token_of_the_previous_release_without_a_type_is_accepted_for_one_release() -> None:
    """Upgrade: a token signed the old way (no event type claim) by a function of the previous
    release is still in flight during a rolling upgrade; it must not be refused (yet)."""
    clock = FakeClock()
    old_form = jwt.encode(_claims(clock), TEST_KEY, algorithm="HS256")  # no "evt"
    assert tokens.EVENT_TYPE_CLAIM not in jwt.get_unverified_claims(old_form)
    assert tokens.verify_internal(TEST_KEY, old_form, clock, event_type=RUN_ADMITTED) == "deploy"
    with pytest.raises(Unauthorized, match="no event type"):
        tokens.verify_internal(
            TEST_KEY, old_form, clock, event_type=RUN_ADMITTED, accept_untyped=False
        )


def test_signing_needs_an_event_type() -> None:
    with pytest.raises(ValueError):
        tokens.sign_internal(TEST_KEY, "deploy", FakeClock(), event_type="")
