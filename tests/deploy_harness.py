"""The deploy function wired to real parts: Redis, the fake Kubernetes API and the fake
Component Repository over HTTP, the real `kubernetes` client, a capturing event sink."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from cloudevents.http import CloudEvent
from redis import Redis

from shared import keys
from shared.adapters.component_repository import HttpComponentRepository
from shared.adapters.kubernetes import KubernetesDriver, make_api_client
from shared.clock import FakeClock
from shared.deployment import records as deploy_records
from shared.deployment.services import DeployServices, NoFlowTokens
from shared.deployment.worker_settings import WorkerSettings
from shared.events import OutgoingEvent
from shared.handlers.deploy import SPEC
from shared.model.policy import Policy
from shared.ports.driver import DeployDriver
from shared.runtime.auth import Authorizer
from shared.runtime.function import FunctionRuntime, Outcome
from shared.settings import Settings
from tests.conftest import TEST_KEY
from tests.fakes.component_repo import FakeComponentRepo
from tests.fakes.kube_api import FakeKubeApi
from tests.support.events import CapturingSender, cloudevent, internal

_versions = itertools.count(1)


def flow_doc(
    flow_id: str = "flow-1",
    nodes: list[dict[str, Any]] | None = None,
    *,
    tenant: str = "acme",
    owner: str = "alice",
    updated: int | None = None,
) -> dict[str, Any]:
    """A flow document; every call is newer than the one before (updatedAt)."""
    nodes = nodes if nodes is not None else [step("a")]
    version = updated if updated is not None else next(_versions)
    return {
        "id": flow_id,
        "tenant": tenant,
        "owners": [{"id": owner, "type": "user"}],
        "updatedAt": f"2026-01-01T00:{version // 60 % 60:02d}:{version % 60:02d}Z",
        "graph": {"nodes": nodes, "edges": []},
    }


def step(node_id: str, component: str = "comp", replicas: int | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {"id": node_id, "componentId": component, "function": "run"}
    if replicas is not None:
        node["nodeSettings"] = {"replicas": replicas}
    return node


class CountingTokens(NoFlowTokens):
    """Flow tokens without IAM: a fixed token per flow, calls counted."""

    def __init__(self) -> None:
        self.ensured: list[str] = []
        self.revoked: list[str] = []

    def ensure(self, flow_id: str, tenant: str, user: str) -> str:
        self.ensured.append(flow_id)
        return f"token-of-{flow_id}"

    def revoke(self, flow_id: str) -> None:
        self.revoked.append(flow_id)


@dataclass
class DeployHarness:
    redis: Redis
    clock: FakeClock
    kube: FakeKubeApi
    repo: FakeComponentRepo
    policy: Policy = field(default_factory=Policy)
    ready_timeout: float = 300.0
    ready_wait: float = 0.5
    # generous: a loaded CI machine answers slowly; the timeout test sets its own, short one
    request_timeout: float = 15.0
    driver: DeployDriver | None = None  # default: the Kubernetes driver on the fake API
    tick_page_size: int = 200

    def __post_init__(self) -> None:
        self.sender = CapturingSender()
        self.tokens = CountingTokens()
        if self.driver is None:
            self.driver = KubernetesDriver(
                make_api_client(host=self.kube.url), "flows", request_timeout=self.request_timeout
            )
        settings = Settings(
            redis_url="redis://unused:1/0",
            orchestrator_key=TEST_KEY,
            auth="off",
            deploy_ready_timeout=self.ready_timeout,
            k_sink="http://sink.invalid",
            tick_page_size=self.tick_page_size,
        )
        self.services = services = DeployServices(
            driver=self.driver,
            components=HttpComponentRepository(self.repo.url, clock=self.clock),
            tokens=self.tokens,
            worker=WorkerSettings(redis_url="redis://workers:6379/0", k_sink="http://sink.invalid"),
            ready_wait_seconds=self.ready_wait,
            ready_poll_seconds=0.25,
        )
        self.runtime = FunctionRuntime(
            SPEC,
            settings=settings,
            redis=self.redis,
            clock=self.clock,
            policy=self.policy,
            sender=self.sender,
            authorizer=Authorizer(settings, self.clock, flow_tenant=lambda _: "acme"),
            services=services,
        )

    def close(self) -> None:
        assert self.driver is not None
        self.driver.close()

    # ---- sending events ----------------------------------------------------------------------
    def handle(self, event: CloudEvent) -> Outcome:
        return self.runtime.handle(event)

    def start(self, doc: dict[str, Any], *, event_id: str | None = None) -> Outcome:
        return self.handle(cloudevent("flow.starting", doc, event_id=event_id))

    def stop(self, flow_id: str) -> Outcome:
        return self.handle(cloudevent("flow.stopping", {"id": flow_id}))

    def start_component(self, component_id: str) -> Outcome:
        return self.handle(cloudevent("component.starting", {"id": component_id}))

    def stop_component(self, component_id: str) -> Outcome:
        return self.handle(cloudevent("component.stopping", {"id": component_id}))

    def tick(self) -> Outcome:
        return self.handle(cloudevent("orchestrator.tick", {}))

    def penalty(self, level: str, subject_id: str, step: str | None, event: str) -> Outcome:
        """policy-check's side: set (or clear) the penalty state, then announce it."""
        key = keys.penalty(level, subject_id)
        if step is None:
            self.redis.delete(key)
        else:
            self.redis.hset(key, mapping={"step": step, "rule": "test"})
        data = {"subject": {"level": level, "id": subject_id}, "penalty": step or "none"}
        return self.handle(
            internal(f"tenant.{event}", data, key=TEST_KEY, clock=self.clock, sender="policy-check")
        )

    # ---- looking -----------------------------------------------------------------------------
    def events(self, suffix: str) -> list[OutgoingEvent]:
        return self.sender.of_type(suffix)

    def record(self, flow_id: str, kind: str = "flow") -> deploy_records.TargetRecord | None:
        return deploy_records.load(self.redis, kind, flow_id)

    def replicas(self, selector: str | None = None) -> dict[str, int]:
        return {
            d["metadata"]["labels"]["orchestrator.openintegrationhub.org/node"]: d["spec"][
                "replicas"
            ]
            for d in self.kube.objects("deployments", selector)
        }
