"""Flow tokens (DESIGN §4): created in IAM once per flow, reused on redelivery, revoked on stop."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from jose import jwt
from redis import Redis

from shared import keys
from shared.adapters.iam import STEP_PERMISSIONS, IamClient
from shared.clock import FakeClock
from shared.deployment.flow_tokens import ensure_flow_token, revoke_flow_token
from shared.errors import PermanentError, TemporaryError
from shared.settings import Settings
from tests.conftest import TEST_KEY
from tests.fakes.iam import FakeIam

OTHER_KEY = "another-orchestrator-key-0123456789abcdef"


class CountingClient(IamClient):
    """The real HTTP client, counting what it asks the IAM to do."""

    def __init__(self, fake: FakeIam) -> None:
        super().__init__(base_url=fake.url, service_token=fake.service_token)
        self.created = 0
        self.revoked: list[str] = []

    def create_flow_token(self, flow_id: str, owner_id: str, tenant: str) -> tuple[str, str]:
        self.created += 1
        return super().create_flow_token(flow_id, owner_id, tenant)

    def revoke(self, token_id: str) -> None:
        self.revoked.append(token_id)
        super().revoke(token_id)


def flow(flow_id: str = "f1", tenant: str = "acme", owner: str = "alice") -> dict[str, Any]:
    return {"id": flow_id, "tenant": tenant, "owners": [{"id": owner, "type": "user"}]}


def test_client_creates_a_hub_shaped_token_with_only_step_permissions(iam: FakeIam) -> None:
    iam.add_user("alice", "acme")  # the hub's IAM takes a token's tenant from the account
    client = IamClient(base_url=iam.url, service_token=iam.service_token)
    token_id, token = client.create_flow_token("f1", "alice", "acme")
    [body] = iam.token_bodies
    assert body == {
        "accountId": "alice",
        "expiresIn": -1,
        "description": "Created by component-orchestrator for flow f1",
        "customPermissions": list(STEP_PERMISSIONS),
        "new": True,
    }  # exactly what services/iam/src/routes/tokens.js reads, as lib/iam-utils sends it
    claims = jwt.get_unverified_claims(token)
    assert claims["sub"] == "alice" and claims["tenant"] == "acme"
    assert claims["permissions"] == sorted(STEP_PERMISSIONS)
    assert "exp" not in claims  # lives as long as the flow; revoked on stop
    assert iam.introspect(token) is not None
    client.revoke(token_id)
    assert iam.introspect(token) is None
    client.revoke(token_id)  # already gone: still fine


def test_client_from_settings_needs_iam_url() -> None:
    with pytest.raises(PermanentError, match="IAM_URL"):
        IamClient.from_settings(
            Settings(redis_url="redis://x:1/0", orchestrator_key=TEST_KEY, auth="off")
        )


def test_client_finds_the_id_when_the_hub_answers_only_the_token(clock: FakeClock) -> None:
    class OldHub(FakeIam):
        def create_token(self, body: Any) -> dict[str, str]:
            return {"token": super().create_token(body)["token"]}

    fake = OldHub(clock).start()
    try:
        token_id, token = IamClient(
            base_url=fake.url, service_token=fake.service_token
        ).create_flow_token("f1", "alice", "acme")
        assert fake.token_id_of(token) == token_id
    finally:
        fake.stop()


@pytest.mark.parametrize(
    ("status", "error"), [(503, TemporaryError), (500, TemporaryError), (403, PermanentError)]
)
def test_client_maps_iam_failures(iam: FakeIam, status: int, error: type[Exception]) -> None:
    iam.fail(status)
    with pytest.raises(error):
        IamClient(base_url=iam.url, service_token=iam.service_token).create_flow_token(
            "f1", "alice", "acme"
        )


def test_client_with_a_refused_service_token_is_temporary(iam: FakeIam) -> None:
    with pytest.raises(TemporaryError):
        IamClient(base_url=iam.url, service_token="wrong").create_flow_token("f1", "alice", "acme")


def test_iam_unreachable_is_temporary(iam: FakeIam) -> None:
    client = IamClient(base_url=iam.url, service_token=iam.service_token)
    iam.down()
    with pytest.raises(TemporaryError):
        client.create_flow_token("f1", "alice", "acme")
    with pytest.raises(TemporaryError):
        client.revoke("abc")


def test_created_once_per_flow_not_per_redelivery(
    redis: Redis, iam: FakeIam, clock: FakeClock
) -> None:
    client = CountingClient(iam)
    first = ensure_flow_token(redis, client, flow(), clock, key=TEST_KEY)
    for _ in range(3):
        assert ensure_flow_token(redis, client, flow(), clock, key=TEST_KEY) == first
    assert client.created == 1
    assert iam.live_tokens() == [jwt.get_unverified_claims(first)["jti"]]


def test_one_token_per_flow(redis: Redis, iam: FakeIam, clock: FakeClock) -> None:
    client = CountingClient(iam)
    a = ensure_flow_token(redis, client, flow("f1"), clock, key=TEST_KEY)
    b = ensure_flow_token(redis, client, flow("f2"), clock, key=TEST_KEY)
    assert a != b and len(iam.live_tokens()) == 2


def test_revoked_on_stop_and_a_second_stop_is_a_no_op(
    redis: Redis, iam: FakeIam, clock: FakeClock
) -> None:
    client = CountingClient(iam)
    token = ensure_flow_token(redis, client, flow(), clock, key=TEST_KEY)
    assert revoke_flow_token(redis, client, "f1") is True
    assert iam.introspect(token) is None and iam.live_tokens() == []
    assert redis.get(keys.flow_token("f1")) is None
    assert revoke_flow_token(redis, client, "f1") is False
    # a later start creates a fresh token
    assert ensure_flow_token(redis, client, flow(), clock, key=TEST_KEY) != token


def test_revoke_while_iam_is_down_keeps_the_record_for_the_retry(
    redis: Redis, iam: FakeIam, clock: FakeClock
) -> None:
    client = CountingClient(iam)
    token = ensure_flow_token(redis, client, flow(), clock, key=TEST_KEY)
    iam.fail(503, times=1)
    with pytest.raises(TemporaryError):
        revoke_flow_token(redis, client, "f1")
    assert redis.get(keys.flow_token("f1")) is not None
    assert revoke_flow_token(redis, client, "f1") is True
    assert iam.introspect(token) is None


def test_token_is_encrypted_at_rest(redis: Redis, iam: FakeIam, clock: FakeClock) -> None:
    token = ensure_flow_token(redis, CountingClient(iam), flow(), clock, key=TEST_KEY)
    raw = redis.get(keys.flow_token("f1"))
    assert raw is not None and token.encode() not in raw
    assert token.split(".")[1].encode() not in raw


def test_owner_change_replaces_the_token(redis: Redis, iam: FakeIam, clock: FakeClock) -> None:
    client = CountingClient(iam)
    old = ensure_flow_token(redis, client, flow(owner="alice"), clock, key=TEST_KEY)
    new = ensure_flow_token(redis, client, flow(owner="bob"), clock, key=TEST_KEY)
    assert new != old and jwt.get_unverified_claims(new)["sub"] == "bob"
    assert iam.introspect(old) is None and len(iam.live_tokens()) == 1


def test_a_new_orchestrator_key_replaces_the_unreadable_token(
    redis: Redis, iam: FakeIam, clock: FakeClock
) -> None:
    client = CountingClient(iam)
    old = ensure_flow_token(redis, client, flow(), clock, key=TEST_KEY)
    new = ensure_flow_token(redis, client, flow(), clock, key=OTHER_KEY)
    assert new != old and iam.introspect(old) is None and len(iam.live_tokens()) == 1


def test_concurrent_deploys_end_with_one_live_token(
    redis: Redis, iam: FakeIam, clock: FakeClock
) -> None:
    client = CountingClient(iam)
    barrier = threading.Barrier(4)
    results: list[str] = []

    def deploy() -> None:
        own = Redis(connection_pool=redis.connection_pool)
        barrier.wait()
        results.append(ensure_flow_token(own, client, flow(), clock, key=TEST_KEY))

    threads = [threading.Thread(target=deploy) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1
    assert len(iam.live_tokens()) == 1


def test_flow_without_owner_is_refused(redis: Redis, iam: FakeIam, clock: FakeClock) -> None:
    with pytest.raises(PermanentError):
        ensure_flow_token(
            redis,
            CountingClient(iam),
            {"id": "f1", "tenant": "acme", "owners": []},
            clock,
            key=TEST_KEY,
        )


def test_works_with_the_flow_document_dataclass(
    redis: Redis, iam: FakeIam, clock: FakeClock
) -> None:
    from shared.events import FlowDocument

    document = FlowDocument.parse(
        {
            "id": "f9",
            "tenant": "acme",
            "owners": [{"id": "carol", "type": "user"}],
            "graph": {"nodes": [{"id": "a", "componentId": "c", "function": "run"}], "edges": []},
        }
    )
    token = ensure_flow_token(redis, CountingClient(iam), document, clock, key=TEST_KEY)
    assert jwt.get_unverified_claims(token)["sub"] == "carol"
