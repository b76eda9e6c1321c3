"""Introspection at IAM_INTROSPECT_URL (the hub's POST /api/v1/tokens/introspect), over HTTP."""

from __future__ import annotations

from typing import Any, cast

import pytest

from shared.adapters.iam import IamVerifier
from shared.clock import FakeClock
from shared.errors import Forbidden, TemporaryError, Unauthorized, Unprocessable
from shared.runtime.auth import Authorizer
from shared.settings import Settings
from tests.conftest import TEST_KEY
from tests.fakes.iam import FakeIam
from tests.support.events import cloudevent

FLOWS = {"f-acme": "acme", "f-globex": "globex"}


def introspecting(fake: FakeIam, clock: FakeClock, service_token: str | None = None) -> Authorizer:
    settings = Settings(
        redis_url="redis://127.0.0.1:1/0",
        orchestrator_key=TEST_KEY,
        iam_introspect_url=fake.introspect_url,
        iam_service_token=service_token or fake.service_token,
    )
    return Authorizer(settings, clock, flow_tenant=FLOWS.get)


def execute(token: str) -> Any:
    return cloudevent("flow.execute", {"flowId": "f-acme"}, authtoken=token)


PAYLOAD = {"flowId": "f-acme"}

TABLE = [
    ("valid", lambda f, c: f.issue_token("acme", "alice", ["flows.control"]), "ok"),
    ("expired", lambda f, c: f.issue_token("acme", "alice", ["flows.control"], expires_in=-1), 401),
    (
        "unknown to the IAM (foreign key)",
        lambda f, c: f.forge(f.claims_for(tenant="acme", sub="alice"), key=f.stranger_key()),
        401,
    ),
    ("not a token", lambda f, c: "opaque-nonsense", 401),
    # answered as an unknown flow would be (422): the answer does not tell the id exists
    ("another tenant's", lambda f, c: f.issue_token("globex", "bob", ["flows.control"]), 422),
    ("missing permission", lambda f, c: f.issue_token("acme", "alice", []), 403),
    ("ADMIN cross-tenant", lambda f, c: f.issue_token("globex", "root", [], roles=["ADMIN"]), "ok"),
]


@pytest.mark.parametrize(("make", "expected"), [r[1:] for r in TABLE], ids=[r[0] for r in TABLE])
def test_introspection_table(iam: FakeIam, clock: FakeClock, make: Any, expected: object) -> None:
    auth = introspecting(iam, clock)
    event = execute(make(iam, clock))
    if expected == "ok":
        assert auth.authorize(event, PAYLOAD).kind == "iam"
    else:
        refusal = {401: Unauthorized, 403: Forbidden, 422: Unprocessable}[cast(int, expected)]
        with pytest.raises(refusal):
            auth.authorize(event, PAYLOAD)
    assert iam.jwks_hits == 0  # introspection mode never needs the key set


def test_revoked_token_is_refused_once_the_short_cache_expires(
    iam: FakeIam, clock: FakeClock
) -> None:
    auth = introspecting(iam, clock)
    token = iam.issue_token("acme", "alice", ["flows.control"])
    auth.authorize(execute(token), PAYLOAD)
    iam.revoke(iam.token_id_of(token) or "")
    clock.advance(31)
    with pytest.raises(Unauthorized):
        auth.authorize(execute(token), PAYLOAD)


def test_answers_are_cached_briefly(iam: FakeIam, clock: FakeClock) -> None:
    auth = introspecting(iam, clock)
    token = iam.issue_token("acme", "alice", ["flows.control"])
    for _ in range(3):
        auth.authorize(execute(token), PAYLOAD)
    assert iam.hits["/api/v1/tokens/introspect"] == 1
    clock.advance(31)
    auth.authorize(execute(token), PAYLOAD)
    assert iam.hits["/api/v1/tokens/introspect"] == 2


def test_cache_never_outlives_the_token(iam: FakeIam, clock: FakeClock) -> None:
    auth = introspecting(iam, clock)
    token = iam.issue_token("acme", "alice", ["flows.control"], expires_in=10)
    auth.authorize(execute(token), PAYLOAD)
    clock.advance(11)
    with pytest.raises(Unauthorized):
        auth.authorize(execute(token), PAYLOAD)


def test_refusals_are_not_cached(iam: FakeIam, clock: FakeClock) -> None:
    auth = introspecting(iam, clock)
    for _ in range(2):
        with pytest.raises(Unauthorized):
            auth.authorize(execute("opaque-nonsense"), PAYLOAD)
    assert iam.hits["/api/v1/tokens/introspect"] == 2


@pytest.mark.parametrize("outage", ["refused", 502, 503])
def test_iam_down_is_503(iam: FakeIam, clock: FakeClock, outage: object) -> None:
    auth = introspecting(iam, clock)
    token = iam.issue_token("acme", "alice", ["flows.control"])
    if outage == "refused":
        iam.down()
    else:
        iam.fail(int(outage))  # type: ignore[call-overload]
    with pytest.raises(TemporaryError) as caught:
        auth.authorize(execute(token), PAYLOAD)
    assert caught.value.status == 503


def test_iam_refusing_our_service_token_is_503_not_the_callers_fault(
    iam: FakeIam, clock: FakeClock
) -> None:
    auth = introspecting(iam, clock, service_token="wrong-service-token-xyz")
    with pytest.raises(TemporaryError):
        auth.authorize(execute(iam.issue_token("acme", "alice", ["flows.control"])), PAYLOAD)


def test_rfc7662_inactive_answer_is_401(clock: FakeClock) -> None:
    """An RFC 7662 IAM answers 200 {"active": false} instead of the hub's 404."""

    class Rfc7662Iam(FakeIam):
        def introspect(self, token: str) -> dict[str, Any] | None:
            return {"active": False}

    fake = Rfc7662Iam(clock).start()
    try:
        verifier = IamVerifier(
            clock=clock, introspect_url=fake.introspect_url, service_token=fake.service_token
        )
        with pytest.raises(Unauthorized):
            verifier.verify("whatever-token")
    finally:
        fake.stop()


def test_hub_shaped_answer_with_context_and_role(clock: FakeClock) -> None:
    """The hub answers account data: _id, role, currentContext {tenant, permissions}."""

    class HubIam(FakeIam):
        def introspect(self, token: str) -> dict[str, Any] | None:
            return {
                "_id": "u1",
                "username": "a@example.com",
                "role": "USER",
                "currentContext": {"tenant": "acme", "permissions": ["flows.control"]},
            }

    fake = HubIam(clock).start()
    try:
        verifier = IamVerifier(
            clock=clock, introspect_url=fake.introspect_url, service_token=fake.service_token
        )
        identity = verifier.verify("opaque")
        assert (identity.subject, identity.tenant) == ("u1", "acme")
        assert identity.permissions == {"flows.control"} and identity.roles == {"USER"}
    finally:
        fake.stop()
