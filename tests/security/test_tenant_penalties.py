"""Attack: a user who belongs to two tenants (the IAM's memberships), or a flow id used by
another tenant, is charged and punished in one tenant and it lands in the other: user and flow
penalty and ledger keys were `user:<id>` / `flow:<id>` for every tenant, so tenant A's rules
suspended bob in tenant B too (and A could charge B's subjects by naming them).

Through the real policy-check and flow-start apps over HTTP (our own events signed as the
functions sign them), a real Redis. Also the upgrade: a user suspended by the previous release
(old keys) stays suspended, in its own tenant only, before and after the tick that moves its
keys."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudevents.conversion import to_binary
from flask.testing import FlaskClient
from redis import Redis

from shared import keys
from shared.clock import SystemClock
from shared.model import penalties
from shared.policing.ledger import SubjectRef
from shared.store import as_text
from tests.conftest import TEST_KEY
from tests.support.apps import function_client
from tests.support.events import cloudevent, internal
from tests.support.flows import store_flow
from tests.support.http_sink import HttpSink

_ids = itertools.count(1)


@pytest.fixture()
def apps(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, base_env: dict[str, str], redis: Redis
) -> Iterator[dict[str, FlaskClient]]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "rules:\n"
        "  - {name: chatty-user, metric: messages, subject: user, window: 1m, max: 100}\n"
        "penalties: {ladder: [suspend], cooldown: 5m, max_cooldown: 1h, decay_after: 10m}\n"
    )
    store_flow(redis, "fa", tenant="acme", owner="bob")  # bob in tenant acme
    store_flow(redis, "fr", tenant="rival", owner="bob")  # the same bob in tenant rival
    with HttpSink() as sink:
        env = {
            **base_env,
            "ORCHESTRATOR_POLICY_FILE": str(policy),
            "K_SINK": sink.url,
            "FLOW_START_WORK_THROUGH_SECONDS": "0",
        }
        clients = {
            name: function_client(monkeypatch, env, name) for name in ("policy-check", "flow-start")
        }
        for flow_id, tenant in (("fa", "acme"), ("fr", "rival")):
            ours("flow-start", clients, "flow.started", {"id": flow_id}, "deploy", tenant=tenant)
        yield clients


def ours(
    function: str,
    clients: dict[str, FlaskClient],
    event_type: str,
    data: Any,
    sender: str,
    **extensions: str,
) -> None:
    event = internal(event_type, data, key=TEST_KEY, clock=SystemClock(), sender=sender)
    for name, value in extensions.items():
        event[name] = value
    headers, body = to_binary(event)
    response = clients[function].post("/", headers=headers, data=body)
    assert response.status_code == 200, response.get_data(as_text=True)


def execute(clients: dict[str, FlaskClient], flow_id: str) -> None:
    event = cloudevent("flow.execute", {"flowId": flow_id, "msg": {}}, event_id=f"x-{next(_ids)}")
    headers, body = to_binary(event)
    response = clients["flow-start"].post("/", headers=headers, data=body)
    assert response.status_code == 200, response.get_data(as_text=True)


def runs_of(redis: Redis, key: str, flow_id: str) -> int:
    return sum(1 for run_id in redis.hkeys(key) if as_text(run_id).startswith(flow_id + "~"))


def admitted(redis: Redis, flow_id: str) -> int:
    return runs_of(redis, keys.admitted_runs(), flow_id)


def waiting(redis: Redis, flow_id: str) -> int:
    return runs_of(redis, keys.waiting_runs(), flow_id)


def test_a_user_punished_in_one_tenant_runs_on_in_the_other(
    apps: dict[str, FlaskClient], redis: Redis
) -> None:
    usage = {"tenant": "acme", "user": "bob", "flowId": "fa", "messages": 1000}
    ours("policy-check", apps, "usage.reported", usage, "step-execute", tenant="acme")
    assert penalties.is_suspended(redis, tenant="acme", user="bob")
    assert not penalties.is_suspended(redis, tenant="rival", user="bob", flow="fr")
    assert penalties.current_level(redis, "user", "bob", "rival") is None
    execute(apps, "fa")
    execute(apps, "fr")
    assert (admitted(redis, "fa"), waiting(redis, "fa")) == (0, 1)  # bob suspended in acme
    assert (admitted(redis, "fr"), waiting(redis, "fr")) == (1, 0)  # and not in rival
    # what acme's rules counted is acme's: rival's bob has no usage at all
    assert redis.exists(keys.ledger("user", "bob", 60, "acme"))
    assert not redis.exists(keys.ledger("user", "bob", 60, "rival"))
    assert not redis.exists(keys.ledger("user", "bob", 60))


def test_a_user_suspended_by_the_previous_release_stays_suspended_in_its_tenant_only(
    apps: dict[str, FlaskClient], redis: Redis
) -> None:
    now = time.time()
    old_penalty, old_ring = keys.penalty("user", "bob"), keys.ledger("user", "bob", 60)
    redis.hset(
        old_penalty,
        mapping={"step": "suspend", "until": now + 3600, "since": now, "tenant": "acme",
                 "level": "user", "id": "bob", "rule": "chatty-user", "repeats": 1},
    )  # fmt: skip
    redis.zadd(keys.penalty_index(), {"user:bob": now})  # as the previous release wrote them
    redis.hset(old_ring, mapping={"meta": "1"})
    redis.zadd(keys.ledger_active(), {SubjectRef("user", "bob", "acme").member(): now})

    # read both forms before the upgrade: suspended in acme, not in rival
    assert penalties.is_suspended(redis, tenant="acme", user="bob")
    assert not penalties.is_suspended(redis, tenant="rival", user="bob")
    execute(apps, "fa")
    execute(apps, "fr")
    assert (admitted(redis, "fa"), waiting(redis, "fa")) == (0, 1)
    assert (admitted(redis, "fr"), waiting(redis, "fr")) == (1, 0)

    # policy-check's tick moves the keys; the suspension stays where it was
    ours("policy-check", apps, "orchestrator.tick", {}, "tests")
    assert not redis.exists(old_penalty) and not redis.exists(old_ring)
    assert redis.hget(keys.penalty("user", "bob", "acme"), "step") == b"suspend"
    assert redis.exists(keys.ledger("user", "bob", 60, "acme"))
    members = {as_text(m) for m in redis.zrange(keys.penalty_index(), 0, -1)}
    assert members == {keys.penalty_member("user", "bob", "acme")}
    execute(apps, "fa")
    assert (admitted(redis, "fa"), waiting(redis, "fa")) == (0, 2)
    assert not penalties.is_suspended(redis, tenant="rival", user="bob")
