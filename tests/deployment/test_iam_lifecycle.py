"""A whole flow lifecycle through the four real functions with auth on (issue 8 §7): no token
or secret value shows up in any log line, emitted event, audit entry or other Redis value.

The functions run in one process (shared.local.demo.system: real runtimes and handlers, the Broker's
routing and retry table, simulated cluster and workers); the IAM is the fake IAM over HTTP and
deploy creates real flow tokens in it.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any, cast

import pytest
from cloudevents.http import CloudEvent
from redis import Redis

from shared.adapters.component_repository import CatalogueComponentRepository
from shared.adapters.iam import IamClient
from shared.clock import FakeClock
from shared.deployment.services import IamFlowTokens
from shared.events import OutgoingEvent
from shared.events import types as t
from shared.events.envelope import EXT_AUTH_TOKEN, EXT_STEP_TOKEN
from shared.local.demo.system import InProcessSystem
from shared.model.policy import Policy
from shared.security.redact import install_redaction, uninstall_redaction
from shared.settings import Settings
from tests.conftest import TEST_KEY
from tests.fakes.iam import FakeIam
from tests.support.flows import flow_document

FLOW = flow_document("f1", ["a", "b"], [("a", "b")], tenant="acme", owner="alice")


class Recorder:
    """Every token that went over the wire, and every event a function emitted."""

    def __init__(self) -> None:
        self.tokens: set[str] = set()
        self.emitted: list[OutgoingEvent] = []

    def wire(self, event: CloudEvent) -> None:
        for name in (EXT_AUTH_TOKEN, EXT_STEP_TOKEN):
            if event.get(name):
                self.tokens.add(str(event[name]))


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        uninstall_redaction()
        root.removeHandler(handler)
        root.setLevel(old_level)


def build(redis: Redis, clock: FakeClock, iam: FakeIam, recorder: Recorder) -> InProcessSystem:
    settings = Settings(
        redis_url="redis://unused:1/0",
        orchestrator_key=TEST_KEY,
        iam_jwks_url=iam.jwks_url,
        iam_issuer=iam.issuer,
        iam_audience=iam.audience,
        iam_url=iam.url,
        iam_service_token=iam.service_token,
        deploy_driver="local",  # no metrics API to read in process
    )
    install_redaction([settings.orchestrator_key, settings.iam_service_token])
    system = InProcessSystem(
        redis,
        clock,
        Policy(),
        settings,
        CatalogueComponentRepository(),
        observe=recorder.emitted.append,
    )
    deploy_services = system.bus.runtimes[t.DEPLOY].services
    deploy_services.tokens = IamFlowTokens(
        redis, IamClient.from_settings(settings), clock, settings.orchestrator_key
    )
    # See every event on the wire (published by the bus or handed to a function).
    publish, deliver_to = system.bus.publish, system.bus.deliver_to

    def publish_seen(event: CloudEvent) -> None:
        recorder.wire(event)
        publish(event)

    def deliver_seen(function: str, event: CloudEvent) -> None:
        recorder.wire(event)
        deliver_to(function, event)

    system.bus.publish = publish_seen  # type: ignore[method-assign]
    system.bus.deliver_to = deliver_seen  # type: ignore[method-assign]
    return system


def redis_values(redis: Redis) -> Iterator[tuple[str, bytes]]:
    """Every value in Redis, except the step queues (a step message carries its step token to
    the worker by design) and the flow-token record (encrypted at rest)."""
    for raw_key in redis.scan_iter():
        key = raw_key.decode()
        if key.startswith("co:q:") or ":flow-token:" in key:
            continue
        kind = cast(bytes, redis.type(raw_key)).decode()
        values: list[Any] = []
        if kind == "string":
            values = [redis.get(raw_key)]
        elif kind == "hash":
            values = list(redis.hgetall(raw_key).items())
        elif kind == "list":
            values = redis.lrange(raw_key, 0, -1)
        elif kind == "set":
            values = list(redis.smembers(raw_key))
        elif kind == "zset":
            scored = cast(list[tuple[bytes, float]], redis.zrange(raw_key, 0, -1, withscores=True))
            values = [m for m, _ in scored]
        elif kind == "stream":
            entries = cast(list[tuple[bytes, dict[bytes, bytes]]], redis.xrange(raw_key))
            values = [fields for _, fields in entries]
        yield key, repr(values).encode()


def test_whole_lifecycle_leaks_no_secret(
    redis: Redis, clock: FakeClock, iam: FakeIam, logs: io.StringIO
) -> None:
    recorder = Recorder()
    system = build(redis, clock, iam, recorder)
    caller = iam.token(tenant="acme", sub="alice")
    outsider = iam.token(tenant="globex", sub="mallory")

    system.send(t.FLOW_STARTING, FLOW, event_id="start-1", authtoken=caller)
    system.settle()
    system.run_for(3)
    assert len(iam.live_tokens()) == 1  # deploy created the flow token
    [(_, env)] = [d for d in system.cluster.deployments() if d[1].get("FLOW_TOKEN")][:1]
    flow_token = env["FLOW_TOKEN"]

    system.send(t.FLOW_EXECUTE, {"flowId": "f1", "msg": {"n": 1}}, authtoken=outsider)
    system.send(t.FLOW_EXECUTE, {"flowId": "f1", "msg": {"n": 2}}, authtoken=caller)
    system.settle()
    system.run_for(5)
    completed = [e for e in recorder.emitted if e.type == t.RUN_COMPLETED]
    # the outsider's run was refused as for an unknown flow (422, never retried)
    assert len(completed) == 1
    assert system.bus.stats.rejected.get(422) == 1

    system.send(t.FLOW_STOPPING, {"id": "f1"}, authtoken=caller)
    system.settle()
    system.run_for(2)
    assert iam.live_tokens() == [] and iam.introspect(flow_token) is None

    step_tokens = {tok for tok in recorder.tokens if tok not in (caller, outsider)}
    assert step_tokens, "step and internal tokens went over the wire"
    secrets = {caller, outsider, flow_token, TEST_KEY, iam.service_token, *recorder.tokens}
    logged = logs.getvalue()
    assert "emitted flow.execution.completed" in logged  # the log capture saw the run
    for value in secrets:
        assert value not in logged
        for event in recorder.emitted:
            assert value not in event.to_json(), event.type
        for key, stored in redis_values(redis):
            assert value.encode() not in stored, key
