"""Issue 8 §7: the token table. Each IAM token on a control event is accepted or refused
exactly as DESIGN §4 says, against a real fake IAM over HTTP (JWKS path)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest

from shared.clock import FakeClock
from shared.errors import Forbidden, TemporaryError, Unauthorized, Unprocessable
from shared.runtime.auth import Authorizer
from shared.settings import Settings
from tests.conftest import TEST_KEY
from tests.fakes.iam import FakeIam
from tests.support.events import cloudevent

FLOWS = {"f-acme": "acme", "f-globex": "globex"}


def jwks_settings(fake: FakeIam) -> Settings:
    return Settings(
        redis_url="redis://127.0.0.1:1/0",
        orchestrator_key=TEST_KEY,
        iam_jwks_url=fake.jwks_url,
        iam_issuer=fake.issuer,
        iam_audience=fake.audience,
    )


def authorizer(fake: FakeIam, clock: FakeClock) -> Authorizer:
    return Authorizer(jwks_settings(fake), clock, flow_tenant=FLOWS.get)


def execute(token: str | None, flow_id: str = "f-acme") -> Any:
    extensions = {"authtoken": token} if token is not None else {}
    return cloudevent("flow.execute", {"flowId": flow_id, "msg": {}}, **extensions)


class Payload:
    def __init__(self, flow_id: str) -> None:
        self.flow_id = flow_id


# Each row: (id, build token from fake IAM and clock, expected: "ok" | 401 | 403 | 422)
Row = tuple[str, Callable[[FakeIam, FakeClock], str], object]

TABLE: list[Row] = [
    ("valid", lambda f, c: f.token(), "ok"),
    ("expired", lambda f, c: f.token(exp=int(c.now()) - 1), 401),
    ("not yet valid", lambda f, c: f.token(nbf=int(c.now()) + 120), 401),
    ("wrong audience", lambda f, c: f.token(aud="someone-else"), 401),
    ("wrong issuer", lambda f, c: f.token(iss="https://evil.example"), 401),
    (
        "bad signature (a key the IAM never published, same kid)",
        lambda f, c: f.forge(
            f.claims_for(tenant="acme", sub="alice", permissions=["flows.control"]),
            key=f.stranger_key(),
        ),
        401,
    ),
    (
        "alg none",
        lambda f, c: f.unsigned(
            f.claims_for(tenant="acme", sub="alice", permissions=["flows.control"])
        ),
        401,
    ),
    (
        "HS256 signed with the IAM's public key",
        lambda f, c: f.forge(
            f.claims_for(tenant="acme", sub="alice", permissions=["flows.control"]),
            alg="HS256",
            secret=f.public_pem(),
        ),
        401,
    ),
    (
        "unknown kid (refresh, then refuse)",
        lambda f, c: f.forge(
            f.claims_for(tenant="acme", sub="alice", permissions=["flows.control"]),
            key=f.rotate_key(publish=False),
        ),
        401,
    ),
    # another tenant's flow is answered as an unknown one (tests/security/test_tenant_scope.py)
    ("another tenant's", lambda f, c: f.token(tenant="globex"), 422),
    ("missing permission", lambda f, c: f.token(permissions=("components.control",)), 403),
    (
        "ADMIN cross-tenant",
        lambda f, c: f.token(tenant="globex", permissions=(), roles=("ADMIN",)),
        "ok",
    ),
    # beyond the table
    ("no expiry at all", lambda f, c: f.token(exp=None), 401),
    ("not a JWT", lambda f, c: "not-a-token", 401),
    (
        "claims changed after signing",
        lambda f, c: _tamper(f.token(tenant="globex"), tenant="acme"),
        401,
    ),
    ("no tenant claim", lambda f, c: f.token(tenant=None), 422),
]


def _tamper(token: str, **changes: Any) -> str:
    import base64
    import json

    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return ".".join((header, forged, signature))


@pytest.mark.parametrize(
    ("make_token", "expected"), [r[1:] for r in TABLE], ids=[r[0] for r in TABLE]
)
def test_token_table(iam: FakeIam, clock: FakeClock, make_token: Any, expected: object) -> None:
    auth = authorizer(iam, clock)
    event = execute(make_token(iam, clock))
    if expected == "ok":
        principal = auth.authorize(event, Payload("f-acme"))
        assert principal.kind == "iam"
        assert principal.subject == "alice"
    else:
        error = {401: Unauthorized, 403: Forbidden, 422: Unprocessable}[cast(int, expected)]
        with pytest.raises(error) as caught:
            auth.authorize(event, Payload("f-acme"))
        assert caught.value.status == expected


def test_missing_authtoken_is_401(iam: FakeIam, clock: FakeClock) -> None:
    with pytest.raises(Unauthorized):
        authorizer(iam, clock).authorize(execute(None), Payload("f-acme"))


def test_unknown_kid_refreshes_the_key_set_exactly_once(iam: FakeIam, clock: FakeClock) -> None:
    auth = authorizer(iam, clock)
    auth.authorize(execute(iam.token()), Payload("f-acme"))  # warms the cache
    assert iam.jwks_hits == 1
    clock.advance(10)
    stranger = iam.rotate_key(publish=False)
    token = iam.forge(
        iam.claims_for(tenant="acme", sub="alice", permissions=["flows.control"]), key=stranger
    )
    with pytest.raises(Unauthorized):
        auth.authorize(execute(token), Payload("f-acme"))
    assert iam.jwks_hits == 2  # refreshed once, then refused


def test_rotated_key_is_accepted_after_one_refresh(iam: FakeIam, clock: FakeClock) -> None:
    auth = authorizer(iam, clock)
    auth.authorize(execute(iam.token()), Payload("f-acme"))
    clock.advance(10)
    iam.rotate_key()  # published: the IAM rotated its signing key
    principal = auth.authorize(execute(iam.token()), Payload("f-acme"))
    assert principal.tenant == "acme"
    assert iam.jwks_hits == 2


def test_made_up_kids_do_not_turn_into_a_download_each(iam: FakeIam, clock: FakeClock) -> None:
    auth = authorizer(iam, clock)
    auth.authorize(execute(iam.token()), Payload("f-acme"))
    clock.advance(10)
    for _ in range(5):
        token = iam.forge(iam.claims_for(tenant="acme", sub="alice"), header={"kid": "made-up"})
        with pytest.raises(Unauthorized):
            auth.authorize(execute(token), Payload("f-acme"))
    assert iam.jwks_hits == 2


def test_jwks_is_cached_then_refetched_after_its_ttl(iam: FakeIam, clock: FakeClock) -> None:
    auth = authorizer(iam, clock)
    for _ in range(3):
        auth.authorize(execute(iam.token()), Payload("f-acme"))
    assert iam.jwks_hits == 1
    clock.advance(301)
    auth.authorize(execute(iam.token()), Payload("f-acme"))
    assert iam.jwks_hits == 2


def test_es256_tokens_are_accepted(clock: FakeClock) -> None:
    fake = FakeIam(clock, alg="ES256").start()
    try:
        principal = authorizer(fake, clock).authorize(execute(fake.token()), Payload("f-acme"))
        assert principal.subject == "alice"
    finally:
        fake.stop()


@pytest.mark.parametrize(
    "outage",
    [
        pytest.param("refused", id="connection refused"),
        pytest.param(503, id="IAM answers 503"),
        pytest.param(500, id="IAM answers 500"),
    ],
)
def test_iam_down_is_503_and_recovers(iam: FakeIam, clock: FakeClock, outage: object) -> None:
    auth = authorizer(iam, clock)
    token = iam.token()
    if outage == "refused":
        iam.down()
    else:
        iam.fail(int(outage))  # type: ignore[call-overload]
    with pytest.raises(TemporaryError) as caught:
        auth.authorize(execute(token), Payload("f-acme"))
    assert caught.value.status == 503
    if outage == "refused":
        iam.up()
    else:
        iam.heal()
    assert auth.authorize(execute(token), Payload("f-acme")).kind == "iam"


def test_refusals_never_echo_the_token(iam: FakeIam, clock: FakeClock) -> None:
    auth = authorizer(iam, clock)
    for token in (iam.token(exp=1), iam.token(tenant="globex"), iam.unsigned({"sub": "x"})):
        with pytest.raises((Unauthorized, Forbidden, Unprocessable)) as caught:
            auth.authorize(execute(token), Payload("f-acme"))
        assert token not in str(caught.value)
        assert token not in str(caught.value.to_body())
