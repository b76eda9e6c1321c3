"""Refused events change nothing (issue 8 §7): the runtime authorizes before any handler runs,
before the dedupe key is written and before anything is emitted."""

from __future__ import annotations

from typing import Any

import pytest
from redis import Redis

from shared import keys
from shared.clock import FakeClock
from shared.errors import OrchestratorError
from shared.model.policy import load_policy
from shared.runtime.auth import Authorizer
from shared.runtime.function import Context, FunctionRuntime, FunctionSpec
from shared.settings import Settings
from tests.conftest import TEST_KEY
from tests.fakes.iam import FakeIam
from tests.support.events import CapturingSender, cloudevent
from tests.support.runtime import record

FLOWS = {"f-acme": "acme", "f-globex": "globex"}


def runtime(
    redis: Redis, fake: FakeIam, clock: FakeClock, calls: list[str]
) -> FunctionRuntime[object]:
    def handler(ctx: Context[object]) -> None:
        calls.append(ctx.event.type)
        record(ctx)
        ctx.commit(
            None,
            [
                ctx.new_event(
                    "org.openintegrationhub.flow.execution.deferred",
                    {"flowId": "f-acme", "scheduledFor": 0, "reason": "test"},
                )
            ],
        )

    spec: FunctionSpec[object] = FunctionSpec(
        name="flow-start",
        tag=keys.ADMISSION,
        handlers={"org.openintegrationhub.flow.execute": handler},
        build_services=lambda *_: None,
    )
    settings = Settings(
        redis_url="redis://unused:1/0",
        orchestrator_key=TEST_KEY,
        iam_jwks_url=fake.jwks_url,
        iam_issuer=fake.issuer,
        iam_audience=fake.audience,
    )
    return FunctionRuntime(
        spec,
        settings=settings,
        redis=redis,
        clock=clock,
        policy=load_policy(None),
        sender=CapturingSender(),
        authorizer=Authorizer(settings, clock, flow_tenant=FLOWS.get),
        services=object(),
    )


REFUSED = [
    ("no token", lambda f, c: None, 401),
    ("expired", lambda f, c: f.token(exp=int(c.now()) - 1), 401),
    (
        "alg none",
        lambda f, c: f.unsigned(
            f.claims_for(tenant="acme", sub="alice", permissions=["flows.control"])
        ),
        401,
    ),
    (
        "bad signature",
        lambda f, c: f.forge(
            f.claims_for(tenant="acme", sub="alice", permissions=["flows.control"]),
            key=f.stranger_key(),
        ),
        401,
    ),
    ("another tenant's", lambda f, c: f.token(tenant="globex"), 422),  # as if unknown
    ("missing permission", lambda f, c: f.token(permissions=()), 403),
]


@pytest.mark.parametrize(("make", "status"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_refused_event_has_no_side_effect(
    redis: Redis, iam: FakeIam, clock: FakeClock, make: Any, status: int
) -> None:
    calls: list[str] = []
    rt = runtime(redis, iam, clock, calls)
    token = make(iam, clock)
    event = cloudevent(
        "flow.execute", {"flowId": "f-acme"}, **({"authtoken": token} if token else {})
    )
    with pytest.raises(OrchestratorError) as caught:
        rt.handle(event)
    assert caught.value.status == status
    assert calls == []
    assert redis.dbsize() == 0  # no dedupe key, no state, no outbox entry
    assert rt.sender.events == []  # type: ignore[attr-defined]


def test_accepted_event_is_handled(redis: Redis, iam: FakeIam, clock: FakeClock) -> None:
    calls: list[str] = []
    rt = runtime(redis, iam, clock, calls)
    rt.handle(cloudevent("flow.execute", {"flowId": "f-acme"}, authtoken=iam.token()))
    assert calls == ["org.openintegrationhub.flow.execute"]
    assert redis.dbsize() > 0


def test_iam_down_leaves_nothing_behind_and_the_retry_succeeds(
    redis: Redis, iam: FakeIam, clock: FakeClock
) -> None:
    calls: list[str] = []
    rt = runtime(redis, iam, clock, calls)
    event = cloudevent("flow.execute", {"flowId": "f-acme"}, authtoken=iam.token())
    iam.down()
    with pytest.raises(OrchestratorError) as caught:
        rt.handle(event)
    assert caught.value.status == 503 and calls == [] and redis.dbsize() == 0
    iam.up()
    rt.handle(event)  # the broker's redelivery
    assert calls == ["org.openintegrationhub.flow.execute"]
