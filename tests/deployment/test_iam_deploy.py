"""IAM through the deploy function, auth on (issue 8 §3, §7): the caller's IAM token is checked,
one flow token per flow is created in IAM, put only in the step Secret and revoked on stop, and
no token or secret value shows up in any log line, emitted event or Redis value."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from redis import Redis

from shared.adapters.component_repository import HttpComponentRepository
from shared.adapters.iam import IamClient
from shared.adapters.kubernetes import KubernetesDriver, make_api_client
from shared.clock import FakeClock
from shared.deployment.services import DeployServices, IamFlowTokens
from shared.deployment.worker_settings import WorkerSettings
from shared.errors import Forbidden, TemporaryError
from shared.handlers.deploy import SPEC
from shared.model import flows
from shared.model.policy import Policy
from shared.runtime.auth import Authorizer
from shared.runtime.function import FunctionRuntime
from shared.security.redact import install_redaction, uninstall_redaction
from shared.settings import Settings
from tests.conftest import TEST_KEY
from tests.deploy_harness import flow_doc
from tests.fakes.component_repo import FakeComponentRepo
from tests.fakes.iam import FakeIam
from tests.fakes.kube_api import FakeKubeApi
from tests.support.events import CapturingSender, cloudevent


@dataclass
class Deploy:
    runtime: FunctionRuntime[DeployServices]
    sender: CapturingSender
    logs: io.StringIO


@pytest.fixture
def deploy(
    redis: Redis,
    clock: FakeClock,
    kube_api: FakeKubeApi,
    component_repo: FakeComponentRepo,
    iam: FakeIam,
) -> Iterator[Deploy]:
    component_repo.add("comp", replicas=1)
    kube_api.auto_ready = True
    settings = Settings(
        redis_url="redis://unused:1/0",
        orchestrator_key=TEST_KEY,
        iam_jwks_url=iam.jwks_url,
        iam_issuer=iam.issuer,
        iam_audience=iam.audience,
        iam_url=iam.url,
        iam_service_token=iam.service_token,
        k_sink="http://sink.invalid",
    )
    driver = KubernetesDriver(make_api_client(host=kube_api.url), "flows", request_timeout=15.0)
    services = DeployServices(
        driver=driver,
        components=HttpComponentRepository(component_repo.url, clock=clock),
        tokens=IamFlowTokens(redis, IamClient.from_settings(settings), clock, TEST_KEY),
        worker=WorkerSettings(redis_url="redis://workers:6379/0", k_sink="http://sink.invalid"),
        ready_wait_seconds=0.5,
        ready_poll_seconds=0.25,
    )
    sender = CapturingSender()
    runtime = FunctionRuntime(
        SPEC,
        settings=settings,
        redis=redis,
        clock=clock,
        policy=Policy(),
        sender=sender,
        authorizer=Authorizer(settings, clock, flow_tenant=lambda f: flows.tenant_of(redis, f)),
        services=services,
    )
    # Every log record of the process, at every level, as the processes log them.
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    install_redaction([settings.orchestrator_key, settings.iam_service_token])
    try:
        yield Deploy(runtime, sender, stream)
    finally:
        uninstall_redaction()
        root.removeHandler(handler)
        root.setLevel(old_level)
        driver.close()


def secret_flow_token(kube: FakeKubeApi) -> str:
    [secret] = kube.objects("secrets")
    return base64.b64decode(secret["data"]["FLOW_TOKEN"]).decode()


def test_flow_token_lifecycle_with_auth_on(
    deploy: Deploy, iam: FakeIam, kube_api: FakeKubeApi, redis: Redis
) -> None:
    iam.add_user("alice", "acme")  # the hub's IAM takes a token's tenant from the account
    caller = iam.token(tenant="acme", sub="alice")
    start = cloudevent("flow.starting", flow_doc("f1"), authtoken=caller)
    deploy.runtime.handle(start)
    deploy.runtime.handle(start)  # redelivery
    deploy.runtime.handle(cloudevent("flow.starting", flow_doc("f1"), authtoken=caller))  # newer
    deploy.runtime.handle(cloudevent("orchestrator.tick", {}))

    [token_id] = iam.live_tokens()  # one token for the flow, whatever the redeliveries
    flow_token = secret_flow_token(kube_api)
    assert iam.token_id_of(flow_token) == token_id
    claims = iam.introspect(flow_token)
    assert claims is not None and claims["sub"] == "alice" and claims["tenant"] == "acme"
    assert claims["permissions"] == ["secrets.secret.readRaw"]  # only what a step needs

    deploy.runtime.handle(cloudevent("flow.stopping", {"id": "f1"}, authtoken=caller))
    assert iam.live_tokens() == [] and iam.introspect(flow_token) is None

    secrets_ = [caller, flow_token, TEST_KEY, iam.service_token]
    logged = deploy.logs.getvalue()
    assert "emitted flow.started" in logged and "POST /api/v1/tokens" in logged  # logs captured
    for value in secrets_:
        assert value not in logged
        assert all(value not in e.to_json() for e in deploy.sender.events)
        for key in redis.scan_iter():
            if redis.type(key) == b"string":
                assert value.encode() not in (redis.get(key) or b"")


def test_another_tenants_token_deploys_nothing(
    deploy: Deploy, iam: FakeIam, kube_api: FakeKubeApi, redis: Redis
) -> None:
    with pytest.raises(Forbidden):
        deploy.runtime.handle(
            cloudevent("flow.starting", flow_doc("f1"), authtoken=iam.token(tenant="globex"))
        )
    assert kube_api.objects("deployments") == [] and kube_api.objects("secrets") == []
    assert iam.live_tokens() == [] and deploy.sender.events == [] and redis.dbsize() == 0


def test_stopping_another_tenants_flow_is_refused(
    deploy: Deploy, iam: FakeIam, kube_api: FakeKubeApi
) -> None:
    """Answered as a stop of an unknown flow (success), and nothing is stopped."""
    deploy.runtime.handle(cloudevent("flow.starting", flow_doc("f1"), authtoken=iam.token()))
    deploy.runtime.handle(
        cloudevent("flow.stopping", {"id": "f1"}, authtoken=iam.token(tenant="globex"))
    )
    assert len(iam.live_tokens()) == 1 and len(kube_api.objects("deployments")) == 1


def test_iam_down_while_creating_the_flow_token_applies_nothing_then_recovers(
    deploy: Deploy, iam: FakeIam, kube_api: FakeKubeApi
) -> None:
    caller = iam.token(tenant="acme", sub="alice")
    deploy.runtime.handle(cloudevent("flow.starting", flow_doc("f0"), authtoken=caller))
    before = {"deployments": kube_api.names("deployments"), "secrets": kube_api.names("secrets")}
    iam.fail(503)  # the key set is cached: only the token API answers 503 now
    start = cloudevent("flow.starting", flow_doc("f1"), authtoken=caller)
    with pytest.raises(TemporaryError):
        deploy.runtime.handle(start)
    assert kube_api.names("deployments") == before["deployments"]
    assert kube_api.names("secrets") == before["secrets"]
    assert [e.data["id"] for e in deploy.sender.of_type("flow.started")] == ["f0"]
    iam.heal()
    deploy.runtime.handle(start)  # the broker's retry
    assert [e.data["id"] for e in deploy.sender.of_type("flow.started")] == ["f0", "f1"]
    assert len(iam.live_tokens()) == 2 and len(kube_api.names("secrets")) == 2
